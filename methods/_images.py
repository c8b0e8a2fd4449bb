"""Image tensors as the flow sources want them: RGB pixel values in 0..255.

The detector may hand images to a method as uint8 pixels (the data pipeline's format) or, as the
``TemporalContext`` docstring says, "normalised": float ``(x - mean) / std`` with ImageNet's mean
and std on the 0..255 scale (what ``harness.model.backbone`` applies; a test checks the constants
stay in sync). Both are accepted and mapped back to pixels, so the flow net and OpenCV always see
the same thing whatever the detector passes.
"""

from __future__ import annotations

import torch
from torch import Tensor

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


def to_pixels(images: Tensor, *, name: str = "images") -> Tensor:
    """(..., 3, H, W) uint8 pixels or ImageNet-normalised floats -> float32 pixels in 0..255."""
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"{name} must be (..., 3, H, W) RGB, got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float()
    if not images.is_floating_point():
        raise ValueError(f"{name} must be uint8 pixels or normalised floats, got dtype {images.dtype}")
    mean = images.new_tensor(IMAGENET_MEAN_255).view(3, 1, 1)
    std = images.new_tensor(IMAGENET_STD_255).view(3, 1, 1)
    return images.float() * std.float() + mean.float()
