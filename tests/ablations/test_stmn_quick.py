"""The STMN ablation end to end in its quick mode: report, verdicts, Seq-NMS, resume."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

import harness.pipeline
from ablations import stmn
from tests.ablations.claims_table import verdicts


@pytest.mark.slow
def test_quick_ablation_end_to_end_and_rerun_skips_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("VODBENCH_DATA", str(tmp_path / "data"))
    report = stmn.ABLATION.run(quick=True, seeds=[0], out=tmp_path / "results")
    folder = report.parent
    results = pd.read_parquet(folder / "results.parquet")
    expected = {v.name for v in stmn.build_study(quick=True).variants}
    assert set(results["variant"]) == expected and (results["seed"] == 0).all()
    assert results["devkit_map"].between(0, 100).all()
    text = report.read_text()
    for heading in ("Table 2", "Test window T", "Cost", "Claims"):
        assert heading in text, heading
    assert (folder / "report.html").is_file()
    # one seed: every verdict is inconclusive, and every claim got one (+ S8, judged on collected
    # norms, and the runtime claims S6, S7 and clip mode vs the window engine, on runtime.json)
    found = verdicts(text)
    assert {c.claim.text for c in stmn.claims(quick=True)} <= set(found)
    assert sum(name.startswith(("S6 ", "S7 ", "S8 ", "clip mode")) for name in found) == 4
    assert set(found.values()) == {"inconclusive"}, found
    runtime = json.loads((folder / stmn.RUNTIME_FILE).read_text())
    assert set(runtime["seconds"]) == set(stmn.RUNTIME_CASES)
    assert all(list(times) == ["0"] and times["0"] > 0 for times in runtime["seconds"].values())
    assert "Fig. 4" in text and "No memory norms were collected" not in text
    seq = results.set_index("variant")
    assert not math.isclose(seq.loc["STMN", "devkit_map"], seq.loc["STMN + Seq-NMS", "devkit_map"])
    # the memory rows differ from each other (a row silently training the same model would not)
    table2 = [seq.loc[name, "devkit_map"] for name in stmn.TABLE2]
    assert len(set(table2)) == len(table2)

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(harness.pipeline, "train", must_not_train)
    monkeypatch.setattr(harness.pipeline, "load_trained", must_not_train)
    stmn.ABLATION.run(quick=True, seeds=[0], out=tmp_path / "results")
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "results.parquet"), results)
