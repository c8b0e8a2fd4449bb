"""A killed study: `vodbench report` refuses a partial report unless asked, and then rebuilds the
table from the run folders; a damaged results table is rebuilt the same way."""

from __future__ import annotations

import json
import types

import pandas as pd
import pytest

import harness.cli
from ablations.base import Ablation, Row, Study, Variant, read_status
from harness.config import AggregationConfig
from harness.pipeline import evaluation_folder
from tests.test_runs import tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = [
    Row("average", {"model.aggregation": AggregationConfig(alignment="identity", fusion="average")}),
    Row("cosine", {"model.aggregation": AggregationConfig(alignment="identity", fusion="cosine_softmax")}),
]
VARIANTS = [Variant(row.name, row.name, {"measure": False}) for row in ROWS]


class TinyAblation(Ablation):
    name = "tiny"

    def build_study(self, quick: bool) -> Study:
        return Study(self.name, tiny_run(), ROWS, VARIANTS)

    def render(self, folder):
        table = pd.read_parquet(folder / "results.parquet")
        path = folder / "report.md"
        banner = "PARTIAL: " if self.is_partial(folder) else ""
        path.write_text(banner + ", ".join(sorted(table["variant"])))
        return path


def test_a_killed_study_is_reported_partial_only_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VODBENCH_DATA", str(tmp_path / "data"))
    ablation = TinyAblation()
    out = tmp_path / "results"
    ablation.run(quick=False, seeds=[0], out=out)
    folder = out / "tiny"
    assert read_status(folder)["status"] == "complete"
    # as if killed during the evaluation of "cosine": status running, its evaluation unfinished
    study = ablation.build_study(False)
    cosine = VARIANTS[1].apply(study.row_config(ROWS[1], 0))
    (evaluation_folder(cosine, runs_root=out / "runs") / "DONE").unlink()
    status = json.loads((folder / "ablation.json").read_text())
    (folder / "ablation.json").write_text(json.dumps({**status, "status": "running"}))
    monkeypatch.setattr(
        harness.cli, "_ablation_module", lambda name: types.SimpleNamespace(ABLATION=ablation)
    )

    with pytest.raises(
        SystemExit, match=r"tiny is partial .*1 evaluations missing, e.g. cosine seed 0.*--partial"
    ):
        harness.cli.main(["report", "--out", str(out)])
    assert harness.cli.main(["report", "--out", str(out), "--partial"]) == 0
    assert (folder / "report.md").read_text() == "PARTIAL: average"  # rebuilt from the run folders


def test_a_damaged_results_table_is_rebuilt_from_the_run_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("VODBENCH_DATA", str(tmp_path / "data"))
    ablation = TinyAblation()
    out = tmp_path / "results"
    ablation.run(quick=False, seeds=[0], out=out)
    parquet = out / "tiny" / "results.parquet"
    before = pd.read_parquet(parquet)
    parquet.write_bytes(parquet.read_bytes()[:30])
    monkeypatch.setattr(
        harness.cli, "_ablation_module", lambda name: types.SimpleNamespace(ABLATION=ablation)
    )
    assert harness.cli.main(["report", "--out", str(out)]) == 0
    after = pd.read_parquet(parquet)
    key = ["variant", "seed"]
    pd.testing.assert_frame_equal(
        before.sort_values(key).reset_index(drop=True)[after.columns],
        after.sort_values(key).reset_index(drop=True),
        check_dtype=False,
    )
    assert (out / "tiny" / "report.md").read_text() == "average, cosine"
