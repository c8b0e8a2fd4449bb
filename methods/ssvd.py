"""SSVD: two-stream single-shot video detection (Deng et al., IEEE TMM; Sec. III, IV-C, IV-D).

``aggregator:ssvd`` holds both streams of the paper on the shared stride-8 features:

* **motion** (Sec. III-B, Eq. 1-2): ``alignment:flow_warp`` (FlowNetC, ``flownet_weights`` = the flow
  net pretrained on SynthVID's ground-truth flow, shared with the STSN ablation) warps every support
  onto the reference; the stream averages them.
* **sampling** (Sec. III-C, Eq. 3): ``alignment:ssvd_sampling`` (``methods.ssvd_sampling``) resamples
  every support with a deformable conv whose offsets its offset predictor infers from (reference,
  support); the stream averages them, or (``learned_weights=True``, official code) weights them by
  ``softmax(relu(logit))`` over frames at every position.

and fuses them by one of the three schemes of Sec. IV-D (``fusion``):

* ``"late"`` (the paper's choice): two streams ``("motion", "sampling")``, one head each (both start
  from the phase-1 head: ``VideoDetector._spread_main_head``); the detector sums both heads' losses
  (Eq. 4: terms suffixed ``_motion`` / ``_sampling``) and at test time fuses the two heads' boxes by
  class-wise NMS at ``box_fusion_iou`` = 0.45. Both the paper ("accumulate all the predicted boxes
  from motion and sampling streams and then apply NMS 0.45 per class") and the official test code
  (``subnets/heads.py``: each stream's ``box_selector_test`` only thresholds and keeps the top 1000
  per level, its per-stream NMS is commented out in ``subnets/inference.py``; one class-wise NMS over
  the union follows) run **one** NMS over both streams' candidates: ``per_stream_nms=False``
  (default) does that; ``True`` runs each head's own NMS first (the harness's earlier behaviour).
* ``"early"``: the two aggregated maps are concatenated (B, 2C, H, W) and reduced back to C by a 1x1
  conv that starts as ``[I/2, I/2]`` (bias 0), i.e. the mean of the two streams, so the phase-1 head
  (C inputs, loaded strictly) applies; one head, stream ``"main"``. The paper feeds the 2C map to
  the subnets; keeping the head at C is this harness's deviation.
* ``"motion_guided"``: one stream ``"main"``: the sampling stream with ``flow_guidance=True`` (its
  deformable offsets = flow on the feature grid + predicted residual at every tap; see
  ``methods.ssvd_sampling``), the flow coming from this aggregator's flow net. Fig. 6 (1) draws the
  motion stream only as a guide ("motion estimation" -> "FA with motion-aware sampling") followed by
  one NMS, so there is no motion head: one stream, no late fusion.

Averaging (``include_reference``): Algorithm 1 (training) averages the two supports only (lines 14,
21: the reference is excluded); Eq. 2-3, Algorithm 2 (test) and the official test code include the
reference (motion: raw; sampling: resampled through the block with itself as support).
``"always"`` (default; ``True`` is an alias) includes it at training and test, ``"never"``
(``False``) at neither (a reference whose supports are all padded then falls back to itself),
``"eval"`` only in eval mode (Algorithms 1 + 2 exactly).

No supports (T = 0: phase 1, stills, Table V's n = 0 run with this model): every stream is the
reference features unchanged, as ``WindowAggregator`` does (no resampling, no early-fusion conv).

Supports: training as Algorithm 1 draws 2 supports at random within +-12 frames
(:data:`TRAIN_SUPPORT`); test as Algorithm 2 takes ``n`` supports from a 25-frame buffer centred on
the reference, padded at the video ends (:func:`ssvd_test_support`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from harness.aggregation import (
    AggregationOutput,
    TemporalAggregator,
    TemporalContext,
    masked_softmax,
    register,
)
from harness.config import SupportSpec
from harness.measure import scope
from methods._checks import check_channels
from methods.flow_warp import FlowWarpAlignment
from methods.ssvd_sampling import SSVDSamplingAlignment

FUSION_SCHEMES = ("late", "early", "motion_guided")
INCLUDE_REFERENCE = ("always", "eval", "never")

# Algorithm 1 / Sec. IV-C: two supports drawn at random within the aggregation range K = 12.
TRAIN_SUPPORT = SupportSpec("random_window", num=2, radius=12)

# Table V: the support counts the paper evaluates (n = 0 is a separate row: no supports).
TABLE5_SUPPORTS = (2, 4, 6, 12, 24)


def ssvd_test_support(n: int, buffer: int = 25) -> SupportSpec:
    """Algorithm 2's test-time supports: ``n`` of the ``buffer - 1`` other frames of a buffer centred
    on the reference, padded at both video ends.

    The official test code (``engine/seq_inference.py``, ``prepare_data``) takes the frames at
    ``+-interval * i``, ``i = 1 .. n // 2``, ``interval = (buffer - 1) // n``; that is exactly
    ``fixed_stride(num=n, stride=(buffer - 1) // n)`` with ``boundary="pad"`` (the official buffer is
    filled with copies of the first / last frame). It lives here, not in ``harness.data.sampling``,
    because it is SSVD's choice of parameters for a generic strategy.

    Differences from the official code, both refused or left out on purpose: it rounds an odd ``n``
    down to even silently (here: ``ValueError``); it shrinks the range to ``seq_len // 2`` for
    videos shorter than the buffer (here: the buffer is padded instead, as the paper says).

    Args:
        n: number of supports: 0 (no supports: ``SupportSpec()``) or an even number in
            ``[2, buffer - 1]`` (Table V: 2, 4, 6, 12, 24).
        buffer: frames in the buffer including the reference, odd (paper: 25 = 2K + 1, K = 12).
    """
    if buffer < 3 or buffer % 2 == 0:
        raise ValueError(
            f"ssvd_test_support: buffer must be odd and >= 3 (reference in the middle), got {buffer}"
        )
    if n == 0:
        return SupportSpec()
    if n < 0 or n > buffer - 1:
        raise ValueError(
            f"ssvd_test_support: n={n} supports do not fit a buffer of {buffer} frames "
            f"(at most {buffer - 1} other frames)"
        )
    if n % 2:
        raise ValueError(
            f"ssvd_test_support: n={n} must be even "
            "(supports at +-interval * i, symmetric about the reference)"
        )
    return SupportSpec("fixed_stride", num=n, stride=(buffer - 1) // n, boundary="pad")


def mean_over_frames(
    frames: Tensor, frame_valid: Tensor, logits: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Average ``frames`` (B, F, C, H, W) over its valid frames (``frame_valid`` (B, F) bool), uniformly
    or with ``softmax(logits)`` over the valid frames at each position (``logits`` (B, F, H, W)).

    Returns (fused (B, C, H, W), weights (B, F, H, W)). Invalid frames get weight exactly 0 and are
    never read; a row without any valid frame gets all-zero weights and a zero map (the caller
    substitutes its fallback).
    """
    b, f, _, h, w = frames.shape
    valid = frame_valid[:, :, None, None]  # (B, F, 1, 1)
    if logits is None:
        count = frame_valid.sum(dim=1).clamp_min(1).to(frames.dtype)  # (B,)
        weights = (frame_valid.to(frames.dtype) / count[:, None])[:, :, None, None].expand(b, f, h, w)
    else:
        weights = masked_softmax(logits, valid, dim=1) * valid  # (B, F, H, W); rows with no valid frame -> 0
    frames = torch.where(frame_valid[:, :, None, None, None], frames, torch.zeros_like(frames))
    return (frames * weights.unsqueeze(2)).sum(dim=1), weights  # (B, C, H, W), (B, F, H, W)


@register("aggregator", "ssvd")
class SSVDAggregator(TemporalAggregator):
    """SSVD's motion and sampling streams, fused late (two heads), early or by motion-guided sampling.

    Motion: flow warp + average; sampling: ``ssvd_sampling`` + average or learned weights; see the
    module docstring.

    Args:
        channels: C of the backbone features.
        fusion: ``"late"`` (default), ``"early"`` or ``"motion_guided"``.
        include_reference: ``"always"`` (default, ``True``), ``"eval"`` or ``"never"`` (``False``).
        learned_weights: the sampling stream fuses with learned per-position softmax weights
            (official code) instead of the plain average (Eq. 3).
        box_fusion_iou: class-wise NMS IoU of the late fusion (paper: 0.45).
        per_stream_nms: late fusion runs each head's own NMS before the joint NMS (default False:
            one NMS over both streams' candidates, as the paper and the official code).
        flow_source, flownet_weights, flownet_width, flownet_max_displacement: the flow estimator of
            the motion stream (``late``, ``early``) or of the guidance (``motion_guided``), as
            ``alignment:flow_warp``.
        hidden_channels, deformable_groups, identity_init: the sampling stream's (``ssvd_sampling``).

    ``forward(ctx)`` -> ``AggregationOutput(streams, aux)``: ``{"motion", "sampling"}`` (late) or
    ``{"main"}`` (early, motion_guided), each (B, C, H, W); aux ``"flow"`` (B, T, 2, H, W),
    ``"sampling_offsets"`` (B, T, 2 * G * 9, H, W), ``"<stream>_fusion_weights"`` (B, F, H, W) with
    F = 1 + T when the reference is averaged in (index 0), else T.
    """

    def __init__(
        self,
        channels: int,
        *,
        fusion: str = "late",
        include_reference: bool | Literal["always", "eval", "never"] = "always",
        learned_weights: bool = False,
        box_fusion_iou: float = 0.45,
        per_stream_nms: bool = False,
        flow_source: Literal["flownet", "farneback", "oracle"] = "flownet",
        flownet_weights: str | None = None,
        flownet_width: int = 16,
        flownet_max_displacement: int = 4,
        hidden_channels: int | None = None,
        deformable_groups: int = 4,
        identity_init: bool = True,
    ):
        super().__init__()
        if fusion not in FUSION_SCHEMES:
            raise ValueError(
                f"aggregator:ssvd: unknown fusion scheme {fusion!r}; known schemes: {FUSION_SCHEMES}"
            )
        if isinstance(include_reference, bool):
            include_reference = "always" if include_reference else "never"
        if include_reference not in INCLUDE_REFERENCE:
            raise ValueError(
                f"aggregator:ssvd: include_reference={include_reference!r}; expected one of "
                f"{INCLUDE_REFERENCE} (or True / False)"
            )
        if not 0.0 < box_fusion_iou <= 1.0:
            raise ValueError(f"aggregator:ssvd: box_fusion_iou must be in (0, 1], got {box_fusion_iou}")
        self.channels = channels
        self.fusion = fusion
        self.include_reference = include_reference
        self.learned_weights = learned_weights
        self.box_fusion_iou = box_fusion_iou
        self.per_stream_nms = per_stream_nms
        self.stream_names = ("motion", "sampling") if fusion == "late" else ("main",)
        flow_kwargs = dict(
            flow_source=flow_source,
            flownet_weights=flownet_weights,
            flownet_width=flownet_width,
            flownet_max_displacement=flownet_max_displacement,
        )
        self.motion: FlowWarpAlignment | None = None
        if fusion != "motion_guided":
            self.motion = FlowWarpAlignment(channels, **flow_kwargs)
        self.sampling = SSVDSamplingAlignment(
            channels,
            hidden_channels=hidden_channels,
            deformable_groups=deformable_groups,
            learned_weights=learned_weights,
            identity_init=identity_init,
            flow_guidance=fusion == "motion_guided",
            **(flow_kwargs if fusion == "motion_guided" else {}),
        )
        flow_part = self.motion if self.motion is not None else self.sampling.flow
        self.needs_images = flow_part.needs_images
        self.needs_oracle_flow = flow_part.needs_oracle_flow
        self.reduce: nn.Conv2d | None = None
        if fusion == "early":
            self.reduce = nn.Conv2d(2 * channels, channels, kernel_size=1)
            with torch.no_grad():  # [I/2, I/2]: the mean of the two streams at init
                eye = torch.eye(channels).view(channels, channels, 1, 1) / 2
                self.reduce.weight.copy_(torch.cat([eye, eye], dim=1))
                self.reduce.bias.zero_()

    def reference_included(self) -> bool:
        """Whether this call averages the reference in (``include_reference`` and train / eval mode)."""
        return self.include_reference == "always" or (self.include_reference == "eval" and not self.training)

    def _average(
        self,
        reference: Tensor,
        aligned: Tensor,
        valid: Tensor,
        *,
        with_reference: bool,
        logits: Tensor | None = None,
        reference_logits: Tensor | None = None,
        fallback: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """One stream's aggregate: ``aligned`` (B, T, C, H, W) and, ``with_reference``, ``reference``
        (B, C, H, W) in front; logits (B, T, 1, H, W) / (B, 1, H, W) for learned weights. A row with no
        valid frame returns ``fallback`` (B, C, H, W)."""
        frames, frame_valid = aligned, valid
        if with_reference:
            frames = torch.cat([reference.unsqueeze(1), aligned], dim=1)  # (B, 1 + T, C, H, W)
            frame_valid = torch.cat([valid.new_ones(valid.shape[0], 1), valid], dim=1)
        frame_logits = None
        if logits is not None:
            frame_logits = logits.squeeze(2)  # (B, T, H, W)
            if with_reference:
                frame_logits = torch.cat([reference_logits, frame_logits], dim=1)  # (B, 1 + T, H, W)
        fused, weights = mean_over_frames(frames, frame_valid, frame_logits)
        empty = ~frame_valid.any(dim=1)  # (B,)
        if empty.any():
            fused = torch.where(empty[:, None, None, None], fallback, fused)
        return fused, weights

    def forward(self, ctx: TemporalContext) -> AggregationOutput:
        ctx.validate()
        check_channels("reference", ctx.reference, self.channels, dim=1)
        check_channels("supports", ctx.supports, self.channels, dim=2)
        if ctx.num_supports == 0:  # the still-image path (phase 1, Table V's n = 0): features unchanged
            return AggregationOutput({name: ctx.reference for name in self.stream_names}, {})
        with_reference = self.reference_included()
        aux: dict[str, Tensor] = {}
        streams: dict[str, Tensor] = {}
        if self.motion is not None:
            with scope("motion_stream"):  # measured per part by harness.measure
                moved = self.motion(ctx)
                aux["flow"] = moved.aux["flow"]
                streams["motion"], aux["motion_fusion_weights"] = self._average(
                    ctx.reference,
                    moved.features,
                    ctx.valid,
                    with_reference=with_reference,
                    fallback=ctx.reference,
                )
        with scope("sampling_stream"):
            sampled = self.sampling.align(ctx, with_reference=with_reference)
            aux["sampling_offsets"] = sampled.offsets
            if sampled.flow is not None:
                aux["flow"] = sampled.flow
            streams["sampling"], aux["sampling_fusion_weights"] = self._average(
                sampled.reference,
                sampled.features,
                ctx.valid,
                with_reference=with_reference,
                logits=sampled.logits,
                reference_logits=sampled.reference_logits,
                fallback=ctx.reference,
            )
        if self.fusion == "late":
            return AggregationOutput(streams, aux)
        if self.fusion == "early":
            if self.reduce is None:
                raise RuntimeError("early fusion needs its reduction conv; it was not built")
            with scope("fusion"):
                # (B, C, H, W) x 2 -> (B, 2C, H, W) -> (B, C, H, W)
                fused = self.reduce(torch.cat([streams["motion"], streams["sampling"]], dim=1))
            return AggregationOutput({"main": fused}, aux)
        return AggregationOutput({"main": streams["sampling"]}, aux)
