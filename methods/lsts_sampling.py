"""LSTS as a window alignment: attention over N learnable sampling locations (Jiang et al., ECCV 2020).

LSTS (Sec. 3.2, Eq. 1-6) propagates the features of a source frame t to a target frame t+k. Every
target position p_0 looks at the same N fractional locations ``p_0 + loc_n`` of the source, the
offsets ``loc_n = (dy, dx)`` being parameters shared by all positions and learned through the
bilinear interpolation (``ops.lsts_sampling``):

    key   = f(F_t)            1x1 conv, C -> E    (official ``embedding_conv_feat_oldkey``)
    query = g(F_{t+k})        1x1 conv, C -> E    (official ``embedding_conv_feat_newkey``)
    s_n(p_0) = <query(p_0), bilinear(key, p_0 + loc_n)>            dot product (Eq. 2), unscaled
    S = softmax_n(s)   (official code)      or   S = s / sum_n s   (the paper's Eq. 3, ``normalize="sum"``)
    out(p_0) = sum_n S_n(p_0) bilinear(V, p_0 + loc_n)              (Eq. 4; zeros outside the map)

In the window interface the target is the reference and each support is a source: query =
g(``ctx.reference``), key = f(support), V = ``ctx.values`` (the supports, or ``ctx.support_values``,
e.g. a keyframe memory: ``moves_values = True``; the official SRFU/DFA compare features and move the
memory / the keyframe's task feature).

Where this follows the official code (``jiangzhengkai/LSTS``,
``lsts_rfcn/symbols/lsts_network_{gaussian,uniform}.py``, ``align_conv_feat_dynamic`` and
``init_weight``) rather than the paper's text:

* normalisation: a softmax over the N locations (``mx.sym.softmax(axis=1)``), not Eq. 3's sum;
  ``normalize="sum"`` gives the paper's version (expects non-negative scores; ``ops.lsts_sampling``
  eps-guards the denominator);
* embeddings: one 1x1 conv each with bias, 256 channels out of 1024 (here ``embed_channels``,
  default C // 2, as ``notes/wave2-methods.md`` 1.5 scales them), weights N(0, 0.01^2), zero bias
  (so at initialisation the scores are tiny and the weights close to uniform over the N locations);
  the dot product is not scaled (``WeightGenerateK`` sums over channels);
* initial locations: ``uniform`` = the integer grid -4..4 x -4..4 (``neighboor: 4``, N = 81,
  ``lsts_uniform.yaml``), ``gaussian`` = N draws of a 2-D standard normal (N = 40,
  ``lsts_gaussian.yaml``); the paper gives no N. The official offsets are stored (dx, dy)
  (``lib/ops/bilinear_sample_k.cu``), here (dy, dx); both inits are symmetric in the axes.
  ``num_locations`` overrides N for a same-N control of the initialisation (Table 4 compares
  K = 81 uniform with K = 40 Gaussian, so init and N are confounded there); ``init_scale``
  multiplies the grid spacing or the Gaussian's std (1 = the official code, in feature cells;
  this detector's stride 8 halves the official stride 16, so one cell here is half a cell there);
* learning rate: the official offsets use ``lr_mult = 10000 * lr`` (2.5 at lr 2.5e-4) under SGD
  for 4 epochs of ImageNet VID. Here phase 2 is 300 AdamW steps at lr 1e-3 (cosine), so the
  multiplier is chosen by measurement: ``DEFAULT_LOCATION_LR_MULT`` (see its comment). The
  locations never get weight decay (which would pull them to the centre): ``optimizer_overrides``.

``learn_locations=False`` keeps the initial locations fixed (a buffer, not a parameter): Table 4's
"fixed" rows. :meth:`LSTSAlignment.location_drift` returns the current minus the initial locations
for a collector (Fig. 5 and the drift log).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from harness.aggregation import register
from methods._propagation import EmbeddedPropagation
from ops.lsts_sampling import gaussian_locations, grid_locations, lsts_aggregate
from ops.matchtrans import NORMALIZATIONS

Init = Literal["uniform", "gaussian"]
INITS = ("uniform", "gaussian")
# The official configs' N per initialisation (lsts_uniform.yaml: 81 = 9 x 9; lsts_gaussian.yaml: 40).
OFFICIAL_NUM_LOCATIONS = {"uniform": 81, "gaussian": 40}
# Learning-rate multiplier of the locations (AdamW, phase-2 lr 1e-3, 300 steps, cosine after 20
# warm-up steps): an AdamW step moves a parameter by at most ~lr, so with 1 the locations could move
# ~0.3 cells in a whole phase 2 and "learned vs fixed" would test nothing. Chosen by measurement:
# ``python -m tests.benchmarks.lsts_location_drift`` (the drift it measured is in its docstring).
DEFAULT_LOCATION_LR_MULT = 100.0


def initial_locations(init: str, num_locations: int | None = None, *, scale: float = 1.0) -> Tensor:
    """The initial (dy, dx) offsets ``Tensor[N, 2]`` of an LSTS alignment, in feature cells.

    ``"uniform"``: a ``side x side`` grid centred at 0 with spacing ``scale`` (N must be a square;
    an odd side gives the official integer grid, an even side half-cell offsets); ``"gaussian"``: N
    draws of N(0, scale^2) per axis from torch's global generator (seeded by the run). ``None`` =
    the official N of that init (81 / 40).
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    count = OFFICIAL_NUM_LOCATIONS[init] if num_locations is None else num_locations
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"num_locations must be an integer >= 1, got {num_locations!r}")
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"init_scale must be a finite number > 0, got {scale!r}")
    if init == "uniform":
        side = math.isqrt(count)
        if side * side != count:
            raise ValueError(
                f"num_locations={count} does not fit a uniform grid: init='uniform' needs a square "
                f"number (e.g. {side * side} or {(side + 1) ** 2})"
            )
        return grid_locations(side, spacing=scale)
    return gaussian_locations(count, std=scale)


@register("alignment", "lsts")
class LSTSAlignment(EmbeddedPropagation):
    """LSTS: softmax attention at N learnable fractional locations shared by all positions.

    Args:
        channels: C of the compared features.
        init: initial locations, ``"uniform"`` (grid) or ``"gaussian"`` (default, the paper's best).
        num_locations: N (default: the official 81 for uniform, 40 for Gaussian).
        init_scale: grid spacing / Gaussian std in feature cells (1 = official).
        normalize: ``"softmax"`` (official code, default) or ``"sum"`` (the paper's Eq. 3).
        embed_channels: E of the embeddings f and g (default ``channels // 2``).
        learn_locations: learn the locations (default) or keep them fixed.
        location_lr_mult: learning-rate multiplier of the locations (no weight decay either).
        impl: the op's implementation, as in :func:`ops.lsts_sampling.lsts_aggregate`.

    ``forward(ctx) -> AlignmentOutput(features (B, T, C', H, W), aux={})``: ``ctx.values`` moved onto
    the reference grid, support by support.
    """

    def __init__(
        self,
        channels: int,
        *,
        init: Init = "gaussian",
        num_locations: int | None = None,
        init_scale: float = 1.0,
        normalize: Literal["softmax", "sum"] = "softmax",
        embed_channels: int | None = None,
        learn_locations: bool = True,
        location_lr_mult: float = DEFAULT_LOCATION_LR_MULT,
        impl: str = "auto",
    ):
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if not location_lr_mult > 0 or not math.isfinite(location_lr_mult):
            raise ValueError(f"location_lr_mult must be a finite number > 0, got {location_lr_mult!r}")
        # drawn before the embeddings' weights (the order of the global generator's draws)
        start = initial_locations(init, num_locations, scale=init_scale)  # (N, 2) (dy, dx)
        super().__init__(channels, embed_channels=embed_channels)
        self.init, self.normalize, self.impl = init, normalize, impl
        self.learn_locations = learn_locations
        self.location_lr_mult = float(location_lr_mult)
        self.register_buffer("initial_locations", start.clone())
        if learn_locations:
            self.locations = nn.Parameter(start.clone())
        else:
            self.register_buffer("locations", start.clone())

    @property
    def num_locations(self) -> int:
        return int(self.locations.shape[0])

    def optimizer_overrides(self) -> dict[str, dict[str, float]]:
        """No weight decay and ``location_lr_mult`` for learned locations (read by ``harness.train``)."""
        if not self.learn_locations:
            return {}
        return {"locations": {"weight_decay": 0.0, "lr_mult": self.location_lr_mult}}

    @torch.no_grad()
    def location_drift(self) -> Tensor:
        """Current minus initial locations, ``Tensor[N, 2]`` of (dy, dx) in feature cells."""
        return (self.locations - self.initial_locations).detach().clone()

    def _attend(self, query: Tensor, source: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Weights: the normalised S_n(p), Tensor[N, K, H, W]."""
        key = self.key_embedding(source)  # (N, E, H, W)
        locations = self.locations.to(dtype=query.dtype)
        return lsts_aggregate(query, key, values, locations, normalize=self.normalize, impl=self.impl)

    def extra_repr(self) -> str:
        return (
            f"init={self.init!r}, num_locations={self.num_locations}, normalize={self.normalize!r}, "
            f"learn_locations={self.learn_locations}, location_lr_mult={self.location_lr_mult}"
        )
