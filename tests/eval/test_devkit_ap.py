"""VOC-style AP (devkit and fixed-0.5): hand-computed cases, a naive reference, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from harness.eval.devkit import evaluate_voc, iou_thresholds, pixel_iou, voc_ap
from harness.eval.evaluate import evaluate
from harness.eval.split import flatten_split
from tests.eval.eval_builders import CLASSES, make_dets, make_frame, make_video, random_split
from tests.eval.voc_reference import reference_ap

SMALL = [0, 0, 9, 9]  # 10 x 10 pixels with the +1 convention: devkit threshold 100 / 400 = 0.25
LARGE = [0, 0, 99, 99]


def _single_class_split(frames_gt, frames_dets):
    """One video; ``frames_gt[t]`` = list of cat boxes, ``frames_dets[t]`` = list of (box, score)."""
    frames = [make_frame("v", t, boxes, [0] * len(boxes)) for t, boxes in enumerate(frames_gt)]
    dets = {
        ("v", t): make_dets([b for b, _ in items], [s for _, s in items], [0] * len(items))
        for t, items in enumerate(frames_dets)
        if items
    }
    return [make_video("v", frames)], dets


def _ap(videos, dets, protocol):
    return evaluate_voc(flatten_split(videos, dets, progress=False), protocol=protocol, progress=False)


def test_pixel_iou_and_thresholds_by_hand():
    shifted = [5, 0, 14, 9]  # overlaps SMALL on 5 x 10 pixels: 50 / (100 + 100 - 50)
    assert pixel_iou(np.array(SMALL, float), np.array(shifted, float)) == pytest.approx(1 / 3)
    assert pixel_iou(np.array(SMALL, float), np.array(shifted, float), plus_one=False) == pytest.approx(
        36 / 126
    )
    thresholds = iou_thresholds(np.array([SMALL, LARGE, [0, 0, 19, 29]], float), protocol="devkit")
    # 20 x 30: 600 / (30 * 40) = 0.5 exactly; 100 x 100 is capped at 0.5.
    np.testing.assert_allclose(thresholds, [0.25, 0.5, 0.5])
    np.testing.assert_allclose(iou_thresholds(np.array([SMALL], float), protocol="fixed"), [0.5])
    with pytest.raises(ValueError, match="unknown VOC-style protocol 'coco'"):
        iou_thresholds(np.array([SMALL], float), protocol="coco")


def test_small_object_threshold_makes_devkit_and_fixed_differ():
    # Frame 0: a small GT found with IoU 1/3 (score 0.9): TP for the devkit (>= 0.25), FP for fixed.
    # Frame 1: a large GT found exactly (score 0.8).
    videos, dets = _single_class_split([[SMALL], [LARGE]], [[([5, 0, 14, 9], 0.9)], [(LARGE, 0.8)]])
    # devkit: TP, TP -> AP 1. fixed: FP, TP -> precision 1/2 at recall 1/2 -> AP 0.25.
    assert _ap(videos, dets, "devkit")["per_class"] == {"cat": pytest.approx(100.0)}
    assert _ap(videos, dets, "fixed")["per_class"] == {"cat": pytest.approx(25.0)}


def test_duplicate_detection_is_a_false_positive():
    videos, dets = _single_class_split([[LARGE], [LARGE]], [[(LARGE, 0.9), (LARGE, 0.8)], [(LARGE, 0.7)]])
    # TP, FP (duplicate), TP: recall 1/2 at precision 1, then recall 1 at precision 2/3.
    for protocol in ("devkit", "fixed"):
        assert _ap(videos, dets, protocol)["map"] == pytest.approx(100 * (0.5 + 0.5 * 2 / 3))


def test_false_positive_in_an_empty_frame_counts():
    videos, dets = _single_class_split([[LARGE], []], [[(LARGE, 0.8)], [([50, 50, 80, 80], 0.9)]])
    # FP (score 0.9, frame without GT) then TP: precision 1/2 at recall 1 -> AP 0.5.
    assert _ap(videos, dets, "devkit")["map"] == pytest.approx(50.0)


def test_greedy_match_takes_the_highest_iou_unmatched_gt():
    # Two GTs; the first detection overlaps GT b more than GT a and must take b, leaving a for the second.
    a, b = [0, 0, 39, 39], [10, 0, 49, 39]
    videos, dets = _single_class_split([[a, b]], [[([10, 0, 49, 39], 0.9), ([0, 0, 39, 39], 0.8)]])
    assert _ap(videos, dets, "fixed")["map"] == pytest.approx(100.0)


def test_voc_ap_hand_computed_and_no_positives_raises():
    assert voc_ap(np.array([1.0, 0, 1]), np.array([0.0, 1, 0]), 2) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert voc_ap(np.array([0.0, 1]), np.array([1.0, 0]), 4) == pytest.approx(0.25 * 0.5)
    with pytest.raises(ValueError, match="without positives"):
        voc_ap(np.zeros(1), np.ones(1), 0)


def test_classes_without_ground_truth_are_listed_not_averaged():
    frames = [make_frame("v", 0, [LARGE], [0])]
    dets = {("v", 0): make_dets([LARGE, LARGE], [0.9, 0.8], [0, 1])}  # a "dog" detection, no dog GT
    result = _ap([make_video("v", frames)], dets, "devkit")
    assert result == {
        "map": pytest.approx(100.0),
        "per_class": {"cat": pytest.approx(100.0)},
        "classes_without_gt": ["dog"],
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("protocol", ["devkit", "fixed"])
def test_matches_naive_reference_with_and_without_buckets(seed, protocol):
    rng = np.random.default_rng(seed)
    videos, perfect = random_split(rng, num_videos=3, num_frames=8)
    # Jittered copies, duplicates, small boxes and random false positives with random scores.
    dets = {}
    for key, frame_dets in perfect.items():
        boxes = frame_dets.boxes.astype(np.float64)
        jitter = np.concatenate(
            [boxes + rng.normal(0, 4, boxes.shape), boxes + rng.normal(0, 8, boxes.shape)]
        )
        jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 2)
        fps = rng.uniform(0, 150, size=(2, 2))
        fps = np.concatenate([fps, fps + rng.uniform(3, 40, size=(2, 2))], axis=1)
        all_boxes = np.concatenate([jitter, fps])
        labels = np.concatenate([frame_dets.labels, frame_dets.labels, rng.integers(0, 2, 2)])
        scores = np.round(rng.uniform(0, 1, len(labels)), 2)  # rounded: ties happen too
        dets[key] = make_dets(all_boxes, scores, labels)
    dets.pop(next(iter(dets)))  # one frame without detections
    # A frame with no ground truth at all (FGFA's empty-frame weight) and degenerate boxes (x2 < x1).
    empty = ("val/video_000", 99)
    videos[0].frames.append(make_frame("val/video_000", 99, global_index=999))
    dets[empty] = make_dets([[10, 10, 40, 40], [50, 50, 60, 60]], [0.5, 0.7], [0, 1])
    first = next(iter(dets))
    d = dets[first]
    dets[first] = make_dets(
        np.concatenate([d.boxes, [[30, 30, 29.5, 60], [30, 30, 20, 60], [30, 30, 20, 10]]]),
        np.concatenate([d.scores, [0.6, 0.6, 0.6]]),
        np.concatenate([d.labels, [0, 1, 0]]),
    )
    split = flatten_split(videos, dets, progress=False)
    in_bucket = rng.random(split.num_gt) < 0.5
    gts = [
        (int(f), int(lab), tuple(b), False)
        for f, b, lab in zip(split.gt_frame, split.gt_boxes, split.gt_labels, strict=True)
    ]
    ds = [
        (int(f), int(lab), tuple(b), float(s))
        for f, b, s, lab in zip(
            split.det_frame, split.det_boxes, split.det_scores, split.det_labels, strict=True
        )
    ]
    for bucket in (None, in_bucket):
        ours = evaluate_voc(split, protocol=protocol, gt_in_bucket=bucket, progress=False)
        ignored = np.zeros(split.num_gt, bool) if bucket is None else ~bucket
        empty_weight = 1.0 if bucket is None else float(bucket.mean())
        marked = [(f, lab, b, bool(i)) for (f, lab, b, _), i in zip(gts, ignored, strict=True)]
        for c, name in enumerate(CLASSES):
            rules = bucket is not None
            expected = reference_ap(
                marked, ds, cls=c, protocol=protocol, bucket_rules=rules, empty_weight=empty_weight
            )
            if expected is None:
                assert name not in ours["per_class"]
            else:
                assert ours["per_class"][name] == pytest.approx(100 * expected, abs=1e-9)


def test_perfect_detections_score_100_and_shuffled_scores_less():
    rng = np.random.default_rng(3)
    videos, perfect = random_split(rng, num_videos=3, num_frames=10)
    # Perfect boxes ranked above low-score false positives: still 100 under every definition.
    with_fps = {}
    for key, d in perfect.items():
        fp_box = np.array([[150, 150, 190, 190]], np.float32)
        with_fps[key] = make_dets(
            np.concatenate([d.boxes, fp_box]),
            np.concatenate([d.scores, [0.01]]),
            np.concatenate([d.labels, [0]]),
        )
    result = evaluate(videos, with_fps, motion=False, degradation=False, progress=False)
    assert result["devkit"]["map"] == pytest.approx(100.0)
    assert result["fixed"]["map"] == pytest.approx(100.0)
    assert result["coco"]["ap50"] == pytest.approx(100.0)
    # Same boxes, scores shuffled across all detections: false positives now outrank true ones.
    all_scores = np.concatenate([d.scores for d in with_fps.values()])
    rng.shuffle(all_scores)
    shuffled, start = {}, 0
    for key, d in with_fps.items():
        shuffled[key] = make_dets(d.boxes, all_scores[start : start + len(d)], d.labels)
        start += len(d)
    result = evaluate(videos, shuffled, motion=False, degradation=False, progress=False)
    for value in (result["devkit"]["map"], result["fixed"]["map"], result["coco"]["ap50"]):
        assert value < 99.0


def test_bad_detections_raise_naming_the_frame():
    videos, _ = _single_class_split([[LARGE]], [[]])
    cases = [
        ({("v", 7): make_dets([LARGE], [0.5], [0])}, KeyError, r"\('v', 7\)"),
        ({("v", 0): make_dets([LARGE], [np.nan], [0])}, ValueError, r"\('v', 0\).*non-finite score"),
        ({("v", 0): make_dets([LARGE], [0.5], [2])}, ValueError, r"\('v', 0\).*label 2 .*outside 0..1"),
        ({("v", 0): make_dets([LARGE], [0.5, 0.4], [0, 0])}, ValueError, r"\('v', 0\).*must have shape"),
    ]
    for dets, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            flatten_split(videos, dets, progress=False)


def test_videos_with_different_class_lists_raise():
    a = make_video("a", [make_frame("a", 0)])
    b = make_video("b", [make_frame("b", 0)], classes=("cat", "fox"))
    with pytest.raises(ValueError, match="video 'b' has classes"):
        flatten_split([a, b], {}, progress=False)


def test_box_with_x2_below_x1_is_a_false_positive():
    # As in FGFA's vid_eval: the box 5..4.5 is 0.5 px wide with the +1 convention; with the small GT
    # 0..9 it overlaps 0.5 x 10 = 5 px, IoU 5 / (5 + 100 - 5) = 0.05 < 0.25: an FP (not refused).
    # Scores: that box 0.9 (FP), the exact box 0.8 (TP): recall 1 at precision 1/2 -> AP 50.
    videos, dets = _single_class_split([[SMALL]], [[([5, 0, 4.5, 9], 0.9), (SMALL, 0.8)]])
    assert _ap(videos, dets, "devkit")["map"] == pytest.approx(50.0)
