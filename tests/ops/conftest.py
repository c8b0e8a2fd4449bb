"""Fixtures shared by the op tests: RNG isolation, no kill switch, visible skips for GPU/NVRTC tests."""

from __future__ import annotations

import pytest
import torch

from ops import _kernels


@pytest.fixture(autouse=True)
def _isolated_rng_and_dispatch(monkeypatch):
    """Keep RNG state from leaking between tests, and run without the reference kill switch.

    A CI job that exports VODBENCH_OPS_REFERENCE=1 would otherwise turn every fast-vs-reference
    comparison into reference-vs-reference; the kill switch has its own test.
    """
    monkeypatch.delenv(_kernels.REFERENCE_ENV_VAR, raising=False)
    with torch.random.fork_rng():
        yield


def pytest_runtest_setup(item):
    if item.get_closest_marker("cuda") is not None and not _kernels.cuda_available():
        pytest.skip("needs a CUDA device and cupy (torch.cuda.is_available() is False or cupy missing)")


@pytest.fixture(scope="session")
def nvrtc_or_skip():
    """Skip (with the loader's reason) only when NVRTC really cannot be loaded."""
    reason = _kernels.nvrtc_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
