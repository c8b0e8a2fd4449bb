"""LSTS's framework (Jiang et al., ECCV 2020, Sec. 3.1, 3.3, 3.4): sparse keyframes, SRFU and DFA.

``aggregator:lsts`` is a stream method (``harness.aggregation.StreamAggregator``): every
``keyframe_interval``-th frame of a video (10, the paper's default) gets the full backbone, the others
only its low-level part. Per video it keeps a keyframe *memory*:

* **SRFU** (keyframes, Eq. 7): the previous memory is propagated onto the new keyframe and fused with
  the keyframe's own features: ``memory_update="fixed"`` (0.5 / 0.5: the registered ``average``
  fusion), ``"quality"`` (a registered fusion chosen by ``quality_fusion``, the paper's aggregation
  unit being ``fusion:quality_softmax``) or ``"none"`` (Table 2 (a): the keyframe's features alone).
  The fused map is the keyframe's task feature and its new memory (official test code:
  ``MEMORY_UPDATE_RATIO: 1.0`` in ``experiments/lsts_rfcn/cfgs/lsts_*.yaml``).
* **DFA** (non-keyframes, Eq. 8): the low-level features are lifted to the high level (``transform``:
  the cheap Transform unit, else a 2x pool + 1x1 conv adapter), the memory is propagated onto them,
  and the two are fused: ``nonkey_aggregation="none"`` (the propagated memory alone, DFF-like),
  ``"fixed"`` (0.5 / 0.5) or ``"quality"``. Non-keyframes never chain: each reads its keyframe's
  memory (official ``lsts_rfcn/core/tester.py``: the non-key predictor gets the key frame's feature).
* **Propagation**: any registered alignment by name (``propagation``: ``lsts``, ``flow_warp``,
  ``matchtrans``, ``non_local``, or ``identity``, ``stsn``...), one module shared by SRFU and DFA (the
  official code shares its sampling locations between the two). It compares the current features
  (keyframe features, or the lifted low-level ones) with the memory and moves the memory: the
  official LSTS uses the memory as key and value (``lsts_rfcn/symbols/lsts_network_*.py``).
  ``flow_warp`` (the DFF-style flow columns of Table 2) reads the images: the memory's keyframe image
  is kept in the state.

Training (``forward_clip``, the harness's stream path): the LSTS triplet (old keyframe, new keyframe,
current frame; ``SupportSpec(strategy="keyframe_triplet", num=2, radius=10)``): the old keyframe
starts the memory with its raw features (the official training has no recursion before it), the new
keyframe updates it by SRFU, the current frame gets DFA; the loss is on the current frame. When the
old and the new keyframe are the same frame (clamped at a video's start), the memory is the new
keyframe's features (official ``eq_flag_key2key``); when the new keyframe is the current frame, its
output is the keyframe's (``eq_flag_key2cur``).

Scale-down and deviations (the paper's detector is R-FCN on ResNet-101 at stride 16, low = res4b3):
the harness's low-level features are at stride 4 with ``width`` channels, the high-level ones at
stride 8 with C channels, so the Transform starts with a stride-2 conv. Its layers follow the
official ``low2high`` in kind, not width (official: 1x1x256, 3x3x256, 3x3x1024 with ReLUs): here a
3x3 stride-2 conv to ``transform_channels`` (default C / 2), a 3x3 conv, a 1x1 conv to C, ReLUs
between, the last layer linear because the backbone's output (a 1x1 projection) is signed. At the
default 128 px frames it costs about 15% of ``forward_high``'s FLOPs (the measurement's
``transform`` vs ``backbone_high`` parts), where the paper's costs about 6% of its network.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from harness.aggregation import (
    DEFAULT_KEYFRAME_INTERVAL,
    REGISTRY,
    AggregationOutput,
    Fusion,
    StreamAggregator,
    StreamFrame,
    TemporalContext,
    register,
)
from harness.measure import scope
from methods._checks import check_channels

Update = Literal["none", "fixed", "quality"]
_UPDATES = ("none", "fixed", "quality")
FIXED_FUSION = "average"  # the 0.5 / 0.5 weights of Table 2 (b), (d), (e): mean of two inputs


class Transform(nn.Module):
    """The cheap Transform unit: low-level ``(N, Cl, 2H, 2W)`` -> high-level ``(N, C, H, W)``.

    3x3 conv stride 2 (Cl -> hidden), ReLU, 3x3 conv (hidden -> hidden), ReLU, 1x1 conv (hidden -> C).
    """

    def __init__(self, low_channels: int, channels: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(low_channels, hidden, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, low: Tensor) -> Tensor:
        return self.layers(low)


class LowAdapter(nn.Module):
    """No Transform: low-level ``(N, Cl, 2H, 2W)`` -> ``(N, C, H, W)`` by a 2x average pool and a 1x1
    conv, the least that brings stride-4 features to the head's stride and width (the paper feeds its
    raw low features, already at the head's stride, which this backbone does not have)."""

    def __init__(self, low_channels: int, channels: int):
        super().__init__()
        self.project = nn.Conv2d(low_channels, channels, 1)

    def forward(self, low: Tensor) -> Tensor:
        return self.project(nn.functional.avg_pool2d(low, 2))


def _check_update(name: str, value: str) -> None:
    if value not in _UPDATES:
        raise ValueError(f"{name} must be one of {_UPDATES}, got {value!r}")


@register("aggregator", "lsts")
class LSTSAggregator(StreamAggregator):
    """LSTS's sparse keyframes with SRFU (memory update) and DFA (non-keyframe aggregation).

    Args:
        channels: C of the backbone's full features (what the head reads).
        keyframe_interval: every how many frames a keyframe (>= 1; 1 = full features on every frame).
        propagation: registered alignment name that moves the memory; ``propagation_kwargs`` its kwargs.
        memory_update: SRFU, ``"none"`` / ``"fixed"`` / ``"quality"``.
        nonkey_aggregation: DFA, ``"none"`` / ``"fixed"`` / ``"quality"``.
        transform: lift low-level features with the Transform unit (else the pool + 1x1 adapter).
        quality_fusion: registered fusion name of the quality-aware updates (``quality_fusion_kwargs``).
        low_channels: channels of the backbone's low-level features (``BackboneConfig.width``).
        transform_channels: hidden width of the Transform (default C / 2).
        flownet_weights: pretrained flow-net weights for ``propagation="flow_warp"`` (filled in by
            ``AggregationConfig.pretrained``).

    State per video: ``memory`` (C, H, W), ``key_frame_id``, ``key_image`` (3, S, S) or None.

    With ``nonkey_aggregation="none"`` the lifted low-level features serve only as the propagation's
    query: a propagation that ignores the reference features (``identity``, ``flow_warp``) then leaves
    the lift unused (Table 2 (a)-(c) with flow: the non-keyframe is the warped memory alone).
    """

    def __init__(
        self,
        channels: int,
        *,
        keyframe_interval: int = DEFAULT_KEYFRAME_INTERVAL,
        propagation: str = "lsts",
        propagation_kwargs: dict[str, Any] | None = None,
        memory_update: Update = "quality",
        nonkey_aggregation: Update = "quality",
        transform: bool = True,
        quality_fusion: str = "quality_softmax",
        quality_fusion_kwargs: dict[str, Any] | None = None,
        low_channels: int = 32,
        transform_channels: int | None = None,
        flownet_weights: str | None = None,
    ):
        super().__init__(keyframe_interval=keyframe_interval)
        _check_update("memory_update", memory_update)
        _check_update("nonkey_aggregation", nonkey_aggregation)
        self.channels, self.low_channels = channels, low_channels
        self.memory_update, self.nonkey_aggregation = memory_update, nonkey_aggregation
        propagation_kwargs = dict(propagation_kwargs or {})
        if flownet_weights is not None:
            propagation_kwargs["flownet_weights"] = flownet_weights
        self.propagation_name = propagation
        self.propagation = REGISTRY.get("alignment", propagation)(channels=channels, **propagation_kwargs)
        if self.propagation.needs_oracle_flow:
            raise ValueError(
                f"propagation {propagation!r} {propagation_kwargs} needs oracle flow, which a stream "
                "method does not get (use a flow net or images)"
            )
        self.needs_images = bool(self.propagation.needs_images)
        quality_fusion_kwargs = dict(quality_fusion_kwargs or {})
        self.memory_fusion = self._fusion(memory_update, quality_fusion, quality_fusion_kwargs)
        self.nonkey_fusion = self._fusion(nonkey_aggregation, quality_fusion, quality_fusion_kwargs)
        hidden = transform_channels if transform_channels is not None else max(1, channels // 2)
        self.lift: nn.Module = (
            Transform(low_channels, channels, hidden) if transform else LowAdapter(low_channels, channels)
        )

    def _fusion(self, mode: str, quality: str, kwargs: dict[str, Any]) -> Fusion | None:
        if mode == "none":
            return None
        if mode == "fixed":
            return REGISTRY.get("fusion", FIXED_FUSION)(channels=self.channels)
        return REGISTRY.get("fusion", quality)(channels=self.channels, **kwargs)

    # ------------------------------------------------------------------------------------------

    def _propagate(
        self,
        current: Tensor,
        memory: Tensor,
        offsets: Tensor,
        images: Tensor | None,
        key_images: Tensor | None,
        feature_stride: int,
    ) -> Tensor:
        """Memory ``(N, C, H, W)`` moved onto ``current`` ``(N, C, H, W)``; ``offsets`` (N,) int64 of
        the memory's keyframe relative to the current frame."""
        ctx = TemporalContext(
            reference=current,
            supports=memory.unsqueeze(1),  # (N, 1, C, H, W)
            offsets=offsets.unsqueeze(1),
            valid=torch.ones((current.shape[0], 1), dtype=torch.bool, device=current.device),
            reference_image=images,
            support_images=key_images.unsqueeze(1) if key_images is not None else None,
            feature_stride=feature_stride,
        )
        return self.propagation(ctx).features[:, 0]

    def _fuse(self, fusion: Fusion, current: Tensor, aligned: Tensor) -> Tensor:
        valid = torch.ones((current.shape[0], 1), dtype=torch.bool, device=current.device)
        return fusion(current, aligned.unsqueeze(1), valid).features

    def _keyframes(self, frame: StreamFrame, states: list[Any]) -> Tensor:
        """SRFU on the keyframe rows: their task features (R, C, H, W); memories updated."""
        rows = frame.key_rows.tolist()
        high = frame.high
        check_channels("high", high, self.channels, dim=1)
        task = high
        ids = frame.frame_ids.tolist()
        # rows whose video has a memory from another keyframe (eq_flag_key2key: the same frame -> none)
        update = [
            i
            for i, row in enumerate(rows)
            if "memory" in states[row] and states[row]["key_frame_id"] != ids[row]
        ]
        if update and self.memory_fusion is not None:
            index = torch.tensor(update, dtype=torch.int64, device=high.device)
            prev = [states[rows[i]] for i in update]
            memory = torch.stack([state["memory"] for state in prev])  # (U, C, H, W)
            offsets = torch.tensor(
                [state["key_frame_id"] - ids[rows[i]] for i, state in zip(update, prev, strict=True)],
                dtype=torch.int64,
                device=high.device,
            )
            images = key_images = None
            if self.needs_images:
                images = frame.images[[rows[i] for i in update]]
                key_images = torch.stack([state["key_image"] for state in prev])
            with scope("srfu"):
                with scope("srfu_propagation"):
                    aligned = self._propagate(
                        high[index], memory, offsets, images, key_images, frame.feature_stride
                    )
                fused = self._fuse(self.memory_fusion, high[index], aligned)
            task = high.index_copy(0, index, fused)
        for i, row in enumerate(rows):
            states[row] = {
                "memory": task[i],
                "key_frame_id": ids[row],
                "key_image": frame.images[row] if self.needs_images else None,
            }
        return task

    def _non_keyframes(self, frame: StreamFrame, states: list[Any], rows: list[int]) -> Tensor:
        """DFA on the non-keyframe rows: their task features (N, C, H, W)."""
        missing = [row for row in rows if "memory" not in states[row]]
        if missing:
            raise ValueError(f"rows {missing} reached a non-keyframe without a keyframe memory")
        low = frame.low[rows]
        check_channels("low", low, self.low_channels, dim=1)
        with scope("transform"):
            lifted = self.lift(low)  # (N, C, H, W)
        memory = torch.stack([states[row]["memory"] for row in rows])
        offsets = torch.tensor(
            [states[row]["key_frame_id"] - int(frame.frame_ids[row]) for row in rows],
            dtype=torch.int64,
            device=low.device,
        )
        images = key_images = None
        if self.needs_images:
            images = frame.images[rows]
            key_images = torch.stack([states[row]["key_image"] for row in rows])
        with scope("dfa"):
            with scope("dfa_propagation"):
                aligned = self._propagate(lifted, memory, offsets, images, key_images, frame.feature_stride)
            if self.nonkey_fusion is None:
                return aligned
            return self._fuse(self.nonkey_fusion, lifted, aligned)

    def step(self, frame: StreamFrame, states: list[Any]) -> AggregationOutput:
        """Task features (B, C, H, W) of one frame per video: SRFU on keyframes, DFA on the others."""
        frame.validate()
        if self.needs_images and frame.images is None:
            raise ValueError(f"propagation {self.propagation_name!r} needs the frames' images")
        b = frame.batch_size
        outputs: Tensor | None = None
        parts: list[tuple[Tensor, Tensor]] = []
        if frame.high.shape[0]:
            parts.append((frame.key_rows, self._keyframes(frame, states)))
        rest = (~frame.keyframe).nonzero().flatten()
        if len(rest):
            parts.append((rest, self._non_keyframes(frame, states, rest.tolist())))
        for rows, features in parts:
            if outputs is None:
                outputs = features.new_zeros((b, *features.shape[1:]))
            outputs = outputs.index_copy(0, rows, features)  # out of place: gradients flow
        return AggregationOutput({"main": outputs}, {})
