"""Tiny ground-truth / detection builders shared by the evaluation tests."""

from __future__ import annotations

import numpy as np

from harness.data.records import FrameDetections, FrameRecord, VideoRecord

CLASSES = ("cat", "dog")


def make_frame(
    video: str,
    frame_id: int,
    boxes=(),
    labels=(),
    *,
    track_ids=None,
    degradation=None,
    width: int = 200,
    height: int = 200,
    global_index: int = 0,
) -> FrameRecord:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = boxes.shape[0]
    return FrameRecord(
        video=video,
        frame_id=frame_id,
        image_path=f"/nonexistent/{video}/{frame_id:06d}.JPEG",
        width=width,
        height=height,
        boxes=boxes,
        labels=np.asarray(labels, np.int64).reshape(n),
        track_ids=np.arange(n, dtype=np.int64) if track_ids is None else np.asarray(track_ids, np.int64),
        occluded=np.zeros(n, bool),
        generated=np.zeros(n, bool),
        degradation=np.zeros(n, np.int64) if degradation is None else np.asarray(degradation, np.int64),
        global_index=global_index,
    )


def make_video(name: str, frames: list[FrameRecord], classes=CLASSES) -> VideoRecord:
    return VideoRecord(name=name, frames=frames, classes=tuple(classes))


def make_dets(boxes=(), scores=(), labels=()) -> FrameDetections:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return FrameDetections(
        boxes=boxes, scores=np.asarray(scores, np.float32), labels=np.asarray(labels, np.int64)
    )


def random_split(rng: np.random.Generator, *, num_videos: int = 3, num_frames: int = 12, classes=CLASSES):
    """Videos with 1-3 tracks moving smoothly, and the perfect detections of them (scores random).

    Returns ``(videos, perfect_detections)``; global indices are 1-based in split order.
    """
    videos, detections, global_index = [], {}, 1
    for v in range(num_videos):
        name = f"val/video_{v:03d}"
        num_tracks = int(rng.integers(1, 4))
        start = rng.uniform(10, 80, size=(num_tracks, 2))
        size = rng.uniform(12, 60, size=(num_tracks, 2))
        velocity = rng.uniform(-3, 3, size=(num_tracks, 2))
        labels = rng.integers(0, len(classes), size=num_tracks)
        frames = []
        for t in range(num_frames):
            top_left = np.clip(start + velocity * t, 0, 130)
            boxes = np.round(np.concatenate([top_left, top_left + size], axis=1))
            frames.append(
                make_frame(name, t, boxes, labels, track_ids=np.arange(num_tracks), global_index=global_index)
            )
            detections[(name, t)] = make_dets(boxes, rng.uniform(0.3, 1.0, size=num_tracks), labels)
            global_index += 1
        videos.append(make_video(name, frames, classes))
    return videos, detections
