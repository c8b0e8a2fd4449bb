"""SynthVID generation: determinism, the on-disk contract, exact flow, classes carried by fine detail."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from harness.data.records import DEGRADATIONS
from harness.data.synthvid import ensure_synthvid, get_preset
from harness.data.synthvid.generate import COMPLETE_MARKER, motion_ious
from harness.data.synthvid.render import BIT, flow_between, render_frame
from harness.data.synthvid.scene import plan_video


def digest(root: Path, pattern: str) -> str:
    sha = hashlib.sha1()
    for path in sorted(root.rglob(pattern)):
        sha.update(path.relative_to(root).as_posix().encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()


def test_same_seed_gives_identical_files(tiny_synthvid, tmp_path):
    again = ensure_synthvid("tiny", seed=0, data_dir=tmp_path, progress=False)
    for pattern in ("*.xml", "*.JPEG", "*.txt", "*_cocovid.json"):
        assert digest(again, pattern) == digest(tiny_synthvid, pattern), pattern
    other = ensure_synthvid("tiny", seed=1, data_dir=tmp_path, progress=False, num_stills=2)
    assert digest(other, "*.xml") != digest(tiny_synthvid, "*.xml")


def test_parallel_generation_matches_serial(tiny_synthvid, tmp_path):
    parallel = ensure_synthvid("tiny", seed=0, data_dir=tmp_path, progress=False, processes=2)
    assert digest(parallel, "*.xml") == digest(tiny_synthvid, "*.xml")
    assert digest(parallel, "*.npz") == digest(tiny_synthvid, "*.npz")


def test_metadata_and_marker(tiny_synthvid):
    meta = json.loads((tiny_synthvid / "synthvid.json").read_text())
    assert meta["preset"] == "tiny" and meta["seed"] == 0 and len(meta["classes"]) >= 8
    summary = meta["summary"]
    assert summary["num_frames"] == 6 * 12 and summary["bytes"] > 0
    assert set(summary["motion_buckets"]["val"]) == {"slow", "medium", "fast"}
    assert (tiny_synthvid / COMPLETE_MARKER).is_file()


def test_incomplete_dataset_is_regenerated(tmp_path):
    root = tmp_path / "synthvid-tiny-s3"
    (root / "Data").mkdir(parents=True)  # an interrupted run: no completion marker
    (root / "Data" / "junk.txt").write_text("half written")
    assert (
        ensure_synthvid("tiny", seed=3, data_dir=tmp_path, progress=False, num_stills=1) != root
    )  # overrides
    out = ensure_synthvid("tiny", seed=3, data_dir=tmp_path, progress=False)
    assert out == root and (root / COMPLETE_MARKER).is_file() and not (root / "Data" / "junk.txt").exists()


def test_unknown_preset():
    with pytest.raises(KeyError, match="unknown SynthVID preset"):
        get_preset("huge")


def test_motion_iou_by_hand():
    # a 10x10 box moving 1 px right per frame: IoU with the box k frames away = (10-k)/(10+k)
    track = {t: np.array([t, 0, t + 9, 9]) for t in range(3)}
    values = motion_ious({0: track})
    assert values[0] == pytest.approx(np.mean([9 / 11, 8 / 12]))
    assert values[1] == pytest.approx(9 / 11)
    assert np.isnan(motion_ious({0: {5: np.array([0, 0, 9, 9])}})[0])  # a lone box


def test_flow_is_exact_for_the_scene():
    """Warping frame t+1 back with the forward flow reproduces frame t (before JPEG), except where a
    surface appears or disappears; without warping the error is much larger."""
    config = get_preset("tiny", frame_size=(96, 96), frame_burst_rate=0.0, object_burst_rate=0.0)
    errors_warped, errors_still = [], []
    for seed in range(4):
        plan = plan_video(np.random.default_rng(seed), config, 6)
        frames = [render_frame(plan, t, clean_jpeg_quality=95, illumination_noise=0) for t in range(6)]
        for t in range(5):
            flow = flow_between(plan, frames[t].layer_map, t, t + 1)
            grid_x, grid_y = np.meshgrid(np.arange(96, dtype=np.float32), np.arange(96, dtype=np.float32))
            warped = cv2.remap(
                frames[t + 1].image.astype(np.float32),
                grid_x + flow[0],
                grid_y + flow[1],
                cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            )
            target = frames[t].image.astype(np.float32)
            objects = frames[t].layer_map >= 0
            # pixels whose surface is still the same layer at t+1 (no disocclusion)
            destination = np.clip(np.round([grid_y + flow[1], grid_x + flow[0]]).astype(int), 0, 95)
            same = frames[t + 1].layer_map[destination[0], destination[1]] == frames[t].layer_map
            region = objects & same
            errors_warped.append(np.abs(warped - target)[region].mean())
            errors_still.append(np.abs(frames[t + 1].image.astype(np.float32) - target)[region].mean())
    assert np.mean(errors_warped) < 4.0
    assert np.mean(errors_warped) < 0.3 * np.mean(errors_still)


def test_degradation_bits_follow_the_plan():
    config = get_preset("tiny", frame_burst_rate=1.0, frame_degradation_weights=(0, 0, 1, 0))  # noise only
    plan = plan_video(np.random.default_rng(0), config, 4)
    frame = render_frame(plan, 0, clean_jpeg_quality=92, illumination_noise=0)
    assert len(frame.labels) > 0
    assert np.all(frame.degradation & BIT["noise"])
    assert BIT["noise"] == 1 << DEGRADATIONS.index("noise")
    clean = get_preset("tiny", frame_burst_rate=0.0, object_burst_rate=0.0)
    plan = plan_video(np.random.default_rng(0), clean, 4)
    frame = render_frame(plan, 0, clean_jpeg_quality=92, illumination_noise=0)
    # no bursts: the only flag left is occlusion by another object, set exactly on occluded boxes
    assert np.all(frame.degradation & ~BIT["occlusion"] == 0)
    np.testing.assert_array_equal(frame.degradation & BIT["occlusion"] != 0, frame.occluded)


def test_classes_differ_only_in_fine_detail():
    """Sprites of different classes become alike after a blur; colour is independent of the class."""
    from harness.data.synthvid.scene import SPRITE_EXTENT, make_sprite

    config = get_preset("default")
    # the preset's mean defocus blur, in sprite pixels for an object of the mean size
    sigma = np.mean(config.defocus_sigma) / np.mean(config.object_size) * SPRITE_EXTENT
    rng = np.random.default_rng(0)
    sharp_gap, blurred_gap = [], []
    for _ in range(20):
        colour_rng_state = rng.integers(2**31)
        a_rgb, a_alpha = make_sprite(1, np.random.default_rng(colour_rng_state), config)  # stripes
        b_rgb, _ = make_sprite(2, np.random.default_rng(colour_rng_state), config)  # dots, same colours
        inside = a_alpha > 0.99
        sharp_gap.append(np.abs(a_rgb - b_rgb)[inside].mean())
        blur = lambda x: cv2.GaussianBlur(x, (0, 0), sigma)  # noqa: E731
        blurred_gap.append(np.abs(blur(a_rgb) - blur(b_rgb))[inside].mean())
    assert np.mean(blurred_gap) < 0.35 * np.mean(sharp_gap)


def test_changed_knobs_regenerate(tiny_synthvid, tmp_path, monkeypatch):
    import dataclasses

    from harness.data.synthvid import config as config_module

    root = ensure_synthvid("tiny", seed=0, data_dir=tmp_path, progress=False)
    stamp = (root / COMPLETE_MARKER).stat().st_mtime_ns
    assert ensure_synthvid("tiny", seed=0, data_dir=tmp_path, progress=False) == root  # reused
    assert (root / COMPLETE_MARKER).stat().st_mtime_ns == stamp
    tuned = dataclasses.replace(config_module.PRESETS["tiny"], noise_sigma=(10.0, 20.0))
    monkeypatch.setitem(config_module.PRESETS, "tiny", tuned)
    ensure_synthvid("tiny", seed=0, data_dir=tmp_path, progress=False)
    meta = json.loads((root / "synthvid.json").read_text())
    assert meta["config"]["noise_sigma"] == [10.0, 20.0]


# A generation that stops for good after its second video, having written a flag file: the test kills it
# there (kill -9 leaves its temporary folder behind) or lets it live (another process writing right now).
_STALLED_GENERATION = """
import sys, time
from pathlib import Path
import harness.data.synthvid.generate as generate
from harness.data.synthvid import ensure_synthvid

render = generate._generate_one

def stalled(job):
    summary = render(job)
    if job.index == 1:
        Path(sys.argv[2]).write_text("writing")
        time.sleep(600)
    return summary

generate._generate_one = stalled
ensure_synthvid("tiny", seed=7, data_dir=sys.argv[1], progress=False)
"""


def _start_stalled_generation(data_dir: Path, flag: Path):
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-c", _STALLED_GENERATION, str(data_dir), str(flag)]
    process = subprocess.Popen(command, cwd=repo)
    deadline = time.monotonic() + 120
    while not flag.is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the stalled generation ended early (exit code {process.poll()})")
        time.sleep(0.05)
    return process


def _temporaries(data_dir: Path, name: str = "synthvid-tiny-s7") -> list[str]:
    return sorted(p.name for p in data_dir.glob(f".{name}.tmp-*"))


def test_killed_generation_is_cleaned_up_on_the_next_run(tmp_path):
    data_dir = tmp_path / "data"
    process = _start_stalled_generation(data_dir, tmp_path / "flag")
    staging = data_dir / f".synthvid-tiny-s7.tmp-{process.pid}"
    assert staging.is_dir() and (staging / "Data").is_dir()
    process.kill()  # SIGKILL: no cleanup code of its own runs
    process.wait()
    assert staging.is_dir()
    root = ensure_synthvid("tiny", seed=7, data_dir=data_dir, progress=False)
    assert (root / COMPLETE_MARKER).is_file()
    assert _temporaries(data_dir) == []


def test_live_generation_keeps_its_temporary_folder(tmp_path):
    data_dir = tmp_path / "data"
    process = _start_stalled_generation(data_dir, tmp_path / "flag")
    try:
        writing = f".synthvid-tiny-s7.tmp-{process.pid}"
        # another process finishing the same dataset meanwhile leaves the live writer's folder alone
        root = ensure_synthvid("tiny", seed=7, data_dir=data_dir, progress=False)
        assert (root / COMPLETE_MARKER).is_file()
        assert writing in _temporaries(data_dir)
        assert (data_dir / writing / "Data").is_dir()
    finally:
        process.kill()
        process.wait()
    # once it is dead, the next run (the dataset is complete by now) removes what it left
    assert ensure_synthvid("tiny", seed=7, data_dir=data_dir, progress=False) == root
    assert _temporaries(data_dir) == []


def test_stale_temporaries_of_other_datasets_are_kept(tmp_path):
    import subprocess
    import sys

    dead_pid = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    stale = tmp_path / f".synthvid-tiny-s7.tmp-{dead_pid}"  # left by a version without lock files
    other = tmp_path / f".synthvid-tiny-s7-0123abcd.tmp-{dead_pid}"  # another configuration's
    unrelated = tmp_path / ".synthvid-tiny-s7.tmp-notapid"
    for folder in (stale, other, unrelated):
        (folder / "Data").mkdir(parents=True)
    ensure_synthvid("tiny", seed=7, data_dir=tmp_path, progress=False)
    assert not stale.exists() and other.is_dir() and unrelated.is_dir()


def test_failed_generation_leaves_no_temporary_folder(tmp_path, monkeypatch):
    import harness.data.synthvid.generate as generate

    def broken(job):
        raise RuntimeError("disk full")

    monkeypatch.setattr(generate, "_generate_one", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_synthvid("tiny", seed=7, data_dir=tmp_path, progress=False)
    assert _temporaries(tmp_path) == [] and not (tmp_path / "synthvid-tiny-s7").exists()
