"""The standard every ablation report meets (issue 9, section 1), built once for every paper.

A paper module declares *what* to report (a :class:`ReportSpec`: the question, the comparisons to
judge, the deviations it knows of, the rows and figures it does not reproduce) and builds its own
tables and figures with the helpers below; :func:`build_report` assembles them in the standard order:

1. **Opening**: the question, a "what we learned" paragraph generated from the verdicts and their
   numbers (no hand-typed figures), and the claims that hold / do not hold / are inconclusive;
2. **Deviations from the paper**: detector, backbone, training budget, support settings, validation
   subsets with their frame and box counts, all read from the study's configs and the results table,
   then the paper module's own items and what is not reproduced and why;
3. the paper module's sections (tables from :func:`summary_table` and :func:`cost_table`, figures);
4. **Claims**: the verdict rule, one row per comparison naming a and b, the direction and margin, the
   mean paired difference, its 95% interval, the per-seed differences and the verdict (with a note when
   every seed contradicts the claimed direction), and a forest plot of all paired differences.

The results table has one row per variant x seed (columns ``variant``, ``row``, ``group``, ``seed``,
metric columns such as ``devkit_map``, bucket columns with their box shares ``*_share_*`` and
``num_gt``, cost columns ``seconds_<part>``/``params_<part>``/``flops_<part>``/``fps``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from reports import figures
from reports.document import Bullets, Document, Figure, Heading, Paragraph, Table
from reports.tables import ACCURACY_COLUMNS, DEFINITIONS_NOTE
from reports.verdicts import FAILS, HOLDS, INCONCLUSIVE, RULE_TEXT, Claim, judge

NOT_RUN = "not run"
MIN_BOXES = 50  # a bucket cell computed from fewer ground-truth boxes is shown as "n<MIN_BOXES"

# Metric column prefixes whose cells rest on a subset of the boxes; the share column inserts "share_".
_BUCKET_PREFIXES = ("devkit_motion_", "fixed_motion_", "degradation_devkit_", "degradation_fixed_")

METRIC_LABELS = {
    **ACCURACY_COLUMNS,
    "degradation_devkit_motion_blur": "motion blur GT (devkit)",
    "degradation_devkit_defocus": "defocus GT (devkit)",
    "degradation_devkit_occlusion": "occluded GT (devkit)",
    "degradation_devkit_illumination": "illumination GT (devkit)",
    "degradation_devkit_noise": "noise GT (devkit)",
    "degradation_devkit_jpeg": "JPEG GT (devkit)",
}

MOTION_COLUMNS = ("devkit_motion_slow", "devkit_motion_medium", "devkit_motion_fast")
DEGRADATION_COLUMNS = (
    "degradation_devkit_clean",
    "degradation_devkit_degraded",
    "degradation_devkit_motion_blur",
    "degradation_devkit_defocus",
    "degradation_devkit_occlusion",
    "degradation_devkit_illumination",
    "degradation_devkit_noise",
    "degradation_devkit_jpeg",
)


# ---------------------------------------------------------------------------------------------
# Comparisons and their assessment
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """A claim judged on one metric column; ``claim.a`` and ``claim.b`` are variant names.

    ``source`` says whether the paper makes the claim ("paper") or the results table shows it
    ("results": a finding the harness adds, e.g. a control row's effect)."""

    claim: Claim
    metric: str = "devkit_map"
    source: Literal["paper", "results"] = "paper"
    unit: str = "points"
    digits: int = 1


@dataclass(frozen=True)
class Assessment:
    comparison: Comparison
    verdict: str  # HOLDS / FAILS / INCONCLUSIVE / NOT_RUN
    mean: float = math.nan
    low: float = math.nan
    high: float = math.nan
    per_seed: dict[int, float] = field(default_factory=dict)  # seed -> a - b
    boxes: float | None = None  # ground-truth boxes behind the metric (bucket metrics only)
    missing: tuple[str, ...] = ()  # variants absent from the results table

    @property
    def contradicted(self) -> bool:
        """The claimed direction is a >= b; True when a < b on every seed (two seeds or more)."""
        values = list(self.per_seed.values())
        return len(values) >= 2 and all(v < 0 for v in values)

    @property
    def few_boxes(self) -> bool:
        return self.boxes is not None and self.boxes < MIN_BOXES


def share_column(metric: str) -> str | None:
    """The box-share column of a bucket metric (``devkit_motion_fast`` -> ``devkit_motion_share_fast``)."""
    for prefix in _BUCKET_PREFIXES:
        if metric.startswith(prefix) and not metric.startswith(prefix + "share_"):
            return prefix + "share_" + metric[len(prefix) :]
    return None


def box_count(results: pd.DataFrame, variant: str, metric: str) -> float | None:
    """Ground-truth boxes behind ``metric`` for ``variant`` (share x num_gt), None if not a bucket."""
    share = share_column(metric)
    if share is None or share not in results or "num_gt" not in results:
        return None
    subset = results[results["variant"] == variant]
    if subset.empty:
        return None
    return float((subset[share] * subset["num_gt"]).mean())


def assess_values(
    comparison: Comparison, a: pd.Series, b: pd.Series, *, boxes: float | None = None
) -> Assessment:
    """Judge ``comparison`` on per-seed values ``a`` and ``b`` (Series indexed by seed, paired on the
    seeds both have)."""
    common = a.index.intersection(b.index).sort_values()
    if common.empty:
        raise ValueError(f"claim {comparison.claim.text!r}: a and b share no seed")
    av, bv = a.loc[common].to_numpy(float), b.loc[common].to_numpy(float)
    verdict = judge(comparison.claim, av, bv)
    diffs = {int(s): float(x - y) for s, x, y in zip(common, av, bv, strict=True) if np.isfinite(x - y)}
    return Assessment(
        comparison, verdict.verdict, verdict.mean_difference, verdict.ci_low, verdict.ci_high, diffs, boxes
    )


def assess(results: pd.DataFrame, comparison: Comparison) -> Assessment:
    """Judge ``comparison`` on the results table; ``NOT_RUN`` when a variant or the metric is absent."""
    claim = comparison.claim
    present = set(results["variant"])
    missing = tuple(v for v in (claim.a, claim.b) if v not in present)
    if missing or comparison.metric not in results:
        return Assessment(comparison, NOT_RUN, missing=missing or (comparison.metric,))
    a, b = (
        results[results["variant"] == v].set_index("seed")[comparison.metric].astype(float).sort_index()
        for v in (claim.a, claim.b)
    )
    boxes = [box_count(results, v, comparison.metric) for v in (claim.a, claim.b)]
    known = [x for x in boxes if x is not None]
    return assess_values(comparison, a, b, boxes=min(known) if known else None)


def _number(value: float, digits: int, signed: bool = True) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _interval(a: Assessment) -> str:
    d = a.comparison.digits
    if not np.isfinite(a.low):
        return "n/a (one seed)" if len(a.per_seed) == 1 else "n/a"
    return f"[{_number(a.low, d)}, {_number(a.high, d)}]"


def rule_of(claim: Claim) -> str:
    """The claimed direction in symbols, with its margin or tolerance."""
    if claim.kind == "greater":
        return "a > b" + (f" + {claim.margin:g}" if claim.margin else "")
    return f"a >= b - {claim.tolerance:g}"


def claims_table(assessments: Sequence[Assessment]) -> Table:
    rows = []
    for a in assessments:
        c, d = a.comparison, a.comparison.digits
        if a.verdict == NOT_RUN:
            note = f"not run: {', '.join(a.missing)} absent from the results table"
        elif a.contradicted:
            note = f"contradicted: a < b on every seed ({len(a.per_seed)})"
        else:
            note = ""
        if a.few_boxes:
            note = "; ".join(x for x in (note, f"rests on {a.boxes:.0f} boxes (< {MIN_BOXES})") if x)
        rows.append(
            {
                "claim": c.claim.text,
                "verdict": a.verdict,
                "a": c.claim.a,
                "b": c.claim.b,
                "metric": METRIC_LABELS.get(c.metric, c.metric),
                "direction": rule_of(c.claim),
                "paper": c.claim.paper,
                "mean a - b": _number(a.mean, d) if a.verdict != NOT_RUN else "",
                "95% CI": _interval(a) if a.verdict != NOT_RUN else "",
                "per seed a - b": ", ".join(f"{v:+.{d}f}" for _, v in sorted(a.per_seed.items())),
                "note": note,
                "from": c.source,
            }
        )
    return Table(pd.DataFrame(rows))


def _brief(a: Assessment) -> str:
    """'a - b +2.0 [-0.5, +4.5]', with the metric when it is not devkit mAP@0.5."""
    c, d = a.comparison, a.comparison.digits
    text = f"{c.claim.a} - {c.claim.b} {_number(a.mean, d)} {_interval(a)}"
    if c.metric != "devkit_map":
        text += f" ({METRIC_LABELS.get(c.metric, c.metric)})"
    return text


def what_we_learned(assessments: Sequence[Assessment]) -> list[str]:
    """The opening paragraph, all from the data: per source (the paper's claims, the harness's own
    findings) the verdict counts, then the paired differences of the claims that hold, that do not
    hold, and that are inconclusive although every seed goes against them. One paragraph per source."""
    judged = [a for a in assessments if a.verdict != NOT_RUN]
    parts = []
    for source, label in (
        ("paper", "claims of the paper"),
        ("results", "harness findings (not in the paper)"),
    ):
        group = [a for a in judged if a.comparison.source == source]
        if not group:
            continue
        counts = {v: sum(a.verdict == v for a in group) for v in (HOLDS, FAILS, INCONCLUSIVE)}

        def verb(count: int, one: str, many: str) -> str:
            return f"{count} {one if count == 1 else many}"

        text = (
            f"Of the {len(group)} {label} tested here, {verb(counts[HOLDS], 'holds', 'hold')}, "
            f"{verb(counts[FAILS], 'does not hold', 'do not hold')} and "
            f"{verb(counts[INCONCLUSIVE], 'is inconclusive', 'are inconclusive')}."
        )
        for verdict, lead in ((HOLDS, "Hold"), (FAILS, "Do not hold")):
            items = [_brief(a) for a in group if a.verdict == verdict]
            if items:
                text += f" {lead}: " + "; ".join(items) + "."
        against = [_brief(a) for a in group if a.verdict == INCONCLUSIVE and a.contradicted]
        if against:
            text += " Inconclusive, though a < b on every seed: " + "; ".join(against) + "."
        parts.append(text)
    not_run = [a for a in assessments if a.verdict == NOT_RUN]
    if not_run:
        names = dict.fromkeys(m for a in not_run for m in a.missing)
        parts.append(f"Not run (absent from this results table): {', '.join(names)}.")
    if not judged:
        parts.insert(0, "No claim could be judged from this results table.")
    return ["What we learned (differences a - b, mean [95% interval] over seeds). " + parts[0], *parts[1:]]


def verdict_lists(assessments: Sequence[Assessment]) -> list:
    blocks = []
    for verdict, label in (
        (HOLDS, "Hold"),
        (FAILS, "Do not hold"),
        (INCONCLUSIVE, "Inconclusive"),
        (NOT_RUN, "Not run"),
    ):
        items = [a for a in assessments if a.verdict == verdict]
        if not items and verdict == NOT_RUN:
            continue
        blocks.append(Paragraph(f"{label} ({len(items)}):"))
        texts = []
        for a in items:
            text = f"{a.comparison.claim.text} [{a.comparison.source}]"
            if a.contradicted and verdict != FAILS:
                text += " (a < b on every seed)"
            texts.append(text)
        blocks.append(Bullets(texts or ["none"]))
    return blocks


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _mean_sd(values: pd.Series, digits: int = 1) -> str:
    values = values.dropna().astype(float)
    if values.empty:
        return ""
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def summary_table(
    results: pd.DataFrame,
    variants: Sequence[str],
    *,
    columns: Sequence[str],
    paper: dict[str, float] | None = None,
    protocol: str = "devkit",
    min_boxes: int = MIN_BOXES,
    labels: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Mean ± sd over seeds with n, one row per variant (in order; absent ones read "not run").

    With ``paper``, the paper's number (protocol ``protocol``) sits beside the harness's figure of the
    same protocol. Bucket columns carry their box count in the header when all rows share it (else
    in the cell); a cell resting on fewer than ``min_boxes`` boxes reads ``n<min_boxes``."""
    from reports.paper_numbers import PROTOCOL_COLUMN

    labels = {**METRIC_LABELS, **(labels or {})}
    present = [c for c in columns if c in results]
    if paper is not None:
        lead = PROTOCOL_COLUMN[protocol]
        present = [lead] + [c for c in present if c != lead] if lead in results else present
    counts = {c: {v: box_count(results, v, c) for v in variants} for c in present}
    headers = {}
    for c in present:
        known = {round(x) for x in counts[c].values() if x is not None}
        label = labels.get(c, c)
        headers[c] = f"{label} [{known.pop()} boxes]" if len(known) == 1 else label
    rows = []
    for variant in variants:
        subset = results[results["variant"] == variant]
        row: dict[str, Any] = {"variant": variant, "n": str(len(subset)) if len(subset) else ""}
        if paper is not None:
            value = paper.get(variant)
            row[f"paper ({protocol} mAP@0.5)"] = "" if value is None else f"{value:.1f}"
        for c in present:
            if subset.empty:
                row[headers[c]] = NOT_RUN if c == present[0] else ""
                continue
            boxes = counts[c][variant]
            if boxes is not None and boxes < min_boxes:
                cell = f"n<{min_boxes}"
                if not headers[c].endswith("boxes]"):
                    cell += f" ({boxes:.0f})"
            else:
                cell = _mean_sd(subset[c])
                if boxes is not None and not headers[c].endswith("boxes]"):
                    cell += f" ({boxes:.0f} boxes)"
            row[headers[c]] = cell
        rows.append(row)
    return pd.DataFrame(rows)


def paired_gains(
    results: pd.DataFrame, variants: Sequence[str], *, baseline: str, metric: str = "devkit_map"
) -> pd.DataFrame:
    """Per-seed ``variant - baseline`` for each variant (columns variant, seed, gain); the baseline
    itself contributes zeros, so a plot shows where it sits."""
    base = results[results["variant"] == baseline].set_index("seed")[metric].astype(float)
    if base.empty:
        raise KeyError(f"baseline variant {baseline!r} is not in the results table")
    rows = []
    for variant in variants:
        values = results[results["variant"] == variant].set_index("seed")[metric].astype(float)
        for seed in values.index.intersection(base.index):
            rows.append({"variant": variant, "seed": int(seed), "gain": float(values[seed] - base[seed])})
    return pd.DataFrame(rows, columns=["variant", "seed", "gain"])


def gain_table(
    gains: pd.DataFrame, variants: Sequence[str], *, baseline: str, digits: int = 1
) -> pd.DataFrame:
    """Mean paired gain over ``baseline`` with its 95% t-interval and the per-seed gains."""
    from reports.verdicts import paired_interval

    rows = []
    for variant in variants:
        g = gains[gains["variant"] == variant].sort_values("seed")
        if g.empty:
            rows.append({"variant": variant, f"gain over {baseline}": NOT_RUN, "95% CI": "", "per seed": ""})
            continue
        mean, low, high = paired_interval(g["gain"].to_numpy(), np.zeros(len(g)))
        ci = f"[{low:+.{digits}f}, {high:+.{digits}f}]" if np.isfinite(low) else "n/a"
        rows.append(
            {
                "variant": variant,
                f"gain over {baseline}": f"{mean:+.{digits}f}",
                "95% CI": ci,
                "per seed": ", ".join(f"{v:+.{digits}f}" for v in g["gain"]),
            }
        )
    return pd.DataFrame(rows)


# --- cost ---------------------------------------------------------------------------------------

_NOT_PARTS = {"total", "per_frame"}
_STAT_SUFFIXES = ("_mean", "_iqr", "_q25", "_q75")
PART_ORDER = ("backbone", "alignment", "fusion", "aggregation", "memory", "head", "postprocess")
ONE_FRAME = "1 (harness.measure times one frame at a time)"


def cost_parts(results: pd.DataFrame) -> list[str]:
    """Parts with a time column (``seconds_<part>``, as ``harness.measure.summary_row`` names them), in
    the order backbone, alignment, fusion, aggregation, memory, head, postprocess, then the others."""
    parts = []
    for column in results.columns:
        match = re.fullmatch(r"seconds_([a-z_]+)", column)
        if match is None or match.group(1) in _NOT_PARTS:
            continue
        if match.group(1).endswith(_STAT_SUFFIXES):
            continue
        parts.append(match.group(1))
    known = {p: i for i, p in enumerate(PART_ORDER)}
    return sorted(parts, key=lambda p: (known.get(p, len(known)), p))


def _time_columns(results: pd.DataFrame, part: str) -> tuple[str | None, str | None, str | None]:
    """(median, iqr, None) column names when ``harness.measure`` wrote its median and IQR (the median
    is ``seconds_<part>``, its spread ``seconds_<part>_iqr``); else (None, None, None)."""
    if f"seconds_{part}_iqr" in results:
        return f"seconds_{part}", f"seconds_{part}_iqr", None
    return None, None, None


def _ms(results: pd.DataFrame, part: str) -> tuple[str, str]:
    """One part's per-frame time cell and what it is (median [IQR] when measured, else mean ± sd)."""
    median, low, high = _time_columns(results, part)
    if median is not None:
        m = 1000 * results[median].mean()
        if low is not None and high is not None:
            return (
                f"{m:.1f} [{1000 * results[low].mean():.1f}, {1000 * results[high].mean():.1f}]",
                "median [IQR]",
            )
        if low is not None:
            return f"{m:.1f} (IQR {1000 * results[low].mean():.1f})", "median (IQR)"
        return f"{m:.1f}", "median"
    return _mean_sd(1000 * results[f"seconds_{part}"]), "mean ± sd over seeds"


def _first(results: pd.DataFrame, names: Sequence[str]) -> Any:
    for name in names:
        if name in results and results[name].notna().any():
            return results[name].dropna().iloc[0]
    return None


def cost_table(
    results: pd.DataFrame, variants: Sequence[str], *, hardware: str = "", notes: Sequence[str] = ()
) -> list:
    """Per-frame cost split by part (ms, MFLOPs, k parameters), FPS and training seconds per row.

    Rows of the same architecture (equal parameter and FLOP totals) whose FPS differ by less than the
    larger per-seed sd get one pooled FPS (marked "same arch."), so no difference inside the
    measurement's spread is reported. Returns blocks (the table and a sentence on pooled rows)."""
    timed = results[results["variant"].isin(variants)]
    timed = timed[timed["fps"].notna()] if "fps" in timed else timed.iloc[0:0]
    if timed.empty:
        return [Paragraph("No cost was measured for these rows.")]
    parts = cost_parts(timed)
    rows, what = [], set()
    keys = {}
    for variant in variants:
        subset = timed[timed["variant"] == variant]
        if subset.empty:
            continue
        row: dict[str, Any] = {"variant": variant, "n": str(len(subset))}
        for part in parts:
            cell, kind = _ms(subset, part)
            what.add(kind)
            row[f"{part} ms"] = cell
        if "seconds_per_frame" in subset:
            row["total ms"] = _ms(subset, "per_frame")[0]
        row["FPS"] = _mean_sd(subset["fps"])
        for part in parts + ["total"]:
            if f"flops_{part}" in subset:
                row[f"{part} MFLOPs"] = f"{subset[f'flops_{part}'].mean() / 1e6:.1f}"
        for part in parts + ["total"]:
            if f"params_{part}" in subset:
                row[f"{part} k params"] = f"{subset[f'params_{part}'].mean() / 1e3:.1f}"
        if "train_seconds" in subset:
            row["train s"] = _mean_sd(subset["train_seconds"], 0)
        rows.append(row)
        keys[variant] = tuple(
            subset.get(c, pd.Series([np.nan])).mean() for c in ("params_total", "flops_total")
        )
    frame = pd.DataFrame(rows)
    sentences = []
    groups: dict[tuple, list[str]] = {}
    for variant, key in keys.items():
        if all(np.isfinite(key)):
            groups.setdefault(key, []).append(variant)
    for members in groups.values():
        if len(members) < 2:
            continue
        fps = {v: timed[timed["variant"] == v]["fps"] for v in members}
        spread = max(s.std(ddof=1) if len(s) > 1 else np.inf for s in fps.values())
        means = [s.mean() for s in fps.values()]
        gap = max(means) - min(means)
        if gap <= spread:
            pooled = _mean_sd(pd.concat(fps.values()))
            for v in members:
                frame.loc[frame["variant"] == v, "FPS"] = f"{pooled} (same arch.)"
            sentences.append(
                f"{', '.join(members)} have the same architecture (equal parameters and FLOPs); their mean "
                f"FPS differ by {gap:.1f}, within the per-seed sd ({spread:.1f}), so one pooled FPS is given."
            )
        else:
            sentences.append(
                f"{', '.join(members)} have the same architecture; their FPS differ by {gap:.1f}, more than "
                f"the per-seed sd ({spread:.1f})."
            )
    threads = _first(timed, ("torch_threads", "threads", "num_threads"))
    batch = _first(timed, ("batch_size", "measure_batch_size"))
    caption = (
        "Per-frame cost at inference: time in ms per part ("
        + " / ".join(sorted(what))
        + "), FPS = 1 / total (mean ± sd over seeds), FLOPs in millions (2 per multiply-add, "
        "torch FlopCounterMode), parameters in thousands; training seconds per row (phase 2). "
        + f"Hardware: {hardware or 'not recorded in the results table'}; "
        + f"threads: {int(threads) if threads is not None else 'not recorded in the results table'}; "
        + f"batch size: {int(batch) if batch is not None else ONE_FRAME}."
    )
    size = [c for c in frame.columns if c.endswith(("MFLOPs", "k params"))]
    blocks = [
        Table(frame.drop(columns=size), caption=caption),
        Table(
            frame[["variant", *size]],
            caption="FLOPs (millions) and parameters (thousands) per frame, by part.",
        ),
    ]
    if sentences or notes:
        blocks.append(Paragraph(" ".join([*sentences, *notes])))
    return blocks


# ---------------------------------------------------------------------------------------------
# Deviations
# ---------------------------------------------------------------------------------------------


def _support(spec) -> str:
    if spec.strategy == "none":
        return "none"
    text = f"{spec.strategy}, radius {spec.radius}, stride {spec.stride}, {spec.boundary} boundary"
    if spec.strategy == "sliding":
        t = 1 + 2 * (spec.radius // max(spec.stride, 1))
        text = f"T = {t} (±{spec.radius} at stride {spec.stride}), {spec.boundary} boundary"
    elif spec.num:
        text = f"{spec.num} {text}"
    return text


def _kwargs_text(kwargs: dict) -> str:
    shown = {k: v for k, v in kwargs.items() if k != "flownet_weights"}  # a path, filled in at build
    return f" ({', '.join(f'{k}={v}' for k, v in shown.items())})" if shown else ""


def _aggregation(config) -> str:
    """A row's method as read from its config: ``alignment (kwargs) + fusion`` for a window
    aggregator, ``aggregator:<name> (kwargs)`` for any other."""
    agg = config.model.aggregation
    if agg.aggregator != "window":
        return f"aggregator:{agg.aggregator}{_kwargs_text(agg.aggregator_kwargs)}"
    return f"{agg.alignment}{_kwargs_text(agg.alignment_kwargs)} + {agg.fusion}"


def deviation_rows(study, results: pd.DataFrame, *, paper_setup: dict[str, Any] | None = None) -> list[dict]:
    """Rows (item, paper, here) read from ``study`` (an ``ablations.base.Study``: ``base``, ``rows``,
    ``variants``, ``row_config``) and the results table."""

    setup = paper_setup or {}
    base = study.base
    head, backbone = base.model.head, base.model.backbone
    p1, p2 = base.phase1, base.phase2
    if head.kind == "sparse":
        sparse = head.sparse
        head_text = (
            f"sparse Sparse R-CNN-style head: {sparse.num_proposals} learnable proposals, "
            f"{sparse.num_stages} stages, width {sparse.dim}, {sparse.roi_size}x{sparse.roi_size} RoIs, "
            f"set loss (focal {sparse.class_weight:g} / L1 {sparse.l1_weight:g} / "
            f"GIoU {sparse.giou_weight:g}), top {head.max_detections} without NMS"
        )
    else:
        head_text = (
            f"dense one-stage FCOS-style head ({head.num_convs} convs x {head.channels} ch), "
            f"NMS IoU {head.nms_iou}, at most {head.max_detections} boxes per frame"
        )
    rows = [
        {"item": "detector and head", "paper": str(setup.get("detector", "")), "here": head_text},
        {
            "item": "backbone and widths",
            "paper": str(setup.get("backbone", "")),
            "here": f"ResNet, stem width {backbone.width}, blocks per stage {list(backbone.depth)}, "
            f"{backbone.out_channels}-channel features, frames at {base.data.image_size} px",
        },
        {
            "item": "training budget",
            "paper": "",
            "here": f"phase 1 (still images): {p1.steps} steps x batch {p1.batch_size}, one detector "
            f"(seed {base.phase1_seed}) shared by every row and seed; phase 2 (video): {p2.steps} steps x "
            f"batch {p2.batch_size}, lr {p2.lr:g}. The seeds vary phase 2 only, so the ± and intervals "
            f"leave out phase-1 variance",
        },
    ]
    for row in study.rows:
        config = study.row_config(row, 0)
        rows.append(
            {
                "item": f"row {row.name}",
                "paper": "",
                "here": f"{_aggregation(config)}; train supports: {_support(config.data.train_support)}; "
                f"test supports: {_support(config.test.support)}",
            }
        )
    subsets: dict[tuple, list[str]] = {}
    for variant in study.variants:
        row = next(r for r in study.rows if r.name == variant.row)
        config = variant.apply(study.row_config(row, 0))
        subset = results[results["variant"] == variant.name]
        frames = int(subset["num_frames"].iloc[0]) if "num_frames" in subset and len(subset) else None
        boxes = int(subset["num_gt"].iloc[0]) if "num_gt" in subset and len(subset) else None
        videos = config.test.max_videos
        subsets.setdefault((videos, frames, boxes), []).append(variant.group)
    for (videos, frames, boxes), groups in subsets.items():
        names = ", ".join(dict.fromkeys(groups))
        size = "not run" if frames is None else f"{frames} frames, {boxes} GT boxes"
        rows.append(
            {
                "item": f"validation subset ({names})",
                "paper": "ImageNet VID val (555 videos)" if paper_setup is not None else "",
                "here": f"{'all' if videos is None else f'first {videos}'} {base.test.split} videos: {size}",
            }
        )
    return rows


@dataclass
class ReportSpec:
    """What a paper module declares for its report."""

    title: str
    question: str
    comparisons: Sequence[Comparison]
    study: Any = None  # ablations.base.Study: deviations read from its configs
    paper_setup: dict[str, Any] | None = None  # paper_numbers.yaml's ``setup`` of the paper
    deviations: Sequence[tuple[str, str, str]] = ()  # (item, paper, here) the configs cannot tell
    not_reproduced: Sequence[tuple[str, str]] = ()  # (row or figure, why)
    deviation_note: str = ""  # prose after the deviations table (e.g. the module docstring's paragraph)
    quick: bool = False


def _is_partial(folder: Path) -> bool:
    status = Path(folder) / "ablation.json"
    return status.is_file() and json.loads(status.read_text()).get("status", "complete") != "complete"


def build_report(
    spec: ReportSpec,
    results: pd.DataFrame,
    *,
    folder: Path,
    body: Sequence,
    extra_assessments: Sequence[Assessment] = (),
) -> tuple[Document, list[Assessment]]:
    """The standard report: opening, deviations, the module's ``body`` blocks, claims and forest plot."""
    assessments = [assess(results, c) for c in spec.comparisons] + list(extra_assessments)
    seeds = sorted(int(s) for s in results["seed"].unique())
    doc = Document(spec.title)
    doc.add(Paragraph(spec.question))
    if spec.quick:
        doc.add(Paragraph("QUICK smoke run (small data, few steps): the numbers are not meaningful."))
    if _is_partial(folder):
        doc.add(
            Paragraph(
                "PARTIAL REPORT: the study was killed or is still running (`ablation.json` status "
                "`running`); only the evaluations that finished are shown, so rows and claims may be missing."
            )
        )
    for text in what_we_learned(assessments):
        doc.add(Paragraph(text))
    for block in verdict_lists(assessments):
        doc.add(block)
    doc.add(Paragraph(f"Seeds: {seeds} (n = {len(seeds)}). {DEFINITIONS_NOTE}"))

    doc.add(Heading("Deviations from the paper"))
    rows = deviation_rows(spec.study, results, paper_setup=spec.paper_setup) if spec.study is not None else []
    rows += [{"item": i, "paper": p, "here": h} for i, p, h in spec.deviations]
    if rows:
        frame = pd.DataFrame(rows)
        if not frame["paper"].astype(bool).any():  # no paper (e.g. the calibration): no empty column
            frame = frame.drop(columns="paper")
        doc.add(Table(frame))
    if spec.deviation_note:
        doc.add(Paragraph(spec.deviation_note))
    if spec.not_reproduced:
        doc.add(Paragraph("Not reproduced:"))
        doc.add(Bullets([f"{item}: {why}" for item, why in spec.not_reproduced]))

    for block in body:
        doc.add(block)

    doc.add(Heading("Claims"))
    doc.add(
        Paragraph(
            RULE_TEXT
            + " The claimed direction is always a >= b; 'contradicted' marks a claim whose a < b on "
            f"every seed, whatever its verdict. Cells resting on fewer than {MIN_BOXES} ground-truth boxes "
            f"are flagged. {len([a for a in assessments if a.verdict != NOT_RUN])} intervals at 95% each: "
            "about one in twenty true nulls would be called by chance."
        )
    )
    doc.add(claims_table(assessments))
    judged = [a for a in assessments if a.verdict != NOT_RUN]
    if judged:
        path = figures.forest(judged, path=folder / "forest_paired_differences.png")
        doc.add(
            Figure(
                path,
                "Paired differences a - b per claim: dot = mean over seeds, bar = 95% t-interval, "
                "vertical ticks = individual seeds; dashed line = 0; grey triangle = the claim's margin or "
                "-tolerance (where not 0); colour = verdict",
            )
        )
    return doc, assessments
