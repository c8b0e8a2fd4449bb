"""Classical optical flow (OpenCV's Farneback) as a flow source for ``flow_warp``.

No learning and no gradient: the "flow without a flow network and without flow data" point of the
flow-source ablation. Computed on the CPU, one ``cv2.calcOpticalFlowFarneback`` call per
(reference, support) pair.

Direction: OpenCV's flow from ``prev`` to ``next`` satisfies ``prev(y, x) ~ next(y + fy, x + fx)``.
With ``prev`` = reference and ``next`` = support this is exactly the harness's convention (the
reference pixel p is found at p + flow(p) in the support), so ``warp(support, flow)(p) =
support(p + flow(p))`` lands the support on the reference grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from methods._images import check_pixels


@dataclass(frozen=True)
class FarnebackParams:
    """``cv2.calcOpticalFlowFarneback`` parameters (OpenCV's documented example values, which suit
    64-128 px frames; ``levels=3`` covers displacements of ~2^3 * winsize / 2 pixels)."""

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2
    flags: int = 0


def to_gray_uint8(images: Tensor) -> np.ndarray:
    """(N, 3, H, W) RGB uint8 -> (N, H, W) uint8 grayscale (ITU-R 601 luma)."""
    if images.dim() != 4:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    check_pixels(images)
    rgb = images.detach().cpu().float()
    gray = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]  # (N, H, W)
    return gray.round().clamp(0, 255).to(torch.uint8).numpy()


def farneback_flow(
    reference_images: Tensor,
    support_images: Tensor,
    *,
    params: FarnebackParams = FarnebackParams(),
    pair_mask: Tensor | None = None,
) -> Tensor:
    """Flow reference -> support for each pair.

    Args:
        reference_images: (N, 3, H, W) RGB uint8.
        support_images: (N, 3, H, W), same.
        params: Farneback parameters.
        pair_mask: optional (N,) bool; pairs where it is False are skipped and get zero flow
            (padded support slots: no need to spend CPU on them).

    Returns:
        (N, 2, H, W) float32 on the images' device, (dx, dy) in pixels of the images.
    """
    if reference_images.shape != support_images.shape:
        raise ValueError(
            f"reference_images {tuple(reference_images.shape)} and support_images "
            f"{tuple(support_images.shape)} must have the same shape"
        )
    reference_gray = to_gray_uint8(reference_images)
    support_gray = to_gray_uint8(support_images)
    n, h, w = reference_gray.shape
    flows = np.zeros((n, h, w, 2), np.float32)
    keep = np.ones(n, bool) if pair_mask is None else pair_mask.detach().cpu().numpy().astype(bool)
    for index in np.flatnonzero(keep):
        flows[index] = cv2.calcOpticalFlowFarneback(
            reference_gray[index], support_gray[index], None, **asdict(params)
        )
    flows_nchw = torch.from_numpy(flows).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 2) -> (N, 2, H, W)
    return flows_nchw.to(reference_images.device)
