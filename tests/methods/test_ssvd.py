"""SSVD: the sampling stream's offset predictor and deformable groups, the aggregator's three fusion
schemes, late box fusion, Algorithm 2's test-time spacing, and the losses of both streams."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.aggregation import AggregationOutput, build_aggregator
from harness.config import AggregationConfig, BackboneConfig, HeadConfig, ModelConfig, SupportSpec
from harness.data.sampling import support_indices
from harness.model.backbone import ResNetBackbone
from harness.model.detector import VideoDetector, build_detector
from methods.flow_warp import flow_to_grid
from methods.ssvd import (
    FUSION_SCHEMES,
    TABLE5_SUPPORTS,
    TRAIN_SUPPORT,
    SSVDAggregator,
    mean_over_frames,
    ssvd_test_support,
)
from methods.ssvd_sampling import SSVDOffsetPredictor, SSVDSamplingAlignment
from methods.stsn import STSNAlignment
from ops.flow_warp import flow_warp
from tests.methods.test_contract import (
    BATCH,
    CHANNELS,
    GRID,
    SUPPORTS,
    _perturb_parameters,
    check_aggregator_contract,
    make_context,
)
from tests.model.fakes import NUM_CLASSES, FakeDataset, fake_collate


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- offset predictor and deformable groups ----------------------------------------------------


@pytest.mark.parametrize("learned_weights, out_channels", [(False, 2 * 9 * 4), (True, 2 * 9 * 4 + 1)])
@pytest.mark.parametrize("height, width", [(8, 8), (7, 5)])
def test_offset_predictor_shapes(learned_weights, out_channels, height, width):
    """2C in; groups at scales 1, 1/2, 1/4 (ceil); 72 offsets (+1 weight logit) out at the input size."""
    predictor = SSVDOffsetPredictor(16, 8, deformable_groups=4, weight_channel=learned_weights)
    pair = torch.randn(3, 16, height, width)
    c1 = predictor.conv1(pair)
    c2 = predictor.conv2(c1)
    c3 = predictor.conv3(c2)
    assert c1.shape == (3, 8, height, width)
    assert c2.shape == (3, 4, (height + 1) // 2, (width + 1) // 2)
    assert c3.shape == (3, 4, (c2.shape[2] + 1) // 2, (c2.shape[3] + 1) // 2)
    assert predictor.lateral.in_channels == 8 + 4 + 4
    assert predictor(pair).shape == (3, out_channels, height, width)


def test_offset_predictor_parameter_count_by_hand():
    """C = 64 (the harness's features), widths 64 / 32 / 32, lateral 64, 72 offsets (+1)."""
    conv1, conv2, conv3 = 128 * 64 * 9, 64 * 32 * 9, 32 * 32 * 9  # no bias (official code)
    lateral, pred = 128 * 64 * 9 + 64, 64 * 72 * 9 + 72
    alignment = SSVDSamplingAlignment(64)
    assert _count(alignment.predictor) == conv1 + conv2 + conv3 + lateral + pred == 216_712
    assert _count(alignment.sampling_conv) == 64 * 64 * 9  # the deformable conv, no bias
    weighted = SSVDSamplingAlignment(64, learned_weights=True)
    assert _count(weighted.predictor) == 216_712 + 64 * 9 + 1


def test_parameter_count_beside_stsn_offset_stack(capsys):
    """V10 (paper: ~40x fewer than STSN's stack). STSN's offset stack = its offset convs and the
    deformable convs that feed them (not its final resampling conv, the counterpart of SSVD's DCN)."""

    def stsn_stack(stsn: STSNAlignment) -> int:
        return _count(stsn.offset_convs) + _count(stsn.feature_convs)

    ssvd = _count(SSVDSamplingAlignment(64).predictor)
    stsn32 = stsn_stack(STSNAlignment(64, hidden_channels=32))  # as the STSN ablation builds it
    stsn64 = stsn_stack(STSNAlignment(64))  # STSN's default width (hidden = C)
    # hand count: offset convs 128->18, 3 x 32->18 (3x3, bias); deformable 128->32, 2 x 32->32 (bias)
    assert stsn32 == (128 * 18 * 9 + 18) + 3 * (32 * 18 * 9 + 18) + (128 * 32 * 9 + 32) + 2 * (
        32 * 32 * 9 + 32
    )
    with torch.device("meta"):  # paper widths: SSVD on 256-channel FPN levels, STSN 1024 channels
        ssvd_paper = _count(SSVDSamplingAlignment(256, identity_init=False).predictor)
        stsn_paper = stsn_stack(STSNAlignment(1024, identity_init=False))
    with capsys.disabled():
        print(
            f"\nSSVD offset predictor (C=64): {ssvd:,} params; STSN offset stack (C=64, hidden 32): "
            f"{stsn32:,} ({stsn32 / ssvd:.2f}x SSVD); hidden 64: {stsn64:,} ({stsn64 / ssvd:.2f}x); "
            f"paper widths: SSVD {ssvd_paper:,} vs STSN {stsn_paper:,} ({stsn_paper / ssvd_paper:.1f}x)"
        )
    assert ssvd_paper < stsn_paper


def test_offsets_use_four_deformable_groups_hand_case():
    """Offset (dy, dx) = (0, +1) on every tap of group 0 only: with the identity conv, the first
    C/4 channels read one cell to the right (zero beyond the border), the others are unchanged."""
    alignment = SSVDSamplingAlignment(8, identity_init=True, resample_reference=False)
    with torch.no_grad():
        alignment.predictor.pred.bias[1 : 2 * 9 : 2] = 1.0  # channels 2k+1 = dx of tap k in group 0
    ctx = make_context()
    out = alignment(ctx)
    offsets = out.aux["sampling_offsets"]
    assert offsets.shape == (BATCH, SUPPORTS, 2 * 9 * 4, GRID, GRID)
    moved, supports = out.features, ctx.supports
    torch.testing.assert_close(moved[:, :, :2, :, :-1], supports[:, :, :2, :, 1:])
    torch.testing.assert_close(moved[:, :, :2, :, -1], torch.zeros_like(moved[:, :, :2, :, -1]))
    torch.testing.assert_close(moved[:, :, 2:], supports[:, :, 2:])


@pytest.mark.parametrize("identity_init", [False, True])
def test_at_init_sampling_is_a_plain_conv_on_the_regular_grid(identity_init):
    """Zero-initialised offsets: the deformable conv equals ``F.conv2d`` with its own weight (the
    identity with ``identity_init``); the reference goes through the same conv."""
    torch.manual_seed(0)
    alignment = SSVDSamplingAlignment(CHANNELS, identity_init=identity_init)
    ctx = make_context()
    with torch.no_grad():
        out = alignment(ctx)
        weight = alignment.sampling_conv.weight
        expected = F.conv2d(ctx.supports.flatten(0, 1), weight, padding=1).unflatten(0, (BATCH, SUPPORTS))
        expected_reference = F.conv2d(ctx.reference, weight, padding=1)
    assert torch.count_nonzero(out.aux["sampling_offsets"]) == 0
    torch.testing.assert_close(out.features, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.reference, expected_reference, rtol=1e-5, atol=1e-5)
    if identity_init:
        torch.testing.assert_close(out.features, ctx.supports)


def test_motion_guided_offsets_are_the_flow_plus_the_prediction():
    """Flow guidance: every tap of every group is displaced by the grid flow (dy, dx); at init (zero
    residual, identity conv) the sampled support equals the flow-warped support."""
    alignment = SSVDSamplingAlignment(
        CHANNELS, flow_guidance=True, flow_source="oracle", resample_reference=False
    )
    assert alignment.needs_oracle_flow and not alignment.needs_images
    ctx = make_context()
    with torch.no_grad():
        out = alignment(ctx)
    grid_flow = flow_to_grid(ctx.oracle_flow.flatten(0, 1), grid_size=(GRID, GRID), image_size=(64, 64))
    offsets = out.aux["sampling_offsets"].flatten(0, 1)  # (B*T, 72, H, W)
    torch.testing.assert_close(offsets[:, 0::2], grid_flow[:, 1:2].expand(-1, 36, -1, -1))  # dy
    torch.testing.assert_close(offsets[:, 1::2], grid_flow[:, 0:1].expand(-1, 36, -1, -1))  # dx
    warped = flow_warp(ctx.supports.flatten(0, 1), grid_flow, padding_mode="zeros")
    torch.testing.assert_close(out.features.flatten(0, 1), warped, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.aux["flow"].flatten(0, 1), grid_flow)


def test_sampling_alignment_bad_input_names_the_culprit():
    with pytest.raises(ValueError, match="deformable_groups=3"):
        SSVDSamplingAlignment(8, deformable_groups=3)
    with pytest.raises(ValueError, match="flow_guidance"):
        SSVDSamplingAlignment(8, flownet_weights="weights.pt")
    with pytest.raises(ValueError, match="hidden_channels"):
        SSVDSamplingAlignment(8, hidden_channels=1)


# --- aggregator ------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", FUSION_SCHEMES)
@pytest.mark.parametrize("learned_weights", [False, True])
def test_aggregator_contract_for_every_scheme(fusion, learned_weights):
    kwargs = {"fusion": fusion, "learned_weights": learned_weights}
    check_aggregator_contract(AggregationConfig(aggregator="ssvd", aggregator_kwargs=kwargs))


def test_streams_heads_and_flags_per_scheme():
    late = SSVDAggregator(CHANNELS)
    assert late.stream_names == ("motion", "sampling") and late.box_fusion_iou == 0.45
    assert late.needs_images and not late.needs_oracle_flow and not late.per_stream_nms
    assert SSVDAggregator(CHANNELS, fusion="early").stream_names == ("main",)
    guided = SSVDAggregator(CHANNELS, fusion="motion_guided")
    assert guided.stream_names == ("main",) and guided.needs_images and guided.motion is None
    oracle = SSVDAggregator(CHANNELS, flow_source="oracle")
    assert oracle.needs_oracle_flow and not oracle.needs_images


def test_unknown_fusion_scheme_names_it_and_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown fusion scheme 'mid'.*late.*early.*motion_guided"):
        build_aggregator(AggregationConfig(aggregator="ssvd", aggregator_kwargs={"fusion": "mid"}), CHANNELS)
    with pytest.raises(ValueError, match="include_reference='sometimes'"):
        SSVDAggregator(CHANNELS, include_reference="sometimes")


def test_early_fusion_starts_as_the_mean_of_the_two_streams():
    torch.manual_seed(0)
    early = SSVDAggregator(CHANNELS, fusion="early")
    _perturb_parameters(early.sampling, seed=2)  # streams that differ, so the mean is a real check
    late = SSVDAggregator(CHANNELS, fusion="late")
    missing, unexpected = late.load_state_dict(early.state_dict(), strict=False)
    assert missing == [] and unexpected == ["reduce.weight", "reduce.bias"]
    ctx = make_context()
    with torch.no_grad():
        fused = early(ctx).streams["main"]
        streams = late(ctx).streams
    assert not torch.allclose(streams["motion"], streams["sampling"])
    torch.testing.assert_close(fused, (streams["motion"] + streams["sampling"]) / 2, rtol=1e-5, atol=1e-5)


def test_learned_weights_start_as_the_plain_average_and_mask_padding():
    torch.manual_seed(0)
    plain = SSVDAggregator(CHANNELS)
    learned = SSVDAggregator(CHANNELS, learned_weights=True)
    state = {k: v for k, v in learned.state_dict().items()}
    plain_state = plain.state_dict()
    for key in plain_state:  # the learned pred has one more output channel (its last)
        plain_state[key] = (
            state[key][: plain_state[key].shape[0]]
            if key.startswith("sampling.predictor.pred")
            else state[key]
        )
    plain.load_state_dict(plain_state)
    ctx = make_context()
    with torch.no_grad():
        torch.testing.assert_close(learned(ctx).streams["sampling"], plain(ctx).streams["sampling"])
        learned.sampling.predictor.pred.weight[-1].normal_()  # position-dependent weight logits
        out = learned(ctx)
    weights = out.aux["sampling_fusion_weights"]  # (B, 1 + T, H, W), reference first
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(BATCH, GRID, GRID))
    assert torch.equal(weights[:, 1:][~ctx.valid], torch.zeros_like(weights[:, 1:][~ctx.valid]))
    assert weights.std(dim=(2, 3)).max() > 0  # no longer uniform


def test_mean_over_frames_hand_case():
    frames = torch.tensor([1.0, 3.0, 100.0]).view(1, 3, 1, 1, 1)
    valid = torch.tensor([[True, True, False]])
    fused, weights = mean_over_frames(frames, valid)
    assert fused.item() == 2.0 and weights.flatten().tolist() == [0.5, 0.5, 0.0]
    logits = torch.log(torch.tensor([1.0, 3.0, 5.0])).view(1, 3, 1, 1)  # softmax over valid: 1/4, 3/4
    fused, weights = mean_over_frames(frames, valid, logits)
    torch.testing.assert_close(fused.flatten(), torch.tensor([1.0 * 0.25 + 3.0 * 0.75]))
    torch.testing.assert_close(weights.flatten(), torch.tensor([0.25, 0.75, 0.0]))


@pytest.mark.parametrize("include_reference, train_frames, eval_frames", [
    ("always", 1 + SUPPORTS, 1 + SUPPORTS), (True, 1 + SUPPORTS, 1 + SUPPORTS),
    ("never", SUPPORTS, SUPPORTS), (False, SUPPORTS, SUPPORTS), ("eval", SUPPORTS, 1 + SUPPORTS),
])  # fmt: skip
def test_include_reference(include_reference, train_frames, eval_frames):
    aggregator = SSVDAggregator(CHANNELS, include_reference=include_reference)
    ctx = make_context()
    with torch.no_grad():
        trained = aggregator.train()(ctx)
        evaluated = aggregator.eval()(ctx)
    for out, frames in ((trained, train_frames), (evaluated, eval_frames)):
        for stream in ("motion", "sampling"):
            assert out.aux[f"{stream}_fusion_weights"].shape[1] == frames
    if eval_frames == SUPPORTS:  # Algorithm 1: the two supports only; identity init = the supports' mean
        mask = ctx.valid[:, :, None, None, None].float()
        supports_mean = (ctx.supports * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(evaluated.streams["sampling"], supports_mean, rtol=1e-5, atol=1e-5)


def test_no_valid_support_falls_back_to_the_reference():
    aggregator = SSVDAggregator(CHANNELS, include_reference="never")
    ctx = make_context()
    ctx = dataclasses.replace(ctx, valid=torch.tensor([[False, False, False], [True, False, True]]))
    with torch.no_grad():
        out = aggregator(ctx)
    for stream in out.streams.values():
        torch.testing.assert_close(stream[0], ctx.reference[0])
        assert torch.isfinite(stream).all()


# --- late fusion -----------------------------------------------------------------------------


class FixedHead(nn.Module):
    """Returns given candidates (before NMS); ``predict`` = its own class-wise NMS at 0.45."""

    def __init__(self, boxes, scores, labels):
        super().__init__()
        self.boxes = torch.tensor(boxes, dtype=torch.float32)
        self.scores = torch.tensor(scores)
        self.labels = torch.tensor(labels)

    def forward(self, features):
        return features

    def candidates(self, output, image_size):
        return [(self.boxes, self.scores, self.labels)]

    def predict(self, output, image_size):
        from torchvision.ops import batched_nms

        keep = batched_nms(self.boxes, self.scores, self.labels, 0.45)
        return [(self.boxes[keep], self.scores[keep], self.labels[keep])]


def _late_detector(motion: FixedHead, sampling: FixedHead, **kwargs) -> VideoDetector:
    aggregator = SSVDAggregator(16, **kwargs)
    return VideoDetector(
        backbone=ResNetBackbone(width=8, depth=(1, 1), out_channels=16),
        aggregator=aggregator,
        heads=nn.ModuleDict({"motion": motion, "sampling": sampling}),
        box_fusion_iou=aggregator.box_fusion_iou,
        per_stream_nms=aggregator.per_stream_nms,
    )


def _detect(detector: VideoDetector) -> set[tuple]:
    features = torch.zeros(1, 16, 4, 4)
    boxes, scores, labels = detector.detect(
        AggregationOutput({"motion": features, "sampling": features}), 64
    )[0]
    return {
        (tuple(b.tolist()), round(s.item(), 3), int(l)) for b, s, l in zip(boxes, scores, labels, strict=True)
    }


def test_late_fusion_keeps_single_stream_boxes_and_merges_overlapping_ones():
    """Motion finds A; sampling finds A' (IoU(A, A') = 0.6 > 0.45), B (found by sampling only) and C
    (A's box, another class): A' is merged into A, B and C are kept."""
    a, a_shifted, b = [0, 0, 10, 10], [0, 0, 10, 6], [30, 30, 40, 40]  # IoU(a, a_shifted) = 60 / 100
    motion = FixedHead([a], [0.9], [0])
    sampling = FixedHead([a_shifted, b, a], [0.8, 0.7, 0.6], [0, 0, 1])
    kept = _detect(_late_detector(motion, sampling))
    assert kept == {
        (tuple(map(float, a)), 0.9, 0),
        (tuple(map(float, b)), 0.7, 0),
        (tuple(map(float, a)), 0.6, 1),
    }


def test_late_fusion_runs_one_nms_over_both_streams_unless_per_stream_nms():
    """b0 (sampling, 0.95) overlaps a1 (motion, 0.9), which overlaps a2 (motion, 0.8); a2 does not
    overlap b0. One joint NMS (paper, official code): a1 falls to b0, so a2 survives. Per-stream NMS
    first: a2 already fell to a1 inside the motion stream."""
    b0, a1, a2 = [0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]  # IoU(b0,a1)=IoU(a1,a2)=7/13, (b0,a2)=4/16
    motion = FixedHead([a1, a2], [0.9, 0.8], [0, 0])
    sampling = FixedHead([b0], [0.95], [0])
    joint = _detect(_late_detector(motion, sampling))
    assert {box for box, _, _ in joint} == {tuple(map(float, b0)), tuple(map(float, a2))}
    first = _detect(_late_detector(motion, sampling, per_stream_nms=True))
    assert {box for box, _, _ in first} == {tuple(map(float, b0))}


# --- test-time spacing (Algorithm 2) and training supports (Algorithm 1) -----------------------


def _official_offsets(n: int, max_range: int = 12) -> list[int]:
    """``prepare_data`` of the official test code: interval = 2R // n, supports at -+(i+1) * interval."""
    interval = 2 * max_range // n
    offsets = []
    for i in range(n // 2):
        offsets += [-(i + 1) * interval, (i + 1) * interval]
    return sorted(offsets)


@pytest.mark.parametrize("n", TABLE5_SUPPORTS)
def test_test_spacing_equals_the_official_spacing(n):
    spec = ssvd_test_support(n)
    assert spec.boundary == "pad" and spec.num == n
    official = np.array(_official_offsets(n))
    for num_frames, ref in ((100, 50), (100, 0), (100, 99), (30, 3), (10, 5)):
        indices = support_indices(ref, num_frames, spec)
        # the official buffer is padded with copies of the first / last frame: indices clamp
        np.testing.assert_array_equal(indices, np.clip(ref + official, 0, num_frames - 1), err_msg=f"{ref}")
    assert np.abs(official).max() <= 12


def test_test_support_bad_counts_raise_naming_them():
    for n in (25, 26, 48):
        with pytest.raises(ValueError, match=f"n={n} supports do not fit a buffer of 25"):
            ssvd_test_support(n)
    with pytest.raises(ValueError, match="n=5 must be even"):
        ssvd_test_support(5)
    with pytest.raises(ValueError, match="n=-2"):
        ssvd_test_support(-2)
    with pytest.raises(ValueError, match="buffer must be odd"):
        ssvd_test_support(2, buffer=24)
    assert ssvd_test_support(0) == SupportSpec()
    assert ssvd_test_support(6, buffer=31).stride == 5  # the official config's range 15: +-5, +-10, +-15


def test_training_supports_are_two_random_frames_within_12():
    rng = np.random.default_rng(0)
    drawn = np.stack([support_indices(50, 100, TRAIN_SUPPORT, rng) - 50 for _ in range(200)])
    assert drawn.shape == (200, 2)
    assert np.abs(drawn).max() == 12 and (drawn != 0).all() and (drawn[:, 0] != drawn[:, 1]).all()
    assert len(np.unique(drawn)) == 24  # every offset of [-12, 12] but 0 is drawn


# --- losses through the detector -------------------------------------------------------------

TINY = ModelConfig(
    num_classes=NUM_CLASSES,
    backbone=BackboneConfig(width=8, depth=(1, 1), out_channels=16),
    head=HeadConfig(channels=16, num_convs=1),
)


def _ssvd_model(**kwargs) -> VideoDetector:
    torch.manual_seed(0)
    aggregation = AggregationConfig(aggregator="ssvd", aggregator_kwargs={"flownet_width": 8, **kwargs})
    return build_detector(dataclasses.replace(TINY, aggregation=aggregation))


def test_late_losses_of_both_streams_are_present_and_summed():
    detector = _ssvd_model()
    assert set(detector.heads) == {"motion", "sampling"} and detector.box_fusion_iou == 0.45
    batch = fake_collate([FakeDataset(num_samples=2, num_supports=2)[i] for i in range(2)])
    losses = detector.losses(batch)
    assert set(losses) == {
        f"loss_{t}_{s}" for t in ("cls", "box", "centerness") for s in ("motion", "sampling")
    }
    output = detector.forward_batch(batch)
    boxes = [b.float() for b in batch.boxes]
    for stream in ("motion", "sampling"):
        head = detector.heads[stream]
        alone = head.losses(head(output.streams[stream]), boxes, batch.labels)
        for term, value in alone.items():
            torch.testing.assert_close(losses[f"{term}_{stream}"], value)
    sum(losses.values()).backward()  # Eq. 4: one objective over both streams
    reached = (
        "heads.motion.cls_logits.weight",
        "heads.sampling.cls_logits.weight",
        "aggregator.sampling.predictor.pred.weight",
        "aggregator.motion.flownet.encoder_half.0.0.weight",
    )
    for name in reached:
        parameter = dict(detector.named_parameters()).get(name)
        assert parameter is not None, name
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("fusion", ["early", "motion_guided"])
def test_one_head_schemes_have_plain_losses(fusion):
    detector = _ssvd_model(fusion=fusion)
    assert set(detector.heads) == {"main"}
    batch = fake_collate([FakeDataset(num_samples=1, num_supports=2)[0]])
    losses = detector.losses(batch)
    assert set(losses) == {"loss_cls", "loss_box", "loss_centerness"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_load_phase1_starts_both_heads_from_the_phase1_head():
    phase1 = build_detector(TINY, single_frame=True)
    detector = _ssvd_model()
    missing = detector.load_phase1({k: v.clone() for k, v in phase1.state_dict().items()})
    assert missing and all(k.startswith("aggregator.") for k in missing)
    for stream in ("motion", "sampling"):
        torch.testing.assert_close(
            detector.heads[stream].cls_logits.weight, phase1.heads["main"].cls_logits.weight
        )


def test_weight_logit_channel_learns_from_the_start():
    """At init (no perturbation) the detection loss reaches the weight-logit channel: its ReLU is not
    stuck at the kink (bias 1, not 0)."""
    torch.manual_seed(0)
    aggregator = SSVDAggregator(CHANNELS, learned_weights=True)
    ctx = make_context()
    aggregator(ctx).streams["sampling"].square().mean().backward()
    grad = aggregator.sampling.predictor.pred.weight.grad
    assert grad[-1].abs().sum() > 0
