"""Flow warping (FGFA/DFF-style feature propagation): bilinear sampling of features along a flow field.

``output[n, :, h, w] = input[n, :, h + dy, w + dx]`` with ``(dx, dy) = flow[n, :, h, w]`` in pixels of the
feature grid, read bilinearly. ``padding_mode="zeros"``: corners outside the map contribute 0;
``"border"``: the sampling position is clamped into the map first (zero derivative where clamped).

Implementations (dispatch in ``ops/_kernels.select_impl``): ``"fast"`` is one ``grid_sample`` call;
``"cupy"`` runs ``ops/cuda/flow_warp.cu`` through :class:`FlowWarpFunction` (explicit backward for input
and flow; ``backend="shim"`` runs the same kernels on the CPU in tests); ``"reference"`` is
:func:`flow_warp_reference`, bilinear interpolation written out with gathers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ops import _kernels

__all__ = ["FlowWarp", "FlowWarpFunction", "flow_warp", "flow_warp_reference"]

PADDING_MODES = ("zeros", "border")


def _check_inputs(input: Tensor, flow: Tensor, padding_mode: str) -> None:
    if input.dim() != 4:
        raise ValueError(f"input must be (N, C, H, W), got shape {tuple(input.shape)}")
    batch, _, height, width = input.shape
    if tuple(flow.shape) != (batch, 2, height, width):
        raise ValueError(
            f"flow must be (N, 2, H, W) = ({batch}, 2, {height}, {width}), got {tuple(flow.shape)}"
        )
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if flow.dtype != input.dtype or flow.device != input.device:
        raise ValueError(
            f"flow ({flow.dtype}, {flow.device}) must match input ({input.dtype}, {input.device})"
        )


def flow_warp_reference(input: Tensor, flow: Tensor, padding_mode: str = "zeros") -> Tensor:
    """Slow reference: bilinear interpolation with four explicit corner gathers.

    input (Tensor[N, C, H, W]), flow (Tensor[N, 2, H, W], (dx, dy) in pixels) -> Tensor[N, C, H, W].
    """
    _check_inputs(input, flow, padding_mode)
    batch, channels, height, width = input.shape
    rows = torch.arange(height, dtype=input.dtype, device=input.device).view(1, height, 1)
    cols = torch.arange(width, dtype=input.dtype, device=input.device).view(1, 1, width)
    x = cols + flow[:, 0]  # (N, H, W)
    y = rows + flow[:, 1]
    if padding_mode == "border":
        x = x.clamp(0, width - 1)
        y = y.clamp(0, height - 1)
    x0, y0 = torch.floor(x), torch.floor(y)
    flat_input = input.reshape(batch, channels, height * width)
    output = 0
    for corner_y, weight_y in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
        for corner_x, weight_x in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
            valid = (corner_y >= 0) & (corner_y < height) & (corner_x >= 0) & (corner_x < width)
            flat_index = (corner_y.clamp(0, height - 1) * width + corner_x.clamp(0, width - 1)).long()
            values = torch.gather(
                flat_input, 2, flat_index.view(batch, 1, height * width).expand(-1, channels, -1)
            )
            output = output + values.view(batch, channels, height, width) * (
                weight_y * weight_x * valid
            ).unsqueeze(1)
    return output


def _flow_warp_fast(input: Tensor, flow: Tensor, padding_mode: str) -> Tensor:
    """One ``grid_sample`` call; pixel coordinates mapped to align_corners=False's normalisation."""
    _, _, height, width = input.shape
    rows = torch.arange(height, dtype=input.dtype, device=input.device).view(1, height, 1)
    cols = torch.arange(width, dtype=input.dtype, device=input.device).view(1, 1, width)
    # grid_sample (align_corners=False) maps normalised u to pixel ((u + 1) * size - 1) / 2; invert it.
    # (align_corners=True would divide by size - 1, undefined for a one-pixel-wide map.)
    grid_x = (2 * (cols + flow[:, 0]) + 1) / width - 1  # (N, H, W)
    grid_y = (2 * (rows + flow[:, 1]) + 1) / height - 1
    grid = torch.stack((grid_x, grid_y), dim=-1)  # (N, H, W, 2)
    return F.grid_sample(input, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


class FlowWarpFunction(torch.autograd.Function):
    """Flow warp through ``ops/cuda/flow_warp.cu`` (``backend`` "cupy" or "shim"), explicit backward."""

    @staticmethod
    def forward(ctx, input, flow, padding_mode, backend):
        input, flow = input.contiguous(), flow.contiguous()
        batch, channels, height, width = input.shape
        geometry = (batch, channels, height, width, int(padding_mode == "border"))
        output = torch.empty_like(input)
        _kernels.run_kernel(
            "flow_warp",
            "flow_warp_forward",
            backend=backend,
            total_threads=output.numel(),
            args=(input, flow, output, *geometry),
            like=input,
        )
        ctx.save_for_backward(input, flow)
        ctx.geometry, ctx.backend = geometry, backend
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, flow = ctx.saved_tensors
        grad_output = grad_output.contiguous()
        grad_input = torch.zeros_like(input)
        grad_flow = torch.empty_like(flow)
        run = dict(backend=ctx.backend, like=input)
        _kernels.run_kernel(
            "flow_warp",
            "flow_warp_backward_input",
            total_threads=input.numel(),
            args=(grad_output, flow, grad_input, *ctx.geometry),
            **run,
        )
        _kernels.run_kernel(
            "flow_warp",
            "flow_warp_backward_flow",
            total_threads=flow.numel() // 2,
            args=(grad_output, input, flow, grad_flow, *ctx.geometry),
            **run,
        )
        return grad_input, grad_flow, None, None


def flow_warp(input: Tensor, flow: Tensor, padding_mode: str = "zeros", *, impl: str = "auto") -> Tensor:
    """Warp ``input`` (Tensor[N, C, H, W]) along ``flow`` (Tensor[N, 2, H, W]: dx, dy in pixels).

    Returns Tensor[N, C, H, W] with ``output(p) = input(p + flow(p))``, bilinear. ``padding_mode`` is
    "zeros" or "border". ``impl``: "auto" | "cupy" | "fast" | "reference".
    """
    _check_inputs(input, flow, padding_mode)
    chosen = _kernels.select_impl(impl, input)
    if chosen == "reference":
        return flow_warp_reference(input, flow, padding_mode)
    if chosen == "cupy":
        return FlowWarpFunction.apply(input, flow, padding_mode, "cupy")
    return _flow_warp_fast(input, flow, padding_mode)


class FlowWarp(nn.Module):
    """``forward(input (Tensor[N, C, H, W]), flow (Tensor[N, 2, H, W])) -> Tensor[N, C, H, W]``."""

    def __init__(self, *, padding_mode: str = "zeros", impl: str = "auto"):
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode, self.impl = padding_mode, impl

    def forward(self, input: Tensor, flow: Tensor) -> Tensor:
        return flow_warp(input, flow, self.padding_mode, impl=self.impl)

    def extra_repr(self) -> str:
        return f"padding_mode={self.padding_mode!r}, impl={self.impl!r}"
