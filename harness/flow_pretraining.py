"""Pretraining of the flow net (``methods.flownet.FlowNetC``) on SynthVID's ground-truth flow.

FGFA's FlowNet is pretrained on Flying Chairs before it is trained end to end with the detector;
here the "flow data" is SynthVID's exact flow between training frames (STSN Table 1's "uses flow
data" row). Supervised by the multi-scale endpoint error, AdamW with the trainer's cosine schedule
(:func:`harness.train.lr_factor`). Lives in the harness, not in ``methods``, because it reads the
data layer (frames through ``FrameCache``, flow through ``oracle_flow_for``); its result is a state
dict that ``FlowWarpAlignment(flownet_weights=...)`` loads. It is the one harness module that names a
method's part (the flow net it trains), as a shared preparation of ``harness.prepare``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from harness.data.cache import FrameCache
from harness.data.dataset import oracle_flow_for
from harness.data.records import VideoRecord
from harness.train import lr_factor
from methods.flownet import FlowNetC, endpoint_error, multiscale_epe

# A batch of training pairs: reference (N, 3, S, S) uint8, support (N, 3, S, S) uint8,
# ground-truth flow reference -> support (N, 2, S, S) float32 in image pixels.
FlowPairs = tuple[Tensor, Tensor, Tensor]

WEIGHT_DECAY = 1e-4  # AdamW's, on every flow-net parameter
GRAD_CLIP_NORM = 10.0  # the flow loss is in pixels: early steps have large gradients


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
    optimizer = torch.optim.AdamW(flownet.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps=steps, warmup_steps=0, schedule="cosine")
    )
    flownet.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc="pretrain flownet", disable=not progress)
    for _ in bar:
        reference, support, target = sample_pairs(rng)
        loss = multiscale_epe(flownet.forward_pyramid(reference, support), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flownet.parameters(), max_norm=GRAD_CLIP_NORM)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    final = evaluate_flownet(flownet, validation_pairs)
    return {**final, "initial_epe": initial["epe"], "train_loss": losses}


def video_pair_sampler(
    videos: list[VideoRecord], *, cache: FrameCache, image_size: int, batch_size: int, max_offset: int
) -> Callable[[np.random.Generator], FlowPairs]:
    """``rng -> batch`` of (reference, support, ground-truth flow) drawn from ``videos``.

    Each pair: a random video, a random reference frame, a support drawn uniformly among the frames
    within ``+-max_offset`` of it (not itself). Frames come letterboxed from ``cache``, the flow
    from :func:`harness.data.dataset.oracle_flow_for`.
    """

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
    videos: list[VideoRecord],
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
    cache: FrameCache | None = None,
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
