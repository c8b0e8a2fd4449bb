"""Frozen run configuration.

One dataclass per concern; modules never read these directly. The ``build_*``/``from_config``
functions at the edge (``harness.model.detector.build_detector``, ``harness.train.Trainer``,
``harness.data.dataset.build_dataset``) map a config onto explicit keyword arguments.

An ablation row is a base :class:`RunConfig` plus named deltas made with :func:`dataclasses.replace`
(see :func:`override`), so the difference between two rows is exactly the thing ablated.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

SupportStrategy = Literal[
    "none",  # single frame: no support frames
    "random_window",  # FGFA/STSN/SSVD training: `num` frames drawn at random within +-`radius`
    "fixed_stride",  # `num` frames at offsets +-stride, +-2*stride, ... (symmetric; `num` even)
    "video_uniform",  # SELSA/SparseVOD: `num` frames drawn uniformly over the whole video
    "clip",  # STMN: a clip of `num` frames at frame stride `stride`, reference in the middle
    "sliding",  # test time: every frame within +-`radius` at `stride` (FGFA/STSN: T = 2*radius/stride + 1)
    "buffer_uniform",  # SSVD test time: `num` frames chosen uniformly from a buffer of 2*`radius`+1 frames
]


@dataclass(frozen=True)
class SupportSpec:
    """How support frames are chosen around a reference frame.

    Offsets are in frames relative to the reference (negative = past). Near a video boundary,
    ``boundary="pad"`` repeats the first/last frame (STSN, SSVD: indices clamped into the video),
    ``"clamp"`` shifts the whole window into the video keeping its spacing (FGFA's behaviour at the
    right boundary); both keep the number of supports fixed. For ``"clip"``, ``num`` counts the
    frames of the clip including the reference, so it yields ``num - 1`` supports.
    See ``harness.data.sampling.support_indices``.
    """

    strategy: SupportStrategy = "none"
    num: int = 0  # number of support frames (excluding the reference)
    radius: int = 0  # half window, in frames
    stride: int = 1  # temporal stride between chosen frames
    boundary: Literal["pad", "clamp"] = "pad"


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, which split and how frames are sampled."""

    root: str | None = None  # VID-layout root; None = the embedded SynthVID (generated on first use)
    format: Literal["vid", "cocovid"] = "vid"
    cocovid_json: str | None = None  # with format="cocovid": the annotation file, may contain "{split}"
    synth_preset: str = "default"  # SynthVID preset when root is None ("default", "quick", "tiny")
    synth_seed: int = 0
    train_split: str = "train"
    val_split: str = "val"
    # optional: restrict training references to an FGFA ImageSets list (file or name under ImageSets/),
    # or, with format="cocovid", "is_vid_train_frame" to the frames the JSON flags (mmtracking's choice)
    train_list: str | None = None
    max_val_videos: int | None = None
    image_size: int = 128  # frames are resized so the longer side equals this
    train_support: SupportSpec = SupportSpec()
    test_support: SupportSpec = SupportSpec()
    still_fraction: float = 0.0  # phase 2: share of samples that are stills with copied supports
    with_oracle_flow: bool = False  # load ground-truth flow reference->support (SynthVID only)
    on_bad_input: Literal["raise", "skip"] = "raise"


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneConfig:
    """Small ResNet-style backbone; output stride 8."""

    width: int = 32  # channels of the stem; doubled at each stage
    depth: tuple[int, ...] = (1, 1, 1)  # residual blocks per stage
    out_channels: int = 64


@dataclass(frozen=True)
class AggregationConfig:
    """A temporal-aggregation method: an alignment and a fusion, each chosen by name.

    ``aggregator="window"`` composes ``alignment`` and ``fusion`` (see
    ``harness.aggregation.WindowAggregator``); other names select a registered aggregator that is
    not such a composition (stateful or stream methods in later issues), configured by
    ``aggregator_kwargs``.
    """

    aggregator: str = "window"
    alignment: str = "identity"
    fusion: str = "average"
    alignment_kwargs: dict[str, Any] = field(default_factory=dict)
    fusion_kwargs: dict[str, Any] = field(default_factory=dict)
    aggregator_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HeadConfig:
    """Dense one-stage head (FCOS-style) on the aggregated stride-8 feature map."""

    channels: int = 64
    num_convs: int = 2
    score_threshold: float = 0.05
    nms_iou: float = 0.5
    max_detections: int = 100


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int = 8
    backbone: BackboneConfig = BackboneConfig()
    aggregation: AggregationConfig = AggregationConfig()
    head: HeadConfig = HeadConfig()


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """One training phase. Phase 1 = still-image detector; phase 2 = video model initialised from it."""

    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_steps: int = 50
    grad_clip: float = 10.0
    checkpoint_every: int = 200
    num_workers: int = 0
    freeze_backbone: bool = False


@dataclass(frozen=True)
class EvalConfig:
    protocols: tuple[str, ...] = ("devkit", "fixed", "coco")
    motion: bool = True
    seq_nms: bool = False
    batch_videos: int = 4
    measure: bool = True  # time the per-frame cost and count parameters/FLOPs (harness.measure)


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; written to ``<run>/config.json``."""

    name: str = "run"
    seed: int = 0
    # Seed of phase 1 (the still-image detector). None = ``seed``. An integer shares one phase-1
    # detector across seeds, as a common pretrained model would be; seeds then vary phase 2 only.
    phase1_seed: int | None = None
    device: str = "auto"  # "auto" = cuda when available, else cpu
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    phase1: TrainConfig = TrainConfig()
    phase2: TrainConfig = TrainConfig(steps=500, lr=1e-3)
    eval: EvalConfig = EvalConfig()


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def phase_seed(run: RunConfig, phase: int) -> int:
    """The seed that drives training phase ``phase`` (1 or 2) of ``run``."""
    if phase == 1 and run.phase1_seed is not None:
        return run.phase1_seed
    return run.seed


def override(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` accepting dotted paths: ``override(cfg, **{"model.head.nms_iou": 0.3})``."""
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if not hasattr(config, head):
            raise KeyError(f"{type(config).__name__} has no field {head!r} (in override {key!r})")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[head] = value
    for head, sub in nested.items():
        flat[head] = override(flat.get(head, getattr(config, head)), **sub)
    for head, value in flat.items():  # a dict given for a nested config (e.g. from the command line)
        current = getattr(config, head)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            flat[head] = from_dict(type(current), value)
    return dataclasses.replace(config, **flat)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_json(config: Any) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Inverse of :func:`to_dict` for the dataclasses in this module (tuples restored from lists)."""
    kwargs = {}
    hints = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in hints:
            raise KeyError(f"{cls.__name__} has no field {key!r}")
        default = hints[key].default
        if dataclasses.is_dataclass(default):
            kwargs[key] = from_dict(type(default), value)
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def config_hash(config: Any) -> str:
    """Stable short hash of a config, used to name run folders and to skip completed runs."""
    import hashlib

    return hashlib.sha1(to_json(config).encode()).hexdigest()[:10]
