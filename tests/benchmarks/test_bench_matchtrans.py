"""Benchmark: MatchTrans fast path vs the ``F.unfold`` formulation (STMN's k = 2, a 5x5 vicinity), float32.

Target (reports/bench.py): fwd+bwd >= 2x faster than unfold AND peak memory <= 1/4 of unfold's (the
unfold materialises, and autograd keeps, key and value 25 times over). Every case checks its result
(output and, with backward, the three gradients) against the baseline's. Run: see conftest.py.
"""

from __future__ import annotations

import functools

import pytest
import torch

from ops.matchtrans import matchtrans, matchtrans_unfold

OP = "matchtrans"
RADIUS = 2  # STMN's k
SHAPES = {"detector-2x64x16x16": (2, 64, 16, 16), "2x64x32x32": (2, 64, 32, 32)}  # (N, C, H, W)
IMPLEMENTATIONS = {
    "vodbench": lambda query, key, value: matchtrans(query, key, value, k=RADIUS, normalize="sum"),
    "baseline": lambda query, key, value: matchtrans_unfold(query, key, value, k=RADIUS, normalize="sum"),
}


@functools.cache
def make_inputs(shape_name):
    """(query, key, value) and the upstream gradient; positive embeddings (ReLU'd in STMN) keep the
    "sum" normalisation well conditioned."""
    shape = SHAPES[shape_name]
    generator = torch.Generator().manual_seed(0)
    query = torch.rand(shape, generator=generator)
    key = torch.rand(shape, generator=generator)
    value = torch.randn(shape, generator=generator)
    return (query, key, value), torch.randn(shape, generator=generator)


def forward_backward(function, inputs, upstream):
    leaves = [tensor.detach().requires_grad_() for tensor in inputs]
    output = function(*leaves)
    return [output.detach(), *torch.autograd.grad(output, leaves, grad_outputs=upstream)]


@functools.cache
def baseline_results(shape_name):
    """The unfold's output and gradients, computed once per shape (it is the slow side)."""
    inputs, upstream = make_inputs(shape_name)
    return forward_backward(IMPLEMENTATIONS["baseline"], inputs, upstream)


@pytest.mark.parametrize("pass_", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_bench_matchtrans(timed, record_benchmark, shape_name, impl, pass_):
    inputs, upstream = make_inputs(shape_name)
    function = IMPLEMENTATIONS[impl]
    if pass_ == "fwd":

        def run():
            with torch.no_grad():
                return [function(*inputs)]
    else:

        def run():
            return forward_backward(function, inputs, upstream)

    record_benchmark(op=OP, shape=shape_name, pass_=pass_, impl=impl, peak_of=run)
    results = timed(run)
    names = ["output", "query", "key", "value"]
    # strict=False: the forward pass returns the output only
    for name, ours, theirs in zip(names, results, baseline_results(shape_name), strict=False):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4,
                                   msg=lambda message, name=name: f"{name}: {message}")


def test_fast_path_peak_memory_is_under_a_quarter_of_unfold(measure_peak_bytes):
    inputs, upstream = make_inputs("detector-2x64x16x16")
    ours = measure_peak_bytes(lambda: forward_backward(IMPLEMENTATIONS["vodbench"], inputs, upstream))
    unfold = measure_peak_bytes(lambda: forward_backward(IMPLEMENTATIONS["baseline"], inputs, upstream))
    # The unfold holds 25 shifted copies of key and of value (2 x 2*64*25*256*4 B = 6.6 MB) at once.
    assert unfold >= 2 * (2 * 64 * 25 * 256 * 4)
    assert ours <= unfold / 4
