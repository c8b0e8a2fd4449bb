"""measure(): splits sum to totals, FLOPs match a hand count, the dict says what was timed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.aggregation import AggregationOutput, TemporalAggregator, TemporalContext
from harness.measure import PARTS, measure
from harness.model.backbone import ResNetBackbone
from harness.model.detector import VideoDetector
from harness.model.head import FCOSHead

IMAGE_SIZE = 32
CHANNELS = 16


class ConvPerSupport(TemporalAggregator):
    """Reference + mean over supports of a 1x1 conv: 2*C*C*H*W FLOPs per support."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Conv2d(CHANNELS, CHANNELS, 1, bias=False)

    def forward(self, ctx: TemporalContext) -> AggregationOutput:
        if ctx.num_supports == 0:
            return AggregationOutput({"main": ctx.reference})
        mixed = self.mix(ctx.supports.flatten(0, 1)).unflatten(0, ctx.supports.shape[:2])  # (B, T, C, H, W)
        return AggregationOutput({"main": ctx.reference + mixed.mean(1)})


def _detector() -> VideoDetector:
    torch.manual_seed(0)
    return VideoDetector(
        backbone=ResNetBackbone(width=8, depth=(1, 1), out_channels=CHANNELS),
        aggregator=ConvPerSupport(),
        heads=nn.ModuleDict(
            {"main": FCOSHead(in_channels=CHANNELS, num_classes=3, channels=16, num_convs=1)}
        ),
    )


def conv_flops(module: nn.Module, images: torch.Tensor) -> int:
    """Independent count: 2 * (Cin/groups) * kh * kw * Cout * Hout * Wout summed over Conv2d calls."""
    total = 0

    def hook(conv, _inputs, output):
        nonlocal total
        kh, kw = conv.kernel_size
        total += 2 * (conv.in_channels // conv.groups) * kh * kw * output.numel()

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        module(images)
    for handle in handles:
        handle.remove()
    return total


def test_splits_sum_to_totals_and_flops_match_hand_count():
    detector = _detector()
    result = measure(detector, image_size=IMAGE_SIZE, num_supports=3, device="cpu", warmup=1, iters=2)
    for kind in ("params", "flops"):
        assert result[f"{kind}_total"] == sum(result[f"{kind}_{part}"] for part in PARTS)
    assert result["seconds_per_frame"] == pytest.approx(sum(result[f"seconds_{part}"] for part in PARTS))
    assert result["fps"] == pytest.approx(1 / result["seconds_per_frame"])
    assert result["params_backbone"] == sum(p.numel() for p in detector.backbone.parameters())
    assert result["params_aggregation"] == CHANNELS * CHANNELS
    image = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    assert result["flops_backbone"] == conv_flops(detector.backbone, image)
    feature_cells = (IMAGE_SIZE // 8) ** 2
    assert result["flops_aggregation"] == 3 * 2 * CHANNELS * CHANNELS * feature_cells
    head_input = torch.zeros(1, CHANNELS, IMAGE_SIZE // 8, IMAGE_SIZE // 8)
    assert result["flops_head"] == conv_flops(detector.heads["main"], head_input)


def test_no_supports_costs_no_aggregation_flops_and_dict_is_self_describing():
    result = measure(_detector(), image_size=IMAGE_SIZE, num_supports=0, device="cpu", warmup=0, iters=1)
    assert result["flops_aggregation"] == 0
    assert "0 cached support" in result["timed"] and "warm-up" in result["timed"]
    assert "decomposition" in result["flops_note"]
    assert result["device"] == "cpu" and result["num_supports"] == 0


def test_bad_iteration_counts_raise():
    with pytest.raises(ValueError, match="iters"):
        measure(_detector(), image_size=IMAGE_SIZE, num_supports=1, device="cpu", iters=0)
