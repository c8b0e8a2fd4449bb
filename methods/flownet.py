"""A small FlowNet for FGFA-style flow-guided warping, and its endpoint-error losses.

FGFA (Zhu et al. 2017) estimates flow with a FlowNet pretrained on Flying Chairs and fine-tunes it
end to end with the detector. Here the flow net is small enough for the harness's 64-128 px frames
and CPU budget; ``harness.flow_pretraining`` pretrains it on SynthVID's ground-truth flow ("using
flow data", STSN Table 1), then it is trained end to end: the detection loss reaches it through the
differentiable warp.

Variant: FlowNet-C-like (a local correlation cost volume between the two frames' features), not
FlowNet-S (the two frames stacked on the channels). With the correlation the net only has to learn
to read a matching score, not to discover matching from raw pixel stacks, which is what makes it
learn useful flow in a few hundred CPU steps; it also exercises ``ops.correlation``. Architecture:

    shared encoder  (both frames)      1/2 -> 1/4 (features q) -> 1/8 (features e)
    coarse:   corr(e_ref, e_sup, d) ++ proj(e_ref)      -> flow at 1/8
    refine:   q_ref ++ warp(q_sup, up(flow)) ++ up(flow) -> residual flow at 1/4 (PWC-style warp)

Output: flow reference -> support, (N, 2, S/4, S/4), (dx, dy) in pixels of the INPUT IMAGE: the
reference pixel p is found at p + flow(p) in the support (the harness convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods._images import check_pixels, normalize_pixels
from ops.correlation import correlation
from ops.flow_warp import flow_warp


def _conv(in_channels: int, out_channels: int, *, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
        nn.LeakyReLU(0.1, inplace=True),
    )


class FlowNetC(nn.Module):
    """Small FlowNet-C: ``forward(reference_images, support_images) -> flow (N, 2, S/4, S/4)``.

    Args:
        width: channels of the first encoder stage (doubled at 1/4 and again at 1/8).
        max_displacement: correlation radius d at 1/8 resolution: matches within +-8d image pixels
            are found directly; the 1/4 refinement adds a few pixels more.

    Images: (N, 3, S, S) RGB uint8, S a multiple of 8 (normalised here like the backbone's input).
    """

    output_stride = 4

    def __init__(self, *, width: int = 16, max_displacement: int = 4):
        super().__init__()
        self.width = width
        self.max_displacement = max_displacement
        w = width
        self.encoder_half = nn.Sequential(_conv(3, w, stride=2), _conv(w, w))
        self.encoder_quarter = nn.Sequential(_conv(w, 2 * w, stride=2), _conv(2 * w, 2 * w))
        self.encoder_eighth = nn.Sequential(_conv(2 * w, 4 * w, stride=2), _conv(4 * w, 4 * w))
        cost_channels = (2 * max_displacement + 1) ** 2
        self.reference_projection = _conv(4 * width, width)
        self.coarse_decoder = nn.Sequential(
            _conv(cost_channels + width, 4 * width),
            _conv(4 * width, 2 * width),
            nn.Conv2d(2 * width, 2, kernel_size=3, padding=1),
        )
        self.refine_decoder = nn.Sequential(
            _conv(2 * width + 2 * width + 2, 2 * width),
            _conv(2 * width, width),
            nn.Conv2d(width, 2, kernel_size=3, padding=1),
        )
        # (K, 2) displacement (dx, dy) of each cost-volume channel, dy-major as ops.correlation orders them.
        shifts = torch.arange(-max_displacement, max_displacement + 1, dtype=torch.float32)
        grid_y, grid_x = torch.meshgrid(shifts, shifts, indexing="ij")
        displacements = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)  # (K, 2)
        self.register_buffer("displacements", displacements, persistent=False)
        self.matching_sharpness = nn.Parameter(torch.tensor(10.0))  # softmax inverse temperature
        for module in self.modules():  # MSRA init as FlowNet (PyTorch's default shrinks activations)
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=0.1, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)
        with torch.no_grad():  # start close to zero flow
            for head in (self.coarse_decoder[-1], self.refine_decoder[-1]):
                head.weight.mul_(0.1)
                head.bias.zero_()

    def _check(self, reference_images: Tensor, support_images: Tensor) -> None:
        if reference_images.dim() != 4 or reference_images.shape[1] != 3:
            raise ValueError(f"reference_images must be (N, 3, S, S), got {tuple(reference_images.shape)}")
        if support_images.shape != reference_images.shape:
            raise ValueError(
                f"support_images {tuple(support_images.shape)} must match reference_images "
                f"{tuple(reference_images.shape)}"
            )
        check_pixels(reference_images, name="reference_images")
        check_pixels(support_images, name="support_images")
        if reference_images.shape[-1] % 8 or reference_images.shape[-2] % 8:
            raise ValueError(f"image size must be a multiple of 8, got {tuple(reference_images.shape[-2:])}")

    def forward_pyramid(self, reference_images: Tensor, support_images: Tensor) -> list[Tensor]:
        """Flows coarse to fine: [(N, 2, S/8, S/8), (N, 2, S/4, S/4)], both in image pixels."""
        self._check(reference_images, support_images)
        n = reference_images.shape[0]
        images = torch.cat([reference_images, support_images], dim=0)  # (2N, 3, S, S)
        images = normalize_pixels(images)  # (2N, 3, S, S) uint8 -> float32, normalised like the backbone
        quarter = self.encoder_quarter(self.encoder_half(images))  # (2N, 2w, S/4, S/4)
        eighth = self.encoder_eighth(quarter)  # (2N, 4w, S/8, S/8)
        quarter_ref, quarter_sup = quarter[:n], quarter[n:]
        eighth_ref, eighth_sup = eighth[:n], eighth[n:]

        # Cosine cost volume: correlation of unit-length features, times C (its mean over channels).
        cost = correlation(
            F.normalize(eighth_ref, dim=1), F.normalize(eighth_sup, dim=1), self.max_displacement
        )
        cost = cost * eighth_ref.shape[1]  # (N, K, S/8, S/8), in [-1, 1]
        # Coarse flow = soft-argmax of the cost volume (expected displacement) + a learned correction.
        matching = torch.softmax(cost * self.matching_sharpness, dim=1)  # (N, K, S/8, S/8)
        expected = torch.einsum("nkhw,kc->nchw", matching, self.displacements)  # (N, 2, S/8, S/8)
        coarse = expected + self.coarse_decoder(
            torch.cat([F.leaky_relu(cost, 0.1), self.reference_projection(eighth_ref)], dim=1)
        )
        # coarse is in 1/8-grid pixels; upsampled to 1/4 its vectors double.
        upsampled = 2.0 * F.interpolate(coarse, scale_factor=2.0, mode="bilinear", align_corners=False)
        warped_support = flow_warp(quarter_sup, upsampled)  # (N, 2w, S/4, S/4) on the reference grid
        fine = upsampled + self.refine_decoder(torch.cat([quarter_ref, warped_support, upsampled], dim=1))
        return [8.0 * coarse, float(self.output_stride) * fine]

    def forward(self, reference_images: Tensor, support_images: Tensor) -> Tensor:
        """(N, 3, S, S) x 2 -> flow reference -> support (N, 2, S/4, S/4) in image pixels."""
        return self.forward_pyramid(reference_images, support_images)[-1]


def downsample_flow(flow: Tensor, size: tuple[int, int]) -> Tensor:
    """Average-pool a flow field (N, 2, H, W) to ``size`` keeping its units (the vectors are unchanged)."""
    if tuple(flow.shape[-2:]) == tuple(size):
        return flow
    return F.adaptive_avg_pool2d(flow, size)


def endpoint_error(predicted: Tensor, target: Tensor) -> Tensor:
    """Mean Euclidean distance of flow fields (N, 2, h, w); ``target`` is pooled to ``predicted``'s size."""
    target = downsample_flow(target, tuple(predicted.shape[-2:]))
    return (predicted - target).norm(dim=1).mean()


def multiscale_epe(
    pyramid: list[Tensor], target: Tensor, *, weights: tuple[float, ...] = (0.5, 1.0)
) -> Tensor:
    """FlowNet's multi-scale training loss: weighted endpoint errors of each level (coarse to fine)."""
    if len(weights) != len(pyramid):
        raise ValueError(f"{len(pyramid)} pyramid levels but {len(weights)} loss weights")
    return sum(weight * endpoint_error(level, target) for weight, level in zip(weights, pyramid, strict=True))
