"""Images as the method parts receive them: uint8 RGB ``(..., 3, H, W)``, the data pipeline's format.

``TemporalContext.reference_image`` / ``support_images`` carry the pixels unchanged; each consumer
converts them once, for its own needs: the flow net normalises them like the backbone
(:func:`normalize_pixels`), OpenCV's Farneback takes them as they are (``methods.farneback``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness.model.backbone import IMAGENET_MEAN_255, IMAGENET_STD_255


def check_pixels(images: Tensor, *, name: str = "images") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``images`` is uint8 ``(..., 3, H, W)``."""
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"{name} must be (..., 3, H, W) RGB, got {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        raise ValueError(f"{name} must be uint8 pixels (the data pipeline's), got dtype {images.dtype}")


def normalize_pixels(images: Tensor, *, name: str = "images") -> Tensor:
    """uint8 ``(..., 3, H, W)`` -> float32 ``(x - mean) / std`` with the backbone's ImageNet constants."""
    check_pixels(images, name=name)
    mean = torch.tensor(IMAGENET_MEAN_255, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD_255, device=images.device).view(3, 1, 1)
    return (images.float() - mean) / std
