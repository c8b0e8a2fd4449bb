"""Decode each frame once: letterboxed uint8 frames kept in memory, optionally as ``.npy`` on disk.

Letterboxing: a ``w x h`` frame is resized so its longer side equals ``image_size``
(``scale = image_size / max(w, h)``, new size ``round(w * scale) x round(h * scale)``) and padded
with zeros at the bottom/right to ``(image_size, image_size)``. Boxes and flow vectors follow by
multiplying with ``scale``; nothing moves at the top-left corner.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from harness.data.errors import DataError
from harness.data.records import FrameRecord, VideoRecord

_JPEG_END = b"\xff\xd9"


def letterbox_geometry(width: int, height: int, image_size: int) -> tuple[float, int, int]:
    """``(scale, resized_width, resized_height)`` of a ``width x height`` frame letterboxed to ``image_size``.
    """
    scale = image_size / max(width, height)
    return scale, max(1, round(width * scale)), max(1, round(height * scale))


def decode_frame(frame: FrameRecord) -> np.ndarray:
    """Decode a frame's JPEG to RGB (H, W, 3) uint8; ``DataError`` naming the file when missing,
    truncated (no end-of-image marker), undecodable or not of the annotated size."""
    path = Path(frame.image_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: image file missing") from None
    if not data.rstrip(b"\x00").endswith(_JPEG_END):
        raise DataError(f"{path}: truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{path}: cannot decode the image")
    if image.shape[:2] != (frame.height, frame.width):
        raise DataError(
            f"{path}: image is {image.shape[1]}x{image.shape[0]}, annotation says "
            f"{frame.width}x{frame.height}"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def letterbox(image: np.ndarray, image_size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, S, S) uint8, resized by ``image_size / max(H, W)``, padded bottom/right."""
    height, width = image.shape[:2]
    _, new_width, new_height = letterbox_geometry(width, height, image_size)
    if (new_width, new_height) != (width, height):
        interpolation = cv2.INTER_AREA if new_width < width else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_width, new_height), interpolation=interpolation)
    out = np.zeros((3, image_size, image_size), np.uint8)
    out[:, :new_height, :new_width] = image.transpose(2, 0, 1)  # (h, w, 3) -> (3, h, w)
    return out


class FrameCache:
    """Letterboxed frames of whole videos, decoded on first access and then kept.

    A video is decoded at once into a (num_frames, 3, S, S) uint8 array. With ``cache_dir`` the array
    is also saved there as ``<video name>.npy`` (written atomically) and later memory-mapped, so
    repeated runs and data-loader workers share the decoded frames through the page cache.
    Thread-safe for concurrent readers.
    """

    def __init__(self, image_size: int, *, cache_dir: str | Path | None = None):
        self.image_size = int(image_size)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._videos: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def _file(self, video: VideoRecord) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"s{self.image_size}" / f"{video.name}.npy"

    def _decode_video(self, video: VideoRecord) -> np.ndarray:
        frames = np.empty((len(video), 3, self.image_size, self.image_size), np.uint8)
        for i, frame in enumerate(video.frames):
            frames[i] = letterbox(decode_frame(frame), self.image_size)
        return frames

    def video(self, video: VideoRecord) -> np.ndarray:
        """All frames of ``video``: uint8 (num_frames, 3, S, S), in ``video.frames`` order."""
        frames = self._videos.get(video.name)
        if frames is not None:
            return frames
        with self._lock:
            frames = self._videos.get(video.name)
            if frames is not None:
                return frames
            path = self._file(video)
            if path is not None and path.is_file():
                frames = np.load(path, mmap_mode="r")
                if frames.shape != (len(video), 3, self.image_size, self.image_size):
                    frames = None  # stale cache file (video changed): decode again
            if frames is None:
                frames = self._decode_video(video)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    partial = path.with_suffix(f".tmp{threading.get_ident()}.npy")
                    np.save(partial, frames)
                    partial.replace(path)
            self._videos[video.name] = frames
            return frames

    def frame(self, video: VideoRecord, index: int) -> np.ndarray:
        """Frame ``index`` (position in ``video.frames``) of ``video``: uint8 (3, S, S)."""
        return np.asarray(self.video(video)[index])

    def scale(self, frame: FrameRecord) -> float:
        return letterbox_geometry(frame.width, frame.height, self.image_size)[0]
