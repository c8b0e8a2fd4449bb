"""Generate SynthVID on disk in the ILSVRC2015 VID layout, with FGFA lists and COCO-VID JSON.

Every video has its own random stream ``default_rng([seed, split_code, video_index])``, so videos
are generated in parallel (``config.processes`` workers) and the same seed always gives
byte-identical images, annotations and flow. Output (under ``root``)::

    Data/VID/train/SYNTHVID_train_0000/synthvid_train_000000/000000.JPEG ...
    Data/VID/val/synthvid_val_000000/000000.JPEG ...
    Annotations/VID/...                      one VID-style XML per frame (+ <degradation> bit mask)
    Data/DET/train/SYNTHVID_DET_train/synthvid_det_000000.JPEG, Annotations/DET/train/...xml
    Flow/VID/<split>/.../<video>.npz         flow, flow_backward: float16 (n-1, 2, H/d, W/d)
    ImageSets/VID_train_15frames.txt, VID_train_every10frames.txt, VID_val_videos.txt,
              VID_val_frames.txt, DET_train_30classes.txt
    annotations/synthvid_{train,val}_cocovid.json
    synthvid.json                            generator version, preset, seed, classes, summary
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from harness.data import imagesets
from harness.data.classes import SYNTHVID_CLASSES
from harness.data.cocovid import write_cocovid
from harness.data.records import DEGRADATIONS, FrameRecord
from harness.data.synthvid.config import SynthVIDConfig
from harness.data.synthvid.render import flow_between, render_frame
from harness.data.synthvid.scene import plan_video
from harness.data.vid import annotation_xml, read_vid_split

GENERATOR_VERSION = "1.0"
COMPLETE_MARKER = ".complete"
SPLIT_CODES = {"train": 0, "val": 1, "det": 2}
MOTION_WINDOW = 10  # motion IoU: frames t-10 .. t+10 (FGFA protocol)


@dataclass(frozen=True)
class _Job:
    root: str
    config: SynthVIDConfig
    seed: int
    split: str  # "train", "val" or "det"
    index: int  # video (or still) number within the split


@dataclass
class _VideoSummary:
    name: str
    split: str
    num_frames: int
    labels: list[int]
    degradation_counts: dict[str, int]
    num_boxes: int
    motion_ious: list[float]
    cpu_seconds: float


def video_name(split: str, index: int, config: SynthVIDConfig) -> str:
    """Name relative to ``Data/VID`` (videos) or ``Data/DET`` (stills), e.g. ``val/synthvid_val_000003``."""
    if split == "train":
        return f"train/SYNTHVID_train_{index // config.videos_per_chunk:04d}/synthvid_train_{index:06d}"
    if split == "val":
        return f"val/synthvid_val_{index:06d}"
    return f"train/SYNTHVID_DET_train/synthvid_det_{index:06d}"


def motion_ious(track_boxes: dict[int, dict[int, np.ndarray]], window: int = MOTION_WINDOW) -> list[float]:
    """Motion IoU of every box: mean IoU with the same track's boxes in frames t-window..t+window.

    ``track_boxes[track][frame] = (x1, y1, x2, y2)`` (inclusive pixels, "+1" widths). The box itself is
    not part of the mean; a box whose track has no other box in the window gets NaN.
    """
    values = []
    for frames in track_boxes.values():
        for t, box in frames.items():
            others = [frames[s] for s in range(t - window, t + window + 1) if s != t and s in frames]
            if not others:
                values.append(float("nan"))
                continue
            others = np.asarray(others, np.float64)
            width = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]) + 1
            height = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]) + 1
            inter = np.clip(width, 0, None) * np.clip(height, 0, None)
            area = lambda b: (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)  # noqa: E731
            values.append(float(np.mean(inter / (area(box) + area(others) - inter))))
    return values


def _generate_one(job: _Job) -> _VideoSummary:
    """Render one video (or still), write its JPEGs, XMLs and flow; return its statistics."""
    cv2.setNumThreads(1)
    cpu_started = time.process_time()
    config, root = job.config, Path(job.root)
    rng = np.random.default_rng([job.seed, SPLIT_CODES[job.split], job.index])
    is_still = job.split == "det"
    num_frames = (
        1 if is_still else int(rng.integers(config.frames_per_video[0], config.frames_per_video[1] + 1))
    )
    plan = plan_video(rng, config, num_frames)
    name = video_name(job.split, job.index, config)
    kind = "DET" if is_still else "VID"
    if is_still:
        image_dir, annotation_dir = (
            root / "Data" / kind / Path(name).parent,
            root / "Annotations" / kind / Path(name).parent,
        )
    else:
        image_dir, annotation_dir = root / "Data" / kind / name, root / "Annotations" / kind / name
    image_dir.mkdir(parents=True, exist_ok=True)
    annotation_dir.mkdir(parents=True, exist_ok=True)

    degradation_counts: Counter = Counter()
    track_boxes: dict[int, dict[int, np.ndarray]] = {}
    forward, backward, num_boxes, previous = [], [], 0, None
    d = config.flow_downsample
    for t in range(num_frames):
        frame = render_frame(
            plan,
            t,
            clean_jpeg_quality=config.clean_jpeg_quality,
            illumination_noise=config.illumination_noise,
        )
        if previous is not None:  # flow between t-1 and t, each from the layer map of its source frame
            forward.append(flow_between(plan, previous.layer_map, t - 1, t, downsample=d))
            backward.append(flow_between(plan, frame.layer_map, t, t - 1, downsample=d))
        previous = frame
        stem = Path(name).name if is_still else f"{t:06d}"
        encoded = cv2.imencode(
            ".JPEG",
            cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, frame.jpeg_quality],
        )[1]
        (image_dir / f"{stem}.JPEG").write_bytes(encoded.tobytes())
        record = FrameRecord(
            video=name,
            frame_id=t,
            image_path="",
            width=config.frame_size[0],
            height=config.frame_size[1],
            boxes=frame.boxes.astype(np.float32),
            labels=frame.labels,
            track_ids=frame.track_ids,
            occluded=frame.occluded,
            generated=np.zeros(len(frame.labels), bool),
            degradation=frame.degradation,
        )
        folder = Path(name).parent.name if is_still else name.partition("/")[2]
        (annotation_dir / f"{stem}.xml").write_bytes(
            annotation_xml(record, classes=SYNTHVID_CLASSES, folder=folder, filename=stem)
        )
        num_boxes += len(frame.labels)
        for track, box, bits in zip(frame.track_ids, frame.boxes, frame.degradation, strict=True):
            track_boxes.setdefault(int(track), {})[t] = box
            degradation_counts.update(n for i, n in enumerate(DEGRADATIONS) if bits >> i & 1)
            degradation_counts["any"] += int(bits != 0)
    if forward:
        flow_path = root / "Flow" / "VID" / f"{name}.npz"
        flow_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            flow_path,
            flow=np.stack(forward).astype(np.float16),
            flow_backward=np.stack(backward).astype(np.float16),
        )
    return _VideoSummary(
        name,
        job.split,
        num_frames,
        sorted({layer.label for layer in plan.layers if layer.label >= 0}),
        dict(degradation_counts),
        num_boxes,
        motion_ious(track_boxes) if not is_still else [],
        time.process_time() - cpu_started,
    )


def _disk_usage(root: Path) -> tuple[int, int]:
    """(sum of file sizes, bytes allocated on disk) under ``root``."""
    size = allocated = 0
    for directory, _, files in os.walk(root):
        for file_name in files:
            stat = os.stat(os.path.join(directory, file_name))
            size += stat.st_size
            allocated += stat.st_blocks * 512
    return size, allocated


def _write_lists(root: Path, summaries: list[_VideoSummary]) -> set[tuple[str, int]]:
    """FGFA ImageSets; returns the (video, frame) pairs of ``VID_train_15frames.txt``."""
    image_sets = root / "ImageSets"
    image_sets.mkdir(parents=True, exist_ok=True)
    train = [s for s in summaries if s.split == "train"]
    fifteen = []
    for s in train:  # 15 frames spread evenly over each video (all frames of shorter videos)
        frame_ids = np.unique(np.linspace(0, s.num_frames - 1, min(15, s.num_frames)).round().astype(int))
        fifteen += [imagesets.TrainFrameEntry(s.name, int(f), s.num_frames) for f in frame_ids]
    imagesets.write_train_frames(fifteen, image_sets / "VID_train_15frames.txt")
    every10 = [
        imagesets.TrainFrameEntry(s.name, f, s.num_frames) for s in train for f in range(0, s.num_frames, 10)
    ]
    imagesets.write_train_frames(every10, image_sets / "VID_train_every10frames.txt")
    val, start, val_videos = [s for s in summaries if s.split == "val"], 1, []
    for s in val:
        val_videos.append(imagesets.ValVideoEntry(s.name, start, s.num_frames))
        start += s.num_frames
    imagesets.write_val_videos(val_videos, image_sets / "VID_val_videos.txt")
    imagesets.write_val_frames(
        [(s.name, t) for s in val for t in range(s.num_frames)], image_sets / "VID_val_frames.txt"
    )
    imagesets.write_det_list(
        [s.name for s in summaries if s.split == "det"], image_sets / "DET_train_30classes.txt"
    )
    return {(entry.video, entry.frame_id) for entry in fifteen}


def _bucket_shares(values: list[float]) -> dict[str, float]:
    ious = np.asarray([v for v in values if np.isfinite(v)])
    if not len(ious):
        return {"slow": 0.0, "medium": 0.0, "fast": 0.0}
    return {
        "slow": float(np.mean(ious > 0.9)),
        "medium": float(np.mean((ious >= 0.7) & (ious <= 0.9))),
        "fast": float(np.mean(ious < 0.7)),
    }


# ---------------------------------------------------------------------------------------------
# The temporary folder a generation writes into, and its clean-up after a killed run
# ---------------------------------------------------------------------------------------------
#
# A generation of <parent>/<name> writes <parent>/.<name>.tmp-<pid> and holds an exclusive flock on
# <parent>/.<name>.tmp-<pid>.lock while it does (its pool workers inherit the lock). A temporary folder
# is stale, and removed by the next generation of the same dataset, only when its lock can be taken
# and the process named by <pid> is gone: a killed run releases its lock, a live one (or its orphaned
# workers still writing) never does.


def _staging_path(root: Path, pid: int) -> Path:
    return root.parent / f".{root.name}.tmp-{pid}"


def _lock_path(staging: Path) -> Path:
    return staging.with_name(staging.name + ".lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


@contextlib.contextmanager
def _locked(lock_path: Path, *, wait: bool) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing); yields False, holding nothing,
    when ``wait`` is False and another process holds it. The file is removed on release. After taking
    the lock the path must still name the locked file (another process may have removed it meanwhile),
    else it is opened again."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: only the pid check protects a live generation
        yield True
        return
    while True:
        handle = lock_path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            yield False
            return
        try:
            same = os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        yield True
    finally:
        lock_path.unlink(missing_ok=True)
        handle.close()


def remove_stale_temporaries(root: str | Path) -> list[Path]:
    """Remove the temporary folders killed generations of ``root`` left behind; return those removed.

    Only folders of this very dataset (``.<root name>.tmp-<pid>``) whose writer is gone are removed; a
    folder another live process is writing right now is left alone.
    """
    root = Path(root)
    prefix = f".{root.name}.tmp-"
    removed = []
    for staging in sorted(root.parent.glob(glob.escape(prefix) + "*")):
        pid = staging.name[len(prefix) :]
        if not pid.isdigit() or not staging.is_dir() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        with _locked(_lock_path(staging), wait=False) as free:
            if free:
                shutil.rmtree(staging, ignore_errors=True)
                removed.append(staging)
    return removed


def generate_synthvid(root: str | Path, config: SynthVIDConfig, seed: int, *, progress: bool = True) -> dict:
    """Write a complete SynthVID dataset to ``root`` (which must not exist) and return its summary.

    The dataset is built in a temporary sibling folder ``.<name>.tmp-<pid>``, marked complete
    (``.complete``, written last) and renamed into place, so an interrupted run never leaves a
    half-written ``root``; the temporary folder of a killed run is removed by the next one
    (:func:`remove_stale_temporaries`).
    """
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} already exists")
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root)
    staging = _staging_path(root, os.getpid())
    with _locked(_lock_path(staging), wait=True):
        try:
            return _generate_into(staging, root, config, seed, progress=progress)
        finally:  # an exception or Ctrl-C: nothing to keep (a kill -9 is cleaned up by the next run)
            shutil.rmtree(staging, ignore_errors=True)


def _generate_into(staging: Path, root: Path, config: SynthVIDConfig, seed: int, *, progress: bool) -> dict:
    """Write the dataset into ``staging`` and rename it to ``root`` (see :func:`generate_synthvid`)."""
    shutil.rmtree(staging, ignore_errors=True)  # left by an earlier process that had the same pid
    staging.mkdir(parents=True)
    started = time.perf_counter()
    jobs = [
        _Job(str(staging), config, seed, split, i)
        for split, count in (
            ("train", config.num_train_videos),
            ("val", config.num_val_videos),
            ("det", config.num_stills),
        )
        for i in range(count)
    ]
    if config.processes > 1:
        with multiprocessing.get_context("fork").Pool(config.processes) as pool:
            results = list(
                tqdm(
                    pool.imap(_generate_one, jobs, chunksize=8),
                    total=len(jobs),
                    desc=f"SynthVID {config.preset}",
                    unit="video",
                    disable=not progress,
                )
            )
    else:
        results = [
            _generate_one(job)
            for job in tqdm(jobs, desc=f"SynthVID {config.preset}", unit="video", disable=not progress)
        ]
    train_frames = _write_lists(staging, results)
    (staging / "synthvid.json").write_text(json.dumps({"classes": list(SYNTHVID_CLASSES)}))
    (staging / "annotations").mkdir()
    for split in ("train", "val"):
        videos = read_vid_split(staging, split)
        write_cocovid(
            videos,
            staging / "annotations" / f"synthvid_{split}_cocovid.json",
            image_root=staging / "Data" / "VID",
            train_frames=train_frames,
        )
    elapsed = time.perf_counter() - started

    videos = [r for r in results if r.split != "det"]
    size, allocated = _disk_usage(staging)
    degradations = Counter()
    for r in results:
        degradations.update(r.degradation_counts)
    num_boxes = sum(r.num_boxes for r in results)
    summary = {
        "motion_buckets": {
            split: _bucket_shares([v for r in videos if r.split == split for v in r.motion_ious])
            for split in ("train", "val")
        },
        "num_videos": {
            "train": config.num_train_videos,
            "val": config.num_val_videos,
            "stills": config.num_stills,
        },
        "num_frames": sum(r.num_frames for r in videos),
        "num_boxes": num_boxes,
        "degraded_box_share": {k: v / max(num_boxes, 1) for k, v in sorted(degradations.items())},
        "generation_seconds": round(elapsed, 1),
        "render_cpu_seconds": round(sum(r.cpu_seconds for r in results), 1),
        "processes": config.processes,
        "bytes": size,
        "bytes_on_disk": allocated,
    }
    meta = {
        "generator_version": GENERATOR_VERSION,
        "preset": config.preset,
        "seed": seed,
        "classes": list(SYNTHVID_CLASSES),
        "config": dataclasses.asdict(config),
        "summary": summary,
    }
    (staging / "synthvid.json").write_text(json.dumps(meta, indent=2))
    (staging / COMPLETE_MARKER).write_text("ok\n")
    try:
        staging.rename(root)
    except OSError:  # another process finished the same dataset first: keep theirs
        shutil.rmtree(staging, ignore_errors=True)
        if not (root / COMPLETE_MARKER).is_file():
            raise
    if progress:
        buckets = summary["motion_buckets"]["val"]
        print(
            f"SynthVID {config.preset} (seed {seed}) -> {root}: {summary['num_frames']} frames, "
            f"{config.num_stills} stills in {elapsed:.1f} s "
            f"({summary['render_cpu_seconds']:.0f} CPU-s rendering); "
            f"{size / 2**20:.1f} MB "
            f"({allocated / 2**20:.1f} MB on disk); val motion buckets slow/medium/fast = "
            f"{buckets['slow']:.2f}/{buckets['medium']:.2f}/{buckets['fast']:.2f}"
        )
    return summary
