"""STMN: the aligned spatial-temporal memory over a window (Xiao & Lee, ECCV 2018, Sec. 3.1-3.3).

``aggregator:stmn`` runs, for every reference of the batch, a memory over the window's frames in
time order, and hands the memory at the reference to the shared head. Placement as the official
model (``models/model.lua``, ``opt.model == 'stmn'``): features -> 1x1 conv + ReLU (the embedding,
D channels) -> forward STMM and backward STMM (M channels each; the backward one via ``VidFlip``
on the reversed sequence) -> concatenation (2M) -> 1x1 conv back to the head's width C -> head.

Order (``bidirectional=True``): the forward memory starts at zero at the earliest frame of the
window and steps through the frames before the reference up to the reference itself; the backward
memory starts at the latest frame and steps down to the reference. A support after the reference
never reaches the forward memory, one before it never the backward memory. ``bidirectional=False``
keeps the forward memory alone (then 2M channels by default, so the head's input width and the
number of memory channels stay the same).

Alignment (``align="matchtrans"``): before each step the memory is moved from the previous frame's
grid onto the current frame's by MatchTrans (``methods.matchtrans.official_matchtrans``), comparing
the two frames' embeddings (the STMM inputs, as the official code). ``align="none"``: the memory
stays where it is (STMN-No-MatchTrans). The first step of a memory has nothing to move (M_0 = 0).

Frames that do not update the memory: supports with ``valid = False`` (ragged batches), and copies
that the ``pad`` boundary puts at the video ends (the data layer and the sliding-window engine mark
them valid and give them the clamped frame's offset: a support whose offset repeats one already
seen, or equals 0, the reference's). So a reference at a video's first frame has a forward memory of
one step, as if the clip had been cut at the video start.

Loss: the paper supervises every frame of its T = 7 clip (each memory output goes to the head);
the window form here computes the memory at the window's centre only and the detector supervises
that reference, because the harness's trainer and sliding-window engine are built around one
reference per window (the other frames would see only one side of the window). The training signal
per clip is smaller; test-time windows (sliding, one reference each) match the training form.

Weight transfer: the paper initialises W_z, W_r, W from the conv layer the STMM replaces; the
shared detector has none (see ``methods.stmm``). With ``identity_init=True`` (default for the STMM)
the embedding starts as ``[I; -I]`` (D = 2C: the positive and negative parts of the features), the
forward STMM passes the positive part through and the backward STMM the negative part
(``methods.stmm`` identity init on channel ranges [0, C) and [C, 2C)), and the output conv starts
as ``[I, -I]``: on a window of one frame the aggregator returns 0.98 times the backbone features
(``tests/methods/test_stmn.py``), so the phase-1 head applies from the first step. The ConvGRU
keeps PyTorch's default init in its cell (embedding and output conv as above).

``fresh_head=True`` (ConvGRU-FreshFC): the detector leaves the head at its fresh initialisation
instead of loading phase 1's (``TemporalAggregator.fresh_heads``, read by
``VideoDetector.load_phase1``).

Cost (measured in ``ablations/stmn.py``'s docstring): the window engine recomputes both memories for
every reference, (T - 1) / 2 + 1 steps each.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from harness.aggregation import AggregationOutput, TemporalAggregator, TemporalContext, register
from harness.measure import scope
from methods._checks import check_channels
from methods.matchtrans import VICINITY_RADIUS, official_matchtrans
from methods.stmm import CELLS, MemoryCell

ALIGNS = ("matchtrans", "none")
DIRECTIONS = ("forward", "backward")  # cells[0] steps forward in time, cells[1] backward
# offset key of a frame that does not take part in a direction's recurrence (sorted last)
_NOT_IN_DIRECTION = torch.iinfo(torch.int64).max


def repeated_offsets(offsets: Tensor, valid: Tensor) -> Tensor:
    """(B, T) bool: supports that repeat the offset of an earlier valid support, or of the reference (0).

    ``offsets`` (B, T) int64, ``valid`` (B, T) bool. These are the ``pad`` boundary's copies.
    """
    same = offsets[:, :, None] == offsets[:, None, :]  # (B, T, T): t vs t'
    earlier = torch.ones_like(same[0]).tril(diagonal=-1)  # (T, T): t' < t
    return (same & earlier & valid[:, None, :]).any(dim=2) | (offsets == 0)


def direction_order(offsets: Tensor, usable: Tensor, *, forward: bool) -> tuple[Tensor, Tensor]:
    """The supports one memory steps through before the reference, in its order.

    Forward: usable supports with offset < 0, ascending; backward: offset > 0, descending.
    Returns (order (B, S) int64 indices into T, steps (B, S) bool: whether step s updates the memory),
    S = the largest number of such supports in the batch (steps of a shorter row are padding).
    """
    side = (offsets < 0) if forward else (offsets > 0)
    take = usable & side  # (B, T)
    key = offsets if forward else -offsets
    key = torch.where(take, key, torch.full_like(key, _NOT_IN_DIRECTION))
    order = torch.argsort(key, dim=1, stable=True)  # (B, T)
    count = int(take.sum(dim=1).max()) if take.numel() else 0
    order = order[:, :count]
    return order, torch.gather(take, 1, order)


@register("aggregator", "stmn")
class STMNAggregator(TemporalAggregator):
    """STMN's bidirectional aligned memory over the window; the memory at the reference feeds the head.

    Args:
        channels: C of the backbone features (and of the head).
        cell: ``"stmm"`` (default) or ``"convgru"``.
        align: ``"matchtrans"`` (default) or ``"none"``.
        bidirectional: forward and backward memory (default) or forward only.
        fresh_head: the head starts fresh instead of from phase 1 (ConvGRU-FreshFC).
        embed_channels: D, the STMM input width (default 2C; the official model: 1024 = 2 x 512).
        memory_channels: M per direction (default C bidirectional, 2C forward-only; official 512).
        identity_init: see the module docstring; default True for the STMM, False for the ConvGRU.
            Needs D = 2C and (directions x M) = 2C.
        k: MatchTrans vicinity radius (paper: 2).

    ``forward(ctx)`` -> ``AggregationOutput({"main": (B, C, H, W)}, aux={"memory_norm_forward": (B, H,
    W), "memory_norm_backward": (B, H, W) (bidirectional)})``: each memory's L2 norm over channels at
    the reference (the saliency of the paper's Fig. 4).
    """

    def __init__(
        self,
        channels: int,
        *,
        cell: str = "stmm",
        align: str = "matchtrans",
        bidirectional: bool = True,
        fresh_head: bool = False,
        embed_channels: int | None = None,
        memory_channels: int | None = None,
        identity_init: bool | None = None,
        k: int = VICINITY_RADIUS,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"aggregator:stmn: unknown cell {cell!r}; known cells: {CELLS}")
        if align not in ALIGNS:
            raise ValueError(f"aggregator:stmn: unknown align {align!r}; known alignments: {ALIGNS}")
        directions = 2 if bidirectional else 1
        embed_channels = 2 * channels if embed_channels is None else embed_channels
        memory_channels = 2 * channels // directions if memory_channels is None else memory_channels
        if identity_init is None:
            identity_init = cell == "stmm"
        if identity_init and (embed_channels != 2 * channels or directions * memory_channels != 2 * channels):
            raise ValueError(
                f"aggregator:stmn: identity_init needs embed_channels = 2C = {2 * channels} and "
                f"{directions} x memory_channels = 2C, got embed_channels={embed_channels}, "
                f"memory_channels={memory_channels}; pass identity_init=False for other widths"
            )
        self.channels, self.cell, self.align, self.bidirectional = channels, cell, align, bidirectional
        self.fresh_heads = fresh_head
        self.k = k
        self.embed = nn.Conv2d(channels, embed_channels, kernel_size=1)
        self.cells = nn.ModuleList(
            MemoryCell(
                embed_channels,
                memory_channels,
                cell=cell,
                identity_init=identity_init and cell == "stmm",
                first_channel=index * memory_channels,
            )
            for index in range(directions)
        )
        self.output = nn.Conv2d(directions * memory_channels, channels, kernel_size=1)
        if identity_init:
            self._identity_init()

    @torch.no_grad()
    def _identity_init(self) -> None:
        eye = torch.eye(self.channels).view(self.channels, self.channels, 1, 1)
        self.embed.weight.copy_(torch.cat([eye, -eye], dim=0))  # F -> [F, -F], ReLU -> [F+, F-]
        self.embed.bias.zero_()
        self.output.weight.copy_(torch.cat([eye, -eye], dim=1))  # [F+, F-] -> F+ - F- = F
        self.output.bias.zero_()

    def _run_memory(
        self, cell: MemoryCell, reference: Tensor, supports: Tensor, order: Tensor, steps: Tensor
    ) -> Tensor:
        """One direction: the memory after stepping through ``supports[order]`` then the reference.

        ``reference`` (B, D, H, W) and ``supports`` (B, T, D, H, W) embeddings; ``order``, ``steps``
        (B, S) from :func:`direction_order`. Returns the memory at the reference (B, M, H, W).
        """
        b, _, h, w = reference.shape
        memory = reference.new_zeros(b, cell.memory_channels, h, w)
        previous = reference  # the frame the memory sits on (irrelevant while the memory is zero)
        rows = torch.arange(b, device=reference.device)
        frames = [supports[rows, order[:, s]] for s in range(order.shape[1])]  # S x (B, D, H, W)
        updates = [steps[:, s] for s in range(order.shape[1])]
        first = True  # the memory is still zero everywhere: nothing to move
        for frame, update in zip([*frames, reference], [*updates, None], strict=True):
            if update is not None and not bool(update.any()):
                continue
            moved = memory
            if self.align == "matchtrans" and not first:
                with scope("matchtrans"):
                    moved, _ = official_matchtrans(frame, previous, memory, k=self.k)
            with scope("memory"):
                new = cell(frame, moved)
            if update is None:  # the reference always updates
                return new
            keep = update.view(b, 1, 1, 1)
            memory = torch.where(keep, new, memory)
            previous = torch.where(keep, frame, previous)
            first = False
        raise AssertionError("unreachable: the reference step returns")

    def forward(self, ctx: TemporalContext) -> AggregationOutput:
        ctx.validate()
        check_channels("reference", ctx.reference, self.channels, dim=1)
        check_channels("supports", ctx.supports, self.channels, dim=2)
        b, t = ctx.supports.shape[:2]
        with scope("memory"):
            reference = torch.relu(self.embed(ctx.reference))  # (B, D, H, W)
            if t:
                # (B, T, C, H, W) -> (B*T, C, H, W) -> (B, T, D, H, W)
                supports = torch.relu(self.embed(ctx.supports.flatten(0, 1))).unflatten(0, (b, t))
            else:
                supports = reference.new_zeros(b, 0, *reference.shape[1:])
        usable = ctx.valid & ~repeated_offsets(ctx.offsets, ctx.valid)  # (B, T)
        memories = []
        for index, cell in enumerate(self.cells):
            order, steps = direction_order(ctx.offsets, usable, forward=index == 0)
            memories.append(self._run_memory(cell, reference, supports, order, steps))
        memory = torch.cat(memories, dim=1)  # (B, directions * M, H, W)
        with scope("memory"):
            features = self.output(memory)  # (B, C, H, W)
        names = DIRECTIONS[: len(memories)]
        aux = {f"memory_norm_{name}": m.detach().norm(dim=1) for name, m in zip(names, memories, strict=True)}
        return AggregationOutput({"main": features}, aux)

    def forward_whole_clip(self, features: Tensor) -> Tensor:
        """Clip mode (the paper's test form): every frame of one clip in a single pass per direction.

        ``features`` (T, C, H, W): the backbone features of T consecutive frames of one video, in
        time order. Returns (T, C, H, W): frame t's aggregated features, equal to :meth:`forward`
        with frame t as the reference and the other frames as its supports (the window engine's
        form, which recomputes both memories for every reference; ``tests/methods/test_stmn.py``).
        Here the forward memory steps once through frames 0..T-1 and the backward one once through
        T-1..0, keeping the memory at every frame: 2T memory steps for T outputs instead of T(T+1).
        """
        if features.dim() != 4 or features.shape[0] < 1:
            raise ValueError(
                f"aggregator:stmn: forward_whole_clip wants (T, C, H, W) features of one clip with "
                f"T >= 1, got shape {tuple(features.shape)}"
            )
        check_channels("features", features, self.channels, dim=1)
        with scope("memory"):
            frames = torch.relu(self.embed(features))  # (T, D, H, W)
        per_direction = []
        for index, cell in enumerate(self.cells):
            order = range(len(frames)) if index == 0 else reversed(range(len(frames)))
            memory, previous, kept = None, None, {}
            for t in order:
                frame = frames[t : t + 1]
                if memory is None:
                    moved = frame.new_zeros(1, cell.memory_channels, *frame.shape[2:])
                elif self.align == "matchtrans":
                    with scope("matchtrans"):
                        moved, _ = official_matchtrans(frame, previous, memory, k=self.k)
                else:
                    moved = memory
                with scope("memory"):
                    memory = cell(frame, moved)
                previous, kept[t] = frame, memory
            per_direction.append(torch.cat([kept[t] for t in range(len(frames))]))  # (T, M, H, W)
        with scope("memory"):
            return self.output(torch.cat(per_direction, dim=1))

    def extra_repr(self) -> str:
        return f"cell={self.cell!r}, align={self.align!r}, bidirectional={self.bidirectional}, k={self.k}"
