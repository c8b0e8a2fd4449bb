"""Fixtures of the data tests: the ``tiny`` SynthVID preset generated once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.data.synthvid import ensure_synthvid


@pytest.fixture(scope="session")
def tiny_synthvid(tmp_path_factory) -> Path:
    """Root of SynthVID ``tiny`` (seed 0): 4 train + 2 val videos of 12 frames (64x64), 20 stills."""
    return ensure_synthvid("tiny", seed=0, data_dir=tmp_path_factory.mktemp("synthvid"), progress=False)


@pytest.fixture
def tiny_copy(tiny_synthvid, tmp_path) -> Path:
    """A private, writable copy of the tiny dataset, for tests that corrupt files."""
    root = tmp_path / "copy"
    shutil.copytree(tiny_synthvid, root, ignore=shutil.ignore_patterns("cache"))
    return root
