"""Run folders, the one definition of what each stage's results depend on, and the results table.

A run is identified by what it computes, never by the study or row that asked for it: each stage's
identity is a hash of exactly the configuration fields that stage depends on (:func:`stage_identity`,
the only place that decides this), plus the SynthVID generator's fingerprint. Two studies that contain
the same row therefore train it once, and a cross-method comparison reuses every run.

Layout under a runs root (``results/runs`` for the ablations):

* ``phase1-<hash>/``: the still-image detector, shared by every run that agrees on phase 1;
* ``phase2-<hash>/``: one trained video model (``phase2/`` checkpoints and metrics, ``metrics.jsonl``
  of both phases, ``detections/`` cached per test-time support set) and its evaluations
  ``eval-<hash>/`` (``eval.json``, ``measure.json``, ``result.json``);
* ``prepared/<kind>-<hash>/``: one-time preparations such as a flow net pretrained on ground-truth
  flow (``harness.prepare``), shared by every run that uses them.

Each folder holds ``config.json`` (its stage identity), ``env.json`` (python/torch/numpy/cupy versions,
device, CPU count, git commit and dirty flag, hostname, time; ``env_<n>.json`` on each resume) and
``DONE``, written last: a folder with ``DONE`` and an equal ``config.json`` is complete.

Results rows go to a Parquet file; appending replaces rows with the same ``run_id``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from harness.config import (
    AggregationConfig,
    RunConfig,
    SupportSpec,
    TestConfig,
    TrainConfig,
    phase_seed,
    to_dict,
)
from harness.files import atomic_path, write_json, write_text

DONE_MARKER = "DONE"
Stage = Literal["phase1", "phase2", "detections", "test"]
STAGES: tuple[str, ...] = ("phase1", "phase2", "detections", "test")
# Test-time fields that change what is scored but not which detections the model makes.
_SCORING_FIELDS = ("seq_nms", "protocols", "motion", "measure")
# HeadConfig fields added with the sparse head kind; absent from a dense-head run's identity.
_SPARSE_HEAD_FIELDS = ("kind", "sparse")


def data_identity(data: Any) -> dict[str, Any]:
    """What identifies the dataset's content beyond its config: the SynthVID generator's fingerprint,
    so that retuning the generator never reuses runs trained on older data."""
    if data.root is not None:
        return {}
    from harness.data.synthvid import data_fingerprint

    return {"synthvid_fingerprint": data_fingerprint(data.synth_preset)}


def stage_identity(run: RunConfig, stage: Stage) -> dict[str, Any]:
    """The configuration fields stage ``stage`` of ``run`` depends on, as a JSON-able dict.

    * ``phase1``: the still-image detector: everything except the row's name, the test section, the
      phase-2 schedule and seed, the aggregation and the phase-2 sampling of supports and stills.
      New fields count by default (a denylist), so a field added later can never be silently
      left out and reuse a stale detector.
    * ``phase2``: the trained video model: everything except the name and the test section (the
      phase-1 seed resolved, so ``phase1_seed=None`` and ``phase1_seed=seed`` are one run).
    * ``detections``: phase 2 plus the test fields that decide the detections (support frames,
      split, video subset, the sparse head's readout stage).
    * ``test``: phase 2 plus every test field except ``batch_videos`` (inference batching changes
      no detection).

    The one exception to "new fields count": ``model.head.kind`` and ``model.head.sparse`` are left
    out when the kind is ``"dense"`` (the dense head reads neither), so the runs made before the
    sparse head existed keep their identities; a sparse-head run counts both.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    resolved = dataclasses.replace(run, name="", phase1_seed=phase_seed(run, 1), test=TestConfig())
    if stage == "phase1":
        resolved = dataclasses.replace(
            resolved,
            seed=phase_seed(run, 1),
            phase2=TrainConfig(),
            model=dataclasses.replace(run.model, aggregation=AggregationConfig()),
            data=dataclasses.replace(run.data, train_support=SupportSpec(), still_fraction=0.0),
        )
    identity = {**to_dict(resolved), **data_identity(run.data)}
    del identity["name"], identity["test"]  # a label, and the test section (below, for test stages)
    if run.model.head.kind == "dense":  # the dense head reads no sparse setting: dense runs keep the
        for key in _SPARSE_HEAD_FIELDS:  # identities they had before the head kind existed
            del identity["model"]["head"][key]
    if stage in ("detections", "test"):
        test = to_dict(run.test)
        if test["head_stage"] is None:  # the default readout: identities as before the field existed
            del test["head_stage"]
        deciding = ("support", "split", "max_videos", "head_stage")
        if stage == "detections":
            identity["test"] = {k: v for k, v in test.items() if k in deciding}
        else:
            identity["test"] = {k: v for k, v in test.items() if k != "batch_videos"}
    return identity


def identity_json(identity: dict[str, Any]) -> str:
    """The canonical text of an identity (what ``config.json`` holds and the hash covers)."""
    return json.dumps(identity, indent=2, sort_keys=True, default=str)


def digest(identity: dict[str, Any]) -> str:
    """Stable 10-hex-digit hash of an identity."""
    return hashlib.sha1(identity_json(identity).encode()).hexdigest()[:10]


def stage_digest(run: RunConfig, stage: Stage) -> str:
    return digest(stage_identity(run, stage))


def stage_dir(root: Path | str, run: RunConfig, stage: Literal["phase1", "phase2"]) -> Path:
    """``<root>/phase1-<hash>`` or ``<root>/phase2-<hash>`` (not created)."""
    return Path(root) / f"{stage}-{stage_digest(run, stage)}"


def evaluation_dir(root: Path | str, run: RunConfig) -> Path:
    """``<phase-2 folder>/eval-<hash of the test stage>`` (not created)."""
    return stage_dir(root, run, "phase2") / f"eval-{stage_digest(run, 'test')}"


def _git_state() -> dict[str, Any]:
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout
        return {"git_commit": commit, "git_dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def environment() -> dict[str, Any]:
    """Versions, device, CPU count, git commit + dirty flag, hostname and time of this process."""
    import numpy
    import torch
    import torchvision

    try:
        import cupy

        cupy_version = cupy.__version__
    except ImportError:
        cupy_version = None
    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "cupy": cupy_version,
        "cuda_available": cuda,
        "device_name": torch.cuda.get_device_name(0)
        if cuda
        else (platform.processor() or platform.machine()),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **_git_state(),
    }


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def start_run(folder: Path, identity: dict[str, Any]) -> None:
    """Create ``folder`` with ``config.json`` (the stage identity) and an ``env.json``
    (``env_<n>.json`` when resuming).

    Raises ``ValueError`` when the folder holds a different identity (a hash collision or a
    hand-edited folder): results of two configurations must never mix.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.json"
    text = identity_json(identity)
    if config_path.exists() and config_path.read_text() != text:
        raise ValueError(f"{config_path} holds a different configuration than run {folder.name}")
    if not config_path.exists():
        write_text(config_path, text)
    if (folder / DONE_MARKER).exists():
        return  # reusing a finished folder: nothing ran, so no environment to record
    env_path = folder / "env.json"
    resume = 1
    while env_path.exists():
        env_path = folder / f"env_{resume}.json"
        resume += 1
    write_json(env_path, environment())


def is_complete(folder: Path, identity: dict[str, Any]) -> bool:
    """True when ``folder`` has ``DONE`` and its ``config.json`` equals ``identity``."""
    config_path = folder / "config.json"
    return (
        (folder / DONE_MARKER).exists()
        and config_path.exists()
        and config_path.read_text() == identity_json(identity)
    )


def made_once(
    folder: Path, identity: dict[str, Any], output: Path, make: Callable[[], Path], *, what: str
) -> Path:
    """``output`` of a folder that several runs or processes may ask for (a shared phase 1, a
    preparation): returned at once when the folder is complete, else made by ``make()`` under the
    folder's lock (a second process waits, says so, then finds it made) and the folder marked done."""
    from harness.locks import exclusive

    if is_complete(folder, identity) and output.exists():
        return output
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive(folder / ".lock", waiting=f"{what} {folder.name}"):
        if is_complete(folder, identity) and output.exists():  # made by another process meanwhile
            return output
        start_run(folder, identity)
        made = make()
        mark_done(folder)
    return made


def mark_done(folder: Path) -> None:
    (folder / DONE_MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")


# Columns that identify a results row come first, in this order; every other column follows sorted.
KEY_COLUMNS = ("run_id", "name", "row", "variant", "group", "seed", "train_id", "test_id")


def canonical_columns(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with :data:`KEY_COLUMNS` first and the metric columns sorted: the same rows give the
    same table whether they were just computed or read back from ``result.json`` (stored sorted)."""
    keys = [c for c in KEY_COLUMNS if c in table.columns]
    return table[keys + sorted(c for c in table.columns if c not in keys)]


def append_results(rows: list[dict[str, Any]], parquet_path: Path | str) -> pd.DataFrame:
    """Add ``rows`` to the Parquet table, replacing existing rows with the same ``run_id``."""
    parquet_path = Path(parquet_path)
    new = pd.DataFrame(rows)
    if "run_id" not in new.columns:
        raise ValueError("every results row needs a 'run_id'")
    old = None
    if parquet_path.exists():
        try:
            old = load_results(parquet_path)
        except ValueError as error:  # every row is rebuilt from its run folder; the table is a cache
            warnings.warn(f"{error}; starting it anew from this invocation's rows", stacklevel=2)
    if old is not None:
        old = old[~old["run_id"].isin(new["run_id"])]
        new = pd.concat([old, new], ignore_index=True)
    new = canonical_columns(new)
    parquet_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(parquet_path) as tmp:
        new.to_parquet(tmp, engine="pyarrow", index=False)
    return new


def load_results(parquet_path: Path | str) -> pd.DataFrame:
    """The results table (an empty frame when the file does not exist yet)."""
    parquet_path = Path(parquet_path)
    if not parquet_path.exists():
        return pd.DataFrame()
    try:
        return pd.read_parquet(parquet_path, engine="pyarrow")
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise ValueError(f"{parquet_path} cannot be read ({type(error).__name__}: {error})") from error
