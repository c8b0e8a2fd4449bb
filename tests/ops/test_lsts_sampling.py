"""Tests of ops/lsts_sampling.py and ops/cuda/lsts_sampling.cu (LSTS learnable sampling).

Layers: hand-computed tiny cases (every implementation), fast CPU path and shim kernels == reference
(float64, seeds, locations outside the map, non-contiguous, empty batch, H = 1), gradcheck of the fast
path and of the kernel Functions through the shim (locations included), NVRTC with 0 spills, an
AddressSanitizer run of the kernels, CuPy on a GPU (skipped with a reason without one), bad input.
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ops import _kernels
from ops.lsts_sampling import (
    LSTSSampling,
    bilinear_mixing,
    gaussian_locations,
    grid_locations,
    lsts_aggregate,
    lsts_aggregate_reference,
    lsts_aggregate_with_backend,
)

lsts_module = importlib.import_module("ops.lsts_sampling")
REPO_ROOT = Path(__file__).resolve().parents[2]
NORMALIZATIONS = ["sum", "softmax"]
ALL_IMPLS = ["reference", "fast", "shim"]


def _run(implementation, query, key, value, locations, **kwargs):
    if implementation == "reference":
        return lsts_aggregate_reference(query, key, value, locations, **kwargs)
    if implementation == "fast":
        return lsts_aggregate(query, key, value, locations, impl="fast", **kwargs)
    if implementation == "shim":
        return lsts_aggregate_with_backend(query, key, value, locations, backend="shim", **kwargs)
    raise AssertionError(implementation)


def _inputs(seed, *, batch=2, channels=3, value_channels=4, height=5, width=6, num_locations=7, spread=2.0,
            dtype=torch.float64, requires_grad=False):
    """Positive query/key (ReLU'd embeddings in LSTS, so "sum" is well defined), signed value, and
    fractional locations of the given spread (some fall outside the map)."""
    generator = torch.Generator().manual_seed(seed)
    query = torch.rand(batch, channels, height, width, generator=generator, dtype=dtype) + 0.1
    key = torch.rand(batch, channels, height, width, generator=generator, dtype=dtype) + 0.1
    value = torch.randn(batch, value_channels, height, width, generator=generator, dtype=dtype)
    locations = torch.randn(num_locations, 2, generator=generator, dtype=dtype) * spread
    return tuple(t.requires_grad_(requires_grad) for t in (query, key, value, locations))


# ----------------------------------------------------------------------------------------------------
# (a) hand-computed cases
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", ALL_IMPLS)
def test_hand_computed_5x5_sum(implementation):
    # query = key = 1 (C = 1), value(y, x) = 5y + x, locations (0, +0.5) and (+0.25, 0).
    ones = torch.ones(1, 1, 5, 5, dtype=torch.float64)
    value = torch.arange(25, dtype=torch.float64).view(1, 1, 5, 5)
    locations = torch.tensor([[0.0, 0.5], [0.25, 0.0]], dtype=torch.float64)
    out, weights = _run(implementation, ones, ones, value, locations, normalize="sum")
    # (2, 2): both samples inside: s = (1, 1), S = (1/2, 1/2); values 12.5 and 12 + 0.25 * 5 = 13.25
    torch.testing.assert_close(weights[0, :, 2, 2], torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert out[0, 0, 2, 2].item() == pytest.approx((12.5 + 13.25) / 2)
    # (2, 4): x = 4.5 is half outside: key sample 0.5, value sample 0.5 * 14 = 7; the other 15.25
    torch.testing.assert_close(weights[0, :, 2, 4], torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
    assert out[0, 0, 2, 4].item() == pytest.approx(7 / 3 + 2 * 15.25 / 3)
    # (4, 2): y = 4.25 is a quarter outside: key 0.75, value 0.75 * 22 = 16.5; the other 22.5
    assert out[0, 0, 4, 2].item() == pytest.approx((22.5 + 0.75 * 16.5) / 1.75)


@pytest.mark.parametrize("implementation", ALL_IMPLS)
def test_hand_computed_5x5_softmax(implementation):
    ones = torch.ones(1, 1, 5, 5, dtype=torch.float64)
    value = torch.arange(25, dtype=torch.float64).view(1, 1, 5, 5)
    locations = torch.tensor([[0.0, 0.5], [0.25, 0.0]], dtype=torch.float64)
    out, weights = _run(implementation, ones, ones, value, locations, normalize="softmax")
    first = math.exp(0.5) / (math.exp(0.5) + math.e)  # position (2, 4): scores (0.5, 1)
    torch.testing.assert_close(weights[0, :, 2, 4], torch.tensor([first, 1 - first], dtype=torch.float64))
    assert out[0, 0, 2, 4].item() == pytest.approx(first * 7 + (1 - first) * 15.25)


@pytest.mark.parametrize("implementation", ALL_IMPLS)
def test_integer_location_is_a_zero_padded_shift_in_dy_dx_order(implementation):
    ones = torch.ones(1, 2, 4, 5, dtype=torch.float64)
    value = torch.randn(1, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    locations = torch.tensor([[1.0, -2.0]], dtype=torch.float64)  # dy = +1 row, dx = -2 columns
    out, weights = _run(implementation, ones, ones, value, locations, normalize="sum")
    expected = torch.zeros_like(value)
    expected[:, :, 0:3, 2:5] = value[:, :, 1:4, 0:3]  # out(y, x) = value(y + 1, x - 2)
    torch.testing.assert_close(out, expected)
    # outside the map the only score is 0: the eps guard yields weight 0, not NaN
    assert torch.isfinite(weights).all() and weights[0, 0, 3, 0].item() == 0.0


def test_bilinear_mixing_hand_computed():
    locations = torch.tensor([[0.25, -1.5], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    displacements, mixing = bilinear_mixing(locations)
    table = {tuple(row): column for column, row in enumerate(displacements.tolist())}
    assert set(table) == {(0, -2), (0, -1), (1, -2), (1, -1), (0, 1), (0, 2), (1, 1), (1, 2)}
    first = {(0, -2): 0.75 * 0.5, (0, -1): 0.75 * 0.5, (1, -2): 0.25 * 0.5, (1, -1): 0.25 * 0.5}
    for corner, weight in first.items():
        assert mixing[0, table[corner]].item() == pytest.approx(weight)
    assert mixing[1, table[(0, 1)]].item() == 1.0 and mixing[1].sum().item() == pytest.approx(1.0)
    # d/d(dy) of the first row's mix: -(1 - fx), -fx, (1 - fx), fx at the four corners
    mixing[0, table[(1, -1)]].backward()
    torch.testing.assert_close(locations.grad, torch.tensor([[0.5, 0.25], [0.0, 0.0]], dtype=torch.float64))


def test_initial_locations():
    grid = grid_locations(9)
    assert grid.shape == (81, 2)
    assert grid[0].tolist() == [-4.0, -4.0] and grid[40].tolist() == [0.0, 0.0]
    assert grid[80].tolist() == [4.0, 4.0]
    assert grid[1].tolist() == [-4.0, -3.0]  # row-major: dx varies fastest
    gaussian = gaussian_locations(500, std=2.0, generator=torch.Generator().manual_seed(0))
    assert gaussian.shape == (500, 2) and 1.7 < gaussian.std().item() < 2.3


# ----------------------------------------------------------------------------------------------------
# (b, c) fast path and shim kernels == reference; gradcheck
# ----------------------------------------------------------------------------------------------------
def _forward_and_grads(implementation, inputs, **kwargs):
    out, weights = _run(implementation, *inputs, **kwargs)
    generator = torch.Generator().manual_seed(99)
    upstream_out = torch.randn(out.shape, dtype=out.dtype, generator=generator)
    upstream_weights = torch.randn(weights.shape, dtype=weights.dtype, generator=generator)
    grads = torch.autograd.grad((out, weights), inputs, (upstream_out, upstream_weights))
    return (out, weights), grads


def _assert_same(implementation, inputs, reference_inputs=None, **kwargs):
    expected, expected_grads = _forward_and_grads("reference", reference_inputs or inputs, **kwargs)
    actual, grads = _forward_and_grads(implementation, inputs, **kwargs)
    for name, value, expected_value in zip(("output", "weights"), actual, expected, strict=True):
        torch.testing.assert_close(value, expected_value, msg=lambda m, name=name: f"{name}: {m}")
    names = ("query", "key", "value", "locations")
    for name, grad, expected_grad in zip(names, grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, msg=lambda m, name=name: f"grad {name}: {m}")


SHAPES = [  # (batch, height, width, num_locations, spread)
    (2, 5, 6, 7, 2.0),
    (1, 1, 6, 4, 1.5),  # a single row: every dy != 0 samples (partly) outside
    (2, 4, 4, 3, 6.0),  # locations mostly outside the map
    (1, 3, 5, 1, 0.7),  # K = 1
]


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"n{s[0]}_{s[1]}x{s[2]}_k{s[3]}_spread{s[4]}")
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("implementation", ["fast", "shim"])
def test_matches_reference_forward_and_backward(implementation, seed, shape, normalize):
    batch, height, width, num_locations, spread = shape
    inputs = _inputs(seed, batch=batch, height=height, width=width, num_locations=num_locations,
                     spread=spread, requires_grad=True)
    _assert_same(implementation, inputs, normalize=normalize)


@pytest.mark.parametrize("implementation", ["fast", "shim"])
def test_nine_by_nine_grid_with_fractional_drift(implementation):
    # LSTS's 81 locations after some training: a 9x9 grid moved by fractional amounts; batch 2 x 81
    # locations x 6x7 > 256 shim threads, so the grid-stride loops run too.
    inputs = list(_inputs(4, channels=2, value_channels=3, height=6, width=7))
    drift = torch.rand(81, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 0.5
    inputs[3] = grid_locations(9, dtype=torch.float64) + drift
    _assert_same(implementation, tuple(t.requires_grad_() for t in inputs), normalize="softmax")


@pytest.mark.parametrize("implementation", ["fast", "shim"])
def test_non_contiguous_inputs(implementation):
    query, key, value, locations = _inputs(5, height=6, width=5)
    strided = (
        query.transpose(2, 3).contiguous().transpose(2, 3),
        key.to(memory_format=torch.channels_last),
        torch.stack([value, -value], dim=2)[:, :, 0],  # every other plane of a bigger buffer
        torch.stack([locations, -locations], dim=0)[0].t().contiguous().t(),
    )
    assert not any(t.is_contiguous() for t in strided)
    contiguous = tuple(t.clone().requires_grad_() for t in (query, key, value, locations))
    _assert_same(implementation, tuple(t.requires_grad_() for t in strided), contiguous, normalize="sum")


@pytest.mark.parametrize("implementation", ALL_IMPLS)
def test_empty_batch(implementation):
    inputs = _inputs(0, batch=0, requires_grad=True)
    out, weights = _run(implementation, *inputs, normalize="softmax")
    assert out.shape == (0, 4, 5, 6) and weights.shape == (0, 7, 5, 6)
    (out.sum() + weights.sum()).backward()
    assert inputs[3].grad is not None and torch.equal(inputs[3].grad, torch.zeros(7, 2, dtype=torch.float64))


def _gradcheck(implementation, normalize, seed):
    inputs = _inputs(seed, batch=1, channels=2, value_channels=1, height=3, width=3, num_locations=3,
                     spread=1.5, requires_grad=True)
    return torch.autograd.gradcheck(
        lambda *args: _run(implementation, *args, normalize=normalize), inputs, atol=1e-6
    )


@pytest.mark.parametrize(("normalize", "seed"), [("sum", 0), ("sum", 1), ("softmax", 0)])
def test_gradcheck_fast_path(normalize, seed):
    assert _gradcheck("fast", normalize, seed)


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_gradcheck_kernel_functions_through_shim(normalize):
    assert _gradcheck("shim", normalize, 2)


def test_shim_kernels_in_float32_match_reference():
    inputs = _inputs(3, dtype=torch.float32)
    for actual, expected in zip(_run("shim", *inputs), _run("reference", *inputs), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


_ASAN_SCRIPT = """
import torch
from ops import _kernels
from ops.lsts_sampling import bilinear_mixing
from ops.matchtrans import displacement_aggregation, displacement_correlation
torch.manual_seed(0)
query, key, value = (torch.rand(2, 3, 4, 5, dtype=torch.float64) for _ in range(3))
# corners beyond every edge of the 4x5 map, one location entirely outside
locations = torch.tensor([[0.5, -4.5], [3.9, 4.2], [-0.3, 0.6], [-9.0, 1.0]], dtype=torch.float64)
weights = torch.rand(2, 4, 4, 5, dtype=torch.float64)
dot = torch.empty(2, 4, 4, 5, dtype=torch.float64)
aggregate = torch.empty(2, 3, 4, 5, dtype=torch.float64)
grad_source = torch.zeros(2, 3, 4, 5, dtype=torch.float64)
partial = torch.empty(2, 4, 4, 5, 2, dtype=torch.float64)
sizes = (2, 3, 4, 5, 4)
for name, tensors in [("lsts_sample_dot", (query, key, locations, dot)),
                      ("lsts_sample_aggregate", (weights, value, locations, aggregate)),
                      ("lsts_sample_scatter", (weights, query, key, locations, grad_source, partial))]:
    _kernels.shim_launch("lsts_sampling", name, torch.float64, 3, 64, (*tensors, *sizes), sanitize="address")
displacements, mixing = bilinear_mixing(locations)
expected_dot = torch.einsum("kd,ndhw->nkhw", mixing, displacement_correlation(query, key, displacements))
expected_aggregate = displacement_aggregation(torch.einsum("kd,nkhw->ndhw", mixing, weights), value,
                                              displacements)
print("kernels ran:", torch.allclose(dot, expected_dot) and torch.allclose(aggregate, expected_aggregate),
      flush=True)
"""


def test_address_sanitizer_finds_no_out_of_bounds_access_with_locations_outside_the_map(tmp_path):
    query = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True)
    libasan = query.stdout.strip()
    if not os.path.isabs(libasan):
        pytest.skip("g++ has no libasan.so on this machine")
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0", PYTHONPATH=str(REPO_ROOT),
               CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", _ASAN_SCRIPT], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert "AddressSanitizer" not in result.stderr, result.stderr[-3000:]
    assert "kernels ran: True" in result.stdout, result.stderr[-3000:]


# ----------------------------------------------------------------------------------------------------
# (d) NVRTC; (e) CuPy on a GPU
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float", "double"])
@pytest.mark.parametrize("arch", ["sm_75", "sm_90"])
def test_nvrtc_compiles_every_kernel_without_spills(nvrtc_or_skip, arch, dtype):
    result = _kernels.nvrtc_compile("lsts_sampling", arch=arch, dtype=dtype)
    names = _kernels.kernel_names("lsts_sampling")
    assert set(names) == {"lsts_sample_dot", "lsts_sample_aggregate", "lsts_sample_scatter"}
    assert result.cubin
    assert set(result.spill_bytes) == set(names), result.log
    assert all(spill == 0 for spill in result.spill_bytes.values()), result.spill_bytes


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_cupy_kernels_match_reference_on_gpu(dtype, normalize):
    inputs = tuple(t.cuda().requires_grad_() for t in _inputs(0, channels=8, value_channels=6, height=9,
                                                               width=11, num_locations=81, dtype=dtype))
    assert _kernels.select_impl("auto", inputs[0]) == "cupy"
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    out, weights = lsts_aggregate(*inputs, normalize=normalize)  # auto -> cupy
    expected_out, expected_weights = lsts_aggregate_reference(*inputs, normalize=normalize)
    torch.testing.assert_close(out, expected_out, **tolerance)
    torch.testing.assert_close(weights, expected_weights, **tolerance)
    grads = torch.autograd.grad(out.sum() + weights.square().sum(), inputs)
    expected_grads = torch.autograd.grad(expected_out.sum() + expected_weights.square().sum(), inputs)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, **tolerance)


# ----------------------------------------------------------------------------------------------------
# (f) bad input, dispatch, Module
# ----------------------------------------------------------------------------------------------------
def test_bad_input_raises_naming_the_culprit():
    query, key, value, locations = _inputs(0)
    cases = [
        (dict(query=query[0]), "query must be 4-D"),
        (dict(key=key[..., :5]), "key has batch/spatial size"),
        (dict(value=value[:1]), "value has batch/spatial size"),
        (dict(key=key[:, :2]), "query and key must have the same channels"),
        (dict(locations=locations[:, :1]), "locations must be a Tensor\\[K, 2\\]"),
        (dict(locations=locations[:0]), "at least one"),
        (dict(locations=locations.float()), "locations .*must match query"),
        (dict(locations=torch.full((2, 2), float("nan"), dtype=torch.float64)), "finite"),
        (dict(normalize="max"), "normalize"),
        (dict(impl="gpu"), "impl"),
    ]
    for override, message in cases:
        arguments = dict(query=query, key=key, value=value, locations=locations, normalize="sum", impl="fast")
        arguments.update(override)
        with pytest.raises(ValueError, match=message):
            lsts_aggregate(**arguments)


def test_kill_switch_forces_reference(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return torch.zeros(()), torch.zeros(())

    monkeypatch.setattr(lsts_module, "lsts_aggregate_reference", spy)
    lsts_aggregate(*_inputs(0), impl="fast")
    assert calls == []
    monkeypatch.setenv(_kernels.REFERENCE_ENV_VAR, "1")
    lsts_aggregate(*_inputs(0), normalize="softmax", impl="fast")
    assert calls == [dict(normalize="softmax", eps=lsts_module.DEFAULT_EPS)]


def test_module_learns_its_locations():
    initial = grid_locations(3, dtype=torch.float64) + 0.3
    module = LSTSSampling(initial, normalize="softmax", impl="fast").double()
    query, key, value, _ = _inputs(6)
    out, weights = module(query, key, value)
    expected_out, expected_weights = lsts_aggregate_reference(query, key, value, initial, normalize="softmax")
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(weights, expected_weights)
    out.square().sum().backward()
    assert module.locations.grad is not None and module.locations.grad.abs().sum() > 0
    assert "num_locations=9" in repr(module)
    with pytest.raises(ValueError, match="locations must be a Tensor\\[K, 2\\]"):
        LSTSSampling(torch.zeros(4, 3))
