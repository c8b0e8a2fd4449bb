"""The uniform temporal-aggregation interface and the one registry of method parts.

Every method plugs into the shared detector (``harness.model.detector``) between the backbone and
the head. The detector never imports a method: it asks :func:`build_aggregator` for one by name.

Shapes (B = reference frames in the batch, T = support frames, C/H/W = feature map,
Hi/Wi = image size, stride = Hi / H):

``TemporalContext``  (what a method may read)
    reference        (B, C, H, W)      backbone features of the reference frames
    supports         (B, T, C, H, W)   backbone features of the support frames (T may be 0)
    offsets          (B, T) int64      support frame index minus reference frame index
    valid            (B, T) bool       False for padded slots (ragged batches)
    reference_image  (B, 3, Hi, Wi)    normalised images, for flow networks (or None)
    support_images   (B, T, 3, Hi, Wi)
    oracle_flow      (B, T, 2, Hi, Wi) ground-truth displacement (dx, dy) in image pixels: the
                                       reference pixel p is found at p + flow in the support frame
    low_level        (B, C', H, W) / (B, T, C', H, W) optional cheaper features (LSTS non-keyframes)

Three kinds of parts, all registered in :data:`REGISTRY` under ``"<kind>:<name>"``:

* ``alignment``: ``forward(ctx) -> AlignmentOutput(features (B, T, C, H, W), aux)``. Brings each
  support's features onto the reference grid (identity, flow warp, STSN deformable sampling, and in
  later issues LSTS sampling, MatchTrans, non-local).
* ``fusion``: ``forward(reference (B, C, H, W), aligned (B, T, C, H, W), valid (B, T)) ->
  FusionOutput(features (B, C, H, W), weights (B, 1 + T, H, W) | None)``. The reference is its own
  support: weight index 0 belongs to it.
* ``aggregator``: ``forward(ctx) -> AggregationOutput``. The thing the detector holds.
  :class:`WindowAggregator` (registered as ``"aggregator:window"``) composes an alignment and a
  fusion; methods that are not such a composition register their own aggregator:

  - stateful methods over a window (STMN's bidirectional memory over a clip of T frames) read the
    supports in temporal order from ``ctx.offsets`` and keep their state inside ``forward``;
  - stream methods (LSTS's keyframe memory, SRFU/DFA) set ``mode = "stream"`` and implement
    :meth:`TemporalAggregator.init_state` / :meth:`TemporalAggregator.step`; the inference engine
    then feeds frames one by one and calls ``step`` with the frame's low-level features and a
    callback that computes the full backbone features only when the method decides a keyframe;
  - two-stream methods (SSVD) return several named entries in ``AggregationOutput.streams``; the
    detector builds one head per name in :attr:`TemporalAggregator.stream_names` and fuses the
    streams' boxes by NMS at :attr:`TemporalAggregator.box_fusion_iou` (late fusion);
  - proposal-level methods (SELSA-style attention, SparseVOD) need RoI features, which a dense head
    does not have: they pass features through here unchanged (``"aggregator:window"`` with
    ``identity``/no supports) and plug a :class:`ProposalAggregator` into a two-stage or sparse head.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from harness.measure import scope

# ---------------------------------------------------------------------------------------------
# Data passed between detector and method parts
# ---------------------------------------------------------------------------------------------


@dataclass
class TemporalContext:
    reference: Tensor
    supports: Tensor
    offsets: Tensor
    valid: Tensor
    reference_image: Tensor | None = None
    support_images: Tensor | None = None
    oracle_flow: Tensor | None = None
    feature_stride: int = 8
    low_level: Tensor | None = None
    support_low_level: Tensor | None = None

    @property
    def num_supports(self) -> int:
        return int(self.supports.shape[1])

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field whose shape disagrees with ``reference``."""
        if self.reference.dim() != 4:
            raise ValueError(f"reference must be (B, C, H, W), got {tuple(self.reference.shape)}")
        b, c, h, w = self.reference.shape
        if self.supports.dim() != 5 or self.supports.shape[0] != b or self.supports.shape[2:] != (c, h, w):
            raise ValueError(
                f"supports must be (B={b}, T, C={c}, H={h}, W={w}), got {tuple(self.supports.shape)}"
            )
        t = self.supports.shape[1]
        for name in ("offsets", "valid"):
            value = getattr(self, name)
            if tuple(value.shape) != (b, t):
                raise ValueError(f"{name} must be (B={b}, T={t}), got {tuple(value.shape)}")
        if self.reference_image is not None and (
            self.reference_image.dim() != 4 or self.reference_image.shape[0] != b
        ):
            raise ValueError(
                f"reference_image must be (B={b}, 3, Hi, Wi), got {tuple(self.reference_image.shape)}"
            )
        if self.support_images is not None and tuple(self.support_images.shape[:2]) != (b, t):
            raise ValueError(
                f"support_images must be (B={b}, T={t}, 3, Hi, Wi), got {tuple(self.support_images.shape)}"
            )
        if self.oracle_flow is not None and (
            tuple(self.oracle_flow.shape[:3]) != (b, t, 2) or self.oracle_flow.dim() != 5
        ):
            raise ValueError(
                f"oracle_flow must be (B={b}, T={t}, 2, Hi, Wi), got {tuple(self.oracle_flow.shape)}"
            )


@dataclass
class AlignmentOutput:
    features: Tensor  # (B, T, C, H, W) supports on the reference grid
    aux: dict[str, Tensor] = field(default_factory=dict)  # e.g. "sampling_offsets", "flow"
    # (B, C, H, W): the reference passed through the same alignment (STSN's g_{t,t}); the fusion then
    # uses it in place of the raw reference. None = the reference is used unchanged.
    reference: Tensor | None = None


@dataclass
class FusionOutput:
    features: Tensor  # (B, C, H, W)
    weights: Tensor | None = None  # (B, 1 + T, H, W), index 0 = reference


@dataclass
class AggregationOutput:
    streams: dict[str, Tensor]  # stream name -> (B, C, H, W); one head per stream
    aux: dict[str, Tensor] = field(default_factory=dict)

    @property
    def features(self) -> Tensor:
        """The single stream of a one-stream method."""
        if len(self.streams) != 1:
            raise ValueError(f"method has {len(self.streams)} streams {sorted(self.streams)}; pick one")
        return next(iter(self.streams.values()))


# ---------------------------------------------------------------------------------------------
# Interfaces
# ---------------------------------------------------------------------------------------------


class Alignment(nn.Module):
    """Brings support features onto the reference grid: ``forward(ctx) -> AlignmentOutput``."""

    needs_images: ClassVar[bool] = False  # the detector must fill ctx.*_image
    needs_oracle_flow: ClassVar[bool] = False  # the data pipeline must load ground-truth flow

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, ctx: TemporalContext) -> AlignmentOutput:  # pragma: no cover - interface
        raise NotImplementedError


class Fusion(nn.Module):
    """Combines reference and aligned supports: ``forward(reference, aligned, valid) -> FusionOutput``."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, reference: Tensor, aligned: Tensor, valid: Tensor) -> FusionOutput:  # pragma: no cover
        raise NotImplementedError


class TemporalAggregator(nn.Module):
    """What the detector holds between backbone and head."""

    mode: ClassVar[str] = "window"  # "window" or "stream"
    stream_names: tuple[str, ...] = ("main",)
    box_fusion_iou: float = 0.5  # late fusion NMS IoU when there are several streams
    needs_images: bool = False
    needs_oracle_flow: bool = False

    def forward(self, ctx: TemporalContext) -> AggregationOutput:  # pragma: no cover - interface
        raise NotImplementedError

    # Stream methods only -------------------------------------------------------------------
    def init_state(self, batch_size: int) -> Any:  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__} is not a stream method")

    def step(
        self,
        low_level: Tensor,
        compute_features: Callable[[], Tensor],
        frame_index: Tensor,
        state: Any,
    ) -> tuple[AggregationOutput, Any]:  # pragma: no cover - interface
        """One frame of a stream: ``low_level`` (B, C', H, W); ``compute_features()`` runs the rest
        of the backbone and returns (B, C, H, W); ``frame_index`` (B,) int64."""
        raise NotImplementedError(f"{type(self).__name__} is not a stream method")


class ProposalAggregator(nn.Module):
    """Proposal-level aggregation for two-stage/sparse heads (later issues).

    ``forward(reference_rois (B, P, C, S, S) or (B, P, C), support_rois (B, T, P', C, ...),
    valid (B, T)) -> (B, P, C...)``.
    """


class WindowAggregator(TemporalAggregator):
    """Alignment followed by fusion over a window of support frames."""

    def __init__(self, alignment: Alignment, fusion: Fusion):
        super().__init__()
        self.alignment = alignment
        self.fusion = fusion
        self.needs_images = alignment.needs_images
        self.needs_oracle_flow = alignment.needs_oracle_flow

    def forward(self, ctx: TemporalContext) -> AggregationOutput:
        ctx.validate()
        if ctx.num_supports == 0:
            return AggregationOutput({"main": ctx.reference}, {})
        with scope("alignment"):
            aligned = self.alignment(ctx)
        if aligned.features.shape != ctx.supports.shape:
            raise RuntimeError(
                f"alignment {type(self.alignment).__name__} returned {tuple(aligned.features.shape)}, "
                f"expected {tuple(ctx.supports.shape)}"
            )
        reference = ctx.reference if aligned.reference is None else aligned.reference
        with scope("fusion"):
            fused = self.fusion(reference, aligned.features, ctx.valid)
        aux = dict(aligned.aux)
        if fused.weights is not None:
            aux["fusion_weights"] = fused.weights
        return AggregationOutput({"main": fused.features}, aux)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


class Registry:
    """Name -> class, with an error on duplicates and on unknown names (listing the known ones).

    The project's only registry. Keys are ``"<kind>:<name>"`` with kind in
    ``alignment``/``fusion``/``aggregator``, so one mapping serves all three slots.
    """

    KINDS = ("alignment", "fusion", "aggregator")

    def __init__(self) -> None:
        self._entries: dict[str, type[nn.Module]] = {}

    def register(self, kind: str, name: str) -> Callable[[type], type]:
        if kind not in self.KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {self.KINDS}")

        def decorator(cls: type) -> type:
            key = f"{kind}:{name}"
            if key in self._entries and self._entries[key] is not cls:
                raise KeyError(f"{key!r} is already registered to {self._entries[key].__qualname__}")
            self._entries[key] = cls
            cls.registry_name = name
            return cls

        return decorator

    def get(self, kind: str, name: str) -> type[nn.Module]:
        _load_methods()
        key = f"{kind}:{name}"
        if key not in self._entries:
            raise KeyError(f"unknown {kind} {name!r}; registered {kind}s: {', '.join(self.names(kind))}")
        return self._entries[key]

    def names(self, kind: str) -> list[str]:
        _load_methods()
        prefix = f"{kind}:"
        return sorted(k[len(prefix) :] for k in self._entries if k.startswith(prefix))


REGISTRY = Registry()
register = REGISTRY.register
register("aggregator", "window")(WindowAggregator)

_METHOD_PACKAGES = ["methods"]


def _load_methods() -> None:
    """Import the method packages so they register themselves (the harness names no method)."""
    for package in _METHOD_PACKAGES:
        importlib.import_module(package)


def build_aggregator(config: Any, channels: int) -> TemporalAggregator:
    """Build the aggregator described by an ``AggregationConfig`` for ``channels``-channel features."""
    if config.aggregator == "window":
        alignment = REGISTRY.get("alignment", config.alignment)(channels=channels, **config.alignment_kwargs)
        fusion = REGISTRY.get("fusion", config.fusion)(channels=channels, **config.fusion_kwargs)
        return WindowAggregator(alignment, fusion)
    cls = REGISTRY.get("aggregator", config.aggregator)
    return cls(channels=channels, **config.aggregator_kwargs)


def masked_softmax(logits: Tensor, valid: Tensor, dim: int) -> Tensor:
    """Softmax over ``dim`` where ``valid`` (broadcastable) is False gets weight exactly 0."""
    logits = logits.masked_fill(~valid, torch.finfo(logits.dtype).min)
    return torch.softmax(logits, dim=dim)
