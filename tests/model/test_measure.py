"""measure(): real-window offsets, named scopes per part (any name), robust statistics, FLOPs and
parameters per part against hand counts, environment fields, summary_row, errors naming the culprit.
No test asserts an absolute time."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from harness.aggregation import (
    AggregationOutput,
    StreamAggregator,
    StreamFrame,
    TemporalAggregator,
    TemporalContext,
)
from harness.config import AggregationConfig, BackboneConfig, HeadConfig, ModelConfig, SupportSpec
from harness.infer import plan_supports
from harness.measure import cpu_model, measure, scope, summary_row, support_offsets
from harness.model.backbone import ResNetBackbone
from harness.model.detector import VideoDetector, build_detector
from harness.model.head import FCOSHead

IMAGE_SIZE = 32
CHANNELS = 16
FEATURE_CELLS = (IMAGE_SIZE // 8) ** 2
SLIDING = SupportSpec(strategy="sliding", radius=2, stride=1, boundary="pad")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ConvPerSupport(TemporalAggregator):
    """Reference + mean over supports of a 1x1 conv: 2*C*C*H*W FLOPs per support; opens no scope."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Conv2d(CHANNELS, CHANNELS, 1, bias=False)
        self.seen_offsets: list[list[int]] = []

    def forward(self, ctx: TemporalContext) -> AggregationOutput:
        self.seen_offsets.append(ctx.offsets[0].tolist())
        if ctx.num_supports == 0:
            return AggregationOutput({"main": ctx.reference})
        mixed = self.mix(ctx.supports.flatten(0, 1)).unflatten(0, ctx.supports.shape[:2])  # (B, T, C, H, W)
        return AggregationOutput({"main": ctx.reference + mixed.mean(1)})


class FakeMemory(TemporalAggregator):
    """A stateful-looking method: a 1x1 conv per support inside scope("memory") (with a nested
    scope of the same name, counted once) and a 1x1 conv on the result inside scope("readout")."""

    def __init__(self):
        super().__init__()
        self.cell = nn.Conv2d(CHANNELS, CHANNELS, 1, bias=False)
        self.readout = nn.Conv2d(CHANNELS, CHANNELS, 1, bias=False)

    def forward(self, ctx: TemporalContext) -> AggregationOutput:
        state = ctx.reference
        with scope("memory"):
            for t in range(ctx.num_supports):
                with scope("memory"):
                    state = state + self.cell(ctx.supports[:, t])
        with scope("readout"):
            out = self.readout(state)
        return AggregationOutput({"main": out})


class UnknownMode(TemporalAggregator):
    mode = "online"


def _detector(aggregator: TemporalAggregator) -> VideoDetector:
    torch.manual_seed(0)
    return VideoDetector(
        backbone=ResNetBackbone(width=8, depth=(1, 1), out_channels=CHANNELS),
        aggregator=aggregator,
        heads=nn.ModuleDict(
            {"main": FCOSHead(in_channels=CHANNELS, num_classes=3, channels=16, num_convs=1)}
        ),
    )


def _window_detector(alignment: str = "identity", fusion: str = "average") -> VideoDetector:
    torch.manual_seed(0)
    model = ModelConfig(
        num_classes=3,
        backbone=BackboneConfig(width=8, depth=(1, 1), out_channels=CHANNELS),
        head=HeadConfig(channels=16, num_convs=1, score_threshold=0.0, max_detections=20),
        aggregation=AggregationConfig(alignment=alignment, fusion=fusion),
    )
    return build_detector(model)


def conv_flops(module: nn.Module, inputs: torch.Tensor) -> int:
    """Independent count: 2 * (Cin/groups) * kh * kw * Cout * Hout * Wout summed over Conv2d calls."""
    total = 0

    def hook(conv, _inputs, output):
        nonlocal total
        kh, kw = conv.kernel_size
        total += 2 * (conv.in_channels // conv.groups) * kh * kw * output.numel()

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        module(inputs)
    for handle in handles:
        handle.remove()
    return total


def _quick(detector: VideoDetector, offsets, **kwargs):
    kwargs = {"warmup": 1, "iters": 4, **kwargs}
    return measure(detector, image_size=IMAGE_SIZE, offsets=offsets, device="cpu", **kwargs)


# ---------------------------------------------------------------------------------------------
# offsets from a real window
# ---------------------------------------------------------------------------------------------


def test_support_offsets_are_the_engines_window_at_mid_video():
    assert support_offsets(SLIDING, num_frames=20) == (-2, -1, 1, 2)
    stride = SupportSpec(strategy="fixed_stride", num=4, stride=3)
    assert support_offsets(stride, num_frames=41) == (-6, -3, 3, 6)
    # the same row plan_supports gives the engine, at any chosen reference
    supports, _ = plan_supports(20, SLIDING)
    assert support_offsets(SLIDING, num_frames=20, reference=0) == tuple(int(i) for i in supports[0])
    assert support_offsets(SupportSpec(), num_frames=7) == ()
    with pytest.raises(ValueError, match="reference 9"):
        support_offsets(SLIDING, num_frames=9, reference=9)
    with pytest.raises(ValueError, match="num_frames"):
        support_offsets(SLIDING, num_frames=0)


def test_aggregator_sees_the_real_window_offsets_without_zero():
    detector = _detector(ConvPerSupport())
    offsets = support_offsets(SLIDING, num_frames=30)
    result = _quick(detector, offsets)
    assert 0 not in offsets
    assert result["offsets"] == [-2, -1, 1, 2] and result["num_supports"] == 4
    seen = detector.aggregator.seen_offsets
    assert len(seen) == 1 + 1 + 4  # FLOP frame + warm-up + timed frames
    assert all(row == [-2, -1, 1, 2] for row in seen)


# ---------------------------------------------------------------------------------------------
# parts, FLOPs, parameters
# ---------------------------------------------------------------------------------------------


def test_flops_and_params_per_part_match_hand_counts():
    detector = _detector(ConvPerSupport())
    result = _quick(detector, (-3, -1, 2))
    parts = result["parts"]
    # an aggregator without scopes of its own is timed as one part
    assert list(parts) == ["backbone", "aggregation", "head", "postprocess"]
    assert all(part["parent"] is None for part in parts.values())
    image = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    head_input = torch.zeros(1, CHANNELS, IMAGE_SIZE // 8, IMAGE_SIZE // 8)
    assert parts["backbone"]["flops"] == conv_flops(detector.backbone, image)
    assert parts["aggregation"]["flops"] == 3 * 2 * CHANNELS * CHANNELS * FEATURE_CELLS
    assert parts["head"]["flops"] == conv_flops(detector.heads["main"], head_input)
    assert parts["postprocess"]["flops"] == 0
    assert result["frame"]["flops"] == sum(part["flops"] for part in parts.values())
    params = result["params"]
    assert params["aggregator"] == params["aggregator.mix"] == CHANNELS * CHANNELS
    assert params["backbone"] == sum(p.numel() for p in detector.backbone.parameters())
    assert params["heads"] == params["heads.main"] == sum(p.numel() for p in detector.heads.parameters())
    assert params["total"] == params["backbone"] + params["aggregator"] + params["heads"]


def test_window_method_reports_alignment_and_fusion_inside_aggregation():
    detector = _window_detector("identity", "cosine_softmax")
    result = _quick(detector, support_offsets(SLIDING, num_frames=30))
    parts = result["parts"]
    assert list(parts) == ["backbone", "aggregation", "alignment", "fusion", "head", "postprocess"]
    assert parts["alignment"]["parent"] == parts["fusion"]["parent"] == "aggregation"
    assert parts["alignment"]["calls"] == parts["fusion"]["calls"] == 1
    assert "memory" not in parts  # absent, not 0
    assert parts["alignment"]["flops"] == 0  # identity moves nothing
    # the fusion is the aggregator's only work with FLOPs, and it happens inside the fusion scope
    assert parts["fusion"]["flops"] == parts["aggregation"]["flops"] > 0
    fusion_params = result["params"]["aggregator.fusion"]
    assert fusion_params == sum(p.numel() for p in detector.aggregator.fusion.parameters()) > 0
    assert result["params"]["aggregator.alignment"] == 0
    # per frame, nested parts are disjoint intervals inside their parent, top-level ones inside the frame
    for alignment, fusion, aggregation in zip(
        parts["alignment"]["samples"],
        parts["fusion"]["samples"],
        parts["aggregation"]["samples"],
        strict=True,
    ):
        assert alignment + fusion <= aggregation
    assert result["frame"]["unscoped_seconds"]["min"] >= 0


def test_a_method_scope_with_any_name_becomes_a_part():
    detector = _detector(FakeMemory())
    result = _quick(detector, (-2, -1, 1, 2))
    parts = result["parts"]
    assert list(parts) == ["backbone", "aggregation", "memory", "head", "postprocess", "readout"]
    assert parts["memory"]["parent"] == parts["readout"]["parent"] == "aggregation"
    assert parts["memory"]["calls"] == 1  # the nested memory scopes are counted by the outer one
    assert parts["memory"]["flops"] == 4 * 2 * CHANNELS * CHANNELS * FEATURE_CELLS
    assert parts["readout"]["flops"] == 2 * CHANNELS * CHANNELS * FEATURE_CELLS
    assert parts["memory"]["frames"] == result["iters"]
    row = summary_row(result)
    assert {"seconds_memory", "flops_memory", "seconds_readout", "params_aggregation_cell"} <= set(row)


def test_without_supports_the_window_parts_are_absent():
    result = _quick(_window_detector(), ())
    assert "alignment" not in result["parts"] and "fusion" not in result["parts"]
    assert result["parts"]["aggregation"]["flops"] == 0
    row = summary_row(result)
    assert "seconds_alignment" not in row and "flops_fusion" not in row
    assert row["num_supports"] == 0.0


# ---------------------------------------------------------------------------------------------
# statistics and environment
# ---------------------------------------------------------------------------------------------


def test_defaults_time_at_least_30_frames_with_consistent_robust_statistics():
    result = measure(_window_detector(), image_size=IMAGE_SIZE, offsets=(-1, 1), device="cpu")
    assert result["iters"] >= 30 and result["warmup"] >= 1
    assert len(result["frame"]["samples"]) == result["iters"]
    for stats in [result["frame"]["seconds"], *(part["seconds"] for part in result["parts"].values())]:
        assert stats["min"] <= stats["q25"] <= stats["median"] <= stats["q75"] <= stats["max"]
        assert stats["iqr"] == pytest.approx(stats["q75"] - stats["q25"])
        assert stats["min"] <= stats["mean"] <= stats["max"]
    for part in result["parts"].values():
        assert part["frames"] == result["iters"]
    samples = sorted(result["frame"]["samples"])
    assert result["frame"]["seconds"]["median"] == pytest.approx(
        (samples[len(samples) // 2 - 1] + samples[len(samples) // 2]) / 2
    )  # 30 samples: the mean of the 15th and 16th
    assert result["fps"] == pytest.approx(1 / result["frame"]["seconds"]["median"])
    # top-level parts are disjoint intervals inside each frame
    assert result["frame"]["unscoped_seconds"]["min"] >= 0


def test_environment_fields_are_recorded():
    result = _quick(_window_detector(), (-1, 1), batch_size=2)
    assert result["batch_size"] == 2
    assert result["torch_threads"] == torch.get_num_threads() == 1
    assert result["torch_version"] == torch.__version__
    assert result["device"] == "cpu" and result["iters"] == 4 and result["warmup"] == 1
    assert isinstance(result["cpu_model"], str) and result["cpu_model"]
    assert result["device_name"] == result["cpu_model"]
    assert isinstance(result["torch_interop_threads"], int)
    assert "batch 2" in result["timed"] and "1 torch threads" in result["timed"]
    assert "decomposition" in result["flops_note"]


def test_cpu_model_reads_proc_cpuinfo_and_falls_back(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: Test\nmodel name\t: Test CPU @ 2.00GHz\nflags\t: x\n")
    assert cpu_model(cpuinfo) == "Test CPU @ 2.00GHz"
    assert cpu_model(tmp_path / "missing")  # platform's answer, never empty
    (tmp_path / "arm").write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")
    assert cpu_model(tmp_path / "arm") == cpu_model(tmp_path / "missing")


def test_batch_flops_are_per_batch_and_times_per_frame():
    single = _quick(_detector(ConvPerSupport()), (-1, 1))
    double = _quick(_detector(ConvPerSupport()), (-1, 1), batch_size=2)
    assert double["parts"]["aggregation"]["flops"] == 2 * single["parts"]["aggregation"]["flops"]
    assert double["frame"]["flops"] == 2 * single["frame"]["flops"]


# ---------------------------------------------------------------------------------------------
# results row
# ---------------------------------------------------------------------------------------------


def test_summary_row_is_numeric_and_matches_the_measurement(tmp_path):
    result = _quick(_window_detector("identity", "cosine_softmax"), (-2, -1, 1, 2))
    path = tmp_path / "measure.json"
    path.write_text(json.dumps(result))  # what the pipeline writes and a report reads back
    row = summary_row(json.loads(path.read_text()))
    assert row == summary_row(result)
    assert all(isinstance(value, float) and math.isfinite(value) for value in row.values())
    assert row["seconds_per_frame"] == result["frame"]["seconds"]["median"]
    assert row["seconds_per_frame_iqr"] == result["frame"]["seconds"]["iqr"]
    assert row["fps"] == pytest.approx(1 / row["seconds_per_frame"])
    assert row["flops_total"] == result["frame"]["flops"]
    for part in ("backbone", "aggregation", "alignment", "fusion", "head", "postprocess"):
        assert row[f"seconds_{part}"] == result["parts"][part]["seconds"]["median"]
        assert f"seconds_{part}_iqr" in row and f"flops_{part}" in row
    assert row["params_aggregation"] == result["params"]["aggregator"]
    assert row["params_aggregation_fusion"] == result["params"]["aggregator.fusion"]
    assert row["params_head"] == row["params_head_main"] == result["params"]["heads"]
    assert row["params_total"] == result["params"]["total"]
    assert row["num_supports"] == 4.0 and row["iters"] == 4.0 and row["torch_threads"] == 1.0


# ---------------------------------------------------------------------------------------------
# scopes outside a measurement, errors
# ---------------------------------------------------------------------------------------------


def test_scopes_show_in_torch_profiler_as_vodbench_ranges():
    detector = _window_detector().eval()
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        images = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
        reference = detector.extract(images)
        out = detector.aggregate(
            reference, reference.unsqueeze(1), torch.tensor([[1]]), torch.ones(1, 1, dtype=torch.bool)
        )
        detector.detect(out, IMAGE_SIZE)
    names = {event.name for event in prof.events() if event.name.startswith("vodbench.")}
    assert names == {
        f"vodbench.{p}" for p in ("backbone", "aggregation", "alignment", "fusion", "head", "postprocess")
    }


# ---------------------------------------------------------------------------------------------
# stream mode
# ---------------------------------------------------------------------------------------------


class LiftNonKeyframes(StreamAggregator):
    """Keyframes: their full features, through a 1x1 conv in scope("update") when the video had an
    earlier keyframe (a memory update: 2 * C * C FLOPs per cell); non-keyframes: a 1x1 conv on the
    2x-pooled low-level features inside scope("transform") (2 * width * C FLOPs per cell)."""

    def __init__(self, *, keyframe_interval: int, width: int = 8):
        super().__init__(keyframe_interval=keyframe_interval)
        self.lift = nn.Conv2d(width, CHANNELS, 1, bias=False)
        self.update = nn.Conv2d(CHANNELS, CHANNELS, 1, bias=False)

    def step(self, frame: StreamFrame, states: list) -> AggregationOutput:
        features = frame.low.new_zeros((frame.batch_size, CHANNELS, *frame.high.shape[-2:]))
        if frame.high.shape[0]:
            features[frame.key_rows] = frame.high
            seen = [row for row in frame.key_rows.tolist() if states[row].get("seen")]
            if seen:
                with scope("update"):
                    features[seen] = self.update(features[seen])
            for row in frame.key_rows.tolist():
                states[row]["seen"] = True
        rest = (~frame.keyframe).nonzero().flatten()
        if len(rest):
            with scope("transform"):
                features[rest] = self.lift(torch.nn.functional.avg_pool2d(frame.low[rest], 2))
        return AggregationOutput({"main": features})


def test_stream_mode_reports_keyframes_non_keyframes_and_the_amortised_cost():
    detector = _detector(LiftNonKeyframes(keyframe_interval=3))
    result = _quick(detector, (), iters=4)
    key, non_key = result["keyframe"], result["non_keyframe"]
    assert result["mode"] == "stream" and result["keyframe_interval"] == 3
    assert key["frames"] == 4 and non_key["frames"] == 8 and result["key_fraction"] == pytest.approx(1 / 3)
    assert len(result["frame"]["samples"]) == 4  # one amortised sample per keyframe interval
    # FLOPs per part against hand counts: the keyframe runs the whole backbone, a non-keyframe
    # the low part and the lift only
    image = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    low_flops = conv_flops(nn.Sequential(detector.backbone.stem, detector.backbone.stage0), image)
    full_flops = conv_flops(detector.backbone, image.to(torch.uint8))
    head_flops = conv_flops(
        detector.heads["main"], torch.zeros(1, CHANNELS, IMAGE_SIZE // 8, IMAGE_SIZE // 8)
    )
    lift_flops = 2 * 8 * CHANNELS * FEATURE_CELLS
    update_flops = 2 * CHANNELS * CHANNELS * FEATURE_CELLS
    # steady state: every timed keyframe (and the counted one) updates an earlier keyframe's memory
    assert key["parts"]["update"]["flops"] == update_flops and key["parts"]["update"]["frames"] == 4
    assert result["first_timed_position"] == 3 and result["warmup"] == 1
    assert key["parts"]["backbone"]["flops"] == full_flops
    assert key["parts"]["backbone_low"]["flops"] == low_flops
    assert key["parts"]["backbone_high"]["flops"] == full_flops - low_flops
    assert key["parts"]["backbone_high"]["parent"] == "backbone"
    assert "transform" not in key["parts"] and "backbone_high" not in non_key["parts"]
    assert non_key["parts"]["backbone"]["flops"] == low_flops
    assert non_key["parts"]["transform"]["flops"] == lift_flops
    assert non_key["parts"]["transform"]["parent"] == "aggregation"
    assert key["flops"] == full_flops + update_flops + head_flops
    assert non_key["flops"] == low_flops + lift_flops + head_flops
    assert result["frame"]["flops"] == round((key["flops"] + 2 * non_key["flops"]) / 3)
    assert result["parts"]["backbone_high"]["flops"] == round((full_flops - low_flops) / 3)
    # times: the amortised frame is the interval's mean frame
    samples = key["samples"] + non_key["samples"]
    assert result["frame"]["seconds"]["mean"] == pytest.approx(sum(samples) / len(samples))
    assert result["fps"] == pytest.approx(1 / result["frame"]["seconds"]["median"])
    row = summary_row(result)
    assert row["seconds_per_keyframe"] == key["seconds"]["median"]
    assert row["seconds_per_non_keyframe"] == non_key["seconds"]["median"]
    assert row["flops_keyframe_backbone_high"] == full_flops - low_flops
    assert row["flops_non_keyframe_transform"] == lift_flops
    assert "flops_non_keyframe_backbone_high" not in row
    assert row["flops_total"] == result["frame"]["flops"] and row["key_fraction"] == pytest.approx(1 / 3)
    json.dumps(result)  # JSON-ready


def test_stream_mode_with_interval_one_has_no_non_keyframes():
    result = _quick(_detector(LiftNonKeyframes(keyframe_interval=1)), (), iters=3)
    assert result["non_keyframe"] is None and result["key_fraction"] == 1.0
    assert result["frame"]["flops"] == result["keyframe"]["flops"]
    row = summary_row(result)
    assert "seconds_per_non_keyframe" not in row and "seconds_per_keyframe" in row


def test_unknown_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="UnknownMode has mode='online'"):
        _quick(_detector(UnknownMode()), (-1, 1))


def test_bad_arguments_raise():
    detector = _detector(ConvPerSupport())
    with pytest.raises(ValueError, match="iters"):
        _quick(detector, (-1, 1), iters=0)
    with pytest.raises(ValueError, match="batch_size"):
        _quick(detector, (-1, 1), batch_size=0)
    with pytest.raises(TypeError, match="0.5"):
        _quick(detector, (-1, 0.5))
    with pytest.raises(TypeError, match="sequence of ints"):
        _quick(detector, 3)
    with pytest.raises(ValueError, match="identifier"):
        scope("post-processing")
    with pytest.raises(ValueError, match="identifier"):
        scope("total")
