"""Backbone, FCOS head and VideoDetector: hand-computed cases, invariances and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from harness.aggregation import AggregationOutput, TemporalAggregator, TemporalContext
from harness.config import BackboneConfig, HeadConfig, ModelConfig
from harness.model.backbone import ResNetBackbone
from harness.model.detector import VideoDetector, build_detector
from harness.model.head import FCOSHead, HeadOutput, location_centers
from tests.model.fakes import NUM_CLASSES, FakeDataset, fake_collate

TINY = ModelConfig(
    num_classes=NUM_CLASSES,
    backbone=BackboneConfig(width=8, depth=(1, 1), out_channels=16),
    head=HeadConfig(channels=16, num_convs=1),
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- backbone ---------------------------------------------------------------------------------


def test_backbone_shapes_and_split():
    backbone = ResNetBackbone(width=8, depth=(1, 2, 1), out_channels=24)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    low = backbone.forward_low(images)
    assert low.shape == (2, 8, 16, 16)
    out = backbone(images)
    assert out.shape == (2, 24, 8, 8)
    torch.testing.assert_close(out, backbone.forward_high(low))


def test_backbone_is_batch_independent():
    """GroupNorm: an image's features do not depend on its batch-mates (batch 1 == batch 3)."""
    backbone = ResNetBackbone(width=8, depth=(1, 1), out_channels=16).train()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(backbone(images)[1:2], backbone(images[1:2]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 3, 30, 32), (3, 32, 32)])
def test_backbone_rejects_bad_images(shape):
    with pytest.raises(ValueError, match="images|multiple of 8"):
        ResNetBackbone(width=8, depth=(1, 1))(torch.zeros(shape, dtype=torch.uint8))


def test_backbone_needs_two_stages():
    with pytest.raises(ValueError, match="depth"):
        ResNetBackbone(depth=(1,))


# --- head: target assignment ------------------------------------------------------------------


def _head(**kwargs) -> FCOSHead:
    return FCOSHead(in_channels=16, num_classes=3, channels=16, num_convs=1, **kwargs)


def test_location_centers_hand_computed():
    centers = location_centers(2, 3, stride=8, device=torch.device("cpu"))
    expected = torch.tensor([[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]], dtype=torch.float32)
    torch.testing.assert_close(centers, expected)


def test_center_sampling_hand_computed():
    """Box (8, 8, 40, 40), centre 24, radius 1.5*8 = 12: positives are centres strictly inside
    (12, 36) on both axes -> x, y in {20, 28}: 4 locations of the 8x8 grid."""
    head = _head()
    centers = location_centers(8, 8, stride=8, device=torch.device("cpu"))
    matched, targets = head.assign_targets(centers, torch.tensor([[8.0, 8, 40, 40]]), torch.tensor([1]))
    positive = centers[matched >= 0]
    assert sorted(map(tuple, positive.tolist())) == [(20, 20), (20, 28), (28, 20), (28, 28)]
    torch.testing.assert_close(targets[matched >= 0], torch.tensor([[8.0, 8, 40, 40]]).expand(4, 4))


def test_ambiguous_location_goes_to_smallest_box():
    head = _head(center_radius=10.0)  # centre sampling off in effect: whole boxes are candidates
    centers = torch.tensor([[20.0, 20.0], [50.0, 50.0]])
    boxes = torch.tensor([[0.0, 0, 60, 60], [10.0, 10, 30, 30]])
    matched, _ = head.assign_targets(centers, boxes, torch.tensor([0, 1]))
    assert matched.tolist() == [1, 0]


def test_no_objects_gives_background_and_finite_zero_box_losses():
    head = _head()
    output = head(torch.randn(2, 16, 8, 8))
    losses = head.losses(output, [torch.zeros((0, 4))] * 2, [torch.zeros((0,), dtype=torch.int64)] * 2)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box"].item() == 0.0 and losses["loss_centerness"].item() == 0.0
    assert losses["loss_cls"].item() > 0.0


def test_losses_match_independent_computation():
    """One box; perfect box distances -> GIoU loss 0; focal loss equals torchvision's on the
    hand-built one-hot target; centerness target at the symmetric positives is known."""
    head = _head()
    height = width = 8
    box = torch.tensor([[8.0, 8, 40, 40]])
    centers = location_centers(height, width, stride=8, device=torch.device("cpu"))
    exact = torch.cat([centers - box[:, :2], box[:, 2:] - centers], dim=1)  # (P, 4) ltrb
    cls_logits = torch.randn(1, 3, height, width)
    output = HeadOutput(
        cls_logits=cls_logits,
        box_distances=exact.abs().t().reshape(1, 4, height, width),
        centerness_logits=torch.zeros(1, 1, height, width),
    )
    losses = head.losses(output, [box], [torch.tensor([2])])
    assert losses["loss_box"].item() == pytest.approx(0.0, abs=1e-6)
    target = torch.zeros(1, 3, height * width)
    positive_index = [2 * 8 + 2, 2 * 8 + 3, 3 * 8 + 2, 3 * 8 + 3]  # (20|28, 20|28) row-major
    target[0, 2, positive_index] = 1
    expected_cls = sigmoid_focal_loss(cls_logits.flatten(2), target, reduction="sum") / 4
    torch.testing.assert_close(losses["loss_cls"], expected_cls)
    # centerness target at (20, 20): l=t=12, r=b=20 -> sqrt((12/20)^2) = 0.6; same at all 4 by symmetry
    target_c = torch.full((4,), 0.6)
    expected_ctr = nn.functional.binary_cross_entropy_with_logits(torch.zeros(4), target_c)
    torch.testing.assert_close(losses["loss_centerness"], expected_ctr)


def test_losses_reject_bad_labels():
    head = _head()
    with pytest.raises(ValueError, match="labels must lie"):
        head.losses(head(torch.randn(1, 16, 8, 8)), [torch.tensor([[0.0, 0, 30, 30]])], [torch.tensor([3])])


# --- head: post-processing --------------------------------------------------------------------


def _handmade_output(height=4, width=4) -> HeadOutput:
    cls = torch.full((1, 3, height, width), -20.0)
    distances = torch.full((1, 4, height, width), 8.0)  # every location predicts a 16x16 box
    centerness = torch.full((1, 1, height, width), 20.0)
    cls[0, 1, 1, 1] = 5.0  # location centre (12, 12): box (4, 4, 20, 20) class 1
    cls[0, 1, 1, 2] = 3.0  # centre (20, 12): box (12, 4, 28, 20), IoU with the first 128/384 = 1/3
    cls[0, 2, 2, 2] = 4.0  # class 2 at centre (20, 20): box (12, 12, 28, 28), other class: kept
    return HeadOutput(cls, distances, centerness)


def test_predict_decodes_thresholds_and_nms():
    head = _head(score_threshold=0.1, nms_iou=0.3)
    boxes, scores, labels = head.predict(_handmade_output(), image_size=32)[0]
    assert labels.tolist() == [1, 2]
    torch.testing.assert_close(boxes, torch.tensor([[4.0, 4, 20, 20], [12.0, 12, 28, 28]]))
    expected = [
        math.sqrt(torch.sigmoid(torch.tensor(v)).item() * torch.sigmoid(torch.tensor(20.0)).item())
        for v in (5.0, 4.0)
    ]
    torch.testing.assert_close(scores, torch.tensor(expected))


def test_predict_keeps_overlapping_box_with_loose_nms_and_caps_count():
    head = _head(score_threshold=0.1, nms_iou=0.9)
    assert len(head.predict(_handmade_output(), image_size=32)[0][0]) == 3
    capped = _head(score_threshold=0.1, nms_iou=0.9, max_detections=2)
    assert capped.predict(_handmade_output(), image_size=32)[0][1].tolist() == pytest.approx(
        head.predict(_handmade_output(), image_size=32)[0][1][:2].tolist()
    )


def test_predict_clips_to_image():
    head = _head(score_threshold=0.1)
    output = _handmade_output()
    output.box_distances[0, :, 1, 1] = 100.0
    boxes = head.predict(output, image_size=32)[0][0]
    assert boxes.min() >= 0 and boxes.max() <= 32


# --- detector ---------------------------------------------------------------------------------


class CountingBackbone(ResNetBackbone):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0
        self.images_seen = 0

    def forward(self, images):
        self.calls += 1
        self.images_seen += images.shape[0]
        return super().forward(images)


class TwoStreamAggregator(TemporalAggregator):
    """A learnable two-stream fake: 'a' = reference, 'b' = reference scaled by a parameter."""

    stream_names = ("a", "b")
    box_fusion_iou = 0.45

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1.0))

    def forward(self, ctx: TemporalContext) -> AggregationOutput:
        return AggregationOutput({"a": ctx.reference, "b": ctx.reference * self.gain}, {})


def _detector(aggregator=None, backbone=None, **head_kwargs):
    aggregator = aggregator or build_detector(TINY, single_frame=True).aggregator
    backbone = backbone or ResNetBackbone(width=8, depth=(1, 1), out_channels=16)
    heads = nn.ModuleDict({name: _head(**head_kwargs) for name in aggregator.stream_names})
    return VideoDetector(
        backbone=backbone, aggregator=aggregator, heads=heads, box_fusion_iou=aggregator.box_fusion_iou
    )


def test_losses_use_one_backbone_call_for_reference_and_supports():
    backbone = CountingBackbone(width=8, depth=(1, 1), out_channels=16)
    detector = VideoDetector(
        backbone=backbone, aggregator=build_detector(TINY).aggregator, heads=nn.ModuleDict({"main": _head()})
    )
    dataset = FakeDataset(num_samples=2, num_supports=3)
    batch = fake_collate([dataset[0], dataset[1]])
    losses = detector.losses(batch)
    assert backbone.calls == 1 and backbone.images_seen == 2 * (1 + 3)
    assert set(losses) == {"loss_cls", "loss_box", "loss_centerness"}
    sum(losses.values()).backward()
    assert backbone.stem[0].weight.grad.abs().sum() > 0


def test_losses_on_images_without_objects_are_finite():
    detector = build_detector(TINY, single_frame=True)
    dataset = FakeDataset(num_samples=1)
    image, _, _, _, _ = dataset[0]
    empty = (
        image,
        [],
        torch.zeros(0).numpy(),
        torch.zeros((0, 4)).numpy(),
        torch.zeros(0, dtype=torch.int64).numpy(),
    )
    losses = detector.losses(fake_collate([empty, empty]))
    assert all(torch.isfinite(v) for v in losses.values())


def test_multi_stream_losses_and_late_fusion():
    detector = _detector(TwoStreamAggregator(), score_threshold=0.0, nms_iou=0.45)  # = fusion IoU
    batch = fake_collate([FakeDataset(num_samples=1)[0]])
    assert set(detector.losses(batch)) == {
        f"loss_{t}_{s}" for t in ("cls", "box", "centerness") for s in "ab"
    }
    # identical streams (gain 1) and identical heads: late fusion NMS keeps one copy of each box
    detector.heads["b"].load_state_dict(detector.heads["a"].state_dict())
    features = torch.randn(1, 16, 4, 4)
    agg_out = detector.aggregator(
        TemporalContext(
            features,
            features.new_zeros(1, 0, 16, 4, 4),
            torch.zeros(1, 0, dtype=torch.int64),
            torch.zeros(1, 0, dtype=torch.bool),
        )
    )
    single = detector.heads["a"].predict(detector.heads["a"](features), 32)[0]
    fused = detector.detect(agg_out, 32)[0]
    assert len(fused[0]) == min(len(single[0]), detector.max_detections)
    torch.testing.assert_close(fused[1], single[1][: len(fused[1])])


def test_heads_must_match_streams():
    with pytest.raises(ValueError, match="streams"):
        VideoDetector(
            backbone=ResNetBackbone(width=8, depth=(1, 1), out_channels=16),
            aggregator=TwoStreamAggregator(),
            heads=nn.ModuleDict({"main": _head()}),
        )


def test_load_phase1_keeps_aggregator_init_and_copies_main_head():
    phase1 = build_detector(TINY, single_frame=True)
    phase2 = _detector(TwoStreamAggregator())
    missing = phase2.load_phase1({k: v.clone() for k, v in phase1.state_dict().items()})
    assert missing == ["aggregator.gain"]
    assert phase2.aggregator.gain.item() == 1.0
    for name in ("a", "b"):
        torch.testing.assert_close(
            phase2.heads[name].cls_logits.weight, phase1.heads["main"].cls_logits.weight
        )
    torch.testing.assert_close(phase2.backbone.project.weight, phase1.backbone.project.weight)


def test_load_phase1_rejects_foreign_keys():
    detector = build_detector(TINY, single_frame=True)
    state = detector.state_dict()
    state["something.else"] = torch.zeros(1)
    with pytest.raises(KeyError, match="something.else"):
        detector.load_phase1(state)
    partial = {k: v for k, v in detector.state_dict().items() if not k.startswith("backbone.stem")}
    with pytest.raises(KeyError, match="backbone.stem"):
        detector.load_phase1(partial)


def test_aggregate_requires_oracle_flow_when_declared():
    aggregator = TwoStreamAggregator()
    aggregator.needs_oracle_flow = True
    detector = _detector(aggregator)
    features = torch.randn(1, 16, 4, 4)
    with pytest.raises(ValueError, match="oracle flow"):
        detector.aggregate(
            features,
            features[:, None],
            torch.ones(1, 1, dtype=torch.int64),
            torch.ones(1, 1, dtype=torch.bool),
        )


class ImageSpy(TemporalAggregator):
    """Records the context it is given; passes the reference through."""

    needs_images = True
    stream_names = ("main",)

    def forward(self, ctx: TemporalContext) -> AggregationOutput:
        self.seen = ctx
        return AggregationOutput({"main": ctx.reference}, {})


def test_aggregate_passes_the_uint8_images_unchanged():
    """The detector does not normalise images for the aggregator: each consumer does it once."""
    spy = ImageSpy()
    detector = _detector(spy)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    support_images = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    features = torch.randn(2, 16, 4, 4)
    detector.aggregate(
        features,
        features[:, None].expand(2, 3, 16, 4, 4),
        torch.ones(2, 3, dtype=torch.int64),
        torch.ones(2, 3, dtype=torch.bool),
        images=images,
        support_images=support_images,
    )
    assert spy.seen.reference_image is images and spy.seen.support_images is support_images
    with pytest.raises(ValueError, match="needs images"):
        one_support = torch.ones(2, 1, dtype=torch.int64)
        detector.aggregate(features, features[:, None], one_support, one_support.bool())
