"""SynthVID: the procedural VID-like dataset the harness uses when no dataset root is given.

``ensure_synthvid(preset, seed)`` returns the root of the dataset, generating it on first use under
``$VODBENCH_DATA`` (default: ``<repo>/data``) as ``synthvid-<preset>-s<seed>``; a folder is reused
only when its completion marker exists. Read it like any VID root (``harness.data.vid``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

from harness.data.synthvid.config import PRESETS, SynthVIDConfig, get_preset
from harness.data.synthvid.generate import (
    COMPLETE_MARKER,
    GENERATOR_VERSION,
    generate_synthvid,
    remove_stale_temporaries,
)

__all__ = [
    "PRESETS",
    "SynthVIDConfig",
    "data_fingerprint",
    "default_data_dir",
    "ensure_synthvid",
    "generate_synthvid",
    "get_preset",
]


def default_data_dir() -> Path:
    """``$VODBENCH_DATA`` when set, else the repository's ``data/`` folder."""
    if os.environ.get("VODBENCH_DATA"):
        return Path(os.environ["VODBENCH_DATA"])
    return Path(__file__).resolve().parents[3] / "data"


def _fingerprint(version: str | None, config: dict | None) -> str:
    """Generator version + every config field that changes the data (not ``processes``)."""
    fields = {k: v for k, v in (config or {}).items() if k != "processes"}
    return json.dumps({"version": version, "config": fields}, sort_keys=True)


def data_fingerprint(preset: str) -> str:
    """Short hash of the generator version and the preset's knobs: changes whenever SynthVID would."""
    config = json.loads(json.dumps(dataclasses.asdict(get_preset(preset))))
    return hashlib.sha1(_fingerprint(GENERATOR_VERSION, config).encode()).hexdigest()[:8]


def _generated_with(root: Path) -> str | None:
    try:
        meta = json.loads((root / "synthvid.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return _fingerprint(meta.get("generator_version"), meta.get("config"))


def ensure_synthvid(
    preset: str = "default",
    seed: int = 0,
    *,
    data_dir: str | Path | None = None,
    progress: bool = True,
    **overrides,
) -> Path:
    """Root of SynthVID ``preset`` generated with ``seed``; generated now if missing, incomplete,
    or made by another generator version or with other knob values (so tuning ``PRESETS`` takes effect).

    ``overrides`` change preset fields (e.g. ``frame_size=(160, 96)``); they are part of the folder
    name (a short hash) so different configurations never share a folder.
    """
    config = get_preset(preset, **overrides)
    name = f"synthvid-{preset}-s{seed}"
    if overrides:
        digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
        name += f"-{digest}"
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    root = root / name
    remove_stale_temporaries(root)  # left by a killed generation of this dataset, even if it is complete
    if (root / COMPLETE_MARKER).is_file() and _generated_with(root) == _fingerprint(
        GENERATOR_VERSION,
        json.loads(json.dumps(dataclasses.asdict(config))),  # tuples -> lists, as stored
    ):
        return root
    if root.exists():  # interrupted, or made by another generator version or config: redo it
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    generate_synthvid(root, config, seed, progress=progress)
    return root
