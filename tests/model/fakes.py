"""Tiny in-memory training data for the detector/trainer/inference tests.

Each sample is a dark 64x64 image with one or two bright, class-coloured rectangles (easy to
overfit in a few dozen steps); supports are the same scene shifted by a pixel per frame of offset.
The batch has the fields of ``harness.data.dataset.Batch`` that the detector and trainer read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

IMAGE_SIZE = 64
NUM_CLASSES = 3
_COLOURS = np.array([[255, 40, 40], [40, 255, 40], [40, 40, 255]], dtype=np.uint8)


@dataclass
class FakeBatch:
    images: Tensor  # (B, 3, S, S) uint8
    support_images: Tensor  # (B, T, 3, S, S) uint8
    offsets: Tensor  # (B, T) int64
    valid: Tensor  # (B, T) bool
    boxes: list[Tensor]  # (N, 4) float32
    labels: list[Tensor]  # (N,) int64
    oracle_flow: Tensor | None = None
    frames: list = field(default_factory=list)
    scales: list[float] = field(default_factory=list)

    def to(self, device: torch.device) -> FakeBatch:
        return replace(
            self,
            images=self.images.to(device),
            support_images=self.support_images.to(device),
            offsets=self.offsets.to(device),
            valid=self.valid.to(device),
            boxes=[b.to(device) for b in self.boxes],
            labels=[label.to(device) for label in self.labels],
        )


def draw_scene(
    boxes: np.ndarray, labels: np.ndarray, *, size: int = IMAGE_SIZE, shift: int = 0
) -> np.ndarray:
    """uint8 (3, size, size): dark background, boxes filled with their class colour, shifted right."""
    image = np.full((size, size, 3), 20, dtype=np.uint8)
    for (x1, y1, x2, y2), label in zip(boxes.astype(int), labels, strict=True):
        image[y1:y2, max(0, x1 + shift) : min(size, x2 + shift)] = _COLOURS[label]
    return image.transpose(2, 0, 1).copy()


def random_scene(rng: np.random.Generator, *, size: int = IMAGE_SIZE, max_objects: int = 2):
    count = int(rng.integers(0, max_objects + 1))
    boxes, labels = [], []
    for _ in range(count):
        w, h = rng.integers(14, 30, size=2)
        x1, y1 = rng.integers(0, size - w), rng.integers(0, size - h)
        boxes.append([x1, y1, x1 + w, y1 + h])
        labels.append(int(rng.integers(0, NUM_CLASSES)))
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


class FakeDataset(Dataset):
    """``num_samples`` fixed scenes; ``num_supports`` shifted copies as supports, offsets drawn per
    (epoch, index) so ``set_epoch`` matters as it does for the real dataset."""

    def __init__(self, *, num_samples: int = 8, num_supports: int = 0, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.scenes = [random_scene(rng) for _ in range(num_samples)]
        self.num_supports = num_supports
        self.seed = seed
        self.epoch = 0
        self.calls = 0
        self.fail_at_call: int | None = None  # raise RuntimeError at this call (simulated crash)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int):
        self.calls += 1
        if self.fail_at_call is not None and self.calls == self.fail_at_call:
            raise RuntimeError("simulated crash")
        boxes, labels = self.scenes[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        offsets = rng.integers(-3, 4, size=self.num_supports)
        image = draw_scene(boxes, labels)
        supports = [draw_scene(boxes, labels, shift=int(o)) for o in offsets]
        return image, supports, offsets, boxes, labels


def fake_collate(samples) -> FakeBatch:
    num_supports = len(samples[0][1])
    images = torch.from_numpy(np.stack([s[0] for s in samples]))
    if num_supports:
        support_images = torch.from_numpy(np.stack([np.stack(s[1]) for s in samples]))
    else:
        support_images = images.new_zeros((len(samples), 0, *images.shape[1:]))
    return FakeBatch(
        images=images,
        support_images=support_images,
        offsets=torch.from_numpy(np.stack([s[2] for s in samples]).astype(np.int64)).reshape(
            len(samples), -1
        ),
        valid=torch.ones((len(samples), num_supports), dtype=torch.bool),
        boxes=[torch.from_numpy(s[3]) for s in samples],
        labels=[torch.from_numpy(s[4]) for s in samples],
    )
