"""One contract test over every registered alignment x fusion (timm-style).

Every pair in ``REGISTRY.names("alignment") x REGISTRY.names("fusion")`` is composed by the harness's
``WindowAggregator`` on a tiny context (B=2, T=3, C=8, 8x8 features from 64x64 images, one padded
support per batch element) and must satisfy the interface's promises. A newly registered part is
picked up automatically; if it needs constructor kwargs to be valid, add them to ``VARIANTS``.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from harness.aggregation import REGISTRY, TemporalContext, WindowAggregator

BATCH, SUPPORTS, CHANNELS, GRID, IMAGE = 2, 3, 8, 8, 64
VALID = torch.tensor([[True, True, False], [True, False, True]])

# Alignment name -> kwargs variants to exercise (default: one variant with no kwargs).
VARIANTS: dict[str, list[dict]] = {
    "flow_warp": [{"flow_source": "flownet"}, {"flow_source": "farneback"}, {"flow_source": "oracle"}],
    "stsn": [{"num_layers": 2, "deformable_groups": 2}],
}


def _alignment_cases() -> list:
    cases = []
    for name in REGISTRY.names("alignment"):
        for kwargs in VARIANTS.get(name, [{}]):
            label = name + "".join(f"-{value}" for value in kwargs.values())
            cases.append(pytest.param(name, kwargs, id=label))
    return cases


def _textured_images(generator: torch.Generator, count: int) -> torch.Tensor:
    """(count, 3, IMAGE, IMAGE) uint8 smooth random textures (so Farneback has something to track)."""
    noise = torch.rand(count, 3, IMAGE, IMAGE, generator=generator).numpy() * 255
    smooth = np.stack([cv2.GaussianBlur(image.transpose(1, 2, 0), (0, 0), 2.0) for image in noise])
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255
    return torch.from_numpy(smooth).permute(0, 3, 1, 2).round().to(torch.uint8)  # (count, H, W, 3) -> NCHW


def make_context(seed: int = 0, *, requires_grad: bool = False) -> TemporalContext:
    generator = torch.Generator().manual_seed(seed)
    reference = torch.randn(BATCH, CHANNELS, GRID, GRID, generator=generator)
    supports = torch.randn(BATCH, SUPPORTS, CHANNELS, GRID, GRID, generator=generator)
    reference.requires_grad_(requires_grad)
    supports.requires_grad_(requires_grad)
    images = _textured_images(generator, BATCH * (1 + SUPPORTS))
    return TemporalContext(
        reference=reference,
        supports=supports,
        offsets=torch.tensor([[-1, 1, 2], [-2, -1, 1]]),
        valid=VALID.clone(),
        reference_image=images[:BATCH],
        support_images=images[BATCH:].reshape(BATCH, SUPPORTS, 3, IMAGE, IMAGE),
        oracle_flow=4.0 * torch.randn(BATCH, SUPPORTS, 2, IMAGE, IMAGE, generator=generator),
        feature_stride=IMAGE // GRID,
    )


def build(alignment: str, alignment_kwargs: dict, fusion: str, seed: int = 0) -> WindowAggregator:
    torch.manual_seed(seed)
    return WindowAggregator(
        REGISTRY.get("alignment", alignment)(channels=CHANNELS, **alignment_kwargs),
        REGISTRY.get("fusion", fusion)(channels=CHANNELS),
    )


def _perturb_parameters(module: torch.nn.Module, seed: int) -> None:
    """Add noise to every parameter: deliberate zero inits (STSN's offset convs) would otherwise hide
    whether a parameter is connected to the output at all, which is what this test checks."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("fusion", REGISTRY.names("fusion"))
@pytest.mark.parametrize("alignment, alignment_kwargs", _alignment_cases())
def test_contract(alignment: str, alignment_kwargs: dict, fusion: str) -> None:
    aggregator = build(alignment, alignment_kwargs, fusion)
    _perturb_parameters(aggregator, seed=1)
    ctx = make_context(requires_grad=True)

    # Shapes and finiteness.
    out = aggregator(ctx)
    features = out.features
    assert features.shape == (BATCH, CHANNELS, GRID, GRID)
    assert torch.isfinite(features).all()
    aligned = aggregator.alignment(ctx)
    assert aligned.features.shape == ctx.supports.shape
    for name, value in aligned.aux.items():
        assert value.shape[:2] == (BATCH, SUPPORTS) and value.shape[-2:] == (GRID, GRID), name
        assert torch.isfinite(value).all(), name
    weights = out.aux.get("fusion_weights")
    if weights is not None:
        assert weights.shape == (BATCH, 1 + SUPPORTS, GRID, GRID)
        assert torch.isfinite(weights).all()

    # Gradients reach every parameter and the backbone features.
    features.square().mean().backward()
    for name, parameter in aggregator.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert parameter.grad.abs().sum() > 0, f"{name} got an all-zero gradient"
    assert ctx.reference.grad is not None and ctx.reference.grad.abs().sum() > 0
    assert ctx.supports.grad is not None and ctx.supports.grad.abs().sum() > 0

    # Same seed -> same output.
    again = build(alignment, alignment_kwargs, fusion)
    _perturb_parameters(again, seed=1)
    assert torch.equal(again(make_context()).features, aggregator(make_context()).features)

    # Invalid supports: exactly zero weight, and replacing everything about them changes nothing.
    with torch.no_grad():
        clean = aggregator(make_context())
        scrambled_ctx = make_context()
        other = make_context(seed=7)
        invalid = ~scrambled_ctx.valid
        scrambled_ctx.supports[invalid] = other.supports[invalid] * 100
        scrambled_ctx.support_images[invalid] = other.support_images[invalid]
        scrambled_ctx.oracle_flow[invalid] = other.oracle_flow[invalid] * 3
        scrambled = aggregator(scrambled_ctx)
    torch.testing.assert_close(scrambled.features, clean.features, rtol=1e-5, atol=1e-5)
    if weights is not None:
        invalid_weights = clean.aux["fusion_weights"][:, 1:][invalid]  # (num invalid, H, W)
        assert torch.equal(invalid_weights, torch.zeros_like(invalid_weights))
        sums = clean.aux["fusion_weights"].sum(dim=1)
        torch.testing.assert_close(sums, torch.ones_like(sums))


@pytest.mark.parametrize("fusion", REGISTRY.names("fusion"))
@pytest.mark.parametrize("alignment, alignment_kwargs", _alignment_cases())
def test_bad_shapes_raise(alignment: str, alignment_kwargs: dict, fusion: str) -> None:
    aggregator = build(alignment, alignment_kwargs, fusion)
    ctx = make_context()
    wrong_channels = dataclasses.replace(ctx, supports=ctx.supports[:, :, :-1])
    with pytest.raises(ValueError, match="supports"):
        aggregator(wrong_channels)
    with pytest.raises(ValueError, match="supports"):
        aggregator.alignment(wrong_channels)
    with pytest.raises(ValueError, match="valid"):
        aggregator(dataclasses.replace(ctx, valid=ctx.valid[:, :2]))
    # The parts themselves check what they are given, also when called directly.
    both_wrong = dataclasses.replace(
        ctx, reference=ctx.reference[:, :-1], supports=ctx.supports[:, :, :-1]
    )
    with pytest.raises(ValueError, match="channels"):
        aggregator.alignment(both_wrong)
    with pytest.raises(ValueError, match="aligned"):
        aggregator.fusion(ctx.reference, ctx.supports[:, :, :, :-1], ctx.valid)
    with pytest.raises(ValueError, match="valid"):
        aggregator.fusion(ctx.reference, ctx.supports, ctx.valid[:1])
    with pytest.raises(ValueError, match="channels"):
        aggregator.fusion(ctx.reference[:, :-1], ctx.supports[:, :, :-1], ctx.valid)


@pytest.mark.parametrize("alignment, alignment_kwargs", _alignment_cases())
def test_no_supports(alignment: str, alignment_kwargs: dict) -> None:
    """T = 0 (phase 1, stills): the alignment returns an empty (B, 0, C, H, W) without failing."""
    ctx = make_context()
    empty = dataclasses.replace(
        ctx,
        supports=ctx.supports[:, :0],
        offsets=ctx.offsets[:, :0],
        valid=ctx.valid[:, :0],
        support_images=ctx.support_images[:, :0],
        oracle_flow=ctx.oracle_flow[:, :0],
    )
    aligned = build(alignment, alignment_kwargs, "average").alignment(empty)
    assert aligned.features.shape == (BATCH, 0, CHANNELS, GRID, GRID)
