"""Non-local propagation as a window alignment: embedded dot-product attention over all support positions.

The "Non-Local" row of LSTS's Table 3 (Jiang et al. 2020) propagates a frame's features with a
non-local block (Wang et al., CVPR 2018, "embedded Gaussian" pairwise function) in place of LSTS:
every reference position attends to every position of the support frame,

    query = theta(reference)      1x1 conv, C -> E
    key   = phi(support)          1x1 conv, C -> E
    A(p, q) = softmax_q <query(p), key(q)>          over the support's H * W positions
    out(p)  = sum_q A(p, q) V(q)                     V = ctx.values (supports or support_values)

so it is LSTS with every position of the map as a sampling location (and no locations to learn).
Neither paper's code is the reference here: the LSTS code has no non-local module. Choices, made to
keep Table 3's comparison about the propagation alone: the embeddings are LSTS's (1x1 convs with
bias, ``embed_channels = C // 2``, weights N(0, 0.01^2), zero bias: ``methods._propagation``), the
dot product is unscaled (Wang et al.'s embedded Gaussian, as LSTS's), and the block moves the
values only: no output projection and no residual (the non-local block's ``W_z`` and ``+ x``), which
would mix the reference into what the fusion receives as a support.

Memory: the attention is (H*W)^2 per pair (65,536 weights at 16x16, the detector's 128x128 frames
at stride 8).
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness.aggregation import register
from methods._propagation import EmbeddedPropagation


@register("alignment", "non_local")
class NonLocalAlignment(EmbeddedPropagation):
    """Embedded dot-product attention from each reference position to all support positions.

    Args:
        channels: C of the compared features.
        embed_channels: E of the embeddings theta and phi (default ``channels // 2``).

    ``forward(ctx) -> AlignmentOutput(features (B, T, C', H, W), aux={})``: ``ctx.values`` moved onto
    the reference grid, support by support. :meth:`propagate` returns the attention
    (Tensor[N, H*W, H*W]) as its weights: row p = target position, column q = source position, rows
    summing to 1.
    """

    def __init__(self, channels: int, *, embed_channels: int | None = None):
        super().__init__(channels, embed_channels=embed_channels)

    def _attend(self, query: Tensor, source: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        n, cv, h, w = values.shape
        key = self.key_embedding(source)  # (N, E, H, W)
        scores = torch.einsum("nep,neq->npq", query.flatten(2), key.flatten(2))  # (N, HW, HW)
        attention = torch.softmax(scores, dim=-1)  # over the source's positions q
        moved = torch.einsum("npq,ncq->ncp", attention, values.flatten(2))  # (N, C', HW)
        return moved.reshape(n, cv, h, w), attention
