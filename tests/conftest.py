"""Suite-wide settings."""

from __future__ import annotations

import os

import pytest
import torch

# The tests are a composition root: they import the builtin methods explicitly, so the suite does not
# depend on the installed entry-point metadata (tests/test_aggregation.py checks the entry point).
import methods  # noqa: F401


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist every worker is its own process: with two workers on a two-core machine,
    # one torch thread each avoids oversubscription (which slows small ops by an order of magnitude).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolate_rng_state():
    """Tests may seed torch freely; the global RNG state does not leak into the next test."""
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)


@pytest.fixture
def one_thread():
    """One intra-op thread: the machines have 2 shared cores; oversubscription only slows small ops.
    Modules that train or infer use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
