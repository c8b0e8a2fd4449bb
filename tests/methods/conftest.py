"""Fixtures for the method tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Run each test on one intra-op thread (restored afterwards).

    These are many tiny tensor ops; on the 2 shared CPU cores, two OpenMP threads competing with other
    processes made the flow-net test ~10x slower (measured 1 s vs 0.09 s per training step).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
