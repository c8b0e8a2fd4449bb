"""Flow warp: hand-computed reference, fast path and CUDA kernels (CPU shim) against the reference,
gradients, NVRTC compile, bad input."""

from __future__ import annotations

import pytest
import torch

from ops import _kernels
from ops.flow_warp import FlowWarp, FlowWarpFunction, flow_warp, flow_warp_reference


def make_inputs(*, seed, batch=2, channels=3, height=5, width=7, flow_scale=3.0, dtype=torch.float64):
    """Random features and a flow of scale 3 pixels, so many samples land beyond the border."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, channels, height, width, generator=generator, dtype=dtype)
    flow = torch.randn(batch, 2, height, width, generator=generator, dtype=dtype) * flow_scale
    return features, flow


def noncontiguous(tensor):
    wide = tensor.new_zeros(*tensor.shape[:-1], 2 * tensor.shape[-1])
    wide[..., ::2] = tensor
    return wide[..., ::2]


def test_reference_hand_computed_5x5():
    image = torch.arange(25, dtype=torch.float64).view(1, 1, 5, 5)  # image[y, x] = 5 y + x
    flow = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    flow[:, 0], flow[:, 1] = 0.25, 1.5  # dx, dy
    zeros = flow_warp_reference(image, flow, "zeros")
    assert zeros[0, 0, 1, 1].item() == pytest.approx(5 * 2.5 + 1.25)  # linear map: exact inside
    # (y, x) = (4 + 1.5, 2.25): both rows 5 and 6 are outside -> 0.
    assert zeros[0, 0, 4, 2].item() == 0.0
    # (3 + 1.5, 4.25) = (4.5, 4.25): only corner (4, 4) = 24 inside, weight 0.5 * 0.75.
    assert zeros[0, 0, 3, 4].item() == pytest.approx(24 * 0.5 * 0.75)
    border = flow_warp_reference(image, flow, "border")
    # Clamped to (4, 4) -> 24; clamped row 4 at x = 2.25 -> 20 + 2.25.
    assert border[0, 0, 3, 4].item() == pytest.approx(24.0)
    assert border[0, 0, 4, 2].item() == pytest.approx(22.25)
    # Zero flow is the identity.
    torch.testing.assert_close(flow_warp_reference(image, torch.zeros_like(flow)), image)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("contiguous", [True, False])
def test_fast_and_shim_match_reference(padding_mode, seed, contiguous):
    features, flow = make_inputs(seed=seed)
    if not contiguous:
        features, flow = noncontiguous(features), noncontiguous(flow)
    expected = flow_warp_reference(features, flow, padding_mode)
    torch.testing.assert_close(
        flow_warp(features, flow, padding_mode, impl="fast"), expected, rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        FlowWarpFunction.apply(features, flow, padding_mode, "shim"), expected, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_shim_gradients_match_reference_gradients(padding_mode):
    features, flow = make_inputs(seed=3)
    upstream = torch.randn(features.shape, dtype=torch.float64)
    grads = []
    for run in (
        lambda f, w: flow_warp_reference(f, w, padding_mode),
        lambda f, w: FlowWarpFunction.apply(f, w, padding_mode, "shim"),
    ):
        f, w = features.clone().requires_grad_(), flow.clone().requires_grad_()
        grads.append(torch.autograd.grad((run(f, w) * upstream).sum(), (f, w)))
    for ours, expected in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("impl", ["fast", "shim"])
def test_gradcheck(padding_mode, impl):
    features, flow = make_inputs(seed=4, batch=1, channels=2, height=4, width=5)
    features.requires_grad_()
    flow.requires_grad_()
    if impl == "shim":

        def function(f, w):
            return FlowWarpFunction.apply(f, w, padding_mode, "shim")
    else:

        def function(f, w):
            return flow_warp(f, w, padding_mode, impl="fast")

    assert torch.autograd.gradcheck(function, (features, flow))


@pytest.mark.parametrize("impl", ["reference", "fast", "shim"])
def test_empty_batch_and_one_pixel_wide_map(impl):
    for batch, width in ((0, 7), (2, 1)):
        features, flow = make_inputs(seed=5, batch=batch, width=width)
        run = (
            (lambda f, w: FlowWarpFunction.apply(f, w, "zeros", "shim"))
            if impl == "shim"
            else (lambda f, w: flow_warp(f, w, impl=impl))
        )
        out = run(features, flow)
        assert out.shape == features.shape
        torch.testing.assert_close(out, flow_warp_reference(features, flow))


def test_module():
    features, flow = make_inputs(seed=6, dtype=torch.float32)
    module = FlowWarp(padding_mode="border")
    torch.testing.assert_close(module(features, flow), flow_warp_reference(features, flow, "border"))
    assert "border" in repr(module)


@pytest.mark.parametrize(
    "features_shape, flow_shape, padding_mode, message",
    [
        ((2, 3, 5), (2, 2, 5, 7), "zeros", "input must be"),
        ((2, 3, 5, 7), (2, 3, 5, 7), "zeros", "flow must be"),
        ((2, 3, 5, 7), (1, 2, 5, 7), "zeros", "flow must be"),
        ((2, 3, 5, 7), (2, 2, 5, 7), "reflection", "padding_mode"),
    ],
)
def test_bad_input_raises(features_shape, flow_shape, padding_mode, message):
    with pytest.raises(ValueError, match=message):
        flow_warp(torch.zeros(features_shape), torch.zeros(flow_shape), padding_mode)


def test_dtype_mismatch_raises():
    with pytest.raises(ValueError, match="flow"):
        flow_warp(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2, dtype=torch.float64))


@pytest.mark.parametrize("arch", ["sm_75", "sm_90"])
@pytest.mark.parametrize("dtype", ["float", "double"])
def test_nvrtc_compiles_every_kernel_without_spills(nvrtc_or_skip, arch, dtype):
    result = _kernels.nvrtc_compile("flow_warp", arch=arch, dtype=dtype)
    assert set(result.spill_bytes) == set(_kernels.kernel_names("flow_warp"))
    assert all(spill == 0 for spill in result.spill_bytes.values()), result.spill_bytes


@pytest.mark.cuda
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_cupy_matches_grid_sample_on_gpu(padding_mode):
    features, flow = (t.cuda().requires_grad_() for t in make_inputs(seed=7))
    ours = flow_warp(features, flow, padding_mode, impl="cupy")
    expected = flow_warp(features, flow, padding_mode, impl="fast")
    torch.testing.assert_close(ours, expected)
    ours_grads = torch.autograd.grad(ours.sum(), (features, flow))
    expected_grads = torch.autograd.grad(expected.sum(), (features, flow))
    for mine, reference in zip(ours_grads, expected_grads, strict=True):
        torch.testing.assert_close(mine, reference)
