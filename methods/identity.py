"""Identity alignment: supports are used where they are (no motion compensation).

The baseline every alignment is compared with: ``identity`` + ``average`` is plain temporal
feature averaging, ``identity`` + ``cosine_softmax`` is FGFA's adaptive weighting without flow.
"""

from __future__ import annotations

from harness.aggregation import Alignment, AlignmentOutput, TemporalContext, register
from methods._checks import check_channels


@register("alignment", "identity")
class IdentityAlignment(Alignment):
    """Supports used where they are (no motion compensation).

    ``forward(ctx) -> AlignmentOutput(features=ctx.values (B, T, C', H, W), aux={})``: the supports,
    or ``ctx.support_values`` when given, unchanged.
    """

    moves_values = True

    def __init__(self, channels: int):
        super().__init__(channels)

    def forward(self, ctx: TemporalContext) -> AlignmentOutput:
        ctx.validate()
        check_channels("supports", ctx.supports, self.channels, dim=2)
        return AlignmentOutput(features=self.values_to_move(ctx), aux={})
