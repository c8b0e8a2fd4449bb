"""Input checks shared by the method parts, so every part fails with the same clear message."""

from __future__ import annotations

import torch
from torch import Tensor


def check_fusion_inputs(reference: Tensor, aligned: Tensor, valid: Tensor) -> None:
    """Raise ``ValueError`` naming the argument whose shape disagrees.

    Expected: ``reference`` (B, C, H, W), ``aligned`` (B, T, C, H, W), ``valid`` (B, T) bool.
    """
    if reference.dim() != 4:
        raise ValueError(f"reference must be (B, C, H, W), got {tuple(reference.shape)}")
    b, c, h, w = reference.shape
    if aligned.dim() != 5 or aligned.shape[0] != b or tuple(aligned.shape[2:]) != (c, h, w):
        raise ValueError(f"aligned must be (B={b}, T, C={c}, H={h}, W={w}), got {tuple(aligned.shape)}")
    t = aligned.shape[1]
    if tuple(valid.shape) != (b, t):
        raise ValueError(f"valid must be (B={b}, T={t}), got {tuple(valid.shape)}")
    if valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor, got {valid.dtype}")


def check_channels(name: str, features: Tensor, channels: int, dim: int) -> None:
    """Raise ``ValueError`` when ``features.shape[dim]`` is not the part's ``channels``."""
    if features.shape[dim] != channels:
        raise ValueError(
            f"{name} has {features.shape[dim]} channels (shape {tuple(features.shape)}), "
            f"but this part was built for channels={channels}"
        )
