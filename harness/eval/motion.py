"""FGFA's motion-speed breakdown, with the motion IoU computed from track ids.

The motion IoU of a ground-truth box at frame ``t`` is the mean IoU (devkit "+1" convention)
between it and the boxes of the same ``track_id`` in the frames ``t-10 .. t+10`` of its video
that exist (frame numbers, so a subsampled video uses only the frames it has), excluding ``t``.
FGFA shipped only a precomputed ``.mat`` aligned by position to ``VID_val_frames.txt``, which
breaks on any subset; this works on any subset and on synthetic data.

Buckets (FGFA's ``motion_ranges`` in ``lib/dataset/imagenet_vid.py``, closed at both ends):
``slow`` [0.9, 1.0], ``medium`` [0.7, 0.9], ``fast`` [0.0, 0.7]. A motion IoU of exactly 0.9 is in
both slow and medium, exactly 0.7 in both medium and fast: the buckets overlap on their edges and
their shares can sum to more than 1. That is FGFA's script, reproduced by default
(``ranges="fgfa"``); ``ranges="partition"`` is vodbench's correction (``slow`` > 0.9,
``medium`` [0.7, 0.9], ``fast`` < 0.7: a partition), labelled as such wherever it is used.

A ground truth whose track has no other box within +-10 frames has no measurable motion; its
motion IoU is NaN and it is put in ``slow`` (vodbench's choice: FGFA's precomputed ``.mat`` gives
no rule for it; nothing was seen moving, like a still image whose supports are copies of itself).
On ILSVRC VID val such boxes are rare (tracks are annotated densely).

Evaluating one bucket uses FGFA's rules (:func:`harness.eval.devkit.bucket_fp_weights`): GTs
outside the bucket are ignored, and a detection that matches no GT is weighted by what it
overlaps most among all GTs of its frame.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

import numpy as np
from tqdm import tqdm

from harness.data.records import VideoRecord
from harness.eval.devkit import Protocol, evaluate_voc, pixel_iou
from harness.eval.split import EvalSplit

MOTION_RADIUS = 10
SLOW_ABOVE = 0.9
FAST_BELOW = 0.7
BUCKETS: tuple[str, ...] = ("slow", "medium", "fast")
MotionRanges = Literal["fgfa", "partition"]
MOTION_RANGES: tuple[str, ...] = ("fgfa", "partition")


def motion_iou(
    videos: list[VideoRecord], *, radius: int = MOTION_RADIUS, progress: bool = False
) -> dict[tuple[str, int], np.ndarray]:
    """Motion IoU of every ground-truth box: ``(video, frame_id) -> float64 (N,)`` (NaN: no neighbour).

    ``radius`` is the half window in frame numbers (10 in FGFA).
    """
    result: dict[tuple[str, int], np.ndarray] = {}
    for video in tqdm(videos, desc="eval: motion IoU", unit="video", disable=not progress, leave=False):
        # Gather every box of the video by track: (frame_id, box, (frame key, position in frame)).
        tracks: dict[int, list[tuple[int, np.ndarray, tuple[str, int], int]]] = defaultdict(list)
        for frame in video.frames:
            key = (frame.video, int(frame.frame_id))
            result[key] = np.full(frame.boxes.shape[0], np.nan)
            for i, (track_id, box) in enumerate(zip(frame.track_ids.tolist(), frame.boxes, strict=True)):
                tracks[track_id].append((int(frame.frame_id), np.asarray(box, np.float64), key, i))
        for occurrences in tracks.values():
            frame_ids = np.array([o[0] for o in occurrences])
            boxes = np.stack([o[1] for o in occurrences])
            iou = pixel_iou(boxes[:, None, :], boxes[None, :, :])  # (n, 1, 4) x (1, n, 4) -> (n, n)
            gap = np.abs(frame_ids[:, None] - frame_ids[None, :])
            near = (gap <= radius) & (gap > 0)
            count = near.sum(axis=1)
            with np.errstate(invalid="ignore"):
                mean_iou = np.where(count > 0, (iou * near).sum(axis=1) / np.maximum(count, 1), np.nan)
            for (_, _, key, i), value in zip(occurrences, mean_iou, strict=True):
                result[key][i] = value
    return result


def motion_buckets(motion: np.ndarray, *, ranges: MotionRanges = "fgfa") -> dict[str, np.ndarray]:
    """Bool masks ``(G,)`` per bucket for motion IoUs ``(G,)``; NaN (no neighbour) counts as slow.

    ``ranges="fgfa"`` (default): FGFA's closed ranges, 0.9 is slow *and* medium, 0.7 medium *and*
    fast. ``ranges="partition"`` (vodbench's correction, not FGFA): slow > 0.9, fast < 0.7.
    """
    no_motion = np.isnan(motion)
    if ranges == "fgfa":
        slow = ((motion >= SLOW_ABOVE) & (motion <= 1.0)) | no_motion
        medium = (motion >= FAST_BELOW) & (motion <= SLOW_ABOVE)
        fast = (motion >= 0.0) & (motion <= FAST_BELOW)
    elif ranges == "partition":
        slow = (motion > SLOW_ABOVE) | no_motion
        fast = motion < FAST_BELOW
        medium = ~slow & ~fast
    else:
        raise ValueError(f"unknown motion ranges {ranges!r}; expected one of {MOTION_RANGES}")
    return {"slow": slow, "medium": medium, "fast": fast}


def split_motion_iou(videos: list[VideoRecord], split: EvalSplit, *, progress: bool = False) -> np.ndarray:
    """Motion IoU ``(G,)`` aligned with ``split``'s flat ground-truth arrays."""
    per_frame = motion_iou(videos, progress=progress)
    parts = [per_frame[key] for key in split.frame_keys]
    return np.concatenate(parts) if parts else np.zeros(0)


def evaluate_buckets(
    split: EvalSplit,
    buckets: dict[str, np.ndarray],
    *,
    protocol: Protocol,
    progress: bool = True,
) -> dict:
    """mAP of each bucket of ground truth ``{name: bool (G,)}`` under ``protocol``.

    Returns ``{name: map | None, ..., "share": {name: fraction of GTs}, "per_class": {name: {...}}}``;
    a bucket without ground truth has mAP ``None``.
    """
    result: dict = {}
    shares: dict[str, float] = {}
    per_class: dict[str, dict[str, float]] = {}
    for name, mask in buckets.items():
        evaluation = evaluate_voc(
            split, protocol=protocol, gt_in_bucket=mask, progress=progress, desc=f"eval: {protocol}/{name}"
        )
        result[name] = evaluation["map"]
        per_class[name] = evaluation["per_class"]
        shares[name] = float(mask.mean()) if mask.size else 0.0
    result["share"] = shares
    result["per_class"] = per_class
    return result
