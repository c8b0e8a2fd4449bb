"""Seq-NMS: a hand-made track, a naive full-recompute reference, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from harness.eval.seqnms import seq_nms, seq_nms_track
from tests.eval.eval_builders import make_dets, make_frame, make_video
from tests.eval.voc_reference import iou_plus_one

TRACK = [10, 10, 50, 50]
NEAR = [25, 10, 65, 50]  # IoU with TRACK (+1): 26*41 / (2*41*41 - 26*41) = 0.464: suppressed, not linked
LONE = [150, 150, 170, 170]


def _three_frame_scene():
    frames = [make_frame("v", t) for t in range(3)]
    dets = {
        ("v", 0): make_dets([TRACK], [0.9], [0]),
        ("v", 1): make_dets([TRACK, NEAR, LONE, TRACK], [0.3, 0.5, 0.4, 0.7], [0, 0, 0, 1]),
        ("v", 2): make_dets([TRACK], [0.6], [0]),
    }
    return [make_video("v", frames)], dets


def _as_sets(dets):
    return {
        key: sorted(
            zip(
                d.labels.tolist(),
                map(tuple, d.boxes.tolist()),
                np.round(d.scores.astype(np.float64), 6).tolist(),
                strict=True,
            )
        )
        for key, d in dets.items()
    }


@pytest.mark.parametrize("rescore, value", [("mean", 0.6), ("max", 0.9)])
def test_hand_made_track(rescore, value):
    videos, dets = _three_frame_scene()
    out = seq_nms(videos, dets, rescore=rescore, progress=False)
    # The cat track (0.9, 0.3, 0.6) is rescored to its mean / max; NEAR overlaps the track's box in
    # frame 1 by IoU 0.46 >= 0.3 and is removed; the lone cat box and the dog box keep their scores.
    assert _as_sets(out) == {
        ("v", 0): [(0, tuple(map(float, TRACK)), value)],
        ("v", 1): sorted(
            [
                (0, tuple(map(float, TRACK)), value),
                (0, tuple(map(float, LONE)), 0.4),
                (1, tuple(map(float, TRACK)), 0.7),
            ]
        ),
        ("v", 2): [(0, tuple(map(float, TRACK)), value)],
    }
    assert np.all(np.diff(out[("v", 1)].scores) <= 0)  # sorted by score


def test_best_path_is_the_highest_sum_and_links_need_iou():
    # Two candidate boxes in the middle frame, both linked to the ends: the higher one wins the path,
    # the other one overlaps it (IoU >= 0.3) and is removed. A fourth frame with a box that does not
    # link (IoU < 0.5) starts a new path and keeps its own score.
    a, b = [10, 10, 50, 50], [12, 10, 52, 50]
    keep, scores = seq_nms_track(
        [
            np.array([a], float),
            np.array([a, b], float),
            np.array([a], float),
            np.array([[40, 40, 80, 80]], float),
        ],
        [np.array([0.2]), np.array([0.5, 0.8]), np.array([0.2]), np.array([0.9])],
    )
    assert [k.tolist() for k in keep] == [[0], [1], [0], [0]]
    np.testing.assert_allclose(np.concatenate(scores), [0.4, 0.4, 0.4, 0.9])


def _reference_seq_nms(boxes, scores, link_iou=0.5, suppress_iou=0.3):
    """Plain-Python Seq-NMS, recomputing the whole DP after every path."""
    alive = [[True] * len(s) for s in scores]
    out = [dict() for _ in scores]
    while any(any(a) for a in alive):
        best = [[None] * len(s) for s in scores]  # (sum, predecessor)
        for t in range(len(scores)):
            for j in range(len(scores[t])):
                if not alive[t][j]:
                    continue
                pred, pred_sum = -1, 0.0
                if t > 0:
                    for i in range(len(scores[t - 1])):
                        if alive[t - 1][i] and iou_plus_one(boxes[t - 1][i], boxes[t][j]) >= link_iou:
                            if pred < 0 or best[t - 1][i][0] > pred_sum:
                                pred, pred_sum = i, best[t - 1][i][0]
                best[t][j] = (scores[t][j] + pred_sum, pred)
        end = max(
            (
                (best[t][j][0], t, j)
                for t in range(len(scores))
                for j in range(len(scores[t]))
                if best[t][j] is not None
            ),
            key=lambda x: x[0],
        )
        _, t, j = end
        path = []
        while j >= 0:
            path.append((t, j))
            j, t = best[t][j][1], t - 1
        mean = sum(scores[t][j] for t, j in path) / len(path)
        for t, j in path:
            out[t][j] = mean
            for k in range(len(scores[t])):
                if iou_plus_one(boxes[t][j], boxes[t][k]) >= suppress_iou:
                    alive[t][k] = False
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_naive_reference(seed):
    rng = np.random.default_rng(seed)
    boxes, scores = [], []
    for _ in range(8):
        n = int(rng.integers(0, 6))
        top_left = rng.uniform(0, 40, (n, 2))
        boxes.append(np.round(np.concatenate([top_left, top_left + rng.uniform(15, 30, (n, 2))], axis=1)))
        scores.append(rng.uniform(0.05, 1, n))
    keep, new_scores = seq_nms_track(boxes, scores)
    expected = _reference_seq_nms([b.tolist() for b in boxes], [s.tolist() for s in scores])
    for t in range(len(boxes)):
        assert dict(zip(keep[t].tolist(), new_scores[t].tolist(), strict=True)) == pytest.approx(expected[t])


def test_bad_input_raises():
    videos, dets = _three_frame_scene()
    with pytest.raises(ValueError, match="rescore must be 'mean' or 'max'"):
        seq_nms(videos, dets, rescore="median", progress=False)
    with pytest.raises(KeyError, match=r"\('w', 0\)"):
        seq_nms(videos, {("w", 0): make_dets([TRACK], [0.5], [0])}, progress=False)
    with pytest.raises(ValueError, match=r"\('v', 0\).*non-finite score"):
        seq_nms(videos, {("v", 0): make_dets([TRACK], [np.nan], [0])}, progress=False)
