"""Figures shared by the ablation reports (matplotlib/seaborn, written as PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


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
    sns.lineplot(
        data=frame, x=x, y=y, hue=hue, errorbar="sd", marker="o", ax=ax, label=None if hue else "harness"
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def weights_by_offset(frame: pd.DataFrame, *, path: Path, title: str) -> Path:
    """Bar plot of the mean aggregation weight per time offset k (columns k, weight, seed)."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    sns.barplot(data=frame, x="k", y="weight", errorbar="sd", color="#4c72b0", ax=ax)
    ax.set_xlabel("support offset k (frames)")
    ax.set_ylabel("mean weight at object centres")
    ax.set_title(title)
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
