"""The shared skeleton of the attention propagations (``alignment:lsts``, ``alignment:non_local``).

Both compare an embedded target (the reference, g / theta) with an embedded source (each support,
f / phi) and move the source's values by the resulting weights. This base holds the embeddings, the
window ``forward`` and :meth:`EmbeddedPropagation.propagate`, the pairwise entry point a stream
aggregator calls with a memory as values; a subclass implements ``_attend``.

Embeddings as in LSTS's official code (``jiangzhengkai/LSTS``, ``lsts_rfcn/symbols/
lsts_network_{gaussian,uniform}.py``: ``embedding_conv_feat_{oldkey,newkey}`` and ``init_weight``):
one 1x1 conv each, with bias, weights N(0, 0.01^2), zero bias; width ``embed_channels`` (default
C // 2: 256 of 1024 there, ``notes/wave2-methods.md`` 1.5 scales it to C / 2).
"""

from __future__ import annotations

from torch import Tensor, nn

from harness.aggregation import Alignment, AlignmentOutput, TemporalContext
from methods._checks import check_channels

EMBEDDING_INIT_STD = 0.01  # official init_weight: mx.random.normal(0, 0.01)


def embedding_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 1x1 embedding conv initialised as the official LSTS code: weights N(0, 0.01^2), zero bias."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
    nn.init.normal_(conv.weight, std=EMBEDDING_INIT_STD)
    nn.init.zeros_(conv.bias)
    return conv


class EmbeddedPropagation(Alignment):
    """Target embedding ``query_embedding`` (C -> E), source embedding ``key_embedding`` (C -> E).

    ``forward(ctx) -> AlignmentOutput(features (B, T, C', H, W), aux={})``: ``ctx.values`` (the
    supports, or ``ctx.support_values``) moved onto the reference grid, support by support.
    """

    moves_values = True

    def __init__(self, channels: int, *, embed_channels: int | None = None):
        super().__init__(channels)
        embed = max(channels // 2, 1) if embed_channels is None else embed_channels
        if embed < 1:
            raise ValueError(f"embed_channels must be >= 1, got {embed_channels!r}")
        self.embed_channels = embed
        self.key_embedding = embedding_conv(channels, embed)  # on the source (support)
        self.query_embedding = embedding_conv(channels, embed)  # on the target (reference)

    def propagate(self, target: Tensor, source: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Move ``values`` from the source frames onto the target frames.

        Args:
            target (Tensor[N, C, H, W]): features of the frames being computed.
            source (Tensor[N, C, H, W]): features of the frames moved from.
            values (Tensor[N, C', H, W]): what is moved (the source itself, or a memory).
        Returns:
            moved (Tensor[N, C', H, W]) and the subclass's weights (see its ``_attend``).
        """
        check_channels("target", target, self.channels, dim=1)
        check_channels("source", source, self.channels, dim=1)
        return self._attend(self.query_embedding(target), source, values)

    def _attend(self, query: Tensor, source: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """``query`` (N, E, H, W) = the embedded target, ``source`` (N, C, H, W), ``values``
        (N, C', H, W) -> (moved (N, C', H, W), weights)."""
        raise NotImplementedError  # pragma: no cover - interface

    def forward(self, ctx: TemporalContext) -> AlignmentOutput:
        ctx.validate()
        check_channels("supports", ctx.supports, self.channels, dim=2)
        check_channels("reference", ctx.reference, self.channels, dim=1)
        values = self.values_to_move(ctx)  # (B, T, C', H, W)
        b, t, c, h, w = values.shape
        if t == 0:
            return AlignmentOutput(values, {})
        # the target embedded once per reference, shared by its T supports: (B*T, E, H, W), b-major
        query = self.query_embedding(ctx.reference).repeat_interleave(t, dim=0)
        moved, _ = self._attend(query, ctx.supports.flatten(0, 1), values.flatten(0, 1))
        return AlignmentOutput(features=moved.reshape(b, t, c, h, w), aux={})  # (B*T, C') -> (B, T, C')
