"""Dense one-stage detection head (FCOS-style) on a single stride-8 feature map.

Per location the head predicts class logits (sigmoid, one per class), ``ltrb`` distances to the
box sides and a centerness logit. With a single pyramid level there are no size ranges: every
object is assigned to the stride-8 map and a location lying inside several boxes is given to the
smallest one (FCOS's rule for ambiguous locations). Centre sampling keeps only locations within
``center_radius * stride`` of a box centre as positives, which matters for the small synthetic
objects where the whole box is a handful of locations.

Losses (all normalised by the number of positives, at least 1, so an image without objects gives
finite, zero box/centerness losses):

* classification: ``torchvision.ops.sigmoid_focal_loss`` (alpha 0.25, gamma 2), classification bias
  initialised to the prior probability 0.01 so the focal loss starts small;
* box: ``torchvision.ops.generalized_box_iou_loss`` between decoded boxes on positives;
* centerness: binary cross-entropy against ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))``.

Post-processing: score ``sqrt(sigmoid(cls) * sigmoid(centerness))``, score threshold, top-k
candidates, class-wise ``torchvision.ops.batched_nms`` at ``nms_iou``, ``max_detections`` kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image, generalized_box_iou_loss, sigmoid_focal_loss

# Raw regression outputs are exponentiated; clamp so a diverging step cannot produce inf boxes.
_MAX_LOG_DISTANCE = math.log(1e4)


@dataclass
class HeadOutput:
    """Raw head predictions for a batch.

    cls_logits (B, K, H, W); box_distances (B, 4, H, W) ltrb in image pixels (positive);
    centerness_logits (B, 1, H, W).
    """

    cls_logits: Tensor
    box_distances: Tensor
    centerness_logits: Tensor


def location_centers(height: int, width: int, *, stride: int, device: torch.device) -> Tensor:
    """Image-pixel centres of the feature-map cells, ``(H*W, 2)`` as ``(x, y)``, row-major."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


def distances_to_boxes(centers: Tensor, distances: Tensor) -> Tensor:
    """``centers (P, 2)`` + ltrb ``distances (P, 4)`` -> boxes ``(P, 4)`` ``x1, y1, x2, y2``."""
    return torch.cat([centers - distances[:, :2], centers + distances[:, 2:]], dim=1)


class FCOSHead(nn.Module):
    """FCOS-style head on one feature map.

    Args:
        in_channels: channels of the (aggregated) features.
        num_classes: number of object classes (no background class; sigmoid per class).
        channels: width of the shared conv towers.
        num_convs: depth of the classification and regression towers.
        stride: feature stride in image pixels (8).
        score_threshold, nms_iou, max_detections: post-processing.
        center_radius: centre-sampling radius in units of ``stride``.
        pre_nms_top_k: candidates kept per image before NMS.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        channels: int = 64,
        num_convs: int = 2,
        stride: int = 8,
        score_threshold: float = 0.05,
        nms_iou: float = 0.5,
        max_detections: int = 100,
        center_radius: float = 1.5,
        pre_nms_top_k: int = 1000,
        prior_probability: float = 0.01,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.stride = stride
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.max_detections = max_detections
        self.center_radius = center_radius
        self.pre_nms_top_k = pre_nms_top_k
        self.cls_tower = self._tower(in_channels, channels, num_convs)
        self.box_tower = self._tower(in_channels, channels, num_convs)
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.box_regression = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        for module in [self.cls_tower, self.box_tower, self.cls_logits, self.box_regression, self.centerness]:
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.normal_(layer.weight, std=0.01)
                    nn.init.zeros_(layer.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability))

    @staticmethod
    def _tower(in_channels: int, channels: int, num_convs: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for index in range(num_convs):
            layers += [
                nn.Conv2d(in_channels if index == 0 else channels, channels, 3, padding=1),
                nn.GroupNorm(min(8, channels), channels),
                nn.ReLU(inplace=True),
            ]
        return nn.Sequential(*layers)

    def forward(self, features: Tensor) -> HeadOutput:
        """``features (B, C, H, W)`` -> :class:`HeadOutput`."""
        cls_features = self.cls_tower(features)
        box_features = self.box_tower(features)
        log_distances = self.box_regression(box_features).clamp(max=_MAX_LOG_DISTANCE)
        # distances are predicted in units of the stride, so the raw output is O(1) for any stride
        return HeadOutput(
            cls_logits=self.cls_logits(cls_features),
            box_distances=torch.exp(log_distances) * self.stride,
            centerness_logits=self.centerness(box_features),
        )

    # ------------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------------

    def assign_targets(self, centers: Tensor, boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Match every location to at most one ground-truth box.

        Args:
            centers: (P, 2) location centres in image pixels.
            boxes: (N, 4) ground truth ``x1, y1, x2, y2``; labels: (N,) int64.

        Returns:
            matched (P,) int64: index into ``boxes`` or -1 for background;
            box_targets (P, 4): the matched box (undefined where ``matched == -1``).
        """
        num_locations = centers.shape[0]
        if boxes.shape[0] == 0:
            return (
                torch.full((num_locations,), -1, dtype=torch.int64, device=centers.device),
                centers.new_zeros((num_locations, 4)),
            )
        x, y = centers[:, 0:1], centers[:, 1:2]  # (P, 1) each, broadcast against (1, N) boxes
        x1, y1, x2, y2 = (boxes[:, i][None] for i in range(4))
        inside_box = (x > x1) & (x < x2) & (y > y1) & (y < y2)  # (P, N)
        # centre sampling: a (2*radius*stride)-wide square around the box centre, clipped to the box
        radius = self.center_radius * self.stride
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        inside_center = (
            (x > torch.maximum(cx - radius, x1))
            & (x < torch.minimum(cx + radius, x2))
            & (y > torch.maximum(cy - radius, y1))
            & (y < torch.minimum(cy + radius, y2))
        )
        areas = ((x2 - x1) * (y2 - y1)).expand(num_locations, -1)  # (P, N)
        areas = torch.where(inside_box & inside_center, areas, torch.full_like(areas, float("inf")))
        min_area, matched = areas.min(dim=1)  # ambiguous locations go to the smallest box
        matched = torch.where(torch.isinf(min_area), torch.full_like(matched, -1), matched)
        return matched, boxes[matched.clamp(min=0)]

    def losses(self, output: HeadOutput, boxes: list[Tensor], labels: list[Tensor]) -> dict[str, Tensor]:
        """Focal, GIoU and centerness losses for a batch.

        Args:
            output: predictions for B images.
            boxes: B tensors (N_i, 4) in the (letterboxed) image pixels of the head's input.
            labels: B tensors (N_i,) int64 in ``[0, num_classes)``.
        """
        batch, num_classes, height, width = output.cls_logits.shape
        if len(boxes) != batch or len(labels) != batch:
            raise ValueError(f"got {len(boxes)} box and {len(labels)} label lists for a batch of {batch}")
        centers = location_centers(height, width, stride=self.stride, device=output.cls_logits.device)
        matched, box_targets = [], []
        for image_boxes, image_labels in zip(boxes, labels, strict=True):
            if image_labels.numel() and (image_labels.min() < 0 or image_labels.max() >= num_classes):
                raise ValueError(f"labels must lie in [0, {num_classes}), got {image_labels.tolist()}")
            image_matched, image_targets = self.assign_targets(centers, image_boxes.float(), image_labels)
            matched.append(image_matched)
            box_targets.append(image_targets)
        matched_all = torch.stack(matched)  # (B, P)
        targets_all = torch.stack(box_targets)  # (B, P, 4)
        cls_targets = torch.zeros_like(output.cls_logits.flatten(2))  # (B, K, P)
        for index, (image_matched, image_labels) in enumerate(zip(matched, labels, strict=True)):
            positive = image_matched >= 0
            cls_targets[index, image_labels[image_matched[positive]], positive.nonzero()[:, 0]] = 1.0
        positive = matched_all >= 0  # (B, P)
        num_positive = max(int(positive.sum()), 1)

        cls_loss = (
            sigmoid_focal_loss(output.cls_logits.flatten(2), cls_targets, reduction="sum") / num_positive
        )

        # (B, 4, H, W) -> (B, P, 4), positives only -> (Q, 4)
        distances = output.box_distances.flatten(2).transpose(1, 2)[positive]
        positive_centers = centers[None].expand(batch, -1, -1)[positive]  # (Q, 2)
        target_boxes = targets_all[positive]
        predicted_boxes = distances_to_boxes(positive_centers, distances)
        box_loss = generalized_box_iou_loss(predicted_boxes, target_boxes, reduction="sum") / num_positive

        target_distances = torch.cat(
            [positive_centers - target_boxes[:, :2], target_boxes[:, 2:] - positive_centers], dim=1
        )  # (Q, 4) ltrb, all > 0 for an assigned location
        left_right, top_bottom = target_distances[:, [0, 2]], target_distances[:, [1, 3]]
        centerness_target = torch.sqrt(
            (left_right.min(1).values / left_right.max(1).values)
            * (top_bottom.min(1).values / top_bottom.max(1).values)
        )
        centerness_logits = output.centerness_logits.flatten(1)[positive]  # (Q,)
        centerness_loss = (
            F.binary_cross_entropy_with_logits(centerness_logits, centerness_target, reduction="sum")
            / num_positive
        )
        return {"loss_cls": cls_loss, "loss_box": box_loss, "loss_centerness": centerness_loss}

    # ------------------------------------------------------------------------------------------
    # Inference
    # ------------------------------------------------------------------------------------------

    def candidates(self, output: HeadOutput, image_size: int) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per image, thresholded top-k candidates before NMS: ``(boxes (M, 4), scores (M,), labels)``."""
        batch, num_classes, height, width = output.cls_logits.shape
        centers = location_centers(height, width, stride=self.stride, device=output.cls_logits.device)
        # (B, K, H, W) * (B, 1, H, W) -> (B, P, K)
        scores = (
            torch.sqrt(torch.sigmoid(output.cls_logits) * torch.sigmoid(output.centerness_logits))
            .flatten(2)
            .transpose(1, 2)
        )
        distances = output.box_distances.flatten(2).transpose(1, 2)  # (B, P, 4)
        results = []
        for index in range(batch):
            flat_scores = scores[index].reshape(-1)  # (P*K,) location-major
            keep = (flat_scores > self.score_threshold).nonzero()[:, 0]
            kept_scores = flat_scores[keep]
            if kept_scores.numel() > self.pre_nms_top_k:
                kept_scores, order = kept_scores.topk(self.pre_nms_top_k)
                keep = keep[order]
            locations, labels = keep // num_classes, keep % num_classes
            boxes = distances_to_boxes(centers[locations], distances[index, locations])
            boxes = clip_boxes_to_image(boxes, (image_size, image_size))
            results.append((boxes, kept_scores, labels))
        return results

    def predict(self, output: HeadOutput, image_size: int) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Final detections per image in head-input pixels: ``(boxes (D, 4), scores (D,), labels (D,))``."""
        results = []
        for boxes, scores, labels in self.candidates(output, image_size):
            keep = batched_nms(boxes, scores, labels, self.nms_iou)[: self.max_detections]
            results.append((boxes[keep], scores[keep], labels[keep]))
        return results
