"""Summarise the op benchmarks: speed-up of vodbench over each baseline, against the project's targets.

Reads the JSON that ``pytest tests/benchmarks --benchmark-enable --benchmark-json=FILE`` writes. Each
benchmark carries ``group = "<op>:<shape>:<fwd|fwdbwd>"`` and ``extra_info`` with ``impl``
("vodbench" | "baseline"), ``op``, ``shape``, ``pass_`` and optionally ``peak_bytes``
(see tests/benchmarks/conftest.py). For every group this prints and saves

- ``speedup`` = baseline median time / vodbench median time,
- ``memory_ratio`` = vodbench peak bytes / baseline peak bytes (when both were measured),
- the target that applies (deformable conv fwd+bwd >= 5x; MatchTrans fwd+bwd >= 2x with peak memory
  <= 1/4 of the unfold's; LSTS sampling >= 3x) and whether it is met.

Usage::

    python -m reports.bench bench.json [--out reports/bench]

writes ``<out>/bench_ratios.csv`` and ``<out>/bench_ratios.png`` (bar plot of speed-ups, targets drawn).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

__all__ = ["TARGETS", "Target", "load_benchmarks", "main", "plot_ratios", "summarise"]


@dataclass(frozen=True)
class Target:
    """A speed (and optionally memory) goal for one op and pass (``pass_=None``: every pass)."""

    op_prefix: str
    pass_: str | None
    min_speedup: float
    max_memory_ratio: float | None = None

    def applies_to(self, op: str, pass_: str) -> bool:
        return op.startswith(self.op_prefix) and (self.pass_ is None or self.pass_ == pass_)

    def describe(self) -> str:
        memory = f", peak mem <= {self.max_memory_ratio:g}x" if self.max_memory_ratio is not None else ""
        return f">= {self.min_speedup:g}x{memory}"


TARGETS = (
    Target(op_prefix="deform_conv", pass_="fwdbwd", min_speedup=5.0),
    Target(op_prefix="matchtrans", pass_="fwdbwd", min_speedup=2.0, max_memory_ratio=0.25),
    Target(op_prefix="lsts", pass_=None, min_speedup=3.0),
)


def load_benchmarks(path: str | Path) -> pd.DataFrame:
    """One row per benchmark: group, op, shape, pass_, impl, median_s, peak_bytes (NaN if not measured)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"benchmark JSON not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(document, dict) or "benchmarks" not in document:
        raise ValueError(f"{path} has no 'benchmarks' list; is it pytest-benchmark --benchmark-json output?")
    rows = []
    for entry in document["benchmarks"]:
        info = entry.get("extra_info", {})
        missing = [key for key in ("impl", "op", "shape", "pass_") if key not in info]
        if missing:
            raise ValueError(
                f"{path}: benchmark {entry.get('fullname', entry.get('name'))!r} lacks "
                f"extra_info {missing} (use the record_benchmark fixture)"
            )
        rows.append(
            dict(
                group=entry.get("group") or f"{info['op']}:{info['shape']}:{info['pass_']}",
                op=info["op"],
                shape=info["shape"],
                pass_=info["pass_"],
                impl=info["impl"],
                median_s=float(entry["stats"]["median"]),
                peak_bytes=float(info.get("peak_bytes", math.nan)),
            )
        )
    return pd.DataFrame(rows, columns=["group", "op", "shape", "pass_", "impl", "median_s", "peak_bytes"])


def summarise(benchmarks: pd.DataFrame, targets: tuple[Target, ...] = TARGETS) -> pd.DataFrame:
    """One row per group with both impls: medians, speedup, memory_ratio, target and met (bool or None)."""
    keys = ["group", "op", "shape", "pass_"]
    medians = benchmarks.pivot_table(index=keys, columns="impl", values="median_s", aggfunc="median")
    peaks = benchmarks.pivot_table(
        index=keys, columns="impl", values="peak_bytes", aggfunc="max", dropna=False
    )
    summary = pd.DataFrame(index=medians.index)
    for impl in ("vodbench", "baseline"):
        summary[f"{impl}_median_ms"] = medians[impl] * 1e3 if impl in medians else math.nan
        summary[f"{impl}_peak_mb"] = peaks[impl] / 1e6 if impl in peaks else math.nan
    summary["speedup"] = summary["baseline_median_ms"] / summary["vodbench_median_ms"]
    summary["memory_ratio"] = summary["vodbench_peak_mb"] / summary["baseline_peak_mb"]
    summary = summary.reset_index()
    target_text, met = [], []
    for row in summary.itertuples():
        target = next((t for t in targets if t.applies_to(row.op, row.pass_)), None)
        if target is None or math.isnan(row.speedup):
            target_text.append(target.describe() if target else "")
            met.append(None)
            continue
        ok = row.speedup >= target.min_speedup
        if target.max_memory_ratio is not None:
            ok = ok and not math.isnan(row.memory_ratio) and row.memory_ratio <= target.max_memory_ratio
        target_text.append(target.describe())
        met.append(bool(ok))
    summary["target"] = target_text
    summary["met"] = met
    return summary.sort_values(["op", "shape", "pass_"]).reset_index(drop=True)


def plot_ratios(summary: pd.DataFrame, path: str | Path) -> None:
    """Horizontal bars of the speed-up per group (log scale), a tick at each group's target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary.dropna(subset=["speedup"])
    figure, axis = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
    colours = ["tab:green" if met else ("tab:red" if met is False else "tab:gray") for met in rows["met"]]
    axis.barh(rows["group"], rows["speedup"], color=colours)
    for position, target in enumerate(rows["target"]):
        if target:
            minimum = float(target.split("x")[0].removeprefix(">= "))
            axis.plot([minimum, minimum], [position - 0.4, position + 0.4], color="black", linewidth=2)
    axis.axvline(1.0, color="gray", linestyle="--", linewidth=1)
    axis.set_xscale("log")
    axis.set_xlabel("speed-up over baseline (median time ratio; black tick = target)")
    axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmark_json", help="pytest-benchmark JSON (--benchmark-json output)")
    parser.add_argument("--out", default="reports/bench", help="folder for bench_ratios.csv / .png")
    args = parser.parse_args(argv)
    summary = summarise(load_benchmarks(args.benchmark_json))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / "bench_ratios.csv", index=False)
    plot_ratios(summary, out / "bench_ratios.png")
    shown = summary.assign(met=summary["met"].map({True: "met", False: "NOT MET", None: ""}))
    with pd.option_context(
        "display.width", 200, "display.max_columns", 20, "display.float_format", "{:.2f}".format
    ):
        print(shown.drop(columns=["group"]).to_string(index=False))
    print(f"\nwrote {out / 'bench_ratios.csv'} and {out / 'bench_ratios.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
