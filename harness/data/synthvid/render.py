"""Render a planned SynthVID video: frames, ground-truth boxes/flags, and exact optical flow.

Every layer of a :class:`~harness.data.synthvid.scene.VideoPlan` moves by a known map (objects and
occluders by an affine map per frame, the background by the camera translation), so the flow of a
pixel is that of the topmost layer covering it: ``flow(p) = A_to @ A_from^-1 @ p - p``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from harness.data.records import DEGRADATIONS
from harness.data.synthvid.scene import SPRITE, VideoPlan

BIT = {name: 1 << i for i, name in enumerate(DEGRADATIONS)}
MIN_VISIBLE_FRACTION = 0.25  # an object is annotated when at least this share of it is inside the frame
MIN_BOX_SIDE = 3  # ... and its box is at least this many pixels wide and high
OCCLUDED_FRACTION = 0.25  # share of the visible object hidden by layers in front -> occluded
BACKGROUND = -1  # layer-map value of background pixels


@dataclass
class RenderedFrame:
    """One rendered frame.

    Attributes:
        image: (H, W, 3) uint8 RGB, before JPEG compression.
        jpeg_quality: the quality to write it with (low during a JPEG-degradation burst).
        layer_map: (H, W) int16 index into ``plan.layers`` of the topmost layer, -1 = background.
        boxes: (N, 4) int ``x1, y1, x2, y2`` inclusive pixel corners; labels, track_ids, occluded,
        degradation: (N,) arrays as in ``records.FrameRecord``.
    """

    image: np.ndarray
    jpeg_quality: int
    layer_map: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    track_ids: np.ndarray
    occluded: np.ndarray
    degradation: np.ndarray


def _line_kernel(length: float, direction: np.ndarray) -> np.ndarray:
    """Normalised anti-aliased segment of ``length`` px along ``direction``: the motion-blur PSF."""
    up = 4
    size = 2 * int(np.ceil(length / 2)) + 1
    kernel = np.zeros((size * up, size * up), np.float32)
    centre = np.array([size * up / 2, size * up / 2])
    half = direction * length * up / 2
    cv2.line(
        kernel,
        tuple((centre - half).round().astype(int)),
        tuple((centre + half).round().astype(int)),
        1.0,
        thickness=up,
        lineType=cv2.LINE_AA,
    )
    kernel = cv2.resize(kernel, (size, size), interpolation=cv2.INTER_AREA)
    return kernel / kernel.sum()


def _sprite_centre(affine: np.ndarray) -> np.ndarray:
    return affine[:, :2] @ np.full(2, (SPRITE - 1) / 2) + affine[:, 2]


def render_frame(
    plan: VideoPlan, t: int, *, clean_jpeg_quality: int, illumination_noise: float
) -> RenderedFrame:
    """Composite frame ``t`` (background, objects in z order, occluders), degrade it and annotate it."""
    width, height = plan.frame_size
    camera = plan.camera[t]
    to_frame = np.array([[1, 0, -camera[0]], [0, 1, -camera[1]]])  # canvas -> frame: a translation
    image = cv2.warpAffine(plan.background, to_frame, (width, height), flags=cv2.INTER_LINEAR)
    layer_map = np.full((height, width), BACKGROUND, np.int16)
    masks: dict[int, np.ndarray] = {}
    for index, layer in enumerate(plan.layers):
        if not layer.active[t]:
            continue
        affine = layer.affines[t]
        rgb, alpha = layer.prefiltered()
        premultiplied = cv2.warpAffine(rgb, affine, (width, height), flags=cv2.INTER_LINEAR)
        coverage = cv2.warpAffine(alpha, affine, (width, height), flags=cv2.INTER_LINEAR)
        mask = coverage > 0.5
        masks[index] = mask
        layer_map[mask] = index
        if layer.blur is not None and layer.blur[t] > 0:
            before, after = max(t - 1, 0), min(t + 1, plan.num_frames - 1)
            motion = _sprite_centre(layer.affines[after]) - _sprite_centre(layer.affines[before])
            direction = (
                motion / np.linalg.norm(motion) if np.linalg.norm(motion) > 1e-6 else np.array([1.0, 0.0])
            )
            kernel = _line_kernel(float(layer.blur[t]), direction)
            premultiplied = cv2.filter2D(premultiplied, -1, kernel)
            coverage = cv2.filter2D(coverage, -1, kernel)
        image = image * (1 - coverage[..., None]) + premultiplied  # float32 (H, W, 3)

    frame_bits, jpeg_quality = 0, clean_jpeg_quality
    degradation = plan.frame_degradation[t]
    if degradation is not None:
        kind, strength = degradation
        frame_bits = BIT[kind]
        noise_rng = np.random.default_rng([plan.noise_seed, t])
        if kind == "defocus":
            image = cv2.GaussianBlur(image, (0, 0), strength)
        elif kind == "illumination":
            image = image * strength + noise_rng.normal(0, illumination_noise, image.shape)
        elif kind == "noise":
            image = image + noise_rng.normal(0, strength, image.shape)
        elif kind == "jpeg":
            jpeg_quality = int(strength)

    boxes, labels, track_ids, occluded, bits = [], [], [], [], []
    for index, mask in masks.items():
        layer = plan.layers[index]
        if layer.label < 0:
            continue
        in_frame = int(mask.sum())
        full_area = abs(np.linalg.det(layer.affines[t][:, :2])) * layer.sprite_area
        if in_frame == 0 or in_frame < MIN_VISIBLE_FRACTION * full_area:
            continue
        ys, xs = np.nonzero(mask)
        box = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
        if box[2] - box[0] + 1 < MIN_BOX_SIDE or box[3] - box[1] + 1 < MIN_BOX_SIDE:
            continue
        hidden = float((layer_map[mask] != index).mean())
        object_bits = frame_bits
        if layer.blur is not None and layer.blur[t] > 0:
            object_bits |= BIT["motion_blur"]
        if hidden >= OCCLUDED_FRACTION:
            object_bits |= BIT["occlusion"]
        boxes.append(box)
        labels.append(layer.label)
        track_ids.append(layer.track_id)
        occluded.append(hidden >= OCCLUDED_FRACTION)
        bits.append(object_bits)
    order = np.argsort(track_ids, kind="stable")  # annotations listed by track id, like VID
    return RenderedFrame(
        image=np.clip(image, 0, 255).round().astype(np.uint8),
        jpeg_quality=jpeg_quality,
        layer_map=layer_map,
        boxes=np.asarray(boxes, np.int64).reshape(-1, 4)[order],
        labels=np.asarray(labels, np.int64)[order],
        track_ids=np.asarray(track_ids, np.int64)[order],
        occluded=np.asarray(occluded, bool)[order],
        degradation=np.asarray(bits, np.int64)[order],
    )


def flow_between(
    plan: VideoPlan, layer_map: np.ndarray, t_from: int, t_to: int, *, downsample: int = 1
) -> np.ndarray:
    """Exact flow from frame ``t_from`` to ``t_to``: float32 (2, H // d, W // d), full-resolution pixels.

    ``layer_map`` is frame ``t_from``'s (which layer each pixel shows). Grid cell ``(i, j)`` of the
    reduced grid stands for the full-resolution point ``((j + 0.5) d - 0.5, (i + 0.5) d - 0.5)``
    (the half-pixel convention of ``cv2.resize``), so resizing the field back is consistent.
    Channel 0 is the x displacement, channel 1 the y displacement.
    """
    height, width = layer_map.shape
    d = downsample
    xs = (np.arange(width // d, dtype=np.float32) + 0.5) * d - 0.5
    ys = (np.arange(height // d, dtype=np.float32) + 0.5) * d - 0.5
    grid_x, grid_y = np.meshgrid(xs, ys)  # (h, w) each
    labels = layer_map[
        np.clip(np.floor(grid_y + 0.5).astype(int), 0, height - 1),
        np.clip(np.floor(grid_x + 0.5).astype(int), 0, width - 1),
    ]
    # one 3x3 motion per layer, background (a pure translation) first: frame t_from -> t_to
    motions = np.tile(np.eye(3), (len(plan.layers) + 1, 1, 1))
    motions[0, :2, 2] = plan.camera[t_from] - plan.camera[t_to]  # background moves against the camera
    for index in np.flatnonzero(np.bincount(labels.ravel() + 1, minlength=len(plan.layers) + 1)[1:]):
        source, target = np.eye(3), np.eye(3)
        source[:2], target[:2] = plan.layers[index].affines[t_from], plan.layers[index].affines[t_to]
        motions[index + 1] = target @ np.linalg.inv(source)  # frame t_from -> sprite -> frame t_to
    motion = motions[labels + 1].astype(np.float32)  # (h, w, 3, 3) for each grid point
    flow = np.empty((2,) + grid_x.shape, np.float32)
    flow[0] = motion[..., 0, 0] * grid_x + motion[..., 0, 1] * grid_y + motion[..., 0, 2] - grid_x
    flow[1] = motion[..., 1, 0] * grid_x + motion[..., 1, 1] * grid_y + motion[..., 1, 2] - grid_y
    return flow
