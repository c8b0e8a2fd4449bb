"""Tests of ops/matchtrans.py and ops/cuda/matchtrans.cu (STMN's MatchTrans).

Layers: hand-computed tiny cases (for every implementation), fast CPU path == reference == unfold
formulation (float64, seeds, non-contiguous, empty batch, vicinities larger than the map), gradcheck of
the fast path and of the kernel Function run through the CPU shim, NVRTC compile with 0 spill bytes,
CuPy on a GPU (skipped with a reason without one), bad input.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from ops import _kernels
from ops.matchtrans import (
    MatchTrans,
    displacement_aggregation,
    displacement_correlation,
    matchtrans,
    matchtrans_reference,
    matchtrans_unfold,
    matchtrans_with_backend,
    normalize_scores,
    vicinity_displacements,
)

# ``ops/__init__`` re-exports the function ``matchtrans``, which shadows the submodule as an attribute.
matchtrans_module = importlib.import_module("ops.matchtrans")
NORMALIZATIONS = ["sum", "softmax"]


def _run(implementation: str, query, key, value, **kwargs):
    """One entry point per implementation under test."""
    if implementation == "reference":
        return matchtrans_reference(query, key, value, **kwargs)
    if implementation == "unfold":
        return matchtrans_unfold(query, key, value, **kwargs)
    if implementation == "fast":
        return matchtrans(query, key, value, impl="fast", **kwargs)
    if implementation == "shim":
        return matchtrans_with_backend(query, key, value, backend="shim", **kwargs)
    raise AssertionError(implementation)


def _inputs(seed, *, batch=2, channels=3, value_channels=4, height=5, width=6, dtype=torch.float64,
            requires_grad=False):
    """Positive query/key (so "sum" never divides by ~0, as with ReLU'd embeddings) and a signed value."""
    generator = torch.Generator().manual_seed(seed)
    query = torch.rand(batch, channels, height, width, generator=generator, dtype=dtype) + 0.1
    key = torch.rand(batch, channels, height, width, generator=generator, dtype=dtype) + 0.1
    value = torch.randn(batch, value_channels, height, width, generator=generator, dtype=dtype)
    return tuple(t.requires_grad_(requires_grad) for t in (query, key, value))


# ----------------------------------------------------------------------------------------------------
# (a) hand-computed cases, for every implementation
# ----------------------------------------------------------------------------------------------------
ALL_IMPLS = ["reference", "unfold", "fast", "shim"]


@pytest.mark.parametrize("implementation", ALL_IMPLS)
def test_sum_with_constant_features_is_the_mean_over_the_inside_vicinity(implementation):
    # query = key = 1: A = 1 inside the map, 0 outside (zero padding), so "sum" averages value over the
    # inside part of each 3x3 vicinity: a box filter that ignores the padding.
    ones = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    value = torch.arange(9, dtype=torch.float64).view(1, 1, 3, 3)  # [[0 1 2] [3 4 5] [6 7 8]]
    out = _run(implementation, ones, ones, value, k=1, normalize="sum")
    expected = torch.tensor([[2.0, 2.5, 3.0], [3.5, 4.0, 4.5], [5.0, 5.5, 6.0]], dtype=torch.float64)
    torch.testing.assert_close(out[0, 0], expected)


@pytest.mark.parametrize("implementation", ALL_IMPLS)
def test_softmax_gives_padding_cells_their_exp0_share(implementation):
    ones = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    value = torch.arange(9, dtype=torch.float64).view(1, 1, 3, 3)
    out = _run(implementation, ones, ones, value, k=1, normalize="softmax")[0, 0]
    e = math.e
    # corner (0, 0): 4 inside cells {0, 1, 3, 4} with weight e, 5 padding cells with weight 1 and value 0
    assert out[0, 0].item() == pytest.approx(e * (0 + 1 + 3 + 4) / (4 * e + 5))
    # edge (0, 1): 6 inside cells {0..5}, 3 padding cells
    assert out[0, 1].item() == pytest.approx(e * 15 / (6 * e + 3))
    assert out[1, 1].item() == pytest.approx(4.0)  # centre: all 9 inside, plain mean


@pytest.mark.parametrize("implementation", ALL_IMPLS)
def test_dilated_vicinity_copies_the_single_matching_cell(implementation):
    # key is zero except at (2, 2): with k=1, dilation=2 the positions p in {0, 2, 4}^2 have (2, 2) in
    # their vicinity and Gamma is one-hot there ("sum"); everywhere else every affinity is 0 and the
    # eps guard must give exactly 0 (not NaN).
    query = torch.ones(1, 2, 5, 5, dtype=torch.float64)
    key = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    key[0, :, 2, 2] = 0.5
    value = torch.randn(1, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = _run(implementation, query, key, value, k=1, dilation=2, normalize="sum")
    expected = torch.zeros_like(value)
    for y in (0, 2, 4):
        for x in (0, 2, 4):
            expected[0, :, y, x] = value[0, :, 2, 2]
    torch.testing.assert_close(out, expected)


def test_vicinity_displacements_follow_unfold_order():
    table = vicinity_displacements(1, 3)
    assert table.tolist() == [[-3, -3], [-3, 0], [-3, 3], [0, -3], [0, 0], [0, 3], [3, -3], [3, 0], [3, 3]]


def test_sum_normalisation_guard_keeps_sign_and_blocks_division_by_zero():
    scores = torch.tensor([[0.0, 0.0], [-1e-9, 0.0], [2.0, -6.0]], dtype=torch.float64)[..., None, None]
    weights = normalize_scores(scores, normalize="sum", eps=1e-6)  # (3, 2, 1, 1): three positions
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights[0].flatten(), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(weights[1].flatten(), torch.tensor([1e-3, 0.0], dtype=torch.float64))
    torch.testing.assert_close(weights[2].flatten(), torch.tensor([-0.5, 1.5], dtype=torch.float64))


# ----------------------------------------------------------------------------------------------------
# (b) fast path == reference == unfold, gradients, gradcheck
# ----------------------------------------------------------------------------------------------------
CONFIGS = [  # (k, dilation, height, width)
    (1, 1, 5, 6),
    (2, 1, 4, 7),  # vicinity 5x5 wider than the map height
    (2, 2, 6, 5),
    (0, 1, 3, 3),  # a single cell: out = value wherever query . key != 0
]


def _forward_and_grads(implementation, inputs, **kwargs):
    out = _run(implementation, *inputs, **kwargs)
    upstream = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(123))
    grads = torch.autograd.grad(out, inputs, upstream)
    return out, grads


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"k{c[0]}d{c[1]}_{c[2]}x{c[3]}")
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("implementation", ["fast", "unfold"])
def test_matches_reference_forward_and_backward(implementation, seed, config, normalize):
    k, dilation, height, width = config
    inputs = _inputs(seed, height=height, width=width, requires_grad=True)
    options = dict(k=k, dilation=dilation, normalize=normalize)
    expected, expected_grads = _forward_and_grads("reference", inputs, **options)
    out, grads = _forward_and_grads(implementation, inputs, **options)
    torch.testing.assert_close(out, expected)
    for name, grad, expected_grad in zip(("query", "key", "value"), grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_fast_path_accepts_non_contiguous_inputs(normalize):
    query, key, value = _inputs(3, height=6, width=5)
    # channels-last storage and a transposed view: same values, different strides
    query_nc = query.transpose(2, 3).contiguous().transpose(2, 3).requires_grad_()
    key_nc = key.to(memory_format=torch.channels_last).requires_grad_()
    value_nc = torch.stack([value, -value], dim=2)[:, :, 0].requires_grad_()  # every other plane
    assert not (query_nc.is_contiguous() or key_nc.is_contiguous() or value_nc.is_contiguous())
    contiguous = tuple(t.clone().requires_grad_() for t in (query, key, value))
    expected, expected_grads = _forward_and_grads("reference", contiguous, k=2, normalize=normalize)
    for implementation in ("fast", "shim"):
        strided = (query_nc, key_nc, value_nc)
        out, grads = _forward_and_grads(implementation, strided, k=2, normalize=normalize)
        torch.testing.assert_close(out, expected)
        for grad, expected_grad in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("implementation", ["fast", "shim", "reference"])
def test_empty_batch(implementation):
    inputs = _inputs(0, batch=0, requires_grad=True)
    out = _run(implementation, *inputs, k=2, normalize="softmax")
    assert out.shape == (0, 4, 5, 6)
    out.sum().backward()
    assert all(t.grad is not None and t.grad.shape == t.shape for t in inputs)


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("seed", [0, 1])
def test_gradcheck_fast_path(seed, normalize):
    inputs = _inputs(seed, batch=1, channels=2, value_channels=1, height=3, width=4, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: matchtrans(q, k, v, k=1, dilation=1, normalize=normalize, impl="fast"), inputs
    )


def test_gradcheck_fast_path_dilated():
    inputs = _inputs(5, batch=1, channels=2, value_channels=1, height=5, width=5, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: matchtrans(q, k, v, k=1, dilation=2, normalize="sum", impl="fast"), inputs
    )


def _padded_correlation(query, key, displacements):
    """Independent check of the primitives: pad by the largest shift and slice, one displacement at a time."""
    pad = int(displacements.abs().max()) if displacements.numel() else 0
    key_padded = F.pad(key, (pad, pad, pad, pad))
    height, width = query.shape[2:]
    rows = []
    for dy, dx in displacements.tolist():
        window = key_padded[:, :, pad + dy : pad + dy + height, pad + dx : pad + dx + width]
        rows.append((query * window).sum(dim=1))
    return torch.stack(rows, dim=1)  # (N, D, H, W)


def _padded_aggregation(weights, value, displacements):
    pad = int(displacements.abs().max()) if displacements.numel() else 0
    value_padded = F.pad(value, (pad, pad, pad, pad))
    height, width = value.shape[2:]
    out = torch.zeros_like(value)
    for index, (dy, dx) in enumerate(displacements.tolist()):
        window = value_padded[:, :, pad + dy : pad + dy + height, pad + dx : pad + dx + width]
        out = out + weights[:, index : index + 1] * window
    return out


@pytest.mark.parametrize("backend", ["torch", "shim"])
def test_displacement_primitives_with_arbitrary_tables(backend):
    # Irregular table (as LSTS builds it), incl. a repeated row and shifts that leave the 4x5 map entirely.
    displacements = torch.tensor([[0, 0], [1, -2], [-3, 4], [1, -2], [6, 0], [0, -9], [-1, 1]])
    query, key, value = _inputs(7, height=4, width=5, requires_grad=True)
    weights = torch.randn(2, displacements.shape[0], 4, 5, dtype=torch.float64, requires_grad=True)
    correlation = displacement_correlation(query, key, displacements, backend=backend)
    aggregation = displacement_aggregation(weights, value, displacements, backend=backend)
    torch.testing.assert_close(correlation, _padded_correlation(query, key, displacements))
    torch.testing.assert_close(aggregation, _padded_aggregation(weights, value, displacements))
    inputs = (query, key, weights, value)
    grads = torch.autograd.grad(correlation.sum() + (aggregation * aggregation).sum(), inputs)
    expected_out = _padded_correlation(query, key, displacements).sum()
    expected_out = expected_out + _padded_aggregation(weights, value, displacements).pow(2).sum()
    expected_grads = torch.autograd.grad(expected_out, inputs)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)


# ----------------------------------------------------------------------------------------------------
# (c) the CUDA source on the CPU through the shim
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("config", CONFIGS[:3], ids=lambda c: f"k{c[0]}d{c[1]}_{c[2]}x{c[3]}")
def test_shim_kernels_match_reference_forward_and_backward(config, normalize):
    # batch 3 x 4 channels x 5x6 > 256 shim threads: the grid-stride loops are exercised too.
    k, dilation, height, width = config
    inputs = _inputs(11, batch=3, channels=4, value_channels=5, height=height, width=width,
                     requires_grad=True)
    options = dict(k=k, dilation=dilation, normalize=normalize)
    expected, expected_grads = _forward_and_grads("reference", inputs, **options)
    out, grads = _forward_and_grads("shim", inputs, **options)
    torch.testing.assert_close(out, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)


def test_shim_kernels_in_float32_match_reference():
    inputs = _inputs(4, dtype=torch.float32)
    expected = _run("reference", *inputs, k=2)
    torch.testing.assert_close(_run("shim", *inputs, k=2), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_gradcheck_kernel_function_through_shim(normalize):
    inputs = _inputs(2, batch=1, channels=2, value_channels=2, height=4, width=3, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: matchtrans_with_backend(q, k, v, k=1, normalize=normalize, backend="shim"), inputs
    )


# ----------------------------------------------------------------------------------------------------
# (d) NVRTC compiles every kernel without spilling; (e) CuPy on a GPU
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float", "double"])
@pytest.mark.parametrize("arch", ["sm_75", "sm_90"])
def test_nvrtc_compiles_every_kernel_without_spills(nvrtc_or_skip, arch, dtype):
    result = _kernels.nvrtc_compile("matchtrans", arch=arch, dtype=dtype)
    names = _kernels.kernel_names("matchtrans")
    assert set(names) == {"matchtrans_correlate", "matchtrans_aggregate", "matchtrans_aggregate_transposed"}
    assert result.cubin
    assert set(result.spill_bytes) == set(names), result.log
    assert all(spill == 0 for spill in result.spill_bytes.values()), result.spill_bytes


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_cupy_kernels_match_reference_on_gpu(dtype, normalize):
    inputs = tuple(t.cuda().requires_grad_() for t in _inputs(0, batch=2, channels=8, value_channels=6,
                                                               height=9, width=11, dtype=dtype))
    assert _kernels.select_impl("auto", inputs[0]) == "cupy"
    out = matchtrans(*inputs, k=2, normalize=normalize)  # auto -> cupy
    grads = torch.autograd.grad(out, inputs, torch.ones_like(out))
    expected = matchtrans_reference(*inputs, k=2, normalize=normalize)
    expected_grads = torch.autograd.grad(expected, inputs, torch.ones_like(expected))
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    torch.testing.assert_close(out, expected, **tolerance)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, **tolerance)


# ----------------------------------------------------------------------------------------------------
# (f) bad input, dispatch, Module
# ----------------------------------------------------------------------------------------------------
def test_bad_input_raises_naming_the_culprit():
    query, key, value = _inputs(0)
    cases = [
        (dict(query=query[0]), "query must be 4-D"),
        (dict(key=key[:, :, :4]), "key has batch/spatial size"),
        (dict(value=value[:1]), "value has batch/spatial size"),
        (dict(key=key[:, :2]), "query and key must have the same channels"),
        (dict(key=key.float()), "key .*must match query"),
        (dict(k=-1), "k \\(vicinity radius\\)"),
        (dict(dilation=0), "dilation"),
        (dict(normalize="max"), "normalize"),
        (dict(impl="gpu"), "impl"),
    ]
    for override, message in cases:
        arguments = dict(query=query, key=key, value=value, k=1, dilation=1, normalize="sum", impl="fast")
        arguments.update(override)
        with pytest.raises(ValueError, match=message):
            matchtrans(**arguments)
    with pytest.raises(ValueError, match="displacements must be an int64"):
        displacement_correlation(query, key, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="weights has 2 channels but displacements has 3"):
        displacement_aggregation(query[:, :2], value, torch.zeros(3, 2, dtype=torch.int64))


def test_impl_cupy_on_cpu_tensor_raises():
    with pytest.raises(ValueError, match="impl='cupy' needs a CUDA tensor"):
        matchtrans(*_inputs(0), impl="cupy")


def test_kill_switch_forces_reference(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return torch.zeros(())

    monkeypatch.setattr(matchtrans_module, "matchtrans_reference", spy)
    matchtrans(*_inputs(0), impl="fast")
    assert calls == []
    monkeypatch.setenv(_kernels.REFERENCE_ENV_VAR, "1")
    matchtrans(*_inputs(0), k=1, impl="fast")
    assert len(calls) == 1 and calls[0]["k"] == 1


def test_module_matches_function_and_has_no_parameters():
    module = MatchTrans(k=1, dilation=2, normalize="softmax", impl="fast")
    inputs = _inputs(9)
    expected = matchtrans_reference(*inputs, k=1, dilation=2, normalize="softmax")
    torch.testing.assert_close(module(*inputs), expected)
    assert list(module.parameters()) == []
    assert "dilation=2" in repr(module)
    with pytest.raises(ValueError, match="normalize"):
        MatchTrans(normalize="mean")
