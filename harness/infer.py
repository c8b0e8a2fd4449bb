"""Inference over a split with a sliding feature buffer: every frame goes through the backbone once.

For each video the engine knows, before it starts, which support frames every reference frame
will use (``harness.data.sampling.support_indices`` with the test-time :class:`SupportSpec`,
deterministic, both boundary modes), hence the last reference that needs each frame. Features of
a frame are computed the first time any reference needs them, kept while a later reference still
needs them and dropped after their last use. A sliding window (``"sliding"`` / ``"buffer_uniform"``)
therefore keeps only about ``2 * radius + 1`` frames of a long video in memory, and whole-video
strategies keep what they must.

References of up to ``batch_videos`` videos are processed together: one backbone call per
iteration on all frames the batch newly needs, one aggregator call and one head call on the
batch of references. A finished video's slot is refilled with the next video.

Window aggregators (``aggregator.mode == "window"``) go through :func:`predict_window_videos`;
stream aggregators (``"stream"``, ``harness.aggregation.StreamAggregator``) through
:func:`predict_stream_videos`: each video's frames in order, one step per frame, the method's
per-video state made fresh when a video starts, the full backbone only on the frames the method
calls keyframes (by each video's own frame position, so batched videos never drift out of step).
Both write detections with :func:`_store_detections`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from harness.aggregation import StreamFrame
from harness.data.records import Detections, FrameDetections, FrameRecord, VideoRecord

# collect(frames of the batch's references, offsets (B, T) int64, AggregationOutput.aux)
CollectFn = Callable[[list[FrameRecord], Tensor, dict[str, Tensor]], None]
# load(video, frame position) -> (uint8 image (3, S, S), letterbox scale = S / max(width, height))
FrameLoader = Callable[[VideoRecord, int], tuple[Tensor, float]]


def build_frame_loader(cache: Any, image_size: int) -> FrameLoader:
    """Wrap a ``harness.data.cache.FrameCache`` (a new in-memory one when None) as a loader."""
    if cache is None:
        from harness.data.cache import FrameCache

        cache = FrameCache(image_size)
    if getattr(cache, "image_size", image_size) != image_size:
        raise ValueError(f"frame cache letterboxes to {cache.image_size}, but image_size={image_size}")

    def load(video: VideoRecord, index: int) -> tuple[Tensor, float]:
        array = np.asarray(cache.frame(video, index))
        if array.shape != (3, image_size, image_size) or array.dtype != np.uint8:
            raise ValueError(
                f"{video.frames[index].image_path}: frame cache returned {array.dtype} {array.shape}, "
                f"expected uint8 (3, {image_size}, {image_size})"
            )
        return torch.from_numpy(np.ascontiguousarray(array)), float(cache.scale(video.frames[index]))

    return load


def plan_supports(num_frames: int, support: Any) -> tuple[np.ndarray, np.ndarray]:
    """Support indices of every reference and the last reference that needs each frame.

    Returns:
        supports (num_frames, T) int64: ``support_indices(r, num_frames, support)`` per row;
        last_use (num_frames,) int64: the largest reference index whose window includes the frame
        (itself as reference or as a support).
    """
    from harness.data.sampling import support_indices

    rows = [np.asarray(support_indices(r, num_frames, support), dtype=np.int64) for r in range(num_frames)]
    lengths = {len(row) for row in rows}
    if len(lengths) > 1:
        raise ValueError(f"support_indices returned varying lengths {sorted(lengths)} for {support}")
    supports = np.stack(rows) if rows else np.zeros((0, 0), np.int64)
    if supports.size and (supports.min() < 0 or supports.max() >= num_frames):
        raise ValueError(f"support_indices returned indices outside [0, {num_frames}) for {support}")
    last_use = np.arange(num_frames, dtype=np.int64)
    for reference in range(num_frames):
        last_use[supports[reference]] = np.maximum(last_use[supports[reference]], reference)
    return supports, last_use


@dataclass
class _VideoCursor:
    """One video in flight: its next reference and the features still needed."""

    video: VideoRecord
    supports: np.ndarray  # (num_frames, T)
    last_use: np.ndarray  # (num_frames,)
    frame_ids: np.ndarray  # (num_frames,) frame_id of each position
    next_reference: int = 0
    features: dict[int, Tensor] = field(default_factory=dict)  # frame index -> (C, H, W)
    images: dict[int, Tensor] = field(default_factory=dict)  # frame index -> (3, S, S) uint8
    scales: dict[int, float] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.next_reference >= len(self.video)

    def evict(self, reference: int) -> None:
        """Drop frames whose last use was ``reference`` or earlier."""
        for index in [i for i in self.features if self.last_use[i] <= reference]:
            del self.features[index]
            self.images.pop(index, None)


def to_original_pixels(boxes: Tensor, *, scale: float, frame: FrameRecord) -> np.ndarray:
    """Letterboxed boxes ``(D, 4)`` -> original-frame pixels, clipped to the frame."""
    boxes = boxes.float().cpu() / scale
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, frame.width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, frame.height)
    return boxes.numpy().astype(np.float32)


def _gather_supports(frames: list[dict[int, Tensor]], references: list[int], support_lists: list) -> Tensor:
    """(B, T, ...) from each video's cached per-frame tensors (``frames[b][i]``, shape (...)) at its
    support positions ``support_lists[b]`` (T each). T = 0 gives an empty (B, 0, ...) tensor shaped
    like the reference's entry, not an error (a method tested with no supports)."""
    per_video = []
    for cache, reference, indices in zip(frames, references, support_lists, strict=True):
        like = cache[reference]
        per_video.append(
            torch.stack([cache[i] for i in indices]) if len(indices) else like.new_zeros((0, *like.shape))
        )
    return torch.stack(per_video)


def _refill(active: list, pending: Iterator[VideoRecord], batch_videos: int, start: Callable) -> None:
    """Fill ``active`` up to ``batch_videos`` slots with ``start(video)`` of the next non-empty videos."""
    while len(active) < batch_videos:
        video = next(pending, None)
        if video is None:
            return
        if len(video):
            active.append(start(video))


def _store_detections(
    detections: Detections, frames: list[FrameRecord], scales: list[float], triples: list[Any]
) -> None:
    """Put each frame's ``(boxes, scores, labels)`` (letterboxed pixels) into ``detections`` in
    original-frame pixels, as every engine writes them."""
    for frame, scale, (boxes, scores, labels) in zip(frames, scales, triples, strict=True):
        detections[(frame.video, frame.frame_id)] = FrameDetections(
            boxes=to_original_pixels(boxes, scale=scale, frame=frame),
            scores=scores.float().cpu().numpy(),
            labels=labels.cpu().numpy().astype(np.int64),
        )


@torch.no_grad()
def predict_window_videos(
    detector: Any,
    videos: list[VideoRecord],
    *,
    support: Any,
    image_size: int,
    load_frame: FrameLoader,
    batch_videos: int,
    device: torch.device,
    progress_bar: Any,
    collect: CollectFn | None = None,
    oracle_flow_fn: Callable[[VideoRecord, int, np.ndarray, int], np.ndarray] | None = None,
) -> Detections:
    """Sliding-buffer inference for window aggregators (see the module docstring)."""
    needs_images = bool(detector.aggregator.needs_images)
    needs_flow = bool(detector.aggregator.needs_oracle_flow)
    if needs_flow and oracle_flow_fn is None:
        raise ValueError("the aggregator needs oracle flow but no oracle_flow_fn was given")
    pending: Iterator[VideoRecord] = iter(videos)
    active: list[_VideoCursor] = []
    detections: Detections = {}

    def start(video: VideoRecord) -> _VideoCursor:
        supports, last_use = plan_supports(len(video), support)
        frame_ids = np.array([frame.frame_id for frame in video.frames], np.int64)
        return _VideoCursor(video=video, supports=supports, last_use=last_use, frame_ids=frame_ids)

    def refill() -> None:
        _refill(active, pending, batch_videos, start)

    refill()
    while active:
        # 1. backbone on every frame the current references need and nobody has computed yet
        missing: list[tuple[_VideoCursor, int]] = []
        for cursor in active:
            reference = cursor.next_reference
            for index in dict.fromkeys([reference, *cursor.supports[reference].tolist()]):
                if index not in cursor.features:
                    missing.append((cursor, index))
        if missing:
            loaded = [load_frame(cursor.video, index) for cursor, index in missing]
            images = torch.stack([image for image, _ in loaded]).to(device)  # (M, 3, S, S)
            features = detector.extract(images)  # (M, C, S/8, S/8)
            for (cursor, index), feature, image, (_, scale) in zip(
                missing, features, images, loaded, strict=True
            ):
                cursor.features[index] = feature
                cursor.scales[index] = scale
                if needs_images:
                    cursor.images[index] = image
        # 2. aggregation + head on the batch of references
        references = [cursor.next_reference for cursor in active]
        reference_feats = torch.stack(
            [c.features[r] for c, r in zip(active, references, strict=True)]
        )  # (B, C, H, W)
        support_lists = [c.supports[r] for c, r in zip(active, references, strict=True)]
        support_feats = _gather_supports(
            [c.features for c in active], references, support_lists
        )  # (B, T, C, H, W)
        # offsets in frame ids (as the training data has them), not positions: lists may skip frames
        offsets = torch.as_tensor(
            np.stack(
                [
                    c.frame_ids[s] - c.frame_ids[r]
                    for c, s, r in zip(active, support_lists, references, strict=True)
                ]
            ),
            device=device,
        ).reshape(len(active), -1)  # (B, T)
        valid = torch.ones(offsets.shape, dtype=torch.bool, device=device)
        images = support_images = flow = None
        if needs_images:
            images = torch.stack([c.images[r] for c, r in zip(active, references, strict=True)])
            support_images = _gather_supports(
                [c.images for c in active], references, support_lists
            )  # (B, T, 3, S, S)
        if needs_flow:
            flow = torch.stack(
                [
                    torch.as_tensor(oracle_flow_fn(c.video, r, s, image_size))
                    for c, r, s in zip(active, references, support_lists, strict=True)
                ]
            ).to(device)  # (B, T, 2, S, S)
        agg_out = detector.aggregate(
            reference_feats,
            support_feats,
            offsets,
            valid,
            images=images,
            support_images=support_images,
            oracle_flow=flow,
        )
        frames = [c.video.frames[r] for c, r in zip(active, references, strict=True)]
        if collect is not None:
            collect(frames, offsets.cpu(), {k: v.detach().cpu() for k, v in agg_out.aux.items()})
        scales = [c.scales[r] for c, r in zip(active, references, strict=True)]
        _store_detections(detections, frames, scales, detector.detect(agg_out, image_size))
        for cursor, reference in zip(active, references, strict=True):
            cursor.evict(reference)
            cursor.next_reference += 1
        progress_bar.update(len(active))
        active[:] = [cursor for cursor in active if not cursor.done]
        refill()
    return detections


def stream_features(
    detector: Any, images: Tensor, *, positions: list[int], frame_ids: list[int], states: list[Any]
) -> Any:
    """One stream step on one frame of each of B videos: uint8 ``images (B, 3, S, S)`` at frame
    ``positions`` (0-based, in each video) with ``frame_ids``; ``states`` are updated in place.

    ``forward_low`` on every frame, ``forward_high`` only on the rows the aggregator calls keyframes,
    then ``detector.stream_step``; returns its ``AggregationOutput`` (streams (B, C, H, W)). The one
    per-frame path of the stream engine and of ``harness.measure``."""
    aggregator = detector.aggregator
    device = images.device
    keyframe = torch.tensor([bool(aggregator.is_keyframe(p)) for p in positions], device=device)  # (B,)
    low = detector.extract_low(images)  # (B, Cl, S/4, S/4)
    if bool(keyframe.any()):
        high = detector.extract_high(low[keyframe])  # (R, C, S/8, S/8)
    else:
        grid = images.shape[-1] // detector.feature_stride
        high = low.new_zeros((0, detector.backbone.out_channels, grid, grid))
    frame = StreamFrame(
        low=low,
        keyframe=keyframe,
        high=high,
        frame_ids=torch.tensor(frame_ids, dtype=torch.int64, device=device),
        images=images if aggregator.needs_images else None,
        feature_stride=detector.feature_stride,
    )
    return detector.stream_step(frame, states)


@dataclass
class _StreamCursor:
    """One video in a stream slot: its next frame and the method's state for it."""

    video: VideoRecord
    state: Any
    position: int = 0

    @property
    def done(self) -> bool:
        return self.position >= len(self.video)


@torch.no_grad()
def predict_stream_videos(
    detector: Any,
    videos: list[VideoRecord],
    *,
    image_size: int,
    load_frame: FrameLoader,
    batch_videos: int,
    device: torch.device,
    progress_bar: Any,
    collect: CollectFn | None = None,
) -> Detections:
    """Stream inference for stream aggregators (see the module docstring).

    Per iteration: the next frame of each of up to ``batch_videos`` videos; ``forward_low`` on all
    of them, ``forward_high`` on the rows whose video is at a keyframe position
    (``aggregator.is_keyframe(position)``), one ``step`` with the videos' states, one head call. A
    finished video's slot is refilled with the next video and a fresh ``init_state()``. ``collect``
    gets offsets of shape (B, 0) (a stream has no support window) and the step's aux.
    """
    aggregator = detector.aggregator
    if aggregator.needs_oracle_flow:
        raise ValueError(
            f"{type(aggregator).__name__} needs oracle flow, which the stream engine does not load "
            "(a stream method keeps what it needs of earlier frames in its state)"
        )
    if not aggregator.is_keyframe(0):
        raise ValueError(
            f"{type(aggregator).__name__}.is_keyframe(0) is False: a video must start at a keyframe"
        )
    pending: Iterator[VideoRecord] = iter(videos)
    active: list[_StreamCursor] = []
    detections: Detections = {}

    def refill() -> None:
        _refill(active, pending, batch_videos, lambda video: _StreamCursor(video, aggregator.init_state()))

    refill()
    while active:
        loaded = [load_frame(cursor.video, cursor.position) for cursor in active]
        images = torch.stack([image for image, _ in loaded]).to(device)  # (B, 3, S, S)
        frames = [cursor.video.frames[cursor.position] for cursor in active]
        states = [cursor.state for cursor in active]
        agg_out = stream_features(
            detector,
            images,
            positions=[cursor.position for cursor in active],
            frame_ids=[frame.frame_id for frame in frames],
            states=states,
        )
        for cursor, state in zip(active, states, strict=True):
            cursor.state = state
        if collect is not None:
            collect(
                frames,
                torch.zeros((len(frames), 0), dtype=torch.int64),
                {k: v.detach().cpu() for k, v in agg_out.aux.items()},
            )
        scales = [scale for _, scale in loaded]
        _store_detections(detections, frames, scales, detector.detect(agg_out, image_size))
        for cursor in active:
            cursor.position += 1
        progress_bar.update(len(active))
        active[:] = [cursor for cursor in active if not cursor.done]
        refill()
    return detections


def predict_split(
    detector: Any,
    videos: list[VideoRecord],
    *,
    support: Any,
    image_size: int,
    cache: Any = None,
    batch_videos: int = 4,
    device: str | torch.device = "cpu",
    progress: bool = True,
    collect: CollectFn | None = None,
) -> Detections:
    """Detections for every frame of ``videos`` in original-frame pixels.

    Args:
        detector: a :class:`~harness.model.detector.VideoDetector` (put in eval mode here).
        videos: the split.
        support: test-time ``SupportSpec`` (``support_indices`` decides the frames, deterministically);
            unused by stream aggregators, which choose their keyframes themselves.
        image_size: letterboxed frame size S.
        cache: a ``harness.data.cache.FrameCache`` for ``image_size`` (``frame(video, index)`` ->
            uint8 (3, S, S), ``scale(frame)``); None = a fresh in-memory one.
        batch_videos: videos whose references are batched together.
        collect: called per batch with (reference frames, offsets (B, T), aux) so an ablation can
            gather fusion weights or sampling offsets without the engine knowing what they are.
    """
    if batch_videos < 1:
        raise ValueError(f"batch_videos must be >= 1, got {batch_videos}")
    device = torch.device(device)
    detector.eval().to(device)
    load_frame = build_frame_loader(cache, image_size)
    bar = tqdm(total=sum(len(v) for v in videos), desc="inference", unit="frame", disable=not progress)
    try:
        mode = detector.aggregator.mode
        if mode == "stream":
            return predict_stream_videos(
                detector,
                videos,
                image_size=image_size,
                load_frame=load_frame,
                batch_videos=batch_videos,
                device=device,
                progress_bar=bar,
                collect=collect,
            )
        if mode != "window":
            raise ValueError(
                f"{type(detector.aggregator).__name__} has mode={mode!r}; the engines are 'window' "
                "and 'stream'"
            )
        oracle_flow_fn = None
        if detector.aggregator.needs_oracle_flow:
            from harness.data.dataset import oracle_flow_for

            oracle_flow_fn = oracle_flow_for
        return predict_window_videos(
            detector,
            videos,
            support=support,
            image_size=image_size,
            load_frame=load_frame,
            batch_videos=batch_videos,
            device=device,
            progress_bar=bar,
            collect=collect,
            oracle_flow_fn=oracle_flow_fn,
        )
    finally:
        bar.close()
