"""alignment:lsts: identity at one location, the op's reference, hand-computed normalisations, inits,
the locations' optimizer group and drift, bad kwargs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from harness.aggregation import TemporalContext
from harness.train import build_optimizer
from methods.lsts_sampling import LSTSAlignment, initial_locations
from ops.lsts_sampling import lsts_aggregate_reference


def _context(batch=2, supports=3, channels=4, size=5, *, dtype=torch.float32, seed=0) -> TemporalContext:
    generator = torch.Generator().manual_seed(seed)
    return TemporalContext(
        reference=torch.randn(batch, channels, size, size, generator=generator, dtype=dtype),
        supports=torch.randn(batch, supports, channels, size, size, generator=generator, dtype=dtype),
        offsets=torch.arange(1, supports + 1).repeat(batch, 1),
        valid=torch.ones(batch, supports, dtype=torch.bool),
    )


def _identity_embeddings(alignment: LSTSAlignment) -> None:
    """f and g = the identity (1x1 eye, zero bias): scores are raw dot products of the features."""
    with torch.no_grad():
        for conv in (alignment.key_embedding, alignment.query_embedding):
            conv.weight.copy_(torch.eye(conv.out_channels, conv.in_channels)[:, :, None, None])
            conv.bias.zero_()


def test_one_location_at_zero_is_the_identity() -> None:
    alignment = LSTSAlignment(channels=4, init="uniform", num_locations=1)
    assert alignment.locations.tolist() == [[0.0, 0.0]]
    ctx = _context()
    torch.testing.assert_close(alignment(ctx).features, ctx.supports)
    values = torch.randn(2, 3, 6, 5, 5)  # other values (C' = 6) move the same way
    ctx.support_values = values
    torch.testing.assert_close(alignment(ctx).features, values)


@pytest.mark.parametrize("normalize", ["softmax", "sum"])
def test_alignment_equals_the_ops_reference_on_the_embeddings(normalize: str) -> None:
    torch.manual_seed(0)
    alignment = LSTSAlignment(channels=4, embed_channels=3, num_locations=6, init_scale=1.5,
                              normalize=normalize).double()
    with torch.no_grad():  # embeddings away from their near-zero init, so the weights are not uniform
        for conv in (alignment.key_embedding, alignment.query_embedding):
            conv.weight.normal_()
            conv.bias.uniform_(0.5, 1.0)
    ctx = _context(dtype=torch.float64)
    out = alignment(ctx).features  # (B, T, C, H, W)
    for b, t in itertools.product(range(2), range(3)):
        query = alignment.query_embedding(ctx.reference[b : b + 1])
        key = alignment.key_embedding(ctx.supports[b, t : t + 1])
        expected, _ = lsts_aggregate_reference(
            query, key, ctx.supports[b, t : t + 1], alignment.locations, normalize=normalize
        )
        torch.testing.assert_close(out[b, t], expected[0])


def test_softmax_and_sum_normalisation_by_hand() -> None:
    """One channel, a 1x3 map, locations (0, 0) and (0, 1); f, g = identity, so s_n(p) = r(p) s(p + loc_n).

    reference r = [1, 2, 3], support s = [2, 1, 4] (also the values moved):
    x = 0: scores (1*2, 1*1) = (2, 1); x = 2: (3*4, 0) (x + 1 is outside: zero score, zero value).
    """
    outputs, weights = {}, {}
    for normalize in ("softmax", "sum"):
        alignment = LSTSAlignment(channels=1, embed_channels=1, num_locations=2, normalize=normalize)
        _identity_embeddings(alignment)
        with torch.no_grad():
            alignment.locations.copy_(torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
        reference = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 3)
        support = torch.tensor([2.0, 1.0, 4.0]).view(1, 1, 1, 3)
        outputs[normalize], weights[normalize] = alignment.propagate(reference, support, support)
    e = math.e
    softmax_x0 = torch.tensor([e**2, e]) / (e**2 + e)
    softmax_x2 = torch.tensor([e**12, 1.0]) / (e**12 + 1.0)
    torch.testing.assert_close(weights["softmax"][0, :, 0, 0], softmax_x0)
    torch.testing.assert_close(weights["softmax"][0, :, 0, 2], softmax_x2)
    torch.testing.assert_close(weights["sum"][0, :, 0, 0], torch.tensor([2 / 3, 1 / 3]))
    torch.testing.assert_close(weights["sum"][0, :, 0, 2], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(outputs["sum"][0, 0, 0, 0], torch.tensor(2 / 3 * 2 + 1 / 3 * 1))
    torch.testing.assert_close(outputs["softmax"][0, 0, 0, 0], softmax_x0 @ torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(outputs["sum"][0, 0, 0, 2], torch.tensor(4.0))
    torch.testing.assert_close(outputs["softmax"][0, 0, 0, 2], softmax_x2[0] * 4.0)


def test_uniform_init_is_the_official_integer_grid() -> None:
    alignment = LSTSAlignment(channels=4, init="uniform")
    assert alignment.num_locations == 81
    expected = sorted(itertools.product(range(-4, 5), repeat=2))
    assert sorted(map(tuple, alignment.locations.tolist())) == [tuple(map(float, p)) for p in expected]
    assert sorted(map(tuple, initial_locations("uniform", 9, scale=2.0).tolist())) == [
        (float(dy), float(dx)) for dy, dx in itertools.product((-2, 0, 2), repeat=2)
    ]


def test_gaussian_init_statistics() -> None:
    assert LSTSAlignment(channels=4).num_locations == 40  # the official Gaussian N
    assert LSTSAlignment(channels=4, num_locations=81).num_locations == 81  # the same-N control
    torch.manual_seed(0)
    draws = initial_locations("gaussian", 20_000)  # (N, 2)
    assert draws.mean(dim=0).abs().max() < 0.03  # standard error 0.007
    torch.testing.assert_close(draws.std(dim=0), torch.ones(2), atol=0.03, rtol=0)
    assert abs(torch.corrcoef(draws.T)[0, 1]) < 0.03  # independent axes
    torch.testing.assert_close(initial_locations("gaussian", 20_000, scale=2.0).std(dim=0),
                               torch.full((2,), 2.0), atol=0.06, rtol=0)
    # drawn from the run's seeded generator: same seed, same locations
    torch.manual_seed(3)
    first = LSTSAlignment(channels=4).locations.detach().clone()
    torch.manual_seed(3)
    assert torch.equal(LSTSAlignment(channels=4).locations, first)


def test_learned_locations_move_by_their_multiplier_without_decay_and_report_drift() -> None:
    torch.manual_seed(0)
    alignment = LSTSAlignment(channels=4, location_lr_mult=50.0)
    optimizer = build_optimizer(alignment, name="adamw", lr=1e-3, weight_decay=0.5)
    groups = {(g["weight_decay"], g["lr_mult"]) for g in optimizer.param_groups}
    assert (0.0, 50.0) in groups
    assert torch.equal(alignment.location_drift(), torch.zeros(40, 2))
    before = alignment.locations.detach().clone()
    alignment(_context()).features.square().sum().backward()
    gradient = alignment.locations.grad.clone()
    assert (gradient != 0).all()
    optimizer.step()
    # AdamW's first step is lr * mult * sign(grad) (|m / sqrt(v)| = 1), no decay term
    expected = before - 1e-3 * 50.0 * gradient.sign()
    torch.testing.assert_close(alignment.locations.detach(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(alignment.location_drift(), expected - before, atol=1e-6, rtol=0)


def test_fixed_locations_are_a_buffer_and_do_not_move() -> None:
    alignment = LSTSAlignment(channels=4, init="uniform", learn_locations=False)
    assert "locations" not in dict(alignment.named_parameters())
    assert "locations" in alignment.state_dict() and alignment.optimizer_overrides() == {}
    optimizer = build_optimizer(alignment, name="adamw", lr=1e-3, weight_decay=0.0)
    alignment(_context()).features.square().sum().backward()
    optimizer.step()
    assert torch.equal(alignment.location_drift(), torch.zeros(81, 2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"init": "random"}, "init must be one of"),
        ({"init": "uniform", "num_locations": 40}, "num_locations=40 does not fit a uniform grid"),
        ({"num_locations": 0}, "num_locations"),
        ({"num_locations": 2.5}, "num_locations"),
        ({"init_scale": 0.0}, "init_scale"),
        ({"normalize": "l1"}, "normalize"),
        ({"location_lr_mult": 0.0}, "location_lr_mult"),
        ({"embed_channels": 0}, "embed_channels"),
    ],
)
def test_bad_kwargs_raise_naming_them(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LSTSAlignment(channels=4, **kwargs)


def test_propagate_checks_channels() -> None:
    alignment = LSTSAlignment(channels=4)
    with pytest.raises(ValueError, match="source"):
        alignment.propagate(torch.randn(1, 4, 3, 3), torch.randn(1, 5, 3, 3), torch.randn(1, 2, 3, 3))
