"""A small FlowNet for FGFA-style flow-guided warping, and its pretraining on ground-truth flow.

FGFA (Zhu et al. 2017) estimates flow with a FlowNet pretrained on Flying Chairs and fine-tunes it
end to end with the detector. Here the flow net is small enough for the harness's 64-128 px frames
and CPU budget, and is pretrained on SynthVID's ground-truth flow ("using flow data", STSN Table 1),
then trained end to end: the detection loss reaches it through the differentiable warp.

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

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from methods._images import check_pixels, normalize_pixels
from ops.correlation import correlation
from ops.flow_warp import flow_warp

# A batch of training pairs: reference (N, 3, S, S) uint8, support (N, 3, S, S) uint8,
# ground-truth flow reference -> support (N, 2, S, S) float32 in image pixels.
FlowPairs = tuple[Tensor, Tensor, Tensor]


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


@torch.no_grad()
def evaluate_flownet(flownet: FlowNetC, pairs: FlowPairs) -> dict[str, float]:
    """EPE of the net's finest flow and of the zero flow on held-out ``pairs``, at the net's resolution."""
    was_training = flownet.training
    flownet.eval()
    reference, support, target = pairs
    predicted = flownet(reference, support)
    flownet.train(was_training)
    return {
        "epe": float(endpoint_error(predicted, target)),
        "zero_flow_epe": float(endpoint_error(torch.zeros_like(predicted), target)),
    }


def train_flownet(
    flownet: FlowNetC,
    sample_pairs: Callable[[np.random.Generator], FlowPairs],
    *,
    steps: int,
    lr: float,
    seed: int,
    validation_pairs: FlowPairs,
    progress: bool = True,
) -> dict[str, float | list[float]]:
    """Supervised training of ``flownet`` on pairs with known flow (multi-scale EPE, AdamW, cosine lr).

    Args:
        sample_pairs: ``rng -> (reference, support, flow)`` batch; called once per step.
        validation_pairs: held-out batch, evaluated before and after training.

    Returns metrics: ``epe`` / ``zero_flow_epe`` on the validation pairs after training,
    ``initial_epe`` before, and ``train_loss`` (one value per step).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    initial = evaluate_flownet(flownet, validation_pairs)
    optimizer = torch.optim.AdamW(flownet.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / max(steps, 1)))
    )
    flownet.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc="pretrain flownet", disable=not progress)
    for _ in bar:
        reference, support, target = sample_pairs(rng)
        loss = multiscale_epe(flownet.forward_pyramid(reference, support), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flownet.parameters(), max_norm=10.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    final = evaluate_flownet(flownet, validation_pairs)
    return {**final, "initial_epe": initial["epe"], "train_loss": losses}


def video_pair_sampler(
    videos: list, *, cache, image_size: int, batch_size: int, max_offset: int
) -> Callable[[np.random.Generator], FlowPairs]:
    """``rng -> batch`` of (reference, support, ground-truth flow) drawn from ``videos``.

    Each pair: a random video, a random reference frame, a support drawn uniformly among the frames
    within ``+-max_offset`` of it (not itself). Frames come letterboxed from ``cache``
    (``harness.data.cache.FrameCache``), the flow from ``harness.data.dataset.oracle_flow_for``.
    """
    from harness.data.dataset import oracle_flow_for  # the data layer, imported only when pretraining

    def sample(rng: np.random.Generator) -> FlowPairs:
        references, supports, flows = [], [], []
        for _ in range(batch_size):
            video = videos[int(rng.integers(len(videos)))]
            ref = int(rng.integers(len(video)))
            window = range(max(0, ref - max_offset), min(len(video), ref + max_offset + 1))
            candidates = [i for i in window if i != ref]
            support = int(rng.choice(candidates))
            references.append(cache.frame(video, ref))
            supports.append(cache.frame(video, support))
            flows.append(oracle_flow_for(video, ref, np.array([support]), image_size)[0])
        return (
            torch.from_numpy(np.stack(references)),  # (N, 3, S, S) uint8
            torch.from_numpy(np.stack(supports)),
            torch.from_numpy(np.stack(flows)),  # (N, 2, S, S) float32
        )

    return sample


def pretrain_flownet(
    videos: list,
    *,
    image_size: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    max_offset: int,
    progress: bool = True,
    width: int = 16,
    max_displacement: int = 4,
    validation_size: int = 64,
    cache=None,
) -> dict:
    """Pretrain a :class:`FlowNetC` on SynthVID's ground-truth flow (endpoint error, two scales).

    Args:
        videos: ``VideoRecord`` list with ``flow_path`` (SynthVID train videos). When there are at
            least two, the last ~10% (at least one) are held out for validation.
        image_size: letterbox size S of the frames (the detector's input size).
        max_offset: largest frame distance between reference and support (use the training window's).
        width, max_displacement: the flow net's size (``FlowWarpAlignment``'s ``flownet_*`` kwargs).
        validation_size: number of held-out pairs the metrics are computed on.
        cache: a ``FrameCache`` to reuse (default: a new in-memory one).

    Returns:
        ``{"state_dict": ..., "flownet_kwargs": {...}, "metrics": {"epe", "zero_flow_epe",
        "initial_epe", "train_loss", ...}}``; save it with ``torch.save`` and pass the path as
        ``flownet_weights``.
    """
    usable = [video for video in videos if video.flow_path is not None and len(video) >= 2]
    if not usable:
        raise ValueError("pretrain_flownet needs videos with ground-truth flow (flow_path) and >= 2 frames")
    if max_offset < 1:
        raise ValueError(f"max_offset must be >= 1, got {max_offset}")
    if cache is None:
        from harness.data.cache import FrameCache

        cache = FrameCache(image_size)
    held_out = max(1, len(usable) // 10) if len(usable) >= 2 else 0
    train_videos = usable[: len(usable) - held_out]
    validation_videos = usable[len(usable) - held_out :] or usable
    torch.manual_seed(seed)
    flownet = FlowNetC(width=width, max_displacement=max_displacement)
    sample_train = video_pair_sampler(
        train_videos, cache=cache, image_size=image_size, batch_size=batch_size, max_offset=max_offset
    )
    sample_validation = video_pair_sampler(
        validation_videos,
        cache=cache,
        image_size=image_size,
        batch_size=validation_size,
        max_offset=max_offset,
    )
    validation_pairs = sample_validation(np.random.default_rng(seed + 1))
    metrics = train_flownet(
        flownet,
        sample_train,
        steps=steps,
        lr=lr,
        seed=seed,
        validation_pairs=validation_pairs,
        progress=progress,
    )
    metrics.update(
        train_videos=len(train_videos),
        validation_videos=len(validation_videos),
        steps=steps,
        max_offset=max_offset,
    )
    return {
        "state_dict": {name: value.detach().clone() for name, value in flownet.state_dict().items()},
        "flownet_kwargs": {"width": width, "max_displacement": max_displacement},
        "metrics": metrics,
    }
