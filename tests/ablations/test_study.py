"""Study: rows x seeds trained serially or in parallel processes, then evaluated; failures named."""

from __future__ import annotations

import pytest
import torch

from ablations.base import Row, Study, Variant
from harness.config import AggregationConfig, override
from harness.runs import stage_dir
from tests.test_runs import tiny_run


@pytest.fixture(autouse=True)
def _data_and_one_thread(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VODBENCH_DATA", str(tmp_path_factory.getbasetemp() / "study-data"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # workers then get max(1, 1 // jobs) = 1 thread: same arithmetic as serial
    yield
    torch.set_num_threads(threads)


ROWS = [
    Row("average", {"model.aggregation": AggregationConfig(alignment="identity", fusion="average")}),
    Row("cosine", {"model.aggregation": AggregationConfig(alignment="identity", fusion="cosine_softmax")}),
]
VARIANTS = [Variant(row.name, row.name, {"measure": False}) for row in ROWS]


def _weights(study: Study, out, row: Row, seed: int) -> dict[str, torch.Tensor]:
    config = study.row_config(row, seed)
    final = stage_dir(out.parent / "runs", config, "phase2") / "phase2" / "final.pt"
    return torch.load(final, weights_only=False)["model"]


def test_parallel_training_gives_the_serial_weights_and_results(tmp_path):
    study = Study("study", tiny_run(), ROWS, VARIANTS)
    serial = study.run(seeds=[0, 1], out=tmp_path / "serial" / "study", jobs=1)
    parallel = study.run(seeds=[0, 1], out=tmp_path / "parallel" / "study", jobs=2)
    assert len(parallel) == len(serial) == 4
    for row in ROWS:
        for seed in (0, 1):
            a = _weights(study, tmp_path / "serial" / "study", row, seed)
            b = _weights(study, tmp_path / "parallel" / "study", row, seed)
            assert a.keys() == b.keys()
            for key in a:
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{row.name} s{seed} {key}")
    columns = ["variant", "seed", "devkit_map", "fixed_map", "coco_ap50"]
    key = ["variant", "seed"]
    left = serial[columns].sort_values(key).reset_index(drop=True)
    right = parallel[columns].sort_values(key).reset_index(drop=True)
    assert left.equals(right)
    assert "with 2 job(s)" in (tmp_path / "parallel" / "study" / "timing.txt").read_text()
    # a later invocation's table holds its own rows only, reusing the finished runs
    again = study.run(seeds=[1], out=tmp_path / "serial" / "study", jobs=1)
    assert sorted(again["seed"].unique()) == [1] and len(again) == 2
    assert again.set_index("variant")["devkit_map"].equals(
        serial[serial["seed"] == 1].set_index("variant")["devkit_map"]
    )


def test_an_unknown_method_is_named_before_anything_trains(tmp_path):
    broken = Row("broken", {"model.aggregation": AggregationConfig(alignment="no-such-alignment")})
    study = Study("study", tiny_run(), [ROWS[0], broken], [VARIANTS[0]])
    with pytest.raises(ValueError, match=r"row 'broken' cannot be built.*no-such-alignment"):
        study.run(seeds=[0], out=tmp_path / "study", jobs=2)
    assert not (tmp_path / "runs").exists()  # not even phase 1 ran


def test_a_failing_row_is_named_and_the_others_are_kept(tmp_path, monkeypatch):
    import methods.average

    original = methods.average.AverageFusion.forward

    def explode(self, reference, aligned, valid):  # the "average" row fails in its first step
        raise RuntimeError("fusion exploded")

    broken = Row("broken", {"model.aggregation": AggregationConfig(alignment="identity", fusion="average")})
    study = Study("study", tiny_run(), [ROWS[1], broken], [VARIANTS[1]])
    monkeypatch.setattr(methods.average.AverageFusion, "forward", explode)
    with pytest.raises(RuntimeError, match=r"broken \(seed 0\).*fusion exploded"):
        study.run(seeds=[0], out=tmp_path / "study", jobs=1)
    monkeypatch.setattr(methods.average.AverageFusion, "forward", original)
    good = study.row_config(ROWS[1], 0)
    assert (stage_dir(tmp_path / "runs", good, "phase2") / "phase2" / "final.pt").is_file()


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        Study("study", override(tiny_run()), ROWS, VARIANTS).run(seeds=[0], out=tmp_path / "s", jobs=0)
