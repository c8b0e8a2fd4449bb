"""Run identity: each stage is keyed by exactly what it depends on (harness.runs.stage_identity), so
rows shared by studies train once, labels and test-time fields never retrain, and training fields do."""

from __future__ import annotations

import dataclasses

import pytest

import harness.pipeline
import harness.prepare
from ablations.base import Row, Study, Variant
from harness.config import AggregationConfig, SupportSpec, override
from harness.pipeline import run_experiment
from harness.prepare import preparation_dir, prepare, resolve_pretrained
from harness.runs import stage_digest, stage_identity
from tests.test_runs import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VODBENCH_DATA", str(tmp_path_factory.getbasetemp() / "identity-data"))


# (stage, dotted change, whether the stage depends on it)
CASES = [
    ("phase1", {"name": "other label"}, False),
    ("phase1", {"seed": 7, "phase1_seed": 0}, False),
    ("phase1", {"test.seq_nms": True}, False),
    ("phase1", {"phase2.lr": 0.5}, False),
    ("phase1", {"model.aggregation.fusion": "cosine_softmax"}, False),
    ("phase1", {"data.train_support": SupportSpec("random_window", num=4, radius=5)}, False),
    ("phase1", {"data.still_fraction": 0.3}, False),
    ("phase1", {"phase1.steps": 5}, True),
    ("phase1", {"model.backbone.width": 4}, True),
    ("phase1", {"model.head.nms_iou": 0.3}, True),
    ("phase1", {"data.image_size": 48}, True),
    ("phase1", {"seed": 7}, True),  # without a shared phase1_seed, the seed drives phase 1 too
    ("phase2", {"name": "other label"}, False),
    ("phase2", {"test.support": SupportSpec("sliding", radius=4)}, False),
    ("phase2", {"test.max_videos": 1, "test.measure": False}, False),
    ("phase2", {"phase1_seed": 0}, False),  # None and the seed itself are the same phase 1
    ("phase2", {"phase2.lr": 0.5}, True),
    ("phase2", {"phase1.steps": 5}, True),
    ("phase2", {"model.aggregation.fusion": "cosine_softmax"}, True),
    ("phase2", {"data.still_fraction": 0.3}, True),
    ("phase2", {"seed": 7}, True),
    ("detections", {"test.seq_nms": True, "test.protocols": ("devkit",)}, False),
    ("detections", {"test.batch_videos": 1}, False),
    ("detections", {"test.support": SupportSpec("sliding", radius=4)}, True),
    ("detections", {"test.max_videos": 1}, True),
    ("detections", {"phase2.lr": 0.5}, True),
    ("test", {"test.batch_videos": 1, "name": "x"}, False),
    ("test", {"test.seq_nms": True}, True),
    ("test", {"test.measure": False}, True),
]


@pytest.mark.parametrize(("stage", "changes", "depends"), CASES, ids=lambda c: str(c))
def test_stage_identity_covers_exactly_what_the_stage_depends_on(stage, changes, depends):
    run = tiny_run()
    changed = override(run, **changes)
    assert (stage_digest(changed, stage) != stage_digest(run, stage)) == depends


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="unknown stage 'phase3'"):
        stage_identity(tiny_run(), "phase3")


def _counting(monkeypatch) -> list[str]:
    """Replace the trainer by a counter around the real one; returns the list of trained folders."""
    trained: list[str] = []
    real = harness.pipeline.train

    def counted(model, dataset, **kwargs):
        trained.append(kwargs["out_dir"].parent.name if kwargs["phase"] == 2 else kwargs["out_dir"].name)
        return real(model, dataset, **kwargs)

    monkeypatch.setattr(harness.pipeline, "train", counted)
    return trained


def test_two_studies_containing_the_same_row_train_it_once(tmp_path, data_dir, monkeypatch):
    average = {"model.aggregation": AggregationConfig(alignment="identity", fusion="average")}
    cosine = {"model.aggregation": AggregationConfig(alignment="identity", fusion="cosine_softmax")}
    first = Study("first", tiny_run(), [Row("average", average)], [Variant("average", "average")])
    second = Study(
        "second",
        tiny_run(name="another base"),
        [Row("mean of frames", average), Row("cosine", cosine)],
        [Variant("mean of frames", "mean of frames"), Variant("cosine", "cosine", {"seq_nms": True})],
    )
    trained = _counting(monkeypatch)
    table_first = first.run(seeds=[0], out=tmp_path / "results" / "first")
    assert len(trained) == 2  # phase 1 and the row's phase 2
    table_second = second.run(seeds=[0], out=tmp_path / "results" / "second")
    assert len(trained) == 3 and trained[-1].startswith("phase2-")  # only "cosine" trained
    shared = table_second.set_index("variant").loc["mean of frames"]
    assert shared["devkit_map"] == table_first.set_index("variant").loc["average", "devkit_map"]
    assert shared["train_id"] == table_first["train_id"].iloc[0]


def test_a_label_or_test_field_never_retrains_and_a_training_field_does(tmp_path, data_dir, monkeypatch):
    run = tiny_run()
    run_experiment(run, runs_root=tmp_path, progress=False)
    trained = _counting(monkeypatch)
    relabelled = override(run, name="relabelled", **{"test.seq_nms": True, "test.measure": False})
    row = run_experiment(relabelled, runs_root=tmp_path, progress=False)
    assert trained == [] and row["name"] == "relabelled"
    retrained = override(run, **{"phase2.lr": 5e-3, "test.measure": False})
    run_experiment(retrained, runs_root=tmp_path, progress=False)
    assert trained == [f"phase2-{stage_digest(retrained, 'phase2')}"]  # phase 2 only; phase 1 shared


def test_preparation_is_keyed_by_its_settings_and_made_once(tmp_path, monkeypatch):
    made: list[dict] = []

    def fake(data, settings, folder, progress):
        made.append(settings)
        (folder / "weights.pt").write_text("weights")
        return folder / "weights.pt"

    monkeypatch.setitem(harness.prepare.PREPARATIONS, "flownet", fake)
    spec = {"kind": "flownet", "steps": 3}
    run = tiny_run(
        model=dataclasses.replace(
            tiny_run().model,
            aggregation=AggregationConfig(
                alignment="flow_warp",
                alignment_kwargs={"flow_source": "flownet"},
                pretrained={"flownet_weights": spec},
            ),
        )
    )
    first = resolve_pretrained(run.model.aggregation, run.data, runs_root=tmp_path / "a")
    again = resolve_pretrained(run.model.aggregation, run.data, runs_root=tmp_path / "a")
    assert made == [{"steps": 3}] and first == again
    assert first.alignment_kwargs["flownet_weights"] == str(
        preparation_dir(tmp_path / "a", run.data, spec) / "weights.pt"
    )
    # the run's identity names the settings, never where the artifact is written
    assert "flownet_weights" not in str(
        stage_identity(run, "phase2")["model"]["aggregation"]["alignment_kwargs"]
    )
    assert (
        preparation_dir(tmp_path / "a", run.data, spec).name
        == preparation_dir(tmp_path / "b", run.data, spec).name
    )
    prepare(tmp_path / "a", run.data, {"kind": "flownet", "steps": 4})
    assert made == [{"steps": 3}, {"steps": 4}]


def test_unknown_preparation_kind_is_named(tmp_path):
    with pytest.raises(KeyError, match="unknown preparation kind 'flownett'.*flownet"):
        prepare(tmp_path, tiny_run().data, {"kind": "flownett"})
