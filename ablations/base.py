"""What every ablation shares: rows as deltas of a base config, seeds, cached runs, a results table.

An ablation declares

* a base :class:`~harness.config.RunConfig` and ``quick`` deltas (smaller data, fewer steps);
* :class:`Row` s: trained configurations, each a named set of dotted overrides of the base that
  carries the row's whole difference (rows shared by several papers come from ``ablations.common``);
* :class:`Variant` s: test-time changes of a trained row (``RunConfig.test``: support frames,
  stride, Seq-NMS, a validation subset) that reuse its checkpoint instead of training again.

:class:`Study` runs them for every seed (skipping what is finished, resuming what was interrupted:
both handled by the run folders of ``harness.pipeline``, shared by all ablations in ``<out>/../runs``
and keyed by what they train, so a row two studies share is trained once), gathers one results row
per (variant, seed) of this invocation into ``results.parquet`` and hands the table to the
ablation's report. An :class:`Ablation` is a paper's study plus its report.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from harness.config import RunConfig, TestConfig, override
from harness.files import write_json
from harness.runs import append_results, canonical_columns

_TEST_FIELDS = tuple(f.name for f in dataclasses.fields(TestConfig))


@dataclass(frozen=True)
class Row:
    """A trained configuration: ``changes`` are dotted overrides of the ablation's base config
    (``"model.aggregation"``, ``"data.train_support"``, ``"test.support"``, ...)."""

    name: str
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Variant:
    """A test-time evaluation of a trained row (no training): ``changes`` are fields of
    :class:`~harness.config.TestConfig` (``support``, ``max_videos``, ``seq_nms``, ``measure``, ...),
    applied to the row's ``test`` section; anything else is not a variant but a row."""

    name: str
    row: str
    changes: dict[str, Any] = field(default_factory=dict)
    group: str = "table"  # which table/figure of the report uses it
    collect: str | None = None  # name of a collector the ablation provides (fusion weights, offsets)

    def __post_init__(self) -> None:
        for key in self.changes:
            if key not in _TEST_FIELDS:
                raise ValueError(
                    f"variant {self.name!r} changes {key!r}, which is not a test-time field "
                    f"(TestConfig: {', '.join(_TEST_FIELDS)}); make it a Row"
                )

    def apply(self, config: RunConfig) -> RunConfig:
        """``config`` with this variant's test-time changes."""
        return dataclasses.replace(config, test=override(config.test, **self.changes))


def doc_paragraph(text: str, which: int | str, constants: dict[str, Any] | None = None) -> str:
    """One paragraph of a module docstring as report prose: ``which`` is its index or the words it
    starts with; line breaks become spaces and each ````NAME```` found in ``constants`` becomes its
    value (``None`` reads "all"), so the report states the numbers the code used."""
    paragraphs = [p.strip() for p in text.split("\n\n")]
    if isinstance(which, int):
        paragraph = paragraphs[which]
    else:
        matches = [p for p in paragraphs if p.startswith(which)]
        if not matches:
            raise KeyError(f"no docstring paragraph starts with {which!r}")
        paragraph = matches[0]
    paragraph = " ".join(paragraph.split())

    def value(match: re.Match) -> str:
        name = match.group(1)
        if constants is None or name not in constants:
            return match.group(0)
        return "all" if constants[name] is None else str(constants[name])

    return re.sub(r"``([A-Z][A-Z0-9_]*)``", value, paragraph)


def result_folder(out: Path, name: str, quick: bool, full: bool = False) -> Path:
    """``<out>/<name>[-full][-quick]``: one folder per mode, so a full run never mixes with the default."""
    return out / (name + ("-full" if full else "") + ("-quick" if quick else ""))


@dataclass
class Study:
    """Runs an ablation's rows and variants over seeds and collects the results table."""

    name: str
    base: RunConfig
    rows: list[Row]
    variants: list[Variant]
    collectors: dict[str, Callable[[], Any]] = field(default_factory=dict)

    def row_config(self, row: Row, seed: int, base: RunConfig | None = None) -> RunConfig:
        """The run of ``row`` at ``seed``; its name (a label, not part of any run identity) is the row's."""
        return override(self.base if base is None else base, name=row.name, seed=seed, **row.changes)

    def check(self) -> None:
        """Build every row's phase-2 model once (no training): an unknown method name, a bad
        keyword or a method without supports fails here, naming the row, before anything trains."""
        from harness.build import build_model

        for row in self.rows:
            try:
                build_model(self.row_config(row, 0), phase=2)
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{self.name}: row {row.name!r} cannot be built: {error}") from error

    def collect(self, *, seeds: list[int], out: Path) -> tuple[pd.DataFrame, list[str]]:
        """The results of every (variant, seed) already evaluated under ``<out>/../runs``, read from
        the run folders, and the names of the missing ones (``"<variant> seed <s>"``)."""
        from harness.pipeline import evaluation_folder
        from harness.runs import is_complete, read_json, stage_identity

        runs_root = out.parent / "runs"
        rows, missing = [], []
        for seed in seeds:
            for row in self.rows:
                config = self.row_config(row, seed)
                for variant in (v for v in self.variants if v.row == row.name):
                    variant_config = variant.apply(config)
                    folder = evaluation_folder(variant_config, runs_root=runs_root)
                    if is_complete(folder, stage_identity(variant_config, "test")):
                        rows.append(_labelled(read_json(folder / "result.json"), variant, seed))
                    else:
                        missing.append(f"{variant.name} seed {seed}")
        return (canonical_columns(pd.DataFrame(rows)) if rows else pd.DataFrame()), missing

    def run(
        self, *, seeds: list[int], out: Path, force: bool = False, jobs: int = 1, remeasure: bool = False
    ) -> pd.DataFrame:
        """Train every row for every seed, then evaluate its variants; returns the results table.

        ``remeasure`` times every timed variant again, also those already evaluated (for times
        taken on a busy machine: ``harness.pipeline.remeasure_checkpoint``; metrics are kept).

        Run folders live in ``<out>/../runs`` so that all ablations share one phase-1 detector.
        ``jobs > 1`` trains the phase-2 runs, and runs the inference and evaluation of their
        variants, in that many processes, each with ``threads // jobs`` torch threads (small
        convolutions use two cores better as two processes than as two threads). The shared phase
        1, the collectors (Fig. 3 right, Fig. 4) and every timed measurement run in this process
        after the workers are done, so a measured FPS never shares the machine with another job."""
        from harness.pipeline import (
            evaluate_checkpoint,
            remeasure_checkpoint,
            resolved_aggregation,
            train_shared_phase1,
        )
        from harness.runs import load_results

        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        out.mkdir(parents=True, exist_ok=True)
        runs_root = out.parent / "runs"  # shared by all ablations: one phase-1 detector for all of them
        parquet = out / "results.parquet"
        rows_by_name = {row.name: row for row in self.rows}
        for variant in self.variants:
            if variant.row not in rows_by_name:
                raise KeyError(f"variant {variant.name!r} refers to unknown row {variant.row!r}")
        self.check()
        started = time.perf_counter()
        configs = {}
        for seed in seeds:
            for row in self.rows:
                config = self.row_config(row, seed)
                train_shared_phase1(config, runs_root=runs_root)  # once, before any parallel job
                resolved_aggregation(config, runs_root=runs_root)  # preparations too
                configs[seed, row.name] = config
        prepared = time.perf_counter()
        checkpoints = _train_all(configs, self.variants, runs_root=runs_root, force=force, jobs=jobs)
        trained = time.perf_counter()

        every_result: list[dict[str, Any]] = []
        remeasured: set[str] = set()  # test ids timed again by this call (variants may share one)
        with tqdm(total=len(configs), desc=f"{self.name}: evaluate rows x seeds", unit="run") as bar:
            for (seed, row_name), config in configs.items():
                bar.set_postfix_str(f"{row_name} seed={seed}")
                results = []
                for variant in (v for v in self.variants if v.row == row_name):
                    variant_config = variant.apply(config)
                    collected = out / "collected" / f"{variant.name}-s{seed}.json"
                    wants = variant.collect is not None and (force or not collected.exists())
                    collector = self.collectors[variant.collect]() if wants else None
                    result = evaluate_checkpoint(
                        variant_config,
                        checkpoints[seed, row_name],
                        runs_root=runs_root,
                        collect=collector,
                        # force already redid the training folder (and its evaluations) above
                    )
                    if remeasure and variant_config.test.measure and result["test_id"] not in remeasured:
                        result = remeasure_checkpoint(
                            variant_config, checkpoints[seed, row_name], runs_root=runs_root
                        )
                        remeasured.add(result["test_id"])
                    results.append(_labelled(result, variant, seed))
                    if collector is not None and collector.count:
                        collected.parent.mkdir(exist_ok=True)
                        collected.write_text(json.dumps(collector.summary()))
                append_results(results, parquet)  # a crash keeps what was evaluated so far
                every_result += results
                bar.update(1)
        # The table holds exactly this invocation's rows: none left over from other seeds or from
        # runs on an earlier version of the data (their run ids differ, so they would pile up).
        parquet.unlink(missing_ok=True)
        if every_result:
            append_results(every_result, parquet)
        table = load_results(parquet)
        finished = time.perf_counter()
        timing = {
            "jobs": jobs,
            "row_seed_runs": len(configs),
            "total_seconds": finished - started,
            "phase1_and_preparations_seconds": prepared - started,  # 0 when reused
            "training_and_inference_seconds": trained - prepared,
            "evaluation_collectors_measurement_seconds": finished - trained,
        }
        if len(table):
            per_row = table.drop_duplicates(["row", "seed"]).groupby("row")["train_seconds"].sum()
            timing["phase2_train_seconds_by_row"] = {row: float(s) for row, s in per_row.items()}
            for column in ("inference_seconds", "eval_seconds", "measure_seconds"):
                if column in table:
                    key = ["train_id", column] if column == "inference_seconds" else ["test_id"]
                    unique = table.drop_duplicates(key)  # variants sharing detections count once
                    timing[f"sum_{column}"] = float(unique[column].fillna(0).sum())
        write_json(out / "timing.json", timing)
        (out / "timing.txt").write_text(
            f"{finished - started:.1f} s for {len(configs)} row x seed runs: phase 1 and preparations "
            f"{prepared - started:.1f} s, phase-2 training and inference {trained - prepared:.1f} s "
            f"with {jobs} job(s), evaluation, collectors and measurement {finished - trained:.1f} s\n"
        )
        return table


def _labelled(result: dict[str, Any], variant: Variant, seed: int) -> dict[str, Any]:
    return {
        **result,
        "run_id": f"{variant.name}-s{seed}",
        "row": variant.row,
        "variant": variant.name,
        "group": variant.group,
        "seed": seed,
    }


def _train_and_predict(
    config: RunConfig, variants: list[Variant], runs_root: Path, force: bool, threads: int | None
) -> Path:
    """Phase 2 of ``config``, then every variant that needs neither a collector nor a measurement
    evaluated, and the inference of the measured ones cached: what can run beside another job."""
    import torch

    from harness.pipeline import evaluate_checkpoint, evaluation_folder, predict_checkpoint, train_run
    from harness.runs import is_complete, stage_identity

    if threads is not None:
        torch.set_num_threads(threads)
    progress = threads is None
    checkpoint = train_run(config, runs_root=runs_root, force=force, progress=progress)
    for variant in variants:
        if variant.collect is not None:
            continue  # collectors are objects of this study: they run in the parent
        variant_config = variant.apply(config)
        folder = evaluation_folder(variant_config, runs_root=runs_root)
        done = is_complete(folder, stage_identity(variant_config, "test"))
        if variant_config.test.measure and not done:  # timed in the parent, alone on the machine; infer now
            predict_checkpoint(variant_config, checkpoint, runs_root=runs_root, progress=progress)
        else:
            evaluate_checkpoint(variant_config, checkpoint, runs_root=runs_root, progress=progress)
    return checkpoint


def _train_all(
    configs: dict[tuple[int, str], RunConfig],
    variants: list[Variant],
    *,
    runs_root: Path,
    force: bool,
    jobs: int,
) -> dict[tuple[int, str], Path]:
    """:func:`_train_and_predict` for every config, ``jobs`` at a time; a failed run is reported
    after the others finish (what they wrote is kept either way), naming the row and seed."""
    checkpoints: dict[tuple[int, str], Path] = {}

    def of_row(row_name: str) -> list[Variant]:
        return [v for v in variants if v.row == row_name]

    failures: list[tuple[int, str, Exception]] = []
    with tqdm(total=len(configs), desc="train and infer rows x seeds", unit="run") as bar:
        if jobs == 1:
            for (seed, row_name), config in configs.items():
                bar.set_postfix_str(f"{row_name} seed={seed}")
                try:
                    checkpoints[seed, row_name] = _train_and_predict(
                        config, of_row(row_name), runs_root, force, None
                    )
                except Exception as error:  # noqa: BLE001 - re-raised below with the run's name
                    failures.append((seed, row_name, error))
                bar.update(1)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            import torch

            threads = max(1, torch.get_num_threads() // jobs)
            context = multiprocessing.get_context("spawn")  # torch's thread pools do not survive fork
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
                futures = {
                    pool.submit(_train_and_predict, config, of_row(key[1]), runs_root, force, threads): key
                    for key, config in configs.items()
                }
                for future in as_completed(futures):
                    seed, row_name = futures[future]
                    try:
                        checkpoints[seed, row_name] = future.result()
                    except Exception as error:  # noqa: BLE001 - re-raised below with the run's name
                        failures.append((seed, row_name, error))
                    bar.set_postfix_str(f"done {row_name} seed={seed}")
                    bar.update(1)
    if failures:
        seed, row_name, error = failures[0]
        names = ", ".join(f"{r} (seed {s})" for s, r, _ in failures)
        raise RuntimeError(
            f"training failed for {names}; first error, {row_name} seed {seed}: {error}"
        ) from error
    return checkpoints


class Ablation:
    """A paper's ablation: builds its :class:`Study`, runs it over seeds and renders its report.

    Subclasses set ``name`` and ``default_seeds`` and implement :meth:`build_study` and :meth:`render`.
    The quick mode runs one seed unless seeds are given. An ablation whose default runs a subset of a
    paper's table sets ``supports_full`` and takes ``build_study(quick, full)``: ``full`` runs all of it
    (``vodbench ablate <paper> --full``, its own results folder)."""

    name: str = ""
    default_seeds: tuple[int, ...] = (0,)
    supports_full: bool = False

    def build_study(self, quick: bool) -> Study:  # pragma: no cover - interface
        raise NotImplementedError

    def render(self, folder: Path) -> Path:  # pragma: no cover - interface
        raise NotImplementedError

    def measure_extras(
        self, folder: Path, study: Study, *, seeds: list[int], quick: bool, remeasure: bool
    ) -> None:
        """Measurements outside the study's evaluations (e.g. STMN's clip-mode timing), written into
        ``folder`` before the report is rendered; run alone on the machine, after every training and
        evaluation. Default: none."""

    def study_for(self, quick: bool, full: bool = False) -> Study:
        """:meth:`build_study` of the mode; ``full`` on an ablation without a full mode is an error."""
        if not full:
            return self.build_study(quick)
        if not self.supports_full:
            raise ValueError(f"ablation {self.name!r} has no full mode (--full): its default runs everything")
        return self.build_study(quick, full=True)

    def run(
        self,
        *,
        quick: bool,
        seeds: list[int] | None,
        out: Path,
        force: bool = False,
        jobs: int = 1,
        remeasure: bool = False,
        full: bool = False,
    ) -> Path:
        """Run the study and render the report. ``ablation.json`` records the mode, the seeds and the
        status: ``running`` until every evaluation is done, then ``complete``; a killed study stays
        ``running``, and ``vodbench report`` then says the report would be partial."""
        seeds = list(seeds or ((0,) if quick else self.default_seeds))
        study = self.study_for(quick, full)
        folder = result_folder(out, self.name, quick, full)
        folder.mkdir(parents=True, exist_ok=True)
        mode = {"quick": quick, "seeds": seeds} | ({"full": True} if full else {})
        write_json(folder / STATUS_FILE, {**mode, "status": "running"})
        study.run(seeds=seeds, out=folder, force=force, jobs=jobs, remeasure=remeasure)
        self.measure_extras(folder, study, seeds=seeds, quick=quick, remeasure=remeasure or force)
        write_json(folder / STATUS_FILE, {**mode, "status": "complete"})
        started = time.perf_counter()
        report = self.render(folder)
        with (folder / "timing.txt").open("a") as timing:
            timing.write(f"report rendered in {time.perf_counter() - started:.1f} s\n")
        print(f"report: {report}")
        return report

    def rebuild_results(self, folder: Path) -> tuple[pd.DataFrame, list[str]]:
        """The results table of ``folder`` rebuilt from the run folders (no training, no inference):
        every (variant, seed) whose evaluation is complete, and the names of those that are not."""
        status = read_status(folder)
        study = self.study_for(status["quick"], bool(status.get("full", False)))
        table, missing = study.collect(seeds=status["seeds"], out=folder)
        parquet = folder / "results.parquet"
        parquet.unlink(missing_ok=True)
        if len(table):
            append_results(table.to_dict("records"), parquet)
        return table, missing

    @staticmethod
    def is_quick(folder: Path) -> bool:
        marker = folder / STATUS_FILE
        return bool(json.loads(marker.read_text())["quick"]) if marker.exists() else False

    @staticmethod
    def is_full(folder: Path) -> bool:
        """True when ``folder`` holds a ``--full`` run."""
        marker = folder / STATUS_FILE
        return bool(json.loads(marker.read_text()).get("full", False)) if marker.exists() else False

    @staticmethod
    def is_partial(folder: Path) -> bool:
        """True when the study of ``folder`` did not finish (killed, or still running)."""
        marker = folder / STATUS_FILE
        return marker.exists() and json.loads(marker.read_text()).get("status") != "complete"


STATUS_FILE = "ablation.json"


def read_status(folder: Path) -> dict[str, Any]:
    """``<folder>/ablation.json``: ``quick``, ``seeds`` and ``status`` of the last invocation."""
    marker = folder / STATUS_FILE
    if not marker.exists():
        raise FileNotFoundError(f"{marker} is missing: {folder} was not written by `vodbench ablate`")
    return json.loads(marker.read_text())
