"""COCO-style AP (mmtracking, TransVOD, SparseVOD) through a maintained COCO evaluator.

The third "mAP@0.5" in circulation: COCO AP50 with 101-point interpolated precision, at most 100
detections per image and class, boxes as continuous coordinates (``w = x2 - x1``, no "+1").
AP75 and AP50:95 come from the same run, and so does the AP-vs-IoU curve (0.50 .. 0.95).

The ground truth and detections are handed to faster-coco-eval's ``COCOeval_faster`` as
in-memory COCO dictionaries (pycocotools' ``COCOeval`` when faster-coco-eval is missing); no part
of the COCO evaluation is re-implemented here, only read out of its ``precision`` array
``(T iou, R recall, K class, A area, M maxDets)``. To bound time and memory at VID-val size
(millions of boxes) the evaluator is asked only for what is read (area "all", 100 detections) and
is run on groups of categories (:func:`_category_chunks`); both leave every number unchanged.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from tqdm import tqdm

from harness.eval.split import EvalSplit

MAX_DETECTIONS = 100
ALL_AREA = 1e5**2  # COCO's area range "all" is [0, 1e10]
CHUNK_DETECTIONS = 400_000  # detections per group of categories handed to the evaluator at once


def _coco_backend():
    """``(COCO, COCOeval, name)`` from faster-coco-eval, else from pycocotools."""
    try:
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster, "faster_coco_eval"
    except ImportError:  # pragma: no cover - depends on the environment
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval, "pycocotools"


def _category_chunks(split: EvalSplit, *, max_detections: int) -> list[np.ndarray]:
    """Consecutive groups of 0-based classes holding at most ``max_detections`` detections each.

    COCO AP of a category depends only on that category's ground truth and detections (``useCats``:
    matching, the per-image ``maxDets`` cut and the accumulation are all per category), so
    evaluating the categories in groups gives exactly the numbers of one run over all of them,
    with the per-box Python dictionaries of one group alive at a time.
    """
    counts = np.bincount(split.det_labels, minlength=len(split.classes))
    chunks, current, in_current = [], [], 0
    for c, count in enumerate(counts.tolist()):
        if current and in_current + count > max_detections:
            chunks.append(np.array(current))
            current, in_current = [], 0
        current.append(c)
        in_current += count
    if current:
        chunks.append(np.array(current))
    return chunks


def to_coco_dicts(split: EvalSplit, *, classes: np.ndarray | None = None) -> tuple[dict, list[dict]]:
    """COCO ground-truth dataset and result list for ``split`` (only ``classes`` when given).

    Image ids are ``frame index + 1``, category ids ``label + 1``, boxes ``[x, y, w, h]`` with
    ``w = x2 - x1`` (COCO's continuous convention). Every image and category is listed.
    """
    images = [
        {"id": i + 1, "width": int(w), "height": int(h), "file_name": f"{video}/{frame_id:06d}"}
        for i, ((video, frame_id), (w, h)) in enumerate(
            zip(split.frame_keys, split.frame_sizes.tolist(), strict=True)
        )
    ]
    gt_keep = slice(None) if classes is None else np.flatnonzero(np.isin(split.gt_labels, classes))
    det_keep = slice(None) if classes is None else np.flatnonzero(np.isin(split.det_labels, classes))
    gt_ids = np.arange(split.num_gt)[gt_keep] + 1
    gt_boxes = split.gt_boxes[gt_keep]
    gt_xywh = np.concatenate([gt_boxes[:, :2], gt_boxes[:, 2:] - gt_boxes[:, :2]], axis=1)
    annotations = [
        {
            "id": ann_id,
            "image_id": frame + 1,
            "category_id": label + 1,
            "bbox": box,
            "area": box[2] * box[3],
            "iscrowd": 0,
        }
        for ann_id, frame, label, box in zip(
            gt_ids.tolist(),
            split.gt_frame[gt_keep].tolist(),
            split.gt_labels[gt_keep].tolist(),
            gt_xywh.tolist(),
            strict=True,
        )
    ]
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(split.classes)]
    gt = {"images": images, "annotations": annotations, "categories": categories}
    det_boxes = split.det_boxes[det_keep]
    det_xywh = np.concatenate([det_boxes[:, :2], det_boxes[:, 2:] - det_boxes[:, :2]], axis=1)
    results = [
        {"image_id": frame + 1, "category_id": label + 1, "bbox": box, "score": score}
        for frame, label, box, score in zip(
            split.det_frame[det_keep].tolist(),
            split.det_labels[det_keep].tolist(),
            det_xywh.tolist(),
            split.det_scores[det_keep].tolist(),
            strict=True,
        )
    ]
    return gt, results


def run_coco_eval(split: EvalSplit, *, classes: np.ndarray | None = None):
    """Run the COCO evaluator on ``split`` (only ``classes`` when given); returns it after ``accumulate()``.

    Returns ``None`` when there are no detections (pycocotools cannot load an empty result).
    """
    coco_cls, eval_cls, backend = _coco_backend()
    gt, results = to_coco_dicts(split, classes=classes)
    if not results:
        return None
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = coco_cls(gt) if backend == "faster_coco_eval" else _pycocotools_from_dict(coco_cls, gt)
        coco_dt = _results_coco(coco_cls, backend, gt, results)
        del gt, results
        kwargs = {"print_function": lambda *args, **kw: None} if backend == "faster_coco_eval" else {}
        evaluator = eval_cls(coco_gt, coco_dt, iouType="bbox", **kwargs)
        # Only the numbers read out below: area "all" and 100 detections per image (COCO evaluates
        # every area range and maxDets independently, so dropping the others changes none of them).
        evaluator.params.areaRng = [[0.0, ALL_AREA]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.params.maxDets = [MAX_DETECTIONS]
        if classes is not None:
            evaluator.params.catIds = sorted(int(c) + 1 for c in classes)
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def _results_coco(coco_cls, backend: str, gt: dict, results: list[dict]):
    """The detections as a COCO object: what ``loadRes`` builds for boxes, without its polygons.

    ``loadRes`` gives every box result an ``id``, ``area = w * h``, ``iscrowd = 0`` and a polygon
    ``segmentation`` that box evaluation never reads; making them took a quarter of the COCO step's
    time at 600k boxes (profiled), so the results dataset is built here directly.
    """
    for ann_id, ann in enumerate(results, start=1):
        ann["id"] = ann_id
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
        ann["iscrowd"] = 0
    dataset = {"images": gt["images"], "annotations": results, "categories": gt["categories"]}
    return coco_cls(dataset) if backend == "faster_coco_eval" else _pycocotools_from_dict(coco_cls, dataset)


def _pycocotools_from_dict(coco_cls, dataset: dict):  # pragma: no cover - fallback backend
    coco = coco_cls()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _per_iou_class_ap(evaluator, classes: np.ndarray) -> np.ndarray:
    """AP ``(T, len(classes))`` in [0, 1] of ``classes`` read from an accumulated evaluator (-1: no GT)."""
    params = evaluator.params
    category_ids = [int(c) + 1 for c in classes]
    if list(params.catIds) != category_ids:
        raise RuntimeError(f"COCO evaluator reordered the categories: {list(params.catIds)}")
    precision = np.asarray(evaluator.eval["precision"])  # (T, R, K, A, M)
    area_all = list(params.areaRngLbl).index("all")
    max_det = list(params.maxDets).index(MAX_DETECTIONS)
    by_class = precision[:, :, :, area_all, max_det]  # (T, R, K)
    valid = (by_class > -1).all(axis=1)  # (T, K): COCO fills -1 for classes without GT
    return np.where(valid, by_class.mean(axis=1), -1.0)


def evaluate_coco(
    split: EvalSplit, *, progress: bool = False, max_chunk_detections: int = CHUNK_DETECTIONS
) -> dict:
    """COCO AP50, AP75, AP50:95 (percent), the AP-vs-IoU curve and per-class AP50.

    The categories are evaluated in groups of at most ``max_chunk_detections`` detections (exact:
    see :func:`_category_chunks`), which bounds memory; ``progress`` shows one step per group.

    Returns ``{"ap50", "ap75", "ap50_95", "ap_vs_iou": {"0.50": .., ..., "0.95": ..},
    "per_class_ap50": {name: ap}, "classes_without_gt": [names]}``. Means are over classes with
    ground truth (COCO marks the others -1); all values are ``None`` when no class has any.
    """
    has_gt = np.bincount(split.gt_labels, minlength=len(split.classes)) > 0
    iou_thresholds = np.linspace(0.5, 0.95, 10)
    without_gt = [name for name, present in zip(split.classes, has_gt, strict=True) if not present]
    # No detections of a class: every class with ground truth has AP 0 at every IoU.
    per_iou_class = np.where(has_gt[None, :], 0.0, -1.0).repeat(len(iou_thresholds), axis=0)
    chunks = _category_chunks(split, max_detections=max_chunk_detections)
    if len(chunks) == 1:
        chunks = [None]  # one run over everything: no category restriction
    for chunk in tqdm(chunks, desc="eval: coco", unit="group", disable=not progress, leave=False):
        evaluator = run_coco_eval(split, classes=chunk)
        if evaluator is not None:
            classes = np.arange(len(split.classes)) if chunk is None else chunk
            per_iou_class[:, classes] = _per_iou_class_ap(evaluator, classes)
        del evaluator
    per_iou_class = 100.0 * per_iou_class
    has = per_iou_class[0] >= 0

    def mean_over_classes(values: np.ndarray) -> float | None:
        return float(values[has].mean()) if has.any() else None

    curve = {f"{t:.2f}": mean_over_classes(per_iou_class[i]) for i, t in enumerate(iou_thresholds)}
    ap50_95 = float(per_iou_class[:, has].mean()) if has.any() else None
    return {
        "ap50": curve["0.50"],
        "ap75": curve["0.75"],
        "ap50_95": ap50_95,
        "ap_vs_iou": curve,
        "per_class_ap50": {
            name: float(per_iou_class[0, k]) for k, name in enumerate(split.classes) if has[k]
        },
        "classes_without_gt": without_gt,
    }
