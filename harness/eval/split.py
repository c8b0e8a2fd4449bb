"""Flatten a split's ground truth and detections into flat numpy arrays, checking them on the way.

Every protocol (devkit, fixed-0.5, COCO, motion and degradation buckets) reads the same
:class:`EvalSplit`, so the per-frame Python objects are walked exactly once per evaluation and
the evaluators themselves are vectorised over these arrays.

A frame is addressed by its position in the split (``frame index``: videos in the given order,
frames in temporal order); ``frame_keys[i]`` gives back its ``(video, frame_id)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from harness.data.records import Detections, VideoRecord


@dataclass(frozen=True)
class EvalSplit:
    """Ground truth and detections of one split as flat arrays.

    Attributes:
        classes: class names; labels index into it.
        frame_keys: ``(video, frame_id)`` of each frame, in split order.
        frame_sizes: int64 ``(F, 2)`` ``width, height`` of each frame.
        gt_frame: int64 ``(G,)`` frame index of each ground-truth box.
        gt_boxes: float64 ``(G, 4)`` ``x1, y1, x2, y2`` (inclusive pixel corners).
        gt_labels: int64 ``(G,)`` 0-based classes.
        gt_degradation: int64 ``(G,)`` bit masks over ``records.DEGRADATIONS``.
        det_frame: int64 ``(D,)`` frame index of each detection.
        det_boxes: float64 ``(D, 4)``.
        det_scores: float64 ``(D,)``.
        det_labels: int64 ``(D,)``.
    """

    classes: tuple[str, ...]
    frame_keys: list[tuple[str, int]]
    frame_sizes: np.ndarray
    gt_frame: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_degradation: np.ndarray
    det_frame: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    det_labels: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.frame_keys)

    @property
    def num_gt(self) -> int:
        return int(self.gt_labels.shape[0])


def split_classes(videos: list[VideoRecord]) -> tuple[str, ...]:
    """The class list shared by all ``videos``; raises if they disagree or the list is empty."""
    if not videos:
        raise ValueError("no videos to evaluate (empty ground-truth list)")
    classes = tuple(videos[0].classes)
    for video in videos[1:]:
        if tuple(video.classes) != classes:
            raise ValueError(
                f"video {video.name!r} has classes {video.classes}, but {videos[0].name!r} has {classes}"
            )
    return classes


def check_frame_detections(dets, *, key: tuple[str, int], num_classes: int) -> None:
    """Raise ``ValueError`` naming the frame ``key`` when a ``FrameDetections`` is malformed."""
    boxes, scores, labels = np.asarray(dets.boxes), np.asarray(dets.scores), np.asarray(dets.labels)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"detections of {key}: boxes must have shape (K, 4), got {boxes.shape}")
    k = boxes.shape[0]
    if scores.shape != (k,) or labels.shape != (k,):
        raise ValueError(
            f"detections of {key}: scores {scores.shape} and labels {labels.shape} must have shape ({k},)"
        )
    if k == 0:
        return
    bad = ~np.isfinite(scores)
    if bad.any():
        raise ValueError(f"detections of {key}: non-finite score at index {int(np.argmax(bad))}")
    bad = ~np.isfinite(boxes).all(axis=1)
    if bad.any():
        raise ValueError(f"detections of {key}: non-finite box at index {int(np.argmax(bad))}")
    # A box with x2 < x1 or y2 < y1 is accepted: the devkit and FGFA score it (it overlaps nothing
    # once the +1 width is <= 0, so it is a false positive), and detectors emit such boxes after clipping.
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"detections of {key}: label {int(labels[i])} at index {i} outside 0..{num_classes - 1}"
        )


def flatten_split(videos: list[VideoRecord], detections: Detections, *, progress: bool = True) -> EvalSplit:
    """Check and flatten ``videos`` (ground truth) and ``detections`` into an :class:`EvalSplit`.

    Frames missing from ``detections`` have no detections. A detection key naming a frame that is
    not in ``videos`` raises ``KeyError`` naming the key: evaluating detections against the wrong
    split is a mistake worth stopping for.
    """
    classes = split_classes(videos)
    frame_keys: list[tuple[str, int]] = []
    frame_index: dict[tuple[str, int], int] = {}
    sizes, gt_frame, gt_boxes, gt_labels, gt_degradation = [], [], [], [], []
    total = sum(len(v) for v in videos)
    frames = (frame for video in videos for frame in video.frames)
    for frame in tqdm(frames, total=total, desc="eval: ground truth", unit="frame", disable=not progress):
        key = (frame.video, int(frame.frame_id))
        if key in frame_index:
            raise ValueError(f"frame {key} appears twice in the ground truth")
        n = frame.boxes.shape[0]
        if frame.boxes.shape != (n, 4) or frame.labels.shape != (n,) or frame.degradation.shape != (n,):
            raise ValueError(
                f"ground truth of {key}: boxes {frame.boxes.shape}, labels {frame.labels.shape}, "
                f"degradation {frame.degradation.shape} are inconsistent"
            )
        if n and ((frame.labels < 0).any() or (frame.labels >= len(classes)).any()):
            raise ValueError(f"ground truth of {key}: label outside 0..{len(classes) - 1}: {frame.labels}")
        frame_index[key] = len(frame_keys)
        frame_keys.append(key)
        sizes.append((frame.width, frame.height))
        gt_frame.append(np.full(n, len(frame_keys) - 1, np.int64))
        gt_boxes.append(np.asarray(frame.boxes, np.float64))
        gt_labels.append(np.asarray(frame.labels, np.int64))
        gt_degradation.append(np.asarray(frame.degradation, np.int64))

    det_frame, det_boxes, det_scores, det_labels = [], [], [], []
    for key, dets in tqdm(detections.items(), desc="eval: detections", unit="frame", disable=not progress):
        if key not in frame_index:
            raise KeyError(f"detections given for frame {key}, which is not in the ground truth")
        check_frame_detections(dets, key=key, num_classes=len(classes))
        k = len(dets.scores)
        det_frame.append(np.full(k, frame_index[key], np.int64))
        det_boxes.append(np.asarray(dets.boxes, np.float64).reshape(k, 4))
        det_scores.append(np.asarray(dets.scores, np.float64))
        det_labels.append(np.asarray(dets.labels, np.int64))

    def cat(parts: list[np.ndarray], shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

    return EvalSplit(
        classes=classes,
        frame_keys=frame_keys,
        frame_sizes=np.asarray(sizes, np.int64).reshape(-1, 2),
        gt_frame=cat(gt_frame, (0,), np.int64),
        gt_boxes=cat(gt_boxes, (0, 4), np.float64),
        gt_labels=cat(gt_labels, (0,), np.int64),
        gt_degradation=cat(gt_degradation, (0,), np.int64),
        det_frame=cat(det_frame, (0,), np.int64),
        det_boxes=cat(det_boxes, (0, 4), np.float64),
        det_scores=cat(det_scores, (0,), np.float64),
        det_labels=cat(det_labels, (0,), np.int64),
    )
