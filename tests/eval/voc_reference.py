"""A deliberately naive, loop-per-detection VOC/devkit evaluator: the independent reference.

Written from the devkit's description (and FGFA's bucket rules), not from harness/eval: plain
Python floats, one detection at a time, one ground truth at a time.
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


def reference_ap(gts, dets, *, protocol: str, empty_weight: float = 1.0) -> float | None:
    """AP in [0, 1] of one class.

    gts: list of ``(frame, box, ignored)``; dets: list of ``(frame, box, score)``.
    """
    npos = sum(1 for _, _, ignored in gts if not ignored)
    if npos == 0:
        return None
    by_frame: dict = {}
    for k, (frame, box, ignored) in enumerate(gts):
        by_frame.setdefault(frame, []).append((k, box, ignored))
    used = set()
    order = sorted(range(len(dets)), key=lambda i: -dets[i][2])
    tps, fps = [], []
    for i in order:
        frame, box, _ = dets[i]
        candidates = by_frame.get(frame, [])
        if not candidates:
            tps.append(0.0)
            fps.append(empty_weight)
            continue
        best_k, best_iou, best_ignored = None, None, None
        best_in, best_out = -1.0, -1.0
        for k, gt_box, ignored in candidates:
            ov = iou_plus_one(box, gt_box)
            if ignored:
                best_out = max(best_out, ov)
            else:
                best_in = max(best_in, ov)
            if k in used or ov < devkit_threshold(gt_box, protocol):
                continue
            better = best_k is None or ov > best_iou or (ov == best_iou and best_ignored and not ignored)
            if better:
                best_k, best_iou, best_ignored = k, ov, ignored
        if best_k is not None:
            used.add(best_k)
            tps.append(0.0 if best_ignored else 1.0)
            fps.append(0.0)
        else:
            tps.append(0.0)
            if best_in > best_out:
                fps.append(1.0)
            elif best_out > best_in:
                fps.append(0.0)
            else:
                fps.append(sum(1 for c in candidates if not c[2]) / len(candidates))
    # VOC all-point AP.
    recalls, precisions, tp_sum, fp_sum = [], [], 0.0, 0.0
    for tp, fp in zip(tps, fps, strict=True):
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
