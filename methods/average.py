"""Uniform averaging fusion: the mean of the reference and its valid supports.

The simplest fusion and the control for learned weighting (``cosine_softmax``): every frame in the
window counts the same at every position.
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness.aggregation import Fusion, FusionOutput, register
from methods._checks import check_channels, check_fusion_inputs


@register("fusion", "average")
class AverageFusion(Fusion):
    """Mean of the reference and its valid supports, the same weight at every position.

    ``forward(reference (B, C, H, W), aligned (B, T, C, H, W), valid (B, T))`` returns
    ``FusionOutput(features (B, C, H, W), weights (B, 1 + T, H, W))`` with weight
    ``1 / (1 + number of valid supports)`` for the reference and each valid support, exactly 0 for
    invalid ones (whose features are never read, so NaN padding cannot leak in).
    """

    def __init__(self, channels: int):
        super().__init__(channels)

    def forward(self, reference: Tensor, aligned: Tensor, valid: Tensor) -> FusionOutput:
        check_fusion_inputs(reference, aligned, valid)
        check_channels("reference", reference, self.channels, dim=1)
        b, t, _, h, w = aligned.shape
        frame_valid = torch.cat([valid.new_ones(b, 1), valid], dim=1)  # (B, 1 + T), reference first
        count = frame_valid.sum(dim=1, keepdim=True).to(reference.dtype)  # (B, 1)
        frame_weights = frame_valid.to(reference.dtype) / count  # (B, 1 + T)
        frames = torch.cat([reference.unsqueeze(1), aligned], dim=1)  # (B, 1 + T, C, H, W)
        frames = torch.where(frame_valid[:, :, None, None, None], frames, torch.zeros_like(frames))
        fused = (frames * frame_weights[:, :, None, None, None]).sum(dim=1)  # (B, C, H, W)
        weights = frame_weights[:, :, None, None].expand(b, 1 + t, h, w)  # (B, 1 + T, H, W)
        return FusionOutput(features=fused, weights=weights)
