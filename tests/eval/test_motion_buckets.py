"""Motion IoU from track ids, bucket assignment, and FGFA's bucket AP rules (hand-computed)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.eval.evaluate import evaluate
from harness.eval.motion import evaluate_buckets, motion_buckets, motion_iou
from harness.eval.split import flatten_split
from tests.eval.eval_builders import make_dets, make_frame, make_video

BOX = [0, 0, 9, 9]
SHIFTED = [5, 0, 14, 9]  # IoU with BOX (+1 convention): 50 / 150 = 1/3


def test_motion_iou_by_hand():
    frames = [
        make_frame("v", 0, [BOX, [100, 100, 120, 120]], [0, 0], track_ids=[7, 8]),  # track 8: alone
        make_frame("v", 1, [SHIFTED], [0], track_ids=[7]),
        make_frame("v", 2, [BOX], [0], track_ids=[7]),
        make_frame("v", 13, [BOX], [1], track_ids=[7]),  # 11 frames after frame 2: outside +-10
        make_frame("v", 23, [BOX], [1], track_ids=[7]),  # 10 frames after frame 13: inside
    ]
    result = motion_iou([make_video("v", frames)])
    np.testing.assert_allclose(result[("v", 0)], [(1 / 3 + 1) / 2, np.nan])  # neighbours: frames 1, 2
    np.testing.assert_allclose(result[("v", 1)], [1 / 3])  # frames 0 and 2, both 1/3
    np.testing.assert_allclose(result[("v", 2)], [(1 + 1 / 3) / 2])
    np.testing.assert_allclose(result[("v", 13)], [1.0])
    np.testing.assert_allclose(result[("v", 23)], [1.0])


def test_motion_iou_tracks_are_per_video():
    a = make_video("a", [make_frame("a", 0, [BOX], [0], track_ids=[1])])
    b = make_video("b", [make_frame("b", 1, [BOX], [0], track_ids=[1])])
    result = motion_iou([a, b])
    assert np.isnan(result[("a", 0)][0]) and np.isnan(result[("b", 1)][0])


def test_bucket_boundaries():
    buckets = motion_buckets(np.array([0.95, 0.9, 0.8, 0.7, 0.69, np.nan]))
    np.testing.assert_array_equal(buckets["slow"], [1, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(buckets["medium"], [0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(buckets["fast"], [0, 0, 0, 0, 1, 0])


def _bucket_scene():
    """Four GTs: g1 (A), g2 (A), g3 (B), g4 (D); frame C has none. Six detections, by score:

    d1 0.95 on g2; d2 0.90 on g1; d3 0.85 in empty frame C; d4 0.80 near g2 (IoU 0.22, unmatched);
    d5 0.75 in A overlapping nothing; d6 0.70 on g3.
    """
    g1, g2 = [0, 0, 49, 49], [100, 100, 149, 149]
    frames = [
        make_frame("v", 0, [g1, g2], [0, 0]),
        make_frame("v", 1, [g1], [0]),
        make_frame("v", 2),
        make_frame("v", 3, [g1], [0]),
    ]
    dets = {
        ("v", 0): make_dets([g2, g1, [120, 120, 169, 169], [60, 0, 79, 19]], [0.95, 0.9, 0.8, 0.75], [0] * 4),
        ("v", 1): make_dets([g1], [0.7], [0]),
        ("v", 2): make_dets([[10, 10, 40, 40]], [0.85], [0]),
    }
    return flatten_split([make_video("v", frames)], dets, progress=False)


def test_bucket_ap_with_ignored_gt_and_empty_weight_by_hand():
    split = _bucket_scene()  # GT order: g1, g2, g3, g4
    result = evaluate_buckets(
        split,
        {"b1": np.array([1, 0, 1, 0], bool), "b2": np.array([0, 1, 0, 1], bool)},
        protocol="devkit",
        progress=False,
    )
    # Bucket b1 = {g1, g3}, share 1/2. d1 takes ignored g2: neither TP nor FP. d2 TP. d3 FP weight 1/2
    # (empty frame). d4 best-overlaps ignored g2: weight 0. d5 overlaps nothing (tie): weight = share of
    # frame A's GTs in the bucket = 1/2. d6 TP. Cumulated TP 0,1,1,1,1,2; FP 0,0,.5,.5,1,1; npos 2.
    # AP = 1/2 * 1 + 1/2 * 2/3.
    assert result["b1"] == pytest.approx(100 * (0.5 + 0.5 * 2 / 3))
    # Bucket b2 = {g2, g4}. d1 TP; d2 and d6 hit ignored GTs; d3 FP 1/2; d4 FP 1 (best overlap g2 is in
    # the bucket); d5 FP 1/2. g4 is never found: AP = 1/2 (recall 1/2 at precision 1).
    assert result["b2"] == pytest.approx(50.0)
    assert result["share"] == {"b1": 0.5, "b2": 0.5}


def test_equal_iou_prefers_the_in_bucket_gt():
    # One detection exactly between two GTs (same IoU with both); the in-bucket one must take it.
    left, right = [0, 0, 39, 39], [20, 0, 59, 39]
    frames = [make_frame("v", 0, [left, right], [0, 0])]
    dets = {("v", 0): make_dets([[10, 0, 49, 39]], [0.9], [0])}
    split = flatten_split([make_video("v", frames)], dets, progress=False)
    for in_bucket in ([1, 0], [0, 1]):
        result = evaluate_buckets(split, {"b": np.array(in_bucket, bool)}, protocol="fixed", progress=False)
        assert result["b"] == pytest.approx(100.0)


def test_motion_breakdown_end_to_end():
    # Track 0 still (slow); track 1, 80 px wide, shifts 2 px/frame: IoU (80 - 2k) / (80 + 2k) at k frames,
    # mean 0.77 (k = 1..10) to 0.85 (mid-video) -> medium; track 2, 20 px, jumps 8 px/frame -> fast.
    frames = []
    for t in range(12):
        boxes = [[0, 0, 39, 39], [60 + 2 * t, 0, 139 + 2 * t, 39], [8 * t, 150, 19 + 8 * t, 169]]
        frames.append(make_frame("v", t, boxes, [0, 1, 0], track_ids=[0, 1, 2]))
    video = make_video("v", frames)
    motion = motion_iou([video])
    buckets = motion_buckets(np.concatenate([motion[("v", t)] for t in range(12)]))
    assert buckets["slow"][0::3].all() and buckets["medium"][1::3].all() and buckets["fast"][2::3].all()
    # Detect only the slow and the medium tracks.
    dets = {("v", t): make_dets(f.boxes[:2], [0.9, 0.8], [0, 1]) for t, f in enumerate(frames)}
    result = evaluate([video], dets, protocols=("devkit",), degradation=False, progress=False)
    motion_table = result["devkit"]["motion"]
    assert motion_table["slow"] == pytest.approx(100.0)
    assert motion_table["medium"] == pytest.approx(100.0)
    assert motion_table["fast"] == pytest.approx(0.0)
    assert motion_table["share"] == pytest.approx({"slow": 1 / 3, "medium": 1 / 3, "fast": 1 / 3})
    assert motion_table["per_class"]["fast"] == {"cat": 0.0}
