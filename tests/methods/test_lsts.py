"""aggregator:lsts (SRFU + DFA in stream mode): hand cases of the memory update and the non-keyframe
aggregation, the official eq-flag cases of the triplet, interval 1 = per-frame full features, the
propagation and the quality fusion looked up by name, the Transform's cost against the backbone part
it replaces, bad input naming the culprit, and the variants through the contract checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.aggregation import StreamClip, StreamFrame, build_aggregator
from harness.config import AggregationConfig, BackboneConfig, DataConfig, HeadConfig, ModelConfig, SupportSpec
from harness.data.dataset import load_split
from harness.data.synthvid import ensure_synthvid
from harness.infer import predict_split
from harness.model.backbone import ResNetBackbone
from harness.model.detector import build_detector
from methods.lsts import LowAdapter, LSTSAggregator, Transform
from tests.methods.test_contract import check_aggregator_contract
from tests.model.fakes import FakeDataset, fake_collate

C, CL, H = 8, 4, 4  # high channels, low channels, high grid (low grid = 2 * H)


def lsts(**kwargs) -> LSTSAggregator:
    torch.manual_seed(0)
    defaults = {"propagation": "identity", "quality_fusion": "cosine_softmax", "low_channels": CL}
    return LSTSAggregator(C, **{**defaults, **kwargs})


def frame(high_rows: list[torch.Tensor], keyframe: list[bool], frame_ids: list[int], low=None) -> StreamFrame:
    b = len(keyframe)
    low = low if low is not None else torch.randn(b, CL, 2 * H, 2 * H)
    high = torch.stack(high_rows) if high_rows else torch.zeros(0, C, H, H)
    return StreamFrame(
        low=low,
        keyframe=torch.tensor(keyframe),
        high=high,
        frame_ids=torch.tensor(frame_ids),
        feature_stride=8,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"memory_update": "fixed", "nonkey_aggregation": "fixed", "transform": False},
        # without DFA aggregation the lift is only the propagation's query: stsn reads it (identity not)
        {"memory_update": "none", "nonkey_aggregation": "none", "propagation": "stsn"},
        {"propagation": "stsn", "propagation_kwargs": {"num_layers": 2}},
        {"propagation": "flow_warp", "propagation_kwargs": {"flow_source": "farneback"}, "transform": False},
    ],
    ids=["identity-quality", "fixed-no-transform", "none", "stsn", "farneback"],
)
def test_variants_satisfy_the_aggregator_contract(kwargs):
    from tests.methods.test_contract import LOW_CHANNELS

    config = {"propagation": "identity", "quality_fusion": "cosine_softmax", "low_channels": LOW_CHANNELS}
    check_aggregator_contract(AggregationConfig(aggregator="lsts", aggregator_kwargs={**config, **kwargs}))


def test_fixed_srfu_and_dfa_by_hand():
    """Identity propagation: keyframe memories are running 0.5 / 0.5 averages; a non-keyframe is
    0.5 * (lift(low) + its keyframe's memory), or the memory itself without DFA aggregation."""
    aggregator = lsts(memory_update="fixed", nonkey_aggregation="fixed")
    f1, f2 = torch.randn(C, H, H), torch.randn(C, H, H)
    states = [aggregator.init_state()]
    with torch.no_grad():
        first = aggregator.step(frame([f1], [True], [0]), states).features[0]
        torch.testing.assert_close(first, f1)  # no memory yet: the keyframe's own features
        second = aggregator.step(frame([f2], [True], [10]), states).features[0]
        torch.testing.assert_close(second, 0.5 * (f2 + f1))
        torch.testing.assert_close(states[0]["memory"], second)
        low = torch.randn(1, CL, 2 * H, 2 * H)
        non_key = aggregator.step(frame([], [False], [13], low), states).features[0]
        torch.testing.assert_close(non_key, 0.5 * (aggregator.lift(low)[0] + second))
        plain = lsts(memory_update="fixed", nonkey_aggregation="none")
        plain_states = [{"memory": second, "key_frame_id": 10, "key_image": None}]
        held = plain.step(frame([], [False], [13], low), plain_states).features[0]
    torch.testing.assert_close(held, second)


def test_without_memory_update_each_keyframe_keeps_its_own_features():
    aggregator = lsts(memory_update="none")
    f1, f2 = torch.randn(C, H, H), torch.randn(C, H, H)
    states = [aggregator.init_state()]
    with torch.no_grad():
        aggregator.step(frame([f1], [True], [0]), states)
        out = aggregator.step(frame([f2], [True], [10]), states).features[0]
    assert torch.equal(out, f2)


def test_triplet_eq_flags_follow_the_official_code():
    """Old == new keyframe (clamped at the start): the memory is the new keyframe's features, not a
    fusion with itself (eq_flag_key2key); new keyframe == current frame: the keyframe's output."""
    aggregator = lsts(memory_update="fixed", nonkey_aggregation="none")
    key_high = torch.randn(2, 2, C, H, H)
    clip = StreamClip(
        key_low=torch.randn(2, 2, CL, 2 * H, 2 * H),
        key_high=key_high,
        key_offsets=torch.tensor([[-3, -3], [-8, 0]]),
        valid=torch.ones(2, 2, dtype=torch.bool),
        current_low=torch.randn(2, CL, 2 * H, 2 * H),
    )
    with torch.no_grad():
        out = aggregator.forward_clip(clip).features
    torch.testing.assert_close(out[0], key_high[0, 1])  # memory = new key, DFA "none" = the memory
    torch.testing.assert_close(out[1], 0.5 * (key_high[1, 1] + key_high[1, 0]))  # the keyframe's SRFU


def test_batched_rows_keep_their_own_memory():
    aggregator = lsts(memory_update="fixed", nonkey_aggregation="fixed")
    features = torch.randn(3, C, H, H)
    with torch.no_grad():
        together = [aggregator.init_state() for _ in range(2)]
        aggregator.step(frame([features[0], features[1]], [True, True], [0, 0]), together)
        # row 0 reaches its next keyframe while row 1 is at a non-keyframe
        low = torch.randn(2, CL, 2 * H, 2 * H)
        mixed = aggregator.step(frame([features[2]], [True, False], [10, 4], low), together).features
        alone0, alone1 = [aggregator.init_state()], [aggregator.init_state()]
        aggregator.step(frame([features[0]], [True], [0]), alone0)
        aggregator.step(frame([features[1]], [True], [0]), alone1)
        first = aggregator.step(frame([features[2]], [True], [10], low[:1]), alone0).features
        second = aggregator.step(frame([], [False], [4], low[1:]), alone1).features
    torch.testing.assert_close(mixed, torch.cat([first, second]), rtol=1e-5, atol=1e-6)


def _tiny_videos(tmp_path):
    root = ensure_synthvid("tiny", seed=0, data_dir=tmp_path / "data", progress=False)
    return load_split(DataConfig(root=str(root)), "val")


def _model(num_classes: int, aggregation: AggregationConfig | None = None) -> ModelConfig:
    return ModelConfig(
        num_classes=num_classes,
        backbone=BackboneConfig(width=8, depth=(1, 1), out_channels=16),
        head=HeadConfig(channels=16, num_convs=1, score_threshold=0.0, max_detections=20),
        aggregation=aggregation or AggregationConfig(),
    )


def test_interval_one_reduces_to_per_frame_full_features(tmp_path, one_thread):
    """Every frame a keyframe: forward_high on every frame; without the memory update the
    detections are the single-frame detector's."""
    videos = _tiny_videos(tmp_path)
    aggregation = AggregationConfig(
        aggregator="lsts",
        aggregator_kwargs={
            "keyframe_interval": 1,
            "propagation": "identity",
            "memory_update": "none",
            "nonkey_aggregation": "none",
            "low_channels": 8,
        },
    )
    torch.manual_seed(0)
    single = build_detector(_model(len(videos[0].classes)), single_frame=True).eval()
    detector = build_detector(_model(len(videos[0].classes), aggregation)).eval()
    detector.load_state_dict(single.state_dict(), strict=False)
    high_rows = []
    original = detector.extract_high
    detector.extract_high = lambda low: high_rows.append(low.shape[0]) or original(low)
    kwargs = {"image_size": 32, "device": "cpu", "progress": False}
    expected = predict_split(single, videos, support=SupportSpec(), **kwargs)
    streamed = predict_split(detector, videos, support=SupportSpec(), batch_videos=2, **kwargs)
    assert sum(high_rows) == sum(len(v) for v in videos)
    assert streamed.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(streamed[key].boxes, expected[key].boxes, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(streamed[key].scores, expected[key].scores, rtol=1e-5, atol=1e-6)


def test_trains_end_to_end_on_triplets_through_the_detector(one_thread):
    """The detector's stream training path: losses on the current frame reach the Transform (the
    current frame's low features), the propagation, both fusions and the keyframes' backbone."""
    aggregation = AggregationConfig(
        aggregator="lsts",
        aggregator_kwargs={"propagation": "flow_warp", "quality_fusion": "cosine_softmax", "low_channels": 8},
    )
    torch.manual_seed(0)
    detector = build_detector(_model(3, aggregation))
    batch = fake_collate([FakeDataset(num_samples=2, num_supports=2)[i] for i in range(2)])
    batch = dataclasses.replace(batch, offsets=torch.tensor([[-8, -3], [-7, 2]]))
    sum(detector.losses(batch).values()).backward()
    for name in ("lift", "propagation", "memory_fusion", "nonkey_fusion"):
        module = getattr(detector.aggregator, name)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), name
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in detector.backbone.later_stages.parameters()
    )


def test_transform_costs_a_fraction_of_the_backbone_part_it_replaces():
    """At the default 128 px frames and backbone (width 32, C 64): Transform FLOPs <= 20% of
    forward_high (the notes' budget; the measured ratio is printed for the report)."""
    backbone = ResNetBackbone(width=32, depth=(1, 1, 1), out_channels=64)
    low = torch.zeros(1, 32, 32, 32)
    counts = {}
    for name, module in [
        ("high", backbone.later_stages),
        ("project", backbone.project),
        ("transform", Transform(32, 64, 32)),
        ("adapter", LowAdapter(32, 64)),
    ]:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            module(low if name != "project" else torch.zeros(1, 64, 16, 16))
        counts[name] = counter.get_total_flops()
    high = counts["high"] + counts["project"]
    ratio = counts["transform"] / high
    print(
        f"transform {counts['transform'] / 1e6:.1f} MFLOPs, forward_high {high / 1e6:.1f} MFLOPs: {ratio:.3f}"
    )
    assert 0 < ratio <= 0.2
    assert counts["adapter"] < counts["transform"]


def test_propagation_and_quality_fusion_are_looked_up_by_name():
    assert type(lsts(propagation="stsn", propagation_kwargs={"num_layers": 2}).propagation).__name__ == (
        "STSNAlignment"
    )
    aggregator = lsts(memory_update="quality", nonkey_aggregation="fixed")
    assert type(aggregator.memory_fusion).__name__ == "CosineSoftmaxFusion"
    assert type(aggregator.nonkey_fusion).__name__ == "AverageFusion"
    assert lsts(propagation="flow_warp", propagation_kwargs={"flow_source": "farneback"}).needs_images


def test_bad_input_raises_naming_the_culprit():
    with pytest.raises(ValueError, match="keyframe_interval"):
        lsts(keyframe_interval=0)
    with pytest.raises(KeyError, match="unknown alignment 'bogus'"):
        lsts(propagation="bogus")
    with pytest.raises(KeyError, match="unknown fusion 'bogus'"):
        lsts(quality_fusion="bogus")
    with pytest.raises(ValueError, match="memory_update"):
        lsts(memory_update="half")
    with pytest.raises(ValueError, match="nonkey_aggregation"):
        lsts(nonkey_aggregation="mean")
    with pytest.raises(ValueError, match="oracle flow"):
        lsts(propagation="flow_warp", propagation_kwargs={"flow_source": "oracle"})
    aggregator = lsts()
    with pytest.raises(ValueError, match="without a keyframe memory"):
        aggregator.step(frame([], [False], [3]), [aggregator.init_state()])
    states = [aggregator.init_state()]
    aggregator.step(frame([torch.randn(C, H, H)], [True], [0]), states)
    with pytest.raises(ValueError, match="low has 5 channels"):
        aggregator.step(frame([], [False], [1], torch.randn(1, 5, 2 * H, 2 * H)), states)
    with pytest.raises(ValueError, match="high has 9 channels"):
        aggregator.step(frame([torch.randn(9, H, H)], [True], [10]), states)


def test_built_from_the_config_with_flownet_weights_for_flow_propagation(tmp_path):
    from methods.flownet import FlowNetC

    weights = tmp_path / "flownet.pt"
    torch.save(FlowNetC(width=16, max_displacement=4).state_dict(), weights)
    config = AggregationConfig(
        aggregator="lsts",
        aggregator_kwargs={
            "propagation": "flow_warp",
            "flownet_weights": str(weights),
            "low_channels": CL,
            "quality_fusion": "cosine_softmax",
        },
    )
    aggregator = build_aggregator(config, C)
    assert aggregator.needs_images and aggregator.mode == "stream" and aggregator.keyframe_interval == 10
