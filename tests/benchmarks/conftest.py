"""Shared helpers of the op benchmarks (pytest-benchmark).

Every benchmark is an ordinary test: it times one implementation, checks that its result equals the
baseline's, and labels itself with ``record_benchmark`` so that ``python -m reports.bench`` can pair
"vodbench" and "baseline" rows of the same group ``<op>:<shape>:<fwd|fwdbwd>``.

Run them with timing on (they are disabled by ``--benchmark-disable`` in the normal test run, where each
body runs once as a plain test):

    .venv/bin/python -m pytest tests/benchmarks --benchmark-enable --benchmark-json=bench.json
    .venv/bin/python -m reports.bench bench.json --out reports/bench

(prefix ``VODBENCH_BENCH_THREADS=1`` on a machine shared with other jobs).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from ops import _kernels

ROUNDS = 10  # timed rounds per benchmark (after one warm-up round)
# On a shared machine, torch's intra-op threads spin against other processes and timings explode;
# VODBENCH_BENCH_THREADS=1 pins both sides of every comparison to one thread (recorded in extra_info).
THREADS_ENV_VAR = "VODBENCH_BENCH_THREADS"


@pytest.fixture(autouse=True)
def _bench_threads():
    requested = os.environ.get(THREADS_ENV_VAR)
    if not requested:
        yield
        return
    if not requested.isdigit() or int(requested) < 1:
        raise ValueError(f"{THREADS_ENV_VAR} must be a positive integer, got {requested!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(int(requested))
    yield
    torch.set_num_threads(previous)


def pytest_runtest_setup(item):
    if item.get_closest_marker("cuda") is not None and not _kernels.cuda_available():
        pytest.skip("needs a CUDA device and cupy (torch.cuda.is_available() is False or cupy missing)")


def peak_cpu_bytes(function: Callable[[], object]) -> int:
    """Peak bytes of CPU tensor memory allocated while ``function`` runs (0 = nothing beyond the start).

    From the torch profiler's memory events (``profile_memory=True``): each op's own net allocation and
    each free outside an op, in time order; the peak of the running sum. Temporary buffers allocated and
    freed inside a single op are not seen, so this is a lower bound of the true peak.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    changes = sorted(
        (event.time_range.start, event.self_cpu_memory_usage)
        for event in profiler.events()
        if event.self_cpu_memory_usage
    )
    running = peak = 0
    for _, change in changes:
        running += change
        peak = max(peak, running)
    return peak


@pytest.fixture
def measure_peak_bytes() -> Callable[[Callable[[], object]], int]:
    """``measure_peak_bytes(function) -> int``: see :func:`peak_cpu_bytes`."""
    return peak_cpu_bytes


@pytest.fixture
def record_benchmark(benchmark):
    """``record_benchmark(*, op, shape, pass_, impl, peak_of=None)`` labels the current benchmark.

    With ``peak_of`` (the benchmarked callable) and timing enabled, it also stores
    ``extra_info["peak_bytes"] = peak_cpu_bytes(peak_of)``; with ``--benchmark-disable`` the profiling
    run is skipped (nothing is saved then) to keep the normal test run short.
    """

    def record(
        *, op: str, shape: str, pass_: str, impl: str, peak_of: Callable[[], object] | None = None
    ) -> None:
        if impl not in ("vodbench", "baseline") or pass_ not in ("fwd", "fwdbwd"):
            raise ValueError(f"impl must be vodbench|baseline and pass_ fwd|fwdbwd, got {impl!r}, {pass_!r}")
        benchmark.group = f"{op}:{shape}:{pass_}"
        benchmark.extra_info.update(
            impl=impl,
            op=op,
            shape=shape,
            pass_=pass_,
            torch_threads=torch.get_num_threads(),
            machine=platform.processor() or platform.machine(),
        )
        if peak_of is not None and not benchmark.disabled:
            benchmark.extra_info["peak_bytes"] = peak_cpu_bytes(peak_of)

    return record


@pytest.fixture
def timed(benchmark) -> Callable[[Callable[[], object]], object]:
    """``timed(function) -> result``: time ``function`` (ROUNDS rounds after one warm-up) and return its
    last result. With ``--benchmark-disable`` it simply runs once."""

    def run(function: Callable[[], object]) -> object:
        return benchmark.pedantic(function, rounds=ROUNDS, warmup_rounds=1, iterations=1)

    return run
