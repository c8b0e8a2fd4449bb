"""Trainer: learning, determinism, resume after a crash, NaN handling, schedule, phase 2 init, the
training path of stream methods (keyframe triplets)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from harness.build import PHASE_SEED_STRIDE, build_model
from harness.config import (
    BackboneConfig,
    DataConfig,
    HeadConfig,
    ModelConfig,
    RunConfig,
    SupportSpec,
    TrainConfig,
    phase_seed,
)
from harness.model.detector import VideoDetector, build_detector
from harness.train import (
    FINAL_CHECKPOINT,
    StepBatchSampler,
    build_optimizer,
    latest_checkpoint,
    lr_factor,
    read_metrics,
    seed_everything,
    train,
)
from tests.model.fakes import NUM_CLASSES, FakeDataset, fake_collate
from tests.stream_methods import HoldKeyframe

TINY_MODEL = ModelConfig(
    num_classes=NUM_CLASSES,
    backbone=BackboneConfig(width=8, depth=(1, 1), out_channels=16),
    head=HeadConfig(channels=16, num_convs=1),
)


def tiny_run(steps: int = 8, checkpoint_every: int = 3, **phase1_changes) -> RunConfig:
    phase = TrainConfig(
        steps=steps,
        batch_size=4,
        lr=1e-2,
        warmup_steps=2,
        checkpoint_every=checkpoint_every,
        schedule="cosine",
        **phase1_changes,
    )
    return RunConfig(device="cpu", model=TINY_MODEL, phase1=phase, phase2=phase)


pytestmark = pytest.mark.usefixtures("one_thread")


def _train(run, out_dir, dataset=None, phase=1, init_checkpoint=None):
    """Phase ``phase`` of ``run`` as the pipeline trains it: seed, build, (load phase 1), train."""
    dataset = dataset if dataset is not None else FakeDataset(num_samples=8)
    seed_everything(phase_seed(run, phase) + phase * PHASE_SEED_STRIDE)
    model = build_model(run, phase=phase)
    if init_checkpoint is not None:
        model.load_phase1(init_checkpoint)
    return train(
        model,
        dataset,
        collate_fn=fake_collate,
        schedule=run.phase1 if phase == 1 else run.phase2,
        out_dir=out_dir,
        seed=phase_seed(run, phase),
        device=torch.device("cpu"),
        phase=phase,
        progress=False,
    )


def _losses(out_dir):
    return [
        {k: v for k, v in r.items() if not k.endswith("seconds")}
        for r in read_metrics(out_dir)
        if "event" not in r
    ]


def _weights(path):
    return torch.load(path, weights_only=False)["model"]


def test_loss_falls_on_easy_overfit(tmp_path):
    run = dataclasses.replace(
        tiny_run(),
        phase1=TrainConfig(
            steps=40, batch_size=4, lr=1e-2, warmup_steps=5, schedule="constant", checkpoint_every=100
        ),
    )
    _train(run, tmp_path)
    losses = [r["loss"] for r in _losses(tmp_path)]
    assert len(losses) == 40
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.6 * first, (first, last)


def test_metrics_records_and_summary(tmp_path):
    final = _train(tiny_run(steps=4), tmp_path)
    assert final == tmp_path / FINAL_CHECKPOINT
    records = read_metrics(tmp_path)
    steps = [r for r in records if "event" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for record in steps:
        assert {
            "phase",
            "loss",
            "loss_cls",
            "loss_box",
            "loss_centerness",
            "lr",
            "grad_norm",
            "seconds",
            "data_seconds",
        } <= set(record)
        assert record["loss"] == pytest.approx(
            record["loss_cls"] + record["loss_box"] + record["loss_centerness"]
        )
    summary = records[-1]
    assert summary["event"] == "summary" and summary["steps_timed"] == 4
    assert summary["mean_step_seconds"] > summary["mean_data_seconds"] >= 0
    assert 0 <= summary["data_fraction"] < 1


def test_same_seed_same_metrics_and_weights(tmp_path):
    a = _train(tiny_run(), tmp_path / "a")
    b = _train(tiny_run(), tmp_path / "b")
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    for key, value in _weights(a).items():
        torch.testing.assert_close(value, _weights(b)[key], rtol=0, atol=0)
    c = _train(dataclasses.replace(tiny_run(), seed=1), tmp_path / "c")
    assert _losses(tmp_path / "c") != _losses(tmp_path / "a")
    assert c.exists()


def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    reference = _train(tiny_run(), tmp_path / "straight")
    crashing = FakeDataset(num_samples=8)
    crashing.fail_at_call = 4 * 4 + 2  # during the batch of step 5; checkpoint at step 3 exists
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(tiny_run(), tmp_path / "resumed", dataset=crashing)
    assert latest_checkpoint(tmp_path / "resumed").name == "checkpoint_0000003.pt"
    assert not (tmp_path / "resumed" / FINAL_CHECKPOINT).exists()
    resumed = _train(tiny_run(), tmp_path / "resumed")
    for key, value in _weights(reference).items():
        torch.testing.assert_close(value, _weights(resumed)[key], rtol=0, atol=0)
    # the metrics file is the uninterrupted one (steps 4 logged before the crash are not doubled)
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")


def test_finished_phase_is_not_redone(tmp_path):
    final = _train(tiny_run(steps=2), tmp_path)
    stamp = final.stat().st_mtime_ns
    untouched = FakeDataset(num_samples=8)
    assert _train(tiny_run(steps=2), tmp_path, dataset=untouched) == final
    assert final.stat().st_mtime_ns == stamp and untouched.calls == 0


def test_nan_loss_names_step_and_term_and_keeps_checkpoint(tmp_path, monkeypatch):
    original = VideoDetector.losses
    calls = []

    def diverging_losses(self, batch):  # the 5th step's box loss diverges
        losses = original(self, batch)
        calls.append(1)
        if len(calls) == 5:
            losses["loss_box"] = losses["loss_box"] * float("nan")
        return losses

    monkeypatch.setattr(VideoDetector, "losses", diverging_losses)
    with pytest.raises(FloatingPointError, match=r"'loss_box'.*step 5"):
        _train(tiny_run(), tmp_path)
    saved = latest_checkpoint(tmp_path)
    assert saved.name == "checkpoint_0000004.pt"
    state = torch.load(saved, weights_only=False)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert [r["step"] for r in _losses(tmp_path)] == [1, 2, 3, 4]


def test_phase2_starts_from_phase1_with_supports(tmp_path):
    phase1 = _train(tiny_run(steps=2), tmp_path / "p1")
    run = dataclasses.replace(
        tiny_run(steps=2),
        data=DataConfig(train_support=SupportSpec(strategy="random_window", num=2, radius=3)),
    )
    final = _train(
        run,
        tmp_path / "p2",
        dataset=FakeDataset(num_samples=8, num_supports=2),
        phase=2,
        init_checkpoint=phase1,
    )
    assert final.exists()
    assert read_metrics(tmp_path / "p2")[0]["phase"] == 2


def test_lr_schedule_values():
    assert lr_factor(0, total_steps=100, warmup_steps=10, schedule="cosine") == pytest.approx(0.001)
    assert lr_factor(10, total_steps=100, warmup_steps=10, schedule="cosine") == pytest.approx(1.0)
    assert lr_factor(55, total_steps=100, warmup_steps=10, schedule="cosine") == pytest.approx(0.5)
    assert lr_factor(100, total_steps=100, warmup_steps=10, schedule="cosine") == pytest.approx(
        0.0, abs=1e-12
    )
    assert lr_factor(80, total_steps=100, warmup_steps=10, schedule="step") == pytest.approx(0.1)
    assert lr_factor(99, total_steps=100, warmup_steps=10, schedule="step") == pytest.approx(0.01)
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(50, total_steps=100, warmup_steps=10, schedule="linear")


def test_step_sampler_is_a_function_of_the_step():
    def batches(first, last, epoch):
        return list(
            StepBatchSampler(
                dataset_size=10, batch_size=3, seed=5, epoch=epoch, first_step=first, last_step=last
            )
        )

    full = batches(0, 3, epoch=0)
    assert batches(1, 3, epoch=0) == full[1:]
    assert sorted(sum(full, [])) == sorted(set(sum(full, [])))  # no repeats inside an epoch
    assert batches(3, 6, epoch=1) != full
    tiny = list(StepBatchSampler(dataset_size=2, batch_size=4, seed=0, epoch=0, first_step=0, last_step=1))
    assert len(tiny[0]) == 4 and set(tiny[0]) == {0, 1}
    with pytest.raises(ValueError, match="empty"):
        StepBatchSampler(dataset_size=0, batch_size=4, seed=0, epoch=0, first_step=0, last_step=1)


def test_bad_phase_raises(tmp_path):
    with pytest.raises(ValueError, match="phase"):
        _train(tiny_run(), tmp_path, phase=3)


class _Tagged(torch.nn.Module):
    """A module declaring one decay-free parameter with a 100x learning rate, beside a plain one."""

    def __init__(self):
        super().__init__()
        self.locations = torch.nn.Parameter(torch.zeros(4, 2))
        self.weight = torch.nn.Parameter(torch.zeros(4, 2))

    def optimizer_overrides(self):
        return {"locations": {"weight_decay": 0.0, "lr_mult": 100.0}}


def test_declared_parameter_group_moves_by_its_multiplier_without_decay():
    model = torch.nn.Sequential(_Tagged())
    with torch.no_grad():  # non-zero weights, so that weight decay would show
        model[0].locations.fill_(1.0)
        model[0].weight.fill_(1.0)
    optimizer = build_optimizer(model, name="sgd", lr=1e-3, weight_decay=0.5)
    (model[0].locations.sum() + model[0].weight.sum()).backward()  # gradient 1 everywhere
    optimizer.step()  # SGD's first step: p -= lr * (grad + decay * p) (momentum buffer = that)
    torch.testing.assert_close(model[0].locations, torch.full((4, 2), 1.0 - 1e-3 * 100 * 1.0))
    torch.testing.assert_close(model[0].weight, torch.full((4, 2), 1.0 - 1e-3 * (1.0 + 0.5 * 1.0)))
    groups = {(g["weight_decay"], g["lr_mult"]) for g in optimizer.param_groups}
    assert groups == {(0.0, 100.0), (0.5, 1.0)}


def test_declared_parameter_group_keeps_its_multiplier_under_the_schedule():
    model = torch.nn.Sequential(_Tagged())
    optimizer = build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.0)
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)  # sets each group's lr = base x 0.5
    lrs = sorted(g["lr"] for g in optimizer.param_groups)
    assert lrs == pytest.approx([0.5e-3, 0.5e-1])


def test_optimizer_overrides_naming_no_parameter_is_an_error():
    class Wrong(_Tagged):
        def optimizer_overrides(self):
            return {"locatoins": {"lr_mult": 10.0}}

    with pytest.raises(KeyError, match="locatoins.*no such parameter"):
        build_optimizer(Wrong(), name="adamw", lr=1e-3, weight_decay=0.0)


# ---------------------------------------------------------------------------------------------
# Stream methods: the LSTS triplet
# ---------------------------------------------------------------------------------------------


def _stream_detector(interval: int = 10) -> VideoDetector:
    torch.manual_seed(0)
    detector = build_detector(TINY_MODEL, single_frame=True)
    detector.aggregator = HoldKeyframe(keyframe_interval=interval)
    return detector


def test_stream_training_feeds_keyframes_then_the_current_frame_at_low_level():
    """Row 0: old -8, new -2 -> the current frame is a non-keyframe; row 1: the new keyframe is the
    current frame (offset 0) -> its output is that keyframe's; row 2: a still (copies, offsets 0).
    Full features only for the 6 keyframe images, low-level features for all 9."""
    detector = _stream_detector()
    batch = fake_collate([FakeDataset(num_samples=3, num_supports=2)[i] for i in range(3)])
    batch = dataclasses.replace(batch, offsets=torch.tensor([[-8, -2], [-7, 0], [0, 0]]))
    low_rows, high_rows = [], []
    original_low, original_high = detector.extract_low, detector.extract_high
    detector.extract_low = lambda images: low_rows.append(images.shape[0]) or original_low(images)
    detector.extract_high = lambda low: high_rows.append(low.shape[0]) or original_high(low)
    detector.extract = None  # the full backbone on every image would be the window path
    losses = detector.losses(batch)
    assert low_rows == [9] and high_rows == [6]
    assert detector.aggregator.calls == [
        ([True, True, True], [-8, -7, 0]),  # old keyframes
        ([True, True, True], [-2, 0, 0]),  # new keyframes
        ([False], [0]),  # the current frame of row 0 only
    ]
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert detector.aggregator.gain.grad is not None and detector.aggregator.gain.grad != 0
    later = detector.backbone.later_stages  # forward_high: reached through the keyframes only
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in later.parameters())
    # the current frames' outputs: row 0 holds its new keyframe's features, rows 1-2 are keyframes
    with torch.no_grad():
        out = detector.forward_batch(batch)
        images = torch.cat([batch.images, batch.support_images.flatten(0, 1)])
        key_high = detector.backbone(images)[3:].unflatten(0, (3, 2))  # (B, T, C, H, W)
    torch.testing.assert_close(out.features, key_high[:, 1], rtol=1e-5, atol=1e-5)


def test_stream_clip_without_a_keyframe_is_refused():
    detector = _stream_detector()
    batch = fake_collate([FakeDataset(num_samples=2, num_supports=2)[i] for i in range(2)])
    batch = dataclasses.replace(batch, valid=torch.tensor([[True, True], [False, False]]))
    with pytest.raises(ValueError, match=r"rows \[1\] have no valid keyframe"):
        detector.losses(batch)


def test_stream_method_trains_on_lsts_triplets_from_the_video_dataset(tmp_path):
    """The real dataset and collate with the keyframe_triplet strategy, through the trainer."""
    from harness.data.dataset import VideoFrameDataset, collate, load_split
    from harness.data.synthvid import ensure_synthvid

    root = ensure_synthvid("tiny", seed=0, data_dir=tmp_path / "data", progress=False)
    videos = load_split(DataConfig(root=str(root)), "train")
    triplet = SupportSpec(strategy="keyframe_triplet", num=2, radius=10)
    dataset = VideoFrameDataset(videos, image_size=64, support=triplet, seed=0)
    offsets = np.stack([dataset[i].offsets.numpy() for i in range(len(dataset))])
    assert offsets[:, 0].min() >= -10 and offsets[:, 0].max() <= 0
    assert offsets[:, 1].min() >= -5 and offsets[:, 1].max() <= 4 and (offsets[:, 1] == 0).any()
    model = dataclasses.replace(TINY_MODEL, num_classes=len(videos[0].classes))
    detector = build_detector(model, single_frame=True)
    detector.aggregator = HoldKeyframe(keyframe_interval=10)
    schedule = TrainConfig(steps=2, batch_size=4, warmup_steps=0, checkpoint_every=100)
    final = train(
        detector,
        dataset,
        collate_fn=collate,
        schedule=schedule,
        out_dir=tmp_path / "run",
        seed=0,
        device=torch.device("cpu"),
        progress=False,
    )
    assert final.exists()
    steps = [r for r in read_metrics(tmp_path / "run") if "event" not in r]
    assert len(steps) == 2 and all(np.isfinite(r["loss"]) for r in steps)
