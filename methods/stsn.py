"""STSN's spatiotemporal sampling block (Bertasius et al., ECCV 2018, Sec. 4 and 4.1).

For each (reference ``f_t``, support ``f_{t+k}``) pair, a stack of ``L`` deformable convolutions
learns *where* to sample the support, trained only from the detection loss (no flow data):

    x_0 = concat(f_t, f_{t+k})                        (N, 2C, H, W)
    o_1 = conv_1(x_0)                                 plain 3x3 conv predicting offsets
    g_1 = relu(deform_1(x_0, o_1))                    (N, hidden, H, W)
    o_l = conv_l(g_{l-1}),  g_l = relu(deform_l(g_{l-1}, o_l))      l = 2 .. L-1
    o_L = conv_L(g_{L-1})
    g_L = deform_L(f_{t+k}, o_L)                      the RAW support resampled, (N, C, H, W)

i.e. ``L`` deformable convs and ``L`` offset convs (paper: L = 4, 3x3, 1024 channels; here
``hidden_channels`` defaults to ``channels``, the paper's ratio, and ``num_layers`` to 4).

Initialisation (the paper does not state it; these are the harness's choices):

* every offset conv starts at zero weight and bias (as in Deformable ConvNets), so at the start
  every deformable conv samples the regular 3x3 grid, i.e. it *is* an ordinary 3x3 convolution;
* with ``identity_init=True`` (default) the last deformable conv's kernel starts as the identity
  (centre tap = identity matrix, other taps and bias 0). Together: **at initialisation the block
  returns the support features unchanged** (exactly the ``identity`` alignment), so phase 2 starts
  from the phase-1 detector applied to unaligned features and learns to move samples from there.

A consequence worth knowing: while the offset convs are exactly zero, the layers before the last one
receive no gradient (their output only feeds a zero-weight conv). The first optimiser step on the
last offset conv unblocks them, as in any zero-initialised DCN offset branch.

The paper also resamples the reference through the block (``g_{t,t}``, with the reference as its
own support); ``resample_reference=True`` (default) does so and the fusion then compares and
averages sampled features only.

Offsets follow torchvision's layout: ``2 * deformable_groups * kh * kw`` channels, ordered
``(group, tap row, tap column, (dy, dx))``, in pixels of the feature grid, relative to the tap's
regular position ``p + (i - kh // 2, j - kw // 2)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from harness.aggregation import Alignment, AlignmentOutput, TemporalContext, register
from methods._checks import check_channels
from ops.deform_conv import DeformConv2d


@register("alignment", "stsn")
class STSNAlignment(Alignment):
    """STSN sampling block as an alignment.

    Args:
        channels: C of the backbone features.
        hidden_channels: width of the intermediate deformable convs (default ``channels``).
        num_layers: number of deformable convs = number of offset convs (paper: 4; >= 1).
        kernel_size: kernel of every conv (paper: 3; odd).
        deformable_groups: offset groups of the deformable convs (channels share offsets per group).
        identity_init: start the last deformable conv as the identity (see module docstring).
        resample_reference: also pass the reference through the block with itself as the support
            (the paper's g_{t,t}), returned as ``AlignmentOutput.reference`` so that the fusion compares
            and averages sampled features only; False fuses the raw reference.

    Cannot move ``ctx.support_values`` (``moves_values = False``): the final sampling conv has C -> C
    weights learnt on the compared features.

    ``forward(ctx)`` -> ``AlignmentOutput(features (B, T, C, H, W), aux={"sampling_offsets": (B, T,
    2 * deformable_groups * k * k, H, W), "sampling_tap_weight": (B, T, k * k, H, W)})``: the
    resampled supports, the offsets of the last deformable conv (the sampling locations of the
    paper's Fig. 4) and each of its taps' share of that conv's weight norm (how much a sampled
    location can matter; the same at every pixel: an expanded view, detached).
    """

    moves_values = False

    def __init__(
        self,
        channels: int,
        *,
        hidden_channels: int | None = None,
        num_layers: int = 4,
        kernel_size: int = 3,
        deformable_groups: int = 1,
        identity_init: bool = True,
        resample_reference: bool = True,
    ):
        super().__init__(channels)
        self.resample_reference = resample_reference
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        hidden = hidden_channels if hidden_channels is not None else channels
        if deformable_groups < 1 or channels % deformable_groups or hidden % deformable_groups:
            raise ValueError(
                f"deformable_groups={deformable_groups} must divide channels={channels} "
                f"and hidden_channels={hidden}"
            )
        self.hidden_channels = hidden
        self.num_layers = num_layers
        self.kernel_size = kernel_size
        self.deformable_groups = deformable_groups
        offset_channels = 2 * deformable_groups * kernel_size * kernel_size

        # Offset conv l reads x_0 (l = 1) or g_{l-1}; deform conv l maps it to g_l (the last one
        # instead resamples the raw support to C channels).
        offset_inputs = [2 * channels] + [hidden] * (num_layers - 1)
        self.offset_convs = nn.ModuleList(
            nn.Conv2d(width, offset_channels, kernel_size=kernel_size, padding=kernel_size // 2)
            for width in offset_inputs
        )
        # PyTorch's default conv init (DeformConv2d.reset_parameters), 'same' padding at stride 1.
        self.feature_convs = nn.ModuleList(
            DeformConv2d(width, hidden, kernel_size, padding=kernel_size // 2, bias=True)
            for width in offset_inputs[:-1]
        )
        self.sampling_conv = DeformConv2d(
            channels, channels, kernel_size, padding=kernel_size // 2, bias=True
        )
        self.activation = nn.ReLU(inplace=True)
        self.reset_parameters(identity_init=identity_init)

    @torch.no_grad()
    def reset_parameters(self, *, identity_init: bool) -> None:
        """Zero every offset conv; optionally make the final sampling conv the identity."""
        for conv in self.offset_convs:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        if identity_init:
            centre = self.kernel_size // 2
            self.sampling_conv.weight.zero_()
            self.sampling_conv.weight[:, :, centre, centre] = torch.eye(self.channels)
            self.sampling_conv.bias.zero_()

    @torch.no_grad()
    def tap_weight_share(self) -> Tensor:
        """(k * k,): each tap's share of the final sampling conv's weight (L2 norm over channels)."""
        norms = self.sampling_conv.weight.detach().pow(2).sum(dim=(0, 1)).sqrt().reshape(-1)
        return norms / norms.sum().clamp_min(1e-12)

    def sample(self, reference: Tensor, support: Tensor) -> tuple[Tensor, Tensor]:
        """One batch of pairs: ``reference``, ``support`` (N, C, H, W) -> (resampled support (N, C, H, W),
        last offsets (N, 2 * groups * k * k, H, W))."""
        x = torch.cat([reference, support], dim=1)  # (N, 2C, H, W)
        for offset_conv, feature_conv in zip(self.offset_convs[:-1], self.feature_convs, strict=True):
            x = self.activation(feature_conv(x, offset_conv(x)))  # (N, hidden, H, W)
        offsets = self.offset_convs[-1](x)
        return self.sampling_conv(support, offsets), offsets

    def forward(self, ctx: TemporalContext) -> AlignmentOutput:
        ctx.validate()
        self.values_to_move(ctx)  # the last deformable conv maps the C compared channels: no other values
        check_channels("supports", ctx.supports, self.channels, dim=2)
        b, t, c, h, w = ctx.supports.shape
        if t == 0:
            no_offsets = ctx.supports.new_zeros(b, 0, self.offset_convs[-1].out_channels, h, w)
            no_taps = ctx.supports.new_zeros(b, 0, self.kernel_size**2, h, w)
            aux = {"sampling_offsets": no_offsets, "sampling_tap_weight": no_taps}
            return AlignmentOutput(ctx.supports, aux)
        reference = ctx.reference.unsqueeze(1).expand(b, t, c, h, w).reshape(b * t, c, h, w)  # (B*T, C, H, W)
        support = ctx.supports.reshape(b * t, c, h, w)  # (B, T, C, H, W) -> (B*T, C, H, W)
        if self.resample_reference:  # one batch: B*T support pairs, then B (reference, reference) pairs
            reference = torch.cat([reference, ctx.reference])  # (B*T + B, C, H, W)
            support = torch.cat([support, ctx.reference])
        sampled, offsets = self.sample(reference, support)
        taps = self.tap_weight_share().view(1, 1, -1, 1, 1).expand(b, t, -1, h, w)  # (B, T, k*k, H, W)
        return AlignmentOutput(
            features=sampled[: b * t].reshape(b, t, c, h, w),  # (B*T, C, H, W) -> (B, T, C, H, W)
            aux={
                "sampling_offsets": offsets[: b * t].reshape(b, t, -1, h, w),  # (B, T, 2*G*k*k, H, W)
                "sampling_tap_weight": taps,
            },
            reference=sampled[b * t :] if self.resample_reference else None,  # (B, C, H, W): g_{t,t}
        )
