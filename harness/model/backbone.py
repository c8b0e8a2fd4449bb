"""Small ResNet-style backbone with output stride 8, shared by every method.

Normalisation is GroupNorm, not BatchNorm: its output for one image does not depend on the other
images in the batch, so training at batch 16, inference at batch 1 and the per-frame sliding-buffer
engine (which batches frames of several videos together) all compute the same features, and there
are no running statistics to freeze when a phase-2 model is initialised from phase 1.

The network is split in two so stream methods (LSTS) can run the cheap first part on every frame
and the expensive rest only on keyframes:

* :meth:`ResNetBackbone.forward_low`: uint8 images ``(B, 3, S, S)`` -> ``(B, width, S/4, S/4)``
  (stem at stride 2 + first stage at stride 4);
* :meth:`ResNetBackbone.forward_high`: ``(B, width, S/4, S/4)`` -> ``(B, out_channels, S/8, S/8)``
  (later stages, the first of them at stride 8, then a 1x1 projection).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# ImageNet mean/std in 0..255 units: the usual choice, and harmless for synthetic data. The project's
# only copy: images travel as uint8 and every network that reads pixels (this backbone, the flow net
# through methods/_images.py) normalises them with these.
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups that divide ``channels`` (16-channel stems get 8 groups of 2)."""
    groups = 8
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with a projection shortcut when shape changes."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.norm1 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.norm2 = _group_norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), _group_norm(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def _stage(
    in_channels: int, out_channels: int, *, num_blocks: int, stride: int, dilation: int = 1
) -> nn.Sequential:
    blocks = [BasicBlock(in_channels, out_channels, stride=stride, dilation=dilation)]
    blocks += [BasicBlock(out_channels, out_channels, dilation=dilation) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class ResNetBackbone(nn.Module):
    """Stem (3x3 conv, stride 2) + ``len(depth)`` stages of basic blocks, output stride 8.

    Stage 0 (``width`` channels) runs at stride 4, stage 1 (``2 * width``) at stride 8; later
    stages stay at stride 8 with ``2 * width`` channels and dilation 2 (DeepLab-style: a wider
    receptive field without losing the 16x16 map of a 128x128 frame, and without the cost of
    doubling channels at full stride-8 resolution, which would dominate the FLOPs). A 1x1 conv
    projects to ``out_channels``.

    Args:
        width: channels of the stem and of stage 0.
        depth: residual blocks per stage; at least two stages (the second reaches stride 8).
        out_channels: channels of the output map, what the aggregator and head see.
    """

    feature_stride = 8

    def __init__(self, *, width: int = 32, depth: tuple[int, ...] = (1, 1, 1), out_channels: int = 64):
        super().__init__()
        if len(depth) < 2 or any(d < 1 for d in depth):
            raise ValueError(f"depth must list >= 2 stages of >= 1 block each (stride 8), got {depth}")
        self.width = width
        self.out_channels = out_channels
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN_255).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD_255).view(1, 3, 1, 1), persistent=False)
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), _group_norm(width), nn.ReLU(inplace=True)
        )
        self.stage0 = _stage(width, width, num_blocks=depth[0], stride=2)
        later = [_stage(width, 2 * width, num_blocks=depth[1], stride=2)]
        channels = 2 * width
        for num_blocks in depth[2:]:
            later.append(_stage(channels, channels, num_blocks=num_blocks, stride=1, dilation=2))
        self.later_stages = nn.Sequential(*later)
        self.project = nn.Conv2d(channels, out_channels, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 (or 0..255 float) images ``(B, 3, S, S)`` -> float32 normalised."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-1] % 8 or images.shape[-2] % 8:
            raise ValueError(
                f"image size must be a multiple of 8 (output stride), got {tuple(images.shape[-2:])}"
            )
        return (images.float() - self.pixel_mean) / self.pixel_std

    def forward_low(self, images: Tensor) -> Tensor:
        """uint8 ``(B, 3, S, S)`` -> low-level features ``(B, width, S/4, S/4)``."""
        return self.stage0(self.stem(self.normalize(images)))

    def forward_high(self, low: Tensor) -> Tensor:
        """``(B, width, S/4, S/4)`` -> ``(B, out_channels, S/8, S/8)``."""
        return self.project(self.later_stages(low))

    def forward(self, images: Tensor) -> Tensor:
        """uint8 ``(B, 3, S, S)`` -> ``(B, out_channels, S/8, S/8)``."""
        return self.forward_high(self.forward_low(images))
