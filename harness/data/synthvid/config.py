"""SynthVID presets: every difficulty knob in one frozen dataclass.

Sizes are fractions of the frame's shorter side unless the name says ``_px``, so a preset keeps its
difficulty when ``frame_size`` changes. The calibration targets (ISSUE): single-frame baseline devkit
mAP@0.5 in 45-75, oracle-flow averaging over +-4 neighbours >= 8 points better, fast bucket lowest;
motion-IoU buckets near ImageNet VID val (38% slow / 36% medium / 26% fast).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from harness.data.records import DEGRADATIONS


@dataclass(frozen=True)
class SynthVIDConfig:
    preset: str = "default"
    frame_size: tuple[int, int] = (128, 128)  # (width, height)
    num_train_videos: int = 300
    num_val_videos: int = 60
    num_stills: int = 2000  # DET-like still images (train only)
    frames_per_video: tuple[int, int] = (30, 60)  # inclusive range
    videos_per_chunk: int = 100  # train videos per ``<chunk>`` folder

    # objects
    objects_per_video: tuple[int, int] = (1, 4)
    same_class_prob: float = 0.25  # chance an extra object repeats a class in the video
    object_size: tuple[float, float] = (0.26, 0.45)  # longer side of the object, fraction of the frame
    texture_contrast: tuple[float, float] = (0.60, 0.85)  # pattern vs base colour, fraction of 255
    pattern_period: tuple[float, float] = (0.30, 0.38)  # pattern period, fraction of the object size
    enter_prob: float = 0.2  # object enters from outside the frame
    # motion: relative speed = px/frame divided by the object size, drawn per bucket
    speed_buckets: tuple[tuple[float, float, float], ...] = (
        (0.34, 0.000, 0.0055),  # (share, min, max): slow
        (0.37, 0.0095, 0.022),  # medium
        (0.29, 0.032, 0.075),  # fast
    )
    turn_rate: float = 0.04  # max heading change, rad/frame
    rotation_per_speed: float = 25.0  # in-plane rotation, deg/frame per unit relative speed
    scale_change: float = 0.15  # max log-scale amplitude over a video
    pose_amplitude: float = 0.12  # aspect oscillation ("pose" change)
    camera_speed: float = 0.008  # max pan speed, fraction of the frame per frame

    # degradations: bursts of a few frames, per object (blur, occlusion) or per frame (the rest)
    burst_length: tuple[int, int] = (1, 3)
    object_burst_rate: float = 0.11  # chance per frame that an object burst starts
    frame_burst_rate: float = 0.095  # chance per frame that a frame burst starts
    fast_burst_boost: float = 1.5  # object burst rate x (1 + boost * relative speed / 0.03)
    object_degradation_weights: tuple[float, float] = (0.75, 0.25)  # motion_blur, occlusion
    frame_degradation_weights: tuple[float, float, float, float] = (0.4, 0.2, 0.15, 0.25)
    # (defocus, illumination, noise, jpeg)
    blur_length: tuple[float, float] = (0.22, 0.34)  # motion-blur length, fraction of the object size...
    blur_per_speed: float = 4.0  # ... plus this many frames of motion
    defocus_sigma: tuple[float, float] = (0.03, 0.05)  # fraction of the frame
    occluder_size: tuple[float, float] = (0.6, 0.9)  # fraction of the object size
    occluder_grey: tuple[float, float] = (60.0, 200.0)  # occluders are flat grey, grey level range
    background_blur: float = 3.0  # Gaussian sigma (px) of the background clutter's edges
    illumination_gain: tuple[float, float] = (0.15, 0.3)
    illumination_noise: float = 10.0  # sensor noise sigma in the dark, grey levels
    noise_sigma: tuple[float, float] = (30.0, 45.0)  # grey levels
    jpeg_quality: tuple[int, int] = (5, 10)  # degraded frames
    clean_jpeg_quality: int = 92  # every other frame
    flow_downsample: int = 2  # flow stored at 1/this resolution
    processes: int = 2  # worker processes for generation

    def __post_init__(self) -> None:
        if len(self.object_degradation_weights) != 2 or len(self.frame_degradation_weights) != 4:
            raise ValueError("object_degradation_weights needs 2 values, frame_degradation_weights 4")
        if abs(sum(share for share, _, _ in self.speed_buckets) - 1.0) > 1e-6:
            raise ValueError(f"speed_buckets shares must sum to 1: {self.speed_buckets}")
        if min(self.frame_size) < 32:
            raise ValueError(f"frame_size must be at least 32x32, got {self.frame_size}")


OBJECT_DEGRADATIONS = ("motion_blur", "occlusion")
FRAME_DEGRADATIONS = ("defocus", "illumination", "noise", "jpeg")
assert set(OBJECT_DEGRADATIONS + FRAME_DEGRADATIONS) == set(DEGRADATIONS)

PRESETS: dict[str, SynthVIDConfig] = {
    "default": SynthVIDConfig(),
    "quick": SynthVIDConfig(
        preset="quick", num_train_videos=40, num_val_videos=12, num_stills=300, frames_per_video=(20, 30)
    ),
    "tiny": SynthVIDConfig(
        preset="tiny",
        frame_size=(64, 64),
        num_train_videos=4,
        num_val_videos=2,
        num_stills=20,
        frames_per_video=(12, 12),
        videos_per_chunk=2,
        processes=1,
    ),
}


def get_preset(name: str, **overrides) -> SynthVIDConfig:
    """A preset by name, with optional field overrides (e.g. ``frame_size=(160, 96)``)."""
    if name not in PRESETS:
        raise KeyError(f"unknown SynthVID preset {name!r}; known: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
