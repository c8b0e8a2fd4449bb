"""Local correlation: hand-computed reference, fast path and CUDA kernels (CPU shim) against the
reference, gradients, NVRTC compile, bad input."""

from __future__ import annotations

import pytest
import torch

from ops import _kernels
from ops.correlation import (
    Correlation,
    CorrelationFunction,
    correlation,
    correlation_reference,
    displacements,
)


def make_inputs(*, seed, batch=2, channels=3, height=5, width=6, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, channels, height, width, generator=generator, dtype=dtype),
        torch.randn(batch, channels, height, width, generator=generator, dtype=dtype),
    )


def noncontiguous(tensor):
    wide = tensor.new_zeros(*tensor.shape[:-1], 2 * tensor.shape[-1])
    wide[..., ::2] = tensor
    return wide[..., ::2]


def test_displacement_order():
    assert displacements(1) == [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1)]
    assert displacements(2, 2) == [(dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2)]


def test_reference_hand_computed_5x5():
    # Two channels: a = (1, 2) everywhere, b[c, y, x] = (c + 1) * (5 y + x).
    grid = torch.arange(25, dtype=torch.float64).view(5, 5)
    a = torch.stack((torch.ones(5, 5), 2 * torch.ones(5, 5))).to(torch.float64).unsqueeze(0)
    b = torch.stack((grid, 2 * grid)).unsqueeze(0)
    out = correlation_reference(a, b, max_displacement=1)
    assert out.shape == (1, 9, 5, 5)
    # mean_c a_c * b_c(p + delta) = (1 * v + 2 * 2 v) / 2 = 2.5 v, v = 5 (y + dy) + (x + dx).
    assert out[0, 4, 2, 2].item() == pytest.approx(2.5 * 12)  # delta (0, 0)
    assert out[0, 0, 2, 2].item() == pytest.approx(2.5 * 6)  # delta (-1, -1)
    assert out[0, 5, 2, 3].item() == pytest.approx(2.5 * 14)  # delta (0, 1)
    assert out[0, 0, 0, 3].item() == 0.0  # (-1, 2) is outside the map
    assert out[0, 8, 4, 0].item() == 0.0  # (5, 1) is outside the map
    strided = correlation_reference(a, b, max_displacement=2, stride=2)
    assert strided[0, 8, 1, 1].item() == pytest.approx(2.5 * 18)  # delta (2, 2) -> (3, 3)


@pytest.mark.parametrize("max_displacement, stride", [(2, 1), (2, 2), (0, 1), (4, 2)])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("contiguous", [True, False])
def test_fast_and_shim_match_reference(max_displacement, stride, seed, contiguous):
    a, b = make_inputs(seed=seed)
    if not contiguous:
        a, b = noncontiguous(a), noncontiguous(b)
    expected = correlation_reference(a, b, max_displacement, stride)
    torch.testing.assert_close(
        correlation(a, b, max_displacement, stride, impl="fast"), expected, rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        CorrelationFunction.apply(a, b, max_displacement, stride, "shim"), expected, rtol=1e-12, atol=1e-12
    )


def test_shim_gradients_match_reference_gradients():
    a, b = make_inputs(seed=2)
    upstream = torch.randn(2, 25, 5, 6, dtype=torch.float64)
    grads = []
    for run in (
        lambda x, y: correlation_reference(x, y, 2),
        lambda x, y: CorrelationFunction.apply(x, y, 2, 1, "shim"),
    ):
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        grads.append(torch.autograd.grad((run(x, y) * upstream).sum(), (x, y)))
    for ours, expected in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", ["fast", "shim"])
def test_gradcheck(impl):
    a, b = make_inputs(seed=3, batch=1, channels=2, height=4, width=5)
    a.requires_grad_()
    b.requires_grad_()
    if impl == "shim":

        def function(x, y):
            return CorrelationFunction.apply(x, y, 2, 2, "shim")
    else:

        def function(x, y):
            return correlation(x, y, 2, 2, impl="fast")

    assert torch.autograd.gradcheck(function, (a, b))


@pytest.mark.parametrize("impl", ["reference", "fast", "shim"])
def test_empty_batch(impl):
    a, b = make_inputs(seed=4, batch=0)
    out = CorrelationFunction.apply(a, b, 1, 1, "shim") if impl == "shim" else correlation(a, b, 1, impl=impl)
    assert out.shape == (0, 9, 5, 6)


def test_module():
    a, b = make_inputs(seed=5, dtype=torch.float32)
    module = Correlation(2, stride=2)
    torch.testing.assert_close(module(a, b), correlation_reference(a, b, 2, 2))
    with pytest.raises(ValueError, match="stride"):
        Correlation(3, stride=2)


@pytest.mark.parametrize(
    "a_shape, b_shape, max_displacement, stride, message",
    [
        ((2, 3, 5), (2, 3, 5), 1, 1, "a must be"),
        ((2, 3, 5, 6), (2, 3, 5, 5), 1, 1, "b must have"),
        ((2, 0, 5, 6), (2, 0, 5, 6), 1, 1, "at least one channel"),
        ((2, 3, 5, 6), (2, 3, 5, 6), 3, 2, "stride dividing"),
        ((2, 3, 5, 6), (2, 3, 5, 6), -1, 1, "max_displacement >= 0"),
    ],
)
def test_bad_input_raises(a_shape, b_shape, max_displacement, stride, message):
    with pytest.raises(ValueError, match=message):
        correlation(torch.zeros(a_shape), torch.zeros(b_shape), max_displacement, stride)


@pytest.mark.parametrize("arch", ["sm_75", "sm_90"])
@pytest.mark.parametrize("dtype", ["float", "double"])
def test_nvrtc_compiles_every_kernel_without_spills(nvrtc_or_skip, arch, dtype):
    result = _kernels.nvrtc_compile("correlation", arch=arch, dtype=dtype)
    assert set(result.spill_bytes) == set(_kernels.kernel_names("correlation"))
    assert all(spill == 0 for spill in result.spill_bytes.values()), result.spill_bytes


@pytest.mark.cuda
def test_cupy_matches_fast_path_on_gpu():
    a, b = (t.cuda().requires_grad_() for t in make_inputs(seed=6))
    ours = correlation(a, b, 2, impl="cupy")
    expected = correlation(a, b, 2, impl="fast")
    torch.testing.assert_close(ours, expected)
    for mine, reference in zip(
        torch.autograd.grad(ours.sum(), (a, b)), torch.autograd.grad(expected.sum(), (a, b)), strict=True
    ):
        torch.testing.assert_close(mine, reference)
