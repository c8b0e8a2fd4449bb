"""Ground-truth optical flow of SynthVID: load per-video fields, chain them, letterbox them.

A video's ``.npz`` (``VideoRecord.flow_path``) holds ``flow`` (t -> t+1) and ``flow_backward``
(t+1 -> t), float16 (num_frames - 1, 2, h, w) in full-resolution pixels (channel 0 = x), sampled on a
grid reduced by ``d = W / w``: cell ``(i, j)`` stands for the point ``((j+0.5) d - 0.5, (i+0.5) d - 0.5)``.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from harness.data.cache import letterbox_geometry
from harness.data.errors import DataError

# Training draws references from every video at random, so the cache must hold a whole training
# split: with 32 entries almost every sample decompressed its video's .npz again (65 ms of a 500 ms
# phase-2 step). Fields stay float16 as stored (a 60-frame default video: about 2 MB).
FLOW_CACHE_VIDEOS = 512


@lru_cache(maxsize=FLOW_CACHE_VIDEOS)
def load_flow(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(forward, backward)`` float16 (num_frames - 1, 2, h, w) of one video (kept for reuse)."""
    try:
        with np.load(path) as arrays:
            return arrays["flow"], arrays["flow_backward"]
    except FileNotFoundError:
        raise DataError(f"{path}: flow file missing") from None
    except KeyError as error:
        raise DataError(f"{path}: flow file lacks array {error}") from None


@lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return grid_x, grid_y


def warp_by_flow(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward warp: ``out[p] = image[p + flow[p]]`` (bilinear, border replicated).

    ``image`` (C, H, W) or (H, W) float32; ``flow`` (2, H, W) in pixels of that grid.
    """
    height, width = flow.shape[1:]
    grid_x, grid_y = _pixel_grid(height, width)
    map_x, map_y = grid_x + flow[0], grid_y + flow[1]
    if image.ndim == 2:
        return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    channels_last = np.ascontiguousarray(image.transpose(1, 2, 0))  # (C, H, W) -> (H, W, C)
    warped = cv2.remap(channels_last, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return warped.reshape(height, width, -1).transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)


def chained_flow(
    forward: np.ndarray, backward: np.ndarray, ref: int, support: int, downsample: float
) -> np.ndarray:
    """Displacement (2, h, w) from frame ``ref`` to frame ``support`` in full-resolution pixels.

    Consecutive fields are composed by bilinear sampling: ``D <- D + F_k(p + D)`` (positions in grid
    cells are ``D / downsample``); forward fields for a later support, backward ones for an earlier.
    """
    total = np.zeros(forward.shape[1:], np.float32)
    step = 1 if support > ref else -1
    for t in range(ref, support, step):
        field = forward[t] if step > 0 else backward[t - 1]
        total += warp_by_flow(field.astype(np.float32, copy=False), total / downsample)
    return total


def letterbox_flow(flow: np.ndarray, width: int, height: int, image_size: int) -> np.ndarray:
    """Full-resolution flow on a reduced grid (2, h, w) -> letterboxed pixels (2, S, S), 0 in the padding."""
    scale, new_width, new_height = letterbox_geometry(width, height, image_size)
    out = np.zeros((2, image_size, image_size), np.float32)
    channels_last = np.ascontiguousarray(flow.transpose(1, 2, 0))  # (2, h, w) -> (h, w, 2)
    resized = cv2.resize(channels_last, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    out[:, :new_height, :new_width] = resized.transpose(2, 0, 1) * scale  # (h', w', 2) -> (2, h', w')
    return out
