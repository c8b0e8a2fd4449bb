"""Small stream aggregators the engine tests run (not registered: they test the harness, not a method).

* :class:`WindowAsStream`: a window aggregator run causally in stream mode. Every frame is a keyframe
  (interval 1); the state keeps the previous ``num * stride`` frames' full features (and images), so
  the supports are those of the ``causal`` support strategy with ``boundary="pad"``. Stream inference
  with it must give the window engine's detections for that strategy, and it would not if state
  leaked from one video into the next (the first frames of a video pad with copies of its frame 0).
* :class:`HoldKeyframe`: DFF without flow: a non-keyframe's features are its video's last keyframe's.
  Every frame's detections are then its keyframe's, which makes keyframe placement per video visible.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.aggregation import AggregationOutput, StreamAggregator, StreamFrame, TemporalContext


class WindowAsStream(StreamAggregator):
    """``window`` (a window aggregator) on the previous ``num`` frames at ``stride``, frame by frame."""

    def __init__(self, window: Any, *, num: int, stride: int = 1):
        super().__init__(keyframe_interval=1)
        self.window = window
        self.num, self.stride = num, stride
        self.needs_images = bool(window.needs_images)

    def init_state(self) -> dict[str, list]:
        return {"history": []}  # (frame_id, features (C, H, W), image (3, S, S) | None), oldest first

    def step(self, frame: StreamFrame, states: list[Any]) -> AggregationOutput:
        if not bool(frame.keyframe.all()):
            raise ValueError("WindowAsStream runs every frame as a keyframe (interval 1)")
        support_ids, support_feats, support_images = [], [], []
        for row, state in enumerate(states):
            history = state["history"]
            image = frame.images[row] if frame.images is not None else None
            history.append((int(frame.frame_ids[row]), frame.high[row], image))
            del history[: max(0, len(history) - (self.num * self.stride + 1))]
            # position p - k * stride, clamped to frame 0 ("pad"): history holds p - num*stride .. p
            picked = [history[max(len(history) - 1 - k * self.stride, 0)] for k in range(self.num, 0, -1)]
            support_ids.append([entry[0] for entry in picked])
            support_feats.append(torch.stack([entry[1] for entry in picked]))
            if image is not None:
                support_images.append(torch.stack([entry[2] for entry in picked]))
        offsets = torch.tensor(support_ids, dtype=torch.int64) - frame.frame_ids.cpu()[:, None]  # (B, T)
        ctx = TemporalContext(
            reference=frame.high,
            supports=torch.stack(support_feats),  # (B, T, C, H, W)
            offsets=offsets.to(frame.high.device),
            valid=torch.ones(offsets.shape, dtype=torch.bool, device=frame.high.device),
            reference_image=frame.images,
            support_images=torch.stack(support_images) if support_images else None,
            feature_stride=frame.feature_stride,
        )
        return self.window(ctx)


class HoldKeyframe(StreamAggregator):
    """Keyframes: their own full features; non-keyframes: the video's last keyframe's features,
    times a learnable ``gain`` (1 at init: the output is then exactly the held features).

    ``calls`` records every step as ``(keyframe (B,) bool, frame_ids (B,) int64)``.
    """

    def __init__(self, *, keyframe_interval: int):
        super().__init__(keyframe_interval=keyframe_interval)
        self.gain = nn.Parameter(torch.ones(()))
        self.calls: list[tuple[list[bool], list[int]]] = []

    def step(self, frame: StreamFrame, states: list[Any]) -> AggregationOutput:
        self.calls.append((frame.keyframe.tolist(), frame.frame_ids.tolist()))
        for index, row in enumerate(frame.key_rows.tolist()):
            states[row]["features"] = frame.high[index]
        missing = [row for row, state in enumerate(states) if "features" not in state]
        if missing:
            raise ValueError(f"rows {missing} reached a non-keyframe before any keyframe")
        features = torch.stack([state["features"] for state in states])  # (B, C, H, W)
        held = torch.where(frame.keyframe[:, None, None, None], features, features * self.gain)
        return AggregationOutput({"main": held}, {"keyframe": frame.keyframe.clone()})
