"""Frozen run configuration.

One dataclass per concern; modules never read these directly. The functions at the edge
(``harness.build.build_model``, ``harness.data.dataset.build_dataset``, ``harness.pipeline``) map a
config onto explicit keyword arguments (``harness.train.train`` takes a model, a dataset and a
:class:`TrainConfig`).

The sections split by stage: ``data``, ``model``, ``phase1`` and ``phase2`` determine the trained
weights; ``test`` holds every test-time setting (support frames at test time, validation subset,
Seq-NMS, protocols, measurement), so a test-time variant of a trained row is a change of ``test``
alone. Which fields each stage's identity covers is decided in one place,
``harness.runs.stage_identity``; ``name`` is a label and never part of an identity.

An ablation row is a base :class:`RunConfig` plus named deltas made with :func:`dataclasses.replace`
(see :func:`override`), so the difference between two rows is exactly the thing ablated.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

Protocol = Literal["devkit", "fixed", "coco"]  # the mAP definitions of harness.eval (PROTOCOLS.md)
SupportStrategy = Literal[
    "none",  # single frame: no support frames
    "random_window",  # FGFA/STSN/SSVD training: `num` frames drawn at random within +-`radius`
    "fixed_stride",  # `num` frames at offsets +-stride, +-2*stride, ... (symmetric; `num` even)
    "video_uniform",  # SELSA/SparseVOD: `num` frames drawn uniformly over the whole video
    "clip",  # STMN: a clip of `num` frames at frame stride `stride`, reference in the middle
    "sliding",  # test time: every frame within +-`radius` at `stride` (FGFA/STSN: T = 2*radius/stride + 1)
    "buffer_uniform",  # SSVD test time: `num` frames chosen uniformly from a buffer of 2*`radius`+1 frames
    "causal",  # online window: the `num` previous frames at `stride` (offsets -num*stride .. -stride)
    "keyframe_triplet",  # LSTS training: old and new keyframe around the current frame, `radius` = L
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
    """Which dataset and how training samples are drawn (test-time settings live in :class:`TestConfig`)."""

    root: str | None = None  # VID-layout root; None = the embedded SynthVID (generated on first use)
    format: Literal["vid", "cocovid"] = "vid"
    cocovid_json: str | None = None  # with format="cocovid": the annotation file, may contain "{split}"
    synth_preset: str = "default"  # SynthVID preset when root is None ("default", "quick", "tiny")
    synth_seed: int = 0
    train_split: str = "train"
    # optional: restrict training references to an FGFA ImageSets list (file or name under ImageSets/),
    # or, with format="cocovid", "is_vid_train_frame" to the frames the JSON flags (mmtracking's choice)
    train_list: str | None = None
    image_size: int = 128  # frames are resized so the longer side equals this
    train_support: SupportSpec = SupportSpec()  # phase 2 training supports (phase 1 never has any)
    still_fraction: float = 0.0  # phase 2: share of samples that are stills with copied supports
    on_bad_input: Literal["raise", "skip"] = "raise"  # malformed annotations: refuse, or skip and count


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
    not such a composition, configured by ``aggregator_kwargs``.

    ``pretrained`` names one-time preparations the method's weights start from, as
    ``{kwarg: {"kind": <preparation>, **settings}}``: e.g. ``{"flownet_weights": {"kind": "flownet",
    "steps": 400, ...}}`` pretrains a flow net on ground-truth flow (``harness.prepare``), once per
    dataset and settings under ``<runs_root>/prepared/``, and passes the weights' path as the
    alignment's (window) or the aggregator's ``flownet_weights`` keyword. The settings, not the path,
    are part of the run's identity.
    """

    aggregator: str = "window"
    alignment: str = "identity"
    fusion: str = "average"
    alignment_kwargs: dict[str, Any] = field(default_factory=dict)
    fusion_kwargs: dict[str, Any] = field(default_factory=dict)
    aggregator_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: dict[str, dict[str, Any]] = field(default_factory=dict)


HeadKind = Literal["dense", "sparse"]
HEAD_KINDS: tuple[str, ...] = typing.get_args(HeadKind)


@dataclass(frozen=True)
class SparseHeadConfig:
    """The sparse head (Sparse R-CNN, ``harness.model.sparse_head``), scaled to SynthVID (1-4 objects
    per 128x128 frame, a 16x16 stride-8 map). The paper's (SparseVOD / Sparse R-CNN) values in the
    comments; the loss weights are the paper's."""

    num_proposals: int = 32  # learnable proposal boxes and features (paper: 100)
    num_stages: int = 3  # iterative dynamic-head stages, each supervised (paper: 6)
    dim: int = 64  # proposal feature width (paper: 256)
    dynamic_dim: int = 16  # inner width of the dynamic convolution (paper: 64)
    ffn_dim: int = 256  # feed-forward width (paper: 2048)
    num_heads: int = 4  # self-attention heads among proposals (paper: 8)
    roi_size: int = 7  # RoI Align output side (paper: 7)
    dropout: float = 0.0  # in attention, interaction and FFN (Sparse R-CNN's config: 0.0)
    class_weight: float = 2.0  # focal term, in the matching cost and the loss (paper: 2)
    l1_weight: float = 5.0  # L1 on image-normalised boxes (paper: 5)
    giou_weight: float = 2.0  # GIoU term (paper: 2)


@dataclass(frozen=True)
class HeadConfig:
    """The head on the aggregated stride-8 feature map: ``kind="dense"`` (FCOS-style, one-stage,
    NMS) or ``"sparse"`` (Sparse R-CNN: learnable proposals, set loss, no NMS; settings in ``sparse``).

    ``channels``/``num_convs``/``nms_iou`` are the dense head's; ``score_threshold`` and
    ``max_detections`` apply to both. With ``kind="dense"`` the ``kind`` and ``sparse`` fields are left
    out of the run identities (``harness.runs.stage_identity``): dense runs keep their folders.
    """

    channels: int = 64  # width of the classification and box towers
    num_convs: int = 2  # conv + GroupNorm + ReLU blocks per tower
    score_threshold: float = 0.05  # detections below this score are dropped (before NMS: dense)
    nms_iou: float = 0.5  # class-wise NMS IoU
    max_detections: int = 100  # per frame, after NMS (sparse: the top-k over proposals x classes)
    kind: HeadKind = "dense"
    sparse: SparseHeadConfig = SparseHeadConfig()


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

    steps: int = 1000  # optimizer steps (0 in phase 2: phase-1 weights and a fresh aggregator)
    batch_size: int = 8  # reference frames per step
    lr: float = 2e-3  # base learning rate (modules may declare multipliers: harness.train)
    weight_decay: float = 1e-4  # not applied to norms, biases and parameters declared decay-free
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["cosine", "step", "constant"] = "cosine"  # after the linear warm-up
    warmup_steps: int = 50
    grad_clip: float = 10.0  # max global gradient norm
    checkpoint_every: int = 200  # steps between resumable checkpoints
    num_workers: int = 0  # DataLoader worker processes (0 = load in the training process)
    channels_last: bool = True  # NHWC weights and images: ~7% faster steps on the CPU (bench_train)
    freeze_backbone: bool = False


@dataclass(frozen=True)
class TestConfig:
    """Everything decided at test time: a variant of a trained row changes these and nothing else.

    None of these fields is part of the trained weights' identity; ``support``, ``split`` and
    ``max_videos`` decide the detections, the rest only how they are post-processed and scored.
    """

    __test__ = False  # not a pytest test class, whatever its name

    support: SupportSpec = SupportSpec()  # support frames at test time
    split: str = "val"  # the split evaluated
    max_videos: int | None = None  # the first N videos of the split (None = all)
    seq_nms: bool = False  # Seq-NMS post-processing before scoring
    protocols: tuple[Protocol, ...] = ("devkit", "fixed", "coco")  # harness.eval.evaluate protocols
    motion: bool = True  # slow/medium/fast breakdown (FGFA's motion IoU)
    measure: bool = True  # time the per-frame cost and count parameters/FLOPs (harness.measure)
    batch_videos: int = 4  # videos whose frames are batched at inference (detections do not change)
    # sparse head only: read the detections of this stage (1-based; each stage is supervised) instead
    # of the last one (None); SparseVOD's Table 3 as a test-time readout
    head_stage: int | None = None


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
    test: TestConfig = TestConfig()


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def phase_seed(run: RunConfig, phase: int) -> int:
    """The seed that drives training phase ``phase`` (1 or 2) of ``run``."""
    if phase == 1 and run.phase1_seed is not None:
        return run.phase1_seed
    return run.seed


class ConfigError(ValueError):
    """A configuration value of the wrong type or outside its choices; the message names the full key."""


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if origin is dict:
        return "a mapping"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _conforms(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_conforms(value, a) for a in typing.get_args(hint))
    if origin is tuple:
        element = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_conforms(v, element) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def check_types(config: Any, prefix: str = "") -> None:
    """Raise :class:`ConfigError` naming the full dotted key of the first field of ``config`` (a
    dataclass of this module, checked recursively) whose value does not match its annotation."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_types(value, prefix=f"{path}.")
        elif not _conforms(value, hints[f.name]):
            raise ConfigError(f"{path}: expected {_describe(hints[f.name])}, got {value!r}")


def override(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` accepting dotted paths: ``override(cfg, **{"model.head.nms_iou": 0.3})``.

    Unknown keys raise ``KeyError`` and values of the wrong type or outside their choices raise
    :class:`ConfigError`, both naming the full dotted key, before anything runs."""
    result = _override(config, changes, prefix="")
    check_types(result)
    return result


def _override(config: Any, changes: dict[str, Any], *, prefix: str) -> Any:
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if not hasattr(config, head) or not dataclasses.is_dataclass(config):
            raise KeyError(f"{type(config).__name__} has no field {head!r} (in override {prefix + key!r})")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[head] = value
    for head, sub in nested.items():
        flat[head] = _override(flat.get(head, getattr(config, head)), sub, prefix=f"{prefix}{head}.")
    for head, value in flat.items():
        current = getattr(config, head)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):  # e.g. from the command line
            flat[head] = from_dict(type(current), value, prefix=f"{prefix}{head}.")
        elif isinstance(value, list):  # JSON lists stand for the config's tuples
            flat[head] = tuple(value)
    return dataclasses.replace(config, **flat)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_json(config: Any) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def from_dict(cls: type, data: dict[str, Any], *, prefix: str = "") -> Any:
    """Inverse of :func:`to_dict` for the dataclasses in this module (tuples restored from lists);
    unknown keys and ill-typed values are refused naming the full dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: expected a mapping, got {data!r}")
    kwargs = {}
    hints = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in hints:
            raise KeyError(f"{cls.__name__} has no field {key!r} (at {prefix}{key!r})")
        default = hints[key].default
        if dataclasses.is_dataclass(default):
            kwargs[key] = from_dict(type(default), value, prefix=f"{prefix}{key}.")
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    result = cls(**kwargs)
    if not prefix:
        check_types(result)
    return result
