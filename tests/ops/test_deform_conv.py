"""Deformable convolution: reference by hand, fast path and CUDA kernels (via the CPU shim) against the
reference and against torchvision.ops.deform_conv2d (the independent implementation), gradients,
NVRTC compile, bad input."""

from __future__ import annotations

import pytest
import torch
import torchvision

from ops import _kernels
from ops.deform_conv import DeformConv2d, DeformConvFunction, deform_conv2d, deform_conv2d_reference

# (batch, channels, height, width, out_channels, kernel, stride, padding, dilation, groups,
#  offset_groups, mask)
CONFIGS = {
    "dcnv2-3x3-pad1": (2, 4, 6, 5, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True),
    "dcnv1-stride2-dil2-groups": (2, 4, 7, 6, 6, (3, 3), (2, 2), (0, 0), (2, 2), 2, 2, False),
    "rect-kernel-og3": (1, 6, 5, 5, 3, (2, 3), (1, 2), (1, 0), (1, 1), 3, 3, True),
}


def make_inputs(config, *, seed, dtype=torch.float64, offset_scale=2.0, batch=None):
    """Random inputs for one config; offsets of scale 2 push many taps past the border."""
    n, c, h, w, out_c, (kh, kw), stride, padding, dilation, groups, offset_groups, with_mask = config
    n = n if batch is None else batch
    generator = torch.Generator().manual_seed(seed)
    out_h = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    tensors = dict(
        input=torch.randn(n, c, h, w, generator=generator, dtype=dtype),
        offset=torch.randn(n, 2 * offset_groups * kh * kw, out_h, out_w, generator=generator, dtype=dtype)
        * offset_scale,
        weight=torch.randn(out_c, c // groups, kh, kw, generator=generator, dtype=dtype),
        bias=torch.randn(out_c, generator=generator, dtype=dtype),
        mask=torch.rand(n, offset_groups * kh * kw, out_h, out_w, generator=generator, dtype=dtype)
        if with_mask
        else None,
    )
    return tensors, dict(stride=stride, padding=padding, dilation=dilation)


def noncontiguous(tensor):
    """Same values, non-contiguous storage (every other element of a wider buffer)."""
    wide = tensor.new_zeros(*tensor.shape[:-1], 2 * tensor.shape[-1])
    wide[..., ::2] = tensor
    return wide[..., ::2]


def run_shim(tensors, geometry):
    offset_groups = tensors["offset"].shape[1] // (
        2 * tensors["weight"].shape[2] * tensors["weight"].shape[3]
    )
    return DeformConvFunction.apply(
        tensors["input"],
        tensors["offset"],
        tensors["mask"],
        tensors["weight"],
        tensors["bias"],
        geometry["stride"],
        geometry["padding"],
        geometry["dilation"],
        offset_groups,
        "shim",
    )


def test_reference_hand_computed_5x5():
    # input[y, x] = 5 y + x is linear, so bilinear sampling inside the map returns 5 y + x exactly.
    image = torch.arange(25, dtype=torch.float64).view(1, 1, 5, 5)
    one_tap = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    offset = torch.empty(1, 2, 5, 5, dtype=torch.float64)
    offset[:, 0], offset[:, 1] = 0.5, 0.25  # dy, dx
    out = deform_conv2d_reference(image, offset, one_tap)
    assert out[0, 0, 1, 1].item() == pytest.approx(5 * 1.5 + 1.25)
    # Bottom-right: (4.5, 4.25): only corner (4, 4) = 24 is inside, weight (1 - 0.5) * (1 - 0.25).
    assert out[0, 0, 4, 4].item() == pytest.approx(24 * 0.5 * 0.75)
    # With a mask of 0.5 and a bias of 1.
    masked = deform_conv2d_reference(
        image,
        offset,
        one_tap,
        bias=torch.ones(1, dtype=torch.float64),
        mask=torch.full((1, 1, 5, 5), 0.5, dtype=torch.float64),
    )
    assert masked[0, 0, 1, 1].item() == pytest.approx(0.5 * 8.75 + 1)
    # 3x3 all-ones kernel, zero offsets, padding 1 = sum over the 3x3 window; at (0, 0) the window holds
    # 0 + 1 + 5 + 6 = 12, at the centre 9 * 12 = 108.
    box = deform_conv2d_reference(
        image,
        torch.zeros(1, 18, 5, 5, dtype=torch.float64),
        torch.ones(1, 1, 3, 3, dtype=torch.float64),
        padding=1,
    )
    assert box[0, 0, 0, 0].item() == pytest.approx(12.0)
    assert box[0, 0, 2, 2].item() == pytest.approx(108.0)
    # A tap displaced by <= -1 pixel (fully outside) reads exactly 0.
    outside = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    outside[:, 0] = -10.0
    assert deform_conv2d_reference(image, outside, one_tap).abs().max().item() == 0.0


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("impl", ["reference", "fast", "shim"])
def test_forward_and_gradients_match_torchvision(config_name, impl):
    tensors, geometry = make_inputs(CONFIGS[config_name], seed=0)
    ours_inputs = {k: v.clone().requires_grad_() if v is not None else None for k, v in tensors.items()}
    theirs_inputs = {k: v.clone().requires_grad_() if v is not None else None for k, v in tensors.items()}
    if impl == "shim":
        ours = run_shim(ours_inputs, geometry)
    else:
        ours = deform_conv2d(**ours_inputs, **geometry, impl=impl)
    theirs = torchvision.ops.deform_conv2d(**theirs_inputs, **geometry)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(theirs)
    (ours * upstream).sum().backward()
    (theirs * upstream).sum().backward()
    for name, tensor in ours_inputs.items():
        if tensor is not None:
            torch.testing.assert_close(tensor.grad, theirs_inputs[name].grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("contiguous", [True, False])
def test_fast_and_shim_match_reference(seed, contiguous):
    tensors, geometry = make_inputs(CONFIGS["dcnv2-3x3-pad1"], seed=seed, offset_scale=4.0)
    if not contiguous:
        tensors = {k: noncontiguous(v) if v is not None else None for k, v in tensors.items()}
        assert not tensors["input"].is_contiguous()
    expected = deform_conv2d_reference(**tensors, **geometry)
    torch.testing.assert_close(
        deform_conv2d(**tensors, **geometry, impl="fast"), expected, rtol=1e-10, atol=1e-10
    )
    torch.testing.assert_close(run_shim(tensors, geometry), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", ["reference", "fast", "shim"])
def test_empty_batch(impl):
    tensors, geometry = make_inputs(CONFIGS["dcnv2-3x3-pad1"], seed=0, batch=0)
    out = run_shim(tensors, geometry) if impl == "shim" else deform_conv2d(**tensors, **geometry, impl=impl)
    assert out.shape == (0, 6, 6, 5)


def test_fast_path_gradcheck():
    tensors, geometry = make_inputs(CONFIGS["rect-kernel-og3"], seed=4)
    names = ["input", "offset", "weight", "bias", "mask"]
    inputs = tuple(tensors[name].requires_grad_() for name in names)

    def function(input, offset, weight, bias, mask):
        return deform_conv2d(input, offset, weight, bias, mask=mask, **geometry, impl="fast")

    assert torch.autograd.gradcheck(function, inputs)


@pytest.mark.parametrize("chunk_elements", [2**19, 64])
def test_fast_path_gradcheck_ungrouped_layout(monkeypatch, chunk_elements):
    # groups == 1 takes the (g, k, c) column layout; 2 offset groups; 64 elements per chunk runs the
    # gather backward over many chunks (8 rows of 2 channels each).
    monkeypatch.setattr("ops.deform_conv._BACKWARD_CHUNK_ELEMENTS", chunk_elements)
    config = (1, 4, 4, 4, 2, (3, 3), (1, 1), (1, 1), (1, 1), 1, 2, True)
    tensors, geometry = make_inputs(config, seed=8)
    names = ["input", "offset", "weight", "bias", "mask"]
    inputs = tuple(tensors[name].requires_grad_() for name in names)

    def function(input, offset, weight, bias, mask):
        return deform_conv2d(input, offset, weight, bias, mask=mask, **geometry, impl="fast")

    assert torch.autograd.gradcheck(function, inputs)


def test_integer_coordinates_fast_and_shim_match_reference():
    # Integer offsets put samples exactly on pixels, on the -1 / H borders and beyond. All three
    # implementations count a coordinate of exactly -1 as outside (zero offset gradient there), which is
    # where torchvision differs (its offset gradient is one-sided nonzero): values still match it.
    tensors, geometry = make_inputs(CONFIGS["dcnv2-3x3-pad1"], seed=9)
    integer_offset = torch.randint(-2, 3, tensors["offset"].shape, generator=torch.Generator().manual_seed(9))
    tensors["offset"] = integer_offset.to(torch.float64)
    tensors["offset"][:, :, 0, 0] = 0.0  # taps of the corner output read exactly at -1
    upstream = torch.randn(2, 6, 6, 5, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    results = {}
    for impl in ["reference", "fast", "shim"]:
        inputs = {k: v.clone().requires_grad_() for k, v in tensors.items()}
        if impl == "shim":
            output = run_shim(inputs, geometry)
        else:
            output = deform_conv2d(**inputs, **geometry, impl=impl)
        (output * upstream).sum().backward()
        results[impl] = [output] + [inputs[name].grad for name in sorted(inputs)]
    torch.testing.assert_close(
        results["fast"][0], torchvision.ops.deform_conv2d(**tensors, **geometry), rtol=1e-10, atol=1e-10
    )
    for impl in ["fast", "shim"]:
        for name, ours, expected in zip(
            ["output", *sorted(tensors)], results[impl], results["reference"], strict=True
        ):
            torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10, msg=f"{impl} {name}")


def test_shim_function_gradcheck():
    tensors, geometry = make_inputs(CONFIGS["rect-kernel-og3"], seed=5)
    names = ["input", "offset", "mask", "weight", "bias"]
    inputs = tuple(tensors[name].requires_grad_() for name in names)

    def function(input, offset, mask, weight, bias):
        return DeformConvFunction.apply(
            input,
            offset,
            mask,
            weight,
            bias,
            geometry["stride"],
            geometry["padding"],
            geometry["dilation"],
            3,
            "shim",
        )

    assert torch.autograd.gradcheck(function, inputs)


def test_module_matches_function_and_kill_switch(monkeypatch):
    layer = DeformConv2d(4, 6, 3, padding=1)
    tensors, _ = make_inputs(CONFIGS["dcnv2-3x3-pad1"], seed=6, dtype=torch.float32)
    expected = torchvision.ops.deform_conv2d(
        tensors["input"], tensors["offset"], layer.weight, layer.bias, padding=1, mask=tensors["mask"]
    )
    torch.testing.assert_close(
        layer(tensors["input"], tensors["offset"], tensors["mask"]), expected, rtol=1e-4, atol=1e-4
    )
    calls = []
    monkeypatch.setenv(_kernels.REFERENCE_ENV_VAR, "1")
    monkeypatch.setattr(
        "ops.deform_conv.deform_conv2d_reference", lambda *args, **kwargs: calls.append(1) or expected
    )
    layer(tensors["input"], tensors["offset"], tensors["mask"])
    assert calls == [1]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(input=torch.zeros(2, 4, 6)), "input must be 4-D"),
        (dict(offset=torch.zeros(2, 17, 6, 5)), r"offset.shape\[1\]=17"),
        (dict(offset=torch.zeros(2, 18, 5, 5)), "offset shape"),
        (dict(mask=torch.zeros(2, 8, 6, 5)), "mask shape"),
        (dict(weight=torch.zeros(6, 3, 3, 3)), "not divisible by weight.shape"),
        (dict(bias=torch.zeros(5)), "bias shape"),
    ],
)
def test_bad_shapes_raise_naming_the_argument(change, message):
    tensors, geometry = make_inputs(CONFIGS["dcnv2-3x3-pad1"], seed=0, dtype=torch.float32)
    tensors.update(change)
    with pytest.raises(ValueError, match=message):
        deform_conv2d(**tensors, **geometry)


def test_bad_impl_and_dtype_raise():
    tensors, geometry = make_inputs(CONFIGS["dcnv2-3x3-pad1"], seed=0)
    with pytest.raises(ValueError, match="impl must be one of"):
        deform_conv2d(**tensors, **geometry, impl="fastest")
    with pytest.raises(ValueError, match="float32 and float64"):
        run_shim({k: v.half() if v is not None else None for k, v in tensors.items()}, geometry)


@pytest.mark.parametrize("arch", ["sm_75", "sm_90"])
@pytest.mark.parametrize("dtype", ["float", "double"])
def test_nvrtc_compiles_every_kernel_without_spills(nvrtc_or_skip, arch, dtype):
    result = _kernels.nvrtc_compile("deform_conv", arch=arch, dtype=dtype)
    assert set(result.spill_bytes) == set(_kernels.kernel_names("deform_conv"))
    assert all(spill == 0 for spill in result.spill_bytes.values()), result.spill_bytes


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cupy_matches_torchvision_on_gpu(dtype):
    tensors, geometry = make_inputs(CONFIGS["dcnv2-3x3-pad1"], seed=7, dtype=dtype)
    tensors = {k: v.cuda().requires_grad_() if v is not None else None for k, v in tensors.items()}
    ours = deform_conv2d(**tensors, **geometry, impl="cupy")
    theirs = torchvision.ops.deform_conv2d(**tensors, **geometry)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(ours, theirs, rtol=tolerance, atol=tolerance)
    ours_grads = torch.autograd.grad(ours.sum(), list(v for v in tensors.values() if v is not None))
    theirs_grads = torch.autograd.grad(theirs.sum(), list(v for v in tensors.values() if v is not None))
    for mine, reference in zip(ours_grads, theirs_grads, strict=True):
        torch.testing.assert_close(mine, reference, rtol=10 * tolerance, atol=10 * tolerance)
