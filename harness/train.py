"""The trainer: one phase of the shared detector, resumable and deterministic on CPU.

:func:`train` takes a model, a dataset and its schedule (a :class:`~harness.config.TrainConfig`) as
explicit arguments; which model and which data a run's phase uses is decided by the caller
(``harness.pipeline`` with ``harness.build``). Phase 1 trains the still-image detector, phase 2 the
video detector initialised from it with random supports per step (temporal dropout).

What the output folder holds (``out_dir``):

* ``checkpoint_<step>.pt``: model, optimizer, scheduler, completed steps and RNG states, written
  every ``checkpoint_every`` steps (atomically: temp file + rename; the two newest are kept);
* ``final.pt``: the last checkpoint of a finished phase; when present the phase is not redone;
* ``metrics.jsonl``: one JSON object per logged step (step, phase, each loss term, total, lr,
  grad norm, seconds, data_seconds), then one ``"event": "summary"`` object with the mean step and
  data-loading times (the data-loading share of a step is measured, not assumed).

Determinism: the batch of step ``k`` depends only on ``(seed, k)`` (an epoch-wise permutation
seeded by ``seed + epoch`` and ``dataset.set_epoch(epoch)`` for the random supports); the caller
seeds the model's initialisation (:func:`seed_everything`); RNG states are checkpointed, so a
resumed run ends with the same weights as an uninterrupted one.

Optimizer groups: a module may declare, for its own parameters, no weight decay and a learning-rate
multiplier by defining ``optimizer_overrides() -> {parameter name: {"weight_decay": float,
"lr_mult": float}}`` (names relative to the module, e.g. ``{"locations": {"weight_decay": 0.0,
"lr_mult": 100.0}}``); :func:`build_optimizer` reads it.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from harness.config import TrainConfig
from harness.files import atomic_path, read_jsonl, write_text

FINAL_CHECKPOINT = "final.pt"
METRICS_FILE = "metrics.jsonl"
_KEEP_CHECKPOINTS = 2
WARMUP_START_FACTOR = 0.001  # learning-rate multiplier at step 0 of the linear warm-up
STEP_DECAY_AT = (2 / 3, 8 / 9)  # "step" schedule: x0.1 at these fractions of the post-warm-up steps
SGD_MOMENTUM = 0.9


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch and ask torch for deterministic kernels where it has them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


class StepBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices for steps ``start_step .. total_steps - 1`` of one epoch at a time.

    Epoch ``e`` is a permutation seeded by ``seed + e``, cut into ``steps_per_epoch`` batches of
    ``batch_size`` (a dataset smaller than a batch is tiled), so step ``k`` always sees the same
    indices whether or not the run was resumed.
    """

    def __init__(
        self, *, dataset_size: int, batch_size: int, seed: int, epoch: int, first_step: int, last_step: int
    ):
        if dataset_size < 1:
            raise ValueError("cannot train on an empty dataset")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.first_step = first_step
        self.last_step = last_step

    @staticmethod
    def steps_per_epoch(dataset_size: int, batch_size: int) -> int:
        return max(1, dataset_size // batch_size)

    def _epoch_batches(self) -> list[list[int]]:
        generator = np.random.default_rng(self.seed + self.epoch)
        order = generator.permutation(self.dataset_size)
        if self.dataset_size < self.batch_size:
            order = np.resize(order, self.batch_size)  # tile a tiny dataset to fill one batch
        steps = self.steps_per_epoch(self.dataset_size, self.batch_size)
        # (steps * batch_size,) -> (steps, batch_size)
        return order[: steps * self.batch_size].reshape(steps, self.batch_size).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        steps = self.steps_per_epoch(self.dataset_size, self.batch_size)
        batches = self._epoch_batches()
        for step in range(self.first_step, self.last_step):
            yield batches[step - self.epoch * steps]

    def __len__(self) -> int:
        return self.last_step - self.first_step


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up then cosine/step/constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return WARMUP_START_FACTOR + (1 - WARMUP_START_FACTOR) * step / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return 0.1 ** sum(int(progress >= at) for at in STEP_DECAY_AT)
    raise ValueError(f"unknown schedule {schedule!r}; expected cosine, step or constant")


def parameter_options(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    """Full parameter name -> ``{"weight_decay": ..., "lr_mult": ...}`` declared by the modules'
    ``optimizer_overrides()`` (see the module docstring); an unknown name is an error."""
    options: dict[str, dict[str, float]] = {}
    names = {name for name, _ in model.named_parameters()}
    for module_name, module in model.named_modules():
        declare = getattr(module, "optimizer_overrides", None)
        if declare is None:
            continue
        for local, option in declare().items():
            full = f"{module_name}.{local}" if module_name else local
            unknown = set(option) - {"weight_decay", "lr_mult"}
            if full not in names or unknown:
                raise KeyError(
                    f"{type(module).__name__}.optimizer_overrides() declares {local!r} {option}: "
                    f"{'no such parameter' if full not in names else f'unknown options {sorted(unknown)}'}"
                )
            options[full] = dict(option)
    return options


def build_optimizer(
    model: torch.nn.Module, *, name: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW (fused) or SGD (momentum :data:`SGD_MOMENTUM`); no weight decay on norms and biases;
    parameters a module declares (:func:`parameter_options`) get their own group with their decay and
    lr x lr_mult. Each group's ``lr`` is its base; the scheduler multiplies every group by the same factor.

    ``fused=True``: one kernel per parameter instead of about ten small ops, the same update as the
    for-loop AdamW (checked by tests/benchmarks/test_bench_train.py, which also times both)."""
    declared = parameter_options(model)
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for param_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        default_decay = 0.0 if param.ndim <= 1 or param_name.endswith(".bias") else weight_decay
        option = declared.get(param_name, {})
        key = (float(option.get("weight_decay", default_decay)), float(option.get("lr_mult", 1.0)))
        groups.setdefault(key, []).append(param)
    param_groups = [
        {"params": params, "weight_decay": decay, "lr": lr * mult, "lr_mult": mult}
        for (decay, mult), params in sorted(groups.items())
    ]
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, fused=True)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=SGD_MOMENTUM)
    raise ValueError(f"unknown optimizer {name!r}; expected adamw or sgd")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` through :func:`harness.files.atomic_path`: a crash or a full disk never leaves a
    half-written checkpoint (nor its temporary file), and the error names the checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest ``checkpoint_<step>.pt`` in ``out_dir`` (None when there is none)."""
    found = sorted(out_dir.glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


def _truncate_metrics(path: Path, *, after_step: int) -> None:
    """Drop records logged after ``after_step`` (a crashed run logged steps its checkpoint lacks)."""
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if "event" not in r and r["step"] <= after_step]
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _resume(
    out_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
) -> int:
    """Load the newest checkpoint of ``out_dir`` into the training state; return its completed steps."""
    resume_from = latest_checkpoint(out_dir)
    if resume_from is None:
        return 0
    state = torch.load(resume_from, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng_state(state["rng"])
    return int(state["step"])


def _epoch_loader(
    dataset: Dataset, collate_fn: Callable | None, *, schedule: TrainConfig, seed: int, step: int
) -> DataLoader:
    """The loader of the rest of ``step``'s epoch (see :class:`StepBatchSampler`)."""
    steps_per_epoch = StepBatchSampler.steps_per_epoch(len(dataset), schedule.batch_size)
    epoch = step // steps_per_epoch
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    sampler = StepBatchSampler(
        dataset_size=len(dataset),
        batch_size=schedule.batch_size,
        seed=seed,
        epoch=epoch,
        first_step=step,
        last_step=min(schedule.steps, (epoch + 1) * steps_per_epoch),
    )
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=schedule.num_workers)


def _step_record(
    *,
    step: int,
    phase: int,
    total: torch.Tensor,
    losses: dict[str, torch.Tensor],
    lr: float,
    grad_norm: torch.Tensor,
    seconds: float,
    data_seconds: float,
) -> dict[str, Any]:
    record: dict[str, Any] = {"step": step, "phase": phase, "loss": total.item()}
    record.update({term: value.item() for term, value in losses.items()})
    record.update({"lr": lr, "grad_norm": float(grad_norm), "seconds": seconds, "data_seconds": data_seconds})
    return record


def train(
    model: torch.nn.Module,
    dataset: Dataset,
    *,
    schedule: TrainConfig,
    out_dir: Path,
    seed: int,
    device: torch.device,
    collate_fn: Callable | None = None,
    phase: int = 2,
    progress: bool = True,
    log_every: int = 1,
) -> Path:
    """Train ``model`` (with ``model.losses(batch) -> {term: scalar}``) on ``dataset`` for
    ``schedule.steps`` steps in ``out_dir``; return ``final.pt``.

    ``seed`` drives the batch order; ``phase`` only labels the metrics. Resumes from the newest
    checkpoint in ``out_dir``; returns at once when ``final.pt`` exists.

    Raises ``FloatingPointError`` naming the step and the loss term when a loss is NaN/inf, after
    saving the state before that step as a checkpoint.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final_path = out_dir / FINAL_CHECKPOINT
    if final_path.exists():
        return final_path
    if schedule.freeze_backbone:
        model.backbone.requires_grad_(False)
    model.to(device)
    if schedule.channels_last and hasattr(model, "use_channels_last"):
        model.use_channels_last()
    optimizer = build_optimizer(
        model, name=schedule.optimizer, lr=schedule.lr, weight_decay=schedule.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step, total_steps=schedule.steps, warmup_steps=schedule.warmup_steps, schedule=schedule.schedule
        ),
    )
    start_step = _resume(out_dir, model, optimizer, scheduler, device)
    metrics_path = out_dir / METRICS_FILE
    _truncate_metrics(metrics_path, after_step=start_step)

    def save_checkpoint(completed_steps: int) -> Path:
        path = out_dir / f"checkpoint_{completed_steps:07d}.pt"
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": completed_steps,
            "phase": phase,
            "rng": rng_state(),
        }
        save_atomic(payload, path)
        for old in sorted(out_dir.glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[1]))[
            :-_KEEP_CHECKPOINTS
        ]:
            old.unlink()
        return path

    def stop_non_finite(what: str, completed_steps: int) -> None:
        """Raise ``FloatingPointError``; the state before the failing step is kept as a checkpoint
        when its weights are finite, else the last finite checkpoint is named."""
        if finite_weights(model):
            kept = save_checkpoint(completed_steps)
        else:
            kept = latest_checkpoint(out_dir)
        where = f"the last finite state is {kept}" if kept else "no finite checkpoint exists"
        raise FloatingPointError(f"phase {phase}: {what} at step {completed_steps + 1}; {where}")

    model.train()
    step_seconds: list[float] = []
    data_seconds: list[float] = []
    trainable = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(total=schedule.steps, initial=start_step, desc=f"train phase {phase}", disable=not progress)
    step = start_step
    with metrics_path.open("a") as metrics_file:
        while step < schedule.steps:
            loader = _epoch_loader(dataset, collate_fn, schedule=schedule, seed=seed, step=step)
            tic = time.perf_counter()
            for batch in loader:
                batch = batch.to(device)
                data_time = time.perf_counter() - tic
                losses = model.losses(batch)
                for term, value in losses.items():
                    if not torch.isfinite(value):
                        stop_non_finite(f"loss term {term!r} is {value.item()}", step)
                total = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, schedule.grad_clip)
                if not torch.isfinite(grad_norm):  # the update would write NaN/inf into the weights
                    stop_non_finite(f"the gradient norm is {float(grad_norm)}", step)
                lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_mult", 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds = time.perf_counter() - tic
                step_seconds.append(seconds)
                data_seconds.append(data_time)
                if step % log_every == 0 or step == schedule.steps:
                    record = _step_record(
                        step=step,
                        phase=phase,
                        total=total,
                        losses=losses,
                        lr=lr,
                        grad_norm=grad_norm,
                        seconds=seconds,
                        data_seconds=data_time,
                    )
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                bar.set_postfix(loss=f"{total.item():.3f}")
                bar.update(1)
                if step % schedule.checkpoint_every == 0 and step < schedule.steps:
                    save_checkpoint(step)
                tic = time.perf_counter()
        bar.close()
        mean_step = float(np.mean(step_seconds)) if step_seconds else 0.0
        mean_data = float(np.mean(data_seconds)) if data_seconds else 0.0
        summary = {
            "event": "summary",
            "phase": phase,
            "step": step,
            "steps_timed": len(step_seconds),
            "mean_step_seconds": mean_step,
            "mean_data_seconds": mean_data,
            "data_fraction": mean_data / mean_step if mean_step else 0.0,
            "device": str(device),
        }
        metrics_file.write(json.dumps(summary) + "\n")
    if not finite_weights(model):  # an update of finite gradients can still overflow
        stop_non_finite("the weights are not finite after the last update", step - 1)
    last = save_checkpoint(step)
    os.replace(last, final_path)
    return final_path


def read_metrics(out_dir: Path) -> list[dict[str, Any]]:
    """All records of ``out_dir/metrics.jsonl`` (steps and summaries)."""
    return read_jsonl(Path(out_dir) / METRICS_FILE)


def finite_weights(model: torch.nn.Module) -> bool:
    """True when every floating-point parameter and buffer of ``model`` is finite."""
    tensors = list(model.parameters()) + list(model.buffers())
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())
