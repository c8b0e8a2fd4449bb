"""In-memory records every reader produces and every consumer (datasets, evaluation) reads.

A reader (ILSVRC2015 VID, COCO-VID JSON, SynthVID, which is written in the VID layout) turns a
root on disk into a list of :class:`VideoRecord`. Nothing downstream touches XML or JSON again,
so the evaluation of a real ILSVRC2015 root and of SynthVID run the very same code.

Conventions
-----------
* Boxes are ``(x1, y1, x2, y2)`` in pixels of the original frame, as written in the VID XML
  (inclusive pixel corners; the devkit's "+1" width convention is applied by the evaluator, not here).
* ``label`` is a 0-based class index into the dataset's class list (``VideoRecord.classes``);
  the devkit detection file uses ``label + 1``.
* ``global_index`` is the 1-based position of a frame in the ``VID_val_frames.txt`` order, the
  index used by the FGFA/devkit detection file format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Per-object, per-frame degradation flags recorded by SynthVID (bit positions in ``degradation``).
DEGRADATIONS = ("motion_blur", "defocus", "occlusion", "illumination", "noise", "jpeg")


@dataclass
class FrameRecord:
    """One frame of a video with its ground truth.

    Attributes:
        video: video name relative to the split root, e.g. ``val/ILSVRC2015_val_00000000``.
        frame_id: 0-based frame number inside the video (the ``<frame:06d>`` of the file name).
        image_path: absolute path of the JPEG.
        width, height: frame size in pixels (from the annotation; checked against the image on decode).
        boxes: float32 ``(N, 4)`` ``x1, y1, x2, y2``.
        labels: int64 ``(N,)`` 0-based class indices.
        track_ids: int64 ``(N,)`` instance ids, unique inside a video.
        occluded: bool ``(N,)``.
        generated: bool ``(N,)`` (VID's interpolated boxes).
        degradation: int64 ``(N,)`` bit mask over :data:`DEGRADATIONS` (0 on real data: unknown/clean).
        global_index: 1-based index in ``VID_val_frames.txt`` order (0 when not part of such a list).
    """

    video: str
    frame_id: int
    image_path: str
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    track_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    occluded: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    generated: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    degradation: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    global_index: int = 0

    @property
    def num_objects(self) -> int:
        return int(self.boxes.shape[0])


@dataclass
class VideoRecord:
    """A video: its frames in temporal order. A DET still image is a one-frame video (``is_still``)."""

    name: str
    frames: list[FrameRecord]
    classes: tuple[str, ...]
    is_still: bool = False
    # Optional path of a ``.npz`` with ground-truth optical flow between consecutive frames
    # (SynthVID only): float16 arrays ``flow`` (num_frames - 1, 2, h, w), the forward flow t -> t+1,
    # and ``flow_backward`` (t+1 -> t), in pixels of the full-resolution frame, on a grid reduced by
    # d = width / w (2 on the default preset): cell (i, j) stands for the full-resolution point
    # ((j + 0.5) d - 0.5, (i + 0.5) d - 0.5), cv2.resize's convention.
    flow_path: str | None = None

    def __len__(self) -> int:
        return len(self.frames)


def check_frame_record(frame: FrameRecord, source: str) -> None:
    """Raise ``ValueError`` naming ``source`` when a record's arrays are inconsistent or a box is invalid."""
    n = frame.boxes.shape[0]
    if frame.boxes.ndim != 2 or frame.boxes.shape[1] != 4:
        raise ValueError(f"{source}: boxes must have shape (N, 4), got {frame.boxes.shape}")
    for name in ("labels", "track_ids", "occluded", "generated", "degradation"):
        arr = getattr(frame, name)
        if arr.shape != (n,):
            raise ValueError(f"{source}: {name} has shape {arr.shape}, expected ({n},)")
    if n:
        x1, y1, x2, y2 = frame.boxes.T
        if not np.all(np.isfinite(frame.boxes)):
            raise ValueError(f"{source}: non-finite box coordinates")
        if np.any(x2 < x1) or np.any(y2 < y1):
            raise ValueError(f"{source}: box with x2 < x1 or y2 < y1: {frame.boxes.tolist()}")
        if np.any(x1 < 0) or np.any(y1 < 0) or np.any(x2 > frame.width) or np.any(y2 > frame.height):
            raise ValueError(
                f"{source}: box outside the {frame.width}x{frame.height} image: {frame.boxes.tolist()}"
            )


@dataclass
class FrameDetections:
    """A model's detections on one frame, in the original frame's pixels.

    boxes float32 ``(K, 4)`` ``x1, y1, x2, y2``; scores float32 ``(K,)``; labels int64 ``(K,)``
    0-based class indices.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @classmethod
    def empty(cls) -> FrameDetections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64))

    def __len__(self) -> int:
        return int(self.scores.shape[0])


# Detections of a whole split: (video name, frame_id) -> detections on that frame.
Detections = dict[tuple[str, int], FrameDetections]
