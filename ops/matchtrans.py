"""MatchTrans (STMN, Xiao & Lee 2018): align a feature map to a query by local affinity-weighted averaging.

For every position p of the query frame, MatchTrans compares ``query(p)`` with the key cells in the
``(2k+1) x (2k+1)`` vicinity of p (spaced by ``dilation``) and rebuilds ``value`` at p as the
affinity-weighted sum of the value cells of that vicinity (STMN, Eq. for Gamma and M'):

    A(p, d)   = <query(p), key(p + d)>                         d in {-k..k}^2 * dilation
    Gamma     = A / sum_d A   ("sum", STMN's)   or   softmax_d(A)   ("softmax")
    out(p)    = sum_d Gamma(p, d) * value(p + d)

Cells outside the map are zeros (zero padding): their affinity is 0 and their value is 0. With
"softmax" they therefore still take their share exp(0) of the normalisation, exactly as the common
``F.unfold`` formulation (:func:`matchtrans_unfold`) does.

Implementations (``impl=``, resolved by :func:`ops._kernels.select_impl`):

- ``"fast"`` (CPU, or any device without CuPy): a loop over the D = (2k+1)^2 displacements, each one a
  pair of shifted views of the inputs accumulated in place, inside custom ``autograd.Function``s whose
  backward recomputes from the inputs. Nothing of size D*C*H*W is ever stored, which is what makes it
  faster and far leaner than unfolding key and value (see tests/benchmarks/test_bench_matchtrans.py).
- ``"cupy"``: the kernels of ``ops/cuda/matchtrans.cu`` through the same Functions.
- ``"reference"``: :func:`matchtrans_reference`, plain autograd over zero-padded slices.

The two primitives (:func:`displacement_correlation`, :func:`displacement_aggregation`) take an
arbitrary table of integer displacements; ``ops/lsts_sampling.py`` reuses them for its CPU path, since
bilinear sampling at locations shared by all positions is a fixed mix of integer displacements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ops import _kernels

__all__ = [
    "MatchTrans",
    "displacement_aggregation",
    "displacement_correlation",
    "matchtrans",
    "matchtrans_reference",
    "matchtrans_unfold",
    "normalize_scores",
    "vicinity_displacements",
]

OP_NAME = "matchtrans"
NORMALIZATIONS = ("sum", "softmax")
# Guard of the "sum" normalisation: |sum_d A| is clamped to at least this (sign kept), see normalize_scores.
DEFAULT_EPS = 1e-6


# ----------------------------------------------------------------------------------------------------
# Shared helpers: displacement tables, normalisation, argument checks
# ----------------------------------------------------------------------------------------------------
def vicinity_displacements(radius: int, dilation: int = 1, *, device: torch.device | str = "cpu") -> Tensor:
    """The (2*radius+1)^2 displacements (dy, dx) of a dilated square vicinity, row-major.

    Returns ``Tensor[D, 2]`` int64 with ``D = (2*radius+1)**2``; row ``i*(2r+1)+j`` is
    ``((i - r) * dilation, (j - r) * dilation)``, the order of ``F.unfold``'s kernel positions.
    """
    steps = torch.arange(-radius, radius + 1, dtype=torch.int64, device=device) * dilation
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([dy.reshape(-1), dx.reshape(-1)], dim=1)  # (D, 2)


def normalize_scores(scores: Tensor, *, normalize: str, eps: float = DEFAULT_EPS, dim: int = 1) -> Tensor:
    """Normalise similarity scores over ``dim`` into aggregation weights.

    ``"softmax"``: ``softmax(scores, dim)``. ``"sum"`` (STMN's and LSTS's papers): ``scores / sum(scores)``.
    The papers assume non-negative scores (the caller should make them so, e.g. with ReLU'd embeddings);
    to keep an all-zero (or cancelling) neighbourhood from dividing by ~0, the sum is replaced by
    ``+-eps`` (its sign kept, 0 counting as positive) wherever ``|sum| < eps``; there the weights are
    ``scores / eps`` and no gradient flows through the clamped sum.
    """
    if normalize == "softmax":
        return torch.softmax(scores, dim=dim)
    if normalize == "sum":
        total = scores.sum(dim=dim, keepdim=True)
        floor = torch.where(total >= 0, eps, -eps).to(total.dtype)
        safe_total = torch.where(total.abs() < eps, floor, total)
        return scores / safe_total
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")


def check_feature_maps(**maps: Tensor) -> None:
    """Raise ``ValueError`` naming the argument unless all maps are (N, *, H, W) on one device and dtype."""
    reference_name, reference = next(iter(maps.items()))
    for name, tensor in maps.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {tensor.dtype}")
        if tensor.dtype != reference.dtype or tensor.device != reference.device:
            raise ValueError(
                f"{name} ({tensor.dtype}, {tensor.device}) must match {reference_name} "
                f"({reference.dtype}, {reference.device})"
            )
        if (tensor.shape[0], *tensor.shape[2:]) != (reference.shape[0], *reference.shape[2:]):
            raise ValueError(
                f"{name} has batch/spatial size {(tensor.shape[0], *tensor.shape[2:])}, {reference_name} has "
                f"{(reference.shape[0], *reference.shape[2:])} (shapes {tuple(tensor.shape)} vs "
                f"{tuple(reference.shape)})"
            )


# ----------------------------------------------------------------------------------------------------
# The three displacement primitives, in torch ops (fast CPU path) and as CUDA kernels
# ----------------------------------------------------------------------------------------------------
# correlate(a, b)[n, d, p]           = sum_c a[n, c, p] * b[n, c, p + d]
# aggregate(w, v)[n, c, p]           = sum_d w[n, d, p] * v[n, c, p + d]
# aggregate_transposed(w, v)[n, c, q] = sum_d w[n, d, q - d] * v[n, c, q - d]
# Forward and backward of both MatchTrans steps are these three (see the Functions below).
# The torch versions work on zero-padded channels-last copies: each displacement is then one full-size
# window view of the padded map (no per-displacement cropping of the other operands), the channel sum of
# ``correlate`` runs over the innermost dimension, and every window keeps rows of C contiguous values.
# On CPU this measured ~1.7x faster per displacement than NCHW slices, and the fewer slicing ops matter at
# the detector's small maps where per-op overhead dominates. Results come back in the default layout.
def _channels_last(tensor: Tensor) -> Tensor:
    return tensor.contiguous(memory_format=torch.channels_last)


def _usable_displacements(displacements: Tensor, height: int, width: int
                          ) -> tuple[list[tuple[int, int, int]], int]:
    """(row, dy, dx) of the displacements whose shifted map overlaps the map, and the padding they need.

    A shift by |dy| >= H or |dx| >= W only ever reads zero padding, so it contributes nothing.
    """
    rows = enumerate(displacements.tolist())
    usable = [(index, dy, dx) for index, (dy, dx) in rows if abs(dy) < height and abs(dx) < width]
    pad = max((max(abs(dy), abs(dx)) for _, dy, dx in usable), default=0)
    return usable, pad


def _zero_padded(tensor: Tensor, pad: int) -> Tensor:
    """Channels-last copy of ``tensor`` (N, C, H, W) with ``pad`` zeros on every side."""
    batch, channels, height, width = tensor.shape
    padded = torch.empty(batch, channels, height + 2 * pad, width + 2 * pad, dtype=tensor.dtype,
                         device=tensor.device, memory_format=torch.channels_last).zero_()
    padded[:, :, pad : pad + height, pad : pad + width] = tensor
    return padded


def _correlate_torch(first: Tensor, second: Tensor, displacements: Tensor) -> Tensor:
    batch, _, height, width = first.shape
    usable, pad = _usable_displacements(displacements, height, width)
    first, second_padded = _channels_last(first), _zero_padded(second, pad)
    out = first.new_zeros(batch, displacements.shape[0], height, width)  # (N, D, H, W)
    for index, dy, dx in usable:
        # second(p + d) for every p
        window = second_padded[:, :, pad + dy : pad + dy + height, pad + dx : pad + dx + width]
        out[:, index] = (first * window).sum(dim=1)
    return out


def _aggregate_torch(weights: Tensor, values: Tensor, displacements: Tensor) -> Tensor:
    height, width = values.shape[2:]
    usable, pad = _usable_displacements(displacements, height, width)
    values_padded = _zero_padded(values, pad)
    weight_planes = weights.unsqueeze(2).unbind(dim=1)  # D x (N, 1, H, W)
    out = torch.zeros_like(values, memory_format=torch.channels_last)  # (N, Cv, H, W)
    for index, dy, dx in usable:
        # value(p + d) for every p
        window = values_padded[:, :, pad + dy : pad + dy + height, pad + dx : pad + dx + width]
        out.addcmul_(weight_planes[index], window)
    return out.contiguous()


def _aggregate_transposed_torch(weights: Tensor, values: Tensor, displacements: Tensor) -> Tensor:
    batch, channels, height, width = values.shape
    usable, pad = _usable_displacements(displacements, height, width)
    values = _channels_last(values)
    weight_planes = weights.unsqueeze(2).unbind(dim=1)  # D x (N, 1, H, W)
    out_padded = _zero_padded(values.new_zeros(batch, channels, height, width), pad)
    for index, dy, dx in usable:
        # position p sends w(p, d) * v(p) to q = p + d
        window = out_padded[:, :, pad + dy : pad + dy + height, pad + dx : pad + dx + width]
        window.addcmul_(weight_planes[index], values)
    return out_padded[:, :, pad : pad + height, pad : pad + width].contiguous()


def _kernel_primitive(name: str, weights_or_first: Tensor, second: Tensor, displacements: Tensor,
                      *, backend: str, out_channels_from: str) -> Tensor:
    """Run one of the three primitives with the CUDA kernels (backend "cupy" or "shim")."""
    first = weights_or_first.contiguous()
    second = second.contiguous()
    table = displacements.to(device=second.device, dtype=torch.int64).contiguous()
    batch, _, height, width = second.shape
    num_displacements = table.shape[0]
    if out_channels_from == "displacements":  # correlate: (N, D, H, W)
        out = second.new_empty(batch, num_displacements, height, width)
        channels = first.shape[1]
    else:  # aggregate / aggregate_transposed: (N, Cv, H, W)
        out = second.new_empty(second.shape)
        channels = second.shape[1]
    _kernels.run_kernel(
        OP_NAME, name, backend=backend, total_threads=out.numel(),
        args=(first, second, table, out, batch, channels, height, width, num_displacements), like=second,
    )
    return out


def _correlate(first: Tensor, second: Tensor, displacements: Tensor, backend: str) -> Tensor:
    if backend == "torch":
        return _correlate_torch(first, second, displacements)
    return _kernel_primitive("matchtrans_correlate", first, second, displacements, backend=backend,
                             out_channels_from="displacements")


def _aggregate(weights: Tensor, values: Tensor, displacements: Tensor, backend: str) -> Tensor:
    if backend == "torch":
        return _aggregate_torch(weights, values, displacements)
    return _kernel_primitive("matchtrans_aggregate", weights, values, displacements, backend=backend,
                             out_channels_from="values")


def _aggregate_transposed(weights: Tensor, values: Tensor, displacements: Tensor, backend: str) -> Tensor:
    if backend == "torch":
        return _aggregate_transposed_torch(weights, values, displacements)
    return _kernel_primitive("matchtrans_aggregate_transposed", weights, values, displacements,
                             backend=backend, out_channels_from="values")


class _CorrelationFunction(torch.autograd.Function):
    """``A[n, d, p] = <query(p), key(p + d)>``; backward recomputes from query and key (nothing unfolded)."""

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, displacements: Tensor, backend: str) -> Tensor:
        ctx.save_for_backward(query, key, displacements)
        ctx.backend = backend
        return _correlate(query, key, displacements, backend)

    @staticmethod
    def backward(ctx, grad_affinity: Tensor):
        query, key, displacements = ctx.saved_tensors
        grad_query = grad_key = None
        if ctx.needs_input_grad[0]:  # dL/dq(p) = sum_d g(p, d) key(p + d)
            grad_query = _aggregate(grad_affinity, key, displacements, ctx.backend)
        if ctx.needs_input_grad[1]:  # dL/dkey(q) = sum_d g(q - d, d) query(q - d)
            grad_key = _aggregate_transposed(grad_affinity, query, displacements, ctx.backend)
        return grad_query, grad_key, None, None


class _AggregationFunction(torch.autograd.Function):
    """``out[n, c, p] = sum_d weights[n, d, p] value[n, c, p + d]``; backward recomputes from the inputs."""

    @staticmethod
    def forward(ctx, weights: Tensor, value: Tensor, displacements: Tensor, backend: str) -> Tensor:
        ctx.save_for_backward(weights, value, displacements)
        ctx.backend = backend
        return _aggregate(weights, value, displacements, backend)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        weights, value, displacements = ctx.saved_tensors
        grad_weights = grad_value = None
        if ctx.needs_input_grad[0]:  # dL/dw(p, d) = <g(p), value(p + d)>
            grad_weights = _correlate(grad_out, value, displacements, ctx.backend)
        if ctx.needs_input_grad[1]:  # dL/dvalue(q) = sum_d w(q - d, d) g(q - d)
            grad_value = _aggregate_transposed(weights, grad_out, displacements, ctx.backend)
        return grad_weights, grad_value, None, None


def _check_displacements(displacements: Tensor) -> None:
    if displacements.dim() != 2 or displacements.shape[1] != 2 or displacements.dtype != torch.int64:
        raise ValueError(
            f"displacements must be an int64 Tensor[D, 2] of (dy, dx), got {displacements.dtype} "
            f"shape {tuple(displacements.shape)}"
        )


def displacement_correlation(query: Tensor, key: Tensor, displacements: Tensor, *, backend: str = "torch"
                             ) -> Tensor:
    """Dot products of ``query(p)`` with ``key(p + d)`` for a table of integer displacements.

    Args:
        query (Tensor[N, C, H, W]), key (Tensor[N, C, H, W]).
        displacements (Tensor[D, 2] int64): (dy, dx) per row; cells outside the map count as zeros.
        backend: "torch" (torch ops, any device), "cupy" (CUDA kernels on a GPU) or "shim" (the same
            kernels on the CPU, for tests).
    Returns:
        Tensor[N, D, H, W]. Differentiable in query and key; the backward recomputes, saving no
        (N, C, D, H, W) intermediate.
    """
    check_feature_maps(query=query, key=key)
    if query.shape[1] != key.shape[1]:
        raise ValueError(f"query has {query.shape[1]} channels, key has {key.shape[1]}: they must match")
    _check_displacements(displacements)
    return _CorrelationFunction.apply(query, key, displacements, backend)


def displacement_aggregation(weights: Tensor, value: Tensor, displacements: Tensor, *, backend: str = "torch"
                             ) -> Tensor:
    """``out(p) = sum_d weights(p, d) * value(p + d)`` for a table of integer displacements.

    Args:
        weights (Tensor[N, D, H, W]), value (Tensor[N, Cv, H, W]).
        displacements (Tensor[D, 2] int64): (dy, dx) per row; cells outside the map count as zeros.
        backend: "torch", "cupy" or "shim" (see :func:`displacement_correlation`).
    Returns:
        Tensor[N, Cv, H, W], differentiable in weights and value.
    """
    check_feature_maps(weights=weights, value=value)
    _check_displacements(displacements)
    if weights.shape[1] != displacements.shape[0]:
        raise ValueError(
            f"weights has {weights.shape[1]} channels but displacements has {displacements.shape[0]} rows"
        )
    return _AggregationFunction.apply(weights, value, displacements, backend)


# ----------------------------------------------------------------------------------------------------
# MatchTrans: public function, Module, reference and the unfold formulation
# ----------------------------------------------------------------------------------------------------
def _check_matchtrans_args(query: Tensor, key: Tensor, value: Tensor, k: int, dilation: int, normalize: str
                           ) -> None:
    check_feature_maps(query=query, key=key, value=value)
    if query.shape[1] != key.shape[1]:
        raise ValueError(
            f"query and key must have the same channels, got query {tuple(query.shape)}, "
            f"key {tuple(key.shape)}"
        )
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k (vicinity radius) must be an int >= 0, got {k!r}")
    if not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be an int >= 1, got {dilation!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")


def matchtrans_with_backend(query: Tensor, key: Tensor, value: Tensor, *, k: int = 2, dilation: int = 1,
                            normalize: str = "sum", eps: float = DEFAULT_EPS, backend: str = "torch"
                            ) -> Tensor:
    """MatchTrans through the custom Functions on an explicit backend ("torch", "cupy" or "shim").

    :func:`matchtrans` calls this with "torch" (``impl="fast"``) or "cupy"; tests call it with "shim"
    to run the CUDA kernels on the CPU. Shapes as in :func:`matchtrans`.
    """
    _check_matchtrans_args(query, key, value, k, dilation, normalize)
    displacements = vicinity_displacements(k, dilation, device=query.device)  # (D, 2)
    affinity = _CorrelationFunction.apply(query, key, displacements, backend)  # (N, D, H, W)
    weights = normalize_scores(affinity, normalize=normalize, eps=eps)  # (N, D, H, W)
    return _AggregationFunction.apply(weights, value, displacements, backend)  # (N, Cv, H, W)


def matchtrans_reference(query: Tensor, key: Tensor, value: Tensor, *, k: int = 2, dilation: int = 1,
                         normalize: str = "sum", eps: float = DEFAULT_EPS) -> Tensor:
    """Slow, obviously correct MatchTrans: zero-pad key and value, loop over the vicinity, plain autograd."""
    _check_matchtrans_args(query, key, value, k, dilation, normalize)
    height, width = query.shape[2:]
    pad = k * dilation
    key_padded = F.pad(key, (pad, pad, pad, pad))  # (N, C, H + 2pad, W + 2pad)
    value_padded = F.pad(value, (pad, pad, pad, pad))  # (N, Cv, H + 2pad, W + 2pad)
    affinities, shifted_values = [], []
    for i in range(-k, k + 1):
        for j in range(-k, k + 1):
            top, left = pad + i * dilation, pad + j * dilation
            key_shifted = key_padded[:, :, top : top + height, left : left + width]  # key(p + d)
            affinities.append((query * key_shifted).sum(dim=1))  # (N, H, W)
            shifted_values.append(value_padded[:, :, top : top + height, left : left + width])
    affinity = torch.stack(affinities, dim=1)  # (N, D, H, W)
    weights = normalize_scores(affinity, normalize=normalize, eps=eps)
    out = torch.zeros_like(value)
    for index, value_shifted in enumerate(shifted_values):
        out = out + weights[:, index : index + 1] * value_shifted
    return out


def matchtrans_unfold(query: Tensor, key: Tensor, value: Tensor, *, k: int = 2, dilation: int = 1,
                      normalize: str = "sum", eps: float = DEFAULT_EPS) -> Tensor:
    """MatchTrans as public code usually writes it: ``F.unfold`` key and value into (N, C, D, H*W).

    Kept as the benchmark baseline and as a second, independent check of the reference. Memory-hungry:
    it materialises (and autograd keeps) two tensors D = (2k+1)^2 times the size of key and value.
    """
    _check_matchtrans_args(query, key, value, k, dilation, normalize)
    batch, channels, height, width = query.shape
    window = 2 * k + 1
    unfold = dict(kernel_size=window, dilation=dilation, padding=k * dilation)
    # (N, C * D, H * W) -> (N, C, D, H * W)
    key_columns = F.unfold(key, **unfold).view(batch, channels, window * window, height * width)
    value_columns = F.unfold(value, **unfold).view(batch, value.shape[1], window * window, height * width)
    affinity = torch.einsum("ncp,ncdp->ndp", query.reshape(batch, channels, height * width), key_columns)
    weights = normalize_scores(affinity, normalize=normalize, eps=eps)  # (N, D, HW)
    out = torch.einsum("ndp,ncdp->ncp", weights, value_columns)  # (N, Cv, HW)
    return out.view(batch, value.shape[1], height, width)


def matchtrans(query: Tensor, key: Tensor, value: Tensor, *, k: int = 2, dilation: int = 1,
               normalize: str = "sum", eps: float = DEFAULT_EPS, impl: str = "auto") -> Tensor:
    """Align ``value`` to ``query`` by affinity over the (2k+1)x(2k+1) vicinity of ``key`` (STMN MatchTrans).

    Args:
        query (Tensor[N, C, H, W]): features of the frame to align to (STMN's F_t).
        key (Tensor[N, C, H, W]): features of the frame being aligned (F_{t-1}).
        value (Tensor[N, Cv, H, W]): what is moved (STMN's memory M_{t-1}).
        k: vicinity radius (STMN uses 2: a 5x5 vicinity). dilation: spacing of the vicinity cells.
        normalize: "sum" (STMN's A / sum A, eps-guarded, see :func:`normalize_scores`) or "softmax".
        impl: "auto" | "cupy" | "fast" | "reference" (see the module docstring; env
            ``VODBENCH_OPS_REFERENCE=1`` forces "reference").
    Returns:
        Tensor[N, Cv, H, W]: ``out(p) = sum_d Gamma(p, d) value(p + d)``, zero padding outside.
    """
    _check_matchtrans_args(query, key, value, k, dilation, normalize)
    chosen = _kernels.select_impl(impl, query)
    if chosen == "reference":
        return matchtrans_reference(query, key, value, k=k, dilation=dilation, normalize=normalize, eps=eps)
    backend = "cupy" if chosen == "cupy" else "torch"
    return matchtrans_with_backend(query, key, value, k=k, dilation=dilation, normalize=normalize, eps=eps,
                                   backend=backend)


class MatchTrans(nn.Module):
    """Module form of :func:`matchtrans` (no parameters: the embeddings belong to the caller)."""

    def __init__(self, *, k: int = 2, dilation: int = 1, normalize: str = "sum", eps: float = DEFAULT_EPS,
                 impl: str = "auto") -> None:
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.k, self.dilation, self.normalize, self.eps, self.impl = k, dilation, normalize, eps, impl

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        return matchtrans(query, key, value, k=self.k, dilation=self.dilation, normalize=self.normalize,
                          eps=self.eps, impl=self.impl)

    def extra_repr(self) -> str:
        return f"k={self.k}, dilation={self.dilation}, normalize={self.normalize!r}, impl={self.impl!r}"
