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
    reference_image  (B, 3, Hi, Wi)    uint8 RGB pixels as the data pipeline loads them (or None);
    support_images   (B, T, 3, Hi, Wi) each consumer normalises them itself
    oracle_flow      (B, T, 2, Hi, Wi) ground-truth displacement (dx, dy) in image pixels: the
                                       reference pixel p is found at p + flow in the support frame
    support_values   (B, T, C', H, W)  what an alignment moves, when it is not ``supports`` (or None)

Four kinds of parts, all registered in :data:`REGISTRY` under ``"<kind>:<name>"``:

* ``alignment``: ``forward(ctx) -> AlignmentOutput(features (B, T, C', H, W), aux)``. Compares the
  reference with each support and moves the support's values (``ctx.support_values``, or
  ``ctx.supports`` when None, so C' = C) onto the reference grid. Only a part that declares
  ``moves_values = True`` accepts other values than the features it compares.
* ``fusion``: ``forward(reference (B, C, H, W), aligned (B, T, C, H, W), valid (B, T)) ->
  FusionOutput(features (B, C, H, W), weights (B, 1 + T, H, W) | None)``. The reference is its own
  support: weight index 0 belongs to it.
* ``aggregator``: ``forward(ctx) -> AggregationOutput``. The thing the detector holds.
  :class:`WindowAggregator` (``"aggregator:window"``) composes an alignment and a fusion; a method
  that is not such a composition registers its own ``"aggregator:<name>"``. A
  :class:`StreamAggregator` (``mode = "stream"``, LSTS) is fed the frames of each video in order
  instead: see "Stream mode" below.
* ``proposal``: a :class:`ProposalPart` for a proposal-level head (``model.head.kind = "sparse"``):
  it does not change the feature map but runs inside every stage of the sparse head. A part of site
  ``"roi"`` enriches the target RoI features from the supports' feature maps, ``forward(target_roi (N,
  D, S, S), support_maps (B, T, D, H, W), support_valid (B, T), roi_image (N,)) -> (N, D, S, S)``; a
  part of site ``"proposal"`` enriches the target proposal features from the supports' proposal
  features of the same stage, ``forward(target (B, P, D), supports (B, T, P, D), support_valid (B, T))
  -> (B, P, D)``. :class:`ProposalLevelAggregator` (``"aggregator:proposal_level"``) builds them by
  name, passes the reference map through unchanged and hands the supports and the parts to the head
  (``AggregationOutput.proposal``).

Stream mode (``StreamAggregator``; engine ``harness.infer.predict_stream_videos``)
    Each call of ``step(frame, states)`` gets one frame of each of B videos (``StreamFrame``) and the
    videos' states (one object per video, made by ``init_state()`` when a video starts: a new video
    never sees another's state). The method decides which frames are keyframes from each video's
    own frame position (``is_keyframe(position)``), so videos batched together never drift out of
    step; the engine then computes the full backbone only for the keyframe rows:

    low        (B, Cl, Hl, Wl)   ``backbone.forward_low`` of every frame (Hl = S/4 here)
    keyframe   (B,) bool         which rows are keyframes
    high       (R, C, H, W)      ``backbone.forward_high(low[keyframe])``, R = keyframe.sum()
    frame_ids  (B,) int64        frame ids (offsets between frames are differences of these)
    images     (B, 3, Hi, Wi)    uint8 frames, when the method declares ``needs_images``

    Training feeds a clip (``StreamClip``: keyframes with full features, then the current frame with
    low features only, loss on the current frame) through the same ``step``:
    :meth:`StreamAggregator.forward_clip`.

Parts register with :func:`register` when their module is imported. The registry imports the
modules named by the ``vodbench.methods`` entry-point group (``pyproject.toml``: the builtin
``methods`` package) the first time it is asked for a name, so another installed package registers
its own parts by declaring the same group.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

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
    support_values: Tensor | None = None

    @property
    def num_supports(self) -> int:
        return int(self.supports.shape[1])

    @property
    def values(self) -> Tensor:
        """What an alignment moves: ``support_values`` (B, T, C', H, W), or ``supports`` when None."""
        return self.supports if self.support_values is None else self.support_values

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
        if self.support_values is not None and (
            self.support_values.dim() != 5
            or tuple(self.support_values.shape[:2]) != (b, t)
            or tuple(self.support_values.shape[-2:]) != (h, w)
        ):
            raise ValueError(
                f"support_values must be (B={b}, T={t}, C', H={h}, W={w}), "
                f"got {tuple(self.support_values.shape)}"
            )


@dataclass
class AlignmentOutput:
    features: Tensor  # (B, T, C', H, W) the moved values (ctx.values) on the reference grid
    aux: dict[str, Tensor] = field(default_factory=dict)  # e.g. "sampling_offsets", "flow"
    # (B, C, H, W): the reference passed through the same alignment (STSN's g_{t,t}); the fusion then
    # uses it in place of the raw reference. None = the reference is used unchanged.
    reference: Tensor | None = None


@dataclass
class FusionOutput:
    features: Tensor  # (B, C, H, W)
    weights: Tensor | None = None  # (B, 1 + T, H, W), index 0 = reference


@dataclass
class ProposalContext:
    """What a proposal-level head reads besides the reference map: the supports' backbone maps and
    the proposal-level parts, in the order they run at their site (``ProposalPart.site``)."""

    support_features: Tensor  # (B, T, C, H, W)
    valid: Tensor  # (B, T) bool
    parts: list[ProposalPart]

    def at(self, site: str) -> list[ProposalPart]:
        return [part for part in self.parts if part.site == site]


@dataclass
class AggregationOutput:
    streams: dict[str, Tensor]  # stream name -> (B, C, H, W); one head per stream
    aux: dict[str, Tensor] = field(default_factory=dict)
    # for a proposal-level head (sparse): the supports and the parts it runs in its stages
    proposal: ProposalContext | None = None

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
    """Brings support values onto the reference grid: ``forward(ctx) -> AlignmentOutput``.

    The part compares ``ctx.reference`` with ``ctx.supports`` (or their images, or reads the oracle
    flow) and applies the resulting spatial transform to ``ctx.values``, channel by channel: the
    supports themselves, or ``ctx.support_values`` (B, T, C', H, W) when given (a memory that other
    features are matched for). A part whose transform is tied to the features it compares (STSN's
    C -> C deformable convolution) keeps ``moves_values = False``: :meth:`values_to_move` then rejects
    support values.
    """

    needs_images: ClassVar[bool] = False  # the detector must fill ctx.*_image
    needs_oracle_flow: ClassVar[bool] = False  # the data pipeline must load ground-truth flow
    moves_values: ClassVar[bool] = False  # can move ctx.support_values other than the supports

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def values_to_move(self, ctx: TemporalContext) -> Tensor:
        """``ctx.values`` (B, T, C', H, W); ``ValueError`` naming this part when it cannot move them."""
        if ctx.support_values is not None and not self.moves_values:
            raise ValueError(
                f"{type(self).__name__} cannot move ctx.support_values (moves_values=False): its "
                "transform only applies to the supports it compares; pass support_values=None"
            )
        return ctx.values

    def forward(self, ctx: TemporalContext) -> AlignmentOutput:  # pragma: no cover - interface
        raise NotImplementedError


class Fusion(nn.Module):
    """Combines reference and aligned supports: ``forward(reference, aligned, valid) -> FusionOutput``."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, reference: Tensor, aligned: Tensor, valid: Tensor) -> FusionOutput:  # pragma: no cover
        raise NotImplementedError


class ProposalPart(nn.Module):
    """A proposal-level part (kind ``proposal``) run inside each stage of a sparse head; ``site``
    says where: ``"roi"`` (on the target's RoI features, with the supports' feature maps) or
    ``"proposal"`` (on the target's proposal features, with the supports' proposal features). The
    first constructor argument is ``dim``, the head's feature width. With no valid support a part must
    return its input unchanged (a model at T = 0 is then the single-frame detector)."""

    site: ClassVar[str] = "proposal"
    SITES: ClassVar[tuple[str, ...]] = ("roi", "proposal")


class TemporalAggregator(nn.Module):
    """What the detector holds between backbone and head."""

    # "window": one forward(ctx) per batch of references (harness.infer.predict_window_videos);
    # "stream": frames of each video fed in order with per-video state (StreamAggregator).
    mode: ClassVar[str] = "window"
    stream_names: tuple[str, ...] = ("main",)
    box_fusion_iou: float = 0.5  # late fusion NMS IoU when there are several streams
    # late fusion: each head's own NMS before the joint NMS (True), or one NMS over every head's
    # thresholded top-k candidates (False: SSVD's paper and official code)
    per_stream_nms: bool = True
    needs_images: bool = False
    needs_oracle_flow: bool = False
    # phase 2 keeps the heads at their fresh init instead of loading phase 1's (STMN's FreshFC row)
    fresh_heads: bool = False

    def forward(self, ctx: TemporalContext) -> AggregationOutput:  # pragma: no cover - interface
        raise NotImplementedError


class WindowAggregator(TemporalAggregator):
    """Alignment followed by fusion over a window of support frames.

    The fusion sees the moved values and, as reference, the alignment's aligned reference when it
    returns one (STSN's g_{t,t}), else ``ctx.reference``. With ``ctx.support_values`` given the
    fusion always sees ``ctx.reference``: an aligned reference is a resampled *compared* feature,
    while the supports it would be fused with are moved *values*; the values must then have the
    reference's C channels.
    """

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
        if aligned.features.shape != ctx.values.shape:
            raise RuntimeError(
                f"alignment {type(self.alignment).__name__} returned {tuple(aligned.features.shape)}, "
                f"expected {tuple(ctx.values.shape)}"
            )
        use_aligned_reference = aligned.reference is not None and ctx.support_values is None
        reference = aligned.reference if use_aligned_reference else ctx.reference
        with scope("fusion"):
            fused = self.fusion(reference, aligned.features, ctx.valid)
        aux = dict(aligned.aux)
        if fused.weights is not None:
            aux["fusion_weights"] = fused.weights
        return AggregationOutput({"main": fused.features}, aux)


# ---------------------------------------------------------------------------------------------
# Stream mode
# ---------------------------------------------------------------------------------------------

DEFAULT_KEYFRAME_INTERVAL = 10  # LSTS, DFF, FGFA's keyframe interval on ImageNet VID


@dataclass
class StreamFrame:
    """One frame of each of B videos, as a stream aggregator's ``step`` sees it.

    Attributes:
        low: (B, Cl, Hl, Wl) low-level features (``backbone.forward_low``) of every frame.
        keyframe: (B,) bool, the rows the method called keyframes (``is_keyframe``).
        high: (R, C, H, W) full features (``backbone.forward_high(low[keyframe])``) of the keyframe
            rows in row order, R = ``keyframe.sum()``; non-keyframes never get them.
        frame_ids: (B,) int64 frame ids: the frame offset between two frames of a video is the
            difference of their ids (ids may skip frames, as the window engine's offsets do).
        images: (B, 3, Hi, Wi) uint8 frames when the aggregator declares ``needs_images``, else None.
        feature_stride: image pixels per cell of ``high`` (Hi / H).
    """

    low: Tensor
    keyframe: Tensor
    high: Tensor
    frame_ids: Tensor
    images: Tensor | None = None
    feature_stride: int = 8

    @property
    def batch_size(self) -> int:
        return int(self.low.shape[0])

    @property
    def key_rows(self) -> Tensor:
        """(R,) int64 row indices of the keyframes (``high[i]`` belongs to row ``key_rows[i]``)."""
        return self.keyframe.nonzero().flatten()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field whose shape disagrees with ``low``."""
        if self.low.dim() != 4:
            raise ValueError(f"low must be (B, Cl, Hl, Wl), got {tuple(self.low.shape)}")
        b = self.batch_size
        if tuple(self.keyframe.shape) != (b,) or self.keyframe.dtype != torch.bool:
            raise ValueError(
                f"keyframe must be a (B={b},) bool tensor, got {self.keyframe.dtype} "
                f"{tuple(self.keyframe.shape)}"
            )
        r = int(self.keyframe.sum())
        if self.high.dim() != 4 or self.high.shape[0] != r:
            raise ValueError(f"high must be (R={r} keyframes, C, H, W), got {tuple(self.high.shape)}")
        if tuple(self.frame_ids.shape) != (b,):
            raise ValueError(f"frame_ids must be (B={b},), got {tuple(self.frame_ids.shape)}")
        if self.images is not None and (self.images.dim() != 4 or self.images.shape[0] != b):
            raise ValueError(f"images must be (B={b}, 3, Hi, Wi), got {tuple(self.images.shape)}")


@dataclass
class StreamClip:
    """A batch of training clips for a stream method: T keyframes, then the current frame.

    The keyframes are fed in order (row by row, only where ``valid``) as keyframes with full
    features, then the current frame as a non-keyframe with low-level features only; the loss is
    taken on the current frame. Where the last valid keyframe *is* the current frame (offset 0),
    the current frame is a keyframe and its output is that keyframe's (LSTS's official training
    does the same with its ``eq_flag_key2cur``).

    Attributes:
        key_low: (B, T, Cl, Hl, Wl) low-level features of the keyframes.
        key_high: (B, T, C, H, W) their full features.
        key_offsets: (B, T) int64 keyframe frame id minus the current frame's (the current frame has
            id 0 in the steps).
        valid: (B, T) bool, False for padded slots.
        current_low: (B, Cl, Hl, Wl) low-level features of the current frame.
        key_images: (B, T, 3, Hi, Wi) / current_image: (B, 3, Hi, Wi) uint8, or None.
    """

    key_low: Tensor
    key_high: Tensor
    key_offsets: Tensor
    valid: Tensor
    current_low: Tensor
    key_images: Tensor | None = None
    current_image: Tensor | None = None
    feature_stride: int = 8

    def validate(self) -> None:
        b, t = self.key_high.shape[:2]
        if self.key_high.dim() != 5:
            raise ValueError(f"key_high must be (B, T, C, H, W), got {tuple(self.key_high.shape)}")
        if self.key_low.dim() != 5 or tuple(self.key_low.shape[:2]) != (b, t):
            raise ValueError(f"key_low must be (B={b}, T={t}, Cl, Hl, Wl), got {tuple(self.key_low.shape)}")
        for name in ("key_offsets", "valid"):
            if tuple(getattr(self, name).shape) != (b, t):
                raise ValueError(f"{name} must be (B={b}, T={t}), got {tuple(getattr(self, name).shape)}")
        if tuple(self.current_low.shape) != (b, *self.key_low.shape[2:]):
            raise ValueError(
                f"current_low must be (B={b}, {', '.join(map(str, self.key_low.shape[2:]))}), "
                f"got {tuple(self.current_low.shape)}"
            )
        if (self.key_images is None) != (self.current_image is None):
            raise ValueError("key_images and current_image must be given together")
        if not bool(self.valid.any(dim=1).all()):
            rows = (~self.valid.any(dim=1)).nonzero().flatten().tolist()
            raise ValueError(f"rows {rows} have no valid keyframe: a stream starts at a keyframe")


class StreamAggregator(TemporalAggregator):
    """A method fed the frames of each video in order, with per-video state (see the module docstring).

    Subclasses implement :meth:`step` (and :meth:`init_state` when a dict is not what they keep);
    :meth:`is_keyframe` picks every ``keyframe_interval``-th frame of each video, starting with its
    first (LSTS's official online test loader, ``lsts_rfcn/core/loader.py``
    ``TestLoader_Impression_Online``: frames 0, 10, 20, ... of every video).
    """

    mode: ClassVar[str] = "stream"

    def __init__(self, *, keyframe_interval: int = DEFAULT_KEYFRAME_INTERVAL):
        super().__init__()
        if (
            isinstance(keyframe_interval, bool)
            or not isinstance(keyframe_interval, int)
            or keyframe_interval < 1
        ):
            raise ValueError(f"keyframe_interval must be an int >= 1, got {keyframe_interval!r}")
        self.keyframe_interval = keyframe_interval

    def is_keyframe(self, position: int) -> bool:
        """Whether frame ``position`` (0-based index in its video) gets full backbone features."""
        return position % self.keyframe_interval == 0

    def init_state(self) -> Any:
        """The state of a video before its first frame (one per video; never shared)."""
        return {}

    def step(self, frame: StreamFrame, states: list[Any]) -> AggregationOutput:  # pragma: no cover
        """Features of one frame of each of B videos: ``AggregationOutput`` streams (B, C, H, W).

        ``states[i]`` is video i's state; the method updates it in place or assigns a new object
        to ``states[i]``.
        """
        raise NotImplementedError

    def forward(self, ctx: TemporalContext) -> AggregationOutput:
        raise TypeError(
            f"{type(self).__name__} is a stream aggregator: it is run frame by frame with step() "
            "(harness.infer.predict_stream_videos) and trained with forward_clip(), not forward(ctx)"
        )

    def forward_clip(self, clip: StreamClip) -> AggregationOutput:
        """The training path: ``clip``'s keyframes then its current frame through :meth:`step`.

        Returns the current frames' streams (B, C, H, W); ``aux`` is the current-frame step's when
        every current frame was a non-keyframe, else empty.
        """
        clip.validate()
        b, t = clip.valid.shape
        states = [self.init_state() for _ in range(b)]
        with_images = clip.key_images is not None
        outputs: dict[str, Tensor] = {}
        current_is_key = torch.zeros(b, dtype=torch.bool, device=clip.valid.device)

        def run(rows: Tensor, frame: StreamFrame) -> AggregationOutput:
            sub_states = [states[i] for i in rows.tolist()]
            out = self.step(frame, sub_states)
            for i, state in zip(rows.tolist(), sub_states, strict=True):
                states[i] = state
            for name, value in out.streams.items():
                base = outputs.get(name, value.new_zeros((b, *value.shape[1:])))
                outputs[name] = base.index_copy(0, rows, value)  # out of place: gradients flow
            return out

        for slot in range(t):
            rows = clip.valid[:, slot].nonzero().flatten()
            if not len(rows):
                continue
            frame = StreamFrame(
                low=clip.key_low[rows, slot],
                keyframe=torch.ones(len(rows), dtype=torch.bool, device=rows.device),
                high=clip.key_high[rows, slot],
                frame_ids=clip.key_offsets[rows, slot],
                images=clip.key_images[rows, slot] if with_images else None,
                feature_stride=clip.feature_stride,
            )
            run(rows, frame)
            current_is_key[rows] = clip.key_offsets[rows, slot] == 0
        rows = (~current_is_key).nonzero().flatten()
        aux: dict[str, Tensor] = {}
        if len(rows):
            frame = StreamFrame(
                low=clip.current_low[rows],
                keyframe=torch.zeros(len(rows), dtype=torch.bool, device=rows.device),
                high=clip.key_high.new_zeros((0, *clip.key_high.shape[2:])),
                frame_ids=torch.zeros(len(rows), dtype=torch.int64, device=rows.device),
                images=clip.current_image[rows] if with_images else None,
                feature_stride=clip.feature_stride,
            )
            out = run(rows, frame)
            if len(rows) == b:
                aux = dict(out.aux)
        return AggregationOutput(outputs, aux)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


ENTRY_POINT_GROUP = "vodbench.methods"


class PartInfo(NamedTuple):
    """What :meth:`Registry.describe` says about one registered part."""

    kind: str  # "alignment", "fusion", "aggregator" or "proposal"
    name: str
    qualname: str  # "module.Class"
    kwargs: dict[str, Any]  # constructor argument -> default (``inspect.Parameter.empty``: required)
    summary: str  # first line of the class docstring ("" without one)


class Registry:
    """Name -> class, with an error on duplicates and on unknown names (listing the known ones).

    The project's only registry. Keys are ``"<kind>:<name>"`` with kind in
    ``alignment``/``fusion``/``aggregator``/``proposal``, so one mapping serves every slot. With
    ``entry_point_group`` set, the modules that group names are imported once, on the first
    :meth:`get`/:meth:`names`/:meth:`describe`, and register their parts as they import.
    """

    KINDS = ("alignment", "fusion", "aggregator", "proposal")

    def __init__(self, *, entry_point_group: str | None = None) -> None:
        self._entries: dict[str, type[nn.Module]] = {}
        self.entry_point_group = entry_point_group
        self._plugins_loaded = entry_point_group is None

    def register(self, kind: str, name: str) -> Callable[[type], type]:
        if kind not in self.KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {self.KINDS}")

        def decorator(cls: type) -> type:
            key = f"{kind}:{name}"
            if key in self._entries and self._entries[key] is not cls:
                raise KeyError(f"{key!r} is already registered to {self._entries[key].__qualname__}")
            self._entries[key] = cls
            return cls

        return decorator

    def load_plugins(self) -> None:
        """Import every module of the entry-point group (once); a module registers its parts on import."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # set first: a plugin's own import may already ask for names
        for entry_point in importlib.metadata.entry_points(group=self.entry_point_group):
            try:
                entry_point.load()
            except Exception as error:
                self._plugins_loaded = False
                raise ImportError(
                    f"entry point {entry_point.name!r} = {entry_point.value!r} of group "
                    f"{self.entry_point_group!r} failed to import: {error}"
                ) from error

    def get(self, kind: str, name: str) -> type[nn.Module]:
        self.load_plugins()
        key = f"{kind}:{name}"
        if key not in self._entries:
            raise KeyError(f"unknown {kind} {name!r}; registered {kind}s: {', '.join(self.names(kind))}")
        return self._entries[key]

    def names(self, kind: str) -> list[str]:
        self.load_plugins()
        prefix = f"{kind}:"
        return sorted(k[len(prefix) :] for k in self._entries if k.startswith(prefix))

    def describe(self) -> list[PartInfo]:
        """Every registered part, sorted by kind then name, with its constructor's arguments."""
        self.load_plugins()
        infos = []
        for key, cls in self._entries.items():
            kind, name = key.split(":", 1)
            parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
            kwargs = {
                p.name: p.default for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            }
            summary = inspect.cleandoc(cls.__doc__).splitlines()[0] if cls.__doc__ else ""
            infos.append(PartInfo(kind, name, f"{cls.__module__}.{cls.__qualname__}", kwargs, summary))
        return sorted(infos, key=lambda info: (self.KINDS.index(info.kind), info.name))


REGISTRY = Registry(entry_point_group=ENTRY_POINT_GROUP)
register = REGISTRY.register
register("aggregator", "window")(WindowAggregator)


@register("aggregator", "proposal_level")
class ProposalLevelAggregator(TemporalAggregator):
    """Aggregation at the proposal level, inside a sparse head: the reference map goes to the head
    unchanged, with the supports' maps and the proposal-level parts named in ``parts``
    (``{name: kwargs}`` of registered ``proposal`` parts, built with ``dim``; run in the given order
    at their site). The parts live here, under ``aggregator.*``, so a phase-1 checkpoint (no parts)
    loads into the phase-2 model as for every other method.

    Args:
        channels: backbone channels.
        parts: proposal parts by registry name, e.g. ``{"tfe": {"mode": "avg"}, "spfa": {}}``; empty
            = the single-frame sparse detector (supports are passed but nothing reads them).
        dim: the sparse head's feature width (``model.head.sparse.dim``); default ``channels``. The head
            checks that the two agree.
    """

    def __init__(self, channels: int, parts: dict[str, dict[str, Any]] | None = None, dim: int | None = None):
        super().__init__()
        self.dim = channels if dim is None else dim
        built = []
        for name, kwargs in (parts or {}).items():
            part = REGISTRY.get("proposal", name)(self.dim, **(kwargs or {}))
            if getattr(part, "site", None) not in ProposalPart.SITES:
                raise ValueError(
                    f"proposal part {name!r} has site {getattr(part, 'site', None)!r}; expected one of "
                    f"{ProposalPart.SITES}"
                )
            built.append(part)
        self.parts = nn.ModuleList(built)

    def forward(self, ctx: TemporalContext) -> AggregationOutput:
        ctx.validate()
        context = ProposalContext(ctx.supports, ctx.valid, list(self.parts))
        return AggregationOutput({"main": ctx.reference}, {}, proposal=context)


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
