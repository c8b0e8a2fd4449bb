"""SSVD's sampling stream: feature aggregation with self-guided sampling (Deng et al., Sec. III-C).

For each (reference ``g_t``, support ``g_{t+k}``) pair a small "U-Net"-like offset predictor reads
their concatenation and predicts the offsets of one 3x3 deformable convolution with 4 deformable
(offset) groups, which resamples the support onto the reference grid (Eq. 3 then averages):

    x  = concat(g_t, g_{t+k})                                   (N, 2C, H, W)
    c1 = conv1(x)               3x3, stride 1                   (N, w1, H, W)
    c2 = conv2(c1)              3x3, stride 2                   (N, w2, H/2, W/2)
    c3 = conv3(c2)              3x3, stride 2                   (N, w3, H/4, W/4)
    u  = relu(concat(c1, up(c2), up(c3)))                       (N, w1 + w2 + w3, H, W), nearest
    l  = relu(lateral(u))       3x3                             (N, lateral, H, W)
    o  = pred(l)                3x3 -> 2 * 9 * 4 = 72 channels (+1 weight logit, see below)
    g_{t+k -> t} = deform_conv(g_{t+k}, o)                      3x3, 4 offset groups, no bias

Where the paper leaves it open, this follows the official test code (``ddjiajun/SSVD``,
``sample_stream/sample_module_v1.py``), whose layout is the one above: conv1 keeps the scale, conv2
and conv3 halve it, all three without bias and **without a nonlinearity between them** (a ReLU only
after the concatenation), nearest upsampling, one 3x3 "lateral" conv + ReLU, then the 3x3 predictor;
the deformable conv has no bias. The official P5/P6 levels replace the strides by dilation 2; the
harness has one stride-8 level and uses the strides.

Widths: official 512 -> 256 -> 128 -> 128, concat 512 -> lateral 256 (FPN width C = 256). Scaled by
C / 256 to this detector's features: ``hidden_channels`` = w1 = lateral (default C, 64 on the
harness's 64-channel stride-8 map), w2 = w3 = ``hidden_channels // 2``.

Learned weights (``learned_weights=True``): the official predictor has **73** output channels,
72 offsets plus one per-position weight logit per pair; the stream then fuses its frames with
``softmax(relu(logit))`` over the frames (at each position) instead of Eq. 3's plain average. This
part returns the logits in ``aux["sampling_weight_logits"]`` (B, T, 1, H, W) and the reference's own
logit with the resampled reference (:meth:`SSVDSamplingAlignment.align`); a ``Fusion``
cannot see aux (``forward(reference, aligned, valid)``), so the weighting is applied by
``aggregator:ssvd`` (``methods.ssvd``), which owns this part. Inside a window aggregator the logits
are ignored (plain fusion).

Initialisation (the harness's choices; the official code uses Kaiming init everywhere, so its
offsets start random):

* the predictor's last conv starts at zero weight and bias on the offset channels, so at init the
  deformable conv samples the regular 3x3 grid, i.e. it *is* an ordinary 3x3 convolution;
* the weight-logit channel starts at zero weight and bias 1: every frame gets logit relu(1) = 1,
  i.e. uniform weights (the plain average) at init, while the ReLU still passes a gradient (a zero
  bias would sit at ReLU's kink, where PyTorch's gradient is 0, and the channel would never learn);
* ``identity_init=True`` (default, as ``alignment:stsn``) starts the deformable conv as the identity
  (centre tap = identity matrix), so at init the stream returns the support features unchanged and
  phase 2 starts from the phase-1 head on unaligned features. ``False`` keeps PyTorch's conv init.
* While the offset channels are exactly zero the layers before them get no gradient (their output
  only feeds zero weights); the first optimiser step on ``pred`` unblocks them.

Motion-guided sampling (``flow_guidance=True``, Sec. IV-D scheme 1, Fig. 6 (1)); the paper only
says the flow is "integrated into the sampling stream for sampling coordinates prediction". Here:
a :class:`methods.flow_warp.FlowWarpAlignment` estimates the flow reference -> support on the images
(FlowNetC by default, optionally pretrained: ``flownet_weights``) and brings it to the feature grid
with :func:`methods.flow_warp.flow_to_grid` (area-averaged, divided by the stride), ``(dx, dy)`` in
feature cells. Then

    warped = flow_warp(g_{t+k}, flow)                              the support moved along the flow
    o      = pred(... concat(g_t, warped) ...)                     the predictor sees the warped support
    offset = o + flow, added to every tap of every offset group:   dy to channel 2 * (g * 9 + k),
                                                                   dx to channel 2 * (g * 9 + k) + 1
    g_{t+k -> t} = deform_conv(g_{t+k}, offset)                     the RAW support is resampled

so the predicted offsets are a residual around the flow-displaced 3x3 grid, and at init (zero
residual, identity conv) the stream equals the flow-warped support (bilinear, zeros outside the
map), i.e. the motion stream's alignment. The flow net is trained through both paths.

Offsets follow torchvision's layout (``ops.deform_conv``): ``2 * groups * 3 * 3`` channels ordered
``(group, tap row, tap column, (dy, dx))``, in feature cells, relative to the regular tap positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.aggregation import Alignment, AlignmentOutput, TemporalContext, register
from methods._checks import check_channels
from methods.flow_warp import FlowWarpAlignment, flow_to_grid
from ops.deform_conv import DeformConv2d
from ops.flow_warp import flow_warp

KERNEL = 3
TAPS = KERNEL * KERNEL


@dataclass
class SampledSupports:
    """What :meth:`SSVDSamplingAlignment.align` returns (B references, T supports)."""

    features: Tensor  # (B, T, C, H, W) supports resampled onto the reference grid
    offsets: Tensor  # (B, T, 2 * G * 9, H, W) the deformable conv's offsets (flow included)
    logits: Tensor | None  # (B, T, 1, H, W) relu'd frame-weight logits (learned_weights) or None
    flow: Tensor | None  # (B, T, 2, H, W) (dx, dy) in feature cells (flow_guidance) or None
    reference: Tensor | None  # (B, C, H, W) the reference resampled with itself, or None
    reference_logits: Tensor | None  # (B, 1, H, W) its logit (learned_weights), or None


class SSVDOffsetPredictor(nn.Module):
    """The offset predictor ``N_off``: ``forward(pair (N, 2C, H, W)) -> (N, 2 * G * 9 [+ 1], H, W)``.

    Args:
        in_channels: channels of the concatenated pair (2C).
        hidden_channels: w1 (first group) and the lateral conv's width; w2 = w3 = ``hidden // 2``.
        deformable_groups: G, offset groups of the deformable conv the offsets are for.
        weight_channel: predict one more channel, the per-position frame-weight logit (last).
    """

    def __init__(
        self, in_channels: int, hidden_channels: int, *, deformable_groups: int, weight_channel: bool
    ):
        super().__init__()
        if hidden_channels < 2:
            raise ValueError(f"hidden_channels must be >= 2 (w2 = w3 = hidden // 2), got {hidden_channels}")
        w1, w2 = hidden_channels, hidden_channels // 2
        self.num_offsets = 2 * deformable_groups * TAPS
        self.weight_channel = weight_channel
        self.conv1 = nn.Conv2d(in_channels, w1, KERNEL, stride=1, padding=1, bias=False)
        self.conv2 = nn.Conv2d(w1, w2, KERNEL, stride=2, padding=1, bias=False)
        self.conv3 = nn.Conv2d(w2, w2, KERNEL, stride=2, padding=1, bias=False)
        self.lateral = nn.Conv2d(w1 + 2 * w2, hidden_channels, KERNEL, padding=1)
        self.pred = nn.Conv2d(hidden_channels, self.num_offsets + int(weight_channel), KERNEL, padding=1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Kaiming-uniform (a=1, as the official code) for the hidden convs; the predictor as documented
        in the module docstring (zero offsets, weight logit bias 1)."""
        for conv in (self.conv1, self.conv2, self.conv3, self.lateral):
            nn.init.kaiming_uniform_(conv.weight, a=1)
        nn.init.zeros_(self.lateral.bias)
        nn.init.zeros_(self.pred.weight)
        nn.init.zeros_(self.pred.bias)
        if self.weight_channel:
            self.pred.bias[-1] = 1.0

    def forward(self, pair: Tensor) -> Tensor:
        c1 = self.conv1(pair)  # (N, w1, H, W)
        c2 = self.conv2(c1)  # (N, w2, ceil(H/2), ceil(W/2))
        c3 = self.conv3(c2)  # (N, w2, ceil(H/4), ceil(W/4))
        size = tuple(c1.shape[-2:])
        # nearest upsampling back to (H, W): the official scale_factor 2 / 4 when H, W divide by 4
        upsampled = [F.interpolate(c, size=size, mode="nearest") for c in (c2, c3)]
        features = F.relu(torch.cat([c1, *upsampled], dim=1))  # (N, w1 + 2 * w2, H, W)
        return self.pred(F.relu(self.lateral(features)))  # (N, 2 * G * 9 [+ 1], H, W)


@register("alignment", "ssvd_sampling")
class SSVDSamplingAlignment(Alignment):
    """SSVD's self-guided sampling: offset predictor + 3x3 deformable conv with 4 offset groups.

    Args:
        channels: C of the backbone features (divisible by ``deformable_groups``).
        hidden_channels: offset-predictor width (default ``channels``; see the module docstring).
        deformable_groups: offset groups of the deformable conv (paper and code: 4).
        learned_weights: predict the official code's extra per-position frame-weight logit.
        identity_init: start the deformable conv as the identity (default) instead of PyTorch's conv init.
        resample_reference: also pass the reference through the block with itself as the support
            (Eq. 3's tau = 0 term; the official test code does so), returned as
            ``AlignmentOutput.reference``.
        flow_guidance: motion-guided sampling (module docstring): offsets = flow + predicted residual.
        flow_source, flownet_weights, flownet_width, flownet_max_displacement: the flow estimator of
            ``flow_guidance`` (see ``alignment:flow_warp``); only with ``flow_guidance=True``.

    Cannot move ``ctx.support_values`` (``moves_values = False``): the deformable conv has C -> C
    weights.

    ``forward(ctx)`` -> ``AlignmentOutput(features (B, T, C, H, W), aux, reference (B, C, H, W) |
    None)`` with ``aux["sampling_offsets"]`` (B, T, 2 * G * 9, H, W) (the deformable conv's offsets,
    flow included), ``aux["sampling_weight_logits"]`` (B, T, 1, H, W) with ``learned_weights`` and
    ``aux["flow"]`` (B, T, 2, H, W) with ``flow_guidance``.
    """

    moves_values = False

    def __init__(
        self,
        channels: int,
        *,
        hidden_channels: int | None = None,
        deformable_groups: int = 4,
        learned_weights: bool = False,
        identity_init: bool = True,
        resample_reference: bool = True,
        flow_guidance: bool = False,
        flow_source: Literal["flownet", "farneback", "oracle"] = "flownet",
        flownet_weights: str | None = None,
        flownet_width: int = 16,
        flownet_max_displacement: int = 4,
    ):
        super().__init__(channels)
        if deformable_groups < 1 or channels % deformable_groups:
            raise ValueError(f"deformable_groups={deformable_groups} must divide channels={channels}")
        if not flow_guidance and (flownet_weights is not None or flow_source != "flownet"):
            raise ValueError("flow_source / flownet_weights are options of flow_guidance=True")
        hidden = channels if hidden_channels is None else hidden_channels
        self.deformable_groups = deformable_groups
        self.learned_weights = learned_weights
        self.resample_reference = resample_reference
        self.predictor = SSVDOffsetPredictor(
            2 * channels, hidden, deformable_groups=deformable_groups, weight_channel=learned_weights
        )
        self.sampling_conv = DeformConv2d(channels, channels, KERNEL, padding=1, bias=False)
        if identity_init:
            with torch.no_grad():
                self.sampling_conv.weight.zero_()
                self.sampling_conv.weight[:, :, 1, 1] = torch.eye(channels)
        self.flow: FlowWarpAlignment | None = None
        if flow_guidance:
            self.flow = FlowWarpAlignment(
                channels,
                flow_source=flow_source,
                flownet_weights=flownet_weights,
                flownet_width=flownet_width,
                flownet_max_displacement=flownet_max_displacement,
            )
            self.needs_images = self.flow.needs_images
            self.needs_oracle_flow = self.flow.needs_oracle_flow

    @property
    def num_offsets(self) -> int:
        return self.predictor.num_offsets

    def sample(
        self, reference: Tensor, support: Tensor, flow: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """A batch of pairs ``reference``, ``support`` (N, C, H, W), optional ``flow`` (N, 2, H, W) in
        feature cells (dx, dy) -> (resampled support (N, C, H, W), offsets (N, 2 * G * 9, H, W),
        weight logits (N, 1, H, W) | None)."""
        predictor_input = support if flow is None else flow_warp(support, flow, padding_mode="zeros")
        prediction = self.predictor(torch.cat([reference, predictor_input], dim=1))  # (N, 72 [+1], H, W)
        offsets = prediction[:, : self.num_offsets]
        logits = F.relu(prediction[:, self.num_offsets :]) if self.learned_weights else None
        if flow is not None:
            # (N, 2, H, W) (dx, dy) -> (N, 2, H, W) (dy, dx) repeated for every (group, tap) pair
            offsets = offsets + flow.flip(1).repeat(1, self.num_offsets // 2, 1, 1)
        return self.sampling_conv(support, offsets), offsets, logits

    def estimate_grid_flow(self, ctx: TemporalContext) -> Tensor:
        """(B*T, 2, H, W): flow reference -> support on the feature grid (``flow_guidance`` only)."""
        if self.flow is None:
            raise ValueError("SSVDSamplingAlignment.estimate_grid_flow needs flow_guidance=True")
        image_flow, image_size = self.flow.estimate_flow(ctx)
        grid_size = tuple(ctx.supports.shape[-2:])
        return flow_to_grid(image_flow, grid_size=grid_size, image_size=image_size).to(ctx.supports.dtype)

    def align(self, ctx: TemporalContext, *, with_reference: bool) -> SampledSupports:
        """Every (reference, support) pair of ``ctx`` in one batch, plus the (reference, reference)
        pair when ``with_reference`` (zero flow under ``flow_guidance``). See :class:`SampledSupports`."""
        ctx.validate()
        self.values_to_move(ctx)  # the deformable conv maps the C compared channels: no other values
        check_channels("supports", ctx.supports, self.channels, dim=2)
        b, t, c, h, w = ctx.supports.shape
        if t == 0:
            sampled_reference, _, reference_logits = (
                self.sample(ctx.reference, ctx.reference) if with_reference else (None, None, None)
            )
            return SampledSupports(
                features=ctx.supports,
                offsets=ctx.supports.new_zeros(b, 0, self.num_offsets, h, w),
                logits=ctx.supports.new_zeros(b, 0, 1, h, w) if self.learned_weights else None,
                flow=ctx.supports.new_zeros(b, 0, 2, h, w) if self.flow is not None else None,
                reference=sampled_reference,
                reference_logits=reference_logits,
            )
        reference = ctx.reference.unsqueeze(1).expand(b, t, c, h, w).reshape(b * t, c, h, w)  # (B*T, C, H, W)
        support = ctx.supports.reshape(b * t, c, h, w)  # (B, T, C, H, W) -> (B*T, C, H, W)
        flow = self.estimate_grid_flow(ctx) if self.flow is not None else None  # (B*T, 2, H, W)
        pair_flow = flow
        if with_reference:  # B*T support pairs, then B (reference, reference) pairs
            reference = torch.cat([reference, ctx.reference])  # (B*T + B, C, H, W)
            support = torch.cat([support, ctx.reference])
            if flow is not None:
                pair_flow = torch.cat([flow, flow.new_zeros(b, 2, h, w)])
        sampled, offsets, logits = self.sample(reference, support, pair_flow)
        return SampledSupports(
            features=sampled[: b * t].reshape(b, t, c, h, w),  # (B*T, C, H, W) -> (B, T, C, H, W)
            offsets=offsets[: b * t].reshape(b, t, -1, h, w),  # (B, T, 2*G*9, H, W)
            logits=None if logits is None else logits[: b * t].reshape(b, t, 1, h, w),
            flow=None if flow is None else flow.reshape(b, t, 2, h, w),
            reference=sampled[b * t :] if with_reference else None,
            reference_logits=logits[b * t :] if with_reference and logits is not None else None,
        )

    def forward(self, ctx: TemporalContext) -> AlignmentOutput:
        result = self.align(ctx, with_reference=self.resample_reference)
        aux = {"sampling_offsets": result.offsets}
        if result.logits is not None:
            aux["sampling_weight_logits"] = result.logits
        if result.flow is not None:
            aux["flow"] = result.flow
        return AlignmentOutput(features=result.features, aux=aux, reference=result.reference)
