"""One experiment end to end: phase 1, phase 2, inference, (Seq-NMS), evaluation, measurement.

Training and evaluation are separate so that test-time variants (support frames, stride, Seq-NMS,
a validation subset) of one trained configuration reuse its weights:

* :func:`train_run`: phase 1 -> ``<runs_root>/phase1-<hash>/final.pt`` (shared by every run that
  agrees on phase 1), phase 2 -> ``<runs_root>/<name>-<hash of training_config>/phase2/final.pt``.
  The single-frame baseline (no supports at train or test time) is fine-tuned for the same
  ``phase2.steps`` with T = 0, so its training budget equals the video rows' (phase 2 is skipped only
  when ``phase2.steps == 0``). Training resumes from its checkpoints.
* :func:`evaluate_checkpoint`: inference with ``data.test_support`` (detections cached in the
  training folder's ``detections/`` per test-time support set, devkit format), Seq-NMS when
  ``eval.seq_nms``, evaluation, measurement -> ``<training folder>/eval-<variant>-<hash>/`` with
  ``config.json``, ``env.json``, ``eval.json``, ``measure.json``, ``result.json`` and ``DONE``.
* :func:`run_experiment`: both, for one configuration (``vodbench train``).

A crash leaves every finished stage's files in place; a rerun skips what is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from harness.runs import (
    is_complete,
    mark_done,
    phase1_config,
    phase1_dir,
    read_json,
    run_dir,
    run_id,
    start_run,
    write_json,
)
from harness.train import METRICS_FILE, build_phase_model, read_metrics, resolve_device, train_phase


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


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (POSIX; a no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train_seconds(records: list[dict[str, Any]]) -> float:
    return float(sum(r.get("seconds", 0.0) for r in records if "event" not in r))


def _evaluate(run: Any, videos: list, detections: dict, *, progress: bool) -> dict[str, Any]:
    from harness.eval.evaluate import evaluate

    return evaluate(
        videos,
        detections,
        protocols=tuple(run.eval.protocols),
        motion=run.eval.motion,
        degradation=run.data.root is None,  # degradation flags exist on SynthVID only
        progress=progress,
    )


def training_config(run: Any) -> Any:
    """``run`` with every test-time field at its default: what determines the trained weights.

    Two runs with equal training configs share one phase-2 checkpoint, whatever support frames,
    validation subset or Seq-NMS they are evaluated with."""
    from harness.config import DataConfig, EvalConfig

    defaults = DataConfig()
    data = dataclasses.replace(
        run.data,
        test_support=defaults.test_support,
        max_val_videos=defaults.max_val_videos,
        val_split=defaults.val_split,
    )
    return dataclasses.replace(run, data=data, eval=EvalConfig())


def train_shared_phase1(run: Any, *, runs_root: Path, progress: bool = True) -> Path:
    """The still-image detector of ``run`` (``<runs_root>/phase1-<hash>/final.pt``), trained once and
    shared by every run with the same phase-1 settings; parallel callers wait for one another."""
    shared = phase1_dir(Path(runs_root), run)
    shared.mkdir(parents=True, exist_ok=True)
    if not (shared / "config.json").exists():
        write_json(shared / "config.json", phase1_config(run))
    with _exclusive(shared / ".lock"):  # parallel runs sharing phase 1 train it once
        return train_phase(run, phase=1, out_dir=shared, progress=progress)


def train_run(run: Any, *, runs_root: Path, force: bool = False, progress: bool = True) -> Path:
    """Phase 1 (shared) and phase 2 of ``run``; returns the checkpoint to evaluate.

    The phase-2 folder is ``<runs_root>/<name>-<hash of training_config(run)>/``; a finished phase
    is skipped, an interrupted one resumes from its last checkpoint. ``force`` retrains phase 2
    (not the shared phase 1: delete ``phase1-<hash>/`` for that)."""
    runs_root = Path(runs_root)
    trained = training_config(run)
    folder = run_dir(runs_root, trained)
    if force and folder.exists():
        shutil.rmtree(folder)
    start_run(folder, trained)
    shared = phase1_dir(runs_root, run)
    checkpoint = train_shared_phase1(run, runs_root=runs_root, progress=progress)
    phase2_records: list[dict[str, Any]] = []
    if run.phase2.steps > 0:
        checkpoint = train_phase(
            run, phase=2, out_dir=folder / "phase2", init_checkpoint=checkpoint, progress=progress
        )
        phase2_records = read_metrics(folder / "phase2")
    with (folder / METRICS_FILE).open("w") as metrics_file:
        for record in read_metrics(shared) + phase2_records:
            metrics_file.write(json.dumps(record) + "\n")
    return checkpoint


def load_trained(run: Any, checkpoint: Path, device: torch.device) -> Any:
    """The detector of ``run`` with the weights of ``checkpoint`` (phase 2, or phase 1 + fresh aggregator)."""
    torch.manual_seed(run.seed)  # the aggregator's init when there is no phase 2
    detector = build_phase_model(run, phase=2)
    if run.phase2.steps > 0:
        detector.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["model"])
    else:
        detector.load_phase1(checkpoint)
    return detector.to(device).eval()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def evaluation_folder(run: Any, *, runs_root: Path, variant: str) -> Path:
    """``<training folder>/eval-<variant>-<hash of run>/``: where :func:`evaluate_checkpoint` writes."""
    training_folder = run_dir(Path(runs_root), training_config(run))
    return training_folder / f"eval-{_slug(variant)}-{run_id(run).rsplit('-', 1)[1]}"


def predict_checkpoint(
    run: Any,
    checkpoint: Path,
    *,
    runs_root: Path,
    collect: Callable[..., None] | None = None,
    force: bool = False,
    progress: bool = True,
    videos: list | None = None,
) -> dict:
    """Detections of ``checkpoint`` on the validation split with ``run.data.test_support``.

    Cached per test-time support set in ``<training folder>/detections/detections-<hash>.txt``
    (devkit format), so variants differing only in evaluation settings share one inference and a
    worker process can run the inference that :func:`evaluate_checkpoint` later reads. A ``collect``
    callable (see ``harness.infer.predict_split``) always gets a fresh inference."""
    from harness.data.dataset import load_split
    from harness.eval.detfile import read_devkit_detections, write_devkit_detections

    training_folder = run_dir(Path(runs_root), training_config(run))
    if videos is None:
        videos = load_split(run.data, run.data.val_split)
    inference_key = {
        "test_support": dataclasses.asdict(run.data.test_support),
        "max_val_videos": run.data.max_val_videos,
        "val_split": run.data.val_split,
    }
    digest = hashlib.sha1(json.dumps(inference_key, sort_keys=True).encode()).hexdigest()[:10]
    detections_path = training_folder / "detections" / f"detections-{digest}.txt"
    if detections_path.exists() and collect is None and not force:
        return read_devkit_detections(detections_path, videos, progress=progress)
    from harness.infer import predict_split

    device = resolve_device(run.device)
    detector = load_trained(run, checkpoint, device)
    detections = predict_split(
        detector,
        videos,
        support=run.data.test_support,
        image_size=run.data.image_size,
        batch_videos=run.eval.batch_videos,
        device=device,
        progress=progress,
        collect=collect,
    )
    detections_path.parent.mkdir(exist_ok=True)
    tmp = detections_path.with_name(detections_path.name + ".tmp")
    write_devkit_detections(tmp, videos, detections, progress=progress)
    tmp.replace(detections_path)
    write_json(detections_path.with_suffix(".json"), inference_key)
    return detections


def evaluate_checkpoint(
    run: Any,
    checkpoint: Path,
    *,
    runs_root: Path,
    variant: str = "test",
    collect: Callable[..., None] | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Inference with ``run.data.test_support`` (:func:`predict_checkpoint`, cached), optional
    Seq-NMS, evaluation and measurement.

    Written to ``<training folder>/eval-<variant>-<hash of run>/`` (config, env, eval.json,
    measure.json, result.json, DONE). Returns the flat results row: columns as
    :func:`flatten_metrics` names them (``devkit_map``, ``coco_ap50``, ``devkit_motion_fast``, ...),
    Seq-NMS already applied when ``run.eval.seq_nms``.
    """
    from harness.data.dataset import load_split

    training_folder = run_dir(Path(runs_root), training_config(run))
    folder = evaluation_folder(run, runs_root=runs_root, variant=variant)
    if is_complete(folder, run) and not force and collect is None:
        return read_json(folder / "result.json")
    if force and folder.exists():
        shutil.rmtree(folder)
    start_run(folder, run)
    videos = load_split(run.data, run.data.val_split)
    detections = predict_checkpoint(
        run, checkpoint, runs_root=runs_root, collect=collect, force=force, progress=progress, videos=videos
    )

    # evaluation ------------------------------------------------------------------------------
    if run.eval.seq_nms:
        from harness.eval.seqnms import seq_nms

        detections = seq_nms(videos, detections, progress=progress)
    evaluation = _evaluate(run, videos, detections, progress=progress)
    write_json(folder / "eval.json", evaluation)

    # measurement -----------------------------------------------------------------------------
    measurement: dict[str, Any] = {}
    if run.eval.measure:
        from harness.measure import measure, support_offsets

        # the window of the longest video's middle frame: the offsets a method sees at inference
        offsets = support_offsets(run.data.test_support, num_frames=max(len(v) for v in videos))
        device = resolve_device(run.device)
        detector = load_trained(run, checkpoint, device)
        measurement = measure(detector, image_size=run.data.image_size, offsets=offsets, device=device)
        write_json(folder / "measure.json", measurement)

    row: dict[str, Any] = {
        "run_id": run_id(run) + f"-{_slug(variant)}",
        "name": run.name,
        "seed": run.seed,
        "config_hash": run_id(run).rsplit("-", 1)[1],
        "train_seconds": _train_seconds(read_metrics(training_folder)),
    }
    row.update(flatten_metrics(evaluation))
    if measurement:
        from harness.measure import summary_row

        row.update(summary_row(measurement))
    write_json(folder / "result.json", row)
    mark_done(folder)
    return read_json(folder / "result.json")  # exactly what a later call reads back


def run_experiment(
    run: Any, *, runs_root: Path, force: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train (or reuse) and evaluate one configuration: :func:`train_run` + :func:`evaluate_checkpoint`."""
    checkpoint = train_run(run, runs_root=runs_root, force=force, progress=progress)
    return evaluate_checkpoint(run, checkpoint, runs_root=runs_root, force=force, progress=progress)
