"""Collectors: gather a method's intermediate outputs at object centres during inference.

The inference engine (``harness.infer.predict_split``) calls ``collector(frames, offsets, aux)`` for
every batch of reference frames, where ``frames`` are the references' ``FrameRecord`` s (ground truth
in original pixels), ``offsets`` (B, T) the supports' time offsets and ``aux`` the aggregation's
auxiliary outputs. It does not know what they mean; these classes do. Each exposes ``count`` (how
many object centres it saw) and ``summary()`` (JSON-serialisable) for the report.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch


def _centre_cells(frame, image_size: int, height: int, width: int) -> list[tuple[int, int, int]]:
    """(object index, row, column) of each GT box centre on the (height, width) feature grid."""
    scale = image_size / max(frame.width, frame.height)
    stride_y, stride_x = image_size / height, image_size / width
    cells = []
    for index, (x1, y1, x2, y2) in enumerate(np.asarray(frame.boxes)):
        cx, cy = (x1 + x2) / 2 * scale, (y1 + y2) / 2 * scale
        cells.append((index, min(int(cy // stride_y), height - 1), min(int(cx // stride_x), width - 1)))
    return cells


def _complete_window(offsets: torch.Tensor) -> bool:
    """True when no support is a padded copy: all offsets distinct and none equal to 0."""
    values = offsets.tolist()
    return 0 not in values and len(set(values)) == len(values)


class FusionWeightsByOffset:
    """Mean fusion weight at object centres as a function of the support's time offset k
    (STSN Fig. 3 right). Uses ``aux["fusion_weights"]`` (B, 1 + T, H, W), index 0 = reference (k=0).

    Only reference frames whose window lies inside the video are counted: near a boundary the
    padded copies repeat a frame (their offsets repeat), which would mix several slots into one k."""

    def __init__(self, image_size: int):
        self.image_size = image_size
        self.sums: dict[int, float] = defaultdict(float)
        self.counts: dict[int, int] = defaultdict(int)
        self.count = 0

    def __call__(self, frames, offsets: torch.Tensor, aux: dict) -> None:
        weights = aux.get("fusion_weights")
        if weights is None:
            return
        weights = weights.detach().float().cpu()
        offsets = offsets.detach().cpu()
        _, slots, height, width = weights.shape
        for b, frame in enumerate(frames):
            if not _complete_window(offsets[b]):
                continue
            for _, row, col in _centre_cells(frame, self.image_size, height, width):
                self.count += 1
                self.sums[0] += float(weights[b, 0, row, col])
                self.counts[0] += 1
                for t in range(slots - 1):
                    k = int(offsets[b, t])
                    self.sums[k] += float(weights[b, 1 + t, row, col])
                    self.counts[k] += 1

    def summary(self) -> dict:
        return {
            "mean_weight_by_offset": {str(k): self.sums[k] / self.counts[k] for k in sorted(self.counts)},
            "centres": self.count,
        }


class SamplingLocations:
    """Where a deformable alignment samples the support frame around object centres (STSN Fig. 4).

    Uses ``aux["sampling_offsets"]`` (B, T, 2 * kh * kw * G, H, W) in torchvision's (dy, dx) per-tap
    order, for a ``kernel`` x ``kernel`` deformable convolution of dilation 1 on the feature grid.
    Keeps the first ``limit`` centres: reference frame path, support frame paths, the centre and the
    sampled points of the first deformable group, in original image pixels, and, when the alignment
    provides ``aux["sampling_tap_weight"]`` (B, T, kh * kw, H, W), each tap's share of the sampling
    conv's weight (``tap_weight``; how much that location can contribute)."""

    def __init__(self, image_size: int, kernel: int = 3, limit: int = 8):
        self.image_size, self.kernel, self.limit = image_size, kernel, limit
        self.examples: list[dict] = []
        self._videos: set[str] = set()  # one example per video
        self.count = 0

    def __call__(self, frames, offsets: torch.Tensor, aux: dict) -> None:
        sampling = aux.get("sampling_offsets")
        if sampling is None or self.count >= self.limit:
            return
        sampling = sampling.detach().float().cpu()
        batch, supports, _, height, width = sampling.shape
        taps = self.kernel * self.kernel
        base = torch.stack(
            torch.meshgrid(
                torch.arange(self.kernel) - self.kernel // 2,
                torch.arange(self.kernel) - self.kernel // 2,
                indexing="ij",
            ),
            -1,
        )
        base = base.reshape(taps, 2).float()  # (taps, 2) as (dy, dx)
        for b, frame in enumerate(frames):
            if frame.num_objects == 0 or not _complete_window(offsets[b]) or frame.video in self._videos:
                continue
            self._videos.add(frame.video)
            scale = self.image_size / max(frame.width, frame.height)
            stride = self.image_size / height
            index, row, col = _centre_cells(frame, self.image_size, height, width)[0]
            points = []
            tap_weight = aux.get("sampling_tap_weight")
            if tap_weight is not None and tap_weight.shape[1] > 0:
                tap_weight = tap_weight[b, 0, :, row, col].float().tolist()
            else:
                tap_weight = None
            for t in range(supports):
                delta = sampling[b, t, : 2 * taps, row, col].reshape(taps, 2)  # (taps, 2) (dy, dx)
                grid = (base + delta + torch.tensor([row, col]).float()) * stride + stride / 2
                points.append((grid / scale).flip(-1).tolist())  # -> (x, y) in original pixels
            self.examples.append(
                {
                    "video": frame.video,
                    "frame_id": frame.frame_id,
                    "image": frame.image_path,
                    "box": [float(v) for v in frame.boxes[index]],
                    "support_offsets": [int(k) for k in offsets[b].tolist()],
                    "points_xy": points,
                    "tap_weight": tap_weight,
                }
            )
            self.count += 1
            if self.count >= self.limit:
                return

    def summary(self) -> dict:
        return {"examples": self.examples}


class MemoryTrail:
    """The memory's saliency at an object's earlier position vs its current one (STMN Fig. 4, made a
    number). Uses ``aux[f"memory_norm_{direction}"]`` (B, H, W), the L2 norm over channels of one
    memory at the reference.

    For each object of a reference frame whose window lies inside the video, the ratio
    ``norm(cell the object's centre occupied lag frames ago) / norm(cell of its centre now)`` is
    recorded when the two cells are at least ``min_cells`` apart (Chebyshev) and the earlier cell is
    inside no current ground-truth box (so it is background now): an unaligned forward memory keeps
    the object's features where it was (a "trail", ratio near 1); an aligned one moves them along
    (ratio near the background's level). ``lag`` is the window's earliest offset (the first frame the
    forward memory saw). Frames of one video must arrive in order (the sliding-window engine's)."""

    def __init__(self, image_size: int, *, direction: str = "forward", min_cells: int = 2):
        self.image_size, self.direction, self.min_cells = image_size, direction, min_cells
        self.centres: dict[str, dict[tuple[int, int], tuple[int, int]]] = defaultdict(dict)
        self.ratios: list[float] = []
        self.count = 0

    def __call__(self, frames, offsets: torch.Tensor, aux: dict) -> None:
        norms = aux.get(f"memory_norm_{self.direction}")
        if norms is None:
            return
        norms = norms.detach().float().cpu()
        offsets = offsets.detach().cpu()
        _, height, width = norms.shape
        for b, frame in enumerate(frames):
            cells = _centre_cells(frame, self.image_size, height, width)
            seen = self.centres[frame.video]
            for index, row, col in cells:
                seen[(frame.frame_id, int(frame.track_ids[index]))] = (row, col)
            if not len(offsets[b]) or not _complete_window(offsets[b]):
                continue
            lag = int(offsets[b].min()) if self.direction == "forward" else int(offsets[b].max())
            covered = _box_cells(frame, self.image_size, height, width)
            for index, row, col in cells:
                earlier = seen.get((frame.frame_id + lag, int(frame.track_ids[index])))
                if earlier is None or max(abs(earlier[0] - row), abs(earlier[1] - col)) < self.min_cells:
                    continue
                if covered[earlier]:
                    continue
                current = float(norms[b, row, col])
                if current <= 0:
                    continue
                self.ratios.append(float(norms[b, earlier[0], earlier[1]]) / current)
                self.count += 1

    def summary(self) -> dict:
        ratios = np.asarray(self.ratios, float)
        return {
            "mean_ratio": float(ratios.mean()) if ratios.size else float("nan"),
            "median_ratio": float(np.median(ratios)) if ratios.size else float("nan"),
            "objects": self.count,
            "direction": self.direction,
        }


def _box_cells(frame, image_size: int, height: int, width: int) -> np.ndarray:
    """(height, width) bool: feature cells whose centre lies inside any GT box of ``frame``."""
    scale = image_size / max(frame.width, frame.height)
    ys = (np.arange(height) + 0.5) * image_size / height
    xs = (np.arange(width) + 0.5) * image_size / width
    covered = np.zeros((height, width), bool)
    for x1, y1, x2, y2 in np.asarray(frame.boxes) * scale:
        covered |= ((ys >= y1) & (ys <= y2))[:, None] & ((xs >= x1) & (xs <= x2))[None, :]
    return covered
