"""The one detector every method shares: backbone -> temporal aggregator -> head(s).

The detector never names a method: the aggregator comes from
``harness.aggregation.build_aggregator``; a method with several streams (SSVD) gets one head per
stream and the streams' boxes are fused by class-wise NMS at ``box_fusion_iou`` (late fusion).

Phase 1 (still-image detector) is this same model fed no supports (T = 0: the window aggregator
returns the reference features unchanged). Phase 2 loads the phase-1 weights with
:meth:`VideoDetector.load_phase1`: backbone and heads load strictly, the aggregator keeps its init.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from harness.aggregation import (
    AggregationOutput,
    StreamClip,
    StreamFrame,
    TemporalAggregator,
    TemporalContext,
    build_aggregator,
)
from harness.config import HEAD_KINDS
from harness.measure import scope
from harness.model.backbone import ResNetBackbone
from harness.model.head import FCOSHead
from harness.model.sparse_head import SparseHead

DetectionTriple = tuple[Tensor, Tensor, Tensor]  # boxes (D, 4), scores (D,), labels (D,)


class VideoDetector(nn.Module):
    """Backbone + temporal aggregator + one head per aggregator stream (``model.head.kind``: dense or sparse).

    Args:
        backbone: images uint8 ``(N, 3, S, S)`` -> features ``(N, C, S/8, S/8)``.
        aggregator: a :class:`~harness.aggregation.TemporalAggregator`.
        heads: one head per name in ``aggregator.stream_names``.
        box_fusion_iou: NMS IoU that fuses several streams' boxes.
        per_stream_nms: several streams: run each head's own NMS before the fusion NMS (True), or
            fuse every head's candidates before NMS (score threshold, top-k) by one NMS (False).
        max_detections: detections kept per frame after stream fusion.
    """

    def __init__(
        self,
        *,
        backbone: ResNetBackbone,
        aggregator: TemporalAggregator,
        heads: nn.ModuleDict,
        box_fusion_iou: float = 0.5,
        per_stream_nms: bool = True,
        max_detections: int = 100,
    ):
        super().__init__()
        if set(heads.keys()) != set(aggregator.stream_names):
            raise ValueError(
                f"heads {sorted(heads.keys())} must match the aggregator's streams "
                f"{sorted(aggregator.stream_names)}"
            )
        self.backbone = backbone
        self.aggregator = aggregator
        self.heads = heads
        self.box_fusion_iou = box_fusion_iou
        self.per_stream_nms = per_stream_nms
        self.max_detections = max_detections

    memory_format: torch.memory_format = torch.contiguous_format  # of the batched training images

    def use_channels_last(self) -> None:
        """Lay weights and training images out channels-last (NHWC): the same numbers up to float
        rounding, about 7% faster training steps on the CPU (``tests/benchmarks/test_bench_train.py``)."""
        self.memory_format = torch.channels_last
        self.to(memory_format=torch.channels_last)

    @property
    def feature_stride(self) -> int:
        return self.backbone.feature_stride

    @scope("backbone")
    def extract(self, images: Tensor) -> Tensor:
        """uint8 images ``(N, 3, S, S)`` -> backbone features ``(N, C, S/8, S/8)``."""
        return self.backbone(images)

    def extract_low(self, images: Tensor) -> Tensor:
        """uint8 images ``(N, 3, S, S)`` -> low-level features ``(N, width, S/4, S/4)`` (stream methods).

        Timed as part ``backbone_low`` inside ``backbone``, so a stream frame's ``backbone`` is
        comparable with a window frame's."""
        with scope("backbone"), scope("backbone_low"):
            return self.backbone.forward_low(images)

    def extract_high(self, low: Tensor) -> Tensor:
        """Low-level ``(R, width, S/4, S/4)`` -> full features ``(R, C, S/8, S/8)`` (keyframes only);
        part ``backbone_high`` inside ``backbone``."""
        with scope("backbone"), scope("backbone_high"):
            return self.backbone.forward_high(low)

    def _check_streams(self, output: AggregationOutput) -> AggregationOutput:
        missing = set(self.aggregator.stream_names) - set(output.streams)
        if missing:
            raise RuntimeError(f"{type(self.aggregator).__name__} did not return streams {sorted(missing)}")
        return output

    @scope("aggregation")
    def stream_step(self, frame: StreamFrame, states: list[Any]) -> AggregationOutput:
        """One step of a stream aggregator (``harness.aggregation.StreamAggregator.step``)."""
        frame.validate()
        return self._check_streams(self.aggregator.step(frame, states))

    @scope("aggregation")
    def aggregate(
        self,
        reference_feats: Tensor,
        support_feats: Tensor,
        offsets: Tensor,
        valid: Tensor,
        *,
        images: Tensor | None = None,
        support_images: Tensor | None = None,
        oracle_flow: Tensor | None = None,
    ) -> AggregationOutput:
        """Run the aggregator on ``reference_feats (B, C, H, W)`` and ``support_feats (B, T, C, H, W)``.

        ``images (B, 3, S, S)`` / ``support_images (B, T, 3, S, S)`` uint8 are passed on unchanged
        (each consumer normalises them) only when the aggregator declares ``needs_images``;
        ``oracle_flow (B, T, 2, S, S)`` only when it declares ``needs_oracle_flow`` (an error when it
        is needed but missing).
        """
        reference_image = support_image_tensor = flow = None
        if self.aggregator.needs_images and support_feats.shape[1] > 0:
            if images is None or support_images is None:
                raise ValueError(f"{type(self.aggregator).__name__} needs images but none were given")
            reference_image, support_image_tensor = images, support_images
        if self.aggregator.needs_oracle_flow and support_feats.shape[1] > 0:
            if oracle_flow is None:
                raise ValueError(
                    f"{type(self.aggregator).__name__} needs oracle flow but none was given: the data "
                    "pipeline loads it for aggregators that declare needs_oracle_flow (SynthVID only)"
                )
            flow = oracle_flow
        context = TemporalContext(
            reference=reference_feats,
            supports=support_feats,
            offsets=offsets,
            valid=valid,
            reference_image=reference_image,
            support_images=support_image_tensor,
            oracle_flow=flow,
            feature_stride=self.feature_stride,
        )
        return self._check_streams(self.aggregator(context))

    def forward_batch(self, batch: Any) -> AggregationOutput:
        """Backbone over reference + supports in one call, then aggregation (see :meth:`losses`).

        A stream aggregator (``mode == "stream"``) gets the batch as a :class:`StreamClip`: the
        supports are its keyframes (full features), the reference its current frame (low-level
        features only)."""
        images, support_images = batch.images, batch.support_images
        num_refs, num_supports = support_images.shape[:2]
        if images.shape[0] != num_refs:
            raise ValueError(
                f"images {tuple(images.shape)} and support_images {tuple(support_images.shape)} disagree"
            )
        # (B, 3, S, S) + (B, T, 3, S, S) -> (B + B*T, 3, S, S): one batched backbone call
        all_images = torch.cat([images, support_images.flatten(0, 1)], dim=0)
        all_images = all_images.contiguous(memory_format=self.memory_format)
        if self.aggregator.mode == "stream":
            return self._forward_clip(batch, all_images)
        all_feats = self.extract(all_images)
        reference_feats = all_feats[:num_refs]
        # (B*T, C, H, W) -> (B, T, C, H, W)
        support_feats = all_feats[num_refs:].unflatten(0, (num_refs, num_supports))
        return self.aggregate(
            reference_feats,
            support_feats,
            batch.offsets,
            batch.valid,
            images=images,
            support_images=support_images,
            oracle_flow=batch.oracle_flow,
        )

    def _forward_clip(self, batch: Any, all_images: Tensor) -> AggregationOutput:
        """Stream training: low-level features of every frame, full features of the supports only."""
        num_refs, num_supports = batch.support_images.shape[:2]
        all_low = self.extract_low(all_images)  # (B + B*T, Cl, S/4, S/4)
        key_low = all_low[num_refs:]
        key_high = self.extract_high(key_low)  # (B*T, C, S/8, S/8)
        with_images = self.aggregator.needs_images
        clip = StreamClip(
            key_low=key_low.unflatten(0, (num_refs, num_supports)),  # (B*T, ...) -> (B, T, ...)
            key_high=key_high.unflatten(0, (num_refs, num_supports)),
            key_offsets=batch.offsets,
            valid=batch.valid,
            current_low=all_low[:num_refs],
            key_images=batch.support_images if with_images else None,
            current_image=batch.images if with_images else None,
            feature_stride=self.feature_stride,
        )
        with scope("aggregation"):
            return self._check_streams(self.aggregator.forward_clip(clip))

    def losses(self, batch: Any) -> dict[str, Tensor]:
        """Training losses for a ``harness.data.dataset.Batch``.

        Every stream's head computes its losses: the dense head focal/GIoU/centerness (``loss_cls``,
        ``loss_box``, ``loss_centerness``), the sparse head its set loss (``loss_cls``, ``loss_l1``,
        ``loss_giou``); with several streams each is suffixed by the stream name
        (``loss_cls_<stream>``). An aggregator may add its own terms as ``aux`` entries whose
        key starts with ``loss_`` (scalars). The training loss is the sum of all returned values.
        """
        output = self.forward_batch(batch)
        boxes = [b.float() for b in batch.boxes]
        losses: dict[str, Tensor] = {}
        single = len(self.heads) == 1
        for name, head in self.heads.items():
            for term, value in head.losses(self.run_head(name, output), boxes, batch.labels).items():
                losses[term if single else f"{term}_{name}"] = value
        for key, value in output.aux.items():
            if key.startswith("loss_"):
                losses[key] = value
        return losses

    def set_readout_stage(self, stage: int | None) -> None:
        """Detect from stage ``stage`` (1-based) of every sparse head instead of its last stage
        (``None``: the last); ``harness.config.TestConfig.head_stage``."""
        for name, head in self.heads.items():
            if stage is not None and not isinstance(head, SparseHead):
                raise ValueError(
                    f"test.head_stage={stage} reads a sparse head's stage, but head {name!r} is a "
                    f"{type(head).__name__} (model.head.kind = 'dense')"
                )
            if isinstance(head, SparseHead):
                head.set_readout_stage(stage)

    def run_head(self, name: str, output: AggregationOutput) -> Any:
        """Head ``name`` on its stream; a proposal-level head also gets the output's proposal context
        (supports and proposal parts, ``harness.aggregation.ProposalLevelAggregator``)."""
        head = self.heads[name]
        context = output.proposal
        if context is None or not context.parts:
            return head(output.streams[name])
        if not isinstance(head, SparseHead):
            names = ", ".join(type(part).__name__ for part in context.parts)
            raise ValueError(
                f"the proposal-level parts ({names}) run inside the sparse head's stages, but head "
                f"{name!r} is a {type(head).__name__}: set model.head.kind = 'sparse'"
            )
        return head(output.streams[name], context)

    @torch.no_grad()
    def detect(self, agg_out: AggregationOutput, image_size: int) -> list[DetectionTriple]:
        """Per reference, in letterboxed pixels: ``(boxes (D, 4), scores (D,), labels (D,))``.

        Several streams: every head's boxes (after its own NMS with ``per_stream_nms``, else its
        thresholded top-k candidates before NMS) are concatenated and fused by class-wise NMS at
        ``box_fusion_iou`` (SSVD's late fusion).
        """
        per_stream = []
        for name, head in self.heads.items():
            with scope("head"):
                raw = self.run_head(name, agg_out)
            with scope("postprocess"):
                if len(self.heads) == 1 or self.per_stream_nms:
                    per_stream.append(head.predict(raw, image_size))
                else:  # one joint NMS below over every stream's thresholded candidates
                    per_stream.append(head.candidates(raw, image_size))
        if len(per_stream) == 1:
            return per_stream[0]
        results = []
        with scope("postprocess"):
            for triples in zip(*per_stream, strict=True):
                boxes = torch.cat([t[0] for t in triples])
                scores = torch.cat([t[1] for t in triples])
                labels = torch.cat([t[2] for t in triples])
                keep = batched_nms(boxes, scores, labels, self.box_fusion_iou)[: self.max_detections]
                results.append((boxes[keep], scores[keep], labels[keep]))
        return results

    def load_phase1(self, checkpoint: Path | str | dict[str, Tensor]) -> list[str]:
        """Load a phase-1 model's weights; return the keys left at their init (the aggregator's, and the
        heads' when the aggregator declares ``fresh_heads``).

        Every key of the checkpoint must exist here with the same shape (strict in that direction);
        keys this model has and the checkpoint lacks are allowed only outside backbone and heads.
        """
        if isinstance(checkpoint, dict):
            state = checkpoint
        else:
            payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
            state = payload["model"] if "model" in payload else payload
        state = self._spread_main_head(state)
        if self.aggregator.fresh_heads:  # the heads keep their fresh init (the aggregator asks for it)
            state = {k: v for k, v in state.items() if not k.startswith("heads.")}
        result = self.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise KeyError(f"phase-1 checkpoint has keys this detector lacks: {result.unexpected_keys[:10]}")
        left_at_init = ("aggregator.", "heads.") if self.aggregator.fresh_heads else ("aggregator.",)
        not_aggregator = [k for k in result.missing_keys if not k.startswith(left_at_init)]
        if not_aggregator:
            raise KeyError(f"phase-1 checkpoint lacks backbone/head keys: {not_aggregator[:10]}")
        return list(result.missing_keys)

    def _spread_main_head(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A phase-1 model has one ``main`` head; a multi-stream model starts every head from it."""
        prefix = "heads.main."
        if "main" in self.heads or not any(k.startswith(prefix) for k in state):
            return state
        spread = {k: v for k, v in state.items() if not k.startswith(prefix)}
        for name in self.heads:
            spread.update(
                {f"heads.{name}." + k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
        return spread


class SingleFrameAggregator(TemporalAggregator):
    """Pass-through for the still-image detector (phase 1, single-frame baseline): T must be 0.

    Built without the registry, so a phase-1 checkpoint has no aggregator weights and is shared by
    every method whose phase-1 configuration agrees.
    """

    def forward(self, ctx: TemporalContext) -> AggregationOutput:
        ctx.validate()
        if ctx.num_supports:
            raise ValueError(f"the single-frame detector takes no supports, got T={ctx.num_supports}")
        return AggregationOutput({"main": ctx.reference}, {})


def build_head(model: Any, *, stride: int) -> nn.Module:
    """One head of kind ``model.head.kind`` (``harness.config.HEAD_KINDS``) on the backbone's output."""
    head = model.head
    if head.kind == "dense":
        return FCOSHead(
            in_channels=model.backbone.out_channels,
            num_classes=model.num_classes,
            channels=head.channels,
            num_convs=head.num_convs,
            stride=stride,
            score_threshold=head.score_threshold,
            nms_iou=head.nms_iou,
            max_detections=head.max_detections,
        )
    if head.kind == "sparse":
        return SparseHead(
            in_channels=model.backbone.out_channels,
            num_classes=model.num_classes,
            stride=stride,
            score_threshold=head.score_threshold,
            max_detections=head.max_detections,
            **dataclasses.asdict(head.sparse),
        )
    raise ValueError(f"unknown model.head.kind {head.kind!r}; known kinds: {', '.join(HEAD_KINDS)}")


def build_detector(model: Any, *, single_frame: bool = False) -> VideoDetector:
    """Build a :class:`VideoDetector` from a ``harness.config.ModelConfig`` (the config -> kwargs edge).

    ``single_frame=True`` ignores ``model.aggregation`` and builds the phase-1 still-image detector
    (a pass-through aggregator and one ``"main"`` head).
    """
    backbone = ResNetBackbone(
        width=model.backbone.width,
        depth=tuple(model.backbone.depth),
        out_channels=model.backbone.out_channels,
    )
    if single_frame:
        aggregator: TemporalAggregator = SingleFrameAggregator()
    else:
        aggregator = build_aggregator(model.aggregation, model.backbone.out_channels)
    heads = nn.ModuleDict(
        {name: build_head(model, stride=backbone.feature_stride) for name in aggregator.stream_names}
    )
    return VideoDetector(
        backbone=backbone,
        aggregator=aggregator,
        heads=heads,
        box_fusion_iou=aggregator.box_fusion_iou,
        per_stream_nms=aggregator.per_stream_nms,
        max_detections=model.head.max_detections,
    )
