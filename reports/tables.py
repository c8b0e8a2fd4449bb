"""Results tables: one row per variant, mean and spread over seeds, the paper's number beside.

Column names of the results table (``results.parquet``, one row per variant x seed) follow
``harness.pipeline.flatten_metrics``: ``devkit_map``, ``fixed_map``, ``coco_ap50``, ``coco_ap75``,
``coco_ap50_95``, ``devkit_motion_slow``/``_medium``/``_fast``, ``degradation_devkit_clean``/``_degraded``.
"""

from __future__ import annotations

import pandas as pd

# Metric column -> the heading a table shows. Each heading names its mAP definition.
ACCURACY_COLUMNS = {
    "devkit_map": "mAP@0.5 devkit",
    "fixed_map": "mAP@0.5 fixed",
    "coco_ap50": "COCO AP50",
    "coco_ap75": "COCO AP75",
    "coco_ap50_95": "COCO AP50:95",
    "devkit_motion_slow": "slow (devkit)",
    "devkit_motion_medium": "medium (devkit)",
    "devkit_motion_fast": "fast (devkit)",
    "degradation_devkit_clean": "clean GT (devkit)",
    "degradation_devkit_degraded": "degraded GT (devkit)",
}

DEFINITIONS_NOTE = (
    "mAP definitions: 'devkit' = ILSVRC devkit/FGFA (IoU threshold min(0.5, wh/((w+10)(h+10))), "
    "+1 boxes, VOC all-point AP); 'fixed' = IoU 0.5 with +1 boxes (MEGA); 'COCO' = faster-coco-eval "
    "(101-point interpolation, no +1). Motion buckets (slow/medium/fast) and the clean/degraded split use "
    "the devkit definition. Values are mean ± sample standard deviation over seeds (n shown)."
)


def summarise(
    results: pd.DataFrame,
    variants: list[str],
    *,
    columns: dict[str, str] | None = None,
    paper: dict[str, float] | None = None,
    paper_label: str = "paper mAP@0.5 (VID)",
) -> pd.DataFrame:
    """Mean ± std over seeds for each variant (in the given order) and metric column."""
    columns = columns or ACCURACY_COLUMNS
    present = [c for c in columns if c in results.columns]
    rows = []
    for variant in variants:
        subset = results[results["variant"] == variant]
        if subset.empty:
            continue
        row = {"variant": variant, "n": len(subset)}
        if paper is not None:
            row[paper_label] = paper.get(variant, float("nan"))
        for column in present:
            values = subset[column].astype(float)
            row[columns[column]] = _mean_std(values)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if paper is not None and paper_label in frame:
        frame[paper_label] = frame[paper_label].astype(float)
    return frame


def _mean_std(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return ""
    if len(values) == 1:
        return f"{values.iloc[0]:.1f}"
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"


def per_seed(results: pd.DataFrame, variant: str, column: str = "devkit_map") -> pd.Series:
    """Values of one metric of one variant, indexed by seed (for paired verdicts)."""
    subset = results[results["variant"] == variant].set_index("seed")[column].astype(float)
    return subset.sort_index()
