"""The SSVD ablation: what it shares with STSN's, its helpers, and the quick mode end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import harness.pipeline
from ablations import ssvd, stsn
from harness.runs import stage_identity
from methods.ssvd import ssvd_test_support
from tests.ablations.claims_table import verdicts
from tests.reports.html_checks import check_html


def _config(module, row_name: str, seed: int = 0):
    study = module.build_study(quick=False)
    return study.row_config(next(r for r in study.rows if r.name == row_name), seed)


def test_single_frame_and_flow_net_are_the_stsn_ablations():
    """Run folders are keyed by what they train: SSVD's single frame is STSN's SSN, trained once, and
    every flow-net row starts from the one flow net STSN's FGFA+flow data row pretrains."""
    for stage in ("phase1", "phase2"):
        assert stage_identity(_config(ssvd, ssvd.SINGLE), stage) == stage_identity(
            _config(stsn, "SSN"), stage
        )
    flow = _config(stsn, "FGFA+flow data").model.aggregation.pretrained
    for row in (ssvd.MOTION, ssvd.LATE, ssvd.EARLY, ssvd.GUIDED):
        assert _config(ssvd, row).model.aggregation.pretrained == flow, row
    assert stage_identity(_config(ssvd, ssvd.LATE), "phase1") == stage_identity(
        _config(stsn, "STSN"), "phase1"
    )


def test_video_rows_train_as_algorithm_1_and_test_as_algorithm_2():
    for row in (ssvd.MOTION, ssvd.SAMPLING, ssvd.LATE, ssvd.EARLY, ssvd.GUIDED):
        config = _config(ssvd, row)
        support = config.data.train_support
        assert (support.strategy, support.num, support.radius) == ("random_window", 2, 12), row
        assert config.test.support == ssvd_test_support(6, 25), row
    table5 = {v.name: v for v in ssvd.build_study(quick=False).variants if v.group == "table5"}
    for n in ssvd.TABLE5_N:
        variant = table5[ssvd.table5_variant(n)]
        assert variant.row == ssvd.LATE and variant.changes["support"] == ssvd_test_support(n, 25)


def test_runtime_fit_recovers_a_line():
    n = np.array([2.0, 4.0, 6.0, 12.0, 24.0])
    fit = ssvd.runtime_fit(n, (30 + 5 * n) / 1e3)  # 30 ms + 5 ms per support
    assert fit["slope_ms"] == pytest.approx(5.0) and fit["intercept_ms"] == pytest.approx(30.0)
    assert fit["r2"] == pytest.approx(1.0)
    bent = ssvd.runtime_fit(n, (30 + 5 * n + np.array([0, 4, -4, 0, 0])) / 1e3)
    assert bent["r2"] < 1.0


def test_offset_parameter_counts_match_the_modules():
    counts = ssvd.offset_parameter_counts(64).set_index("widths")
    assert counts.loc["harness", "ssvd"] == 216_712  # hand count in tests/methods/test_ssvd.py
    assert counts.loc["harness", "stsn"] == 91_752
    assert counts.loc["papers", "stsn"] > counts.loc["papers", "ssvd"]


@pytest.mark.slow
def test_quick_ablation_end_to_end_and_rerun_skips_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("VODBENCH_DATA", str(tmp_path / "data"))
    report = ssvd.ABLATION.run(quick=True, seeds=[0], out=tmp_path / "results")
    folder = report.parent
    results = pd.read_parquet(folder / "results.parquet")
    expected = {v.name for v in ssvd.build_study(quick=True).variants}
    assert set(results["variant"]) == expected and (results["seed"] == 0).all()
    assert results["devkit_map"].between(0, 100).all()
    assert (folder / "table5.png").stat().st_size > 1000
    images = check_html(folder / "report.html")
    assert {"table5.png", "forest_paired_differences.png"} <= set(images)
    text = report.read_text()
    for heading in ("Table II", "Fusion schemes", "Table V", "Parameters of the offset predictor", "Claims"):
        assert heading in text, heading
    timed = results[results["group"] == "table5"]
    assert timed["seconds_per_frame"].notna().all()  # every n is timed
    # one seed: every verdict is inconclusive (V10's count too: it is judged on the study's seeds),
    # and every claim the quick study can judge got one, plus the two V5 claims and V10
    found = verdicts(text)
    judged = [c.claim.text for c in ssvd.claims(quick=True)]
    assert set(judged) <= set(found)
    assert sum(text.startswith(("V5:", "V10:")) for text in found) == 3
    assert set(found.values()) == {"inconclusive"}, found
    by_variant = results.set_index("variant")
    assert not np.isclose(
        by_variant.loc[ssvd.LATE, "devkit_map"], by_variant.loc[ssvd.LATE + ssvd.SEQ_NMS, "devkit_map"]
    )

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(harness.pipeline, "train", must_not_train)
    monkeypatch.setattr(harness.pipeline, "load_trained", must_not_train)
    ssvd.ABLATION.run(quick=True, seeds=[0], out=tmp_path / "results")
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "results.parquet"), results)
