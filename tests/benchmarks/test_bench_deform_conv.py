"""Benchmark: vodbench deform_conv2d vs torchvision.ops.deform_conv2d on CPU (target fwd+bwd >= 5x).

DCNv1 (no mask, as STSN uses it), 3x3 kernel, padding 1, C_in = C_out = 64, float32, offsets of a few
pixels. Each benchmark also checks its output (and gradients) against torchvision's.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision

from ops.deform_conv import deform_conv2d

SHAPES = {"detector-2x64x16x16": (2, 64, 16, 16), "2x64x32x32": (2, 64, 32, 32)}
IMPLEMENTATIONS = {
    "vodbench": lambda input, offset, weight, bias: deform_conv2d(input, offset, weight, bias, padding=1),
    "baseline": lambda input, offset, weight, bias: torchvision.ops.deform_conv2d(
        input, offset, weight, bias, padding=1
    ),
}


@functools.cache
def make_inputs(shape_name):
    """(input, offset, weight, bias) and the upstream gradient for one shape, fixed seed."""
    batch, channels, height, width = SHAPES[shape_name]
    generator = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(batch, channels, height, width, generator=generator),
        torch.randn(batch, 18, height, width, generator=generator) * 2,
        torch.randn(channels, channels, 3, 3, generator=generator) / 24,
        torch.randn(channels, generator=generator),
    )
    return inputs, torch.randn(batch, channels, height, width, generator=generator)


def forward_backward(convolution, inputs, upstream):
    """Output and gradients of (output * upstream).sum() w.r.t. every input."""
    leaves = [tensor.detach().requires_grad_() for tensor in inputs]
    output = convolution(*leaves)
    return [output.detach(), *torch.autograd.grad(output, leaves, grad_outputs=upstream)]


@functools.cache
def baseline_results(shape_name):
    inputs, upstream = make_inputs(shape_name)
    return forward_backward(IMPLEMENTATIONS["baseline"], inputs, upstream)


@pytest.mark.parametrize("pass_", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_bench_deform_conv(timed, record_benchmark, shape_name, impl, pass_):
    inputs, upstream = make_inputs(shape_name)
    convolution = IMPLEMENTATIONS[impl]
    if pass_ == "fwd":

        def run():
            with torch.no_grad():
                return [convolution(*inputs)]
    else:

        def run():
            return forward_backward(convolution, inputs, upstream)

    record_benchmark(op="deform_conv", shape=shape_name, pass_=pass_, impl=impl, peak_of=run)
    results = timed(run)
    expected = baseline_results(shape_name)
    for name, ours, theirs in zip(
        ["output", "input", "offset", "weight", "bias"], results, expected, strict=False
    ):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-3 * theirs.abs().max().item(), msg=name)


def test_peak_cpu_bytes_follows_live_tensors(measure_peak_bytes):
    """Guards the benchmarks' memory helper: 2 live 4 MB tensors at most, one freed before the third."""

    def allocate():
        first = torch.empty(1_000_000)
        second = torch.empty(1_000_000)
        del first
        third = torch.empty(1_000_000)
        return second, third

    assert measure_peak_bytes(allocate) == 8_000_000
