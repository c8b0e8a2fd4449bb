"""Benchmark: the propagation alignments LSTS's Table 3 swaps (and STMN's S6: MatchTrans vs the learned
flow net per frame pair), side by side at the detector's size.

One reference and one support of (1, 64, 16, 16) features (the shared detector's stride-8 map of a
128x128 frame), forward and forward+backward of the whole alignment part (embeddings included):

* ``lsts``: ``alignment:lsts`` with its defaults (40 Gaussian locations) and the official uniform
  9x9 = 81 (``lsts-uniform81``);
* ``non_local``: ``alignment:non_local`` (attention over all 256 support positions);
* ``matchtrans``: ``alignment:matchtrans`` (STMN's k = 2: a 5x5 vicinity; paper 2.9 ms vs FlowNet's
  24.3 ms on a GPU at 337x600);
* ``flow_warp``: ``alignment:flow_warp`` with the learned flow net on the 128x128 images (FGFA/DFF:
  the flow estimation is part of the cost) and with the oracle flow (the warp alone).

No speed target and no baseline (each is its own op in ``reports.bench``'s table); every case checks
that its output is finite and has the support's shape. Run: see conftest.py.
"""

from __future__ import annotations

import functools

import pytest
import torch

from harness.aggregation import REGISTRY, TemporalContext

SHAPE = (1, 64, 16, 16)  # (B, C, H, W); T = 1 support
SHAPE_NAME = "1x64x16x16"
IMAGE = 128
ALIGNMENTS = {
    "lsts": ("lsts", {}),
    "lsts-uniform81": ("lsts", {"init": "uniform"}),
    "non_local": ("non_local", {}),
    "matchtrans": ("matchtrans", {}),
    "flow_warp-flownet": ("flow_warp", {"flow_source": "flownet"}),
    "flow_warp-oracle": ("flow_warp", {"flow_source": "oracle"}),
}


@functools.cache
def make_context() -> TemporalContext:
    batch, channels, height, width = SHAPE
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 2, 3, IMAGE, IMAGE), generator=generator, dtype=torch.uint8)
    return TemporalContext(
        reference=torch.randn(batch, channels, height, width, generator=generator),
        supports=torch.randn(batch, 1, channels, height, width, generator=generator),
        offsets=torch.ones(batch, 1, dtype=torch.int64),
        valid=torch.ones(batch, 1, dtype=torch.bool),
        reference_image=images[:, 0],  # (B, 3, Hi, Wi)
        support_images=images[:, 1:],  # (B, T=1, 3, Hi, Wi)
        oracle_flow=3 * torch.randn(batch, 1, 2, IMAGE, IMAGE, generator=generator),
        feature_stride=IMAGE // height,
    )


@pytest.mark.parametrize("pass_", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("label", list(ALIGNMENTS))
def test_bench_propagation(timed, record_benchmark, label, pass_):
    name, kwargs = ALIGNMENTS[label]
    torch.manual_seed(0)
    alignment = REGISTRY.get("alignment", name)(channels=SHAPE[1], **kwargs)
    ctx = make_context()
    if pass_ == "fwd":

        def run():
            with torch.no_grad():
                return alignment(ctx).features
    else:

        def run():
            supports = ctx.supports.detach().requires_grad_()
            moved = alignment(TemporalContext(**{**vars(ctx), "supports": supports})).features
            moved.sum().backward()
            return moved.detach()

    record_benchmark(op=f"propagation-{label}", shape=SHAPE_NAME, pass_=pass_, impl="vodbench", peak_of=run)
    moved = timed(run)
    assert moved.shape == ctx.supports.shape
    assert torch.isfinite(moved).all()
