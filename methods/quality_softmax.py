"""LSTS's aggregation unit as a fusion: a per-position quality score per input, softmax across inputs.

LSTS (Jiang et al. 2020, Sec. 3.3-3.4 and 4.2 "Aggregation Unit") fuses two feature maps by a
"quality estimation network" that maps each input to a one-channel raw score map; the scores are
normalised by a softmax across the inputs at every position and the inputs summed with these
weights (Eq. 7, 8):

    q_i(p) = Q(F_i)(p)                        the same small conv stack for every input i
    w_i(p) = exp(q_i(p)) / sum_j exp(q_j(p))  over the reference and the valid supports
    out(p) = sum_i w_i(p) F_i(p)

As a window fusion the inputs are the reference (index 0) and the T aligned supports, so the unit
is the paper's 2-way softmax generalised to 1 + T ways; invalid (padded) supports get weight exactly
0 and are never read.

Where the paper's text and the official code (``jiangzhengkai/LSTS``,
``lsts_rfcn/symbols/lsts_network_{gaussian,uniform}.py``, ``quality_network`` and ``init_weight``)
differ, the default follows the code:

* layers: code 1x1 -> 3x3 -> 3x3 (``layout="code"``, default); text 3x3 -> 1x1 -> 1x1
  (``layout="paper"``). Widths: 256 and 16 of 1024 input channels in both; scaled here to
  ``hidden_channels = C // 2`` and ``score_channels = C // 8`` (32 and 8 at C = 64, the scaling
  of ``notes/wave2-methods.md`` 1.5);
* no nonlinearity between the convs in the code (the stack is linear); ``relu=True`` puts a ReLU
  after the first two (the text does not say);
* the inputs go through the convs stacked on the batch axis (shared weights, each scored on its
  own, not on their concatenation), weights N(0, 0.01^2) and zero biases: at initialisation all
  scores are ~0 and the unit starts as the plain average of its inputs.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from harness.aggregation import Fusion, FusionOutput, masked_softmax, register
from methods._checks import check_channels, check_fusion_inputs

Layout = Literal["code", "paper"]
LAYOUTS = {"code": (1, 3, 3), "paper": (3, 1, 1)}  # kernel sizes of the three convs
INIT_STD = 0.01  # official init_weight: mx.random.normal(0, 0.01), zero bias


class QualityNetwork(nn.Sequential):
    """The score stack ``(N, C, H, W) -> (N, 1, H, W)``: three convs (``LAYOUTS``), optional ReLUs."""

    def __init__(
        self, channels: int, *, hidden_channels: int, score_channels: int, layout: Layout, relu: bool
    ):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {tuple(LAYOUTS)}, got {layout!r}")
        for name, width in (("hidden_channels", hidden_channels), ("score_channels", score_channels)):
            if width < 1:
                raise ValueError(f"{name} must be >= 1, got {width}")
        widths = (channels, hidden_channels, score_channels, 1)
        layers: list[nn.Module] = []
        for index, kernel in enumerate(LAYOUTS[layout]):
            conv = nn.Conv2d(widths[index], widths[index + 1], kernel_size=kernel, padding=kernel // 2)
            nn.init.normal_(conv.weight, std=INIT_STD)
            nn.init.zeros_(conv.bias)
            layers.append(conv)
            if relu and index < 2:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


@register("fusion", "quality_softmax")
class QualitySoftmaxFusion(Fusion):
    """Softmax across frames of a learned per-position quality score (LSTS's aggregation unit).

    Args:
        channels: C of the features.
        hidden_channels: width of the first conv (default ``channels // 2``).
        score_channels: width of the second conv (default ``channels // 8``).
        layout: ``"code"`` (1x1, 3x3, 3x3: the official code, default) or ``"paper"`` (3x3, 1x1, 1x1).
        relu: ReLU after the first two convs (the official code has none).

    ``forward(reference (B, C, H, W), aligned (B, T, C, H, W), valid (B, T) bool)`` returns
    ``FusionOutput(features (B, C, H, W), weights (B, 1 + T, H, W))``, weights summing to 1 over
    frames at each position, index 0 the reference, exactly 0 for invalid supports.
    """

    def __init__(
        self,
        channels: int,
        *,
        hidden_channels: int | None = None,
        score_channels: int | None = None,
        layout: Layout = "code",
        relu: bool = False,
    ):
        super().__init__(channels)
        self.quality = QualityNetwork(
            channels,
            hidden_channels=max(channels // 2, 1) if hidden_channels is None else hidden_channels,
            score_channels=max(channels // 8, 1) if score_channels is None else score_channels,
            layout=layout,
            relu=relu,
        )

    def frame_weights(self, frames: Tensor, frame_valid: Tensor) -> Tensor:
        """``frames`` (B, 1 + T, C, H, W) with invalid ones zeroed, ``frame_valid`` (B, 1 + T) ->
        weights (B, 1 + T, H, W)."""
        b, n, c, h, w = frames.shape
        scores = self.quality(frames.reshape(b * n, c, h, w)).reshape(b, n, h, w)  # (B*(1+T), 1, H, W)
        return masked_softmax(scores, frame_valid[:, :, None, None], dim=1)

    def forward(self, reference: Tensor, aligned: Tensor, valid: Tensor) -> FusionOutput:
        check_fusion_inputs(reference, aligned, valid)
        check_channels("reference", reference, self.channels, dim=1)
        frames = torch.cat([reference.unsqueeze(1), aligned], dim=1)  # (B, 1 + T, C, H, W)
        frame_valid = torch.cat([valid.new_ones(valid.shape[0], 1), valid], dim=1)  # (B, 1 + T)
        # Padded slots may hold anything (even NaN): zero them before scoring and summing.
        frames = torch.where(frame_valid[:, :, None, None, None], frames, torch.zeros_like(frames))
        weights = self.frame_weights(frames, frame_valid)  # (B, 1 + T, H, W)
        fused = (weights.unsqueeze(2) * frames).sum(dim=1)  # (B, C, H, W)
        return FusionOutput(features=fused, weights=weights)
