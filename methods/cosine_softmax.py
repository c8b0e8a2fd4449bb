"""Adaptive per-position weighting by embedding cosine similarity (FGFA, reused by STSN).

FGFA (Zhu et al. 2017) and STSN (Bertasius et al. 2018, Sec. 4 "Feature Aggregation") weight each
aligned support at every position ``p`` by how similar it looks to the reference there:

    e_k = S(g_k)                                  a small embedding subnetwork, shared by all frames
    c_k(p) = <e_0(p), e_k(p)> / (|e_0(p)| |e_k(p)|)   cosine similarity to the reference (k = 0)
    w_k(p) = exp(c_k(p) / tau) / sum_j exp(c_j(p) / tau)   over the reference and the valid supports
    out(p) = sum_k w_k(p) g_k(p)

The reference is its own support (k = 0, ``c_0 = 1``). STSN's text says the exp'd similarities are
"fed into the softmax layer"; like FGFA's released code we read this as normalising the exp'd
similarities to sum 1, i.e. one softmax over cosine similarities (``temperature`` tau = 1 is the
papers' choice), not a softmax of exponentials.

Paper embedding: 1x1-512, 3x3-512, 1x1-2048 convolutions on 1024-channel features (ReLU after the
first two). Scaled here to the small backbone with the same ratios: ``hidden_channels = channels
// 2`` and ``embed_channels = 2 * channels`` by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.aggregation import Fusion, FusionOutput, masked_softmax, register
from methods._checks import check_channels, check_fusion_inputs


class EmbeddingNetwork(nn.Sequential):
    """FGFA's 3-layer embedding ``(N, C, H, W) -> (N, embed_channels, H, W)``: 1x1, 3x3, 1x1 convs."""

    def __init__(self, channels: int, *, hidden_channels: int, embed_channels: int):
        super().__init__(
            nn.Conv2d(channels, hidden_channels, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, hidden_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, embed_channels, kernel_size=1),
        )


@register("fusion", "cosine_softmax")
class CosineSoftmaxFusion(Fusion):
    """Softmax over frames of the embedding cosine similarity to the reference.

    Args:
        channels: C of the features.
        hidden_channels: width of the first two embedding convs (default ``channels // 2``, the
            paper's 1024 -> 512 ratio).
        embed_channels: width of the embedding (default ``2 * channels``, the paper's 1024 -> 2048).
        temperature: divides the cosine similarity before the softmax (1 = the papers).

    ``forward(reference (B, C, H, W), aligned (B, T, C, H, W), valid (B, T) bool)`` returns
    ``FusionOutput(features (B, C, H, W), weights (B, 1 + T, H, W))``, weights summing to 1 over
    frames at each position, index 0 the reference, exactly 0 for invalid supports.
    """

    def __init__(
        self,
        channels: int,
        *,
        hidden_channels: int | None = None,
        embed_channels: int | None = None,
        temperature: float = 1.0,
    ):
        super().__init__(channels)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.hidden_channels = hidden_channels if hidden_channels is not None else max(channels // 2, 1)
        self.embed_channels = embed_channels if embed_channels is not None else 2 * channels
        self.temperature = temperature
        self.embedding = EmbeddingNetwork(
            channels, hidden_channels=self.hidden_channels, embed_channels=self.embed_channels
        )

    def frame_weights(self, reference: Tensor, aligned: Tensor, valid: Tensor) -> Tensor:
        """Per-position frame weights (B, 1 + T, H, W); index 0 = the reference."""
        b, t, c, h, w = aligned.shape
        frames = torch.cat([reference.unsqueeze(1), aligned], dim=1)  # (B, 1 + T, C, H, W)
        frame_valid = torch.cat([valid.new_ones(b, 1), valid], dim=1)  # (B, 1 + T)
        # Padded slots may hold anything (even NaN): zero them before the embedding.
        frames = torch.where(frame_valid[:, :, None, None, None], frames, torch.zeros_like(frames))
        embedded = self.embedding(frames.reshape(b * (1 + t), c, h, w))  # (B*(1+T), E, H, W)
        embedded = F.normalize(embedded, dim=1).reshape(b, 1 + t, -1, h, w)  # (B, 1+T, E, H, W), unit length
        cosine = (embedded[:, :1] * embedded).sum(dim=2)  # (B, 1 + T, H, W)
        return masked_softmax(cosine / self.temperature, frame_valid[:, :, None, None], dim=1)

    def forward(self, reference: Tensor, aligned: Tensor, valid: Tensor) -> FusionOutput:
        check_fusion_inputs(reference, aligned, valid)
        check_channels("reference", reference, self.channels, dim=1)
        weights = self.frame_weights(reference, aligned, valid)  # (B, 1 + T, H, W)
        frames = torch.cat([reference.unsqueeze(1), aligned], dim=1)  # (B, 1 + T, C, H, W)
        frame_valid = torch.cat([valid.new_ones(valid.shape[0], 1), valid], dim=1)  # (B, 1 + T)
        frames = torch.where(frame_valid[:, :, None, None, None], frames, torch.zeros_like(frames))
        fused = (weights.unsqueeze(2) * frames).sum(dim=1)  # (B, C, H, W)
        return FusionOutput(features=fused, weights=weights)
