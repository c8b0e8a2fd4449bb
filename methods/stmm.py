"""STMN's spatial-temporal memory cell (Xiao & Lee, ECCV 2018, Sec. 3.2, Eq. 1-4) and a ConvGRU.

STMM (``cell="stmm"``), for input features F_t (N, D, H, W) and memory M_{t-1} (N, M, H, W):

    z_t  = BN*(ReLU(W_z * F_t + U_z * M_{t-1}))                 (1) update gate
    r_t  = BN*(ReLU(W_r * F_t + U_r * M_{t-1}))                 (2) reset gate
    M~_t = ReLU(W * F_t + U * (M_{t-1} . r_t))                  (3) candidate memory
    M_t  = (1 - z_t) . M_{t-1} + z_t . M~_t                     (4)

every kernel 3x3 (padding 1), the U's without bias, the gates element-wise (M channels), M_0 = 0:
as the official Torch7 code builds the cell (``modules/STMM.lua``: six ``SpatialConvolution(., ., 3,
3, 1, 1, 1, 1)``, ``noBias()`` on the three U convs, ``ELEMENT_MASK = true``, a zero ``mem0``). Its
``mult_after_w`` factor (20 = 1 / ``RESNET_BOTTLENECK_MAG`` in ``models/model.lua``, compensating
features scaled by 0.05 there) is 1 here: these features are not scaled.

BN* (:func:`bn_star`, Fig. 3) squashes a gate pre-activation x >= 0 linearly into [0, 1], cut at
``ub = mean + K * std``, K = 3. The official code (``modules/AdaLinearScale.lua``) computes mean and
(unbiased) std over the **positive entries of the whole tensor** it is given, falls back to ub = 1
when there are none or the std is NaN (a single positive entry), returns ``clamp(x, 0, ub) / ub``
and back-propagates through clamp and scale only (ub is a constant of the backward). There the
tensor is a whole batch of sequences; here the statistics are taken **per sample** (over the C, H, W
entries of each of the N maps), so a frame's output never depends on the other videos batched with
it; otherwise identical. As in Torch7's ``nn.Clamp``, the gradient is 0 where x >= ub.

ConvGRU (``cell="convgru"``, the paper's ConvGRU-Pretrain / -FreshFC rows): the same equations with
sigmoid gates, no BN*, and tanh for the candidate; the same 3x3 kernels and bias layout.

Initialisation. The paper initialises W_z, W_r and W from the conv layer the STMM replaces (Sec.
3.2); the shared detector has no such layer (its head reads the backbone directly), so there is no
direct counterpart. ``identity_init=True`` (the STMM's default; a harness choice) makes a cell pass
its input through at the start: ``W`` copies the input channels ``[first_channel, first_channel +
M)`` on its centre tap (bias 0), the U's start at 0, and ``W_z``, ``W_r`` at weight 0 with biases
``1 + s_c``, ``s_c`` spread evenly over [-0.01, 0.01] across channels. Then for inputs F >= 0 the
candidate is exactly the selected channels of F, and z = r = s / ub is within 3% of 1 (the spread
keeps every gate entry strictly below ub, where BN*'s clamp would block its gradient), so
``M_t ~= 0.98 F_t``: the memory starts as (almost) the current frame and learns from there what to
keep. The ConvGRU keeps PyTorch's default init (the paper's ConvGRU rows use random weights: its
sigmoid/tanh ranges do not fit the pretrained layers, the reason for STMM's ReLU and BN*).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CELLS = ("stmm", "convgru")
BN_STAR_K = 3.0  # the official std_multiplier (paper: K = 3)
KERNEL = 3  # every STMM kernel is 3x3
GATE_BIAS_SPREAD = 0.01  # identity init: gate biases spread over 1 +- this across channels


def bn_star(x: Tensor, k: float = BN_STAR_K) -> Tensor:
    """BN*: ``clamp(x, 0, ub) / ub`` with ``ub = mean + k * std`` of the positive entries of each sample.

    Args:
        x (Tensor[N, ...]): gate pre-activations (after ReLU in the STMM, so x >= 0).
        k: the cut in standard deviations (paper and official code: 3).
    Returns:
        Tensor of x's shape in [0, 1]. ``ub`` is computed per sample n over ``x[n]`` (unbiased std, as
        Torch7's ``torch.std``), 1 where ``x[n]`` has fewer than two positive entries, and treated as
        a constant in the backward (gradient ``1 / ub`` where ``0 < x < ub``, else 0).
    """
    with torch.no_grad():
        flat = x.detach().flatten(1)  # (N, L)
        positive = flat > 0
        count = positive.sum(dim=1).to(flat.dtype)  # (N,)
        mean = (flat * positive).sum(dim=1) / count.clamp_min(1)
        squares = ((flat - mean[:, None]) * positive).square().sum(dim=1)
        std = (squares / (count - 1).clamp_min(1)).sqrt()
        upper = torch.where(count >= 2, mean + k * std, torch.ones_like(mean))  # (N,)
        upper = upper.view(-1, *([1] * (x.dim() - 1)))  # (N, 1, ...)
    return torch.where(x < upper, torch.clamp(x, min=0), upper) / upper  # (N, ...)


def _conv(in_channels: int, out_channels: int, *, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, KERNEL, padding=KERNEL // 2, bias=bias)


class MemoryCell(nn.Module):
    """One recurrent step ``(features (N, D, H, W), memory (N, M, H, W)) -> memory (N, M, H, W)``.

    Args:
        input_channels: D. memory_channels: M.
        cell: ``"stmm"`` (Eq. 1-4 with ReLU and BN*) or ``"convgru"`` (sigmoid / tanh).
        identity_init: start as a pass-through of input channels ``[first_channel, first_channel + M)``
            (module docstring); STMM only (``ValueError`` for the ConvGRU). None = True for the STMM.
        first_channel: see ``identity_init``.
    """

    def __init__(
        self,
        input_channels: int,
        memory_channels: int,
        *,
        cell: str = "stmm",
        identity_init: bool | None = None,
        first_channel: int = 0,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown memory cell {cell!r}; known cells: {CELLS}")
        if identity_init is None:
            identity_init = cell == "stmm"
        if identity_init and cell != "stmm":
            raise ValueError(
                f"identity_init is defined for the STMM only (cell {cell!r}: sigmoid/tanh gates cannot "
                "pass their input through)"
            )
        if identity_init and not 0 <= first_channel <= input_channels - memory_channels:
            raise ValueError(
                f"identity_init copies input channels [{first_channel}, {first_channel + memory_channels}) "
                f"but the input has {input_channels}"
            )
        self.cell = cell
        self.input_channels, self.memory_channels = input_channels, memory_channels
        self.w_z, self.u_z = _conv(input_channels, memory_channels, bias=True), _conv(
            memory_channels, memory_channels, bias=False
        )
        self.w_r, self.u_r = _conv(input_channels, memory_channels, bias=True), _conv(
            memory_channels, memory_channels, bias=False
        )
        self.w, self.u = _conv(input_channels, memory_channels, bias=True), _conv(
            memory_channels, memory_channels, bias=False
        )
        if identity_init:
            self._identity_init(first_channel)

    @torch.no_grad()
    def _identity_init(self, first_channel: int) -> None:
        m = self.memory_channels
        for conv in (self.u_z, self.u_r, self.u, self.w_z, self.w_r, self.w):
            conv.weight.zero_()
        centre = KERNEL // 2
        self.w.weight[torch.arange(m), first_channel + torch.arange(m), centre, centre] = 1.0
        self.w.bias.zero_()
        spread = torch.linspace(-GATE_BIAS_SPREAD, GATE_BIAS_SPREAD, m) if m > 1 else torch.zeros(1)
        self.w_z.bias.copy_(1.0 + spread)
        self.w_r.bias.copy_(1.0 + spread)

    def input_terms(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(W_z * F, W_r * F, W * F), each (N, M, H, W): the three input convs as one call."""
        weight = torch.cat([self.w_z.weight, self.w_r.weight, self.w.weight])  # (3M, D, 3, 3)
        bias = torch.cat([self.w_z.bias, self.w_r.bias, self.w.bias])
        return F.conv2d(features, weight, bias, padding=KERNEL // 2).chunk(3, dim=1)

    def forward(self, features: Tensor, memory: Tensor) -> Tensor:
        """``features`` (N, D, H, W), ``memory`` M_{t-1} (N, M, H, W), already aligned -> M_t (N, M, H, W)."""
        if features.dim() != 4 or features.shape[1] != self.input_channels:
            raise ValueError(
                f"features must be (N, D={self.input_channels}, H, W), got {tuple(features.shape)}"
            )
        expected = (features.shape[0], self.memory_channels, *features.shape[2:])
        if tuple(memory.shape) != expected:
            raise ValueError(f"memory must be {expected}, got {tuple(memory.shape)}")
        w_z, w_r, w = self.input_terms(features)
        u_weight = torch.cat([self.u_z.weight, self.u_r.weight])  # (2M, M, 3, 3): U_z, U_r as one call
        u_z, u_r = F.conv2d(memory, u_weight, padding=KERNEL // 2).chunk(2, dim=1)
        if self.cell == "stmm":  # Eq. 1-2
            z, r = bn_star(torch.relu(w_z + u_z)), bn_star(torch.relu(w_r + u_r))
        else:
            z, r = torch.sigmoid(w_z + u_z), torch.sigmoid(w_r + u_r)
        candidate = w + self.u(memory * r)  # Eq. 3 before its nonlinearity
        candidate = torch.relu(candidate) if self.cell == "stmm" else torch.tanh(candidate)
        return (1 - z) * memory + z * candidate  # Eq. 4

    def extra_repr(self) -> str:
        return f"cell={self.cell!r}, D={self.input_channels}, M={self.memory_channels}"
