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
import time
from collections.abc import Callable, Sequence

import numpy as np
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


# --- training-step benchmarks (test_bench_train.py) ------------------------------------------------

MATMUL_SIZE = 2048  # the dense-matmul reference: (2048, 2048) @ (2048, 2048) float32


def time_dense_matmul(*, size: int = MATMUL_SIZE, repeats: int = 5) -> list[float]:
    """Seconds of ``repeats`` float32 ``(size, size) @ (size, size)`` matmuls (after one untimed call),
    at the current ``torch.get_num_threads()``. FLOPs of one: ``2 * size**3``."""
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator)
    right = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    torch.mm(left, right, out=out)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(left, right, out=out)
        seconds.append(time.perf_counter() - started)
    return seconds


def spread(values: Sequence[float]) -> dict[str, float]:
    """``median``, ``q1``, ``q3`` (quartiles), ``min``, ``max`` and ``n`` of ``values``."""
    if not values:
        raise ValueError("spread of an empty sequence")
    q1, median, q3 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return dict(
        median=float(median), q1=float(q1), q3=float(q3), min=min(values), max=max(values), n=len(values)
    )


@pytest.fixture(scope="session")
def matmul_reference() -> dict[str, float]:
    """This machine's dense-matmul GFLOP/s, measured once per session at the default thread count:
    ``gflops`` (median of 10), ``gflops_q1``/``gflops_q3`` (quartiles), ``threads``, ``size``."""
    seconds = time_dense_matmul(repeats=10)
    flops = 2 * MATMUL_SIZE**3
    timing = spread(seconds)
    return dict(
        gflops=flops / timing["median"] / 1e9,
        gflops_q1=flops / timing["q3"] / 1e9,  # the slower quartile of the time is the lower rate
        gflops_q3=flops / timing["q1"] / 1e9,
        threads=torch.get_num_threads(),
        size=MATMUL_SIZE,
    )


_SUMMARY_LINES = pytest.StashKey[list[str]]()


@pytest.fixture
def bench_summary(request) -> Callable[[str], None]:
    """``bench_summary(line)``: print ``line`` in the terminal summary (a test's own stdout is captured).
    Under pytest-xdist the lines stay in the worker; ``nox -s bench`` runs without xdist."""
    return request.config.stash.setdefault(_SUMMARY_LINES, []).append


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = config.stash.get(_SUMMARY_LINES, [])
    if lines:
        terminalreporter.section("training-step benchmarks (tests/benchmarks/test_bench_train.py)")
        for line in lines:
            terminalreporter.write_line(line)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, as ``lscpu`` shows it), else ``platform.processor()``."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
