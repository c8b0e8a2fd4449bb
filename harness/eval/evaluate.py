"""One entry point for every evaluation of a split: :func:`evaluate`.

Each table in the result is keyed by the name of the definition it uses, so a number can never be
quoted without its definition (three different "mAP@0.5" are in circulation, see PROTOCOLS.md):

* ``"devkit"``: ILSVRC devkit / FGFA, size-dependent IoU threshold, +1 boxes, VOC all-point AP;
* ``"fixed"``: the same with IoU 0.5 for every box (MEGA);
* ``"coco"``: COCO AP50 / AP75 / AP50:95 from faster-coco-eval (mmtracking, TransVOD, SparseVOD).

All AP values are percentages (0-100). Classes without ground truth are left out of every mean
and listed under ``classes_without_gt``; a mean over nothing is ``None`` (JSON ``null``), never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harness.data.records import Detections, VideoRecord
from harness.eval.coco import evaluate_coco
from harness.eval.degradation import evaluate_degradation
from harness.eval.devkit import PROTOCOLS as VOC_PROTOCOLS
from harness.eval.devkit import evaluate_voc
from harness.eval.motion import MotionRanges, evaluate_buckets, motion_buckets, split_motion_iou
from harness.eval.split import flatten_split

ALL_PROTOCOLS: tuple[str, ...] = ("devkit", "fixed", "coco")


def evaluate(
    videos: list[VideoRecord],
    detections: Detections,
    *,
    protocols: Sequence[str] = ALL_PROTOCOLS,
    motion: bool = True,
    degradation: bool = True,
    progress: bool = True,
    motion_ranges: MotionRanges = "fgfa",
) -> dict:
    """Evaluate ``detections`` against the ground truth of ``videos`` under several definitions.

    Args:
        videos: ground truth; every video must share the same class list.
        detections: ``(video, frame_id) -> FrameDetections`` in original pixels, 0-based labels;
            frames missing from it have no detections.
        protocols: any of ``"devkit"``, ``"fixed"``, ``"coco"``.
        motion: add FGFA's slow/medium/fast breakdown to each VOC-style protocol.
        degradation: add the clean/degraded/per-flag split for each VOC-style protocol.
        progress: show progress bars.
        motion_ranges: ``"fgfa"`` (default, FGFA's closed ranges) or ``"partition"`` (vodbench's
            corrected half-open ranges, never FGFA's numbers); recorded as ``motion["ranges"]``.

    Returns:
        A JSON-serialisable dict::

            {"devkit": {"map", "per_class", "classes_without_gt", "motion": {"slow", "medium",
                        "fast", "share", "per_class", "ranges"}},
             "fixed": {...same...},
             "coco": {"ap50", "ap75", "ap50_95", "ap_vs_iou", "per_class_ap50", "classes_without_gt"},
             "degradation": {"devkit": {"clean", "degraded", <flag>..., "share", "per_class"}, ...},
             "num_frames", "num_gt", "num_detections"}
    """
    unknown = [p for p in protocols if p not in ALL_PROTOCOLS]
    if unknown or not protocols:
        raise ValueError(
            f"unknown protocol(s) {unknown or list(protocols)}; expected some of {ALL_PROTOCOLS}"
        )
    split = flatten_split(videos, detections, progress=progress)
    result: dict = {}
    speed_buckets = None
    if motion and any(p in VOC_PROTOCOLS for p in protocols):
        motion_iou = split_motion_iou(videos, split, progress=progress)
        speed_buckets = motion_buckets(motion_iou, ranges=motion_ranges)
    for protocol in protocols:
        if protocol in VOC_PROTOCOLS:
            table = evaluate_voc(split, protocol=protocol, progress=progress)
            if speed_buckets is not None:
                table["motion"] = evaluate_buckets(split, speed_buckets, protocol=protocol, progress=progress)
                table["motion"]["ranges"] = motion_ranges
            result[protocol] = table
        else:
            result[protocol] = evaluate_coco(split, progress=progress)
    if degradation:
        result["degradation"] = {
            protocol: evaluate_degradation(split, protocol=protocol, progress=progress)
            for protocol in protocols
            if protocol in VOC_PROTOCOLS
        }
    result["num_frames"] = split.num_frames
    result["num_gt"] = split.num_gt
    result["num_detections"] = int(split.det_scores.shape[0])
    _check_finite(result, path="result")
    return result


def _check_finite(value, *, path: str) -> None:
    """Guard the NaN-free promise: raise naming the key path of any NaN/inf in the result."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, path=f"{path}[{key!r}]")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite(item, path=f"{path}[{i}]")
    elif isinstance(value, float) and not np.isfinite(value):
        raise RuntimeError(f"evaluation produced a non-finite value at {path}: {value}")
