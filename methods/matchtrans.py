"""STMN's MatchTrans (Xiao & Lee, ECCV 2018, Sec. 3.3) as the official code computes it, and as a window
alignment (``alignment:matchtrans``).

For the features of the current frame F_t (query) and of the previous one F_{t-1} (key), over the
(2k+1)^2 vicinity d of every position p (k = 2: 5x5):

    A(p, d)     = cos(F_t(p), F_{t-1}(p + d)), set to 0 where <= 0 (and outside the map)
    Gamma(p, d) = A(p, d) / sum_d A(p, d)                          where sum_d A(p, d) >= 1e-7
    Gamma(p, d) = 1 if d = 0 else 0                                 elsewhere (identity fallback)
    out(p)      = sum_d Gamma(p, d) * value(p + d)                  value = M_{t-1}, the memory

Where the paper writes a plain dot product normalised by its sum, this follows the official Torch7
code: ``modules/MatchTrans.lua`` (cosine affinity with ``norm + 1e-8`` in the denominators,
``AFF_THRESH = 0``: entries ``<= 0`` zeroed; ``K = 5`` from ``mem_align_K`` in ``modules/STMM.lua``)
and ``modules/assemble/assemble.cu`` (``POS_AVG``: the mass is the sum of the positive in-map
affinities; where ``|mass| < 1e-7`` the output copies ``value(p)``). The official backward returns
zero gradients for F_t and F_{t-1} (``updateGradInput`` fills only the value's gradient), so here the
affinity is computed without gradient too: MatchTrans moves the memory, it does not train the
features it compares. ``ops.matchtrans``'s own "sum" normalisation (an eps guard, no zeroing of
negatives, no fallback) is therefore not used; its displacement primitives are.
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness.aggregation import Alignment, AlignmentOutput, TemporalContext, register
from harness.measure import scope
from methods._checks import check_channels
from ops.matchtrans import displacement_aggregation, displacement_correlation, vicinity_displacements

VICINITY_RADIUS = 2  # k: a (2k+1) x (2k+1) = 5x5 vicinity (paper and official code)
NORM_EPS = 1e-8  # added to each feature norm of the cosine (official)
MASS_FLOOR = 1e-7  # below this total positive affinity the position keeps its own value (official)


def matchtrans_weights(
    query: Tensor, key: Tensor, *, k: int = VICINITY_RADIUS
) -> tuple[Tensor, Tensor, Tensor]:
    """The official MatchTrans transform Gamma of ``key``'s grid onto ``query``'s, without gradient.

    Args:
        query (Tensor[N, C, H, W]): F_t. key (Tensor[N, C, H, W]): F_{t-1}. k: vicinity radius.
    Returns:
        weights (Tensor[N, D, H, W]) with D = (2k+1)^2 (row-major displacements, see
        ``ops.matchtrans.vicinity_displacements``), each position's weights summing to 1;
        displacements (Tensor[D, 2]) int64 (dy, dx); fallback (Tensor[N, H, W]) bool: positions
        where no vicinity cell has a positive affinity (identity copy).
    """
    if query.shape != key.shape:
        raise ValueError(f"query {tuple(query.shape)} and key {tuple(key.shape)} must have the same shape")
    displacements = vicinity_displacements(k, device=query.device)  # (D, 2)
    with torch.no_grad():
        query_unit = query / (query.norm(dim=1, keepdim=True) + NORM_EPS)  # (N, C, H, W)
        key_unit = key / (key.norm(dim=1, keepdim=True) + NORM_EPS)
        affinity = displacement_correlation(query_unit, key_unit, displacements).clamp_min(0)  # (N, D, H, W)
        mass = affinity.sum(dim=1, keepdim=True)  # (N, 1, H, W)
        fallback = mass < MASS_FLOOR
        identity = (displacements == 0).all(dim=1).to(affinity.dtype).view(1, -1, 1, 1)  # (1, D, 1, 1)
        weights = torch.where(fallback, identity, affinity / mass.clamp_min(MASS_FLOOR))
    return weights, displacements, fallback.squeeze(1)


def official_matchtrans(query: Tensor, key: Tensor, value: Tensor, *, k: int = VICINITY_RADIUS
                        ) -> tuple[Tensor, Tensor]:
    """Move ``value`` (Tensor[N, Cv, H, W], on key's grid) onto ``query``'s grid (module docstring).

    Returns (moved value (Tensor[N, Cv, H, W]), differentiable in ``value`` only; fallback mask
    (Tensor[N, H, W]) bool).
    """
    if value.dim() != 4 or value.shape[0] != query.shape[0] or value.shape[2:] != query.shape[2:]:
        raise ValueError(
            f"value must be (N={query.shape[0]}, Cv, H={query.shape[2]}, W={query.shape[3]}), "
            f"got {tuple(value.shape)}"
        )
    weights, displacements, fallback = matchtrans_weights(query, key, k=k)
    return displacement_aggregation(weights, value, displacements), fallback


@register("alignment", "matchtrans")
class MatchTransAlignment(Alignment):
    """MatchTrans as a window alignment: each support's values moved onto the reference's grid.

    The affinity compares ``ctx.reference`` (query) with each support (key) directly, over a window
    of radius ``k`` cells (2: +-16 px on the stride-8 grid), whatever the support's time offset.

    Args:
        channels: C of the backbone features. k: vicinity radius (paper: 2).

    Moves ``ctx.support_values`` (``moves_values = True``): the transform depends only on the
    compared features and applies to any values channel by channel (a memory, in STMN).

    ``forward(ctx)`` -> ``AlignmentOutput(features (B, T, C', H, W), aux={"matchtrans_fallback": (B, T,
    H, W) float, 1 where the identity fallback was used})``.
    """

    moves_values = True

    def __init__(self, channels: int, *, k: int = VICINITY_RADIUS):
        super().__init__(channels)
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"alignment:matchtrans: k (vicinity radius) must be an int >= 0, got {k!r}")
        self.k = k

    def forward(self, ctx: TemporalContext) -> AlignmentOutput:
        ctx.validate()
        check_channels("reference", ctx.reference, self.channels, dim=1)
        check_channels("supports", ctx.supports, self.channels, dim=2)
        values = self.values_to_move(ctx)  # (B, T, C', H, W)
        b, t = ctx.supports.shape[:2]
        h, w = ctx.reference.shape[-2:]
        if t == 0:
            return AlignmentOutput(values, {"matchtrans_fallback": values.new_zeros(b, 0, h, w)})
        with scope("matchtrans"):
            # (B, C, H, W) -> (B*T, C, H, W): every support against its own copy of the reference
            query = ctx.reference.unsqueeze(1).expand(-1, t, -1, -1, -1).flatten(0, 1)
            moved, fallback = official_matchtrans(
                query, ctx.supports.flatten(0, 1), values.flatten(0, 1), k=self.k
            )
        aux = {"matchtrans_fallback": fallback.unflatten(0, (b, t)).to(values.dtype)}
        return AlignmentOutput(moved.unflatten(0, (b, t)), aux)  # (B*T, C', H, W) -> (B, T, C', H, W)

    def extra_repr(self) -> str:
        return f"k={self.k}"
