"""The STSN ablation end to end in its quick mode (a few minutes): report, figures, verdicts, resume."""

from __future__ import annotations

import math

import pandas as pd
import pytest

import harness.pipeline
from ablations import stsn


@pytest.mark.slow
def test_quick_ablation_end_to_end_and_rerun_skips_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("VODBENCH_DATA", str(tmp_path / "data"))
    report = stsn.ABLATION.run(quick=True, seeds=[0], out=tmp_path / "results")
    folder = report.parent
    results = pd.read_parquet(folder / "results.parquet")
    expected = {v.name for v in stsn.build_study(quick=True).variants}
    assert set(results["variant"]) == expected and (results["seed"] == 0).all()
    assert results["devkit_map"].between(0, 100).all()
    for png in ("fig3_left.png", "fig3_right.png", "fig4.png"):
        assert (folder / png).stat().st_size > 1000, png
    text = report.read_text()
    for heading in ("Table 1", "Fig. 3 left", "Temporal stride", "Fig. 3 right", "Fig. 4", "Claims"):
        assert heading in text, heading
    assert (folder / "report.html").is_file()
    # one seed: every verdict is inconclusive, and every claim got one
    assert text.count("| inconclusive") == len(stsn.claims(quick=True)) + 2
    seq = results.set_index("variant")
    assert not math.isclose(seq.loc["STSN", "devkit_map"], seq.loc["STSN + Seq-NMS", "devkit_map"])

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(harness.pipeline, "train", must_not_train)
    monkeypatch.setattr(harness.pipeline, "load_trained", must_not_train)
    stsn.ABLATION.run(quick=True, seeds=[0], out=tmp_path / "results")
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "results.parquet"), results)
