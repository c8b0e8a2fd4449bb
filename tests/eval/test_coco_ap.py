"""COCO AP through faster-coco-eval: hand-computed cases and how it differs from the VOC-style APs."""

from __future__ import annotations

import numpy as np
import pytest

from harness.eval.coco import evaluate_coco, to_coco_dicts
from harness.eval.devkit import evaluate_voc
from harness.eval.evaluate import evaluate
from harness.eval.split import flatten_split
from tests.eval.eval_builders import make_dets, make_frame, make_video, random_split

BOX = [0, 0, 99, 99]


def _split(frames, dets):
    return flatten_split([make_video("v", frames)], dets, progress=False)


def test_coco_dicts_use_continuous_boxes_and_one_based_ids():
    split = _split(
        [make_frame("v", 0, [[10, 20, 30, 60]], [1])], {("v", 0): make_dets([[1, 2, 3, 4]], [0.5], [0])}
    )
    gt, results = to_coco_dicts(split)
    assert gt["annotations"][0]["bbox"] == [10, 20, 20, 40] and gt["annotations"][0]["area"] == 800
    assert gt["annotations"][0]["category_id"] == 2 and gt["annotations"][0]["image_id"] == 1
    assert results == [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 2, 2], "score": 0.5}]
    assert [c["id"] for c in gt["categories"]] == [1, 2]


def test_plus_one_convention_decides_a_match():
    # GT 0..9 x 0..9, detection 0..9 x 0..4. With +1 boxes: 50 / 100 = 0.5 -> a match at IoU 0.5.
    # Continuous (COCO): 9 * 4 / (9 * 9) = 0.444 -> no match.
    split = _split(
        [make_frame("v", 0, [[0, 0, 9, 9]], [0])], {("v", 0): make_dets([[0, 0, 9, 4]], [0.9], [0])}
    )
    assert evaluate_voc(split, protocol="fixed", progress=False)["map"] == pytest.approx(100.0)
    assert evaluate_coco(split)["ap50"] == pytest.approx(0.0)


def test_101_point_interpolation_by_hand():
    # Two GTs in two frames; detections TP (0.9), FP (0.8), TP (0.7).
    frames = [make_frame("v", 0, [BOX], [0]), make_frame("v", 1, [BOX], [0])]
    dets = {
        ("v", 0): make_dets([BOX, [150, 150, 190, 190]], [0.9, 0.8], [0, 0]),
        ("v", 1): make_dets([BOX], [0.7], [0]),
    }
    split = _split(frames, dets)
    # VOC all-point: 1/2 * 1 + 1/2 * 2/3. COCO: precision 1 at the 51 recall points 0.00..0.50,
    # 2/3 at the 50 points 0.51..1.00, averaged over 101 points.
    assert evaluate_voc(split, protocol="fixed", progress=False)["map"] == pytest.approx(100 * (0.5 + 1 / 3))
    coco = evaluate_coco(split)
    assert coco["ap50"] == pytest.approx(100 * (51 + 50 * 2 / 3) / 101)
    assert coco["per_class_ap50"] == {"cat": pytest.approx(coco["ap50"])}
    assert coco["classes_without_gt"] == ["dog"]


def test_ap_vs_iou_curve_by_hand():
    # One GT 0..100 x 0..100 (continuous width 100), one detection 0..100 x 0..82: IoU 0.82.
    split = _split(
        [make_frame("v", 0, [[0, 0, 100, 100]], [0])], {("v", 0): make_dets([[0, 0, 100, 82]], [0.9], [0])}
    )
    coco = evaluate_coco(split)
    expected = {f"{t:.2f}": (100.0 if t < 0.82 else 0.0) for t in np.linspace(0.5, 0.95, 10)}
    assert coco["ap_vs_iou"] == pytest.approx(expected)
    assert coco["ap75"] == pytest.approx(100.0)
    assert coco["ap50_95"] == pytest.approx(70.0)  # 7 of 10 thresholds


def test_class_with_gt_but_no_detection_counts_as_zero():
    frames = [make_frame("v", 0, [BOX, [120, 120, 180, 180]], [0, 1])]
    coco = evaluate_coco(_split(frames, {("v", 0): make_dets([BOX], [0.9], [0])}))
    assert coco["per_class_ap50"] == {"cat": pytest.approx(100.0), "dog": pytest.approx(0.0)}
    assert coco["ap50"] == pytest.approx(50.0)
    empty = evaluate_coco(_split(frames, {}))
    assert (
        empty["ap50"] == 0.0
        and empty["ap50_95"] == 0.0
        and empty["per_class_ap50"] == {"cat": 0.0, "dog": 0.0}
    )


def test_coco_ap50_close_to_but_not_equal_to_fixed():
    rng = np.random.default_rng(5)
    videos, perfect = random_split(rng, num_videos=4, num_frames=10)
    dets = {}
    for key, d in perfect.items():
        boxes = d.boxes + rng.normal(0, 1.5, d.boxes.shape).astype(np.float32)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 2)
        fp = rng.uniform(0, 120, 2).astype(np.float32)
        dets[key] = make_dets(
            np.concatenate([boxes, [[*fp, *(fp + 25)]]]),
            np.concatenate([d.scores, rng.uniform(0, 1, 1)]),
            np.concatenate([d.labels, [0]]),
        )
    result = evaluate(
        videos, dets, protocols=("fixed", "coco"), motion=False, degradation=False, progress=False
    )
    fixed, coco = result["fixed"]["map"], result["coco"]["ap50"]
    # Small jitter: few matches flip between +1 and continuous IoU; the 101-point interpolation
    # moves AP by a fraction of a point. Close, but the definitions are not the same number.
    assert 50.0 < coco < 100.0
    assert abs(fixed - coco) < 1.0
    assert fixed != pytest.approx(coco, abs=1e-6)
    curve = list(result["coco"]["ap_vs_iou"].values())
    assert all(a >= b - 1e-9 for a, b in zip(curve, curve[1:], strict=False))  # AP falls as the IoU rises


def test_category_groups_give_the_numbers_of_one_run():
    # COCO AP is per category (matching, the per-image maxDets cut, accumulation), so evaluating the
    # categories in groups must reproduce one run over all of them exactly; here 5 classes, groups of
    # 1-2 classes, with jittered, duplicated and wrong-class detections and more than 100 in a frame.
    classes = ("a", "b", "c", "d", "e")
    rng = np.random.default_rng(5)
    videos, perfect = random_split(rng, num_videos=4, num_frames=6, classes=classes)
    dets = {}
    for key, d in perfect.items():
        k = 3 * len(d) + (120 if key[1] == 0 else 4)
        boxes = np.concatenate([np.repeat(d.boxes, 3, axis=0), rng.uniform(0, 150, (k - 3 * len(d), 4))])
        boxes[:, :2] += rng.normal(0, 3, (k, 2))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 3)
        labels = np.concatenate([np.repeat(d.labels, 3), rng.integers(0, 5, k - 3 * len(d))])
        dets[key] = make_dets(boxes, rng.uniform(0, 1, k), labels)
    split = flatten_split(videos, dets, progress=False)
    whole = evaluate_coco(split, max_chunk_detections=10**9)
    grouped = evaluate_coco(split, max_chunk_detections=int(len(split.det_scores) / 4))
    assert whole["ap50"] > 0 and whole["ap50"] != whole["ap50_95"]
    # Per class the same numbers; the means only up to float summation order.
    assert grouped["per_class_ap50"] == pytest.approx(whole["per_class_ap50"], rel=1e-12, abs=1e-12)
    assert grouped["ap_vs_iou"] == pytest.approx(whole["ap_vs_iou"], rel=1e-12)
    assert grouped["ap50_95"] == pytest.approx(whole["ap50_95"], rel=1e-12)
