"""A deliberately naive, loop-per-detection VOC/devkit evaluator: the independent reference.

Written from the devkit's description and FGFA's ``vid_eval_motion`` rules, not from harness/eval:
plain Python floats, one frame at a time, one detection at a time, one ground truth at a time.
"""

from __future__ import annotations


def iou_plus_one(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return inter / union


def devkit_threshold(box, protocol: str) -> float:
    if protocol == "fixed":
        return 0.5
    w, h = box[2] - box[0] + 1, box[3] - box[1] + 1
    return min(0.5, w * h / ((w + 10) * (h + 10)))


def reference_ap(
    gts, dets, *, cls: int, protocol: str, bucket_rules: bool, empty_weight: float = 1.0
) -> float | None:
    """AP in [0, 1] of class ``cls``, following FGFA's evaluation loops frame by frame.

    gts: list of ``(frame, label, box, ignored)`` of *all* classes, in frame order;
    dets: list of ``(frame, label, box, score)`` of all classes. ``bucket_rules=False`` is FGFA's
    ``vid_eval`` (the devkit: every unmatched detection is an FP of weight 1); ``True`` is
    ``vid_eval_motion`` (unmatched detections weighted by what they overlap, the area range).
    """
    npos = sum(1 for _, label, _, ignored in gts if label == cls and not ignored)
    if npos == 0:
        return None
    gts_of: dict = {}
    for frame, label, box, ignored in gts:
        gts_of.setdefault(frame, []).append((label, box, ignored))
    dets_of: dict = {}
    for frame, label, box, score in dets:
        dets_of.setdefault(frame, []).append((label, box, score))
    scored = []  # (score, tp, fp) of class cls, frame by frame
    for frame, frame_dets in dets_of.items():
        frame_gts = gts_of.get(frame, [])
        used = [False] * len(frame_gts)
        for label, box, score in sorted(frame_dets, key=lambda d: -d[2]):
            best_k, best_ov, best_in, best_out = None, -1.0, -1.0, -1.0
            for k, (gt_label, gt_box, ignored) in enumerate(frame_gts):
                ov = iou_plus_one(box, gt_box)
                thr = devkit_threshold(gt_box, protocol)
                if gt_label == label and not used[k] and ov >= thr and ov > best_ov:
                    best_k, best_ov = k, ov
                if ignored:
                    best_out = max(best_out, ov)
                else:
                    best_in = max(best_in, ov)
            if best_k is not None:
                used[best_k] = True
                tp, fp = (0.0 if frame_gts[best_k][2] else 1.0), 0.0
            elif not bucket_rules:
                tp, fp = 0.0, 1.0
            elif (box[2] - box[0] + 1) * (box[3] - box[1] + 1) < 0:
                tp, fp = 0.0, 0.0
            elif best_in > best_out:
                tp, fp = 0.0, 1.0
            elif best_out > best_in:
                tp, fp = 0.0, 0.0
            elif not frame_gts:
                tp, fp = 0.0, empty_weight
            else:
                tp, fp = 0.0, sum(1 for g in frame_gts if g[2]) / len(frame_gts)
            if label == cls:
                scored.append((score, tp, fp))
    scored.sort(key=lambda x: -x[0])
    # VOC all-point AP.
    recalls, precisions, tp_sum, fp_sum = [], [], 0.0, 0.0
    for _, tp, fp in scored:
        tp_sum += tp
        fp_sum += fp
        recalls.append(tp_sum / npos)
        precisions.append(tp_sum / (tp_sum + fp_sum) if tp_sum + fp_sum > 0 else 0.0)
    ap, previous_recall = 0.0, 0.0
    for i, recall in enumerate(recalls):
        if recall > previous_recall:
            ap += (recall - previous_recall) * max(precisions[i:])
            previous_recall = recall
    return ap
