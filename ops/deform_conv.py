"""Deformable convolution (DCNv1; DCNv2 when a modulation mask is given), a drop-in for
``torchvision.ops.deform_conv2d``.

Each tap ``k = (i, j)`` of a ``KH x KW`` kernel at output position ``(ho, wo)`` reads the input
bilinearly at ``(ho * stride - pad + i * dilation + dy, wo * stride - pad + j * dilation + dx)``, where
``(dy, dx)`` is that tap's learned offset, optionally scaled by a mask in DCNv2; the sampled values are
then combined with the weight like an ordinary (grouped) convolution. Positions farther than one pixel
outside the map read 0 and corners outside the map contribute 0, as in torchvision.

Implementations (see ``ops/_kernels.py`` for the dispatch rules shared by all ops):

- ``"fast"`` (CPU or any device): bilinear corners and weights computed once per sample for all
  channels, whole channel vectors gathered from a zero-bordered channels-last copy of the input by one
  fused ``embedding_bag``, then one matmul. The gather has an explicit backward (``index_add_`` for the
  input, corner dot products for the weights); offsets and mask get their gradients by autograd through
  the bilinear weights. Once differentiable. (It replaced one ``grid_sample`` over all taps, which is
  slow on the CPU for many-channel channels-first inputs.)
- ``"cupy"``: ``ops/cuda/deform_conv.cu`` kernels sample (im2col) and scatter gradients (col2im); the
  matmuls run in torch. :class:`DeformConvFunction` has an explicit backward, and a ``backend`` switch
  so that tests run the very same Function on the CPU through the kernel shim.
- ``"reference"``: :func:`deform_conv2d_reference`, a plain loop over taps with hand-written bilinear
  interpolation. Slow, obviously correct.

One measure-zero difference: at a sampling coordinate of exactly -1 (e.g. zero offsets with padding 1)
all three implementations return 0 with zero gradient with respect to the offset (the sample counts as
outside), while torchvision returns 0 with a one-sided, nonzero offset gradient. Values agree everywhere.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair

from ops import _kernels

__all__ = ["DeformConv2d", "DeformConvFunction", "deform_conv2d", "deform_conv2d_reference"]


def _check_shapes(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int, int, int]:
    """Validate shapes; return (groups, offset_groups, out_h, out_w)."""
    for name, tensor in (("input", input), ("offset", offset), ("weight", weight)) + (
        (("mask", mask),) if mask is not None else ()
    ):
        if tensor.dim() != 4:
            raise ValueError(f"{name} must be 4-D, got shape {tuple(tensor.shape)}")
    if any(s < 1 for s in stride) or any(d < 1 for d in dilation) or any(p < 0 for p in padding):
        raise ValueError(
            f"need stride >= 1, dilation >= 1, padding >= 0; got {stride}, {dilation}, {padding}"
        )
    batch, channels, height, width = input.shape
    out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
    taps = kernel_h * kernel_w
    if channels_per_group == 0 or channels % channels_per_group != 0:
        raise ValueError(f"input channels {channels} not divisible by weight.shape[1]={channels_per_group}")
    groups = channels // channels_per_group
    if out_channels % groups != 0:
        raise ValueError(f"weight.shape[0]={out_channels} not divisible by the {groups} groups")
    if offset.shape[1] == 0 or offset.shape[1] % (2 * taps) != 0:
        raise ValueError(
            f"offset.shape[1]={offset.shape[1]} must be a positive multiple of 2*KH*KW={2 * taps}"
        )
    offset_groups = offset.shape[1] // (2 * taps)
    if channels % offset_groups != 0:
        raise ValueError(f"input channels {channels} not divisible by the {offset_groups} offset groups")
    out_h = (height + 2 * padding[0] - dilation[0] * (kernel_h - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kernel_w - 1) - 1) // stride[1] + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"output would be empty ({out_h}x{out_w}) for input {height}x{width}")
    if offset.shape[0] != batch or offset.shape[2:] != (out_h, out_w):
        raise ValueError(
            f"offset shape {tuple(offset.shape)} must be ({batch}, {2 * offset_groups * taps}, "
            f"{out_h}, {out_w})"
        )
    if mask is not None and tuple(mask.shape) != (batch, offset_groups * taps, out_h, out_w):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must be ({batch}, {offset_groups * taps}, {out_h}, {out_w})"
        )
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(f"bias shape {tuple(bias.shape)} must be ({out_channels},)")
    return groups, offset_groups, out_h, out_w


def _base_positions(
    kernel_h: int,
    kernel_w: int,
    out_h: int,
    out_w: int,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    like: Tensor,
) -> tuple[Tensor, Tensor]:
    """Undeformed sampling rows and columns, each (K, out_h, out_w) with K = KH * KW (tap-major)."""
    tap_rows = torch.arange(kernel_h, dtype=like.dtype, device=like.device) * dilation[0]
    tap_cols = torch.arange(kernel_w, dtype=like.dtype, device=like.device) * dilation[1]
    out_rows = torch.arange(out_h, dtype=like.dtype, device=like.device) * stride[0] - padding[0]
    out_cols = torch.arange(out_w, dtype=like.dtype, device=like.device) * stride[1] - padding[1]
    rows = tap_rows.view(kernel_h, 1, 1, 1) + out_rows.view(1, 1, out_h, 1)  # (KH, 1, out_h, 1)
    cols = tap_cols.view(1, kernel_w, 1, 1) + out_cols.view(1, 1, 1, out_w)  # (1, KW, 1, out_w)
    taps = kernel_h * kernel_w
    rows = rows.expand(kernel_h, kernel_w, out_h, out_w).reshape(taps, out_h, out_w)
    cols = cols.expand(kernel_h, kernel_w, out_h, out_w).reshape(taps, out_h, out_w)
    return rows, cols


def _columns_to_output(
    columns: Tensor, weight: Tensor, bias: Tensor | None, out_h: int, out_w: int
) -> Tensor:
    """(N, C, K, L) sampled columns x weight (C_out, C/groups, KH, KW) -> output (N, C_out, out_h, out_w).

    The batch is folded into the matmul's column dimension so that each convolution group is ONE large
    GEMM (a broadcast batched matmul over N is several times slower on CPU).
    """
    batch, channels, taps, positions = columns.shape
    out_channels, channels_per_group = weight.shape[:2]
    groups = channels // channels_per_group
    # (N, C, K, L) -> (N, G, C/G*K, L) -> (G, C/G*K, N, L) -> (G, C/G*K, N*L)
    columns = columns.reshape(batch, groups, channels_per_group * taps, positions).permute(1, 2, 0, 3)
    columns = columns.reshape(groups, channels_per_group * taps, batch * positions)
    weight = weight.reshape(groups, out_channels // groups, channels_per_group * taps)  # (G, Co/G, C/G*K)
    if bias is not None:
        output = torch.baddbmm(bias.view(groups, out_channels // groups, 1), weight, columns)
    else:
        output = torch.bmm(weight, columns)  # (G, Co/G, N*L)
    # (G, Co/G, N*L) -> (G, Co/G, N, L) -> (N, G, Co/G, L) -> (N, C_out, out_h, out_w)
    output = output.reshape(groups, out_channels // groups, batch, positions).permute(2, 0, 1, 3)
    return output.reshape(batch, out_channels, out_h, out_w)


def deform_conv2d_reference(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    mask: Tensor | None = None,
) -> Tensor:
    """Slow reference: loops over offset groups and taps, bilinear interpolation written out by hand.

    Same arguments and result as :func:`deform_conv2d`. Differentiable through torch autograd.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    groups, offset_groups, out_h, out_w = _check_shapes(
        input, offset, weight, bias, mask, stride, padding, dilation
    )
    batch, channels, height, width = input.shape
    kernel_h, kernel_w = weight.shape[2:]
    taps = kernel_h * kernel_w
    channels_per_offset_group = channels // offset_groups
    base_rows, base_cols = _base_positions(kernel_h, kernel_w, out_h, out_w, stride, padding, dilation, input)
    flat_input = input.reshape(batch, channels, height * width)
    columns = []
    for g in range(offset_groups):
        group_input = flat_input[:, g * channels_per_offset_group : (g + 1) * channels_per_offset_group]
        for k in range(taps):
            y = base_rows[k] + offset[:, 2 * (g * taps + k)]  # (N, out_h, out_w)
            x = base_cols[k] + offset[:, 2 * (g * taps + k) + 1]
            inside = (y > -1) & (y < height) & (x > -1) & (x < width)
            y0, x0 = torch.floor(y), torch.floor(x)
            sampled = 0
            for corner_y, weight_y in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
                for corner_x, weight_x in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
                    valid = (
                        inside & (corner_y >= 0) & (corner_y < height) & (corner_x >= 0) & (corner_x < width)
                    )
                    flat_index = (corner_y.clamp(0, height - 1) * width + corner_x.clamp(0, width - 1)).long()
                    values = torch.gather(
                        group_input,
                        2,
                        flat_index.view(batch, 1, out_h * out_w).expand(-1, channels_per_offset_group, -1),
                    ).view(batch, channels_per_offset_group, out_h, out_w)
                    sampled = sampled + values * (weight_y * weight_x * valid).unsqueeze(1)
            if mask is not None:
                sampled = sampled * mask[:, g * taps + k].unsqueeze(1)
            columns.append(sampled)  # (N, C/offset_groups, out_h, out_w)
    # columns[g * taps + k] -> (N, offset_groups, K, C/offset_groups, L) -> (N, C, K, L)
    stacked = torch.stack(columns, dim=1).reshape(
        batch, offset_groups, taps, channels_per_offset_group, out_h * out_w
    )
    stacked = stacked.transpose(2, 3).reshape(batch, channels, taps, out_h * out_w)
    return _columns_to_output(stacked, weight, bias, out_h, out_w)


# Elements per chunk of the gather backward's (4 * rows, C/G) temporary, to keep it cache-sized.
_BACKWARD_CHUNK_ELEMENTS = 2**19


class _BilinearGather(torch.autograd.Function):
    """Weighted sum of 4 table rows per output row: ``out[r] = sum_i weight[r, i] * table[index[r, i]]``.

    table (T, C), index (R, 4) int64, weight (R, 4) -> (R, C). Forward is one fused
    ``F.embedding_bag`` (mode "sum" with per-sample weights). The explicit backward exists because
    embedding_bag's own backward sorts all 4R indices, which costs more than the whole forward here:
    grad table is an ``index_add_`` in cache-sized chunks, grad weight one sampled matmul.
    """

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(table, index, weight)
        return F.embedding_bag(index, table, mode="sum", per_sample_weights=weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        table, index, weight = ctx.saved_tensors
        grad_output = grad_output.contiguous()
        rows, channels = grad_output.shape
        want_table, _, want_weight = ctx.needs_input_grad
        grad_table = torch.zeros_like(table) if want_table else None
        grad_weight = None
        if want_table:
            chunk = max(1, _BACKWARD_CHUNK_ELEMENTS // (4 * max(channels, 1)))
            for start in range(0, rows, chunk):
                # (R', 1, C) * (R', 4, 1) -> (R', 4, C), row order matching index[start : start + chunk]
                contributions = grad_output[start : start + chunk].unsqueeze(1) * weight[
                    start : start + chunk
                ].unsqueeze(2)
                grad_table.index_add_(
                    0, index[start : start + chunk].reshape(-1), contributions.reshape(-1, channels)
                )
        if want_weight:
            grad_weight = _corner_dot_products(grad_output, table, index)
        return grad_table, None, grad_weight


def _corner_dot_products(grad_output: Tensor, table: Tensor, index: Tensor) -> Tensor:
    """``out[r, i] = <grad_output[r], table[index[r, i]]>``: grad_output (R, C), table (T, C), index (R, 4).

    One sampled dense-dense matmul (``torch.sparse.sampled_addmm``) over the CSR pattern whose row r
    holds the 4 columns index[r] (ascending by construction), several times faster than gathering the
    corners and a batched dot product.
    """
    rows = index.shape[0]
    if rows == 0:
        return grad_output.new_zeros(0, 4)
    row_starts = torch.arange(0, 4 * rows + 1, 4, device=index.device)
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.filterwarnings(
            "ignore", message="Sparse CSR tensor support is in beta", category=UserWarning
        )
        pattern = torch.sparse_csr_tensor(
            row_starts,
            index.reshape(-1),
            grad_output.new_zeros(4 * rows),
            size=(rows, table.shape[0]),
            check_invariants=False,  # valid by construction; checking costs a pass over the indices
        )
    return torch.sparse.sampled_addmm(pattern, grad_output, table.t(), beta=0.0).values().view(rows, 4)


def _corner_indices_and_weights(
    offset: Tensor,
    mask: Tensor | None,
    base_rows: Tensor,
    base_cols: Tensor,
    height: int,
    width: int,
    offset_groups: int,
) -> tuple[Tensor, Tensor]:
    """Bilinear corners of every sample, rows ordered (n, l, g, k) to match the matmul's column layout.

    offset (N, 2*G*K, out_h, out_w), mask (N, G*K, out_h, out_w) or None, base_rows / base_cols
    (K, out_h, out_w). Returns index (N*L*G*K, 4) into the zero-bordered channels-last table of
    :func:`_deform_conv2d_fast` (row ``(n*G + g)*(H+2)*(W+2) + (y+1)*(W+2) + (x+1)`` holds pixel (y, x)
    for -1 <= y <= H, -1 <= x <= W; the border rows are zeros) and weight (N*L*G*K, 4), differentiable
    w.r.t. offset and mask. torchvision's border rule: a sample with y <= -1, y >= H, x <= -1 or x >= W
    reads 0 (weight 0, hence zero gradient too); inside, a corner outside the map reads the zero border.
    Few, large elementwise ops on purpose: each op costs a thread synchronisation on a busy machine.
    """
    batch = offset.shape[0]
    taps, out_h, out_w = base_rows.shape
    positions = out_h * out_w
    padded_width = width + 2
    # (N, 2*G*K, out_h, out_w) -> (N, G, K, 2, L) -> (N, L, G, K, 2): (y, x) per sample
    offset = offset.reshape(batch, offset_groups, taps, 2, positions).permute(0, 4, 1, 2, 3)
    base = torch.stack((base_rows, base_cols), dim=-1).reshape(taps, positions, 2).transpose(0, 1)
    coords = offset + base.unsqueeze(1)  # (N, L, G, K, 2)
    limits = coords.new_tensor([height, width])
    inside = ((coords > -1) & (coords < limits)).all(dim=-1)  # (N, L, G, K)
    # Inside the map floor(y) is in [-1, H-1]; clamping only moves samples whose weight is 0 anyway.
    corner = torch.floor(coords.detach())
    frac = coords - corner  # (N, L, G, K, 2)
    corner = torch.minimum(corner.clamp(min=-1), limits - 1).long() + 1  # padded (row, col) of top-left
    plane = torch.arange(batch * offset_groups, device=offset.device).view(batch, 1, offset_groups, 1)
    top_left = (plane * (height + 2) + corner[..., 0]) * padded_width + corner[..., 1]  # (N, L, G, K)
    corner_steps = torch.tensor([0, 1, padded_width, padded_width + 1], device=offset.device)
    index = top_left.unsqueeze(-1) + corner_steps  # (N, L, G, K, 4): TL, TR, BL, BR
    # (1 - f, f) per axis; outer product rows x cols -> (N, L, G, K, 2, 2) -> (..., 4) as TL, TR, BL, BR
    axis_weights = torch.stack((1 - frac, frac), dim=-1)  # (N, L, G, K, 2 axes, 2)
    scale = inside.to(coords.dtype)
    if mask is not None:
        # (N, G*K, out_h, out_w) -> (N, G, K, L) -> (N, L, G, K)
        scale = scale * mask.reshape(batch, offset_groups, taps, positions).permute(0, 3, 1, 2)
    weight = (axis_weights[..., 0, :, None] * axis_weights[..., 1, None, :]).flatten(-2) * scale.unsqueeze(-1)
    return index.reshape(-1, 4), weight.reshape(-1, 4)


def _deform_conv2d_fast(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    mask: Tensor | None,
    offset_groups: int,
    out_h: int,
    out_w: int,
) -> Tensor:
    """Gather-based sampling on a channels-last copy of the input, then one matmul.

    Every sample's 4 bilinear corners and weights are computed once for all channels; whole channel
    vectors are gathered (:class:`_BilinearGather`) into columns (N*L, G*K*C/G) ordered (g, k, c), and
    the weight is permuted (a small copy) to the same order, so no large transpose is needed before the
    GEMM. Convolution groups > 1 go through :func:`_columns_to_output` instead.
    """
    batch, channels, height, width = input.shape
    out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
    taps, positions = kernel_h * kernel_w, out_h * out_w
    channels_per_offset_group = channels // offset_groups
    base_rows, base_cols = _base_positions(kernel_h, kernel_w, out_h, out_w, stride, padding, dilation, input)
    index, corner_weight = _corner_indices_and_weights(
        offset, mask, base_rows, base_cols, height, width, offset_groups
    )
    # (N, C, H, W) -> zero border (N, C, H+2, W+2) -> (N, G, C/G, (H+2)*(W+2)) -> (N, G, (H+2)*(W+2), C/G)
    padded = F.pad(input, (1, 1, 1, 1))
    padded_pixels = (height + 2) * (width + 2)
    table = padded.reshape(batch, offset_groups, channels_per_offset_group, padded_pixels).transpose(2, 3)
    table = table.reshape(batch * offset_groups * padded_pixels, channels_per_offset_group)
    columns = _BilinearGather.apply(table, index, corner_weight)  # (N*L*G*K, C/G)
    if channels_per_group != channels:  # convolution groups: back to (N, C, K, L)
        # (N, L, G, K, C/G) -> (N, G, C/G, K, L) -> (N, C, K, L)
        columns = columns.reshape(batch, positions, offset_groups, taps, channels_per_offset_group)
        columns = columns.permute(0, 2, 4, 3, 1).reshape(batch, channels, taps, positions)
        return _columns_to_output(columns, weight, bias, out_h, out_w)
    columns = columns.reshape(batch * positions, offset_groups * taps * channels_per_offset_group)
    # (Co, C, KH, KW) -> (Co, G, C/G, K) -> (Co, G, K, C/G) -> (Co, G*K*C/G)
    weight_matrix = weight.reshape(out_channels, offset_groups, channels_per_offset_group, taps)
    weight_matrix = weight_matrix.permute(0, 1, 3, 2).reshape(out_channels, channels * taps)
    if bias is not None:
        output = torch.addmm(bias, columns, weight_matrix.t())  # (N*L, Co)
    else:
        output = columns @ weight_matrix.t()
    # (N*L, Co) -> (N, L, Co) -> (N, Co, L) -> (N, Co, out_h, out_w)
    return (
        output.reshape(batch, positions, out_channels)
        .transpose(1, 2)
        .reshape(batch, out_channels, out_h, out_w)
    )


class DeformConvFunction(torch.autograd.Function):
    """Deformable convolution through the CUDA kernels of ``ops/cuda/deform_conv.cu``, explicit backward.

    ``backend="cupy"`` launches them on the GPU, ``backend="shim"`` runs the same kernels on the CPU
    (tests). Matmuls (weight, bias and their gradients) run in torch. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, input, offset, mask, weight, bias, stride, padding, dilation, offset_groups, backend):
        input, offset, weight = input.contiguous(), offset.contiguous(), weight.contiguous()
        has_mask = mask is not None
        mask = mask.contiguous() if has_mask else input.new_empty(0)
        batch, channels, height, width = input.shape
        kernel_h, kernel_w = weight.shape[2:]
        out_h, out_w = offset.shape[2:]
        geometry = (
            batch,
            channels,
            height,
            width,
            kernel_h,
            kernel_w,
            *stride,
            *padding,
            *dilation,
            out_h,
            out_w,
            offset_groups,
        )
        columns = input.new_empty(batch, channels, kernel_h * kernel_w, out_h * out_w)
        _kernels.run_kernel(
            "deform_conv",
            "deform_im2col",
            backend=backend,
            total_threads=columns.numel(),
            args=(input, offset, mask, int(has_mask), columns, *geometry),
            like=input,
        )
        ctx.save_for_backward(input, offset, mask, weight, columns)
        ctx.geometry, ctx.has_mask, ctx.has_bias, ctx.backend = geometry, has_mask, bias is not None, backend
        return _columns_to_output(columns, weight, bias, out_h, out_w)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, offset, mask, weight, columns = ctx.saved_tensors
        batch, channels, taps, positions = columns.shape
        out_channels, channels_per_group = weight.shape[:2]
        groups = channels // channels_per_group
        grad_output = grad_output.contiguous().reshape(batch, groups, out_channels // groups, positions)
        weight_matrix = weight.reshape(groups, out_channels // groups, channels_per_group * taps)
        # (G, C/G*K, Co/G) @ (N, G, Co/G, L) -> (N, G, C/G*K, L) -> (N, C, K, L)
        grad_columns = (
            torch.matmul(weight_matrix.transpose(1, 2), grad_output).reshape(columns.shape).contiguous()
        )
        # (N, G, Co/G, L) @ (N, G, L, C/G*K) summed over N -> (G, Co/G, C/G*K)
        grad_weight = (
            torch.matmul(
                grad_output,
                columns.reshape(batch, groups, channels_per_group * taps, positions).transpose(2, 3),
            )
            .sum(0)
            .reshape(weight.shape)
        )
        grad_bias = grad_output.sum(dim=(0, 3)).reshape(out_channels) if ctx.has_bias else None
        grad_input = torch.zeros_like(input)
        grad_offset = torch.empty_like(offset)
        grad_mask = torch.empty_like(mask)
        run = dict(backend=ctx.backend, like=input)
        _kernels.run_kernel(
            "deform_conv",
            "deform_col2im_input",
            total_threads=columns.numel(),
            args=(grad_columns, offset, mask, int(ctx.has_mask), grad_input, *ctx.geometry),
            **run,
        )
        offset_groups = ctx.geometry[-1]
        _kernels.run_kernel(
            "deform_conv",
            "deform_col2im_offset_mask",
            total_threads=batch * offset_groups * taps * positions,
            args=(
                grad_columns,
                input,
                offset,
                mask,
                int(ctx.has_mask),
                grad_offset,
                grad_mask,
                *ctx.geometry,
            ),
            **run,
        )
        return (
            grad_input,
            grad_offset,
            grad_mask if ctx.has_mask else None,
            grad_weight,
            grad_bias,
            None,
            None,
            None,
            None,
            None,
        )


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    mask: Tensor | None = None,
    *,
    impl: str = "auto",
) -> Tensor:
    """Deformable convolution, same signature and semantics as ``torchvision.ops.deform_conv2d``.

    Args:
        input (Tensor[N, C, H, W]): input features.
        offset (Tensor[N, 2 * offset_groups * KH * KW, out_h, out_w]): per-tap displacements, ordered
            ``(dy, dx)`` per tap, taps row-major, offset groups outermost. ``offset_groups`` is inferred
            and must divide C.
        weight (Tensor[C_out, C / groups, KH, KW]): convolution weight; ``groups`` is inferred from C.
        bias (Tensor[C_out], optional).
        stride, padding, dilation (int or (int, int)).
        mask (Tensor[N, offset_groups * KH * KW, out_h, out_w], optional): DCNv2 modulation of each tap.
        impl: "auto" | "cupy" | "fast" | "reference" (see ``ops/_kernels.select_impl``).

    Returns:
        Tensor[N, C_out, out_h, out_w].
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    _, offset_groups, out_h, out_w = _check_shapes(
        input, offset, weight, bias, mask, stride, padding, dilation
    )
    chosen = _kernels.select_impl(impl, input)
    if chosen == "reference":
        return deform_conv2d_reference(input, offset, weight, bias, stride, padding, dilation, mask)
    if chosen == "cupy":
        return DeformConvFunction.apply(
            input, offset, mask, weight, bias, stride, padding, dilation, offset_groups, "cupy"
        )
    return _deform_conv2d_fast(
        input, offset, weight, bias, stride, padding, dilation, mask, offset_groups, out_h, out_w
    )


class DeformConv2d(nn.Module):
    """Deformable 2-D convolution layer; offsets (and mask) are passed to ``forward``, as in torchvision.

    forward(input (Tensor[N, C_in, H, W]), offset, mask=None) -> Tensor[N, C_out, out_h, out_w].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        impl: str = "auto",
    ):
        super().__init__()
        if in_channels % groups != 0 or out_channels % groups != 0:
            raise ValueError(
                f"in_channels={in_channels} and out_channels={out_channels} must divide by groups={groups}"
            )
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.impl = impl
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *_pair(kernel_size)))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weight and uniform bias, as ``nn.Conv2d`` and torchvision's DeformConv2d."""
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            nn.init.uniform_(self.bias, -1 / fan_in**0.5, 1 / fan_in**0.5)

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        return deform_conv2d(
            input,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
            impl=self.impl,
        )
