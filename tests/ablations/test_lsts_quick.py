"""The LSTS quick ablation end to end: report sections, every claim named, Fig. 5, resume; --full mode."""

from __future__ import annotations

import pandas as pd
import pytest

import harness.pipeline
from ablations import lsts, stmn
from ablations.base import result_folder


def test_full_mode_runs_all_table2_cells_and_other_ablations_refuse_it(tmp_path):
    cells = {r.name for r in lsts.build_study(quick=False, full=True).rows}
    assert {lsts.cell(c, p) for c in lsts.COLUMNS for p in lsts.PROPAGATIONS} <= cells
    assert lsts.GAUSSIAN_81 in cells
    assert lsts.GAUSSIAN_81 not in {r.name for r in lsts.build_study(quick=False).rows}
    assert result_folder(tmp_path, "lsts", quick=True, full=True).name == "lsts-full-quick"
    with pytest.raises(ValueError, match="stmn.*no full mode"):
        stmn.ABLATION.study_for(quick=True, full=True)


@pytest.mark.slow
def test_quick_ablation_end_to_end_and_rerun_skips_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("VODBENCH_DATA", str(tmp_path / "data"))
    report = lsts.ABLATION.run(quick=True, seeds=[0], out=tmp_path / "results")
    folder = report.parent
    results = pd.read_parquet(folder / "results.parquet")
    expected = {v.name for v in lsts.build_study(quick=True).variants}
    assert set(results["variant"]) == expected and (results["seed"] == 0).all()
    assert results["devkit_map"].between(0, 100).all()
    text = report.read_text()
    for heading in ("Table 2", "Table 3", "Table 4", "Fig. 5", "Cost", "Claims", "inconsistencies"):
        assert heading in text, heading
    for comparison in lsts.claims(quick=True):
        assert comparison.claim.text in text, comparison.claim.text
    assert (folder / "fig5_offsets.png").is_file()
    stream = results[results["variant"] == lsts.FULL]
    assert stream["seconds_per_keyframe"].notna().all() and stream["seconds_per_non_keyframe"].notna().all()
    # the Table 2 cells train different models (a row silently training the same one would not)
    cells = results.set_index("variant").loc[[lsts.cell(c, p) for c, p in lsts.table2_cells(False)]]
    assert cells["devkit_map"].nunique() == len(cells)

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(harness.pipeline, "train", must_not_train)
    monkeypatch.setattr(harness.pipeline, "load_trained", must_not_train)
    lsts.ABLATION.run(quick=True, seeds=[0], out=tmp_path / "results")
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "results.parquet"), results)
