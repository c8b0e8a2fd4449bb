"""LSTS sampling (Jiang et al. 2020): attention over K learnable fractional sampling locations.

Every position p of the query map looks at the K locations ``p + loc_k`` of the key/value maps; the
``locations`` ``(dy, dx)`` are fractional, shared by all positions and learned (LSTS Eq. 1-6):

    key_k(p)   = bilinear(key, p + loc_k)       value_k(p) = bilinear(value, p + loc_k)   (zeros outside)
    s_k(p)     = <query(p), key_k(p)>
    S          = s / sum_k s   ("sum", the paper's Eq. 3)    or    softmax_k(s)   ("softmax")
    out(p)     = sum_k S_k(p) * value_k(p)

Gradients flow to query, key, value and the locations (through the bilinear weights, Eq. 6).
Zero padding: a location outside the map samples zeros (score 0), which with "softmax" still takes
its share exp(0) of the normalisation. "sum" expects non-negative scores (ReLU'd embeddings); its
denominator is eps-guarded as documented in :func:`ops.matchtrans.normalize_scores`.

Implementations (``impl=``, resolved by :func:`ops._kernels.select_impl`):

- ``"fast"``: because the locations are shared by all positions, bilinear sampling at ``loc_k`` is the
  same mix of four *integer* shifts everywhere: ``key_k = sum_d B[k, d] key(. + d)`` with ``B`` a
  (K, D) matrix of bilinear weights over the D distinct integer corners. So
  ``s = B @ correlation(query, key)`` and ``out = aggregation(B^T @ S, value)`` with the displacement
  primitives of :mod:`ops.matchtrans` (loops over D shifted views, recomputing backward). Gradients
  reach the locations through ``B``. No per-position gather, no grid_sample.
- ``"cupy"``: the direct bilinear kernels of ``ops/cuda/lsts_sampling.cu``.
- ``"reference"``: :func:`lsts_aggregate_reference`, one ``grid_sample`` of key and of value per
  location, plain autograd (also the benchmark's baseline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ops import _kernels
from ops.matchtrans import (
    DEFAULT_EPS,
    NORMALIZATIONS,
    check_feature_maps,
    displacement_aggregation,
    displacement_correlation,
    normalize_scores,
)

__all__ = [
    "LSTSSampling",
    "bilinear_mixing",
    "gaussian_locations",
    "grid_locations",
    "lsts_aggregate",
    "lsts_aggregate_reference",
]

OP_NAME = "lsts_sampling"


# ----------------------------------------------------------------------------------------------------
# Initial locations (LSTS Sec. 4.4: "uniform" grid like MatchTrans, or Gaussian)
# ----------------------------------------------------------------------------------------------------
def grid_locations(side: int = 9, *, spacing: float = 1.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """``side x side`` locations on a regular grid centred at 0 (LSTS's official code: 9x9 = 81).

    Returns ``Tensor[side*side, 2]`` of (dy, dx), row-major.
    """
    if side < 1:
        raise ValueError(f"side must be >= 1, got {side}")
    steps = (torch.arange(side, dtype=dtype) - (side - 1) / 2) * spacing
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([dy.reshape(-1), dx.reshape(-1)], dim=1)  # (K, 2)


def gaussian_locations(count: int = 81, *, std: float = 1.0, generator: torch.Generator | None = None,
                       dtype: torch.dtype = torch.float32) -> Tensor:
    """``count`` locations drawn from N(0, std^2) per axis (LSTS's "Gaussian" init). ``Tensor[count, 2]``."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return torch.randn(count, 2, generator=generator, dtype=dtype) * std


# ----------------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------------
def _check_lsts_args(query: Tensor, key: Tensor, value: Tensor, locations: Tensor, normalize: str) -> None:
    check_feature_maps(query=query, key=key, value=value)
    if query.shape[1] != key.shape[1]:
        raise ValueError(
            f"query and key must have the same channels, got query {tuple(query.shape)}, "
            f"key {tuple(key.shape)}"
        )
    if not isinstance(locations, Tensor) or locations.dim() != 2 or locations.shape[1] != 2:
        shape = tuple(locations.shape) if isinstance(locations, Tensor) else type(locations).__name__
        raise ValueError(f"locations must be a Tensor[K, 2] of (dy, dx) offsets, got {shape}")
    if locations.shape[0] == 0:
        raise ValueError("locations must hold at least one (dy, dx) offset, got K = 0")
    if locations.dtype != query.dtype or locations.device != query.device:
        raise ValueError(
            f"locations ({locations.dtype}, {locations.device}) must match query "
            f"({query.dtype}, {query.device})"
        )
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")


# ----------------------------------------------------------------------------------------------------
# Reference: one grid_sample per location
# ----------------------------------------------------------------------------------------------------
def _sampling_grid(location: Tensor, batch: int, height: int, width: int) -> Tensor:
    """grid_sample grid (N, H, W, 2) of normalised (x, y) for pixel positions p + location.

    ``align_corners=False`` maps pixel x to ``(2x + 1) / W - 1``; this stays exact for H or W = 1,
    where the align_corners=True mapping degenerates.
    """
    ys = torch.arange(height, dtype=location.dtype, device=location.device) + location[0]  # (H,)
    xs = torch.arange(width, dtype=location.dtype, device=location.device) + location[1]  # (W,)
    grid_y = (2 * ys + 1) / height - 1
    grid_x = (2 * xs + 1) / width - 1
    grid = torch.stack(torch.broadcast_tensors(grid_x[None, :], grid_y[:, None]), dim=-1)  # (H, W, 2)
    return grid.unsqueeze(0).expand(batch, height, width, 2)


def lsts_aggregate_reference(query: Tensor, key: Tensor, value: Tensor, locations: Tensor, *,
                             normalize: str = "sum", eps: float = DEFAULT_EPS) -> tuple[Tensor, Tensor]:
    """Slow, obviously correct LSTS: for each location, ``grid_sample`` key and value (zeros outside)."""
    _check_lsts_args(query, key, value, locations, normalize)
    batch, _, height, width = query.shape
    scores, sampled_values = [], []
    for location in locations:  # (2,) = (dy, dx)
        grid = _sampling_grid(location, batch, height, width)
        sample = dict(grid=grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        key_sampled = F.grid_sample(key, **sample)  # (N, C, H, W): key(p + loc)
        scores.append((query * key_sampled).sum(dim=1))  # (N, H, W)
        sampled_values.append(F.grid_sample(value, **sample))  # (N, Cv, H, W)
    weights = normalize_scores(torch.stack(scores, dim=1), normalize=normalize, eps=eps)  # (N, K, H, W)
    out = torch.zeros_like(value)
    for index, value_sampled in enumerate(sampled_values):
        out = out + weights[:, index : index + 1] * value_sampled
    return out, weights


# ----------------------------------------------------------------------------------------------------
# Fast path: bilinear sampling at shared locations = a (K, D) mix of integer displacements
# ----------------------------------------------------------------------------------------------------
_CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))


def bilinear_mixing(locations: Tensor) -> tuple[Tensor, Tensor]:
    """Express sampling at each location as a weighted sum of integer displacements.

    Args:
        locations (Tensor[K, 2]): fractional (dy, dx).
    Returns:
        displacements (Tensor[D, 2] int64): the distinct integer corners (floor and floor + 1 per axis)
            of all locations; mixing (Tensor[K, D]): their bilinear weights, 4 non-zero per row at most,
            differentiable in ``locations`` (the corner choice is piecewise constant).
    """
    base = locations.detach().floor()  # (K, 2)
    fraction = locations - base  # (K, 2), carries the gradient
    frac_y, frac_x = fraction[:, 0], fraction[:, 1]
    corner_weights = torch.stack(
        [(1 - frac_y) * (1 - frac_x), (1 - frac_y) * frac_x, frac_y * (1 - frac_x), frac_y * frac_x], dim=1
    )  # (K, 4), in _CORNERS order
    offsets = torch.tensor(_CORNERS, dtype=torch.int64, device=locations.device)  # (4, 2)
    corners = base.to(torch.int64)[:, None, :] + offsets[None]  # (K, 4, 2)
    # (D, 2) distinct corners, and for each of the K*4 corners its row in that table
    displacements, inverse = torch.unique(corners.reshape(-1, 2), dim=0, return_inverse=True)
    num_locations = locations.shape[0]
    mixing = corner_weights.new_zeros(num_locations, displacements.shape[0])  # (K, D)
    mixing = mixing.scatter_add(1, inverse.view(num_locations, 4), corner_weights)
    return displacements, mixing


def _lsts_fast(query: Tensor, key: Tensor, value: Tensor, locations: Tensor, *, normalize: str, eps: float
               ) -> tuple[Tensor, Tensor]:
    if not bool(torch.isfinite(locations).all()):
        raise ValueError("locations must be finite, got NaN or inf")
    displacements, mixing = bilinear_mixing(locations)  # (D, 2), (K, D)
    correlation = displacement_correlation(query, key, displacements)  # (N, D, H, W)
    scores = torch.einsum("kd,ndhw->nkhw", mixing, correlation)  # (N, K, H, W)
    weights = normalize_scores(scores, normalize=normalize, eps=eps)  # (N, K, H, W)
    displacement_weights = torch.einsum("kd,nkhw->ndhw", mixing, weights)  # (N, D, H, W)
    return displacement_aggregation(displacement_weights, value, displacements), weights


# ----------------------------------------------------------------------------------------------------
# CUDA kernels (backend "cupy" on a GPU, "shim" on the CPU for tests)
# ----------------------------------------------------------------------------------------------------
def _sample_dot(first: Tensor, source: Tensor, locations: Tensor, backend: str) -> Tensor:
    """out[n, k, p] = sum_c first[n, c, p] * bilinear(source[n, c], p + loc_k)  -> (N, K, H, W)."""
    batch, channels, height, width = source.shape
    out = source.new_empty(batch, locations.shape[0], height, width)
    _kernels.run_kernel(
        OP_NAME, "lsts_sample_dot", backend=backend, total_threads=out.numel(), like=source,
        args=(first, source, locations, out, batch, channels, height, width, locations.shape[0]),
    )
    return out


def _sample_aggregate(weights: Tensor, source: Tensor, locations: Tensor, backend: str) -> Tensor:
    """out[n, c, p] = sum_k weights[n, k, p] * bilinear(source[n, c], p + loc_k)  -> (N, C, H, W)."""
    batch, channels, height, width = source.shape
    out = source.new_empty(source.shape)
    _kernels.run_kernel(
        OP_NAME, "lsts_sample_aggregate", backend=backend, total_threads=out.numel(), like=source,
        args=(weights, source, locations, out, batch, channels, height, width, locations.shape[0]),
    )
    return out


def _sample_scatter(weights: Tensor, first: Tensor, source: Tensor, locations: Tensor, backend: str
                    ) -> tuple[Tensor, Tensor]:
    """Backward of sampling: gradient of ``sum weights[n,k,p] <first(p), bilinear(source, p + loc_k)>``.

    Returns grad_source (N, C, H, W) (scattered to the corners with atomicAdd) and grad_locations (K, 2).
    The location gradient is written per (n, k, p) into a partial buffer (N, K, H, W, 2) and summed
    here: deterministic, and free of the contention of N*H*W threads adding into 2K cells.
    """
    batch, channels, height, width = source.shape
    num_locations = locations.shape[0]
    grad_source = torch.zeros_like(source)
    partial = source.new_empty(batch, num_locations, height, width, 2)
    _kernels.run_kernel(
        OP_NAME, "lsts_sample_scatter", backend=backend, total_threads=weights.numel(), like=source,
        args=(weights, first, source, locations, grad_source, partial, batch, channels, height, width,
              num_locations),
    )
    return grad_source, partial.sum(dim=(0, 2, 3))  # (K, 2)


class _SampledSimilarityFunction(torch.autograd.Function):
    """``s[n, k, p] = <query(p), bilinear(key, p + loc_k)>`` with the LSTS kernels."""

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, locations: Tensor, backend: str) -> Tensor:
        query, key, locations = query.contiguous(), key.contiguous(), locations.contiguous()
        ctx.save_for_backward(query, key, locations)
        ctx.backend = backend
        return _sample_dot(query, key, locations, backend)

    @staticmethod
    def backward(ctx, grad_scores: Tensor):
        query, key, locations = ctx.saved_tensors
        grad_scores = grad_scores.contiguous()
        grad_query = grad_key = grad_locations = None
        if ctx.needs_input_grad[0]:  # dL/dq(p) = sum_k g_k(p) key_k(p)
            grad_query = _sample_aggregate(grad_scores, key, locations, ctx.backend)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_key, grad_locations = _sample_scatter(grad_scores, query, key, locations, ctx.backend)
        return grad_query, grad_key, grad_locations, None


class _SampledAggregationFunction(torch.autograd.Function):
    """``out[n, c, p] = sum_k weights[n, k, p] bilinear(value[n, c], p + loc_k)`` with the LSTS kernels."""

    @staticmethod
    def forward(ctx, weights: Tensor, value: Tensor, locations: Tensor, backend: str) -> Tensor:
        weights, value, locations = weights.contiguous(), value.contiguous(), locations.contiguous()
        ctx.save_for_backward(weights, value, locations)
        ctx.backend = backend
        return _sample_aggregate(weights, value, locations, backend)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        weights, value, locations = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_weights = grad_value = grad_locations = None
        if ctx.needs_input_grad[0]:  # dL/dS_k(p) = <g(p), value_k(p)>
            grad_weights = _sample_dot(grad_out, value, locations, ctx.backend)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_value, grad_locations = _sample_scatter(weights, grad_out, value, locations, ctx.backend)
        return grad_weights, grad_value, grad_locations, None


def lsts_aggregate_with_backend(query: Tensor, key: Tensor, value: Tensor, locations: Tensor, *,
                                normalize: str = "sum", eps: float = DEFAULT_EPS, backend: str = "torch"
                                ) -> tuple[Tensor, Tensor]:
    """LSTS on an explicit backend: "torch" (the fast path), "cupy" or "shim" (the CUDA kernels on CPU).

    :func:`lsts_aggregate` calls it; tests call it with "shim". Shapes as in :func:`lsts_aggregate`.
    """
    _check_lsts_args(query, key, value, locations, normalize)
    if backend == "torch":
        return _lsts_fast(query, key, value, locations, normalize=normalize, eps=eps)
    scores = _SampledSimilarityFunction.apply(query, key, locations, backend)  # (N, K, H, W)
    weights = normalize_scores(scores, normalize=normalize, eps=eps)  # (N, K, H, W)
    return _SampledAggregationFunction.apply(weights, value, locations, backend), weights


def lsts_aggregate(query: Tensor, key: Tensor, value: Tensor, locations: Tensor, *, normalize: str = "sum",
                   eps: float = DEFAULT_EPS, impl: str = "auto") -> tuple[Tensor, Tensor]:
    """Propagate ``value`` to the query frame by attention over K learnable sampling locations (LSTS).

    Args:
        query (Tensor[N, C, H, W]): embedded features of the frame being computed (LSTS's g(F_{t+k})).
        key (Tensor[N, C, H, W]): embedded features of the source frame (f(F_t)).
        value (Tensor[N, Cv, H, W]): features propagated (F_t).
        locations (Tensor[K, 2]): fractional (dy, dx) offsets shared by all positions (learnable).
        normalize: "sum" (the paper's s / sum s, eps-guarded) or "softmax".
        impl: "auto" | "cupy" | "fast" | "reference" (``VODBENCH_OPS_REFERENCE=1`` forces "reference").
    Returns:
        output (Tensor[N, Cv, H, W]) and weights (Tensor[N, K, H, W]), the normalised S_k(p).
    """
    _check_lsts_args(query, key, value, locations, normalize)
    chosen = _kernels.select_impl(impl, query)
    if chosen == "reference":
        return lsts_aggregate_reference(query, key, value, locations, normalize=normalize, eps=eps)
    backend = "cupy" if chosen == "cupy" else "torch"
    return lsts_aggregate_with_backend(query, key, value, locations, normalize=normalize, eps=eps,
                                       backend=backend)


class LSTSSampling(nn.Module):
    """Module form of :func:`lsts_aggregate` holding the learnable ``locations`` (Tensor[K, 2]).

    Args:
        locations: initial (dy, dx) offsets, e.g. :func:`grid_locations` (9x9, the official code's 81)
            or :func:`gaussian_locations`; copied into an ``nn.Parameter``.
        normalize, eps, impl: as in :func:`lsts_aggregate`.
    """

    def __init__(self, locations: Tensor, *, normalize: str = "sum", eps: float = DEFAULT_EPS,
                 impl: str = "auto") -> None:
        super().__init__()
        if locations.dim() != 2 or locations.shape[1] != 2 or locations.shape[0] == 0:
            raise ValueError(f"locations must be a Tensor[K, 2] with K >= 1, got {tuple(locations.shape)}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.locations = nn.Parameter(locations.detach().clone())
        self.normalize, self.eps, self.impl = normalize, eps, impl

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        locations = self.locations.to(dtype=query.dtype)
        return lsts_aggregate(query, key, value, locations, normalize=self.normalize, eps=self.eps,
                              impl=self.impl)

    def extra_repr(self) -> str:
        return f"num_locations={self.locations.shape[0]}, normalize={self.normalize!r}, impl={self.impl!r}"
