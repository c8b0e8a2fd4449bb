"""What every ablation shares: rows as deltas of a base config, seeds, cached runs, a results table.

An ablation declares

* a base :class:`~harness.config.RunConfig` and ``quick`` deltas (smaller data, fewer steps);
* :class:`Row` s: trained configurations, each a named set of dotted overrides of the base, so the
  difference between two rows is exactly the thing ablated;
* :class:`Variant` s: test-time changes of a trained row (support frames, stride, Seq-NMS) that
  reuse its checkpoint instead of training again.

:class:`Study` runs them for every seed (skipping what is finished, resuming what was interrupted:
both handled by the run folders of ``harness.pipeline``, shared by all ablations in ``<out>/runs``),
gathers one results row per
(variant, seed) into ``results.parquet`` and hands the table to the ablation's report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from harness.config import RunConfig, override


@dataclass(frozen=True)
class Row:
    """A trained configuration: ``changes`` are dotted overrides of the ablation's base config."""

    name: str
    changes: dict[str, Any] = field(default_factory=dict)
    paper_key: str | None = None  # this row's entry in the paper's table, if it has one
    description: str = ""


@dataclass(frozen=True)
class Variant:
    """A test-time evaluation of a trained row (no training): ``changes`` may touch only
    ``data.test_support``, ``data.max_val_videos`` and ``eval.*``."""

    name: str
    row: str
    changes: dict[str, Any] = field(default_factory=dict)
    group: str = "table"  # which table/figure of the report uses it
    collect: str | None = None  # name of a collector the ablation provides (fusion weights, offsets)

    TEST_TIME_PREFIXES = ("data.test_support", "data.max_val_videos", "eval.")

    def __post_init__(self) -> None:
        for key in self.changes:
            if not key.startswith(self.TEST_TIME_PREFIXES):
                raise ValueError(
                    f"variant {self.name!r} changes {key!r}, which is not test-time only; make it a Row"
                )


def result_folder(out: Path, name: str, quick: bool) -> Path:
    return out / (f"{name}-quick" if quick else name)


@dataclass
class Study:
    """Runs an ablation's rows and variants over seeds and collects the results table."""

    name: str
    base: RunConfig
    rows: list[Row]
    variants: list[Variant]
    collectors: dict[str, Callable[[], Any]] = field(default_factory=dict)
    prepare: Callable[[RunConfig, Path], RunConfig] | None = None  # e.g. pretrain a flow net once

    def row_config(self, row: Row, seed: int, base: RunConfig) -> RunConfig:
        return override(base, name=f"{self.name}-{row.name}", seed=seed, **row.changes)

    def run(self, *, seeds: list[int], out: Path, force: bool = False) -> pd.DataFrame:
        """Train every row for every seed and evaluate its variants; returns the results table.

        Run folders live in ``<out>/../runs`` so that all ablations share one phase-1 detector."""
        from harness.pipeline import evaluate_checkpoint, train_run
        from harness.runs import append_results, load_results

        out.mkdir(parents=True, exist_ok=True)
        runs_root = out.parent / "runs"  # shared by all ablations: one phase-1 detector for all of them
        parquet = out / "results.parquet"
        rows_by_name = {row.name: row for row in self.rows}
        for variant in self.variants:
            if variant.row not in rows_by_name:
                raise KeyError(f"variant {variant.name!r} refers to unknown row {variant.row!r}")
        jobs = [(seed, row) for seed in seeds for row in self.rows]
        started = time.perf_counter()
        with tqdm(total=len(jobs), desc=f"{self.name}: rows x seeds", unit="run") as bar:
            for seed, row in jobs:
                config = self.row_config(row, seed, self.base)
                if self.prepare is not None:
                    config = self.prepare(config, out)
                bar.set_postfix_str(f"{row.name} seed={seed}")
                checkpoint = train_run(config, runs_root=runs_root, force=force)
                results = []
                for variant in (v for v in self.variants if v.row == row.name):
                    vconfig = override(config, **variant.changes)
                    collected = out / "collected" / f"{variant.name}-s{seed}.json"
                    wants = variant.collect is not None and (force or not collected.exists())
                    collector = self.collectors[variant.collect]() if wants else None
                    result = evaluate_checkpoint(
                        vconfig,
                        checkpoint,
                        runs_root=runs_root,
                        variant=variant.name,
                        collect=collector,
                        force=force,
                    )
                    result.update(row=row.name, variant=variant.name, group=variant.group, seed=seed)
                    results.append(result)
                    if collector is not None and collector.count:
                        collected.parent.mkdir(exist_ok=True)
                        collected.write_text(json.dumps(collector.summary()))
                append_results(results, parquet)
                bar.update(1)
        table = load_results(parquet)
        (out / "timing.txt").write_text(
            f"{time.perf_counter() - started:.1f} s for {len(jobs)} row x seed runs\n"
        )
        return table


class Ablation:
    """A paper's ablation: builds its :class:`Study`, runs it over seeds and renders its report.

    Subclasses set ``name`` and ``default_seeds`` and implement :meth:`build_study` and :meth:`render`.
    The quick mode runs one seed unless seeds are given."""

    name: str = ""
    default_seeds: tuple[int, ...] = (0,)

    def build_study(self, quick: bool) -> Study:  # pragma: no cover - interface
        raise NotImplementedError

    def render(self, folder: Path) -> Path:  # pragma: no cover - interface
        raise NotImplementedError

    def run(self, *, quick: bool, seeds: list[int] | None, out: Path, force: bool = False) -> Path:
        seeds = list(seeds or ((0,) if quick else self.default_seeds))
        folder = result_folder(out, self.name, quick)
        study = self.build_study(quick)
        study.run(seeds=seeds, out=folder, force=force)
        (folder / "ablation.json").write_text(json.dumps({"quick": quick, "seeds": seeds}))
        report = self.render(folder)
        print(f"report: {report}")
        return report

    @staticmethod
    def is_quick(folder: Path) -> bool:
        marker = folder / "ablation.json"
        return bool(json.loads(marker.read_text())["quick"]) if marker.exists() else False
