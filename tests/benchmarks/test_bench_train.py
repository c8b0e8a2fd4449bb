"""Benchmark: one training step of the shared detector, its FLOP/s against this machine's dense matmul,
and the cheap levers (fused/foreach AdamW, channels-last, torch threads, a data-loading worker) side by side.

A step is what the trainer does per batch: ``model.losses(batch)`` -> sum -> backward -> gradient
clipping -> ``optimizer.step()``, on the configurations of the STSN ablation (``ablations/stsn.py``):

* ``phase1``: the still-image detector, batch 16, no supports;
* ``phase2-stsn``: the STSN row (deformable alignment, 32 hidden channels, cosine-softmax fusion),
  batch 8, 2 random supports;
* ``phase2-flow_warp``: the FGFA row (flow net of width 8 + warping), batch 8, 2 supports.

The model and optimizer are called directly (not ``harness.train.train_phase``), on a synthetic
128x128 batch (``tests.model.fakes`` scenes), except in the data-loading benchmark, which reads a real
SynthVID phase-2 dataset (preset ``tiny``, under ``$VODBENCH_DATA`` when set, else a temp folder).

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over forward + backward (matmuls and convolutions,
2 per multiply-add; elementwise work, norms and the optimizer are not counted). The reference is a
2048x2048 float32 matmul timed in the same run (``matmul_reference``, and once per round in the lever
benchmarks so that it sees the same load). Every benchmark stores ms/step, GFLOP/s and the fraction in
``extra_info`` and prints them in the terminal summary:

    .venv/bin/python -m pytest tests/benchmarks/test_bench_train.py --benchmark-enable -p no:xdist

On a shared machine the levers are timed interleaved (one step of each per round, the order rotated
each round) and each lever's time is also given as the median of its per-round ratio to the baseline.
Measured numbers: docs/bench/training-step.md. Under ``--benchmark-disable`` every benchmark runs its
steps once and checks them (finite loss, parameters moved, each lever equal to the baseline).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler
from torch.utils.flop_counter import FlopCounterMode

from ablations import stsn
from harness.config import RunConfig, TrainConfig, override, phase_seed
from harness.data.dataset import Batch, build_dataset, collate
from harness.model.detector import VideoDetector, build_detector
from harness.train import build_optimizer
from tests.benchmarks.conftest import (
    MATMUL_SIZE,
    ROUNDS,
    cpu_model,
    spread,
    time_dense_matmul,
)
from tests.model.fakes import draw_scene, random_scene

LEVER_ROUNDS = 10  # interleaved rounds of the lever benchmark (one step per lever each)
LOADING_ROUNDS = 4  # rounds of the data-loading benchmark (one block of steps per variant each)
LOADING_BLOCK = 6  # consecutive steps per variant and round ...
LOADING_DISCARD = 2  # ... of which the first are not kept (= prefetch_factor: batches a worker
# prepared while the other variants ran would make its first steps look free)


@dataclass(frozen=True)
class StepSetup:
    """One training configuration of the STSN ablation: its run config and phase."""

    run: RunConfig
    phase: int

    @property
    def train(self) -> TrainConfig:
        return self.run.phase1 if self.phase == 1 else self.run.phase2

    @property
    def num_supports(self) -> int:
        return 0 if self.phase == 1 else self.run.data.train_support.num


def _stsn_row(name: str) -> RunConfig:
    rows = {row.name: row for row in stsn.ROWS}
    return override(stsn.BASE, **rows[name].changes)


SETUPS = {
    "phase1": StepSetup(run=stsn.BASE, phase=1),
    "phase2-stsn": StepSetup(run=_stsn_row("STSN"), phase=2),
    "phase2-flow_warp": StepSetup(run=_stsn_row("FGFA"), phase=2),
}


def synthetic_batch(*, batch_size: int, num_supports: int, image_size: int, seed: int = 0) -> Batch:
    """A :class:`~harness.data.dataset.Batch` of ``tests.model.fakes`` scenes at ``image_size``: up to
    three class-coloured boxes per frame; each support is the scene shifted right by its offset."""
    rng = np.random.default_rng(seed)
    images, supports, offsets, boxes, labels = [], [], [], [], []
    for _ in range(batch_size):
        scene_boxes, scene_labels = random_scene(rng, size=image_size, max_objects=3)
        frame_offsets = rng.integers(1, 10, size=num_supports) * rng.choice([-1, 1], size=num_supports)
        images.append(draw_scene(scene_boxes, scene_labels, size=image_size))
        supports.append(
            [draw_scene(scene_boxes, scene_labels, size=image_size, shift=int(o)) for o in frame_offsets]
        )
        offsets.append(frame_offsets)
        boxes.append(torch.from_numpy(scene_boxes))
        labels.append(torch.from_numpy(scene_labels))
    support_images = torch.zeros((batch_size, num_supports, 3, image_size, image_size), dtype=torch.uint8)
    for index, frames in enumerate(supports):
        if frames:
            support_images[index] = torch.from_numpy(np.stack(frames))
    return Batch(
        images=torch.from_numpy(np.stack(images)),
        support_images=support_images,
        offsets=torch.from_numpy(np.stack(offsets).astype(np.int64)).reshape(batch_size, num_supports),
        valid=torch.ones((batch_size, num_supports), dtype=torch.bool),
        boxes=boxes,
        labels=labels,
        oracle_flow=None,
        frames=[],
        scales=[1.0] * batch_size,
    )


def channels_last_frames(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(..., 3, S, S)`` with the same values, laid out as ``(..., S, S, 3)`` in memory, so that
    every ``(N, 3, S, S)`` view of it (the detector flattens supports) is channels-last."""
    # (..., 3, S, S) -> (..., S, S, 3) contiguous -> back to a (..., 3, S, S) view
    return images.movedim(-3, -1).contiguous().movedim(-1, -3)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)`` (None: leave the thread count alone)."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


OPTIMIZERS = ("harness", "forloop", "foreach", "fused")


def make_optimizer(model: torch.nn.Module, *, kind: str, train: TrainConfig) -> torch.optim.Optimizer:
    """``harness``: ``harness.train.build_optimizer`` as the trainer calls it; ``forloop`` / ``foreach`` /
    ``fused``: AdamW over the same parameter groups with that implementation forced."""
    harness_optimizer = build_optimizer(
        model, name=train.optimizer, lr=train.lr, weight_decay=train.weight_decay
    )
    if kind == "harness":
        return harness_optimizer
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer kind {kind!r}; expected one of {OPTIMIZERS}")
    groups = [
        {"params": group["params"], "weight_decay": group["weight_decay"]}
        for group in harness_optimizer.param_groups
    ]
    return torch.optim.AdamW(groups, lr=train.lr, foreach=kind == "foreach", fused=kind == "fused")


@dataclass
class TrainingStep:
    """One optimisation step per call, the trainer's order: losses -> sum -> backward -> clip -> step.

    ``threads`` (None: the current count) applies inside the call only. Each call appends the loss to
    ``losses`` and the optimizer's own seconds to ``optimizer_seconds``.
    """

    model: VideoDetector
    optimizer: torch.optim.Optimizer
    batch: Batch
    grad_clip: float
    threads: int | None = None
    losses: list[float] = field(default_factory=list)
    optimizer_seconds: list[float] = field(default_factory=list)

    def __call__(self, batch: Batch | None = None) -> float:
        batch = self.batch if batch is None else batch
        with torch_threads(self.threads):
            total = sum(self.model.losses(batch).values())
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.grad_clip
            )
            started = time.perf_counter()
            self.optimizer.step()
            self.optimizer_seconds.append(time.perf_counter() - started)
        self.losses.append(float(total.detach()))
        return self.losses[-1]

    def count_flops(self, batch: Batch | None = None) -> int:
        """FLOPs of forward + backward on ``batch`` (FlopCounterMode); parameters are left unchanged."""
        batch = self.batch if batch is None else batch
        with torch_threads(self.threads), FlopCounterMode(display=False) as counter:
            sum(self.model.losses(batch).values()).backward()
        self.optimizer.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())


def build_training_step(
    setup: StepSetup,
    *,
    optimizer: str = "harness",
    channels_last: bool = False,
    threads: int | None = None,
    batch: Batch | None = None,
    seed: int = 0,
) -> TrainingStep:
    """The model of ``setup`` (initialised from ``seed``: every lever starts from the same weights) in
    train mode, its optimizer and a synthetic batch (or ``batch``), optionally channels-last."""
    torch.manual_seed(seed)
    model = build_detector(setup.run.model, single_frame=setup.phase == 1).train()
    if batch is None:
        batch = synthetic_batch(
            batch_size=setup.train.batch_size,
            num_supports=setup.num_supports,
            image_size=setup.run.data.image_size,
            seed=seed,
        )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        batch = dataclasses.replace(
            batch,
            images=channels_last_frames(batch.images),
            support_images=channels_last_frames(batch.support_images),
        )
    return TrainingStep(
        model=model,
        optimizer=make_optimizer(model, kind=optimizer, train=setup.train),
        batch=batch,
        grad_clip=setup.train.grad_clip,
        threads=threads,
    )


def parameters_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_trained(step: TrainingStep, before: list[torch.Tensor], *, name: str) -> None:
    """Every loss finite; every parameter tensor that had a nonzero gradient in the last step moved (at
    the first step STSN's offset convs get none: its offsets start at zero), and most of them did."""
    assert step.losses and all(np.isfinite(step.losses)), f"{name}: non-finite loss {step.losses}"
    named = list(step.model.named_parameters())
    unmoved = [key for (key, new), old in zip(named, before, strict=True) if torch.equal(old, new.detach())]
    with_gradient = [key for key, p in named if p.grad is not None and bool(p.grad.abs().max() > 0)]
    assert not set(unmoved) & set(with_gradient), (
        f"{name}: parameters with a gradient did not move: {unmoved}"
    )
    assert len(unmoved) <= 0.2 * len(named), f"{name}: {len(unmoved)}/{len(named)} parameters unmoved"


def label(benchmark, *, op: str, shape: str, **info: Any) -> None:
    """Group and extra_info of a training benchmark. ``impl``/``op``/``shape``/``pass_`` are the keys
    ``reports.bench`` reads (it finds no baseline for these, so it lists them without a speed-up)."""
    benchmark.group = f"{op}:{shape}"
    benchmark.extra_info.update(
        impl="vodbench",
        op=op,
        shape=shape,
        pass_="step",
        torch_threads=torch.get_num_threads(),
        cpu=cpu_model(),
        torch_version=torch.__version__,
        **info,
    )


def rate_fields(*, flops: int, seconds: list[float], matmul_gflops: float) -> dict[str, float]:
    """ms/step (median and quartiles), achieved GFLOP/s at the median and its fraction of the matmul's."""
    timing = spread(seconds)
    gflops = flops / timing["median"] / 1e9
    return dict(
        ms_median=timing["median"] * 1e3,
        ms_q1=timing["q1"] * 1e3,
        ms_q3=timing["q3"] * 1e3,
        gflops=gflops,
        matmul_gflops=matmul_gflops,
        fraction=gflops / matmul_gflops,
    )


def describe(name: str, fields: dict[str, float]) -> str:
    return (
        f"{name:<34} {fields['ms_median']:7.1f} ms/step (IQR {fields['ms_q1']:.1f}-{fields['ms_q3']:.1f})"
        f"  {fields['gflops']:6.1f} GFLOP/s = {fields['fraction']:.2f}"
        f" of matmul {fields['matmul_gflops']:.0f}"
    )


# --- the step as the harness runs it ---------------------------------------------------------------


@pytest.mark.parametrize("setup_name", list(SETUPS))
def test_bench_train_step(benchmark, matmul_reference, bench_summary, setup_name):
    setup = SETUPS[setup_name]
    step = build_training_step(setup)
    flops = step.count_flops()
    before = parameters_of(step.model)
    label(
        benchmark,
        op="train_step",
        shape=setup_name,
        flops=flops,
        batch_size=setup.train.batch_size,
        num_supports=setup.num_supports,
    )
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    assert_trained(step, before, name=setup_name)
    assert flops > 1e9, f"{setup_name}: FlopCounterMode counted only {flops} FLOPs"
    if benchmark.disabled:
        return
    fields = rate_fields(
        flops=flops, seconds=benchmark.stats.stats.data, matmul_gflops=matmul_reference["gflops"]
    )
    benchmark.extra_info.update(fields)
    matmul_iqr = f"{matmul_reference['gflops_q1']:.0f}-{matmul_reference['gflops_q3']:.0f}"
    bench_summary(
        describe(f"train step {setup_name}", fields)
        + f"  [{flops / 1e9:.2f} GFLOP/step, matmul {MATMUL_SIZE}^2 IQR {matmul_iqr} GFLOP/s]"
    )


# --- levers side by side ---------------------------------------------------------------------------

# baseline = what build_optimizer returned before this benchmark: torch's default AdamW on CPU (for-loop)
LEVERS: dict[str, dict[str, Any]] = {
    "baseline": dict(optimizer="forloop"),
    "adamw_foreach": dict(optimizer="foreach"),
    "adamw_fused": dict(optimizer="fused"),
    "channels_last": dict(optimizer="forloop", channels_last=True),
    "threads_1": dict(optimizer="forloop", threads=1),
}


def assert_same_update(step: TrainingStep, setup: StepSetup, kinds: tuple[str, ...]) -> None:
    """The AdamW implementations ``kinds`` move the weights as the for-loop one does, given the same
    gradients (two steps, so the moment estimates matter)."""
    sum(step.model.losses(step.batch).values()).backward()
    results = {}
    for kind in ("forloop", *kinds):
        model = copy.deepcopy(step.model)
        optimizer = make_optimizer(model, kind=kind, train=setup.train)
        optimizer.step()
        optimizer.step()
        results[kind] = parameters_of(model)
    step.optimizer.zero_grad(set_to_none=True)
    for kind in kinds:
        for index, (ours, reference) in enumerate(zip(results[kind], results["forloop"], strict=True)):
            torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7, msg=f"{kind} parameter {index}")


@pytest.mark.parametrize("setup_name", list(SETUPS))
def test_bench_train_levers(benchmark, bench_summary, setup_name):
    setup = SETUPS[setup_name]
    steps = {name: build_training_step(setup, **options) for name, options in LEVERS.items()}
    assert_same_update(steps["baseline"], setup, ("foreach", "fused"))
    flops = steps["baseline"].count_flops()  # the levers change how, not what, is computed
    before = {name: parameters_of(step.model) for name, step in steps.items()}
    for step in steps.values():  # untimed first step (allocator, thread pool); same weights, same batch
        step()
    first = {name: step.losses[0] for name, step in steps.items()}
    for name, loss in first.items():
        assert loss == pytest.approx(first["baseline"], rel=1e-4), f"{setup_name}/{name}: losses {first}"

    names = list(steps)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    matmul_seconds: list[float] = []

    def one_round() -> None:
        rotation = len(matmul_seconds) % len(names)
        for name in names[rotation:] + names[:rotation]:
            started = time.perf_counter()
            steps[name]()
            seconds[name].append(time.perf_counter() - started)
        matmul_seconds.extend(time_dense_matmul(repeats=1))

    label(benchmark, op="train_levers", shape=setup_name, flops=flops, levers=names)
    benchmark.pedantic(one_round, rounds=LEVER_ROUNDS, warmup_rounds=0, iterations=1)
    for name, step in steps.items():
        assert_trained(step, before[name], name=f"{setup_name}/{name}")
    if benchmark.disabled:
        return
    matmul_gflops = 2 * MATMUL_SIZE**3 / spread(matmul_seconds)["median"] / 1e9
    gflop = flops / 1e9
    bench_summary(f"levers, {setup_name} ({LEVER_ROUNDS} interleaved rounds, {gflop:.2f} GFLOP/step):")
    results = {}
    for name in names:
        fields = rate_fields(flops=flops, seconds=seconds[name], matmul_gflops=matmul_gflops)
        ratios = spread([ours / base for ours, base in zip(seconds[name], seconds["baseline"], strict=True)])
        fields.update(
            ratio_median=ratios["median"],
            ratio_q1=ratios["q1"],
            ratio_q3=ratios["q3"],
            optimizer_ms_median=spread(steps[name].optimizer_seconds[1:])["median"] * 1e3,
        )
        results[name] = fields
        bench_summary(
            "  "
            + describe(name, fields)
            + f"  x{fields['ratio_median']:.2f} of baseline"
            + f" (IQR {fields['ratio_q1']:.2f}-{fields['ratio_q3']:.2f})"
            + f"  optimizer {fields['optimizer_ms_median']:.1f} ms"
        )
    benchmark.extra_info["levers_result"] = results


# --- data loading in a worker vs in-process ---------------------------------------------------------

LOADING_VARIANTS: dict[str, dict[str, Any]] = {
    "in_process": dict(num_workers=0, threads=None),
    "worker": dict(num_workers=1, threads=None),
    "worker+threads_1": dict(num_workers=1, threads=1),
}


@pytest.fixture(scope="module")
def synthvid_phase2_run(tmp_path_factory) -> Iterator[RunConfig]:
    """The STSN row on SynthVID ``tiny`` (generated on first use under ``$VODBENCH_DATA``, else in a
    temp folder): 128x128 letterboxed frames, as in the ablation; only the number of videos differs."""
    run = override(_stsn_row("STSN"), **{"data.synth_preset": "tiny"})
    if os.environ.get("VODBENCH_DATA"):
        yield run
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VODBENCH_DATA", str(tmp_path_factory.mktemp("data")))
        yield run


def loader_of(dataset, *, batch_size: int, num_workers: int) -> DataLoader:
    """Batches of random indices, the same sequence for every loader (seeded sampler)."""
    sampler = RandomSampler(
        dataset, replacement=True, num_samples=10**6, generator=torch.Generator().manual_seed(0)
    )
    return DataLoader(
        dataset,
        batch_sampler=BatchSampler(sampler, batch_size=batch_size, drop_last=True),
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        prefetch_factor=LOADING_DISCARD if num_workers > 0 else None,
    )


def test_bench_train_data_loading(benchmark, bench_summary, synthvid_phase2_run):
    run = synthvid_phase2_run
    setup = StepSetup(run=run, phase=2)
    dataset = build_dataset(run.data, "train", phase=2, seed=phase_seed(run, 2))
    for video in dataset.videos + dataset.stills:  # decode every frame once, before any worker forks
        dataset.cache.video(video)
    loaders = {
        name: iter(loader_of(dataset, batch_size=setup.train.batch_size, num_workers=options["num_workers"]))
        for name, options in LOADING_VARIANTS.items()
    }
    first_batches = {name: next(loader) for name, loader in loaders.items()}
    reference = first_batches["in_process"]
    for name, batch in first_batches.items():  # a worker yields exactly the in-process batches
        assert torch.equal(batch.images, reference.images), f"{name}: images differ from in-process"
        assert torch.equal(batch.support_images, reference.support_images), f"{name}: supports differ"
        assert torch.equal(batch.offsets, reference.offsets), f"{name}: offsets differ"
    steps = {
        name: build_training_step(setup, threads=options["threads"], batch=first_batches[name])
        for name, options in LOADING_VARIANTS.items()
    }
    flops = steps["in_process"].count_flops()
    before = {name: parameters_of(step.model) for name, step in steps.items()}
    for step in steps.values():
        step()  # untimed first step on the first batch

    names = list(steps)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    wait_seconds: dict[str, list[float]] = {name: [] for name in names}
    rounds_done: list[int] = []

    def one_round() -> None:
        rotation = len(rounds_done) % len(names)
        for name in names[rotation:] + names[:rotation]:
            for position in range(LOADING_BLOCK):
                started = time.perf_counter()
                batch = next(loaders[name])
                loaded = time.perf_counter()
                steps[name](batch)
                if position >= LOADING_DISCARD:
                    seconds[name].append(time.perf_counter() - started)
                    wait_seconds[name].append(loaded - started)
        rounds_done.append(1)

    label(benchmark, op="train_data_loading", shape="phase2-stsn-synthvid_tiny", flops=flops, variants=names)
    benchmark.pedantic(one_round, rounds=LOADING_ROUNDS, warmup_rounds=0, iterations=1)
    for name, step in steps.items():
        assert_trained(step, before[name], name=f"data loading/{name}")
    loaders.clear()  # drops the iterators: ends the persistent workers
    if benchmark.disabled:
        return
    matmul_gflops = 2 * MATMUL_SIZE**3 / spread(time_dense_matmul(repeats=5))["median"] / 1e9
    bench_summary(
        f"data loading, phase2-stsn on SynthVID tiny ({LOADING_ROUNDS} rounds"
        f" x {LOADING_BLOCK - LOADING_DISCARD} kept steps per variant):"
    )
    results = {}
    for name in names:
        fields = rate_fields(flops=flops, seconds=seconds[name], matmul_gflops=matmul_gflops)
        fields["wait_ms_median"] = spread(wait_seconds[name])["median"] * 1e3
        fields["ratio_to_in_process"] = fields["ms_median"] / (spread(seconds["in_process"])["median"] * 1e3)
        results[name] = fields
        bench_summary(
            "  " + describe(name, fields) + f"  waiting for data {fields['wait_ms_median']:.1f} ms"
            f"  x{fields['ratio_to_in_process']:.2f} of in-process"
        )
    benchmark.extra_info["loading_result"] = results
