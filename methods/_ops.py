"""The one place where methods get their numeric ops (deformable conv, flow warp, correlation).

``ops/`` provides each op with a CuPy kernel, a fast CPU path and a reference. While an op is not
there yet (it is written in parallel), a plain PyTorch stand-in with the same signature and
semantics is used instead, so switching to ``ops`` is a change of the import lines below only.
The stand-ins are deliberately the "obvious" formulations (torchvision's deformable conv, one
``grid_sample`` call, shifted products).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    from ops.deform_conv import deform_conv2d
except ImportError:  # ops.deform_conv not written yet: torchvision's has the same signature
    from torchvision.ops import deform_conv2d


def _flow_warp_grid_sample(features: Tensor, flow: Tensor, padding_mode: str = "zeros") -> Tensor:
    """``output(p) = features(p + flow(p))`` by bilinear sampling.

    Args:
        features: (N, C, H, W).
        flow: (N, 2, H, W), channel 0 = dx, channel 1 = dy, in pixels of this H x W grid.
        padding_mode: ``"zeros"`` (samples outside the map are 0) or ``"border"`` (clamped).
    """
    n, _, h, w = features.shape
    if flow.shape != (n, 2, h, w):
        raise ValueError(f"flow must be (N={n}, 2, H={h}, W={w}) like features, got {tuple(flow.shape)}")
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=flow.dtype, device=flow.device),
        torch.arange(w, dtype=flow.dtype, device=flow.device),
        indexing="ij",
    )
    sample_x = xs + flow[:, 0]  # (N, H, W) absolute x in pixels
    sample_y = ys + flow[:, 1]
    # align_corners=True: -1 and +1 are the centres of the first and last pixel.
    grid = torch.stack(
        (2.0 * sample_x / max(w - 1, 1) - 1.0, 2.0 * sample_y / max(h - 1, 1) - 1.0), dim=-1
    )  # (N, H, W, 2)
    return F.grid_sample(features, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


def _correlation_shifted_products(a: Tensor, b: Tensor, max_displacement: int, stride: int = 1) -> Tensor:
    """FlowNet cost volume: ``out[k](p) = mean_c a_c(p) * b_c(p + delta_k)``, zero outside ``b``.

    Args:
        a, b: (N, C, H, W).
        max_displacement: d; displacements delta = (dy, dx) in {-d, -d+stride, ..., d}^2.
        stride: step between displacements.

    Returns:
        (N, (2d/stride + 1)^2, H, W), displacement index k = iy * side + ix (dy-major).
    """
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"a and b must both be (N, C, H, W), got {tuple(a.shape)} and {tuple(b.shape)}")
    _, _, h, w = a.shape
    d = max_displacement
    b_padded = F.pad(b, (d, d, d, d))  # (N, C, H + 2d, W + 2d)
    shifts = range(-d, d + 1, stride)
    volumes = [
        (a * b_padded[:, :, d + dy : d + dy + h, d + dx : d + dx + w]).mean(dim=1)
        for dy in shifts
        for dx in shifts
    ]
    return torch.stack(volumes, dim=1)  # (N, K, H, W)


try:
    from ops.flow_warp import flow_warp
except ImportError:  # ops.flow_warp not written yet
    flow_warp = _flow_warp_grid_sample

try:
    from ops.correlation import correlation
except ImportError:  # ops.correlation not written yet
    correlation = _correlation_shifted_products

__all__ = ["correlation", "deform_conv2d", "flow_warp"]
