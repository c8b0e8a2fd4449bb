"""Fusions: ``average`` is the mean; ``cosine_softmax`` equals a hand-computed softmax of cosines."""

from __future__ import annotations

import math

import pytest
import torch

from methods.average import AverageFusion
from methods.cosine_softmax import CosineSoftmaxFusion


def test_average_equals_mean_of_valid_frames() -> None:
    reference = torch.randn(2, 3, 4, 5)
    aligned = torch.randn(2, 3, 3, 4, 5)
    valid = torch.tensor([[True, False, True], [False, False, False]])
    aligned[0, 1] = float("nan")  # padding may hold anything
    out = AverageFusion(channels=3)(reference, aligned, valid)
    expected_first = (reference[0] + aligned[0, 0] + aligned[0, 2]) / 3
    torch.testing.assert_close(out.features[0], expected_first)
    torch.testing.assert_close(out.features[1], reference[1])  # no valid support: the reference itself
    torch.testing.assert_close(out.weights[0, :, 2, 3], torch.tensor([1 / 3, 1 / 3, 0.0, 1 / 3]))
    torch.testing.assert_close(out.weights[1, :, 0, 0], torch.tensor([1.0, 0.0, 0.0, 0.0]))


def _identity_embedding(fusion: CosineSoftmaxFusion) -> None:
    """Make the embedding network the identity on non-negative inputs (1x1 eye, 3x3 centre eye, 1x1 eye)."""
    with torch.no_grad():
        for conv in (fusion.embedding[0], fusion.embedding[2], fusion.embedding[4]):
            conv.weight.zero_()
            conv.bias.zero_()
            centre = conv.kernel_size[0] // 2
            conv.weight[:, :, centre, centre] = torch.eye(conv.out_channels, conv.in_channels)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_cosine_softmax_matches_hand_computed_softmax(temperature: float) -> None:
    fusion = CosineSoftmaxFusion(channels=2, hidden_channels=2, embed_channels=2, temperature=temperature)
    _identity_embedding(fusion)
    # One position; reference (1, 0); supports (2, 2) and (0, 3): cosines 1, 1/sqrt(2), 0.
    reference = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    aligned = torch.tensor([[2.0, 2.0], [0.0, 3.0]]).view(1, 2, 2, 1, 1)
    valid = torch.tensor([[True, True]])
    out = fusion(reference, aligned, valid)
    exps = [math.exp(c / temperature) for c in (1.0, 1 / math.sqrt(2), 0.0)]
    expected = torch.tensor([e / sum(exps) for e in exps])
    torch.testing.assert_close(out.weights.flatten(), expected)
    expected_features = expected[0] * reference[0, :, 0, 0] + expected[1] * aligned[0, 0, :, 0, 0]
    expected_features = expected_features + expected[2] * aligned[0, 1, :, 0, 0]
    torch.testing.assert_close(out.features.flatten(), expected_features)

    # Invalidating the second support: it gets 0, the other two renormalise.
    out = fusion(reference, aligned, torch.tensor([[True, False]]))
    expected = torch.tensor([exps[0], exps[1], 0.0]) / (exps[0] + exps[1])
    torch.testing.assert_close(out.weights.flatten(), expected)
    assert out.weights[0, 2].item() == 0.0


def test_cosine_softmax_weights_sum_to_one() -> None:
    torch.manual_seed(0)
    fusion = CosineSoftmaxFusion(channels=6)
    out = fusion(torch.randn(2, 6, 5, 5), torch.randn(2, 4, 6, 5, 5), torch.rand(2, 4) > 0.3)
    torch.testing.assert_close(out.weights.sum(dim=1), torch.ones(2, 5, 5))
    assert (out.weights[:, 0] > 0).all()  # the reference always counts


def test_cosine_softmax_bad_kwargs() -> None:
    with pytest.raises(ValueError, match="temperature"):
        CosineSoftmaxFusion(channels=4, temperature=0.0)
    with pytest.raises(ValueError, match="bool"):
        CosineSoftmaxFusion(channels=4)(torch.randn(1, 4, 2, 2), torch.randn(1, 1, 4, 2, 2), torch.ones(1, 1))
