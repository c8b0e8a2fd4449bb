"""Figures shared by the ablation reports (matplotlib/seaborn, written as PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402


def line_with_spread(
    frame: pd.DataFrame,
    *,
    x: str,
    y: str,
    path: Path,
    xlabel: str,
    ylabel: str,
    title: str,
    hue: str | None = None,
) -> Path:
    """Mean over seeds with a ±1 std band."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    label = {} if hue else {"label": "harness"}  # with hue, seaborn labels the lines itself
    sns.lineplot(data=frame, x=x, y=y, hue=hue, errorbar="sd", marker="o", ax=ax, **label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def weights_by_offset(
    frame: pd.DataFrame, *, path: Path, title: str, uniform: float | None = None, floor: float | None = None
) -> Path:
    """Bar plot of the mean aggregation weight per time offset k (columns k, weight, seed).

    Bars = mean over seeds, error bars = ±1 sd over seeds, dots = individual seeds; the reference's
    own bar (k = 0) is coloured apart. ``uniform`` (plain averaging, 1/T) and ``floor`` (the smallest
    weight the fusion can give) are drawn as horizontal lines."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ks = sorted(frame["k"].unique())
    stats = frame.groupby("k")["weight"].agg(["mean", "std"]).reindex(ks)
    colours = ["#dd8452" if k == 0 else "#4c72b0" for k in ks]
    ax.bar(
        ks,
        stats["mean"],
        yerr=stats["std"].fillna(0),
        color=colours,
        capsize=2,
        width=0.75,
        error_kw={"lw": 0.8},
        label="mean over seeds, ±1 sd",
    )
    for i, (_, g) in enumerate(frame.groupby("seed")):
        ax.plot(
            g["k"], g["weight"], ".", ms=3, color="black", alpha=0.6, label="one seed" if i == 0 else None
        )
    if uniform is not None:
        ax.axhline(uniform, color="#2a7d2a", ls="--", lw=1, label=f"uniform 1/T = {uniform:.3f}")
    if floor is not None:
        ax.axhline(floor, color="#b22222", ls=":", lw=1, label=f"softmax floor = {floor:.4f}")
    ax.set_xlabel("support offset k (frames from the reference)")
    ax.set_ylabel("mean fusion weight at object centres")
    ax.set_xticks(ks)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(title, fontsize=10)
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Patch(color="#dd8452", label="k = 0: the reference (cosine 1, largest by construction)"))
    ax.legend(
        handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sampling_locations(
    examples: list[dict], *, image_for, path: Path, title: str, max_examples: int = 4
) -> Path:
    """Reference frame with its box, and each support frame with the sampled points at the box centre.

    ``image_for(example, offset)`` returns the RGB uint8 image of the support frame at that offset.
    Each axis shows the whole frame and nothing beyond it: points outside the frame are counted in
    the panel's title instead. With ``example["tap_weight"]`` a point's area is proportional to its
    tap's weight share (so a tap that hardly contributes reads as one)."""
    examples = examples[:max_examples]
    if not examples:
        raise ValueError("no sampling examples were collected")
    columns = 1 + max(len(e["support_offsets"]) for e in examples)
    fig, axes = plt.subplots(
        len(examples), columns, figsize=(2.4 * columns, 2.4 * len(examples)), squeeze=False
    )
    for r, example in enumerate(examples):
        x1, y1, x2, y2 = example["box"]
        axes[r, 0].imshow(image_for(example, 0))
        axes[r, 0].add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=1.5))
        axes[r, 0].plot([(x1 + x2) / 2], [(y1 + y2) / 2], "o", color="lime", ms=4)
        axes[r, 0].set_title(f"ref {example['video'].split('/')[-1][-6:]}:{example['frame_id']}", fontsize=7)
        share = example.get("tap_weight")
        for t, (offset, points) in enumerate(
            zip(example["support_offsets"], example["points_xy"], strict=True)
        ):
            ax = axes[r, t + 1]
            image = image_for(example, offset)
            height, width = image.shape[:2]
            ax.imshow(image)
            pts = np.asarray(points)
            sizes = 9.0 if share is None else 4.0 + 120.0 * np.asarray(share)
            ax.scatter(pts[:, 0], pts[:, 1], s=sizes, color="red", edgecolors="white", linewidths=0.4)
            ax.set_xlim(-0.5, width - 0.5)
            ax.set_ylim(height - 0.5, -0.5)
            inside = (pts[:, 0] >= 0) & (pts[:, 0] < width) & (pts[:, 1] >= 0) & (pts[:, 1] < height)
            outside = int((~inside).sum())
            suffix = f", {outside}/{len(pts)} outside" if outside else ""
            ax.set_title(f"support k={offset:+d}{suffix}", fontsize=7)
        for ax in axes[r]:
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def forest(assessments, *, path: Path) -> Path:
    """Forest plot of paired differences a - b, one line per claim, one panel per unit.

    ``assessments`` are :class:`reports.ablation_report.Assessment` s (mean, low, high, per_seed)."""
    units = list(dict.fromkeys(a.comparison.unit for a in assessments))
    heights = [sum(a.comparison.unit == u for a in assessments) for u in units]
    fig, axes = plt.subplots(
        len(units),
        1,
        figsize=(8, 0.42 * sum(heights) + 1.2 * len(units)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, unit in zip(axes[:, 0], units, strict=True):
        group = [a for a in assessments if a.comparison.unit == unit]
        for y, a in enumerate(group):
            colour = {"holds": "#2a7d2a", "does not hold": "#b22222"}.get(a.verdict, "#555555")
            if np.isfinite(a.low):
                ax.plot([a.low, a.high], [y, y], color=colour, lw=2)
            ax.plot([a.mean], [y], "o", color=colour, ms=6)
            seeds = list(a.per_seed.values())
            ax.plot(seeds, [y] * len(seeds), "|", color="black", ms=9, alpha=0.7)
            claim = a.comparison.claim
            threshold = claim.margin if claim.kind == "greater" else -claim.tolerance
            if threshold:
                ax.plot([threshold], [y], marker=4, color="#888888", ms=7, ls="none")
        ax.axvline(0, color="#333333", ls="--", lw=0.8)
        ax.set_yticks(range(len(group)))
        ax.set_yticklabels([_label(a) for a in group], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"paired difference a - b ({unit})")
        ax.grid(axis="x", alpha=0.3)
    handles = [
        plt.Line2D([], [], color="#2a7d2a", marker="o", lw=2, label="holds: mean, 95% CI"),
        plt.Line2D([], [], color="#b22222", marker="o", lw=2, label="does not hold"),
        plt.Line2D([], [], color="#555555", marker="o", lw=2, label="inconclusive"),
        plt.Line2D([], [], color="black", marker="|", ls="none", ms=9, label="one seed"),
        plt.Line2D([], [], color="#888888", marker=4, ls="none", label="margin / -tolerance"),
    ]
    axes[0, 0].legend(
        handles=handles, fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, frameon=False
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _label(assessment) -> str:
    """'a - b', plus the metric when it is not devkit mAP@0.5 and the tolerance of a not-worse claim."""
    claim, metric = assessment.comparison.claim, assessment.comparison.metric
    text = _short(f"{claim.a} - {claim.b}")
    extras = [] if metric == "devkit_map" else [metric.replace("degradation_", "").replace("devkit_", "")]
    if claim.kind == "not_worse":
        extras.append(f">= -{claim.tolerance:g}")
    return text + (f" [{', '.join(extras)}]" if extras else "")


def _short(text: str, width: int = 58) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def paired_gain_plot(
    gains: pd.DataFrame, *, x: dict[str, float], path: Path, xlabel: str, ylabel: str, title: str
) -> Path:
    """Mean paired gain per variant (columns variant, seed, gain) at position ``x[variant]`` with its
    95% t-interval, and each seed's gain as a small point (one colour per seed)."""
    from reports.verdicts import paired_interval

    fig, ax = plt.subplots(figsize=(5.8, 3.8))
    xs, means, lows, highs = [], [], [], []
    for variant, position in x.items():
        g = gains[gains["variant"] == variant]["gain"].to_numpy()
        if g.size == 0:
            continue
        mean, low, high = paired_interval(g, np.zeros_like(g))
        xs.append(position)
        means.append(mean)
        lows.append(low if np.isfinite(low) else mean)
        highs.append(high if np.isfinite(high) else mean)
    means, lows, highs = map(np.asarray, (means, lows, highs))
    ax.errorbar(
        xs,
        means,
        yerr=[means - lows, highs - means],
        fmt="o-",
        color="#4c72b0",
        capsize=3,
        label="mean gain, 95% t-interval over seeds",
    )
    for i, (seed, g) in enumerate(gains.groupby("seed")):
        pos = [x[v] for v in g["variant"] if v in x]
        vals = [val for v, val in zip(g["variant"], g["gain"], strict=True) if v in x]
        ax.plot(pos, vals, ".", ms=6, alpha=0.7, color=f"C{i + 1}", label=f"seed {seed}")
    ax.axhline(0, color="#333333", lw=0.8, ls="--")
    ax.set_xticks(sorted(set(xs)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_and_cost(
    frame: pd.DataFrame,
    *,
    x: str,
    accuracy: str,
    cost_ms: pd.Series,
    path: Path,
    xlabel: str,
    title: str,
    accuracy_label: str = "devkit mAP@0.5",
) -> Path:
    """Two panels over ``x``: ``accuracy`` (left) and the per-frame cost in ms (right, ``cost_ms``
    aligned with ``frame``'s index); mean over seeds with a ±1 sd band, dots = seeds."""
    data = frame.assign(_cost=cost_ms.to_numpy())
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4))
    for ax, column, label in ((axes[0], accuracy, accuracy_label), (axes[1], "_cost", "ms per frame")):
        sns.lineplot(data=data, x=x, y=column, errorbar="sd", marker="o", ax=ax)
        sns.stripplot(data=data, x=x, y=column, native_scale=True, color="#333333", size=3, alpha=0.6, ax=ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
