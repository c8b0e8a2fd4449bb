"""Sparse head (Sparse R-CNN, Sun et al. CVPR 2021; SparseVOD's still-image detector) on one feature map.

A fixed set of ``num_proposals`` learnable proposal boxes (``nn.Embedding`` of image-normalised
``cx, cy, w, h``, initialised to the whole image) and proposal features (``nn.Embedding``, N(0, 1)) is
refined by ``num_stages`` dynamic instance interaction stages. Each stage:

1. self-attention among the proposal features of an image (``nn.MultiheadAttention``), residual + LayerNorm;
2. RoI features of the stage's boxes, ``torchvision.ops.roi_align`` on the stride-8 map
   (``roi_size`` x ``roi_size``, ``aligned=True``, sampling ratio 2);
3. dynamic instance interaction (:class:`DynamicConv`): each proposal feature generates the weights of
   two 1x1 convolutions (``dim -> dynamic_dim -> dim``) applied to its own RoI features, then flattened
   and projected back to ``dim``; residual + LayerNorm;
4. feed-forward network, residual + LayerNorm;
5. classification logits (sigmoid per class, no background) and box deltas that refine the stage's
   boxes; the next stage receives the refined boxes detached (no gradient through the box chain).

Training (:meth:`SparseHead.losses`): at every stage (auxiliary losses) the predictions are matched one
to one to the ground truth by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on
``class_weight * focal cost + l1_weight * L1 (boxes normalised by the image side) + giou_weight * (-GIoU)``;
the losses are the same three terms (``torchvision.ops.sigmoid_focal_loss`` over every proposal and
class, L1 and ``generalized_box_iou_loss`` on the matched pairs), weighted, summed over the stages and
divided by the number of ground-truth boxes in the batch (at least 1).

Inference (:meth:`SparseHead.predict`): the top ``max_detections`` of ``sigmoid(logits)`` over
proposals x classes of the last stage (or any stage: each is supervised), above ``score_threshold``,
no NMS. :meth:`SparseHead.candidates` returns the same (there is nothing to suppress), so the detector's
multi-stream fusion works unchanged.

Temporal parts (SparseVOD): with ``aggregation.aggregator = "proposal_level"`` the head also gets the
supports' backbone maps and the registered ``proposal`` parts (``harness.aggregation.ProposalPart``).
Every support frame then runs the same stages with its own learnable proposals (no loss on it), and in
each stage the target's RoI features pass the ``"roi"`` parts (TFE) before the dynamic interaction and
its proposal features the ``"proposal"`` parts (SPFA, with the supports' proposal features of that
stage) after the feed-forward network, before the stage's outputs. A head with no parts, or given no
valid support, is exactly the single-frame head. ``set_readout_stage`` picks which supervised stage
predicts (SparseVOD's Table 3 as a test-time readout, ``TestConfig.head_stage``).

The paper gives no details beyond "as in Sparse R-CNN"; where it is silent this follows the official
Sparse R-CNN code (PeizeSun/SparseR-CNN, read, not copied): box init (0.5, 0.5, 1, 1), delta weights
(2, 2, 1, 1) with the width/height clamp log(1e5/16), one classification and three regression
Linear-LayerNorm-ReLU layers, LayerNorm + ReLU after each dynamic product and after the output
projection, Xavier init of the stages with the focal prior 0.01 on the class bias, the focal matching
cost (alpha 0.25, gamma 2) and L1 on image-normalised ``x1, y1, x2, y2`` boxes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import (
    box_convert,
    clip_boxes_to_image,
    generalized_box_iou,
    generalized_box_iou_loss,
    roi_align,
    sigmoid_focal_loss,
)

if TYPE_CHECKING:
    from harness.aggregation import ProposalContext

_SCALE_CLAMP = math.log(100000.0 / 16)  # max log width/height change per stage (Sparse R-CNN's)
_DELTA_WEIGHTS = (2.0, 2.0, 1.0, 1.0)  # dx, dy, dw, dh divisors (Sparse R-CNN's)
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0


@dataclass
class SparseHeadOutput:
    """Per-stage predictions for a batch: ``logits[s] (B, P, K)`` and ``boxes[s] (B, P, 4)``
    ``x1, y1, x2, y2`` in the head-input image pixels; ``image_size`` is the feature map's extent in
    pixels ``(width, height)`` (``W * stride``, ``H * stride``), the normaliser of the L1 term."""

    logits: list[Tensor]
    boxes: list[Tensor]
    image_size: tuple[int, int]


# ---------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------


def hungarian_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment of a ``(P, N)`` cost matrix with ``N <= P``.

    Returns ``(rows, cols)`` int64: proposal ``rows[i]`` is matched to ground truth ``cols[i]``, sorted
    by ``cols`` so that every ground-truth box appears exactly once, in order.
    """
    if cost.ndim != 2:
        raise ValueError(f"cost must be (P, N), got {tuple(cost.shape)}")
    if cost.shape[1] > cost.shape[0]:
        raise ValueError(f"cannot match {cost.shape[1]} ground-truth boxes to {cost.shape[0]} proposals")
    if not torch.isfinite(cost).all():
        raise ValueError("the matching cost has non-finite entries")
    rows, cols = linear_sum_assignment(cost.detach().cpu().double().numpy())
    order = np.argsort(cols)
    device = cost.device
    return (
        torch.as_tensor(rows[order], dtype=torch.int64, device=device),
        torch.as_tensor(cols[order], dtype=torch.int64, device=device),
    )


def matching_cost(
    logits: Tensor,
    boxes: Tensor,
    gt_labels: Tensor,
    gt_boxes: Tensor,
    *,
    normaliser: Tensor,
    class_weight: float,
    l1_weight: float,
    giou_weight: float,
) -> Tensor:
    """``(P, N)`` cost of assigning each of P predictions to each of N ground-truth boxes.

    ``logits (P, K)``, ``boxes (P, 4)`` and ``gt_boxes (N, 4)`` ``x1, y1, x2, y2`` pixels, ``gt_labels
    (N,)``; ``normaliser (4,)`` = ``(W, H, W, H)`` for the L1 term. Focal class cost as in Sparse
    R-CNN / Deformable DETR: the focal loss of calling the class positive minus that of calling it
    negative, at the ground truth's class.
    """
    prob = logits.sigmoid()[:, gt_labels]  # (P, N)
    negative = (1 - FOCAL_ALPHA) * prob.pow(FOCAL_GAMMA) * -(1 - prob + 1e-8).log()
    positive = FOCAL_ALPHA * (1 - prob).pow(FOCAL_GAMMA) * -(prob + 1e-8).log()
    cost_class = positive - negative
    cost_l1 = torch.cdist(boxes / normaliser, gt_boxes / normaliser, p=1)
    cost_giou = -generalized_box_iou(boxes, gt_boxes)
    return class_weight * cost_class + l1_weight * cost_l1 + giou_weight * cost_giou


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class DynamicConv(nn.Module):
    """Dynamic instance interaction: per proposal, two 1x1 convolutions whose weights are generated
    from the proposal feature, applied to that proposal's RoI features.

    ``proposal (N, D)`` generates ``W1 (D, Dd)`` and ``W2 (Dd, D)`` (one linear layer); with the RoI
    features ``roi (N, S*S, D)``: ``relu(LN(relu(LN(roi @ W1)) @ W2))`` -> flatten ``(N, S*S*D)`` ->
    linear -> LN -> ReLU -> ``(N, D)``.
    """

    def __init__(self, dim: int, dynamic_dim: int, roi_size: int):
        super().__init__()
        self.dim, self.dynamic_dim = dim, dynamic_dim
        self.dynamic_layer = nn.Linear(dim, 2 * dim * dynamic_dim)
        self.norm1 = nn.LayerNorm(dynamic_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.out_layer = nn.Linear(dim * roi_size * roi_size, dim)
        self.norm3 = nn.LayerNorm(dim)

    def parameters_for(self, proposal: Tensor) -> tuple[Tensor, Tensor]:
        """The generated weights ``W1 (N, D, Dd)`` and ``W2 (N, Dd, D)`` of ``proposal (N, D)``."""
        params = self.dynamic_layer(proposal)
        split = self.dim * self.dynamic_dim
        first = params[:, :split].view(-1, self.dim, self.dynamic_dim)
        second = params[:, split:].view(-1, self.dynamic_dim, self.dim)
        return first, second

    def forward(self, proposal: Tensor, roi: Tensor) -> Tensor:
        """``proposal (N, D)``, ``roi (N, S*S, D)`` -> ``(N, D)``."""
        if (
            proposal.ndim != 2
            or roi.ndim != 3
            or roi.shape[0] != proposal.shape[0]
            or roi.shape[2] != self.dim
        ):
            raise ValueError(
                f"DynamicConv needs proposal (N, {self.dim}) and roi (N, S*S, {self.dim}), "
                f"got {tuple(proposal.shape)} and {tuple(roi.shape)}"
            )
        first, second = self.parameters_for(proposal)
        features = F.relu(self.norm1(torch.bmm(roi, first)))  # (N, S*S, Dd)
        features = F.relu(self.norm2(torch.bmm(features, second)))  # (N, S*S, D)
        return F.relu(self.norm3(self.out_layer(features.flatten(1))))


def apply_deltas(deltas: Tensor, boxes: Tensor) -> Tensor:
    """Refine ``boxes (..., 4)`` ``x1, y1, x2, y2`` by ``deltas (..., 4)`` ``(dx, dy, dw, dh)``
    (R-CNN parametrisation with weights (2, 2, 1, 1), log-size change clamped)."""
    widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    center_x, center_y = boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights
    wx, wy, ww, wh = _DELTA_WEIGHTS
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = (deltas[..., 2] / ww).clamp(max=_SCALE_CLAMP)
    dh = (deltas[..., 3] / wh).clamp(max=_SCALE_CLAMP)
    new_cx, new_cy = center_x + dx * widths, center_y + dy * heights
    new_w, new_h = widths * dw.exp(), heights * dh.exp()
    return torch.stack(
        [new_cx - 0.5 * new_w, new_cy - 0.5 * new_h, new_cx + 0.5 * new_w, new_cy + 0.5 * new_h], dim=-1
    )


def _mlp_layers(dim: int, count: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(count):
        layers += [nn.Linear(dim, dim, bias=False), nn.LayerNorm(dim), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class SparseStage(nn.Module):
    """One dynamic instance interaction stage (see the module docstring, steps 1-5)."""

    def __init__(
        self,
        *,
        dim: int,
        num_classes: int,
        dynamic_dim: int,
        ffn_dim: int,
        num_heads: int,
        roi_size: int,
        stride: int,
        dropout: float = 0.0,
        prior_probability: float = 0.01,
    ):
        super().__init__()
        self.dim, self.roi_size, self.stride = dim, roi_size, stride
        self.self_attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.interaction = DynamicConv(dim, dynamic_dim, roi_size)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.cls_layers = _mlp_layers(dim, 1)
        self.reg_layers = _mlp_layers(dim, 3)
        self.cls_logits = nn.Linear(dim, num_classes)
        self.box_deltas = nn.Linear(dim, 4)
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability))

    def roi_features(self, features: Tensor, boxes: Tensor) -> Tensor:
        """``features (B, D, H, W)``, ``boxes (B, P, 4)`` pixels -> RoI features ``(B*P, D, S, S)``."""
        return roi_align(
            features,
            list(boxes.unbind(0)),
            output_size=self.roi_size,
            spatial_scale=1.0 / self.stride,
            sampling_ratio=2,
            aligned=True,
        )

    def forward(
        self,
        features: Tensor,
        boxes: Tensor,
        proposals: Tensor,
        *,
        roi_hook: Callable[[Tensor], Tensor] | None = None,
        proposal_hook: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``features (B, D, H, W)``, ``boxes (B, P, 4)`` (detached), ``proposals (B, P, D)`` ->
        ``(logits (B, P, K), refined boxes (B, P, 4), proposal features (B, P, D))``.

        ``roi_hook`` maps the RoI features ``(B*P, D, S, S)`` before the dynamic interaction,
        ``proposal_hook`` the proposal features ``(B, P, D)`` after the feed-forward network, before
        the outputs (the sites of the proposal-level parts, ``harness.aggregation.ProposalPart``)."""
        batch, num_proposals, dim = proposals.shape
        attended, _ = self.self_attention(proposals, proposals, proposals, need_weights=False)
        proposals = self.norm1(proposals + self.dropout(attended))
        roi = self.roi_features(features, boxes)  # (B*P, D, S, S)
        if roi_hook is not None:
            roi = roi_hook(roi)
        roi = roi.flatten(2).transpose(1, 2)  # (B*P, S*S, D)
        interacted = self.interaction(proposals.reshape(batch * num_proposals, dim), roi)
        proposals = self.norm2(proposals + self.dropout(interacted.view(batch, num_proposals, dim)))
        proposals = self.norm3(proposals + self.dropout(self.ffn(proposals)))
        if proposal_hook is not None:
            proposals = proposal_hook(proposals)
        logits = self.cls_logits(self.cls_layers(proposals))
        refined = apply_deltas(self.box_deltas(self.reg_layers(proposals)), boxes)
        return logits, refined, proposals


class _SupportStages:
    """The support frames' pass through the stages, one stage ahead of the target's use of it: for each
    stage, :meth:`advance` runs the stage on the supports and returns the target's hooks for it."""

    def __init__(self, head: SparseHead, maps: Tensor, valid: Tensor, proposal: ProposalContext):
        batch, frames = valid.shape
        self.maps, self.valid, self.frames = maps, valid, frames
        self.support_maps = maps.unflatten(0, (batch, frames))  # (B, T, D, H, W)
        self.roi_image = torch.arange(batch, device=maps.device).repeat_interleave(head.num_proposals)
        height, width = maps.shape[-2:]
        self.boxes = head.initial_boxes(batch * frames, width * head.stride, height * head.stride)
        self.proposals = head.initial_proposals(batch * frames)
        self.roi_parts, self.proposal_parts = proposal.at("roi"), proposal.at("proposal")

    def advance(self, stage: SparseStage) -> dict[str, Callable[[Tensor], Tensor] | None]:
        _, self.boxes, self.proposals = stage(self.maps, self.boxes.detach(), self.proposals)
        support_proposals = self.proposals.unflatten(0, (self.valid.shape[0], self.frames))  # (B, T, P, D)

        def roi_hook(roi: Tensor) -> Tensor:
            for part in self.roi_parts:
                roi = part(roi, self.support_maps, self.valid, self.roi_image)
            return roi

        def proposal_hook(target: Tensor) -> Tensor:
            for part in self.proposal_parts:
                target = part(target, support_proposals, self.valid)
            return target

        return {
            "roi_hook": roi_hook if self.roi_parts else None,
            "proposal_hook": proposal_hook if self.proposal_parts else None,
        }


class SparseHead(nn.Module):
    """Sparse R-CNN head on one feature map (see the module docstring).

    Args:
        in_channels: channels of the (aggregated) features; projected to ``dim`` by a 1x1 conv when
            they differ.
        num_classes: object classes (sigmoid per class, no background class).
        num_proposals, num_stages, dim, dynamic_dim, ffn_dim, num_heads, roi_size, dropout: the
            architecture (``harness.config.SparseHeadConfig``).
        class_weight, l1_weight, giou_weight: weights of the matching cost and of the loss terms.
        stride: feature stride in image pixels (8).
        score_threshold, max_detections: post-processing (top-k, no NMS).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_proposals: int = 32,
        num_stages: int = 3,
        dim: int = 64,
        dynamic_dim: int = 16,
        ffn_dim: int = 256,
        num_heads: int = 4,
        roi_size: int = 7,
        dropout: float = 0.0,
        class_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        stride: int = 8,
        score_threshold: float = 0.05,
        max_detections: int = 100,
    ):
        super().__init__()
        for name, value in [
            ("num_proposals", num_proposals),
            ("num_stages", num_stages),
            ("dim", dim),
            ("dynamic_dim", dynamic_dim),
            ("ffn_dim", ffn_dim),
            ("num_heads", num_heads),
            ("roi_size", roi_size),
            ("num_classes", num_classes),
        ]:
            if value < 1:
                raise ValueError(f"SparseHead needs {name} >= 1, got {value}")
        if dim % num_heads:
            raise ValueError(f"SparseHead: dim {dim} must be divisible by num_heads {num_heads}")
        self.num_classes = num_classes
        self.num_proposals, self.dim = num_proposals, dim
        self.readout_stage = -1  # the stage predict/candidates read by default (set_readout_stage)
        self.stride = stride
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.class_weight, self.l1_weight, self.giou_weight = class_weight, l1_weight, giou_weight
        self.input_projection: nn.Module = (
            nn.Identity() if in_channels == dim else nn.Conv2d(in_channels, dim, kernel_size=1)
        )
        self.proposal_boxes = nn.Embedding(num_proposals, 4)  # normalised cx, cy, w, h
        nn.init.constant_(self.proposal_boxes.weight[:, :2], 0.5)
        nn.init.constant_(self.proposal_boxes.weight[:, 2:], 1.0)
        self.proposal_features = nn.Embedding(num_proposals, dim)
        self.stages = nn.ModuleList(
            SparseStage(
                dim=dim,
                num_classes=num_classes,
                dynamic_dim=dynamic_dim,
                ffn_dim=ffn_dim,
                num_heads=num_heads,
                roi_size=roi_size,
                stride=stride,
                dropout=dropout,
            )
            for _ in range(num_stages)
        )

    def set_readout_stage(self, stage: int | None) -> None:
        """Predict from stage ``stage`` (1-based) by default instead of the last one (``None``)."""
        if stage is not None and not 1 <= stage <= len(self.stages):
            raise ValueError(
                f"head_stage must lie in [1, {len(self.stages)}] (the head's stages), got {stage}"
            )
        self.readout_stage = -1 if stage is None else stage - 1

    def optimizer_overrides(self) -> dict[str, dict[str, float]]:
        """No weight decay on the proposal boxes: they are coordinates (decay would pull every box
        toward the image corner), not weights."""
        return {"proposal_boxes.weight": {"weight_decay": 0.0}}

    def initial_boxes(self, batch: int, width: int, height: int) -> Tensor:
        """The learnable proposals as ``(B, P, 4)`` ``x1, y1, x2, y2`` pixels of a ``width x height``
        image."""
        scale = self.proposal_boxes.weight.new_tensor([width, height, width, height])
        boxes = box_convert(self.proposal_boxes.weight, "cxcywh", "xyxy") * scale
        return boxes[None].expand(batch, -1, -1)

    def initial_proposals(self, batch: int) -> Tensor:
        """The learnable proposal features as ``(B, P, D)``, by an embedding lookup rather than a view of
        the parameter (a view made under ``no_grad`` still claims ``requires_grad`` with no ``grad_fn``,
        which ``FlopCounterMode``'s module hooks in ``harness.measure`` reject)."""
        index = torch.arange(self.num_proposals, device=self.proposal_features.weight.device)
        return self.proposal_features(index.expand(batch, -1))

    def forward(self, features: Tensor, proposal: ProposalContext | None = None) -> SparseHeadOutput:
        """``features (B, C, H, W)`` -> :class:`SparseHeadOutput` (every stage's predictions).

        With a ``proposal`` context (``harness.aggregation.ProposalLevelAggregator``) that has parts and
        supports, every support frame runs through the same stages with its own proposals (shared
        weights, no loss on it), and in each stage the target's RoI features pass the ``"roi"`` parts
        (with the supports' projected maps) and its proposal features the ``"proposal"`` parts (with
        the supports' proposal features of the same stage). The supports' boxes and features are
        recomputed for every target frame (nothing is cached between frames)."""
        if features.ndim != 4:
            raise ValueError(f"SparseHead needs features (B, C, H, W), got {tuple(features.shape)}")
        batch, _, height, width = features.shape
        features = self.input_projection(features)
        image_w, image_h = width * self.stride, height * self.stride
        boxes = self.initial_boxes(batch, image_w, image_h)
        proposals = self.initial_proposals(batch)
        temporal = self._temporal(proposal, features)
        all_logits, all_boxes = [], []
        for stage in self.stages:
            hooks = {}
            if temporal is not None:
                hooks = temporal.advance(stage)
            logits, boxes, proposals = stage(features, boxes.detach(), proposals, **hooks)
            all_logits.append(logits)
            all_boxes.append(boxes)
        return SparseHeadOutput(all_logits, all_boxes, (image_w, image_h))

    def _temporal(self, proposal: ProposalContext | None, features: Tensor) -> _SupportStages | None:
        if proposal is None or not proposal.parts:
            return None
        supports, valid = proposal.support_features, proposal.valid
        batch = features.shape[0]
        shapes_match = supports.ndim == 5 and tuple(valid.shape) == tuple(supports.shape[:2])
        if not shapes_match or supports.shape[0] != batch:
            raise ValueError(
                f"support features {tuple(supports.shape)} / valid {tuple(valid.shape)} do not match a batch "
                f"of {batch} reference maps {tuple(features.shape)}"
            )
        dims = {getattr(part, "dim", None) for part in proposal.parts}
        if dims != {self.dim}:
            raise ValueError(
                f"proposal parts are built for width {sorted(dims, key=str)} but the sparse head's dim is "
                f"{self.dim}: set aggregation.aggregator_kwargs.dim = model.head.sparse.dim"
            )
        if supports.shape[1] == 0:
            return None  # nothing to aggregate: every part would return its input
        maps = self.input_projection(supports.flatten(0, 1))  # (B*T, D, H, W)
        return _SupportStages(self, maps, valid, proposal)

    # ------------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------------

    def match(self, logits: Tensor, boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, normaliser: Tensor):
        """Hungarian matching of one image's ``(P, K)`` logits and ``(P, 4)`` boxes to its ground truth:
        ``(rows, cols)`` as :func:`hungarian_match`."""
        with torch.no_grad():
            cost = matching_cost(
                logits,
                boxes,
                gt_labels,
                gt_boxes,
                normaliser=normaliser,
                class_weight=self.class_weight,
                l1_weight=self.l1_weight,
                giou_weight=self.giou_weight,
            )
        return hungarian_match(cost)

    def losses(
        self, output: SparseHeadOutput, boxes: list[Tensor], labels: list[Tensor]
    ) -> dict[str, Tensor]:
        """Set-prediction losses summed over the stages (each weighted by its coefficient, divided by the
        number of ground-truth boxes in the batch): ``loss_cls`` (focal), ``loss_l1``, ``loss_giou``.

        Args:
            output: predictions for B images.
            boxes: B tensors (N_i, 4) in the (letterboxed) image pixels of the head's input.
            labels: B tensors (N_i,) int64 in ``[0, num_classes)``.
        """
        batch = output.logits[0].shape[0]
        if len(boxes) != batch or len(labels) != batch:
            raise ValueError(f"got {len(boxes)} box and {len(labels)} label lists for a batch of {batch}")
        for image_boxes, image_labels in zip(boxes, labels, strict=True):
            if image_labels.numel() and (image_labels.min() < 0 or image_labels.max() >= self.num_classes):
                raise ValueError(f"labels must lie in [0, {self.num_classes}), got {image_labels.tolist()}")
            if image_boxes.shape[0] > self.num_proposals:
                raise ValueError(
                    f"an image has {image_boxes.shape[0]} ground-truth boxes but the sparse head has only "
                    f"{self.num_proposals} proposals (model.head.sparse.num_proposals): raise it"
                )
        device = output.logits[0].device
        width, height = output.image_size
        normaliser = torch.tensor([width, height, width, height], dtype=torch.float32, device=device)
        num_boxes = max(sum(int(b.shape[0]) for b in boxes), 1)
        gt_boxes = [b.float().to(device) for b in boxes]
        total = {key: output.logits[0].new_zeros(()) for key in ("loss_cls", "loss_l1", "loss_giou")}
        for stage_logits, stage_boxes in zip(output.logits, output.boxes, strict=True):
            cls_targets = torch.zeros_like(stage_logits)
            matched_pred, matched_gt = [], []
            for index in range(batch):
                rows, cols = self.match(
                    stage_logits[index], stage_boxes[index], gt_boxes[index], labels[index], normaliser
                )
                cls_targets[index, rows, labels[index][cols]] = 1.0
                matched_pred.append(stage_boxes[index, rows])
                matched_gt.append(gt_boxes[index][cols])
            predicted, target = torch.cat(matched_pred), torch.cat(matched_gt)
            focal = sigmoid_focal_loss(
                stage_logits, cls_targets, alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA, reduction="sum"
            )
            l1 = (predicted / normaliser - target / normaliser).abs().sum()
            giou = generalized_box_iou_loss(predicted, target, reduction="sum") if len(target) else l1 * 0
            total["loss_cls"] = total["loss_cls"] + self.class_weight * focal / num_boxes
            total["loss_l1"] = total["loss_l1"] + self.l1_weight * l1 / num_boxes
            total["loss_giou"] = total["loss_giou"] + self.giou_weight * giou / num_boxes
        return total

    # ------------------------------------------------------------------------------------------
    # Inference
    # ------------------------------------------------------------------------------------------

    def candidates(
        self, output: SparseHeadOutput, image_size: int, *, stage: int | None = None
    ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per image: the top ``max_detections`` (proposal, class) pairs of stage ``stage`` (an index
        into the stages; default: ``readout_stage``, the last unless set) above ``score_threshold``,
        ``(boxes (D, 4), scores (D,), labels (D,))``, scores descending. No NMS."""
        stage = self.readout_stage if stage is None else stage
        logits, boxes = output.logits[stage], output.boxes[stage]
        batch, num_proposals, num_classes = logits.shape
        scores = logits.sigmoid().flatten(1)  # (B, P*K), proposal-major
        top_k = min(self.max_detections, num_proposals * num_classes)
        results = []
        for index in range(batch):
            top_scores, order = scores[index].topk(top_k)
            keep = top_scores > self.score_threshold
            top_scores, order = top_scores[keep], order[keep]
            proposal, label = order // num_classes, order % num_classes
            image_boxes = clip_boxes_to_image(boxes[index, proposal], (image_size, image_size))
            results.append((image_boxes, top_scores, label))
        return results

    def predict(
        self, output: SparseHeadOutput, image_size: int, *, stage: int | None = None
    ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Final detections per image in head-input pixels (the same as :meth:`candidates`: no NMS)."""
        return self.candidates(output, image_size, stage=stage)
