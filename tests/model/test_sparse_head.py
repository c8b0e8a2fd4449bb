"""The sparse head (Sparse R-CNN): matching, set loss, stages, dynamic convolution, post-processing,
its place in the shared detector and trainer, and bad input."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from harness.config import (
    AggregationConfig,
    BackboneConfig,
    HeadConfig,
    ModelConfig,
    RunConfig,
    SparseHeadConfig,
    TrainConfig,
    from_dict,
)
from harness.model.detector import build_detector, build_head
from harness.model.head import FCOSHead
from harness.model.sparse_head import (
    DynamicConv,
    SparseHead,
    SparseHeadOutput,
    apply_deltas,
    hungarian_match,
    matching_cost,
)
from harness.runs import stage_identity
from harness.train import build_optimizer
from tests.model.fakes import IMAGE_SIZE, NUM_CLASSES, FakeDataset, fake_collate

SMALL = dict(num_proposals=6, num_stages=2, dim=16, dynamic_dim=4, ffn_dim=32, num_heads=2, roi_size=3)
SPARSE_TINY = ModelConfig(
    num_classes=NUM_CLASSES,
    backbone=BackboneConfig(width=8, depth=(1, 1), out_channels=16),
    head=HeadConfig(kind="sparse", sparse=SparseHeadConfig(**SMALL)),
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _head(**changes) -> SparseHead:
    return SparseHead(in_channels=16, num_classes=NUM_CLASSES, **{**SMALL, **changes})


def _random_boxes(generator: torch.Generator, count: int, size: float = 64.0) -> torch.Tensor:
    corners = torch.rand(count, 2, generator=generator) * size * 0.6
    sides = 4 + torch.rand(count, 2, generator=generator) * size * 0.35
    return torch.cat([corners, corners + sides], dim=1)


# --- matching ---------------------------------------------------------------------------------


@pytest.mark.parametrize("proposals,targets", [(1, 1), (3, 2), (4, 4), (5, 3), (6, 1)])
def test_hungarian_match_is_the_brute_force_optimum(proposals, targets):
    generator = torch.Generator().manual_seed(proposals * 10 + targets)
    for _ in range(5):
        cost = torch.rand(proposals, targets, generator=generator) * 10 - 3
        rows, cols = hungarian_match(cost)
        assert cols.tolist() == list(range(targets))  # every ground truth once, in order
        assert len(set(rows.tolist())) == targets  # one to one
        best = min(
            sum(float(cost[row, col]) for col, row in enumerate(chosen))
            for chosen in itertools.permutations(range(proposals), targets)
        )
        assert float(cost[rows, cols].sum()) == pytest.approx(best, abs=1e-5)


def test_hungarian_match_rejects_bad_costs():
    with pytest.raises(ValueError, match="cannot match 3 ground-truth boxes to 2 proposals"):
        hungarian_match(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="non-finite"):
        hungarian_match(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"\(P, N\)"):
        hungarian_match(torch.zeros(4))


def test_matching_cost_terms_against_independent_computation():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(5, NUM_CLASSES, generator=generator)
    boxes, gt_boxes = _random_boxes(generator, 5), _random_boxes(generator, 2)
    gt_labels = torch.tensor([2, 0])
    normaliser = torch.tensor([64.0, 64.0, 64.0, 64.0])
    weights = dict(class_weight=2.0, l1_weight=5.0, giou_weight=2.0)
    cost = matching_cost(logits, boxes, gt_labels, gt_boxes, normaliser=normaliser, **weights)
    for p in range(5):
        for n in range(2):
            logit = logits[p, gt_labels[n]]
            # focal loss of calling the ground truth's class positive minus that of calling it negative
            as_positive = sigmoid_focal_loss(logit, torch.tensor(1.0), alpha=0.25, gamma=2.0)
            as_negative = sigmoid_focal_loss(logit, torch.tensor(0.0), alpha=0.25, gamma=2.0)
            l1 = ((boxes[p] - gt_boxes[n]).abs() / 64.0).sum()
            inter_w = (torch.min(boxes[p, 2], gt_boxes[n, 2]) - torch.max(boxes[p, 0], gt_boxes[n, 0])).clamp(
                0
            )
            inter_h = (torch.min(boxes[p, 3], gt_boxes[n, 3]) - torch.max(boxes[p, 1], gt_boxes[n, 1])).clamp(
                0
            )
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
            inter = inter_w * inter_h
            union = area(boxes[p]) + area(gt_boxes[n]) - inter
            hull_w = torch.max(boxes[p, 2], gt_boxes[n, 2]) - torch.min(boxes[p, 0], gt_boxes[n, 0])
            hull_h = torch.max(boxes[p, 3], gt_boxes[n, 3]) - torch.min(boxes[p, 1], gt_boxes[n, 1])
            giou = inter / union - (hull_w * hull_h - union) / (hull_w * hull_h)
            expected = 2.0 * (as_positive - as_negative) + 5.0 * l1 - 2.0 * giou
            assert float(cost[p, n]) == pytest.approx(float(expected), rel=1e-4, abs=1e-4)


# --- set loss ---------------------------------------------------------------------------------


def _output_for(head: SparseHead, batch: int = 2, grid: int = 8, seed: int = 0) -> SparseHeadOutput:
    features = torch.randn(batch, 16, grid, grid, generator=torch.Generator().manual_seed(seed))
    return head(features)


def test_set_loss_is_invariant_to_the_order_of_the_ground_truth():
    head = _head()
    output = _output_for(head)
    generator = torch.Generator().manual_seed(3)
    boxes = [_random_boxes(generator, 4), _random_boxes(generator, 2)]
    labels = [torch.tensor([0, 2, 1, 2]), torch.tensor([1, 1])]
    losses = head.losses(output, boxes, labels)
    order = [torch.tensor([2, 0, 3, 1]), torch.tensor([1, 0])]
    shuffled = head.losses(
        output,
        [b[o] for b, o in zip(boxes, order, strict=True)],
        [lab[o] for lab, o in zip(labels, order, strict=True)],
    )
    assert set(losses) == {"loss_cls", "loss_l1", "loss_giou"}
    for key in losses:
        assert float(losses[key].detach()) > 0
        torch.testing.assert_close(shuffled[key], losses[key])


def test_set_loss_equals_the_terms_recomputed_from_the_matching():
    head = _head(num_stages=1)
    output = _output_for(head, batch=1)
    generator = torch.Generator().manual_seed(4)
    boxes, labels = [_random_boxes(generator, 3)], [torch.tensor([1, 0, 1])]
    losses = head.losses(output, boxes, labels)
    normaliser = torch.tensor([64.0, 64.0, 64.0, 64.0])
    rows, cols = head.match(output.logits[0][0], output.boxes[0][0], boxes[0], labels[0], normaliser)
    targets = torch.zeros_like(output.logits[0][0])
    targets[rows, labels[0][cols]] = 1.0
    focal = sigmoid_focal_loss(output.logits[0][0], targets, alpha=0.25, gamma=2.0, reduction="sum")
    l1 = ((output.boxes[0][0][rows] - boxes[0][cols]).abs() / 64.0).sum()
    torch.testing.assert_close(losses["loss_cls"], 2.0 * focal / 3)
    torch.testing.assert_close(losses["loss_l1"], 5.0 * l1 / 3)


def test_set_loss_sums_every_stage():
    head = _head(num_stages=3)
    output = _output_for(head, batch=1)
    boxes, labels = [torch.tensor([[4.0, 4.0, 30.0, 40.0]])], [torch.tensor([2])]
    total = head.losses(output, boxes, labels)
    per_stage = [
        head.losses(SparseHeadOutput([logits], [stage_boxes], output.image_size), boxes, labels)
        for logits, stage_boxes in zip(output.logits, output.boxes, strict=True)
    ]
    for key in total:
        torch.testing.assert_close(total[key], sum(stage[key] for stage in per_stage))


def test_images_without_objects_give_a_finite_classification_loss_only():
    head = _head()
    output = _output_for(head)
    losses = head.losses(
        output, [torch.zeros(0, 4), torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)] * 2
    )
    assert float(losses["loss_cls"]) > 0
    assert float(losses["loss_l1"]) == 0 and float(losses["loss_giou"]) == 0
    sum(losses.values()).backward()
    assert head.proposal_features.weight.grad.abs().sum() > 0


def test_set_loss_rejects_bad_targets():
    head = _head()
    output = _output_for(head)
    too_many = [torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 7), torch.zeros(0, 4)]
    with pytest.raises(ValueError, match=r"7 ground-truth boxes but the sparse head has only 6 proposals"):
        head.losses(output, too_many, [torch.zeros(7, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        head.losses(
            output,
            [torch.tensor([[0.0, 0.0, 9.0, 9.0]]), torch.zeros(0, 4)],
            [torch.tensor([3]), torch.tensor([], dtype=torch.int64)],
        )
    with pytest.raises(ValueError, match="for a batch of 2"):
        head.losses(output, [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)])


# --- stages and modules -----------------------------------------------------------------------


def test_stage_outputs_on_a_hand_case_of_shapes():
    head = _head(num_proposals=5, num_stages=3)
    output = head(torch.randn(2, 16, 4, 6))  # a 32 x 48 pixel input at stride 8
    assert output.image_size == (48, 32)
    assert len(output.logits) == len(output.boxes) == 3
    for logits, boxes in zip(output.logits, output.boxes, strict=True):
        assert logits.shape == (2, 5, NUM_CLASSES) and boxes.shape == (2, 5, 4)
        assert torch.isfinite(logits).all() and torch.isfinite(boxes).all()
    # the learnable proposals start as the whole image; both images of the batch share them
    torch.testing.assert_close(
        head.initial_boxes(2, 48, 32), torch.tensor([[0.0, 0.0, 48.0, 32.0]]).expand(2, 5, 4)
    )
    # the first stage's focal prior: every class probability starts near 0.01
    assert abs(float(output.logits[0].sigmoid().mean()) - 0.01) < 0.01
    rois = head.stages[0].roi_features(
        head.input_projection(torch.randn(2, 16, 4, 6)), head.initial_boxes(2, 48, 32)
    )
    assert rois.shape == (2 * 5, 16, 3, 3)


def test_stages_refine_detached_boxes():
    head = _head(num_stages=2)
    output = _output_for(head, batch=1)
    output.boxes[1].sum().backward()
    # the second stage's boxes do not send gradient back through the first stage's box branch
    assert (
        head.stages[0].box_deltas.weight.grad is None
        or head.stages[0].box_deltas.weight.grad.abs().sum() == 0
    )
    assert head.stages[1].box_deltas.weight.grad.abs().sum() > 0


def test_dynamic_conv_equals_an_explicit_per_proposal_loop():
    dynamic = DynamicConv(dim=8, dynamic_dim=3, roi_size=2)
    proposals, rois = torch.randn(4, 8), torch.randn(4, 2 * 2, 8)
    batched = dynamic(proposals, rois)
    weights = dynamic.dynamic_layer.weight
    bias = dynamic.dynamic_layer.bias
    for index in range(4):
        params = weights @ proposals[index] + bias
        first, second = params[: 8 * 3].view(8, 3), params[8 * 3 :].view(3, 8)
        hidden = torch.relu(dynamic.norm1(rois[index] @ first))
        hidden = torch.relu(dynamic.norm2(hidden @ second))
        expected = torch.relu(dynamic.norm3(dynamic.out_layer(hidden.reshape(-1))))
        torch.testing.assert_close(batched[index], expected, rtol=1e-5, atol=1e-5)


def test_dynamic_conv_rejects_bad_shapes():
    dynamic = DynamicConv(dim=8, dynamic_dim=3, roi_size=2)
    with pytest.raises(ValueError, match=r"DynamicConv needs proposal \(N, 8\)"):
        dynamic(torch.randn(4, 8), torch.randn(3, 4, 8))


def test_apply_deltas_hand_cases():
    box = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # centre (20, 40), 20 x 40
    torch.testing.assert_close(apply_deltas(torch.zeros(1, 4), box), box)
    # dx = 2 with weight 2 moves by one width; dh = log 2 doubles the height about the centre
    moved = apply_deltas(torch.tensor([[2.0, 0.0, 0.0, float(np.log(2.0))]]), box)
    torch.testing.assert_close(moved, torch.tensor([[30.0, 0.0, 50.0, 80.0]]))
    # the log-size change is clamped: a huge dw cannot overflow
    assert torch.isfinite(apply_deltas(torch.tensor([[0.0, 0.0, 1e4, 0.0]]), box)).all()


def test_candidates_are_the_top_k_over_proposals_and_classes_without_nms():
    head = _head(num_proposals=3, max_detections=4, score_threshold=0.3)
    logits = torch.logit(torch.tensor([[[0.9, 0.1, 0.2], [0.8, 0.85, 0.05], [0.4, 0.35, 0.31]]]))
    same_box = torch.tensor([10.0, 10.0, 30.0, 30.0])
    boxes = torch.stack([same_box, same_box, torch.tensor([-5.0, 2.0, 70.0, 20.0])])[None]
    ((found_boxes, scores, labels),) = head.candidates(SparseHeadOutput([logits], [boxes], (64, 64)), 64)
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.85, 0.8, 0.4]))
    assert labels.tolist() == [0, 1, 0, 0]
    # two overlapping boxes of the same class both survive (no NMS); boxes are clipped to the image
    torch.testing.assert_close(found_boxes[[0, 2]], same_box.expand(2, 4))
    torch.testing.assert_close(found_boxes[3], torch.tensor([0.0, 2.0, 64.0, 20.0]))
    # any stage can be read out (each is supervised)
    two_stages = SparseHeadOutput([logits - 10, logits], [boxes, boxes], (64, 64))
    assert len(head.predict(two_stages, 64, stage=0)[0][1]) == 0
    assert len(head.predict(two_stages, 64, stage=1)[0][1]) == 4


@pytest.mark.parametrize(
    "changes,name",
    [
        ({"num_proposals": 0}, "num_proposals"),
        ({"num_stages": 0}, "num_stages"),
        ({"num_heads": 3}, "num_heads"),
    ],
)
def test_bad_head_settings_are_named(changes, name):
    with pytest.raises(ValueError, match=name):
        _head(**changes)


def test_head_rejects_features_of_the_wrong_rank():
    with pytest.raises(ValueError, match=r"SparseHead needs features \(B, C, H, W\)"):
        _head()(torch.randn(16, 8, 8))


# --- in the detector and the trainer ----------------------------------------------------------


def test_head_kind_selects_the_head_and_unknown_kinds_are_named():
    dense = dataclasses.replace(SPARSE_TINY, head=HeadConfig(channels=16, num_convs=1))
    assert isinstance(build_head(dense, stride=8), FCOSHead)
    assert isinstance(build_head(SPARSE_TINY, stride=8), SparseHead)
    bogus = dataclasses.replace(SPARSE_TINY, head=dataclasses.replace(SPARSE_TINY.head, kind="mystery"))
    with pytest.raises(ValueError, match="unknown model.head.kind 'mystery'; known kinds: dense, sparse"):
        build_head(bogus, stride=8)
    with pytest.raises((ValueError, TypeError), match=r"model\.head\.kind"):
        from_dict(RunConfig, {"model": {"head": {"kind": "mystery"}}})


def test_dense_runs_keep_their_identity_and_sparse_runs_count_the_head():
    dense = stage_identity(RunConfig(), "phase1")
    assert "kind" not in dense["model"]["head"] and "sparse" not in dense["model"]["head"]
    sparse_run = dataclasses.replace(
        RunConfig(), model=dataclasses.replace(RunConfig().model, head=SPARSE_TINY.head)
    )
    sparse = stage_identity(sparse_run, "phase1")
    assert sparse["model"]["head"]["kind"] == "sparse"
    assert sparse["model"]["head"]["sparse"]["num_proposals"] == 6
    other = dataclasses.replace(
        sparse_run,
        model=dataclasses.replace(
            sparse_run.model,
            head=dataclasses.replace(SPARSE_TINY.head, sparse=SparseHeadConfig(num_stages=4)),
        ),
    )
    assert stage_identity(other, "phase1") != sparse


def test_proposal_boxes_get_no_weight_decay():
    detector = build_detector(SPARSE_TINY, single_frame=True)
    optimizer = build_optimizer(detector, name="adamw", lr=1e-3, weight_decay=0.05)
    box_parameter = detector.heads["main"].proposal_boxes.weight
    for group in optimizer.param_groups:
        if any(parameter is box_parameter for parameter in group["params"]):
            assert group["weight_decay"] == 0.0
            break
    else:
        raise AssertionError("the proposal boxes are in no parameter group")
    assert max(group["weight_decay"] for group in optimizer.param_groups) == 0.05


AGGREGATIONS = {
    "single frame": None,
    "window average": AggregationConfig(aggregator="window", alignment="identity", fusion="average"),
    "two streams (SSVD)": AggregationConfig(aggregator="ssvd", aggregator_kwargs={"include_reference": True}),
}


@pytest.mark.parametrize("label", list(AGGREGATIONS))
def test_sparse_head_runs_behind_dense_aggregators(label):
    """The head is separable from the aggregation: any dense aggregator's streams feed sparse heads."""
    aggregation = AGGREGATIONS[label]
    model = SPARSE_TINY if aggregation is None else dataclasses.replace(SPARSE_TINY, aggregation=aggregation)
    detector = build_detector(model, single_frame=aggregation is None)
    assert all(isinstance(head, SparseHead) for head in detector.heads.values())
    dataset = FakeDataset(num_samples=2, num_supports=0 if aggregation is None else 2)
    batch = fake_collate([dataset[0], dataset[1]])
    losses = detector.losses(batch)
    expected = {"loss_cls", "loss_l1", "loss_giou"}
    if len(detector.heads) > 1:
        expected = {f"{term}_{stream}" for term in expected for stream in detector.heads}
    assert expected <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert detector.backbone.stem[0].weight.grad.abs().sum() > 0
    detector.eval()
    with torch.no_grad():
        detections = detector.detect(detector.forward_batch(batch), IMAGE_SIZE)
    assert len(detections) == 2
    for boxes, scores, labels in detections:
        assert boxes.shape[1] == 4 and len(scores) == len(labels) <= model.head.max_detections
        assert (boxes >= 0).all() and (boxes <= IMAGE_SIZE).all()


def test_sparse_head_loss_falls_on_a_tiny_dataset(tmp_path):
    from tests.test_train import _losses, _train, tiny_run

    run = dataclasses.replace(
        tiny_run(),
        model=SPARSE_TINY,
        phase1=TrainConfig(
            steps=40, batch_size=4, lr=2e-3, warmup_steps=5, schedule="constant", checkpoint_every=100
        ),
    )
    _train(run, tmp_path)
    losses = [record["loss"] for record in _losses(tmp_path)]
    assert len(losses) == 40 and all(np.isfinite(losses))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.6 * first, (first, last)


def test_a_dense_detector_is_unchanged_by_the_head_kind_refactor():
    """The dense build path through ``build_head`` gives exactly the FCOS head it built before."""
    dense = dataclasses.replace(SPARSE_TINY, head=HeadConfig(channels=16, num_convs=1))
    detector = build_detector(dense, single_frame=True)
    torch.manual_seed(0)
    direct = FCOSHead(in_channels=16, num_classes=NUM_CLASSES, channels=16, num_convs=1, stride=8)
    torch.manual_seed(0)
    built = build_head(dense, stride=8)
    assert isinstance(detector.heads["main"], FCOSHead)
    for (name, a), (_, b) in zip(direct.state_dict().items(), built.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


# --- proposal-level parts (SparseVOD's TFE and SPFA) in the sparse head ----------------------

PARTS = {"tfe": {"num_heads": 2, "top_k": 2}, "spfa": {"num_heads": 2}}


def _proposal_level(parts=PARTS, **kwargs) -> AggregationConfig:
    return AggregationConfig(aggregator="proposal_level", aggregator_kwargs={"parts": parts, **kwargs})


def test_proposal_parts_train_from_a_phase1_checkpoint_and_reach_every_part():
    phase1 = build_detector(SPARSE_TINY, single_frame=True)
    detector = build_detector(dataclasses.replace(SPARSE_TINY, aggregation=_proposal_level()))
    missing = detector.load_phase1(phase1.state_dict())
    assert missing and all(key.startswith("aggregator.parts.") for key in missing)
    dataset = FakeDataset(num_samples=2, num_supports=2)
    batch = fake_collate([dataset[0], dataset[1]])
    total = sum(detector.losses(batch).values())
    assert torch.isfinite(total)
    total.backward()
    for name, parameter in detector.aggregator.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    detector.eval()
    with torch.no_grad():
        detections = detector.detect(detector.forward_batch(batch), IMAGE_SIZE)
    assert len(detections) == 2


def test_proposal_parts_with_no_valid_support_give_the_single_frame_detector():
    """Padded-only supports: every part returns its input, so the predictions are phase 1's."""
    phase1 = build_detector(SPARSE_TINY, single_frame=True)
    detector = build_detector(dataclasses.replace(SPARSE_TINY, aggregation=_proposal_level()))
    detector.load_phase1(phase1.state_dict())
    dataset = FakeDataset(num_samples=2, num_supports=2)
    batch = fake_collate([dataset[0], dataset[1]])
    batch = dataclasses.replace(batch, valid=torch.zeros_like(batch.valid))
    phase1.eval(), detector.eval()
    with torch.no_grad():
        ours = detector.run_head("main", detector.forward_batch(batch))
        single = phase1.heads["main"](phase1.extract(batch.images))
    for a, b in zip(ours.logits + ours.boxes, single.logits + single.boxes, strict=True):
        torch.testing.assert_close(a, b)


def test_supports_change_the_predictions_only_through_the_parts():
    dataset = FakeDataset(num_samples=2, num_supports=2)
    batch = fake_collate([dataset[0], dataset[1]])
    shifted = dataclasses.replace(batch, support_images=batch.support_images.roll(5, dims=-1))
    for parts, changes in (({}, False), (PARTS, True)):
        torch.manual_seed(0)
        detector = build_detector(dataclasses.replace(SPARSE_TINY, aggregation=_proposal_level(parts)))
        detector.eval()
        with torch.no_grad():
            a = detector.run_head("main", detector.forward_batch(batch)).logits[-1]
            b = detector.run_head("main", detector.forward_batch(shifted)).logits[-1]
        assert (not torch.allclose(a, b)) == changes, parts


def test_proposal_parts_need_the_sparse_head_and_its_width():
    dense = dataclasses.replace(
        SPARSE_TINY, head=HeadConfig(channels=16, num_convs=1), aggregation=_proposal_level()
    )
    dataset = FakeDataset(num_samples=2, num_supports=2)
    batch = fake_collate([dataset[0], dataset[1]])
    with pytest.raises(ValueError, match="model.head.kind = 'sparse'"):
        build_detector(dense).losses(batch)
    narrow = dataclasses.replace(SPARSE_TINY, aggregation=_proposal_level(dim=8))
    with pytest.raises(ValueError, match="sparse head's dim is 16"):
        build_detector(narrow).losses(batch)
    with pytest.raises(KeyError, match="unknown proposal 'tubelet'"):
        build_detector(dataclasses.replace(SPARSE_TINY, aggregation=_proposal_level({"tubelet": {}})))


def test_the_readout_stage_selects_which_supervised_stage_predicts():
    detector = build_detector(SPARSE_TINY, single_frame=True)
    detector.eval()
    dataset = FakeDataset(num_samples=2)
    batch = fake_collate([dataset[0], dataset[1]])
    head = detector.heads["main"]
    with torch.no_grad():
        output = detector.forward_batch(batch)
        raw = detector.run_head("main", output)
        for stage in (1, 2):
            detector.set_readout_stage(stage)
            expected = head.candidates(raw, IMAGE_SIZE, stage=stage - 1)
            for got, want in zip(detector.detect(output, IMAGE_SIZE), expected, strict=True):
                for a, b in zip(got, want, strict=True):
                    torch.testing.assert_close(a, b)
        detector.set_readout_stage(None)
        assert head.readout_stage == -1
    with pytest.raises(ValueError, match=r"head_stage must lie in \[1, 2\]"):
        detector.set_readout_stage(3)
    dense = build_detector(dataclasses.replace(SPARSE_TINY, head=HeadConfig(channels=16, num_convs=1)))
    with pytest.raises(ValueError, match="reads a sparse head's stage"):
        dense.set_readout_stage(1)
    dense.set_readout_stage(None)  # the default readout is fine for any head


def test_the_measurement_counts_the_supports_pass_through_the_head():
    """``harness.measure`` runs under FlopCounterMode and no_grad (the learnable proposals must not
    enter the stages as a view of their parameter); with proposal parts the head also runs every
    support, so its FLOPs grow with the supports."""
    from harness.measure import measure

    single = build_detector(SPARSE_TINY, single_frame=True).eval()
    temporal = build_detector(dataclasses.replace(SPARSE_TINY, aggregation=_proposal_level())).eval()
    base = measure(single, image_size=IMAGE_SIZE, offsets=[], warmup=1, iters=2)
    two = measure(temporal, image_size=IMAGE_SIZE, offsets=[-5, 5], warmup=1, iters=2)
    four = measure(temporal, image_size=IMAGE_SIZE, offsets=[-10, -5, 5, 10], warmup=1, iters=2)
    flops = [m["frame"]["flops"] for m in (base, two, four)]
    assert flops[0] < flops[1] < flops[2], flops
