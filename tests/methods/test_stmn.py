"""STMN: BN* (hand case, per-sample statistics), the STMM against a transcription of Eq. 1-4, the
ConvGRU, MatchTrans as the official code (shift recovery, identity fallback, the op's reference),
and the aggregator (order of the two memories, frames that must not update them, identity init,
fresh heads, bad names)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from harness.aggregation import TemporalContext
from harness.config import AggregationConfig, BackboneConfig, HeadConfig, ModelConfig
from harness.model.detector import build_detector
from methods.matchtrans import MatchTransAlignment, matchtrans_weights, official_matchtrans
from methods.stmm import MemoryCell, bn_star
from methods.stmn import STMNAggregator, direction_order, repeated_offsets
from ops.matchtrans import matchtrans_reference
from tests.methods.test_contract import _perturb_parameters, check_aggregator_contract, make_context

C, H, W = 8, 6, 7


# --- BN* ------------------------------------------------------------------------------------------


def test_bn_star_hand_case():
    """Positive entries 1, 2, 3 (the zeros and negatives are left out): mean 2, unbiased std 1, ub = 5."""
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0, -4.0, 9.0]])
    positive = torch.tensor([1.0, 2.0, 3.0, 9.0])
    upper = positive.mean() + 3 * positive.std()  # 3.75 + 3 * 3.594 = 14.53: nothing clipped
    torch.testing.assert_close(bn_star(x), x.clamp_min(0) / upper)
    small = torch.tensor([[0.0, 1.0, 2.0, 3.0, 0.0, 0.0]])  # mean 2, std 1 -> ub = 5
    torch.testing.assert_close(bn_star(small), torch.tensor([[0.0, 0.2, 0.4, 0.6, 0.0, 0.0]]))
    clipped = torch.tensor([[1.0] * 20 + [100.0]])  # the outlier is cut at ub and maps to exactly 1
    assert bn_star(clipped)[0, -1] == 1.0 and bn_star(clipped)[0, 0] < 1.0


def test_bn_star_fallbacks_and_gradient():
    """Fewer than two positive entries: ub = 1 (official). Gradient 1/ub inside (0, ub), 0 above ub."""
    torch.testing.assert_close(bn_star(torch.tensor([[0.0, 0.5, -1.0]])), torch.tensor([[0.0, 0.5, 0.0]]))
    torch.testing.assert_close(bn_star(torch.zeros(1, 4)), torch.zeros(1, 4))
    x = torch.tensor([[1.0] * 20 + [100.0]], requires_grad=True)
    out = bn_star(x)
    out.sum().backward()
    upper = 1.0 / out[0, 0].item()
    torch.testing.assert_close(x.grad[0, :20], torch.full((20,), 1 / upper))
    assert x.grad[0, -1] == 0


def test_bn_star_statistics_are_per_sample():
    """A sample's output is the same alone and batched with another video's (10x larger) gates."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(1, C, H, W, generator=generator).relu()
    b = 10 * torch.randn(1, C, H, W, generator=generator).relu()
    both = bn_star(torch.cat([a, b]))
    torch.testing.assert_close(both[:1], bn_star(a), rtol=0, atol=0)
    torch.testing.assert_close(both[1:], bn_star(b), rtol=0, atol=0)


# --- cells ----------------------------------------------------------------------------------------


def _eq_1_to_4(cell: MemoryCell, features: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """A direct transcription of Eq. 1-4 with the cell's six convs (STMM) / GRU (ConvGRU)."""
    if cell.cell == "stmm":
        z = bn_star(torch.relu(cell.w_z(features) + cell.u_z(memory)))
        r = bn_star(torch.relu(cell.w_r(features) + cell.u_r(memory)))
        candidate = torch.relu(cell.w(features) + cell.u(memory * r))
    else:
        z = torch.sigmoid(cell.w_z(features) + cell.u_z(memory))
        r = torch.sigmoid(cell.w_r(features) + cell.u_r(memory))
        candidate = torch.tanh(cell.w(features) + cell.u(memory * r))
    return (1 - z) * memory + z * candidate


@pytest.mark.parametrize("kind", ["stmm", "convgru"])
def test_cell_matches_equations(kind):
    torch.manual_seed(0)
    cell = MemoryCell(C, 4, cell=kind, identity_init=False)
    features, memory = torch.randn(2, C, H, W), torch.randn(2, 4, H, W).relu()
    torch.testing.assert_close(cell(features, memory), _eq_1_to_4(cell, features, memory))
    assert cell.u_z.bias is None and cell.u_r.bias is None and cell.u.bias is None
    assert all(
        conv.kernel_size == (3, 3) for conv in (cell.w_z, cell.u_z, cell.w_r, cell.u_r, cell.w, cell.u)
    )


def test_stmm_output_never_depends_on_the_other_videos_of_the_batch():
    torch.manual_seed(0)
    cell = MemoryCell(C, 4, cell="stmm", identity_init=False)
    f, m = torch.randn(2, C, H, W), torch.randn(2, 4, H, W).relu()
    f[1], m[1] = f[1] * 30, m[1] * 30
    both = cell(f, m)
    torch.testing.assert_close(both[:1], cell(f[:1], m[:1]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[1:], cell(f[1:], m[1:]), rtol=1e-5, atol=1e-5)


def test_unknown_cell_and_identity_init_for_convgru_raise():
    with pytest.raises(ValueError, match="'lstm'"):
        MemoryCell(C, 4, cell="lstm")
    with pytest.raises(ValueError, match="convgru"):
        MemoryCell(C, 4, cell="convgru", identity_init=True)


# --- MatchTrans -------------------------------------------------------------------------------


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x moved by (dy, dx) cells, zeros entering: out(p) = x(p - d)."""
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


@pytest.mark.parametrize("dy, dx", [(1, 0), (0, -2), (2, 1), (-1, -1)])
def test_matchtrans_moves_a_shifted_map_back(dy, dx):
    """The previous frame is the current one shifted by d (|d| <= 2 = k): MatchTrans brings the memory
    that sits on the previous frame's grid back onto the current one (away from the wrapped border)."""
    generator = torch.Generator().manual_seed(1)
    current = torch.randn(1, 256, 12, 12, generator=generator)
    memory_on_current = torch.randn(1, 5, 12, 12, generator=generator)
    previous, memory = _shifted(current, dy, dx), _shifted(memory_on_current, dy, dx)
    moved, _ = official_matchtrans(current, previous, memory)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    # random 256-d features: the matching cell has cosine 1, the others ~N(0, 1/256); their positive
    # part still takes ~1/3 of the sum-normalised weight (error ~0.39 vs ~1.4 unaligned); the exact
    # recovery is the one-hot test below
    weights, displacements, _ = matchtrans_weights(current, previous)
    best = displacements[weights[0].argmax(dim=0)[2:-2, 2:-2].flatten()]
    assert (best == torch.tensor([dy, dx])).all()
    error = (moved - memory_on_current)[inner].norm() / memory_on_current[inner].norm()
    unaligned = (memory - memory_on_current)[inner].norm() / memory_on_current[inner].norm()
    assert error < 0.35 * unaligned


def test_matchtrans_recovers_a_one_hot_shift_exactly():
    """One-hot features: the only positive affinity is the matching cell, so the recovery is exact."""
    current = F.one_hot(torch.arange(36).view(1, 6, 6), 36).permute(0, 3, 1, 2).float()  # (1, 36, 6, 6)
    previous = _shifted(current, 1, 2)
    memory_on_current = torch.arange(36.0).view(1, 1, 6, 6)
    moved, fallback = official_matchtrans(current, previous, _shifted(memory_on_current, 1, 2))
    # positions whose match lies in the map: rows 0..4 (p + (1, 2) inside), columns 0..3
    torch.testing.assert_close(moved[..., :5, :4], memory_on_current[..., :5, :4])
    assert not fallback[0, :5, :4].any()
    assert fallback[0, 5].all() and fallback[0, :, 4:].all()  # no match in the map: the fallback


def test_matchtrans_identity_fallback_where_no_affinity_is_positive():
    """Where every vicinity affinity is <= 0 the position copies its own value (official assemble.cu)."""
    current = torch.ones(1, 2, 4, 4)
    previous = -torch.ones(1, 2, 4, 4)  # cosine -1 everywhere: zeroed
    previous[..., 0, 0] = 1.0  # one positive match: positions within 2 cells of (0, 0) use it
    value = torch.arange(16.0).view(1, 1, 4, 4)
    moved, fallback = official_matchtrans(current, previous, value)
    near = torch.zeros(4, 4, dtype=torch.bool)
    near[:3, :3] = True
    assert torch.equal(fallback[0], ~near)
    torch.testing.assert_close(moved[0, 0][~near], value[0, 0][~near])
    torch.testing.assert_close(moved[0, 0][near], torch.zeros(int(near.sum())))  # value(0, 0) = 0


def test_matchtrans_equals_the_ops_reference_for_positive_affinities():
    """Non-negative features (all cosines >= 0): official = the op's reference on unit-norm features."""
    generator = torch.Generator().manual_seed(3)
    query, key = (torch.rand(2, C, H, W, generator=generator) + 0.1 for _ in range(2))
    value = torch.randn(2, 3, H, W, generator=generator)
    moved, fallback = official_matchtrans(query, key, value)
    expected = matchtrans_reference(
        query / (query.norm(dim=1, keepdim=True) + 1e-8), key / (key.norm(dim=1, keepdim=True) + 1e-8), value
    )
    torch.testing.assert_close(moved, expected)
    assert not fallback.any()


def test_matchtrans_gradient_reaches_the_value_only():
    """As the official backward: the compared features get no gradient."""
    generator = torch.Generator().manual_seed(4)
    query, key, value = (torch.randn(1, C, H, W, generator=generator).requires_grad_() for _ in range(3))
    official_matchtrans(query, key, value)[0].sum().backward()
    assert query.grad is None and key.grad is None and value.grad.abs().sum() > 0


def test_matchtrans_alignment_moves_support_values():
    ctx = make_context()
    part = MatchTransAlignment(ctx.reference.shape[1])
    out = part(ctx)
    assert out.features.shape == ctx.supports.shape
    assert out.aux["matchtrans_fallback"].shape == (*ctx.supports.shape[:2], *ctx.supports.shape[-2:])
    with pytest.raises(ValueError, match="k"):
        MatchTransAlignment(8, k=-1)


# --- aggregator --------------------------------------------------------------------------------


def _context(offsets, valid=None, *, seed=0, channels=C, batch=None) -> TemporalContext:
    offsets = torch.as_tensor(offsets)
    b, t = offsets.shape
    generator = torch.Generator().manual_seed(seed)
    return TemporalContext(
        reference=torch.randn(b, channels, H, W, generator=generator),
        supports=torch.randn(b, t, channels, H, W, generator=generator),
        offsets=offsets,
        valid=torch.ones(b, t, dtype=torch.bool) if valid is None else torch.as_tensor(valid),
    )


def _aggregator(**kwargs) -> STMNAggregator:
    torch.manual_seed(0)
    aggregator = STMNAggregator(C, **kwargs)
    _perturb_parameters(aggregator, seed=1)  # leave the pass-through init: memories then matter
    return aggregator.eval()


def test_repeated_offsets_and_direction_order():
    offsets = torch.tensor([[-2, -2, -1, 1, 2, 2], [0, 0, -1, 1, 3, 2]])  # row 1: reference at frame 0
    valid = torch.tensor([[True] * 6, [True, True, True, True, True, False]])
    repeated = repeated_offsets(offsets, valid)
    assert repeated.tolist() == [
        [False, True, False, False, False, True],
        [True, True, False, False, False, False],
    ]
    usable = valid & ~repeated
    order, steps = direction_order(offsets, usable, forward=True)
    assert order[0].tolist() == [0, 2] and steps[0].tolist() == [True, True]
    assert order[1, 0] == 2 and steps[1].tolist() == [True, False]
    order, steps = direction_order(offsets, usable, forward=False)
    assert order[0].tolist() == [4, 3] and order[1].tolist() == [4, 3]  # descending offsets


@pytest.mark.parametrize("align", ["matchtrans", "none"])
def test_later_supports_never_reach_the_forward_memory(align):
    """Changing a support after the reference changes the backward memory only (and vice versa)."""
    aggregator = _aggregator(align=align, bidirectional=False)
    ctx = _context([[-2, -1, 1, 2]])
    changed = dataclasses.replace(ctx, supports=ctx.supports.clone())
    changed.supports[:, 2:] = torch.randn(1, 2, C, H, W)
    with torch.no_grad():
        assert torch.equal(aggregator(ctx).features, aggregator(changed).features)
        both = _aggregator(align=align)
        assert not torch.allclose(both(ctx).features, both(changed).features)
        earlier = dataclasses.replace(ctx, supports=ctx.supports.clone())
        earlier.supports[:, :1] = torch.randn(1, 1, C, H, W)
        assert not torch.allclose(aggregator(ctx).features, aggregator(earlier).features)


def test_order_of_the_supports_in_the_context_does_not_matter():
    aggregator = _aggregator()
    ctx = _context([[-3, -1, -2, 2, 1]])
    permutation = torch.tensor([4, 0, 3, 2, 1])
    permuted = dataclasses.replace(
        ctx, supports=ctx.supports[:, permutation], offsets=ctx.offsets[:, permutation]
    )
    with torch.no_grad():
        torch.testing.assert_close(
            aggregator(ctx).features, aggregator(permuted).features, rtol=1e-5, atol=1e-6
        )


def test_invalid_and_padded_frames_do_not_change_the_memory():
    """A support with valid = False, a pad copy (offset repeated) and a copy of the reference (offset 0)
    leave the output exactly as without them."""
    aggregator = _aggregator()
    base = _context([[-2, -1, 1]], seed=2)
    extra = torch.randn(1, 3, C, H, W)
    padded = TemporalContext(
        reference=base.reference,
        supports=torch.cat([base.supports, extra], dim=1),
        offsets=torch.tensor([[-2, -1, 1, 5, -2, 0]]),
        valid=torch.tensor([[True, True, True, False, True, True]]),
    )
    with torch.no_grad():
        torch.testing.assert_close(
            aggregator(padded).features, aggregator(base).features, rtol=1e-6, atol=1e-6
        )


def test_batching_two_videos_changes_neither_output():
    aggregator = _aggregator()
    a = _context([[-2, -1, 1, 2]], seed=3)
    b = _context([[-1, 0, 1, 3]], seed=4)  # another video, near its start (one pad copy), larger scale
    b = dataclasses.replace(b, reference=5 * b.reference, supports=5 * b.supports)
    both = TemporalContext(
        reference=torch.cat([a.reference, b.reference]),
        supports=torch.cat([a.supports, b.supports]),
        offsets=torch.cat([a.offsets, b.offsets]),
        valid=torch.cat([a.valid, b.valid]),
    )
    with torch.no_grad():
        out = aggregator(both).features
        torch.testing.assert_close(out[:1], aggregator(a).features, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[1:], aggregator(b).features, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bidirectional, memory", [(True, C), (False, 2 * C)])
def test_bidirectional_and_forward_only_shapes(bidirectional, memory):
    aggregator = STMNAggregator(C, bidirectional=bidirectional)
    assert len(aggregator.cells) == (2 if bidirectional else 1)
    assert all(cell.memory_channels == memory for cell in aggregator.cells)
    out = aggregator(_context([[-1, 1], [-2, 2]]))
    assert out.features.shape == (2, C, H, W)
    assert out.aux["memory_norm_forward"].shape == (2, H, W)
    assert ("memory_norm_backward" in out.aux) == bidirectional


@pytest.mark.parametrize("offsets", [[[-2, -1, 1, 2]], [[]]])
def test_identity_init_returns_the_features_at_the_start(offsets):
    """The weight-transfer substitute: at init the output is within 3% of the reference's features,
    with or without supports (the memory starts as the current frame)."""
    aggregator = STMNAggregator(C)
    ctx = _context(offsets if offsets[0] else torch.zeros(1, 0, dtype=torch.int64))
    out = aggregator(ctx).features
    relative = (out - ctx.reference).norm() / ctx.reference.norm()
    assert relative < 0.03
    convgru = STMNAggregator(C, cell="convgru")  # random cell: nowhere near the features
    assert (convgru(ctx).features - ctx.reference).norm() / ctx.reference.norm() > 0.3


def test_unknown_names_and_bad_widths_raise():
    with pytest.raises(ValueError, match="'lstm'"):
        STMNAggregator(C, cell="lstm")
    with pytest.raises(ValueError, match="'flow'"):
        STMNAggregator(C, align="flow")
    with pytest.raises(ValueError, match="identity_init"):
        STMNAggregator(C, memory_channels=4)
    assert STMNAggregator(C, memory_channels=4, embed_channels=6, identity_init=False).output.in_channels == 8


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"align": "none"},
        {"cell": "convgru"},
        {"bidirectional": False},
        {"embed_channels": 4, "memory_channels": 3, "identity_init": False},
    ],
)
def test_aggregator_contract_variants(kwargs):
    check_aggregator_contract(AggregationConfig(aggregator="stmn", aggregator_kwargs=kwargs))


def _small_model(fresh_head: bool) -> ModelConfig:
    aggregation = AggregationConfig(aggregator="stmn", aggregator_kwargs={"fresh_head": fresh_head})
    return ModelConfig(
        backbone=BackboneConfig(width=8, out_channels=C), head=HeadConfig(channels=8), aggregation=aggregation
    )


@pytest.mark.parametrize("fresh_head", [False, True])
def test_fresh_head_keeps_the_head_at_its_init(fresh_head):
    phase1 = build_detector(_small_model(False), single_frame=True)
    with torch.no_grad():
        for parameter in phase1.parameters():
            parameter.add_(1.0)
    torch.manual_seed(0)
    video = build_detector(_small_model(fresh_head))
    head_before = {k: v.clone() for k, v in video.heads.state_dict().items()}
    left = video.load_phase1(phase1.state_dict())
    assert torch.equal(video.backbone.project.weight, phase1.backbone.project.weight)
    for key, value in video.heads.state_dict().items():
        expected = head_before[key] if fresh_head else phase1.heads.state_dict()[key]
        assert torch.equal(value, expected), key
    assert any(k.startswith("heads.") for k in left) == fresh_head


@pytest.mark.parametrize(
    "kwargs", [{}, {"align": "none"}, {"cell": "convgru"}, {"bidirectional": False, "memory_channels": 2 * C}]
)
def test_whole_clip_equals_the_window_form_at_every_frame(kwargs):
    """Clip mode (one pass per direction) gives every frame what the window form gives it as reference."""
    aggregator = _aggregator(**kwargs)
    clip = torch.randn(5, C, H, W, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = aggregator.forward_whole_clip(clip)
        for t in range(len(clip)):
            others = [j for j in range(len(clip)) if j != t]
            ctx = TemporalContext(
                reference=clip[t : t + 1],
                supports=clip[others].unsqueeze(0),
                offsets=torch.tensor([[j - t for j in others]]),
                valid=torch.ones(1, len(others), dtype=torch.bool),
            )
            torch.testing.assert_close(whole[t : t + 1], aggregator(ctx).features, rtol=1e-5, atol=1e-5)
    assert whole.shape == clip.shape and not torch.allclose(whole[0], whole[-1])


def test_whole_clip_rejects_a_batch_of_clips_and_wrong_channels():
    aggregator = _aggregator()
    with pytest.raises(ValueError, match=r"\(T, C, H, W\).*\(2, 3, 4, 6, 6\)"):
        aggregator.forward_whole_clip(torch.zeros(2, 3, 4, 6, 6))
    with pytest.raises(ValueError, match="features"):
        aggregator.forward_whole_clip(torch.zeros(3, C + 1, H, W))
