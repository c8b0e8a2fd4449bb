"""Training/inference samples: a reference frame, its support frames, boxes and (optionally) oracle flow.

All images are letterboxed uint8 ``(3, S, S)`` (see ``cache.py``); boxes and flows are in
letterboxed pixels. Random supports come from ``default_rng([seed, epoch, index])``, so a sample
depends only on (seed, epoch, index): runs are reproducible with any number of loader workers.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from harness.config import DataConfig, SupportSpec
from harness.data import imagesets
from harness.data.cache import FrameCache
from harness.data.cocovid import TRAIN_FRAME_FLAG, read_cocovid, read_cocovid_train_frames
from harness.data.errors import DataError
from harness.data.flow import chained_flow, letterbox_flow, load_flow
from harness.data.records import FrameRecord, VideoRecord
from harness.data.sampling import support_indices
from harness.data.vid import read_det_split, read_vid_split


@dataclass
class Sample:
    """One reference frame with its supports.

    Attributes:
        image: uint8 (3, S, S) reference frame.
        support_images: uint8 (T, 3, S, S).
        offsets: int64 (T,) support frame_id minus reference frame_id (0 for a still's copies).
        boxes: float32 (N, 4) ``x1, y1, x2, y2`` in letterboxed pixels; labels: int64 (N,).
        oracle_flow: float32 (T, 2, S, S) or None: reference -> support displacement in letterboxed
            pixels (reference pixel p is at p + flow in the support frame); zero for a copy of the
            reference (padding, stills).
        frame: the reference frame's record; scale: letterbox scale (letterboxed = original * scale).
    """

    image: torch.Tensor
    support_images: torch.Tensor
    offsets: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    oracle_flow: torch.Tensor | None
    frame: FrameRecord
    scale: float


@dataclass
class Batch:
    """Collated samples. ``valid`` (B, T) is False where a sample had fewer supports than the
    batch's T (zero-padded images, offset 0); with one support spec per dataset it is all True.

    images uint8 (B, 3, S, S); support_images uint8 (B, T, 3, S, S); offsets int64 (B, T);
    boxes / labels: lists of (N_i, 4) float32 / (N_i,) int64; oracle_flow float32 (B, T, 2, S, S) or None.
    """

    images: torch.Tensor
    support_images: torch.Tensor
    offsets: torch.Tensor
    valid: torch.Tensor
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    oracle_flow: torch.Tensor | None
    frames: list[FrameRecord]
    scales: list[float]

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor on ``device`` (non-blocking when the source is pinned)."""
        moved = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device, non_blocking=True)
            elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
                value = [v.to(device, non_blocking=True) for v in value]
            moved[field.name] = value
        return Batch(**moved)


def collate(samples: list[Sample]) -> Batch:
    """Stack samples into a :class:`Batch`, padding supports to the largest T (see ``valid``)."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    batch_size, num_supports = len(samples), max(s.support_images.shape[0] for s in samples)
    size = samples[0].image.shape[-1]
    support_images = torch.zeros((batch_size, num_supports, 3, size, size), dtype=torch.uint8)
    offsets = torch.zeros((batch_size, num_supports), dtype=torch.int64)
    valid = torch.zeros((batch_size, num_supports), dtype=torch.bool)
    with_flow = all(s.oracle_flow is not None for s in samples)
    oracle_flow = torch.zeros((batch_size, num_supports, 2, size, size)) if with_flow else None
    for i, sample in enumerate(samples):
        t = sample.support_images.shape[0]
        support_images[i, :t] = sample.support_images
        offsets[i, :t] = sample.offsets
        valid[i, :t] = True
        if with_flow:
            oracle_flow[i, :t] = sample.oracle_flow
    return Batch(
        images=torch.stack([s.image for s in samples]),
        support_images=support_images,
        offsets=offsets,
        valid=valid,
        boxes=[s.boxes for s in samples],
        labels=[s.labels for s in samples],
        oracle_flow=oracle_flow,
        frames=[s.frame for s in samples],
        scales=[s.scale for s in samples],
    )


def oracle_flow_for(video: VideoRecord, ref: int, supports: np.ndarray, image_size: int) -> np.ndarray:
    """Ground-truth reference -> support displacement, float32 (T, 2, S, S) in letterboxed pixels.

    ``ref`` and ``supports`` are positions in ``video.frames``. Consecutive flows are chained by
    bilinear warping for supports more than one frame away; a support equal to the reference gets
    zero flow. Needs ``video.flow_path`` (SynthVID); per-video flow arrays are cached.
    """
    if video.flow_path is None:
        raise DataError(f"{video.name}: no ground-truth flow (flow_path is None; only SynthVID has it)")
    forward, backward = load_flow(video.flow_path)
    reference = video.frames[ref]
    if forward.shape[0] < video.frames[-1].frame_id:
        raise DataError(
            f"{video.flow_path}: {forward.shape[0]} flow fields for a video whose last frame is "
            f"{video.frames[-1].frame_id}"
        )
    downsample = reference.width / forward.shape[-1]
    out = np.zeros((len(supports), 2, image_size, image_size), np.float32)
    for i, support in enumerate(supports):
        target = video.frames[int(support)].frame_id
        if target == reference.frame_id:
            continue
        flow = chained_flow(forward, backward, reference.frame_id, target, downsample)
        out[i] = letterbox_flow(flow, reference.width, reference.height, image_size)
    return out


class VideoFrameDataset(torch.utils.data.Dataset):
    """Reference frames of videos (plus optional stills) with supports chosen by a :class:`SupportSpec`.

    Indices ``0 .. R-1`` are the R reference frames (all frames of ``videos``, or the
    ``(video name, frame_id)`` pairs given as ``frames``); indices ``R ..`` are stills, as many as
    make up ``still_fraction`` of the dataset (cycling through ``stills``). A still's supports are
    copies of itself (offsets 0, zero flow).
    """

    def __init__(
        self,
        videos: Sequence[VideoRecord],
        *,
        image_size: int,
        support: SupportSpec,
        frames: str | Iterable[tuple[str, int]] = "all",
        with_oracle_flow: bool = False,
        seed: int = 0,
        cache: FrameCache | None = None,
        stills: Sequence[VideoRecord] = (),
        still_fraction: float = 0.0,
    ):
        if not 0 <= still_fraction < 1:
            raise ValueError(f"still_fraction must be in [0, 1), got {still_fraction}")
        self.videos, self.stills = list(videos), list(stills)
        self.image_size, self.support, self.seed = int(image_size), support, int(seed)
        self.with_oracle_flow = with_oracle_flow
        self.cache = cache if cache is not None else FrameCache(image_size)
        if self.cache.image_size != self.image_size:
            raise ValueError(f"cache image_size {self.cache.image_size} != dataset image_size {image_size}")
        self.epoch = 0
        if isinstance(frames, str):
            if frames != "all":
                raise ValueError(f"frames must be 'all' or (video, frame_id) pairs, got {frames!r}")
            self.references = [(v, f) for v in range(len(self.videos)) for f in range(len(self.videos[v]))]
        else:
            position = {
                (video.name, frame.frame_id): (v, f)
                for v, video in enumerate(self.videos)
                for f, frame in enumerate(video.frames)
            }
            self.references = []
            for video_name, frame_id in frames:
                if (video_name, frame_id) not in position:
                    raise DataError(
                        f"reference frame {video_name}/{frame_id:06d} is not among the loaded videos"
                    )
                self.references.append(position[(video_name, frame_id)])
        if with_oracle_flow:
            missing = [v.name for v in self.videos if v.flow_path is None and len(v) > 1]
            if missing:
                raise DataError(f"with_oracle_flow needs ground-truth flow; videos without it: {missing[:3]}")
        wanted = round(len(self.references) * still_fraction / (1 - still_fraction))
        self.num_stills = wanted if self.stills else 0

    def set_epoch(self, epoch: int) -> None:
        """Change the random supports drawn for every index (call once per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.references) + self.num_stills

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if index < len(self.references):
            video_index, ref = self.references[index]
            video = self.videos[video_index]
            supports = support_indices(ref, len(video), self.support, rng)
        else:
            video = self.stills[(index - len(self.references)) % len(self.stills)]
            ref, supports = 0, support_indices(0, 1, self.support, rng)
        frames = self.cache.video(video)
        frame = video.frames[ref]
        scale = self.cache.scale(frame)
        oracle_flow = None
        if self.with_oracle_flow:
            if video.is_still or len(video) == 1:
                oracle_flow = torch.zeros((len(supports), 2, self.image_size, self.image_size))
            else:
                oracle_flow = torch.from_numpy(oracle_flow_for(video, ref, supports, self.image_size))
        offsets = np.array([video.frames[int(s)].frame_id - frame.frame_id for s in supports], np.int64)
        return Sample(
            image=torch.from_numpy(np.array(frames[ref])),
            support_images=torch.from_numpy(np.array(frames[supports])).reshape(
                -1, 3, self.image_size, self.image_size
            ),
            offsets=torch.from_numpy(offsets),
            boxes=torch.from_numpy(frame.boxes * np.float32(scale)),
            labels=torch.from_numpy(frame.labels.copy()),
            oracle_flow=oracle_flow,
            frame=frame,
            scale=scale,
        )


# ---------------------------------------------------------------------------------------------
# From a DataConfig
# ---------------------------------------------------------------------------------------------


def data_root(data: DataConfig) -> Path:
    """The dataset root: ``data.root``, or SynthVID (generated on first use) when it is None."""
    if data.root is not None:
        return Path(data.root)
    from harness.data.synthvid import ensure_synthvid

    return ensure_synthvid(data.synth_preset, data.synth_seed)


def load_split(data: DataConfig, split: str, *, max_videos: int | None = None) -> list[VideoRecord]:
    """Videos of ``split`` (``"det"``: the DET stills) of the configured dataset.

    SynthVID's parsed records are kept in ``<root>/cache/records-<split>.pkl`` (the dataset is immutable
    once complete). With ``format="cocovid"`` the annotation file is ``data.cocovid_json`` with ``{split}``
    replaced by the split name, and images are found under ``data.root``. ``max_videos`` keeps the
    split's first videos (None = all).
    """
    root = data_root(data)
    if data.root is None and data.format == "vid":  # SynthVID never changes once complete: reuse the parse
        records_path = root / "cache" / f"records-{split}.pkl"
        if records_path.is_file():
            videos = pickle.loads(records_path.read_bytes())
        else:
            videos = read_det_split(root) if split == "det" else read_vid_split(root, split)
            records_path.parent.mkdir(parents=True, exist_ok=True)
            partial = records_path.with_suffix(f".tmp{os.getpid()}")
            partial.write_bytes(pickle.dumps(videos))
            partial.replace(records_path)
        return videos[:max_videos] if max_videos is not None else videos
    if split == "det":
        return read_det_split(root, on_bad_input=data.on_bad_input)
    if data.format == "cocovid":
        if data.cocovid_json is None:
            raise ValueError("DataConfig.format='cocovid' needs cocovid_json")
        videos = read_cocovid(
            data.cocovid_json.format(split=split), image_root=root, on_bad_input=data.on_bad_input
        )
        return videos[:max_videos] if max_videos is not None else videos
    return read_vid_split(root, split, on_bad_input=data.on_bad_input, max_videos=max_videos)


def _has_stills(root: Path) -> bool:
    return (root / "ImageSets" / "DET_train_30classes.txt").is_file() or (
        root / "Annotations" / "DET"
    ).is_dir()


def build_dataset(
    data: DataConfig,
    split: str,
    *,
    phase: int,
    seed: int,
    support: SupportSpec | None = None,
    with_oracle_flow: bool = False,
) -> VideoFrameDataset:
    """The dataset of one training phase (or, with ``support``, of a test-time window).

    * phase 1 (still-image detector): single frames (no supports) of the split's videos, and, for the
      training split, every DET still once.
    * phase 2 (video model): ``support`` (default ``data.train_support``) on the split; on the
      training split stills are mixed in at ``still_fraction``.
    ``with_oracle_flow`` (phase 2) loads the ground-truth flow reference -> support, for methods that
    declare ``needs_oracle_flow`` (SynthVID only).
    Training references follow ``data.train_list`` when set: an FGFA list, or with ``format="cocovid"``
    ``"is_vid_train_frame"`` for the frames the COCO-VID file flags (as mmtracking trains). SynthVID
    keeps decoded frames as ``.npy`` under ``<root>/cache``; other roots are cached in memory only.
    """
    if phase not in (1, 2):
        raise ValueError(f"phase must be 1 or 2, got {phase}")
    root = data_root(data)
    videos = load_split(data, split)
    training = split == data.train_split
    frames: str | list[tuple[str, int]] = "all"
    if training and data.train_list == TRAIN_FRAME_FLAG:
        if data.format != "cocovid":
            raise ValueError(f"train_list={TRAIN_FRAME_FLAG!r} needs format='cocovid' (a COCO-VID flag)")
        list_path = Path(data.cocovid_json.format(split=split))
        frames = read_cocovid_train_frames(list_path, on_bad_input=data.on_bad_input)
    elif training and data.train_list is not None:
        list_path = Path(data.train_list)
        list_path = list_path if list_path.is_file() else root / "ImageSets" / list_path
        frames = [(e.video, e.frame_id) for e in imagesets.read_train_frames(list_path)]
    if not isinstance(frames, str):  # a listed frame the split does not have: refused, or skipped and counted
        frames = imagesets.check_listed_frames(
            frames, videos, source=list_path, split=split, on_bad_input=data.on_bad_input
        )
    stills: list[VideoRecord] = []
    still_fraction = 0.0
    if training and _has_stills(root) and (phase == 1 or data.still_fraction > 0):
        stills = load_split(data, "det")
        num_references = len(frames) if not isinstance(frames, str) else sum(len(v) for v in videos)
        still_fraction = len(stills) / (num_references + len(stills)) if phase == 1 else data.still_fraction
    if phase == 1:
        support = SupportSpec()
    elif support is None:
        support = data.train_support
    cache = FrameCache(data.image_size, cache_dir=root / "cache" if data.root is None else None)
    return VideoFrameDataset(
        videos,
        image_size=data.image_size,
        support=support,
        frames=frames,
        with_oracle_flow=with_oracle_flow and phase == 2,
        seed=seed,
        cache=cache,
        stills=stills,
        still_fraction=still_fraction,
    )


def measure_loading(
    dataset: VideoFrameDataset,
    *,
    batch_size: int = 8,
    num_batches: int = 20,
    step_seconds: float | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Time ``dataset[i]`` + :func:`collate` per batch of random indices (after decoding every frame once).

    Returns ``seconds_per_batch`` (median), ``min_seconds_per_batch`` and, given the training step time
    ``step_seconds``, ``ratio`` = median loading / step (the harness targets < 0.1 on the default dataset).
    Call ``torch.set_num_threads`` as the trainer does first: on a busy machine torch's thread pool makes
    ``collate`` spiky.
    """
    for video in tqdm(dataset.videos + dataset.stills, desc="warming the frame cache", leave=False):
        dataset.cache.video(video)
    rng = np.random.default_rng(seed)
    timings = []
    for _ in range(num_batches):
        indices = rng.integers(0, len(dataset), size=batch_size)
        started = time.perf_counter()
        collate([dataset[int(i)] for i in indices])
        timings.append(time.perf_counter() - started)
    # the minimum is the best estimate on a shared machine; the median shows the contention
    result = {"seconds_per_batch": float(np.median(timings)), "min_seconds_per_batch": float(np.min(timings))}
    if step_seconds is not None:
        result["ratio"] = result["seconds_per_batch"] / step_seconds
    return result
