"""One contract test over every registered part (timm-style).

Every pair in ``REGISTRY.names("alignment") x REGISTRY.names("fusion")`` is composed by the harness's
``WindowAggregator`` on a tiny context (B=2, T=3, C=8, 8x8 features from 64x64 images, one padded
support per batch element) and must satisfy the interface's promises; every alignment either moves
``support_values`` or refuses them; every ``aggregator:<name>`` is built through
``build_aggregator`` and checked as the detector uses it (a stream aggregator through its training
path and a few inference steps: ``check_stream_contract``). A newly registered part is picked up
automatically; if it needs constructor kwargs to be valid, add them to ``VARIANTS`` /
``AGGREGATOR_CONFIGS``.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from harness.aggregation import (
    REGISTRY,
    StreamClip,
    StreamFrame,
    TemporalContext,
    WindowAggregator,
    build_aggregator,
)
from harness.config import AggregationConfig

BATCH, SUPPORTS, CHANNELS, GRID, IMAGE = 2, 3, 8, 8, 64
VALID = torch.tensor([[True, True, False], [True, False, True]])

# Alignment name -> kwargs variants to exercise (default: one variant with no kwargs).
VARIANTS: dict[str, list[dict]] = {
    "flow_warp": [{"flow_source": "flownet"}, {"flow_source": "farneback"}, {"flow_source": "oracle"}],
    "stsn": [{"num_layers": 2, "deformable_groups": 2}],
    "ssvd_sampling": [{}, {"learned_weights": True}, {"flow_guidance": True}],
    "lsts": [{}, {"init": "uniform", "learn_locations": False}, {"normalize": "sum", "num_locations": 9}],
}

# Aggregator name -> the AggregationConfig it is checked with (default: AggregationConfig(aggregator=name)).
AGGREGATOR_CONFIGS: dict[str, AggregationConfig] = {
    "window": AggregationConfig(aggregator="window", alignment="flow_warp", fusion="cosine_softmax"),
    # the paper's method: LSTS propagation, quality-aware SRFU and DFA (fusion:quality_softmax)
    "lsts": AggregationConfig(aggregator="lsts", aggregator_kwargs={"low_channels": 4}),
    # every proposal part, each at its site (SparseVOD's TFE + SPFA)
    "proposal_level": AggregationConfig(
        aggregator="proposal_level",
        aggregator_kwargs={"parts": {"tfe": {"num_heads": 2}, "spfa": {"num_heads": 2}}},
    ),
}
# Proposal part name -> kwargs variants (default: one variant with no kwargs).
PROPOSAL_VARIANTS: dict[str, list[dict]] = {
    "tfe": [{"num_heads": 2}, {"mode": "avg"}],
    "spfa": [{"num_heads": 2}, {"mode": "avg"}],
}
PROPOSALS, ROI = 5, 3  # proposals per frame and RoI side of the proposal-part checks
LOW_CHANNELS, LOW_GRID = 4, 2 * GRID  # the low-level features of stream methods: stride 4


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
    both_wrong = dataclasses.replace(ctx, reference=ctx.reference[:, :-1], supports=ctx.supports[:, :, :-1])
    with pytest.raises(ValueError, match="channels"):
        aggregator.alignment(both_wrong)
    with pytest.raises(ValueError, match="aligned"):
        aggregator.fusion(ctx.reference, ctx.supports[:, :, :, :-1], ctx.valid)
    with pytest.raises(ValueError, match="valid"):
        aggregator.fusion(ctx.reference, ctx.supports, ctx.valid[:1])
    with pytest.raises(ValueError, match="channels"):
        aggregator.fusion(ctx.reference[:, :-1], ctx.supports[:, :, :-1], ctx.valid)


def _without_supports(ctx):
    """``ctx`` with T = 0 (phase 1, stills): every per-support field cut to an empty slice."""
    return dataclasses.replace(
        ctx,
        supports=ctx.supports[:, :0],
        offsets=ctx.offsets[:, :0],
        valid=ctx.valid[:, :0],
        support_images=ctx.support_images[:, :0],
        oracle_flow=ctx.oracle_flow[:, :0],
    )


@pytest.mark.parametrize("alignment, alignment_kwargs", _alignment_cases())
def test_no_supports(alignment: str, alignment_kwargs: dict) -> None:
    """T = 0 (phase 1, stills): the alignment returns an empty (B, 0, C, H, W) without failing."""
    aligned = build(alignment, alignment_kwargs, "average").alignment(_without_supports(make_context()))
    assert aligned.features.shape == (BATCH, 0, CHANNELS, GRID, GRID)


@pytest.mark.parametrize("alignment, alignment_kwargs", _alignment_cases())
def test_alignment_moves_support_values_or_refuses_them(alignment: str, alignment_kwargs: dict) -> None:
    """Movers apply the transform found on the supports to any values, channel by channel; the others
    raise a ValueError naming themselves."""
    part = build(alignment, alignment_kwargs, "average").alignment
    _perturb_parameters(part, seed=1)
    ctx = make_context()
    other = torch.randn(BATCH, SUPPORTS, 5, GRID, GRID, generator=torch.Generator().manual_seed(3))
    if not part.moves_values:
        for values in (ctx.supports.clone(), other):
            with pytest.raises(ValueError, match=type(part).__name__):
                part(dataclasses.replace(ctx, support_values=values))
        return
    with torch.no_grad():
        moved_supports = part(ctx).features
        same = part(dataclasses.replace(ctx, support_values=ctx.supports.clone())).features
        moved_other = part(dataclasses.replace(ctx, support_values=other)).features
    torch.testing.assert_close(same, moved_supports, rtol=0, atol=1e-6)
    assert moved_other.shape == (BATCH, SUPPORTS, 5, GRID, GRID)
    # Both together (C + 5 channels): each channel moves as it does alone.
    stacked = torch.cat([ctx.supports, other], dim=2).requires_grad_(True)
    moved = part(dataclasses.replace(ctx, support_values=stacked)).features
    assert moved.shape == (BATCH, SUPPORTS, CHANNELS + 5, GRID, GRID)
    torch.testing.assert_close(moved[:, :, :CHANNELS], moved_supports, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(moved[:, :, CHANNELS:], moved_other, rtol=1e-5, atol=1e-5)
    moved.square().sum().backward()
    assert stacked.grad is not None and stacked.grad.abs().sum() > 0  # the values are what moved
    with pytest.raises(ValueError, match="support_values"):
        part(dataclasses.replace(ctx, support_values=other[:, :, :, :-1]))  # wrong grid


def _aggregator_cases() -> list:
    return [pytest.param(name, id=name) for name in REGISTRY.names("aggregator")]


@pytest.mark.parametrize("name", _aggregator_cases())
def test_aggregator_contract(name: str) -> None:
    """Every registered aggregator, built as the detector builds it: one (B, C, H, W) map per stream,
    gradients to the features, deterministic, padded supports ignored, T = 0 accepted."""
    check_aggregator_contract(AGGREGATOR_CONFIGS.get(name, AggregationConfig(aggregator=name)))


def check_aggregator_contract(config: AggregationConfig) -> None:
    """The checks of :func:`test_aggregator_contract` for one config (a method's own tests call it
    for the variants its kwargs select)."""
    torch.manual_seed(0)
    aggregator = build_aggregator(config, CHANNELS)
    _perturb_parameters(aggregator, seed=1)
    assert isinstance(aggregator.needs_images, bool) and isinstance(aggregator.needs_oracle_flow, bool)
    if aggregator.mode == "stream":
        check_stream_contract(aggregator)
        return
    ctx = make_context(requires_grad=True)
    out = aggregator(ctx)
    if out.proposal is not None and out.proposal.parts:
        check_proposal_level_contract(aggregator)
        return
    assert set(out.streams) == set(aggregator.stream_names)
    for stream, features in out.streams.items():
        assert features.shape == (BATCH, CHANNELS, GRID, GRID), stream
        assert torch.isfinite(features).all(), stream
    sum(features.square().mean() for features in out.streams.values()).backward()
    assert ctx.reference.grad is not None and ctx.reference.grad.abs().sum() > 0
    assert ctx.supports.grad is not None and ctx.supports.grad.abs().sum() > 0
    with torch.no_grad():
        clean = aggregator(make_context())
        again = aggregator(make_context())
        scrambled_ctx = make_context()
        invalid = ~scrambled_ctx.valid
        scrambled_ctx.supports[invalid] = make_context(seed=7).supports[invalid] * 100
        scrambled_ctx.support_images[invalid] = make_context(seed=7).support_images[invalid]
        scrambled = aggregator(scrambled_ctx)
        without_supports = aggregator(_without_supports(make_context()))
    for stream in aggregator.stream_names:
        assert torch.equal(again.streams[stream], clean.streams[stream]), stream
        torch.testing.assert_close(scrambled.streams[stream], clean.streams[stream], rtol=1e-5, atol=1e-5)
        assert without_supports.streams[stream].shape == (BATCH, CHANNELS, GRID, GRID), stream


def make_clip(seed: int = 0, *, requires_grad: bool = False) -> StreamClip:
    """A stream training clip on :func:`make_context`'s supports (as keyframes) and images, with
    low-level features (B, T, LOW_CHANNELS, 2 * GRID, 2 * GRID) for the keyframes and the current frame."""
    ctx = make_context(seed)
    generator = torch.Generator().manual_seed(seed + 100)
    key_low = torch.randn(BATCH, SUPPORTS, LOW_CHANNELS, LOW_GRID, LOW_GRID, generator=generator)
    current_low = torch.randn(BATCH, LOW_CHANNELS, LOW_GRID, LOW_GRID, generator=generator)
    current_low.requires_grad_(requires_grad)
    ctx.supports.requires_grad_(requires_grad)
    return StreamClip(
        key_low=key_low,
        key_high=ctx.supports,
        key_offsets=ctx.offsets,
        valid=ctx.valid,
        current_low=current_low,
        key_images=ctx.support_images,
        current_image=ctx.reference_image,
        feature_stride=ctx.feature_stride,
    )


def check_stream_contract(aggregator) -> None:
    """A stream aggregator: the training path gives one (B, C, H, W) map per stream with gradients to
    every parameter, the keyframes' full and the current frame's low-level features, deterministic,
    padded keyframes ignored; the inference steps give the same shapes on a short stream;
    ``forward(ctx)`` is refused."""
    clip = make_clip(requires_grad=True)
    out = aggregator.forward_clip(clip)
    assert set(out.streams) == set(aggregator.stream_names)
    for stream, features in out.streams.items():
        assert features.shape == (BATCH, CHANNELS, GRID, GRID), stream
        assert torch.isfinite(features).all(), stream
    sum(features.square().mean() for features in out.streams.values()).backward()
    for name, parameter in aggregator.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"{name} got no gradient"
    assert clip.key_high.grad is not None and clip.key_high.grad.abs().sum() > 0
    assert clip.current_low.grad is not None and clip.current_low.grad.abs().sum() > 0
    with torch.no_grad():
        clean = aggregator.forward_clip(make_clip())
        again = aggregator.forward_clip(make_clip())
        scrambled = make_clip()
        invalid = ~scrambled.valid
        scrambled.key_high[invalid] = make_clip(seed=7).key_high[invalid] * 100
        scrambled.key_low[invalid] = make_clip(seed=7).key_low[invalid] * 100
        scrambled.key_images[invalid] = make_clip(seed=7).key_images[invalid]
        scrambled_out = aggregator.forward_clip(scrambled)
        # inference: a keyframe then non-keyframes, per video state
        states = [aggregator.init_state() for _ in range(BATCH)]
        for position in range(3):
            keyframe = torch.full((BATCH,), aggregator.is_keyframe(position))
            frame = StreamFrame(
                low=clip.key_low[:, 0].detach(),
                keyframe=keyframe,
                high=clip.key_high[:, 0].detach()[keyframe],
                frame_ids=torch.full((BATCH,), position, dtype=torch.int64),
                images=clip.current_image if aggregator.needs_images else None,
                feature_stride=clip.feature_stride,
            )
            stepped = aggregator.step(frame, states)
            for stream in aggregator.stream_names:
                assert stepped.streams[stream].shape == (BATCH, CHANNELS, GRID, GRID), stream
    for stream in aggregator.stream_names:
        assert torch.equal(again.streams[stream], clean.streams[stream]), stream
        torch.testing.assert_close(scrambled_out.streams[stream], clean.streams[stream], rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="stream aggregator"):
        aggregator(make_context())


def _sparse_head() -> torch.nn.Module:
    from harness.model.sparse_head import SparseHead

    torch.manual_seed(3)
    return SparseHead(
        in_channels=CHANNELS,
        num_classes=3,
        num_proposals=PROPOSALS,
        num_stages=2,
        dim=CHANNELS,
        dynamic_dim=4,
        ffn_dim=16,
        num_heads=2,
        roi_size=ROI,
    )


def check_proposal_level_contract(aggregator) -> None:
    """An aggregator with proposal parts, checked through the sparse head that runs them: the
    reference map unchanged, predictions with gradients to reference, supports and every parameter,
    deterministic, padded supports ignored, T = 0 = the single-frame head exactly."""
    head = _sparse_head()
    _perturb_parameters(head, seed=2)

    def predictions(ctx):
        output = aggregator(ctx)
        predicted = head(output.streams["main"], output.proposal)
        return torch.cat(
            [
                torch.cat([logits.flatten(), boxes.flatten()])
                for logits, boxes in zip(predicted.logits, predicted.boxes, strict=True)
            ]
        )

    ctx = make_context(requires_grad=True)
    assert aggregator(ctx).streams["main"] is ctx.reference
    predictions(ctx).square().mean().backward()
    assert ctx.reference.grad is not None and ctx.reference.grad.abs().sum() > 0
    assert ctx.supports.grad is not None and ctx.supports.grad.abs().sum() > 0
    for name, parameter in aggregator.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"{name} got no gradient"
    with torch.no_grad():
        clean = predictions(make_context())
        assert torch.equal(predictions(make_context()), clean)
        scrambled = make_context()
        invalid = ~scrambled.valid
        scrambled.supports[invalid] = make_context(seed=7).supports[invalid] * 100
        torch.testing.assert_close(predictions(scrambled), clean, rtol=1e-5, atol=1e-5)
        alone = make_context()
        single = head(alone.reference)
        torch.testing.assert_close(
            predictions(_without_supports(alone)),
            torch.cat(
                [
                    torch.cat([lg.flatten(), bx.flatten()])
                    for lg, bx in zip(single.logits, single.boxes, strict=True)
                ]
            ),
        )


def _proposal_cases() -> list:
    return [
        pytest.param(name, kwargs, id=name + "".join(f"-{value}" for value in kwargs.values()))
        for name in REGISTRY.names("proposal")
        for kwargs in PROPOSAL_VARIANTS.get(name, [{}])
    ]


def _proposal_inputs(part, seed: int = 0, *, requires_grad: bool = False):
    """The part's inputs for a batch of BATCH images with SUPPORTS frames (VALID padding)."""
    generator = torch.Generator().manual_seed(seed)
    valid = VALID.clone()
    if part.site == "roi":
        target = torch.randn(BATCH * PROPOSALS, CHANNELS, ROI, ROI, generator=generator)
        supports = torch.randn(BATCH, SUPPORTS, CHANNELS, GRID, GRID, generator=generator)
        rest = (torch.arange(BATCH).repeat_interleave(PROPOSALS),)
    else:
        target = torch.randn(BATCH, PROPOSALS, CHANNELS, generator=generator)
        supports = torch.randn(BATCH, SUPPORTS, PROPOSALS, CHANNELS, generator=generator)
        rest = ()
    target.requires_grad_(requires_grad)
    supports.requires_grad_(requires_grad)
    return target, supports, valid, *rest


@pytest.mark.parametrize("name, kwargs", _proposal_cases())
def test_proposal_part_contract(name: str, kwargs: dict) -> None:
    """Every registered proposal part at its site: the target's shape back, gradients to target,
    supports and parameters, deterministic, padded supports ignored, no valid support = the target."""
    torch.manual_seed(0)
    part = REGISTRY.get("proposal", name)(CHANNELS, **kwargs)
    _perturb_parameters(part, seed=1)
    assert part.site in ("roi", "proposal")
    target, supports, valid, *rest = _proposal_inputs(part, requires_grad=True)
    out = part(target, supports, valid, *rest)
    assert out.shape == target.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert target.grad.abs().sum() > 0 and supports.grad.abs().sum() > 0
    for pname, parameter in part.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"{pname} got no gradient"
    with torch.no_grad():
        target, supports, valid, *rest = _proposal_inputs(part)
        clean = part(target, supports, valid, *rest)
        assert torch.equal(part(target, supports, valid, *rest), clean)
        scrambled = supports.clone()
        scrambled[~valid] = float("nan")
        torch.testing.assert_close(part(target, scrambled, valid, *rest), clean)
        none = torch.zeros_like(valid)
        assert torch.equal(part(target, supports, none, *rest), target)
        with pytest.raises(ValueError, match="valid"):
            part(target, supports, valid[:, :2], *rest)
