"""alignment:non_local: recovers a shifted one-hot feature exactly, attention rows sum to 1, bad kwargs."""

from __future__ import annotations

import pytest
import torch

from harness.aggregation import TemporalContext
from methods.non_local import NonLocalAlignment

SIZE = 4
CHANNELS = SIZE * SIZE  # one channel per position: a one-hot code that says where a cell is
SHIFT = (1, 2)  # (dy, dx) of the support relative to the reference (circular)
SHARPNESS = 20.0  # embedding gain: scores 400 on the match, 0 elsewhere -> a one-hot softmax


def _one_hot_positions() -> torch.Tensor:
    """(1, C = H*W, H, W): position p carries the unit vector e_p."""
    return torch.eye(CHANNELS).reshape(1, CHANNELS, SIZE, SIZE)


def _sharp_identity_embeddings(alignment: NonLocalAlignment) -> None:
    with torch.no_grad():
        for conv in (alignment.key_embedding, alignment.query_embedding):
            conv.weight.copy_(SHARPNESS * torch.eye(CHANNELS)[:, :, None, None])
            conv.bias.zero_()


def test_recovers_a_shifted_one_hot_feature() -> None:
    alignment = NonLocalAlignment(channels=CHANNELS, embed_channels=CHANNELS)
    _sharp_identity_embeddings(alignment)
    reference = _one_hot_positions()
    support = torch.roll(reference, shifts=SHIFT, dims=(2, 3))  # support(p + shift) = reference(p)
    other = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    ctx = TemporalContext(
        reference=reference,
        supports=support.unsqueeze(1),  # (1, 1, C, H, W)
        offsets=torch.tensor([[1]]),
        valid=torch.tensor([[True]]),
    )
    torch.testing.assert_close(alignment(ctx).features[:, 0], reference)  # the support moved back
    ctx.support_values = torch.roll(other, shifts=SHIFT, dims=(2, 3)).unsqueeze(1)  # values moved alike
    torch.testing.assert_close(alignment(ctx).features[:, 0], other)
    _, attention = alignment.propagate(reference, support, support)  # (1, HW, HW)
    rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    matches = ((rows + SHIFT[0]) % SIZE) * SIZE + (cols + SHIFT[1]) % SIZE  # q = p + shift, flattened
    assert torch.equal(attention[0].argmax(dim=1), matches.flatten())


def test_attention_rows_sum_to_one_over_the_support() -> None:
    torch.manual_seed(0)
    alignment = NonLocalAlignment(channels=6)
    target, source = torch.randn(2, 6, 3, 5), torch.randn(2, 6, 3, 5)
    moved, attention = alignment.propagate(target, source, torch.randn(2, 7, 3, 5))
    assert moved.shape == (2, 7, 3, 5) and attention.shape == (2, 15, 15)
    torch.testing.assert_close(attention.sum(dim=-1), torch.ones(2, 15))


def test_bad_kwargs_raise_naming_them() -> None:
    with pytest.raises(ValueError, match="embed_channels"):
        NonLocalAlignment(channels=4, embed_channels=0)
    with pytest.raises(ValueError, match="target"):
        NonLocalAlignment(channels=4).propagate(torch.randn(1, 3, 2, 2), torch.randn(1, 4, 2, 2),
                                                torch.randn(1, 4, 2, 2))
