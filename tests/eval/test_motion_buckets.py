"""Motion IoU from track ids, bucket assignment, and FGFA's bucket AP rules (hand-computed)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.eval.devkit import evaluate_voc
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


def test_fgfa_ranges_are_closed_at_both_ends():
    # FGFA rule 5: motion_ranges [0.9, 1.0], [0.7, 0.9], [0.0, 0.7], compared with >= and <=.
    motion = np.array([0.95, 0.9, 0.8, 0.7, 0.69, np.nan])
    buckets = motion_buckets(motion)
    np.testing.assert_array_equal(buckets["slow"], [1, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(buckets["medium"], [0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(buckets["fast"], [0, 0, 0, 1, 1, 0])
    # vodbench's corrected variant (never the default): a partition.
    buckets = motion_buckets(motion, ranges="partition")
    np.testing.assert_array_equal(buckets["slow"], [1, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(buckets["medium"], [0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(buckets["fast"], [0, 0, 0, 0, 1, 0])
    with pytest.raises(ValueError, match="unknown motion ranges 'open'"):
        motion_buckets(motion, ranges="open")


def test_motion_iou_exactly_0_9_counts_in_slow_and_medium_end_to_end():
    # A two-frame track whose boxes have IoU 90 / 100 = 0.9 exactly (10 x 10 and 10 x 9 pixels):
    # both GTs have motion IoU 0.9. Both are detected exactly.
    frames = [make_frame("v", 0, [[0, 0, 9, 9]], [0]), make_frame("v", 1, [[0, 0, 9, 8]], [0])]
    video = make_video("v", frames)
    dets = {("v", t): make_dets(f.boxes, [0.9 - 0.1 * t], [0]) for t, f in enumerate(frames)}
    np.testing.assert_array_equal(motion_iou([video])[("v", 0)], [0.9])
    fgfa = evaluate([video], dets, protocols=("devkit",), degradation=False, progress=False)
    fgfa = fgfa["devkit"]["motion"]
    # FGFA: both GTs in slow and in medium, none in fast; each bucket finds its 2 GTs: AP 100.
    assert (fgfa["slow"], fgfa["medium"], fgfa["fast"]) == (100.0, 100.0, None)
    assert fgfa["share"] == {"slow": 1.0, "medium": 1.0, "fast": 0.0} and fgfa["ranges"] == "fgfa"
    fixed = evaluate(
        [video], dets, protocols=("devkit",), degradation=False, progress=False, motion_ranges="partition"
    )["devkit"]["motion"]
    assert (fixed["slow"], fixed["medium"], fixed["fast"]) == (None, 100.0, None)
    assert fixed["share"] == {"slow": 0.0, "medium": 1.0, "fast": 0.0} and fixed["ranges"] == "partition"


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
    # (frame without any GT). d4 best-overlaps ignored g2: weight 0. d5 overlaps nothing (tie): weight =
    # share of frame A's GTs that are ignored = 1/2. d6 TP.
    # Cumulated TP 0,1,1,1,1,2; FP 0,0,.5,.5,1,1; npos 2. AP = 1/2 * 1 + 1/2 * 2/3.
    assert result["b1"] == pytest.approx(100 * (0.5 + 0.5 * 2 / 3))
    # Bucket b2 = {g2, g4}. d1 TP; d2 and d6 hit ignored GTs; d3 FP 1/2; d4 FP 1 (best overlap g2 is in
    # the bucket); d5 FP 1/2. g4 is never found: AP = 1/2 (recall 1/2 at precision 1).
    assert result["b2"] == pytest.approx(50.0)
    assert result["share"] == {"b1": 0.5, "b2": 0.5}


def _bucket_map(frames, dets, in_bucket, protocol="devkit"):
    split = flatten_split([make_video("v", frames)], dets, progress=False)
    result = evaluate_buckets(split, {"b": np.array(in_bucket, bool)}, protocol=protocol, progress=False)
    return result["b"], result["per_class"]["b"]


def test_tie_is_weighted_by_the_share_of_ignored_gts():
    # FGFA rule 1. Frame 0: three cat GTs far apart, GT 0 in the bucket, GTs 1 and 2 ignored.
    # d1 (0.9) overlaps none: best in-bucket IoU 0 == best ignored IoU 0, a tie: FP weight = share of
    # *ignored* GTs in the frame = 2/3 (not the in-bucket share 1/3). d2 (0.8) finds GT 0: TP.
    # Cumulated: TP 0, 1; FP 2/3, 2/3; npos 1. AP = recall 1 at precision 1 / (1 + 2/3) = 3/5.
    frames = [make_frame("v", 0, [[0, 0, 19, 19], [100, 0, 119, 19], [0, 100, 19, 119]], [0, 0, 0])]
    dets = {("v", 0): make_dets([[150, 150, 169, 169], [0, 0, 19, 19]], [0.9, 0.8], [0, 0])}
    value, _ = _bucket_map(frames, dets, [1, 0, 0])
    assert value == pytest.approx(60.0)


def test_gts_of_other_classes_count_in_the_best_overlap():
    # FGFA rule 2. Frame 0: cat GT (in the bucket) at the top left, dog GT (ignored) at the bottom right.
    # d1, a cat detection (0.9) exactly on the dog: it cannot match it (class), and its best overlap is
    # the ignored dog (IoU 1 > 0 with the cat): FP weight 0. d2 (0.8) finds the cat: TP.
    # Cat: TP 0, 1; FP 0, 0 -> AP 100 (a same-class-only rule would give FP 1 and AP 50). The dog
    # class has no GT in the bucket: not averaged.
    frames = [make_frame("v", 0, [[0, 0, 49, 49], [100, 100, 149, 149]], [0, 1])]
    dets = {("v", 0): make_dets([[100, 100, 149, 149], [0, 0, 49, 49]], [0.9, 0.8], [0, 0])}
    value, per_class = _bucket_map(frames, dets, [1, 0])
    assert value == pytest.approx(100.0) and per_class == {"cat": pytest.approx(100.0)}


def test_empty_frame_weight_only_in_frames_without_any_gt():
    # FGFA rule 3. Frame 0: cat g1 (in bucket) and cat g3 (ignored, far away); frame 1: dog g2 (in
    # bucket), no cat; frame 2: no GT at all. Bucket {g1, g2}: share 2/3 = FGFA's empty_weight.
    # Cat detections: d1 (0.9) in frame 2: no GT at all -> FP 2/3. d2 (0.8) in frame 1 overlapping
    # nothing: the frame has a GT (the in-bucket dog, IoU 0 > -1 for "no ignored GT") -> FP 1, not 2/3.
    # d3 (0.7) finds g1: TP. Cat: TP 0, 0, 1; FP 2/3, 5/3, 5/3; npos 1 -> AP = 1 / (1 + 5/3) = 3/8.
    # Dog: one GT, no detection -> AP 0. mAP = (37.5 + 0) / 2.
    frames = [
        make_frame("v", 0, [[0, 0, 49, 49], [150, 150, 199, 199]], [0, 0]),
        make_frame("v", 1, [[0, 0, 49, 49]], [1]),
        make_frame("v", 2),
    ]
    dets = {
        ("v", 2): make_dets([[10, 10, 40, 40]], [0.9], [0]),
        ("v", 1): make_dets([[100, 100, 140, 140]], [0.8], [0]),
        ("v", 0): make_dets([[0, 0, 49, 49]], [0.7], [0]),
    }
    value, per_class = _bucket_map(frames, dets, [1, 0, 1])  # GT order: g1, g3, g2
    assert per_class == {"cat": pytest.approx(37.5), "dog": 0.0}
    assert value == pytest.approx(37.5 / 2)


def test_equal_iou_takes_the_first_gt_in_order_even_if_ignored():
    # FGFA rule 4. One detection exactly between two cat GTs: IoU 1200 / 2000 = 0.6 with both. FGFA's
    # strict "ov > ovmax" keeps the first GT in frame order (left). Left in the bucket: TP -> AP 100.
    # Left ignored: the detection is used up on it (neither TP nor FP); right is never found -> AP 0.
    left, right = [0, 0, 39, 39], [20, 0, 59, 39]
    frames = [make_frame("v", 0, [left, right], [0, 0])]
    dets = {("v", 0): make_dets([[10, 0, 49, 39]], [0.9], [0])}
    assert _bucket_map(frames, dets, [1, 0], protocol="fixed")[0] == pytest.approx(100.0)
    assert _bucket_map(frames, dets, [0, 1], protocol="fixed")[0] == pytest.approx(0.0)


def test_box_outside_fgfa_area_range_is_not_an_fp_in_a_bucket():
    # FGFA's area range [0, 1e10]: an unmatched detection whose +1 area is negative (x2 < x1 - 1 on
    # one axis: (20 - 30 + 1) * (60 - 30 + 1) = -279) gets FP weight 0 in a bucket, 1 in plain devkit.
    # Frame 0: g (in bucket); frame 1: g' (ignored). d1 (0.9) that box in frame 0; d2 (0.8) finds g.
    # Bucket: TP 0, 1; FP 0, 0 -> 100. Plain: FP, TP; npos 2 -> recall 1/2 at precision 1/2 -> 25.
    frames = [make_frame("v", 0, [[0, 0, 49, 49]], [0]), make_frame("v", 1, [[0, 0, 49, 49]], [0])]
    dets = {("v", 0): make_dets([[30, 30, 20, 60], [0, 0, 49, 49]], [0.9, 0.8], [0, 0])}
    assert _bucket_map(frames, dets, [1, 0])[0] == pytest.approx(100.0)
    split = flatten_split([make_video("v", frames)], dets, progress=False)
    assert evaluate_voc(split, protocol="devkit", progress=False)["map"] == pytest.approx(25.0)


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
