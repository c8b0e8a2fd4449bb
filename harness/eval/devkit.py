"""VOC-style AP as the ILSVRC VID devkit computes it, and its fixed-IoU-0.5 variant.

Two of the three "mAP@0.5" definitions in circulation (see PROTOCOLS.md):

* ``"devkit"`` (ILSVRC devkit, FGFA, SELSA, LSTS, SSVD, STMN, REPP): a detection may match a
  ground-truth box when their IoU reaches ``thr = min(0.5, w*h / ((w+10)*(h+10)))`` with the
  ground truth's ``w = x2-x1+1``, ``h = y2-y1+1``; small objects get a lower threshold.
* ``"fixed"`` (MEGA, vfe.pytorch): the same with ``thr = 0.5``.

Both use the "+1 pixel" box convention (inclusive corners) for IoU, greedy matching in
descending score order over the whole split (each detection takes the still unmatched ground
truth of its class and frame with the highest IoU among those reaching their threshold; ties go
to the lowest index, as in the devkit's ``ov > ovmax`` loop), and VOC all-point (continuous) AP.
The mean is over classes that have ground truth; the others are listed, never averaged as NaN.

The same matcher evaluates one *bucket* of ground truth (motion speed, degradation): GTs outside
the bucket are ignored, and a detection that matches none is weighted by FGFA's rules
(``lib/dataset/imagenet_vid_eval_motion.py``, reproduced exactly; see :func:`bucket_fp_weights`
and docs/evaluation.md). Matching is vectorised: per class, detections are sorted once, then
processed rank by rank (the k-th best detection of every frame at once), since greedy matching
is sequential only inside a frame.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from tqdm import tqdm

from harness.eval.split import EvalSplit

Protocol = Literal["devkit", "fixed"]
PROTOCOLS: tuple[str, ...] = ("devkit", "fixed")
DEVKIT_PIXEL_TOLERANCE = 10.0
DEFAULT_IOU = 0.5
FGFA_MAX_AREA = 1e5 * 1e5  # FGFA's only area range is [0, 1e10]
BUCKET_CHUNK = 200_000


def pixel_iou(boxes_a: np.ndarray, boxes_b: np.ndarray, *, plus_one: bool = True) -> np.ndarray:
    """IoU of boxes ``(..., 4)`` and ``(..., 4)`` (broadcast against each other) -> ``(...)``.

    With ``plus_one`` the boxes are inclusive pixel ranges (width ``x2 - x1 + 1``), the VID devkit
    convention; without it, continuous coordinates (COCO).
    """
    one = 1.0 if plus_one else 0.0
    a, b = boxes_a, boxes_b
    inter_w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + one
    inter_h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + one
    inter = np.clip(inter_w, 0, None) * np.clip(inter_h, 0, None)
    area_a = (boxes_a[..., 2] - boxes_a[..., 0] + one) * (boxes_a[..., 3] - boxes_a[..., 1] + one)
    area_b = (boxes_b[..., 2] - boxes_b[..., 0] + one) * (boxes_b[..., 3] - boxes_b[..., 1] + one)
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def iou_thresholds(gt_boxes: np.ndarray, *, protocol: Protocol) -> np.ndarray:
    """Per-ground-truth IoU threshold ``(G,)`` for ``gt_boxes`` ``(G, 4)`` under ``protocol``."""
    if protocol == "fixed":
        return np.full(gt_boxes.shape[0], DEFAULT_IOU)
    if protocol != "devkit":
        raise ValueError(f"unknown VOC-style protocol {protocol!r}; expected one of {PROTOCOLS}")
    w = gt_boxes[:, 2] - gt_boxes[:, 0] + 1.0
    h = gt_boxes[:, 3] - gt_boxes[:, 1] + 1.0
    tol = DEVKIT_PIXEL_TOLERANCE
    return np.minimum(DEFAULT_IOU, (w * h) / ((w + tol) * (h + tol)))


def _within_group_rank(groups: np.ndarray) -> np.ndarray:
    """Position of each element among the elements of its group, in the given order."""
    by_group = np.argsort(groups, kind="stable")
    sorted_groups = groups[by_group]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    counts = np.diff(np.r_[starts, len(groups)])
    rank = np.empty(len(groups), np.int64)
    rank[by_group] = np.arange(len(groups)) - np.repeat(starts, counts)
    return rank


def match_class(
    *,
    gt_frame: np.ndarray,
    gt_boxes: np.ndarray,
    gt_thresholds: np.ndarray,
    gt_ignored: np.ndarray,
    det_frame: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    unmatched_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy devkit matching of one class's detections to its ground truth over a whole split.

    Args:
        gt_frame, gt_boxes, gt_thresholds, gt_ignored: ``(G,)``, ``(G, 4)``, ``(G,)``, bool ``(G,)``.
        det_frame, det_boxes, det_scores: ``(D,)``, ``(D, 4)``, ``(D,)``.
        unmatched_weight: optional float ``(D,)`` (input order): the false-positive weight of each
            detection should it match no GT (:func:`bucket_fp_weights`); default 1.

    Returns:
        ``tp``, ``fp`` float ``(D,)`` in descending score order (ties keep the input order), and
        the number of positives (non-ignored GTs). A detection takes the still unmatched GT of its
        class and frame with the highest IoU reaching that GT's threshold; on equal IoU the first
        GT in frame order (FGFA's and the devkit's strict ``ov > ovmax``), ignored or not. Matched
        to an ignored GT it is neither TP nor FP (the GT is still used up); matched to none it is an
        FP of weight ``unmatched_weight``.
    """
    order = np.argsort(-det_scores, kind="stable")
    det_frame, det_boxes = det_frame[order], det_boxes[order]
    num_dets = len(order)
    tp = np.zeros(num_dets)
    # Every detection is an FP until it matches.
    fp = np.ones(num_dets) if unmatched_weight is None else np.asarray(unmatched_weight, float)[order]
    npos = int((~gt_ignored).sum())
    if len(gt_frame) == 0:
        return tp, fp, npos

    # Ground truth padded per frame that has some: (R, S) slots, S = most GTs in one frame.
    gt_order = np.argsort(gt_frame, kind="stable")
    frames_with_gt, row_start, row_count = np.unique(
        gt_frame[gt_order], return_index=True, return_counts=True
    )
    num_rows, num_slots = len(frames_with_gt), int(row_count.max())
    row_of_gt = np.repeat(np.arange(num_rows), row_count)
    slot_of_gt = np.arange(len(gt_order)) - np.repeat(row_start, row_count)
    padded_boxes = np.zeros((num_rows, num_slots, 4))
    padded_thr = np.zeros((num_rows, num_slots))
    valid = np.zeros((num_rows, num_slots), bool)
    ignored = np.zeros((num_rows, num_slots), bool)
    padded_boxes[row_of_gt, slot_of_gt] = gt_boxes[gt_order]
    padded_thr[row_of_gt, slot_of_gt] = gt_thresholds[gt_order]
    valid[row_of_gt, slot_of_gt] = True
    ignored[row_of_gt, slot_of_gt] = gt_ignored[gt_order]
    matched = np.zeros((num_rows, num_slots), bool)

    row_pos = np.minimum(np.searchsorted(frames_with_gt, det_frame), num_rows - 1)
    has_gt = frames_with_gt[row_pos] == det_frame
    dets_with_gt = np.flatnonzero(has_gt)  # in score order
    det_rows = row_pos[dets_with_gt]
    rank = _within_group_rank(det_rows)
    by_rank = np.argsort(rank, kind="stable")
    rank_bounds = np.cumsum(np.bincount(rank, minlength=1))[:-1]
    # The k-th best detections of all frames are independent of each other: match them at once.
    for chunk in np.split(by_rank, rank_bounds):
        dets, rows = dets_with_gt[chunk], det_rows[chunk]
        iou = pixel_iou(det_boxes[dets][:, None, :], padded_boxes[rows])  # (n, 1, 4) x (n, S, 4) -> (n, S)
        candidate = valid[rows] & ~matched[rows] & (iou >= padded_thr[rows])
        is_match = candidate.any(axis=1)
        # First GT in frame order among the best (argmax returns the first maximum).
        slot = np.where(candidate, iou, -np.inf).argmax(axis=1)

        m_rows, m_slots = rows[is_match], slot[is_match]
        matched[m_rows, m_slots] = True
        tp[dets[is_match]] = (~ignored[m_rows, m_slots]).astype(float)
        fp[dets[is_match]] = 0.0
    return tp, fp, npos


def bucket_fp_weights(
    split: EvalSplit, *, gt_ignored: np.ndarray, empty_weight: float, chunk: int = BUCKET_CHUNK
) -> np.ndarray:
    """FGFA's false-positive weight ``(D,)`` of each detection of ``split``, should it match no GT.

    FGFA's ``vid_eval_motion`` looks at *every* GT of the detection's frame, whatever its class:

    * the detection's ``+1`` area is outside FGFA's area range ``[0, 1e10]`` (a box with
      ``x2 < x1 - 1`` on one axis only): 0;
    * its best IoU with an in-bucket GT is above its best IoU with an ignored GT: 1; below: 0
      (a missing kind counts as -1; no overlap is IoU 0);
    * equal (for instance no overlap with a frame holding both kinds): the *ignored* share of
      the frame's GTs;
    * the frame has no GT at all: ``empty_weight`` (FGFA: the bucket's share of all GTs).

    Args:
        split: the evaluated split.
        gt_ignored: bool ``(G,)``, GTs outside the bucket.
        empty_weight: weight in frames without any GT.
        chunk: detections per vectorised block (bounds memory at ``chunk x S`` IoUs).
    """
    num_dets = split.det_scores.shape[0]
    weights = np.full(num_dets, float(empty_weight))
    boxes = split.det_boxes
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    if split.num_gt:
        # Every GT of the split padded per frame: (F, S) slots, S = most GTs in one frame.
        per_frame = np.bincount(split.gt_frame, minlength=split.num_frames)
        gt_order = np.argsort(split.gt_frame, kind="stable")
        starts = np.r_[0, np.cumsum(per_frame)[:-1]]
        slot = np.arange(split.num_gt) - np.repeat(starts, per_frame)
        num_slots = int(per_frame.max())
        gt_boxes = np.zeros((split.num_frames, num_slots, 4))
        state = np.zeros((split.num_frames, num_slots), np.int8)  # 0 empty, 1 in bucket, 2 ignored
        frame_of = split.gt_frame[gt_order]
        gt_boxes[frame_of, slot] = split.gt_boxes[gt_order]
        state[frame_of, slot] = np.where(gt_ignored[gt_order], 2, 1)
        ignored_share = (state == 2).sum(1) / np.maximum(per_frame, 1)
        for start in range(0, num_dets, chunk):
            stop = min(start + chunk, num_dets)
            frames = split.det_frame[start:stop]
            has_gt = per_frame[frames] > 0
            iou = pixel_iou(boxes[start:stop, None, :], gt_boxes[frames])  # (n, 1, 4) x (n, S, 4) -> (n, S)
            frame_state = state[frames]
            best_in = np.where(frame_state == 1, iou, -1.0).max(axis=1)
            best_ignored = np.where(frame_state == 2, iou, -1.0).max(axis=1)
            tie = np.where(has_gt, ignored_share[frames], empty_weight)
            weights[start:stop] = np.where(
                best_in > best_ignored, 1.0, np.where(best_ignored > best_in, 0.0, tie)
            )
    weights[(area < 0) | (area > FGFA_MAX_AREA)] = 0.0
    return weights


def voc_ap(tp: np.ndarray, fp: np.ndarray, npos: int) -> float:
    """VOC all-point (continuous) AP in [0, 1] from score-ordered ``tp``/``fp`` weights ``(D,)``."""
    if npos <= 0:
        raise ValueError("AP is undefined for a class without positives")
    tp_cum, fp_cum = np.cumsum(tp), np.cumsum(fp)
    recall = tp_cum / npos
    denom = tp_cum + fp_cum
    precision = np.divide(tp_cum, denom, out=np.zeros_like(tp_cum), where=denom > 0)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _class_slices(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices sorted by label (stable) and the ``(C + 1,)`` boundaries of each class's run."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(num_classes + 1))
    return order, bounds


def evaluate_voc(
    split: EvalSplit,
    *,
    protocol: Protocol,
    gt_in_bucket: np.ndarray | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> dict:
    """Per-class AP and mAP (percent) of a split under ``protocol`` ("devkit" or "fixed").

    Args:
        split: flattened ground truth and detections.
        protocol: which IoU threshold rule to use.
        gt_in_bucket: optional bool ``(G,)``; when given only these GTs count, and a detection
            that matches none is weighted by FGFA's rules (:func:`bucket_fp_weights`, with
            ``empty_weight = mean(gt_in_bucket)``, the bucket's share of all GTs).

    Returns:
        ``{"map": float | None, "per_class": {name: ap}, "classes_without_gt": [names]}``; ``map``
        is ``None`` when no class has ground truth (in the bucket).
    """
    num_classes = len(split.classes)
    thresholds = iou_thresholds(split.gt_boxes, protocol=protocol)
    if gt_in_bucket is None:
        gt_ignored = np.zeros(split.num_gt, bool)
        miss_weight = None
    else:
        if gt_in_bucket.shape != (split.num_gt,):
            raise ValueError(f"gt_in_bucket has shape {gt_in_bucket.shape}, expected ({split.num_gt},)")
        gt_ignored = ~gt_in_bucket.astype(bool)
        empty_weight = float(gt_in_bucket.mean()) if split.num_gt else 0.0
        miss_weight = bucket_fp_weights(split, gt_ignored=gt_ignored, empty_weight=empty_weight)
    gt_order, gt_bounds = _class_slices(split.gt_labels, num_classes)
    det_order, det_bounds = _class_slices(split.det_labels, num_classes)
    per_class, without_gt = {}, []
    classes = tqdm(
        range(num_classes), desc=desc or f"eval: {protocol}", unit="class", disable=not progress, leave=False
    )
    for c in classes:
        g = gt_order[gt_bounds[c] : gt_bounds[c + 1]]
        d = det_order[det_bounds[c] : det_bounds[c + 1]]
        tp, fp, npos = match_class(
            gt_frame=split.gt_frame[g],
            gt_boxes=split.gt_boxes[g],
            gt_thresholds=thresholds[g],
            gt_ignored=gt_ignored[g],
            det_frame=split.det_frame[d],
            det_boxes=split.det_boxes[d],
            det_scores=split.det_scores[d],
            unmatched_weight=None if miss_weight is None else miss_weight[d],
        )
        if npos == 0:
            without_gt.append(split.classes[c])
            continue
        per_class[split.classes[c]] = 100.0 * voc_ap(tp, fp, npos)
    mean_ap = float(np.mean(list(per_class.values()))) if per_class else None
    return {"map": mean_ap, "per_class": per_class, "classes_without_gt": without_gt}
