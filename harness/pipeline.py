"""One experiment end to end: phase 1, phase 2, inference, (Seq-NMS), evaluation, measurement.

Training and evaluation are separate so that test-time variants (``RunConfig.test``: support frames,
stride, Seq-NMS, a validation subset) of one trained configuration reuse its weights. Every folder is
named by the hash of exactly what its stage depends on (``harness.runs.stage_identity``), so a row
shared by two studies, or by a study and ``vodbench train``, is trained once:

* :func:`train_run`: phase 1 -> ``<runs_root>/phase1-<hash>/final.pt`` (shared by every run that
  agrees on phase 1), one-time preparations -> ``<runs_root>/prepared/`` (``harness.prepare``),
  phase 2 -> ``<runs_root>/phase2-<hash>/phase2/final.pt``. The single-frame baseline (no supports at
  train or test time) is fine-tuned for the same ``phase2.steps`` with T = 0, so its training budget
  equals the video rows' (phase 2 is skipped only when ``phase2.steps == 0``). Training resumes from
  its checkpoints; concurrent callers of one folder wait for each other and then reuse its result.
* :func:`evaluate_checkpoint`: inference with ``test.support`` (detections cached in the phase-2
  folder's ``detections/`` per support set, devkit format), Seq-NMS when ``test.seq_nms``,
  evaluation, measurement -> ``<phase-2 folder>/eval-<hash>/`` with ``config.json``, ``env.json``,
  ``eval.json``, ``measure.json``, ``result.json`` and ``DONE``.
* :func:`run_experiment`: both, for one configuration (``vodbench train``).

A crash leaves every finished stage's files in place; a rerun skips what is complete.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from harness.build import PHASE_SEED_STRIDE, build_model, check_method, load_trained, resolve_device
from harness.config import RunConfig, phase_seed
from harness.files import atomic_path, write_text
from harness.locks import exclusive
from harness.runs import (
    evaluation_dir,
    is_complete,
    made_once,
    mark_done,
    read_json,
    stage_digest,
    stage_dir,
    stage_identity,
    start_run,
    write_json,
)
from harness.train import (
    METRICS_FILE,
    finite_weights,
    read_metrics,
    restore_rng_state,
    rng_state,
    seed_everything,
    train,
)


def flatten_metrics(payload: Any, prefix: str = "") -> dict[str, float]:
    """Nested eval/measure dicts -> ``{"devkit_map": ..., "motion_fast_devkit_map": ...}``: numeric leaves
    only, keys joined by ``_`` (lists and strings are left out of the row, they stay in the JSON)."""
    flat: dict[str, float] = {}
    if isinstance(payload, dict):
        for key, value in payload.items():
            if str(key).startswith("per_class") or key == "ap_vs_iou":
                continue  # per-class tables stay in eval.json
            flat.update(flatten_metrics(value, f"{prefix}_{key}" if prefix else str(key)))
    elif isinstance(payload, bool):
        flat[prefix] = float(payload)
    elif isinstance(payload, (int, float)) and prefix:
        flat[prefix] = float(payload)
    return flat


def _train_seconds(records: list[dict[str, Any]]) -> float:
    return float(sum(r.get("seconds", 0.0) for r in records if "event" not in r))


def _evaluate(run: RunConfig, videos: list, detections: dict, *, progress: bool) -> dict[str, Any]:
    from harness.eval.evaluate import evaluate

    return evaluate(
        videos,
        detections,
        protocols=tuple(run.test.protocols),
        motion=run.test.motion,
        degradation=run.data.root is None,  # degradation flags exist on SynthVID only
        progress=progress,
    )


def _train_dataset(run: RunConfig, phase: int, *, with_oracle_flow: bool) -> tuple[Any, Callable]:
    from harness.data.dataset import build_dataset, collate  # the data layer is an edge dependency

    dataset = build_dataset(
        run.data,
        run.data.train_split,
        phase=phase,
        seed=phase_seed(run, phase),
        with_oracle_flow=with_oracle_flow,
    )
    return dataset, collate


def train_shared_phase1(run: RunConfig, *, runs_root: Path, progress: bool = True) -> Path:
    """The still-image detector of ``run`` (``<runs_root>/phase1-<hash>/final.pt``), trained once and
    shared by every run with the same phase-1 settings; parallel callers wait for one another."""
    folder = stage_dir(runs_root, run, "phase1")

    def make() -> Path:
        seed_everything(phase_seed(run, 1) + PHASE_SEED_STRIDE)
        model = build_model(run, phase=1)
        dataset, collate = _train_dataset(run, 1, with_oracle_flow=False)
        return train(
            model,
            dataset,
            collate_fn=collate,
            schedule=run.phase1,
            out_dir=folder,
            seed=phase_seed(run, 1),
            device=resolve_device(run.device),
            phase=1,
            progress=progress,
        )

    return made_once(folder, stage_identity(run, "phase1"), folder / "final.pt", make, what="phase 1")


def resolved_aggregation(run: RunConfig, *, runs_root: Path, progress: bool = True) -> Any:
    """``run.model.aggregation`` with its one-time preparations made and their paths filled in."""
    from harness.prepare import resolve_pretrained

    return resolve_pretrained(run.model.aggregation, run.data, runs_root=runs_root, progress=progress)


def train_run(run: RunConfig, *, runs_root: Path, force: bool = False, progress: bool = True) -> Path:
    """Phase 1 (shared), preparations (shared) and phase 2 of ``run``; returns the checkpoint to evaluate.

    The phase-2 folder is ``<runs_root>/phase2-<hash>/``; a finished phase is skipped, an
    interrupted one resumes from its last checkpoint. ``force`` retrains phase 2 (not the shared
    phase 1 or preparations: delete their folders for that). The method is checked (and its parts
    built, once) before any training, so an unknown name or a method without supports fails at once."""
    runs_root = Path(runs_root)
    check_method(run)
    folder = stage_dir(runs_root, run, "phase2")
    identity = stage_identity(run, "phase2")
    final = folder / "phase2" / "final.pt"
    if run.phase2.steps > 0 and not force and is_complete(folder, identity) and final.exists():
        return final
    aggregation = resolved_aggregation(run, runs_root=runs_root, progress=progress)  # not phase-1 bound
    with torch.random.fork_rng(devices=[]):  # seeded as if built right before its own training
        seed_everything(phase_seed(run, 2) + 2 * PHASE_SEED_STRIDE)
        model = build_model(run, phase=2, aggregation=aggregation)  # an unknown method fails before phase 1
        after_build = rng_state()
    phase1 = train_shared_phase1(run, runs_root=runs_root, progress=progress)
    if run.phase2.steps == 0:
        start_run(folder, identity)
        _write_metrics(folder, phase1, None)
        return phase1
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive(folder / ".lock", waiting=f"phase 2 {folder.name}"):
        if force and (folder / "phase2").exists():
            shutil.rmtree(folder / "phase2")
            (folder / "DONE").unlink(missing_ok=True)
        if not is_complete(folder, identity) or not final.exists():
            start_run(folder, identity)
            restore_rng_state(after_build)
            model.load_phase1(phase1)
            dataset, collate = _train_dataset(run, 2, with_oracle_flow=model.aggregator.needs_oracle_flow)
            final = train(
                model,
                dataset,
                collate_fn=collate,
                schedule=run.phase2,
                out_dir=folder / "phase2",
                seed=phase_seed(run, 2),
                device=resolve_device(run.device),
                phase=2,
                progress=progress,
            )
            _write_metrics(folder, phase1, folder / "phase2")
            mark_done(folder)
    return final


def _write_metrics(folder: Path, phase1_checkpoint: Path, phase2_dir: Path | None) -> None:
    """``<phase-2 folder>/metrics.jsonl``: phase 1's records, then phase 2's."""
    records = read_metrics(phase1_checkpoint.parent) + (read_metrics(phase2_dir) if phase2_dir else [])
    write_text(folder / METRICS_FILE, "".join(json.dumps(record) + "\n" for record in records))


def evaluation_folder(run: RunConfig, *, runs_root: Path) -> Path:
    """``<phase-2 folder>/eval-<hash>/``: where :func:`evaluate_checkpoint` writes ``run``'s results."""
    return evaluation_dir(runs_root, run)


def predict_checkpoint(
    run: RunConfig,
    checkpoint: Path,
    *,
    runs_root: Path,
    detector: Any = None,
    collect: Callable[..., None] | None = None,
    force: bool = False,
    progress: bool = True,
    videos: list | None = None,
) -> dict:
    """Detections of ``checkpoint`` on ``run.test.split`` with ``run.test.support``.

    Cached per test-time support set in ``<phase-2 folder>/detections/detections-<hash>.txt``
    (devkit format), so variants differing only in scoring settings share one inference and a
    worker process can run the inference that :func:`evaluate_checkpoint` later reads. A ``collect``
    callable (see ``harness.infer.predict_split``) always gets a fresh inference. ``detector``: the
    loaded model, when the caller has it already."""
    from harness.data.dataset import load_split
    from harness.eval.detfile import read_devkit_detections, write_devkit_detections

    if videos is None:
        videos = load_split(run.data, run.test.split, max_videos=run.test.max_videos)
    key = stage_identity(run, "detections")["test"]
    detections_path = (
        stage_dir(runs_root, run, "phase2")
        / "detections"
        / f"detections-{stage_digest(run, 'detections')}.txt"
    )
    if detections_path.exists() and collect is None and not force:
        return read_devkit_detections(detections_path, videos, progress=progress)
    from harness.infer import predict_split

    device = resolve_device(run.device)
    if detector is None:
        detector = load_trained(run, checkpoint, device)
    detector.set_readout_stage(run.test.head_stage)
    started = time.perf_counter()
    detections = predict_split(
        detector,
        videos,
        support=run.test.support,
        image_size=run.data.image_size,
        batch_videos=run.test.batch_videos,
        device=device,
        progress=progress,
        collect=collect,
    )
    seconds = time.perf_counter() - started
    detections_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(detections_path) as tmp:
        write_devkit_detections(tmp, videos, detections, progress=progress)
    write_json(detections_path.with_suffix(".json"), {**key, "inference_seconds": seconds})
    return detections


def _inference_seconds(run: RunConfig, runs_root: Path) -> float:
    """Wall time of the inference that made ``run``'s cached detections (recorded beside them)."""
    detections_path = (
        stage_dir(runs_root, run, "phase2")
        / "detections"
        / f"detections-{stage_digest(run, 'detections')}.json"
    )
    return float(read_json(detections_path).get("inference_seconds", float("nan")))


def evaluate_checkpoint(
    run: RunConfig,
    checkpoint: Path,
    *,
    runs_root: Path,
    collect: Callable[..., None] | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Inference with ``run.test.support`` (:func:`predict_checkpoint`, cached), optional Seq-NMS,
    evaluation and measurement.

    Written to ``<phase-2 folder>/eval-<hash>/`` (config, env, eval.json, measure.json, result.json,
    DONE). Returns the flat results row: ``train_id`` and ``test_id`` (the phase-2 and test-stage
    hashes), ``seed``, ``train_seconds`` (phase 2), the evaluation's stage wall times, the metric columns
    as :func:`flatten_metrics` names them
    (``devkit_map``, ``coco_ap50``, ``devkit_motion_fast``, ...) and the measurement's columns
    (``harness.measure.summary_row``), Seq-NMS already applied when
    ``run.test.seq_nms``. Labels (row and variant names) are the caller's: the folder is shared by
    every study that evaluates the same thing. ``weights_finite`` is False (and a warning is given)
    when the evaluated weights hold NaN/inf. Concurrent callers of one folder evaluate it once.
    """
    runs_root = Path(runs_root)
    folder = evaluation_folder(run, runs_root=runs_root)
    identity = stage_identity(run, "test")
    if is_complete(folder, identity) and not force:
        if collect is not None:  # the collector needs the inference; the stored evaluation stands
            predict_checkpoint(run, checkpoint, runs_root=runs_root, collect=collect, progress=progress)
        return read_json(folder / "result.json")
    if force and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive(folder / ".lock", waiting=f"evaluation {folder.name}"):
        if is_complete(folder, identity) and not force:  # done by another process meanwhile
            if collect is not None:
                predict_checkpoint(run, checkpoint, runs_root=runs_root, collect=collect, progress=progress)
            return read_json(folder / "result.json")
        return _evaluate_into(
            run,
            checkpoint,
            folder,
            identity,
            runs_root=runs_root,
            collect=collect,
            force=force,
            progress=progress,
        )


def _evaluate_into(
    run: RunConfig,
    checkpoint: Path,
    folder: Path,
    identity: dict[str, Any],
    *,
    runs_root: Path,
    collect: Callable[..., None] | None,
    force: bool,
    progress: bool,
) -> dict[str, Any]:
    from harness.data.dataset import load_split

    start_run(folder, identity)
    videos = load_split(run.data, run.test.split, max_videos=run.test.max_videos)
    device = resolve_device(run.device)
    # built once, for inference and measurement; without phase 2 the preparations are the weights
    aggregation = resolved_aggregation(run, runs_root=runs_root) if run.phase2.steps == 0 else None
    detector = load_trained(run, checkpoint, device, aggregation=aggregation)
    detections = predict_checkpoint(
        run,
        checkpoint,
        runs_root=runs_root,
        detector=detector,
        collect=collect,
        force=force,
        progress=progress,
        videos=videos,
    )

    # evaluation ------------------------------------------------------------------------------
    started = time.perf_counter()
    if run.test.seq_nms:
        from harness.eval.seqnms import seq_nms

        detections = seq_nms(videos, detections, progress=progress)
    evaluation = _evaluate(run, videos, detections, progress=progress)
    write_json(folder / "eval.json", evaluation)
    eval_seconds = time.perf_counter() - started

    # measurement -----------------------------------------------------------------------------
    started = time.perf_counter()
    measurement: dict[str, Any] = {}
    if run.test.measure:
        measurement = _measure_into(run, detector, videos, folder, device)

    finite = finite_weights(detector)
    if not finite:
        warnings.warn(
            f"{folder}: the evaluated weights are not finite; its numbers are meaningless", stacklevel=2
        )
    row: dict[str, Any] = {
        "train_id": stage_digest(run, "phase2"),
        "test_id": stage_digest(run, "test"),
        "seed": run.seed,
        "train_seconds": _train_seconds(read_metrics(stage_dir(runs_root, run, "phase2") / "phase2")),
        "weights_finite": finite,
        # wall times of this evaluation's stages (inference: when its detections were made)
        "inference_seconds": _inference_seconds(run, runs_root),
        "eval_seconds": eval_seconds,
        "measure_seconds": time.perf_counter() - started,
    }
    row.update(flatten_metrics(evaluation))
    if measurement:
        from harness.measure import summary_row

        row.update(summary_row(measurement))
    write_json(folder / "result.json", row)
    mark_done(folder)
    return read_json(folder / "result.json")  # exactly what a later call reads back


def _measure_into(run: RunConfig, detector, videos, folder: Path, device) -> dict[str, Any]:
    """Time ``detector`` as ``run.test`` asks (``harness.measure``) and write ``measure.json``."""
    from harness.measure import measure, support_offsets

    # the window of the longest video's middle frame: the offsets a method sees at inference
    offsets = support_offsets(run.test.support, num_frames=max(len(v) for v in videos))
    measurement = measure(detector, image_size=run.data.image_size, offsets=offsets, device=device)
    write_json(folder / "measure.json", measurement)
    return measurement


def remeasure_checkpoint(run: RunConfig, checkpoint: Path, *, runs_root: Path) -> dict[str, Any]:
    """Redo the timed measurement of a finished evaluation and return its updated results row.

    For times taken on a busy machine: the detections and metrics stand (they do not depend on the
    load), only ``measure.json`` and the row's measurement columns are replaced; the row's
    ``remeasured`` column says so. Refuses an evaluation that is not finished or was not timed."""
    from harness.data.dataset import load_split
    from harness.measure import summary_row

    runs_root = Path(runs_root)
    folder = evaluation_folder(run, runs_root=runs_root)
    if not run.test.measure:
        raise ValueError(f"{folder}: this evaluation is not timed (test.measure is False)")
    with exclusive(folder / ".lock", waiting=f"evaluation {folder.name}"):
        if not is_complete(folder, stage_identity(run, "test")):
            raise FileNotFoundError(f"{folder}: no finished evaluation to measure again; evaluate it first")
        row = read_json(folder / "result.json")
        old = folder / "measure.json"
        stale = set(summary_row(read_json(old))) if old.is_file() else set()
        videos = load_split(run.data, run.test.split, max_videos=run.test.max_videos)
        device = resolve_device(run.device)
        aggregation = resolved_aggregation(run, runs_root=runs_root) if run.phase2.steps == 0 else None
        detector = load_trained(run, checkpoint, device, aggregation=aggregation)
        started = time.perf_counter()
        measurement = _measure_into(run, detector, videos, folder, device)
        row = {key: value for key, value in row.items() if key not in stale}
        row.update(summary_row(measurement))
        row["measure_seconds"] = time.perf_counter() - started
        row["remeasured"] = True
        write_json(folder / "result.json", row)
    return read_json(folder / "result.json")


def run_experiment(
    run: RunConfig, *, runs_root: Path, force: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train (or reuse) and evaluate one configuration: :func:`train_run` + :func:`evaluate_checkpoint`;
    the row gets ``name`` (the run's label) and ``run_id`` = ``<name>-<test_id>``."""
    checkpoint = train_run(run, runs_root=runs_root, force=force, progress=progress)
    row = evaluate_checkpoint(run, checkpoint, runs_root=runs_root, force=force, progress=progress)
    return {"run_id": f"{run.name}-{row['test_id']}", "name": run.name, **row}
