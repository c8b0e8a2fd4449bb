"""What every paper's ablation shares: the base configuration, the quick deltas and the shared rows.

The rows defined here (the single-frame detector, FGFA-style flow warping with and without a flow
net pretrained on ground-truth flow, oracle-flow warping) are built by every ablation that needs
them from these functions, so two studies that contain the same row train it once (run folders are
keyed by what they train, not by the study: ``harness.runs.stage_identity``). A row's name is a label.

The base budget (decided once for all papers, notes X12): phase 1 = 3,000 steps x 16 stills/frames,
one still-image detector shared by every row and seed (a "pretrained" model; seeds vary phase 2
only); phase 2 = 300 steps x 8 references with 2 supports drawn at random within +-9 frames; test
window T = 7 (3 supports each side, padded at the video ends).
"""

from __future__ import annotations

from typing import Any

from ablations.base import Row
from harness.config import (
    AggregationConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    SupportSpec,
    TestConfig,
    TrainConfig,
)

TEST_T = 7  # frames in the default test window, reference included: 3 supports each side
TRAIN_RADIUS = 9  # phase 2 draws its 2 supports within +-TRAIN_RADIUS frames
FLOWNET_WIDTH = 8  # the flow net's base width (16 costs 3.6x more per support on the CPU)
FLOW_PRETRAIN_STEPS = 400  # flow-net pretraining on ground-truth flow ("flow data")
FLOW_PRETRAIN_STEPS_QUICK = 40
FLOW_PRETRAIN_SEED = 0  # one pretrained flow net per dataset, shared by all seeds and studies

NO_SUPPORT = SupportSpec("none")


def sliding(t: int, stride: int = 1) -> SupportSpec:
    """The test window of ``t`` frames (reference included, ``t`` odd) at ``stride``: (t - 1) / 2
    supports each side, padded at the video ends; ``t = 1`` is no support."""
    if t < 1 or t % 2 == 0:
        raise ValueError(f"a symmetric window has an odd number of frames >= 1, got T={t}")
    if t == 1:
        return NO_SUPPORT
    return SupportSpec("sliding", radius=(t - 1) // 2 * stride, stride=stride, boundary="pad")


BASE = RunConfig(
    name="base",
    phase1_seed=0,  # one still-image detector shared by every row and seed
    data=DataConfig(
        synth_preset="default",
        image_size=128,
        train_support=SupportSpec("random_window", num=2, radius=TRAIN_RADIUS, boundary="pad"),
        still_fraction=0.1,
    ),
    model=ModelConfig(aggregation=AggregationConfig(alignment="identity", fusion="cosine_softmax")),
    phase1=TrainConfig(steps=3000, batch_size=16, lr=2e-3, warmup_steps=50),
    phase2=TrainConfig(steps=300, batch_size=8, lr=1e-3, warmup_steps=20),
    test=TestConfig(support=sliding(TEST_T), protocols=("devkit", "fixed", "coco"), motion=True),
)

# The smoke run: the quick SynthVID preset and a few steps (CI runs every ablation this way).
QUICK = {
    "data.synth_preset": "quick",
    "phase1.steps": 150,
    "phase1.batch_size": 8,
    "phase2.steps": 60,
    "phase2.batch_size": 4,
}


def window(alignment: str, fusion: str = "cosine_softmax", **alignment_kwargs: Any) -> AggregationConfig:
    return AggregationConfig(alignment=alignment, fusion=fusion, alignment_kwargs=alignment_kwargs)


def single_frame(name: str = "single frame") -> Row:
    """The still-image detector fine-tuned for phase 2's budget with no supports (T = 0)."""
    return Row(
        name,
        {
            "model.aggregation": AggregationConfig(),
            "data.train_support": NO_SUPPORT,
            "data.still_fraction": 0.0,
            "test.support": NO_SUPPORT,
        },
    )


def flownet_pretraining(*, quick: bool) -> dict[str, Any]:
    """The "flow data" preparation: a flow net pretrained on SynthVID's ground-truth flow, for pairs
    up to the training window's distance apart."""
    return {
        "kind": "flownet",
        "steps": FLOW_PRETRAIN_STEPS_QUICK if quick else FLOW_PRETRAIN_STEPS,
        "batch_size": 8,
        "lr": 2e-3,
        "seed": FLOW_PRETRAIN_SEED,
        "max_offset": TRAIN_RADIUS,
        "width": FLOWNET_WIDTH,
    }


def flow_warp(name: str, *, fusion: str = "cosine_softmax", flow_data: bool, quick: bool) -> Row:
    """FGFA-style warping by a learned flow net (``flow_data``: first pretrained on ground-truth flow;
    else learned from the detection loss alone)."""
    aggregation = window("flow_warp", fusion, flow_source="flownet", flownet_width=FLOWNET_WIDTH)
    if flow_data:
        aggregation = AggregationConfig(
            alignment=aggregation.alignment,
            fusion=aggregation.fusion,
            alignment_kwargs=aggregation.alignment_kwargs,
            pretrained={"flownet_weights": flownet_pretraining(quick=quick)},
        )
    return Row(name, {"model.aggregation": aggregation})


def oracle_flow(name: str, *, fusion: str = "cosine_softmax", **changes: Any) -> Row:
    """Warping with SynthVID's ground-truth flow: an upper bound for flow-based alignment."""
    return Row(name, {"model.aggregation": window("flow_warp", fusion, flow_source="oracle"), **changes})
