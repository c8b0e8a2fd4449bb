"""Building and loading the detector of a run: the one place that maps a ``RunConfig`` onto a model.

Two rules live here and nowhere else:

* **single frame**: phase 1, and phase 2 of a run with no support frames at training or test time
  (the single-frame baseline), use the still-image detector (a pass-through aggregator, no
  aggregator weights). A run that names an aggregation method but has no supports is refused: its
  method would silently never run.
* **no phase 2**: a run with ``phase2.steps == 0`` is the phase-1 weights plus a freshly initialised
  aggregator (seeded by the run's seed), e.g. an untrained alignment as a control.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from harness.config import AggregationConfig, RunConfig
from harness.model.detector import VideoDetector, build_detector

# The seed of phase p's model initialisation and data order is phase_seed(run, p) + p * PHASE_SEED_STRIDE,
# so that phase 1 and phase 2 of one seed never draw the same random numbers.
PHASE_SEED_STRIDE = 1000


def uses_supports(run: RunConfig) -> bool:
    """True when the run feeds support frames at training or test time."""
    return any(spec.strategy != "none" for spec in (run.data.train_support, run.test.support))


def check_method(run: RunConfig) -> None:
    """Refuse a run whose aggregation method could never run (no supports at training or test time).

    The default aggregation (``identity`` + ``average``) is the single-frame baseline's own spelling
    and is accepted without supports."""
    if uses_supports(run) or run.model.aggregation == AggregationConfig():
        return
    aggregation = run.model.aggregation
    method = (
        f"alignment {aggregation.alignment!r} + fusion {aggregation.fusion!r}"
        if aggregation.aggregator == "window"
        else f"aggregator {aggregation.aggregator!r}"
    )
    raise ValueError(
        f"model.aggregation names {method}, but data.train_support and test.support are both 'none': "
        "the method would never see a support frame and a single-frame detector would be trained. "
        'Set data.train_support and test.support (e.g. data.train_support={"strategy": '
        '"random_window", "num": 2, "radius": 9} test.support={"strategy": "sliding", '
        '"radius": 3}), or use an ablation that brings them (vodbench ablate).'
    )


def build_model(run: RunConfig, *, phase: int, aggregation: AggregationConfig | None = None) -> VideoDetector:
    """The detector of phase ``phase`` (1 or 2) of ``run``, freshly initialised.

    ``aggregation`` replaces ``run.model.aggregation`` (the same method with its one-time
    preparations resolved to paths: ``harness.prepare.resolve_pretrained``)."""
    if phase not in (1, 2):
        raise ValueError(f"phase must be 1 or 2, got {phase}")
    check_method(run)
    model = run.model if aggregation is None else dataclasses.replace(run.model, aggregation=aggregation)
    return build_detector(model, single_frame=phase == 1 or not uses_supports(run))


def load_trained(
    run: RunConfig, checkpoint: Path, device: torch.device, *, aggregation: AggregationConfig | None = None
) -> VideoDetector:
    """The detector of ``run`` with the weights of ``checkpoint``, in eval mode on ``device``.

    ``checkpoint`` is the phase-2 ``final.pt``, or with ``phase2.steps == 0`` the phase-1 one
    (the aggregator then keeps its initialisation, drawn from ``run.seed``, and its preparations:
    pass the resolved ``aggregation``)."""
    torch.manual_seed(run.seed)  # the aggregator's init when there is no phase 2
    detector = build_model(run, phase=2, aggregation=aggregation)
    if run.phase2.steps > 0:
        detector.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["model"])
    else:
        detector.load_phase1(checkpoint)
    return detector.to(device).eval()


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
