"""The SparseVOD ablation: its rows reuse the other ablations' runs where they should, and the quick
mode end to end (report sections, every claim named, Fig. 4 and 5, resume)."""

from __future__ import annotations

import pandas as pd
import pytest

import harness.pipeline
from ablations import sparsevod, stsn
from harness.runs import stage_identity


def _config(module, row_name: str, seed: int = 0):
    study = module.build_study(quick=False)
    return study.row_config(next(r for r in study.rows if r.name == row_name), seed)


def test_dense_rows_are_the_stsn_ablations_runs_and_sparse_rows_share_their_own_phase1():
    for ours, theirs in (
        (sparsevod.DENSE_SINGLE, "SSN"),
        (sparsevod.DENSE_FGFA, "FGFA+flow data"),
        (sparsevod.DENSE_STSN, "STSN"),
    ):
        for stage in ("phase1", "phase2"):
            assert stage_identity(_config(sparsevod, ours), stage) == stage_identity(
                _config(stsn, theirs), stage
            ), (ours, stage)
    sparse_phase1 = stage_identity(_config(sparsevod, sparsevod.SINGLE), "phase1")
    assert sparse_phase1 != stage_identity(_config(stsn, "SSN"), "phase1")
    for row in (sparsevod.TFE, sparsevod.SPFA, sparsevod.FULL, sparsevod.AVG_AVG):
        assert stage_identity(_config(sparsevod, row), "phase1") == sparse_phase1, row


def test_rows_train_with_two_uniform_supports_and_test_with_six():
    full = _config(sparsevod, sparsevod.FULL)
    assert full.data.train_support.strategy == "video_uniform" and full.data.train_support.num == 2
    assert full.test.support.strategy == "video_uniform" and full.test.support.num == 6
    assert full.model.head.kind == "sparse"
    assert full.model.aggregation.aggregator_kwargs["parts"] == {
        "tfe": {"mode": "attention"},
        "spfa": {"mode": "attention"},
    }
    assert _config(sparsevod, sparsevod.SINGLE).test.support.strategy == "none"


def test_the_stage_readout_is_a_test_time_variant_that_changes_the_detections_identity():
    study = sparsevod.build_study(quick=False)
    full = _config(sparsevod, sparsevod.FULL)
    variant = next(v for v in study.variants if v.name == sparsevod.stage_variant(sparsevod.FULL, 1))
    staged = variant.apply(full)
    assert stage_identity(staged, "phase2") == stage_identity(full, "phase2")
    assert stage_identity(staged, "detections") != stage_identity(full, "detections")
    assert "head_stage" not in stage_identity(full, "detections")["test"]  # default: as before the field


@pytest.mark.slow
def test_quick_ablation_end_to_end_and_rerun_skips_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("VODBENCH_DATA", str(tmp_path / "data"))
    report = sparsevod.ABLATION.run(quick=True, seeds=[0], out=tmp_path / "results")
    folder = report.parent
    results = pd.read_parquet(folder / "results.parquet")
    expected = {v.name for v in sparsevod.build_study(quick=True).variants}
    assert set(results["variant"]) == expected and (results["seed"] == 0).all()
    assert results["coco_ap50"].between(0, 100).all()
    text = report.read_text()
    for heading in ("calibration", "Table 2", "Table 3", "Table 4", "Table 5", "Fig. 4", "Cost", "Claims"):
        assert heading in text, heading
    for comparison in sparsevod.claims(quick=True):
        assert comparison.claim.text in text, comparison.claim.text
    assert "P7 the gain over" in text
    assert (folder / "fig4_ap_vs_iou.png").is_file() and (folder / "fig5_supports.png").is_file()
    # the readout stages are different detections of one model; the rows are different models
    by_variant = results.set_index("variant")
    stages = [sparsevod.stage_variant(sparsevod.FULL, s) for s in sparsevod.STAGES] + [sparsevod.FULL]
    assert by_variant.loc[stages, "train_id"].nunique() == 1
    assert by_variant.loc[stages, "coco_ap50_95"].nunique() == len(stages)
    rows = list(sparsevod.TABLE4)
    assert by_variant.loc[rows, "coco_ap50_95"].nunique() == len(rows)

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(harness.pipeline, "train", must_not_train)
    monkeypatch.setattr(harness.pipeline, "load_trained", must_not_train)
    sparsevod.ABLATION.run(quick=True, seeds=[0], out=tmp_path / "results")
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "results.parquet"), results)
