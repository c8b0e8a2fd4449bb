"""Faults around runs: torn files, a full disk, exploding training, damaged tables, two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.files import atomic_path, read_jsonl, write_json
from harness.locks import exclusive
from harness.model.detector import VideoDetector
from harness.runs import append_results, evaluation_dir, load_results, stage_dir
from harness.train import latest_checkpoint, read_metrics, save_atomic
from tests.test_train import _train, tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_torn_last_metrics_line_is_dropped_and_training_resumes(tmp_path):
    straight = _train(tiny_run(), tmp_path / "straight")
    crashed = tmp_path / "crashed"
    _train(tiny_run(steps=3, checkpoint_every=3), crashed)  # 3 steps done, checkpoint at step 3
    (crashed / "final.pt").unlink()  # as if killed before the final save
    with (crashed / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 4, "phase": 1, "lo')  # the disk filled up mid-line
    with pytest.warns(UserWarning, match=r"metrics.jsonl:\d+: dropped a torn last line"):
        resumed = _train(tiny_run(), crashed)
    assert [r["step"] for r in read_metrics(crashed) if "event" not in r] == list(range(1, 9))
    for key, value in torch.load(straight, weights_only=False)["model"].items():
        torch.testing.assert_close(
            value, torch.load(resumed, weights_only=False)["model"][key], rtol=0, atol=0
        )


def test_an_unreadable_line_before_the_last_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        read_jsonl(path)


def test_a_failed_checkpoint_write_names_the_checkpoint_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint_0000004.pt"
    save_atomic({"step": 3}, target)

    def disk_full(payload, path):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match=r"could not write .*checkpoint_0000004.pt: No space left on device"):
        save_atomic({"step": 4}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_0000004.pt"]  # no .tmp left
    monkeypatch.undo()
    assert torch.load(target, weights_only=False) == {"step": 3}  # the previous content is kept


def test_concurrent_writers_of_one_file_use_their_own_temporary_files(tmp_path):
    target = tmp_path / "result.json"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("1")
        second.write_text("2")
    assert target.read_text() == "1"  # the outer one replaced last
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and len(list(tmp_path.iterdir())) == 1


def test_exploding_gradients_never_reach_a_checkpoint(tmp_path, monkeypatch):
    original = VideoDetector.losses
    calls = []

    def exploding(self, batch):  # step 5's loss is finite, its gradient is not
        losses = original(self, batch)
        calls.append(1)
        if len(calls) == 5:
            losses["loss_box"].register_hook(lambda grad: grad * float("nan"))
        return losses

    monkeypatch.setattr(VideoDetector, "losses", exploding)
    with pytest.raises(
        FloatingPointError, match=r"gradient norm is nan at step 5; the last finite state is .*0000004"
    ):
        _train(tiny_run(), tmp_path)
    state = torch.load(latest_checkpoint(tmp_path), weights_only=False)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_weights_that_overflow_on_the_last_step_are_not_saved_as_final(tmp_path, monkeypatch):
    real_step = torch.optim.AdamW.step
    calls = []

    def overflow_on_the_last(self, closure=None):  # finite gradients, and a last update that overflows
        calls.append(1)
        real_step(self, closure)
        if len(calls) == 3:
            for group in self.param_groups:
                for param in group["params"]:
                    param.data.fill_(float("inf"))

    monkeypatch.setattr(torch.optim.AdamW, "step", overflow_on_the_last)
    with pytest.raises(FloatingPointError, match="not finite after the last update"):
        _train(tiny_run(steps=3, checkpoint_every=2), tmp_path / "run")
    assert not (tmp_path / "run" / "final.pt").exists()
    assert latest_checkpoint(tmp_path / "run").name == "checkpoint_0000002.pt"  # the last finite state


def test_a_damaged_results_table_is_named_and_started_anew(tmp_path):
    path = tmp_path / "results.parquet"
    append_results([{"run_id": "a", "map": 1.0}], path)
    path.write_bytes(path.read_bytes()[:20])  # truncated
    with pytest.raises(ValueError, match=r"results.parquet cannot be read"):
        load_results(path)
    with pytest.warns(UserWarning, match="starting it anew"):
        table = append_results([{"run_id": "b", "map": 2.0}], path)
    assert table["run_id"].tolist() == ["b"]
    pd.testing.assert_frame_equal(load_results(path), table)


def test_a_second_process_waits_for_a_held_lock_and_says_so(tmp_path, capsys):
    import fcntl

    lock = tmp_path / ".lock"
    held = lock.open("a")
    fcntl.flock(held, fcntl.LOCK_EX)
    entered = threading.Event()

    def contender():
        with exclusive(lock, waiting="phase 2 phase2-abc"):
            entered.set()

    thread = threading.Thread(target=contender)
    thread.start()
    time.sleep(0.3)
    assert not entered.is_set()  # blocked while held
    fcntl.flock(held, fcntl.LOCK_UN)
    held.close()
    thread.join(timeout=10)
    assert entered.is_set()
    assert "waiting for phase 2 phase2-abc (held by another process)" in capsys.readouterr().err


_RUN_TWICE = """
import json, sys, torch
torch.set_num_threads(1)
from harness.pipeline import run_experiment
from tests.test_runs import tiny_run
row = run_experiment(tiny_run(), runs_root=sys.argv[1], progress=False)
print(json.dumps(row, sort_keys=True))
"""


@pytest.mark.slow
def test_two_processes_on_one_runs_root_share_the_work(tmp_path):
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "VODBENCH_DATA": str(tmp_path / "data"), "PYTHONPATH": repo}
    subprocess.run(
        [sys.executable, "-m", "harness.cli", "generate", "--preset", "tiny"],
        env=env,
        check=True,
        capture_output=True,
    )
    runs = tmp_path / "runs"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _RUN_TWICE, str(runs)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-2000:]
    rows = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert rows[0] == rows[1]
    from tests.test_runs import tiny_run as tiny_pipeline_run

    run = tiny_pipeline_run()
    steps = [r["step"] for r in read_metrics(stage_dir(runs, run, "phase2") / "phase2") if "event" not in r]
    assert steps == [1, 2, 3, 4]  # phase 2 trained once, not twice
    phase1 = [r["step"] for r in read_metrics(stage_dir(runs, run, "phase1")) if "event" not in r]
    assert phase1 == [1, 2, 3, 4]
    assert (evaluation_dir(runs, run) / "DONE").is_file()
    assert not list(runs.rglob("*.tmp"))


def test_non_finite_weights_are_flagged_in_the_results_row(tmp_path, monkeypatch):
    from harness.pipeline import evaluate_checkpoint, train_run
    from tests.test_runs import tiny_run as tiny_pipeline_run

    monkeypatch.setenv("VODBENCH_DATA", str(tmp_path / "data"))
    run = tiny_pipeline_run()
    checkpoint = train_run(run, runs_root=tmp_path / "runs", progress=False)
    state = torch.load(checkpoint, weights_only=False)
    first = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][first] = torch.full_like(state["model"][first], float("nan"))  # exploded weights
    torch.save(state, checkpoint)
    with pytest.warns(UserWarning, match="weights are not finite"):
        row = evaluate_checkpoint(run, checkpoint, runs_root=tmp_path / "runs", progress=False)
    assert row["weights_finite"] is False
