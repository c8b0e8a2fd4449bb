"""Benchmark: LSTS sampling fast path vs one ``grid_sample`` per sampling location (K = 81), float32.

Target (reports/bench.py): fwd+bwd >= 3x faster than the baseline, which is
:func:`ops.lsts_sampling.lsts_aggregate_reference`: a grid_sample of key and one of value per location,
plain autograd, i.e. LSTS as usually written in PyTorch. Every case checks its result (output, weights
and, with backward, the gradients of query, key, value and locations) against the baseline's.
Run: see conftest.py.
"""

from __future__ import annotations

import functools

import pytest
import torch

from ops.lsts_sampling import grid_locations, lsts_aggregate, lsts_aggregate_reference

OP = "lsts_sampling"
SHAPES = {"detector-2x64x16x16": (2, 64, 16, 16), "2x64x32x32": (2, 64, 32, 32)}  # (N, C, H, W)
GRID_SIDE = 9  # 9x9 = 81 locations, as in the official LSTS code
IMPLEMENTATIONS = {
    "vodbench": lambda query, key, value, locations: lsts_aggregate(query, key, value, locations),
    "baseline": lambda query, key, value, locations: lsts_aggregate_reference(query, key, value, locations),
}


@functools.cache
def make_inputs(shape_name):
    """(query, key, value, locations) and the upstream gradient of the output.

    Positive embeddings (ReLU'd in LSTS) keep the paper's "sum" normalisation well conditioned; the
    locations look trained: the 9x9 grid drifted by fractional amounts in (-0.5, 0.5).
    """
    shape = SHAPES[shape_name]
    generator = torch.Generator().manual_seed(0)
    query = torch.rand(shape, generator=generator)
    key = torch.rand(shape, generator=generator)
    value = torch.randn(shape, generator=generator)
    drift = torch.rand(GRID_SIDE * GRID_SIDE, 2, generator=generator) - 0.5
    locations = grid_locations(GRID_SIDE) + drift
    return (query, key, value, locations), torch.randn(shape, generator=generator)


def forward_backward(function, inputs, upstream):
    leaves = [tensor.detach().requires_grad_() for tensor in inputs]
    output, weights = function(*leaves)
    return [output.detach(), weights.detach(), *torch.autograd.grad(output, leaves, grad_outputs=upstream)]


@functools.cache
def baseline_results(shape_name):
    """The baseline's outputs and gradients, computed once per shape (it is the slow side)."""
    inputs, upstream = make_inputs(shape_name)
    return forward_backward(IMPLEMENTATIONS["baseline"], inputs, upstream)


@pytest.mark.parametrize("pass_", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_bench_lsts_sampling(timed, record_benchmark, shape_name, impl, pass_):
    inputs, upstream = make_inputs(shape_name)
    function = IMPLEMENTATIONS[impl]
    if pass_ == "fwd":

        def run():
            with torch.no_grad():
                return list(function(*inputs))
    else:

        def run():
            return forward_backward(function, inputs, upstream)

    record_benchmark(op=OP, shape=shape_name, pass_=pass_, impl=impl, peak_of=run)
    results = timed(run)
    names = ["output", "weights", "query", "key", "value", "locations"]
    # strict=False: the forward pass returns output and weights only. float32, and the location
    # gradient sums N*H*W*C terms in a different order than the baseline: hence 1e-3.
    for name, ours, theirs in zip(names, results, baseline_results(shape_name), strict=False):
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3,
                                   msg=lambda message, name=name: f"{name}: {message}")
