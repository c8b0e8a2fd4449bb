"""SynthVID scenes: object sprites and textures, motion, and the schedule of degradations.

A video is planned once (:func:`plan_video`: every random draw happens there, from one
``numpy.random.Generator``) and then rendered frame by frame (``render.render_frame``). Each object is a
sprite (``SPRITE`` x ``SPRITE`` pixels: silhouette alpha + RGB with the class pattern) placed by one
affine map per frame, ``frame_xy = A_t @ (sprite_xy, 1)``; the background is a large canvas seen
through a panning camera. Because every layer moves by a known affine map, the optical flow between
any two frames is exact (``render.flow_between``).

Class identity lives only in fine detail (pattern of period ~6 px at 128x128, or a notched outline);
colour, size and silhouette are drawn independently of the class, so a blurred, noisy, JPEG-crushed
or occluded object is ambiguous while its clean neighbours are not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from harness.data.classes import SYNTHVID_CLASSES
from harness.data.synthvid.config import FRAME_DEGRADATIONS, OBJECT_DEGRADATIONS, SynthVIDConfig

SPRITE = 64  # sprite side, pixels
SPRITE_EXTENT = 56  # longest side of a silhouette inside the sprite


# ---------------------------------------------------------------------------------------------
# Sprites
# ---------------------------------------------------------------------------------------------


def _silhouette(rng: np.random.Generator, *, notched: bool) -> np.ndarray:
    """Alpha (SPRITE, SPRITE) float32 in [0, 1]: a random shape, anti-aliased; notches for ``notched``."""
    up = 4  # draw at 4x and downsample for anti-aliasing
    size = SPRITE * up
    mask = np.zeros((size, size), np.uint8)
    center = (size // 2, size // 2)
    half_long = SPRITE_EXTENT * up / 2
    half_short = half_long * rng.uniform(0.65, 1.0)
    kind = rng.integers(4)
    if kind == 0:
        cv2.ellipse(mask, center, (int(half_long), int(half_short)), 0, 0, 360, 255, -1)
    else:
        angles = np.linspace(0, 2 * np.pi, 128, endpoint=False)
        exponent = (4.0, 2.6, 1.3)[kind - 1]  # rounded square, squircle, diamond-ish
        c, s = np.cos(angles), np.sin(angles)
        x = half_long * np.sign(c) * np.abs(c) ** (2 / exponent)
        y = half_short * np.sign(s) * np.abs(s) ** (2 / exponent)
        polygon = np.stack([x + center[0], y + center[1]], axis=1).round().astype(np.int32)
        cv2.fillPoly(mask, [polygon], 255)
    if notched:
        num_notches = rng.integers(6, 10)
        for angle in np.linspace(0, 2 * np.pi, num_notches, endpoint=False) + rng.uniform(0, 1):
            direction = np.array([np.cos(angle), np.sin(angle)])
            radius = half_long  # march inward until inside the shape
            while (
                radius > 0
                and mask[int(center[1] + direction[1] * radius), int(center[0] + direction[0] * radius)] == 0
            ):
                radius -= 1
            depth, width = 0.09 * SPRITE_EXTENT * up, 0.045 * SPRITE_EXTENT * up
            tip = np.array(center) + direction * (radius - depth)
            normal = np.array([-direction[1], direction[0]])
            base = np.array(center) + direction * (radius + 2 * up)
            triangle = np.stack([tip, base + normal * width, base - normal * width]).round().astype(np.int32)
            cv2.fillPoly(mask, [triangle], 0)
    return cv2.resize(mask, (SPRITE, SPRITE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def _pattern(class_name: str, rng: np.random.Generator, period: float) -> np.ndarray:
    """Pattern strength (SPRITE, SPRITE) in [0, 1] in sprite coordinates.

    Every pattern covers about half of the sprite, so once blurred all patterned classes have the
    same mean colour: only the fine structure tells them apart.
    """
    v, u = np.mgrid[0:SPRITE, 0:SPRITE].astype(np.float32)
    c = (SPRITE - 1) / 2
    phase = rng.uniform(0, period)

    def soft(x: np.ndarray) -> np.ndarray:  # smooth square wave from a signed distance-like value
        return np.clip(0.5 + 1.5 * x, 0, 1)

    wave = lambda x: np.sin(2 * np.pi * (x + phase) / period)  # noqa: E731
    if class_name in ("plain", "notched"):
        return np.zeros((SPRITE, SPRITE), np.float32)
    if class_name == "stripes":
        return soft(wave(v))
    if class_name == "dots":
        du = (u + phase) % period - period / 2
        dv = (v + phase) % period - period / 2
        return soft((0.4 * period - np.sqrt(du**2 + dv**2)) / 1.5)  # radius 0.4 P: half the area
    if class_name == "checker":
        return soft(wave(u) * wave(v) * 2)
    if class_name == "rings":
        return soft(wave(np.sqrt((u - c) ** 2 + (v - c) ** 2)))
    if class_name == "grid":
        return soft(
            (
                np.maximum(np.cos(2 * np.pi * (u + phase) / period), np.cos(2 * np.pi * (v + phase) / period))
                - 0.61
            )
            * 3
        )  # half the area
    if class_name == "chevrons":
        return soft(wave(v + np.abs(u - c)))
    raise ValueError(f"no pattern for SynthVID class {class_name!r}")


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(60, 230), rng.uniform(70, 230)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def make_sprite(
    class_index: int, rng: np.random.Generator, config: SynthVIDConfig
) -> tuple[np.ndarray, np.ndarray]:
    """RGB (SPRITE, SPRITE, 3) float32 and alpha (SPRITE, SPRITE) of one object of the given class."""
    class_name = SYNTHVID_CLASSES[class_index]
    alpha = _silhouette(rng, notched=class_name == "notched")
    base = _random_colour(rng)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction) + 1e-6
    contrast = rng.uniform(*config.texture_contrast) * 255
    other = base + contrast * direction * np.where(base + contrast * direction > 255, -1, 1)
    other = np.clip(other, 0, 255)
    period = rng.uniform(*config.pattern_period) * SPRITE_EXTENT
    pattern = _pattern(class_name, rng, period)[..., None]
    v, u = np.mgrid[0:SPRITE, 0:SPRITE].astype(np.float32) / SPRITE - 0.5
    shading = 1 + 0.15 * (rng.normal() * u + rng.normal() * v)[..., None]  # same lighting cue for all classes
    rgb = np.clip((base * (1 - pattern) + other * pattern) * shading, 0, 255).astype(np.float32)
    return rgb, alpha


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------


@dataclass
class Layer:
    """A moving sprite: affine (num_frames, 2, 3) sprite -> frame, and the frames where it is drawn."""

    rgb: np.ndarray
    alpha: np.ndarray
    affines: np.ndarray
    active: np.ndarray  # bool (num_frames,)
    label: int = -1  # class index; -1 for an occluder
    track_id: int = -1
    rel_speed: float = 0.0
    blur: np.ndarray | None = None  # float (num_frames,): motion-blur length in px (0 = sharp)
    sprite_area: float = 0.0

    def __post_init__(self) -> None:
        self.sprite_area = float((self.alpha > 0.5).sum())
        self._prefiltered: tuple[np.ndarray, np.ndarray] | None = None

    def prefiltered(self) -> tuple[np.ndarray, np.ndarray]:
        """Premultiplied RGB and alpha low-passed for the layer's mean scale, so shrinking does not alias."""
        if self._prefiltered is None:
            scale = float(np.mean(np.sqrt(np.abs(np.linalg.det(self.affines[:, :, :2])))))
            rgb, alpha = self.rgb * self.alpha[..., None], self.alpha
            if scale < 1:
                sigma = 0.5 * np.sqrt(1 / scale**2 - 1)
                rgb, alpha = cv2.GaussianBlur(rgb, (0, 0), sigma), cv2.GaussianBlur(alpha, (0, 0), sigma)
            self._prefiltered = (rgb.astype(np.float32), alpha.astype(np.float32))
        return self._prefiltered


@dataclass
class VideoPlan:
    frame_size: tuple[int, int]  # (W, H)
    background: np.ndarray  # (Hc, Wc, 3) float32 canvas
    camera: np.ndarray  # (num_frames, 2): canvas xy shown at frame pixel (0, 0)
    layers: list[Layer]  # objects (z order), then occluders
    frame_degradation: list[tuple[str, float] | None] = field(default_factory=list)  # per frame
    noise_seed: int = 0  # seeds the per-frame sensor noise of the renderer

    @property
    def num_frames(self) -> int:
        return int(self.camera.shape[0])


def _bursts(rng: np.random.Generator, num_frames: int, rate: float, lengths: tuple[int, int]) -> list[range]:
    """Non-overlapping runs of frames: at each free frame a burst starts with probability ``rate``."""
    bursts, t = [], 0
    while t < num_frames:
        if rng.random() < rate:
            length = int(rng.integers(lengths[0], lengths[1] + 1))
            bursts.append(range(t, min(t + length, num_frames)))
            t += length + 1
        else:
            t += 1
    return bursts


def _background(rng: np.random.Generator, width: int, height: int, blur: float) -> np.ndarray:
    low = rng.uniform(40, 200, size=(6, 6, 3)).astype(np.float32)
    canvas = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(width * height / 1500) + 3):  # low-contrast clutter
        centre = (int(rng.integers(width)), int(rng.integers(height)))
        axes = (int(rng.integers(3, 20)), int(rng.integers(3, 20)))
        colour = canvas[centre[1], centre[0]] + rng.normal(0, 25, 3)
        cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour.tolist(), -1)
    # soft-edged clutter: objects (sharp silhouettes) stay distinguishable from the background
    return np.clip(cv2.GaussianBlur(canvas, (0, 0), blur), 0, 255)


def _trajectory(
    rng: np.random.Generator,
    n: int,
    size_px: float,
    speed: float,
    width: int,
    height: int,
    enter: bool,
    turn_rate: float,
) -> np.ndarray:
    """Centres (n, 2): smooth heading changes, steered back when the object drifts off screen."""
    if enter:
        side = rng.integers(4)
        position = np.array([rng.uniform(0, width), rng.uniform(0, height)])
        position[side % 2] = -0.45 * size_px if side < 2 else (width, height)[side % 2] + 0.45 * size_px
        heading = np.arctan2(height / 2 - position[1], width / 2 - position[0]) + rng.uniform(-0.5, 0.5)
    else:
        position = np.array([rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height])
        heading = rng.uniform(0, 2 * np.pi)
    turn_period, turn_phase = rng.uniform(15, 40), rng.uniform(0, 2 * np.pi)
    centres = np.empty((n, 2))
    for t in range(n):
        centres[t] = position
        turn = turn_rate * np.sin(2 * np.pi * t / turn_period + turn_phase)
        extent = np.array([width, height])
        outside = (position < 0.1 * extent) | (position > 0.9 * extent)
        if np.any(outside) and not (enter and t < size_px / max(speed, 1e-3)):
            to_centre = np.arctan2(height / 2 - position[1], width / 2 - position[0])
            turn += np.clip(np.angle(np.exp(1j * (to_centre - heading))), -0.08, 0.08)
        heading += turn
        position = position + speed * np.array([np.cos(heading), np.sin(heading)])
    return centres


def _affines(centres: np.ndarray, scales: np.ndarray, aspects: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """(n, 2, 3) maps sprite xy -> frame xy.

    rotate(angle) @ diag(scale * aspect, scale / aspect) about the sprite centre, then move to ``centres``.
    """
    c, s = np.cos(angles), np.sin(angles)
    linear = np.empty((len(centres), 2, 2))
    linear[:, 0, 0], linear[:, 0, 1] = c * scales * aspects, -s * scales / aspects
    linear[:, 1, 0], linear[:, 1, 1] = s * scales * aspects, c * scales / aspects
    sprite_centre = np.full(2, (SPRITE - 1) / 2)
    translation = centres - linear @ sprite_centre
    return np.concatenate([linear, translation[:, :, None]], axis=2)


def plan_video(rng: np.random.Generator, config: SynthVIDConfig, num_frames: int) -> VideoPlan:
    """Draw everything random about one video (or one still when ``num_frames == 1``)."""
    width, height = config.frame_size
    side = min(width, height)
    n = num_frames
    max_pan = config.camera_speed * side
    pan_velocity = rng.uniform(-max_pan, max_pan, size=2)
    pad = int(np.ceil(max_pan * n / 2 + 2 * max_pan * 3)) + 4
    background = _background(rng, width + 2 * pad, height + 2 * pad, config.background_blur)
    wobble = rng.uniform(0, 1.0, size=2) * np.sin(np.arange(n)[:, None] / rng.uniform(6, 12, size=2))
    camera = pad + pan_velocity * (np.arange(n)[:, None] - (n - 1) / 2) + wobble * max_pan

    num_objects = int(rng.integers(config.objects_per_video[0], config.objects_per_video[1] + 1))
    labels: list[int] = []
    for _ in range(num_objects):
        repeat = labels and rng.random() < config.same_class_prob
        labels.append(int(rng.choice(labels)) if repeat else int(rng.integers(len(SYNTHVID_CLASSES))))
    shares = np.array([b[0] for b in config.speed_buckets])
    t = np.arange(n)
    objects, occluders = [], []
    for track_id, label in enumerate(labels):
        rgb, alpha = make_sprite(label, rng, config)
        size_px = rng.uniform(*config.object_size) * side
        _, low, high = config.speed_buckets[rng.choice(len(shares), p=shares)]
        rel_speed = rng.uniform(low, high)
        speed = rel_speed * size_px
        enter = n > 1 and rng.random() < config.enter_prob and rel_speed > 0.01
        centres = _trajectory(rng, n, size_px, speed, width, height, enter, config.turn_rate)
        dynamics = min(1.0, rel_speed / 0.03)  # slow objects barely rotate or change scale
        scales = (
            size_px
            / SPRITE_EXTENT
            * np.exp(
                config.scale_change
                * dynamics
                * rng.uniform(0, 1)
                * np.sin(2 * np.pi * t / rng.uniform(30, 80) + rng.uniform(0, 6.3))
            )
        )
        aspects = np.exp(
            config.pose_amplitude
            * (0.2 + dynamics)
            / 1.2
            * rng.uniform(0, 1)
            * np.sin(2 * np.pi * t / rng.uniform(15, 40) + rng.uniform(0, 6.3))
        )
        spin = np.deg2rad(rng.uniform(-1, 1) * config.rotation_per_speed * rel_speed)
        angles = rng.uniform(0, 2 * np.pi) + spin * t
        layer = Layer(
            rgb,
            alpha,
            _affines(centres, scales, aspects, angles),
            np.ones(n, bool),
            label=label,
            track_id=track_id,
            rel_speed=rel_speed,
            blur=np.zeros(n),
        )
        rate = config.object_burst_rate * (1 + config.fast_burst_boost * rel_speed / 0.03)
        weights = np.asarray(config.object_degradation_weights) / sum(config.object_degradation_weights)
        for burst in _bursts(rng, n, rate, config.burst_length):
            kind = OBJECT_DEGRADATIONS[rng.choice(2, p=weights)]
            if kind == "motion_blur":
                length = size_px * rng.uniform(*config.blur_length) + config.blur_per_speed * speed
                layer.blur[list(burst)] = length
            else:
                occluders.append(_occluder(rng, config, centres, size_px, burst, n))
        objects.append(layer)

    order = rng.permutation(len(objects))  # z order of the objects
    frame_degradation: list[tuple[str, float] | None] = [None] * n
    weights = np.asarray(config.frame_degradation_weights) / sum(config.frame_degradation_weights)
    for burst in _bursts(rng, n, config.frame_burst_rate, config.burst_length):
        kind = FRAME_DEGRADATIONS[rng.choice(4, p=weights)]
        strength = {
            "defocus": rng.uniform(*config.defocus_sigma) * side,
            "illumination": rng.uniform(*config.illumination_gain),
            "noise": rng.uniform(*config.noise_sigma),
            "jpeg": float(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1)),
        }[kind]
        for frame in burst:
            frame_degradation[frame] = (kind, strength)
    return VideoPlan(
        (width, height),
        background,
        camera,
        [objects[i] for i in order] + occluders,
        frame_degradation,
        noise_seed=int(rng.integers(2**31)),
    )


def _occluder(
    rng: np.random.Generator,
    config: SynthVIDConfig,
    centres: np.ndarray,
    size_px: float,
    burst: range,
    n: int,
) -> Layer:
    """A flat-coloured shape sweeping across an object during ``burst`` (its affine exists at every frame)."""
    grey = rng.uniform(*config.occluder_grey)  # flat, desaturated: an occluder, not a "plain" object
    rgb = np.full((SPRITE, SPRITE, 3), grey, np.float32)
    alpha = _silhouette(rng, notched=False)
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-6
    sweep = (
        np.clip((np.arange(n) - burst.start) / max(len(burst) - 1, 1), -1, 2) - 0.5
    )  # -0.5 .. 0.5 in the burst
    offsets = (0.25 + 0.35 * sweep[:, None]) * size_px * direction  # stays mostly over the object
    scale = rng.uniform(*config.occluder_size) * size_px / SPRITE_EXTENT
    affines = _affines(centres + offsets, np.full(n, scale), np.ones(n), np.full(n, rng.uniform(0, np.pi)))
    active = np.zeros(n, bool)
    active[list(burst)] = True
    return Layer(rgb, alpha, affines, active)
