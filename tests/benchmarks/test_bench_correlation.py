"""Benchmark: vodbench correlation vs the unfold formulation (FlowNet-style cost volume, d = 2, 25
displacements), float32. Checks results against the baseline and records peak memory (the unfold
materialises a (N, C * 25, H * W) tensor)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from ops.correlation import correlation

SHAPES = {"detector-2x64x16x16": (2, 64, 16, 16), "2x64x32x32": (2, 64, 32, 32)}
MAX_DISPLACEMENT = 2


def correlation_unfold(a, b, max_displacement, stride=1):
    """Baseline: unfold b into every displaced copy, multiply by a, mean over channels."""
    batch, channels, height, width = a.shape
    side = 2 * max_displacement // stride + 1
    # (N, C * D * D, H * W): kernel D with dilation `stride` spans exactly 2 d + 1 pixels.
    columns = F.unfold(b, kernel_size=side, dilation=stride, padding=max_displacement)
    columns = columns.view(batch, channels, side * side, height, width)
    return (a.unsqueeze(2) * columns).mean(dim=1)  # (N, D * D, H, W)


IMPLEMENTATIONS = {
    "vodbench": lambda a, b: correlation(a, b, MAX_DISPLACEMENT),
    "baseline": lambda a, b: correlation_unfold(a, b, MAX_DISPLACEMENT),
}


@functools.cache
def make_inputs(shape_name):
    batch, channels, height, width = SHAPES[shape_name]
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(batch, channels, height, width, generator=generator)
    b = torch.randn(batch, channels, height, width, generator=generator)
    side = 2 * MAX_DISPLACEMENT + 1
    return (a, b), torch.randn(batch, side * side, height, width, generator=generator)


def forward_backward(function, inputs, upstream):
    leaves = [tensor.detach().requires_grad_() for tensor in inputs]
    output = function(*leaves)
    return [output.detach(), *torch.autograd.grad(output, leaves, grad_outputs=upstream)]


@pytest.mark.parametrize("pass_", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_bench_correlation(timed, record_benchmark, shape_name, impl, pass_):
    inputs, upstream = make_inputs(shape_name)
    function = IMPLEMENTATIONS[impl]
    if pass_ == "fwd":

        def run():
            with torch.no_grad():
                return [function(*inputs)]
    else:

        def run():
            return forward_backward(function, inputs, upstream)

    record_benchmark(op="correlation", shape=shape_name, pass_=pass_, impl=impl, peak_of=run)
    results = timed(run)
    expected = forward_backward(IMPLEMENTATIONS["baseline"], inputs, upstream)
    for name, ours, theirs in zip(["output", "a", "b"], results, expected, strict=False):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5, msg=name)


def test_fast_path_allocates_less_than_unfold(measure_peak_bytes):
    inputs, upstream = make_inputs("detector-2x64x16x16")
    ours = measure_peak_bytes(lambda: forward_backward(IMPLEMENTATIONS["vodbench"], inputs, upstream))
    unfold = measure_peak_bytes(lambda: forward_backward(IMPLEMENTATIONS["baseline"], inputs, upstream))
    # The unfold holds 25 displaced copies of b (2*64*25*256*4 B = 3.3 MB) at once.
    assert unfold >= 2 * 64 * 25 * 256 * 4
    assert ours < unfold / 4
