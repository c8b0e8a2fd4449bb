"""FGFA-style flow-guided feature warping (Zhu et al., ICCV 2017) with three flow sources.

For each (reference, support) pair the flow reference -> support is estimated at image resolution
(or at the flow net's 1/4 resolution), brought to the feature grid, and the support's features are
bilinearly warped onto the reference grid: ``aligned(p) = support(p + flow(p))``.

Flow sources (``flow_source``), the knob of the "where does the flow come from" ablation:

* ``"flownet"``: :class:`methods.flownet.FlowNetC`, trained end to end with the detector (the
  detection loss reaches it through the differentiable warp); optionally initialised from
  ``flownet_weights`` (a state dict saved from :func:`harness.flow_pretraining.pretrain_flownet`).
  This is FGFA ("uses a FlowNet, uses flow data" when pretrained).
* ``"farneback"``: OpenCV's classical flow (no learning, no gradient; CPU).
* ``"oracle"``: SynthVID's ground-truth flow (``ctx.oracle_flow``): the upper bound of alignment by
  flow.

FGFA's additional per-channel "scale map" predicted by the flow net is not implemented (the harness
warps only).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.aggregation import Alignment, AlignmentOutput, TemporalContext, register
from methods._checks import check_channels
from methods.farneback import FarnebackParams, farneback_flow
from methods.flownet import FlowNetC
from ops.flow_warp import flow_warp

FlowSource = Literal["flownet", "farneback", "oracle"]


def flow_to_grid(flow: Tensor, *, grid_size: tuple[int, int], image_size: tuple[int, int]) -> Tensor:
    """Bring a flow field onto the feature grid.

    Args:
        flow: (N, 2, h, w) displacements (dx, dy) in pixels of an image of ``image_size`` (Hi, Wi),
            sampled on any h x w lattice over that image (image resolution, a flow net's 1/4...).
        grid_size: (H, W) of the feature map.
        image_size: (Hi, Wi) of the image the vectors are measured in.

    Returns:
        (N, 2, H, W) in pixels of the feature grid: area-averaged when shrinking (a feature cell
        takes the mean motion of the pixels it covers), bilinear when enlarging; dx scaled by W / Wi,
        dy by H / Hi (i.e. divided by the stride).
    """
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be (N, 2, h, w), got {tuple(flow.shape)}")
    height, width = grid_size
    if flow.shape[-2] >= height and flow.shape[-1] >= width:
        resized = F.adaptive_avg_pool2d(flow, (height, width))
    else:
        resized = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
    scale = flow.new_tensor([width / image_size[1], height / image_size[0]]).view(1, 2, 1, 1)
    return resized * scale


@register("alignment", "flow_warp")
class FlowWarpAlignment(Alignment):
    """Warp each support onto the reference grid along reference -> support flow.

    Args:
        channels: C of the features.
        flow_source: ``"flownet"`` (default), ``"farneback"`` or ``"oracle"``.
        flownet_weights: path of a pretrained flow-net state dict (``flow_source="flownet"`` only);
            ``None`` = random init (flow learned from the detection loss alone).
        flownet_width, flownet_max_displacement: :class:`FlowNetC` size (must match the weights).
        padding_mode: where the flow points outside the map: ``"zeros"`` (FGFA's bilinear sampler)
            or ``"border"``.

    ``forward(ctx)`` -> ``AlignmentOutput(features (B, T, C', H, W), aux={"flow": (B, T, 2, H, W)})``,
    the flow in feature-grid pixels. The flow comes from the images (or the oracle), so any values
    on the feature grid can be warped: ``ctx.support_values`` when given, else the supports. Reads
    ``ctx.reference_image`` (B, 3, Hi, Wi) and ``ctx.support_images`` (B, T, 3, Hi, Wi) for the
    flownet/farneback sources (instance attribute ``needs_images``) or ``ctx.oracle_flow``
    (B, T, 2, Hi, Wi) for the oracle (``needs_oracle_flow``).
    """

    moves_values = True

    def __init__(
        self,
        channels: int,
        *,
        flow_source: FlowSource = "flownet",
        flownet_weights: str | None = None,
        flownet_width: int = 16,
        flownet_max_displacement: int = 4,
        padding_mode: Literal["zeros", "border"] = "zeros",
    ):
        super().__init__(channels)
        if flow_source not in ("flownet", "farneback", "oracle"):
            raise ValueError(f"flow_source must be 'flownet', 'farneback' or 'oracle', got {flow_source!r}")
        if padding_mode not in ("zeros", "border"):
            raise ValueError(f"padding_mode must be 'zeros' or 'border', got {padding_mode!r}")
        if flownet_weights is not None and flow_source != "flownet":
            raise ValueError(f"flownet_weights given but flow_source={flow_source!r} uses no flow net")
        self.flow_source = flow_source
        self.padding_mode = padding_mode
        self.needs_images = flow_source in ("flownet", "farneback")
        self.needs_oracle_flow = flow_source == "oracle"
        self.farneback_params = FarnebackParams()
        self.flownet: FlowNetC | None = None
        if flow_source == "flownet":
            self.flownet = FlowNetC(width=flownet_width, max_displacement=flownet_max_displacement)
            if flownet_weights is not None:
                self.flownet.load_state_dict(load_flownet_state(flownet_weights))

    def estimate_flow(self, ctx: TemporalContext) -> tuple[Tensor, tuple[int, int]]:
        """Flow reference -> support for every pair: ((B*T, 2, h, w) in image pixels, image size (Hi, Wi))."""
        b, t = ctx.supports.shape[:2]
        if self.flow_source == "oracle":
            if ctx.oracle_flow is None:
                raise ValueError("flow_warp(flow_source='oracle') needs ctx.oracle_flow (B, T, 2, Hi, Wi)")
            return ctx.oracle_flow.flatten(0, 1), tuple(ctx.oracle_flow.shape[-2:])  # (B*T, 2, Hi, Wi)
        if ctx.reference_image is None or ctx.support_images is None:
            raise ValueError(
                f"flow_warp(flow_source={self.flow_source!r}) needs ctx.reference_image and "
                "ctx.support_images"
            )
        if tuple(ctx.support_images.shape[2:]) != tuple(ctx.reference_image.shape[1:]):
            raise ValueError(
                f"support_images {tuple(ctx.support_images.shape)} must be (B, T) x reference_image's "
                f"{tuple(ctx.reference_image.shape[1:])}"
            )
        image_size = tuple(ctx.reference_image.shape[-2:])
        reference_images = ctx.reference_image.unsqueeze(1).expand_as(ctx.support_images).flatten(0, 1)
        support_images = ctx.support_images.flatten(0, 1)  # (B, T, 3, Hi, Wi) -> (B*T, 3, Hi, Wi)
        if self.flow_source == "farneback":
            flow = farneback_flow(
                reference_images, support_images, params=self.farneback_params, pair_mask=ctx.valid.flatten()
            )
            return flow.to(ctx.supports.dtype), image_size
        assert self.flownet is not None
        return self.flownet(reference_images, support_images).to(ctx.supports.dtype), image_size

    def forward(self, ctx: TemporalContext) -> AlignmentOutput:
        ctx.validate()
        check_channels("supports", ctx.supports, self.channels, dim=2)
        values = self.values_to_move(ctx)  # (B, T, C', H, W)
        b, t, c, h, w = values.shape
        if t == 0:
            return AlignmentOutput(values, {"flow": values.new_zeros(b, 0, 2, h, w)})
        image_flow, image_size = self.estimate_flow(ctx)
        grid_flow = flow_to_grid(image_flow, grid_size=(h, w), image_size=image_size)  # (B*T, 2, H, W)
        warped = flow_warp(values.flatten(0, 1), grid_flow.to(values.dtype), padding_mode=self.padding_mode)
        return AlignmentOutput(
            features=warped.reshape(b, t, c, h, w),  # (B*T, C', H, W) -> (B, T, C', H, W)
            aux={"flow": grid_flow.reshape(b, t, 2, h, w)},  # (B*T, 2, H, W) -> (B, T, 2, H, W)
        )


def load_flownet_state(path: str) -> dict[str, Tensor]:
    """A flow-net state dict from ``path``: either saved bare or as ``pretrain_flownet``'s result dict."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(saved, dict) and "state_dict" in saved:
        saved = saved["state_dict"]
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: expected a flow-net state dict, got {type(saved).__name__}")
    return saved
