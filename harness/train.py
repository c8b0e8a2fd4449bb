"""Training of one phase of the shared detector, resumable and deterministic on CPU.

Phase 1 trains the still-image detector (no supports, no aggregator weights); phase 2 builds the
video detector from ``run.model``, loads the phase-1 weights (:meth:`VideoDetector.load_phase1`)
and trains with random supports per step (``run.data.train_support``: temporal dropout).

What the output folder holds (``out_dir``):

* ``checkpoint_<step>.pt``: model, optimizer, scheduler, completed steps and RNG states, written
  every ``checkpoint_every`` steps (atomically: temp file + rename; the two newest are kept);
* ``final.pt``: the last checkpoint of a finished phase; when present the phase is not redone;
* ``metrics.jsonl``: one JSON object per logged step (step, phase, each loss term, total, lr,
  grad norm, seconds, data_seconds), then one ``"event": "summary"`` object with the mean step and
  data-loading times (the data-loading share of a step is measured, not assumed).

Determinism: the batch of step ``k`` depends only on ``(seed, k)`` (an epoch-wise permutation
seeded by ``seed + epoch`` and ``dataset.set_epoch(epoch)`` for the random supports), the model
init on ``seed + 1000 * phase``, and RNG states are checkpointed, so a resumed run ends with the
same weights as an uninterrupted one.
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

from harness.config import phase_seed
from harness.model.detector import VideoDetector, build_detector

FINAL_CHECKPOINT = "final.pt"
METRICS_FILE = "metrics.jsonl"
_KEEP_CHECKPOINTS = 2


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch and ask torch for deterministic kernels where it has them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def uses_supports(data: Any) -> bool:
    """True when the data configuration feeds support frames at training or test time."""
    return any(spec.strategy != "none" for spec in (data.train_support, data.test_support))


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
        return 0.001 + (1 - 0.001) * step / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":  # x0.1 at 2/3 and again at 8/9 of the post-warm-up steps
        return 0.1 ** (int(progress >= 2 / 3) + int(progress >= 8 / 9))
    raise ValueError(f"unknown schedule {schedule!r}; expected cosine, step or constant")


def build_optimizer(
    model: torch.nn.Module, *, name: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW (fused) or SGD (momentum 0.9); no weight decay on norms and biases.

    ``fused=True``: one kernel per parameter instead of about ten small ops, the same update as the
    for-loop AdamW (checked by tests/benchmarks/test_bench_train.py, which also times both).
    """
    decay, no_decay = [], []
    for param_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or param_name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; expected adamw or sgd")


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temp file then rename, so a crash never leaves a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest ``checkpoint_<step>.pt`` in ``out_dir`` (None when there is none)."""
    found = sorted(out_dir.glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


def _truncate_metrics(path: Path, *, after_step: int) -> None:
    """Drop records logged after ``after_step`` (a crashed run logged steps its checkpoint lacks)."""
    if not path.exists():
        return
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in records if "event" not in r and r["step"] <= after_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def _default_dataset(run: Any, phase: int) -> tuple[Dataset, Callable]:
    from harness.data.dataset import build_dataset, collate  # the data layer is an edge dependency

    return build_dataset(run.data, "train", phase=phase, seed=phase_seed(run, phase)), collate


def build_phase_model(run: Any, *, phase: int) -> VideoDetector:
    """Phase 1, or phase 2 of a run without supports (the single-frame baseline): the still-image
    detector; phase 2 otherwise: the video detector of ``run.model``."""
    return build_detector(run.model, single_frame=phase == 1 or not uses_supports(run.data))


def train_phase(
    run: Any,
    *,
    phase: int,
    out_dir: Path,
    init_checkpoint: Path | None = None,
    progress: bool = True,
    log_every: int = 1,
    dataset: Dataset | None = None,
    collate_fn: Callable | None = None,
) -> Path:
    """Train phase ``phase`` (1 or 2) of ``run`` (a ``RunConfig``) in ``out_dir``; return ``final.pt``.

    Resumes from the newest checkpoint in ``out_dir``; returns at once when ``final.pt`` exists.
    ``init_checkpoint`` (phase 2): the phase-1 ``final.pt`` to start from. ``dataset``/``collate_fn``
    replace ``harness.data.dataset.build_dataset(run.data, "train", ...)`` (custom data, tests).

    Raises ``FloatingPointError`` naming the step and the loss term when a loss is NaN/inf, after
    saving the state before that step as a checkpoint.
    """
    if phase not in (1, 2):
        raise ValueError(f"phase must be 1 or 2, got {phase}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final_path = out_dir / FINAL_CHECKPOINT
    if final_path.exists():
        return final_path
    config = run.phase1 if phase == 1 else run.phase2
    device = resolve_device(run.device)
    seed_everything(phase_seed(run, phase) + 1000 * phase)

    model = build_phase_model(run, phase=phase)
    if phase == 2 and init_checkpoint is not None:
        model.load_phase1(init_checkpoint)
    if config.freeze_backbone:
        model.backbone.requires_grad_(False)
    model.to(device)
    optimizer = build_optimizer(model, name=config.optimizer, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step, total_steps=config.steps, warmup_steps=config.warmup_steps, schedule=config.schedule
        ),
    )
    start_step = 0
    resume_from = latest_checkpoint(out_dir)
    if resume_from is not None:
        state = torch.load(resume_from, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng_state(state["rng"])
        start_step = state["step"]
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
            "rng": _rng_state(),
        }
        save_atomic(payload, path)
        for old in sorted(out_dir.glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[1]))[
            :-_KEEP_CHECKPOINTS
        ]:
            old.unlink()
        return path

    if dataset is None:
        dataset, collate_fn = _default_dataset(run, phase)
    steps_per_epoch = StepBatchSampler.steps_per_epoch(len(dataset), config.batch_size)
    model.train()
    step_seconds: list[float] = []
    data_seconds: list[float] = []
    bar = tqdm(total=config.steps, initial=start_step, desc=f"train phase {phase}", disable=not progress)
    step = start_step
    with metrics_path.open("a") as metrics_file:
        while step < config.steps:
            epoch = step // steps_per_epoch
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            sampler = StepBatchSampler(
                dataset_size=len(dataset),
                batch_size=config.batch_size,
                seed=phase_seed(run, phase),
                epoch=epoch,
                first_step=step,
                last_step=min(config.steps, (epoch + 1) * steps_per_epoch),
            )
            loader = DataLoader(
                dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=config.num_workers
            )
            tic = time.perf_counter()
            for batch in loader:
                batch = batch.to(device)
                data_time = time.perf_counter() - tic
                losses = model.losses(batch)
                for term, value in losses.items():
                    if not torch.isfinite(value):
                        saved = save_checkpoint(step)
                        raise FloatingPointError(
                            f"phase {phase}: loss term {term!r} is {value.item()} at step {step + 1}; "
                            f"the state before this step is saved in {saved}"
                        )
                total = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], config.grad_clip
                )
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                step += 1
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds = time.perf_counter() - tic
                step_seconds.append(seconds)
                data_seconds.append(data_time)
                if step % log_every == 0 or step == config.steps:
                    record = {"step": step, "phase": phase, "loss": total.item()}
                    record.update({term: value.item() for term, value in losses.items()})
                    record.update(
                        {
                            "lr": lr,
                            "grad_norm": float(grad_norm),
                            "seconds": seconds,
                            "data_seconds": data_time,
                        }
                    )
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                bar.set_postfix(loss=f"{total.item():.3f}")
                bar.update(1)
                if step % config.checkpoint_every == 0 and step < config.steps:
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
    last = save_checkpoint(step)
    os.replace(last, final_path)
    return final_path


def read_metrics(out_dir: Path) -> list[dict[str, Any]]:
    """All records of ``out_dir/metrics.jsonl`` (steps and summaries)."""
    path = Path(out_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
