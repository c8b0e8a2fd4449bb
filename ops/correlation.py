"""Local correlation (FlowNet-style cost volume) between two feature maps.

``output[n, k, h, w] = mean_c a[n, c, h, w] * b[n, c, h + dy_k, w + dx_k]`` for displacements
``dy, dx in {-d, -d + s, ..., d}`` (``d = max_displacement``, ``s = stride``), ``k = iy * D + ix`` with
``D = 2 d / s + 1`` (dy outer, dx inner); 0 where ``p + delta`` leaves the map. Output
(N, D * D, H, W).

Implementations (dispatch in ``ops/_kernels.select_impl``): ``"fast"`` zero-pads ``b`` once and takes
one shifted product per displacement (views, no unfold; D*D small products); ``"cupy"`` runs
``ops/cuda/correlation.cu`` through :class:`CorrelationFunction` (explicit backward; ``backend="shim"``
runs the same kernels on the CPU in tests); ``"reference"`` is :func:`correlation_reference`, a gather
with an explicit validity mask per displacement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ops import _kernels

__all__ = ["Correlation", "CorrelationFunction", "correlation", "correlation_reference", "displacements"]


def _check_inputs(a: Tensor, b: Tensor, max_displacement: int, stride: int) -> None:
    if a.dim() != 4:
        raise ValueError(f"a must be (N, C, H, W), got shape {tuple(a.shape)}")
    if b.shape != a.shape:
        raise ValueError(f"b must have a's shape {tuple(a.shape)}, got {tuple(b.shape)}")
    if a.shape[1] == 0:
        raise ValueError("a and b need at least one channel (the output is a mean over channels)")
    if b.dtype != a.dtype or b.device != a.device:
        raise ValueError(f"b ({b.dtype}, {b.device}) must match a ({a.dtype}, {a.device})")
    if max_displacement < 0 or stride < 1 or max_displacement % stride != 0:
        raise ValueError(
            f"need max_displacement >= 0, stride >= 1 and stride dividing max_displacement; "
            f"got max_displacement={max_displacement}, stride={stride}"
        )


def displacements(max_displacement: int, stride: int = 1) -> list[tuple[int, int]]:
    """The (dy, dx) of each output channel, in channel order (dy outer, dx inner)."""
    steps = range(-max_displacement, max_displacement + 1, stride)
    return [(dy, dx) for dy in steps for dx in steps]


def correlation_reference(a: Tensor, b: Tensor, max_displacement: int, stride: int = 1) -> Tensor:
    """Slow reference: per displacement, gather b at p + delta with an explicit in-bounds mask.

    a, b (Tensor[N, C, H, W]) -> Tensor[N, D * D, H, W], D = 2 * max_displacement / stride + 1.
    """
    _check_inputs(a, b, max_displacement, stride)
    batch, channels, height, width = a.shape
    rows = torch.arange(height, device=a.device).view(height, 1)
    cols = torch.arange(width, device=a.device).view(1, width)
    flat_b = b.reshape(batch, channels, height * width)
    planes = []
    for dy, dx in displacements(max_displacement, stride):
        target_rows, target_cols = rows + dy, cols + dx  # (H, 1), (1, W)
        inside = (target_rows >= 0) & (target_rows < height) & (target_cols >= 0) & (target_cols < width)
        flat_index = (target_rows.clamp(0, height - 1) * width + target_cols.clamp(0, width - 1)).reshape(-1)
        shifted = flat_b[:, :, flat_index].reshape(batch, channels, height, width)
        planes.append((a * shifted).mean(dim=1) * inside)
    return torch.stack(planes, dim=1)


def _correlation_fast(a: Tensor, b: Tensor, max_displacement: int, stride: int) -> Tensor:
    """Pad b by d once; each displacement is a view of the padded map, one product-and-sum each."""
    height, width = a.shape[2:]
    d = max_displacement
    padded_b = F.pad(b, (d, d, d, d))  # (N, C, H + 2d, W + 2d)
    planes = [
        torch.linalg.vecdot(a, padded_b[:, :, d + dy : d + dy + height, d + dx : d + dx + width], dim=1)
        for dy, dx in displacements(max_displacement, stride)
    ]  # each (N, H, W)
    return torch.stack(planes, dim=1) / a.shape[1]


class CorrelationFunction(torch.autograd.Function):
    """Correlation through ``ops/cuda/correlation.cu`` (``backend`` "cupy" or "shim"), explicit backward."""

    @staticmethod
    def forward(ctx, a, b, max_displacement, stride, backend):
        a, b = a.contiguous(), b.contiguous()
        batch, channels, height, width = a.shape
        side = 2 * max_displacement // stride + 1
        geometry = (batch, channels, height, width, max_displacement, stride)
        output = a.new_empty(batch, side * side, height, width)
        _kernels.run_kernel(
            "correlation",
            "correlation_forward",
            backend=backend,
            total_threads=output.numel(),
            args=(a, b, output, *geometry),
            like=a,
        )
        ctx.save_for_backward(a, b)
        ctx.geometry, ctx.backend = geometry, backend
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        a, b = ctx.saved_tensors
        grad_output = grad_output.contiguous()
        grad_a, grad_b = torch.empty_like(a), torch.empty_like(b)
        run = dict(backend=ctx.backend, like=a)
        _kernels.run_kernel(
            "correlation",
            "correlation_backward_a",
            total_threads=a.numel(),
            args=(grad_output, b, grad_a, *ctx.geometry),
            **run,
        )
        _kernels.run_kernel(
            "correlation",
            "correlation_backward_b",
            total_threads=b.numel(),
            args=(grad_output, a, grad_b, *ctx.geometry),
            **run,
        )
        return grad_a, grad_b, None, None, None


def correlation(
    a: Tensor, b: Tensor, max_displacement: int, stride: int = 1, *, impl: str = "auto"
) -> Tensor:
    """Local cost volume of ``a`` against ``b`` (both Tensor[N, C, H, W]).

    Returns Tensor[N, D * D, H, W], D = 2 * max_displacement / stride + 1, channel k holding the mean over
    channels of ``a(p) * b(p + delta_k)`` (``delta_k = displacements(max_displacement, stride)[k]``).
    ``impl``: "auto" | "cupy" | "fast" | "reference".
    """
    _check_inputs(a, b, max_displacement, stride)
    chosen = _kernels.select_impl(impl, a)
    if chosen == "reference":
        return correlation_reference(a, b, max_displacement, stride)
    if chosen == "cupy":
        return CorrelationFunction.apply(a, b, max_displacement, stride, "cupy")
    return _correlation_fast(a, b, max_displacement, stride)


class Correlation(nn.Module):
    """``forward(a, b (Tensor[N, C, H, W])) -> Tensor[N, D * D, H, W]`` for a fixed displacement range."""

    def __init__(self, max_displacement: int, *, stride: int = 1, impl: str = "auto"):
        super().__init__()
        if max_displacement < 0 or stride < 1 or max_displacement % stride != 0:
            raise ValueError(f"need stride dividing max_displacement >= 0; got {max_displacement}, {stride}")
        self.max_displacement, self.stride, self.impl = max_displacement, stride, impl

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return correlation(a, b, self.max_displacement, self.stride, impl=self.impl)

    def extra_repr(self) -> str:
        return f"max_displacement={self.max_displacement}, stride={self.stride}, impl={self.impl!r}"
