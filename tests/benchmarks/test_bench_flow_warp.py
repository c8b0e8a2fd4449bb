"""Benchmark: vodbench flow_warp vs the plain grid_sample call most VOD code writes (FGFA/DFF style).

Features (N, 64, H, W) float32, flow of a few pixels, zeros padding. No speed target: the fast path IS a
grid_sample call, so this guards against the wrapper adding overhead. Results checked against the baseline.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from ops.flow_warp import flow_warp

SHAPES = {"detector-2x64x16x16": (2, 64, 16, 16), "2x64x32x32": (2, 64, 32, 32)}


def grid_sample_warp(features, flow):
    """The usual hand-written warp: pixel grid + flow, normalised for align_corners=True."""
    _, _, height, width = features.shape
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=features.dtype), torch.arange(width, dtype=features.dtype), indexing="ij"
    )
    grid_x = 2 * (cols + flow[:, 0]) / (width - 1) - 1
    grid_y = 2 * (rows + flow[:, 1]) / (height - 1) - 1
    return F.grid_sample(
        features,
        torch.stack((grid_x, grid_y), dim=-1),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )


IMPLEMENTATIONS = {"vodbench": lambda features, flow: flow_warp(features, flow), "baseline": grid_sample_warp}


@functools.cache
def make_inputs(shape_name):
    batch, channels, height, width = SHAPES[shape_name]
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(batch, channels, height, width, generator=generator)
    flow = torch.randn(batch, 2, height, width, generator=generator) * 3
    return (features, flow), torch.randn(batch, channels, height, width, generator=generator)


def forward_backward(warp, inputs, upstream):
    leaves = [tensor.detach().requires_grad_() for tensor in inputs]
    output = warp(*leaves)
    return [output.detach(), *torch.autograd.grad(output, leaves, grad_outputs=upstream)]


@pytest.mark.parametrize("pass_", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_bench_flow_warp(timed, record_benchmark, shape_name, impl, pass_):
    inputs, upstream = make_inputs(shape_name)
    warp = IMPLEMENTATIONS[impl]
    if pass_ == "fwd":

        def run():
            with torch.no_grad():
                return [warp(*inputs)]
    else:

        def run():
            return forward_backward(warp, inputs, upstream)

    record_benchmark(op="flow_warp", shape=shape_name, pass_=pass_, impl=impl, peak_of=run)
    results = timed(run)
    expected = forward_backward(grid_sample_warp, inputs, upstream)
    for name, ours, theirs in zip(["output", "features", "flow"], results, expected, strict=False):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item(), msg=name)
