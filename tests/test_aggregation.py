import pytest
import torch

from harness.aggregation import (
    REGISTRY,
    AlignmentOutput,
    Registry,
    TemporalContext,
    WindowAggregator,
    build_aggregator,
    masked_softmax,
)
from harness.config import AggregationConfig


def _ctx(b=2, t=3, c=4, h=5, w=6):
    return TemporalContext(
        reference=torch.randn(b, c, h, w),
        supports=torch.randn(b, t, c, h, w),
        offsets=torch.zeros(b, t, dtype=torch.long),
        valid=torch.ones(b, t, dtype=torch.bool),
    )


def test_registry_rejects_duplicates_and_lists_known_names_on_unknown():
    registry = Registry()

    @registry.register("fusion", "x")
    class A(torch.nn.Module):
        pass

    with pytest.raises(KeyError, match="already registered"):
        registry.register("fusion", "x")(type("B", (torch.nn.Module,), {}))
    with pytest.raises(KeyError, match="unknown alignment 'nope'.*identity"):
        REGISTRY.get("alignment", "nope")
    with pytest.raises(ValueError, match="unknown kind"):
        registry.register("head", "x")


def test_build_aggregator_unknown_method_names_it():
    with pytest.raises(KeyError, match="unknown fusion 'median'"):
        build_aggregator(AggregationConfig(fusion="median"), channels=4)


def test_window_aggregator_without_supports_returns_the_reference():
    aggregator = build_aggregator(AggregationConfig(alignment="identity", fusion="average"), channels=4)
    ctx = _ctx(t=0)
    out = aggregator(ctx)
    assert torch.equal(out.features, ctx.reference)


def test_context_validation_names_the_bad_field():
    ctx = _ctx()
    ctx.offsets = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="offsets"):
        ctx.validate()
    ctx = _ctx()
    ctx.supports = torch.randn(2, 3, 5, 5, 6)
    with pytest.raises(ValueError, match="supports"):
        ctx.validate()


def test_window_aggregator_checks_the_alignment_output_shape():
    class Broken(torch.nn.Module):
        needs_images = needs_oracle_flow = False

        def forward(self, ctx):
            return AlignmentOutput(ctx.supports[:, :1])

    aggregator = WindowAggregator(Broken(), REGISTRY.get("fusion", "average")(channels=4))
    with pytest.raises(RuntimeError, match="Broken returned"):
        aggregator(_ctx())


def test_masked_softmax_gives_exactly_zero_to_masked_entries():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    valid = torch.tensor([[True, False, True]])
    out = masked_softmax(logits, valid, dim=1)
    assert out[0, 1] == 0
    expected = torch.softmax(torch.tensor([1.0, 3.0]), 0)
    torch.testing.assert_close(out[0, [0, 2]], expected)


def test_window_aggregator_fuses_the_aligned_reference_when_the_alignment_returns_one():
    class ZeroReference(torch.nn.Module):
        needs_images = needs_oracle_flow = False

        def forward(self, ctx):
            return AlignmentOutput(ctx.supports, reference=torch.zeros_like(ctx.reference))

    ctx = _ctx(t=1)
    out = WindowAggregator(ZeroReference(), REGISTRY.get("fusion", "average")(channels=4))(ctx)
    torch.testing.assert_close(out.features, ctx.supports[:, 0] / 2)
