"""Run folders end to end on SynthVID tiny: contents, skip, resume after a crash, shared phase 1,
the single-frame baseline's phase 2, and the Parquet results table."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

import harness.infer
import harness.pipeline
import harness.train
from harness.config import (
    AggregationConfig,
    BackboneConfig,
    DataConfig,
    HeadConfig,
    ModelConfig,
    RunConfig,
    SupportSpec,
    TestConfig,
    TrainConfig,
)
from harness.data.dataset import load_split
from harness.eval.detfile import read_devkit_detections
from harness.eval.evaluate import evaluate
from harness.eval.seqnms import seq_nms
from harness.pipeline import evaluate_checkpoint, remeasure_checkpoint, run_experiment, train_run
from harness.runs import (
    append_results,
    evaluation_dir,
    identity_json,
    load_results,
    stage_dir,
    stage_identity,
    start_run,
)
from harness.train import read_metrics


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """SynthVID is generated under $VODBENCH_DATA: point it at a module temp dir."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VODBENCH_DATA", str(tmp_path_factory.mktemp("data")))
        yield


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_run(name="video", **changes) -> RunConfig:
    steps = TrainConfig(steps=4, batch_size=4, warmup_steps=1, checkpoint_every=2)
    run = RunConfig(
        name=name,
        device="cpu",
        data=DataConfig(
            synth_preset="tiny",
            image_size=32,
            train_support=SupportSpec(strategy="random_window", num=2, radius=3),
        ),
        model=ModelConfig(
            num_classes=8,
            backbone=BackboneConfig(width=8, depth=(1, 1), out_channels=16),
            head=HeadConfig(channels=16, num_convs=1),
            aggregation=AggregationConfig(alignment="identity", fusion="average"),
        ),
        phase1=steps,
        phase2=steps,
        test=TestConfig(support=SupportSpec(strategy="sliding", radius=2), motion=True, seq_nms=False),
    )
    return dataclasses.replace(run, **changes)


def _folders(root, run):
    """(training folder, evaluation folder of the default variant) of ``run``."""
    return stage_dir(root, run, "phase2"), evaluation_dir(root, run)


def test_run_folder_contents_and_row(tmp_path, data_dir):
    run = tiny_run()
    row = run_experiment(run, runs_root=tmp_path, progress=False)
    training, folder = _folders(tmp_path, run)
    assert row["run_id"] == f"video-{row['test_id']}" and row["name"] == "video"
    assert training.name == f"phase2-{row['train_id']}" and folder.name == f"eval-{row['test_id']}"
    for name in ("config.json", "env.json", "metrics.jsonl", "phase2/final.pt"):
        assert (training / name).is_file(), name
    for name in ("config.json", "env.json", "eval.json", "measure.json", "result.json", "DONE"):
        assert (folder / name).is_file(), name
    assert (folder / "config.json").read_text() == identity_json(stage_identity(run, "test"))
    assert (training / "config.json").read_text() == identity_json(stage_identity(run, "phase2"))
    assert '"name"' not in (training / "config.json").read_text()  # the name is a label, not identity
    env = json.loads((folder / "env.json").read_text())
    assert {
        "python",
        "torch",
        "torchvision",
        "numpy",
        "cupy",
        "device_name",
        "cpu_count",
        "git_commit",
        "git_dirty",
        "hostname",
        "time",
    } <= set(env)
    phases = [r["phase"] for r in read_metrics(training) if "event" not in r]
    assert phases == [1] * 4 + [2] * 4
    videos = load_split(run.data, run.test.split)
    (detections_file,) = (training / "detections").glob("detections-*.txt")
    detections = read_devkit_detections(detections_file, videos, progress=False)
    assert len(detections) == sum(len(v) for v in videos)
    evaluation = json.loads((folder / "eval.json").read_text())
    assert row["devkit_map"] == evaluation["devkit"]["map"]
    for key in (
        "fixed_map",
        "coco_ap50",
        "coco_ap75",
        "coco_ap50_95",
        "devkit_motion_slow",
        "devkit_motion_medium",
        "devkit_motion_fast",
        "fps",
        "params_backbone",
        "params_aggregation",
        "params_head",
        "flops_backbone",
        "flops_aggregation",
        "flops_head",
        "train_seconds",
    ):
        assert key in row, key
    assert json.loads((folder / "measure.json").read_text())["num_supports"] == 4


def test_test_time_variants_share_training_and_seq_nms_shares_inference(tmp_path, data_dir, monkeypatch):
    run = tiny_run()
    checkpoint = train_run(run, runs_root=tmp_path, progress=False)
    plain = evaluate_checkpoint(run, checkpoint, runs_root=tmp_path, progress=False)
    wider = dataclasses.replace(
        run, test=dataclasses.replace(run.test, support=SupportSpec("sliding", radius=3))
    )
    assert train_run(wider, runs_root=tmp_path, progress=False) == checkpoint  # same training config

    def must_not_infer(*args, **kwargs):
        raise AssertionError("inference was redone for a Seq-NMS-only variant")

    with_seq_nms = dataclasses.replace(run, test=dataclasses.replace(run.test, seq_nms=True))
    with monkeypatch.context() as patch:
        patch.setattr(harness.infer, "predict_split", must_not_infer)
        row = evaluate_checkpoint(with_seq_nms, checkpoint, runs_root=tmp_path, progress=False)
    videos = load_split(run.data, run.test.split)
    training, _ = _folders(tmp_path, run)
    (detections_file,) = (training / "detections").glob("detections-*.txt")
    expected = evaluate(
        videos,
        seq_nms(videos, read_devkit_detections(detections_file, videos, progress=False), progress=False),
        protocols=("devkit",),
        motion=False,
        degradation=False,
        progress=False,
    )
    assert row["devkit_map"] == pytest.approx(expected["devkit"]["map"])
    assert row["test_id"] != plain["test_id"] and row["train_id"] == plain["train_id"]


def test_completed_run_is_skipped_and_force_redoes_it(tmp_path, data_dir, monkeypatch):
    run = tiny_run()
    row = run_experiment(run, runs_root=tmp_path, progress=False)
    done = _folders(tmp_path, run)[1] / "DONE"
    stamp = done.stat().st_mtime_ns

    def must_not_train(*args, **kwargs):
        raise AssertionError("a completed run was trained again")

    with monkeypatch.context() as patch:
        patch.setattr(harness.pipeline, "train", must_not_train)
        patch.setattr(harness.pipeline, "load_trained", must_not_train)
        assert run_experiment(run, runs_root=tmp_path, progress=False) == row
    assert not (_folders(tmp_path, run)[1] / "env_1.json").exists()  # nothing ran: no environment added
    assert done.stat().st_mtime_ns == stamp
    forced = run_experiment(run, runs_root=tmp_path, force=True, progress=False)
    assert done.stat().st_mtime_ns != stamp
    assert forced["devkit_map"] == row["devkit_map"]  # deterministic: the same numbers again


def test_remeasure_replaces_the_times_and_keeps_the_metrics(tmp_path, data_dir, monkeypatch):
    run = tiny_run()
    run = dataclasses.replace(run, test=dataclasses.replace(run.test, measure=True))
    checkpoint = train_run(run, runs_root=tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="evaluate it first"):
        remeasure_checkpoint(run, checkpoint, runs_root=tmp_path)
    row = evaluate_checkpoint(run, checkpoint, runs_root=tmp_path, progress=False)
    assert "fps" in row and "remeasured" not in row

    def must_not_infer(*args, **kwargs):
        raise AssertionError("remeasuring redid the inference")

    with monkeypatch.context() as patch:
        patch.setattr(harness.infer, "predict_split", must_not_infer)
        again = remeasure_checkpoint(run, checkpoint, runs_root=tmp_path)
    assert again["remeasured"] is True
    metrics = [k for k in row if k.startswith(("devkit_", "coco_", "fixed_"))]
    assert metrics and all(again[k] == row[k] for k in metrics)
    assert again["seconds_per_frame"] != row["seconds_per_frame"]  # a new timing, not the stored one
    assert set(again) - set(row) == {"remeasured"}
    # what a later evaluation call returns is the new row
    assert evaluate_checkpoint(run, checkpoint, runs_root=tmp_path, progress=False) == again
    untimed = dataclasses.replace(run, test=dataclasses.replace(run.test, measure=False))
    with pytest.raises(ValueError, match="not timed"):
        remeasure_checkpoint(untimed, checkpoint, runs_root=tmp_path)


def test_crash_keeps_finished_stages_and_resume_does_not_redo_them(tmp_path, data_dir, monkeypatch):
    run = tiny_run()
    training, folder = _folders(tmp_path, run)

    def crash(*args, **kwargs):
        raise RuntimeError("evaluation crashed")

    with monkeypatch.context() as patch:
        patch.setattr(harness.pipeline, "_evaluate", crash)
        with pytest.raises(RuntimeError, match="evaluation crashed"):
            run_experiment(run, runs_root=tmp_path, progress=False)
    assert not (folder / "DONE").exists()
    (detections_file,) = (training / "detections").glob("detections-*.txt")
    assert (training / "phase2" / "final.pt").is_file()
    detections_before = detections_file.read_text()

    def must_not_infer(*args, **kwargs):
        raise AssertionError("inference was redone")

    with monkeypatch.context() as patch:
        patch.setattr(harness.infer, "predict_split", must_not_infer)
        row = run_experiment(run, runs_root=tmp_path, progress=False)
    assert (folder / "DONE").is_file() and (folder / "env_1.json").is_file()
    assert detections_file.read_text() == detections_before
    assert "devkit_map" in row


def test_phase1_is_shared_and_single_frame_baseline_is_finetuned(tmp_path, data_dir):
    video = tiny_run()
    single = tiny_run(
        name="ssn",
        data=dataclasses.replace(video.data, train_support=SupportSpec()),
        test=TestConfig(support=SupportSpec()),
    )
    oracle = tiny_run(
        name="oracle",
        model=dataclasses.replace(
            video.model,
            aggregation=AggregationConfig(alignment="flow_warp", alignment_kwargs={"flow_source": "oracle"}),
        ),
    )
    phase1 = {stage_dir(tmp_path, run, "phase1") for run in (video, single, oracle)}
    assert len(phase1) == 1
    run_experiment(video, runs_root=tmp_path, progress=False)
    phase1_final = stage_dir(tmp_path, video, "phase1") / "final.pt"
    stamp = phase1_final.stat().st_mtime_ns
    row = run_experiment(single, runs_root=tmp_path, progress=False)
    assert phase1_final.stat().st_mtime_ns == stamp
    assert len(list(tmp_path.glob("phase1-*"))) == 1
    # the baseline gets the same phase-2 budget, with T = 0
    phase2 = [r for r in read_metrics(_folders(tmp_path, single)[0] / "phase2") if "event" not in r]
    assert len(phase2) == single.phase2.steps
    assert row["params_aggregation"] == 0 and row["flops_aggregation"] == 0
    assert stage_dir(tmp_path, dataclasses.replace(video, seed=1), "phase1") != stage_dir(
        tmp_path, video, "phase1"
    )


def test_folder_with_other_config_is_refused(tmp_path):
    run = tiny_run()
    folder = stage_dir(tmp_path, run, "phase2")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(identity_json(stage_identity(tiny_run(seed=5), "phase2")))
    with pytest.raises(ValueError, match="different configuration"):
        start_run(folder, stage_identity(run, "phase2"))


def test_append_results_replaces_same_run_id(tmp_path):
    path = tmp_path / "results.parquet"
    assert load_results(path).empty
    append_results([{"run_id": "a", "map": 1.0}, {"run_id": "b", "map": 2.0}], path)
    table = append_results([{"run_id": "b", "map": 3.0, "fps": 10.0}], path)
    loaded = load_results(path)
    pd.testing.assert_frame_equal(loaded, table)
    assert sorted(zip(loaded["run_id"], loaded["map"], strict=True)) == [("a", 1.0), ("b", 3.0)]
    with pytest.raises(ValueError, match="run_id"):
        append_results([{"map": 1.0}], path)


def test_without_phase2_the_video_detector_uses_phase1_weights(tmp_path, data_dir):
    run = tiny_run(
        name="nophase2",
        phase2=TrainConfig(steps=0),
        model=dataclasses.replace(
            tiny_run().model, aggregation=AggregationConfig(alignment="identity", fusion="cosine_softmax")
        ),
    )
    row = run_experiment(run, runs_root=tmp_path, progress=False)
    assert not (_folders(tmp_path, run)[0] / "phase2").exists()
    assert row["params_aggregation"] > 0


def test_phase1_seed_shares_the_still_image_detector_across_seeds(tmp_path):
    seed0 = tiny_run(phase1_seed=0)
    seed1 = dataclasses.replace(seed0, seed=1)
    assert stage_dir(tmp_path, seed0, "phase1") == stage_dir(tmp_path, seed1, "phase1")
    assert stage_dir(tmp_path, seed0, "phase2") != stage_dir(tmp_path, seed1, "phase2")
    unshared = dataclasses.replace(tiny_run(), seed=1)
    assert stage_dir(tmp_path, tiny_run(), "phase1") != stage_dir(tmp_path, unshared, "phase1")


def test_retuned_synthvid_gets_new_run_folders(tmp_path, monkeypatch):
    import harness.data.synthvid as synthvid

    run = tiny_run()
    before = (stage_dir(tmp_path, run, "phase2"), stage_dir(tmp_path, run, "phase1"))
    monkeypatch.setattr(synthvid, "GENERATOR_VERSION", "changed")
    after = (stage_dir(tmp_path, run, "phase2"), stage_dir(tmp_path, run, "phase1"))
    assert after[0] != before[0] and after[1] != before[1]


def test_results_table_has_the_same_columns_whatever_order_a_row_was_built_in(tmp_path):
    # a fresh evaluation builds its row in insertion order, a reused one reads result.json (sorted keys)
    fresh = {"run_id": "a", "seed": 0, "devkit_map": 40.0, "coco_ap50": 39.0, "variant": "STSN"}
    reread = dict(sorted(fresh.items()))
    first = append_results([fresh], tmp_path / "first.parquet")
    second = append_results([reread], tmp_path / "second.parquet")
    pd.testing.assert_frame_equal(first, second)
    assert list(first.columns) == ["run_id", "variant", "seed", "coco_ap50", "devkit_map"]
    pd.testing.assert_frame_equal(load_results(tmp_path / "first.parquet"), first)
