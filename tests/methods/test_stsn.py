"""STSN sampling block: what it equals at initialisation, the offset layout, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.aggregation import TemporalContext
from methods.stsn import STSNAlignment


def _context(b: int = 2, t: int = 3, c: int = 4, size: int = 6, dtype=torch.float32) -> TemporalContext:
    generator = torch.Generator().manual_seed(0)
    return TemporalContext(
        reference=torch.randn(b, c, size, size, generator=generator, dtype=dtype),
        supports=torch.randn(b, t, c, size, size, generator=generator, dtype=dtype),
        offsets=torch.ones(b, t, dtype=torch.int64),
        valid=torch.ones(b, t, dtype=torch.bool),
    )


def test_default_init_is_the_identity_alignment() -> None:
    """Zero offset convs + identity last kernel: the supports come back unchanged, offsets are 0."""
    ctx = _context()
    out = STSNAlignment(channels=4)(ctx)
    torch.testing.assert_close(out.features, ctx.supports, rtol=0, atol=1e-6)
    assert out.aux["sampling_offsets"].shape == (2, 3, 2 * 9, 6, 6)
    assert torch.equal(out.aux["sampling_offsets"], torch.zeros_like(out.aux["sampling_offsets"]))


def test_zero_offsets_make_the_last_layer_an_ordinary_convolution() -> None:
    """Whatever the kernels, with zero-initialised offset convs the block's output is exactly
    ``conv2d(support, W_last, b_last, padding=1)``: the regular 3x3 grid is sampled."""
    torch.manual_seed(0)
    alignment = STSNAlignment(channels=4, num_layers=3, identity_init=False)
    ctx = _context()
    out = alignment(ctx)
    conv = alignment.sampling_conv
    expected = F.conv2d(ctx.supports.flatten(0, 1), conv.weight, conv.bias, padding=1).reshape(2, 3, 4, 6, 6)
    torch.testing.assert_close(out.features, expected, rtol=1e-5, atol=1e-5)


def test_offset_layout_is_dy_dx_in_feature_pixels() -> None:
    """Offset (dy, dx) = (1, -2) on every tap + identity kernel: the output is support(p + (1, -2))."""
    alignment = STSNAlignment(channels=4, num_layers=1)
    with torch.no_grad():
        alignment.offset_convs[-1].bias.view(-1, 2)[:] = torch.tensor([1.0, -2.0])
    ctx = _context()
    out = alignment(ctx)
    shifted = torch.zeros_like(ctx.supports)
    shifted[..., :-1, 2:] = ctx.supports[..., 1:, :-2]  # out(y, x) = support(y + 1, x - 2), zero outside
    torch.testing.assert_close(out.features, shifted, rtol=0, atol=1e-6)
    offsets = out.aux["sampling_offsets"].reshape(2, 3, 9, 2, 6, 6)  # (B, T, taps, (dy, dx), H, W)
    assert torch.equal(offsets[:, :, :, 0], torch.ones_like(offsets[:, :, :, 0]))
    assert torch.equal(offsets[:, :, :, 1], torch.full_like(offsets[:, :, :, 1], -2.0))


def test_gradcheck_float64() -> None:
    torch.manual_seed(0)
    alignment = STSNAlignment(channels=2, num_layers=2, hidden_channels=2).double()
    with torch.no_grad():  # fractional offsets so the bilinear weights (and their gradients) are exercised
        for conv in alignment.offset_convs:
            conv.weight.normal_(std=0.3)
            conv.bias.uniform_(-0.7, 0.7)
    ctx = _context(b=1, t=1, c=2, size=4, dtype=torch.float64)

    def run(reference: torch.Tensor, supports: torch.Tensor) -> torch.Tensor:
        return alignment(TemporalContext(reference, supports, ctx.offsets, ctx.valid)).features

    reference = ctx.reference.requires_grad_()
    supports = ctx.supports.requires_grad_()
    assert torch.autograd.gradcheck(run, (reference, supports), eps=1e-6, atol=1e-4)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="num_layers"):
        STSNAlignment(channels=4, num_layers=0)
    with pytest.raises(ValueError, match="kernel_size"):
        STSNAlignment(channels=4, kernel_size=2)
    with pytest.raises(ValueError, match="deformable_groups"):
        STSNAlignment(channels=4, deformable_groups=3)


def test_reference_is_resampled_through_the_block_as_g_tt():
    from harness.aggregation import TemporalContext
    from methods.stsn import STSNAlignment

    torch.manual_seed(0)
    block = STSNAlignment(8, hidden_channels=8, num_layers=2)
    ctx = TemporalContext(torch.randn(2, 8, 6, 6), torch.randn(2, 3, 8, 6, 6),
                          torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool))
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))  # leave the identity init so g_tt != reference
        out = block(ctx)
        expected, _ = block.sample(ctx.reference, ctx.reference)
    torch.testing.assert_close(out.reference, expected)
    assert not torch.allclose(out.reference, ctx.reference)
    assert STSNAlignment(8, resample_reference=False)(ctx).reference is None


def test_tap_weight_share_reports_how_much_each_tap_can_contribute() -> None:
    ctx = _context()
    alignment = STSNAlignment(channels=4)  # identity init: only the centre tap has weight
    taps = alignment(ctx).aux["sampling_tap_weight"]
    assert taps.shape == (2, 3, 9, 6, 6) and not taps.requires_grad
    expected = torch.zeros(9)
    expected[4] = 1.0
    torch.testing.assert_close(taps[1, 2, :, 3, 0], expected)
    with torch.no_grad():
        alignment.sampling_conv.weight[:, :, 0, 0] = torch.eye(4)  # tap 0 now as strong as the centre
    torch.testing.assert_close(alignment.tap_weight_share()[[0, 4]], torch.tensor([0.5, 0.5]))
