"""Run folders and the results table.

A run folder ``<runs_root>/<name>-<config_hash>/`` holds everything one run produced:

* ``config.json``: the resolved ``RunConfig`` (``harness.config.to_json``);
* ``env.json``: python/torch/torchvision/numpy/cupy versions, device, CPU count, git commit and
  dirty flag, hostname, time (written when the run starts; ``env_<n>.json`` on each resume);
* ``metrics.jsonl``, ``detections.txt`` (devkit format), ``eval.json``, ``measure.json``;
* ``DONE``, written last: a run with ``DONE`` and an equal ``config.json`` is complete.

The phase-1 detector is shared: every run whose phase-1-relevant configuration (data, number of
classes, backbone, head, phase-1 schedule, seed) hashes the same trains it once in
``<runs_root>/phase1-<hash>/``.

Results rows go to a Parquet file; appending replaces rows with the same ``run_id``.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from harness.config import phase_seed, to_dict, to_json

DONE_MARKER = "DONE"
PHASE1_DATA_FIELDS = ("root", "format", "cocovid_json", "synth_preset", "synth_seed", "train_split",
                      "train_list", "image_size", "on_bad_input")


def run_id(config: Any) -> str:
    """``<name>-<hash>``: the folder name and the results table's key. The hash covers the config and,
    on SynthVID, the generator's fingerprint, so that retuning the data never reuses stale runs."""
    return f"{config.name}-{_hash(to_json(config) + _data_identity(config))}"


def _hash(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _data_identity(config: Any) -> str:
    if config.data.root is not None:
        return ""
    from harness.data.synthvid import data_fingerprint

    return data_fingerprint(config.data.synth_preset)


def run_dir(root: Path | str, config: Any) -> Path:
    """The folder of the run described by ``config`` under ``root`` (not created)."""
    return Path(root) / run_id(config)


def phase1_config(config: Any) -> dict[str, Any]:
    """The part of a ``RunConfig`` that determines the phase-1 detector."""
    return {
        # only what shapes the still-image detector: not supports, oracle flow or the val subset
        "data": {k: v for k, v in to_dict(config.data).items() if k in PHASE1_DATA_FIELDS},
        "num_classes": config.model.num_classes,
        "backbone": to_dict(config.model.backbone),
        "head": to_dict(config.model.head),
        "phase1": to_dict(config.phase1),
        "seed": phase_seed(config, 1),
        "device": config.device,
    }


def phase1_dir(root: Path | str, config: Any) -> Path:
    """``<root>/phase1-<hash of phase1_config>``: shared by runs that agree on phase 1."""
    identity = json.dumps(phase1_config(config), sort_keys=True) + _data_identity(config)
    return Path(root) / f"phase1-{_hash(identity)}"


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


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temp file + rename): a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def start_run(folder: Path, config: Any) -> None:
    """Create ``folder`` with ``config.json`` and an ``env.json`` (``env_<n>.json`` when resuming).

    Raises ``ValueError`` when the folder holds a different configuration (a hash collision or a
    hand-edited folder): results of two configurations must never mix.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.json"
    if config_path.exists() and config_path.read_text() != to_json(config):
        raise ValueError(f"{config_path} holds a different configuration than run {folder.name}")
    if not config_path.exists():
        tmp = config_path.with_name("config.json.tmp")
        tmp.write_text(to_json(config))
        os.replace(tmp, config_path)
    env_path = folder / "env.json"
    resume = 1
    while env_path.exists():
        env_path = folder / f"env_{resume}.json"
        resume += 1
    write_json(env_path, environment())


def is_complete(folder: Path, config: Any) -> bool:
    """True when ``folder`` has ``DONE`` and its ``config.json`` equals ``config``."""
    config_path = folder / "config.json"
    return (
        (folder / DONE_MARKER).exists()
        and config_path.exists()
        and config_path.read_text() == to_json(config)
    )


def mark_done(folder: Path) -> None:
    (folder / DONE_MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")


# Columns that identify a results row come first, in this order; every other column follows sorted.
KEY_COLUMNS = ("run_id", "name", "row", "variant", "group", "seed", "config_hash")


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
    if parquet_path.exists():
        old = load_results(parquet_path)
        old = old[~old["run_id"].isin(new["run_id"])]
        new = pd.concat([old, new], ignore_index=True)
    new = canonical_columns(new)
    parquet_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = parquet_path.with_name(parquet_path.name + ".tmp")
    new.to_parquet(tmp, engine="pyarrow", index=False)
    os.replace(tmp, parquet_path)
    return new


def load_results(parquet_path: Path | str) -> pd.DataFrame:
    """The results table (an empty frame when the file does not exist yet)."""
    parquet_path = Path(parquet_path)
    if not parquet_path.exists():
        return pd.DataFrame()
    return pd.read_parquet(parquet_path, engine="pyarrow")
