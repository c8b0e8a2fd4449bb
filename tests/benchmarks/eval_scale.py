"""Time and peak memory of ``vodbench eval``'s protocols at ILSVRC VID val size (a benchmark, not a test).

Builds a VID-val-sized split in the SynthVID manner (555 videos of about 107 frames: 59,422 frames,
1-4 tracks per video of 30 classes moving at slow/medium/fast speeds, about 50 detections per frame:
jittered copies of the ground truth with some wrong classes, plus clutter; 2.97M detections), writes
the ground truth (pickle) and a devkit detection file once, then runs each protocol in its own
subprocess and prints, per protocol, the wall time of reading the detection file, of flattening the
split and of the protocol itself, the protocol's CPU time (``process_time``: less sensitive to
other load on the machine than the wall time), the subprocess's peak resident memory
(``ru_maxrss``) and the 1-minute load average::

    python -m tests.benchmarks.eval_scale [--frames 59422] [--dets-per-frame 50] \
        [--protocols devkit,motion,coco] [--data DIR]

It uses only functions that exist since the base commit of issue 14 (9ce7a1f), so the same script
measures an older checkout: ``PYTHONPATH=<old checkout> python <this file>``.
Measured numbers and the machine: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VID_VAL_FRAMES = 59_422
VID_VAL_VIDEOS = 555
NUM_CLASSES = 30
WIDTH, HEIGHT = 1280, 720
PROTOCOLS = ("devkit", "motion", "coco")


def build_split(num_frames: int, *, seed: int = 0):
    """VID-val-like videos (list of ``VideoRecord``) with ``num_frames`` frames in total."""
    from harness.data.records import FrameRecord, VideoRecord

    rng = np.random.default_rng(seed)
    classes = tuple(f"class_{c:02d}" for c in range(NUM_CLASSES))
    num_videos = max(1, round(num_frames * VID_VAL_VIDEOS / VID_VAL_FRAMES))
    lengths = np.full(num_videos, num_frames // num_videos)
    lengths[: num_frames - lengths.sum()] += 1
    videos, global_index = [], 1
    for v, length in enumerate(lengths.tolist()):
        name = f"val/ILSVRC2015_val_{v:08d}"
        tracks = int(rng.integers(1, 5))
        size = rng.uniform(30, 400, size=(tracks, 2))
        start = rng.uniform(0, 1, size=(tracks, 2)) * (np.array([WIDTH, HEIGHT]) - size)
        # Speed in pixels/frame relative to the box size: slow, medium or fast (about 1/3 each).
        speed = rng.choice([0.002, 0.012, 0.04], size=tracks) * size.mean(axis=1)
        direction = rng.normal(size=(tracks, 2))
        velocity = speed[:, None] * direction / np.linalg.norm(direction, axis=1, keepdims=True)
        labels = rng.integers(0, NUM_CLASSES, size=tracks)
        frames = []
        for t in range(length):
            top_left = np.clip(start + velocity * t, 0, np.array([WIDTH, HEIGHT]) - size)
            boxes = np.round(np.concatenate([top_left, top_left + size], axis=1)).astype(np.float32)
            frames.append(
                FrameRecord(
                    video=name,
                    frame_id=t,
                    image_path=f"/nonexistent/{name}/{t:06d}.JPEG",
                    width=WIDTH,
                    height=HEIGHT,
                    boxes=boxes,
                    labels=labels.astype(np.int64),
                    track_ids=np.arange(tracks, dtype=np.int64),
                    occluded=np.zeros(tracks, bool),
                    generated=np.zeros(tracks, bool),
                    degradation=np.zeros(tracks, np.int64),
                    global_index=global_index,
                )
            )
            global_index += 1
        videos.append(VideoRecord(name=name, frames=frames, classes=classes))
    return videos


def build_detections(videos, *, per_frame: int, seed: int = 1):
    """About ``per_frame`` detections per frame: 3 jittered copies of each GT (1 in 10 with a wrong class)
    and clutter boxes, scores uniform (true copies a little higher)."""
    from harness.data.records import FrameDetections

    rng = np.random.default_rng(seed)
    detections = {}
    for video in videos:
        for frame in video.frames:
            n = len(frame.labels)
            copies = np.repeat(frame.boxes.astype(np.float64), 3, axis=0)
            copies += rng.normal(0, 0.05, copies.shape) * np.repeat(
                frame.boxes[:, 2:] - frame.boxes[:, :2], 3, 0
            ).repeat(2, 1)
            copy_labels = np.repeat(frame.labels, 3)
            wrong = rng.random(len(copy_labels)) < 0.1
            copy_labels[wrong] = rng.integers(0, NUM_CLASSES, wrong.sum())
            clutter_n = max(per_frame - 3 * n, 0)
            size = rng.uniform(20, 300, size=(clutter_n, 2))
            top_left = rng.uniform(0, 1, size=(clutter_n, 2)) * (np.array([WIDTH, HEIGHT]) - size)
            clutter = np.concatenate([top_left, top_left + size], axis=1)
            boxes = np.concatenate([copies, clutter])
            boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
            scores = np.concatenate([rng.uniform(0.3, 1.0, 3 * n), rng.uniform(0.0, 0.7, clutter_n)])
            labels = np.concatenate([copy_labels, rng.integers(0, NUM_CLASSES, clutter_n)])
            detections[(frame.video, frame.frame_id)] = FrameDetections(
                boxes=boxes.astype(np.float32),
                scores=scores.astype(np.float32),
                labels=labels.astype(np.int64),
            )
    return detections


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(protocol: str, data: Path) -> dict:
    """Run one protocol on the prepared ``data`` folder; returns the timings and memory."""
    from harness.eval.detfile import read_devkit_detections
    from harness.eval.split import flatten_split

    with open(data / "videos.pkl", "rb") as handle:
        videos = pickle.load(handle)
    rss_loaded = _rss_now_mb()
    started = time.perf_counter()
    detections = read_devkit_detections(data / "dets.txt", videos, progress=False)
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    split = flatten_split(videos, detections, progress=False)
    del detections
    flatten_s = time.perf_counter() - started
    rss_before = _rss_now_mb()
    started, cpu_started = time.perf_counter(), time.process_time()
    if protocol == "devkit":
        from harness.eval.devkit import evaluate_voc

        value = evaluate_voc(split, protocol="devkit", progress=False)["map"]
    elif protocol == "motion":
        from harness.eval.motion import evaluate_buckets, motion_buckets, split_motion_iou

        buckets = motion_buckets(split_motion_iou(videos, split, progress=False))
        table = evaluate_buckets(split, buckets, protocol="devkit", progress=False)
        value = [table[b] for b in ("slow", "medium", "fast")]
    elif protocol == "coco":
        from harness.eval.coco import evaluate_coco

        kwargs = {"progress": False} if "progress" in inspect.signature(evaluate_coco).parameters else {}
        value = evaluate_coco(split, **kwargs)["ap50"]
    else:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    protocol_s = time.perf_counter() - started
    protocol_cpu_s = time.process_time() - cpu_started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "protocol": protocol,
        "read_s": read_s,
        "flatten_s": flatten_s,
        "protocol_s": protocol_s,
        "protocol_cpu_s": protocol_cpu_s,
        "load_average": os.getloadavg()[0],
        "rss_after_gt_mb": rss_loaded,
        "rss_before_protocol_mb": rss_before,
        "peak_rss_mb": peak_mb,
        "value": value,
        "num_detections": int(split.det_scores.shape[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--frames", type=int, default=VID_VAL_FRAMES, help="frames in the split (VID val: 59422)"
    )
    parser.add_argument(
        "--dets-per-frame", type=int, default=50, help="detections per frame (VID-val size: 50)"
    )
    parser.add_argument(
        "--protocols", default=",".join(PROTOCOLS), help="comma-separated subset of devkit,motion,coco"
    )
    parser.add_argument("--data", default=None, help="reuse/keep the generated input in this folder")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.data))))
        return

    from harness.eval.detfile import write_devkit_detections

    keep = args.data is not None
    data = Path(args.data) if keep else Path(tempfile.mkdtemp(prefix="vodbench-eval-scale-"))
    data.mkdir(parents=True, exist_ok=True)
    marker = data / f"input-{args.frames}-{args.dets_per_frame}.ok"
    if not marker.is_file():
        started = time.perf_counter()
        videos = build_split(args.frames)
        detections = build_detections(videos, per_frame=args.dets_per_frame)
        with open(data / "videos.pkl", "wb") as handle:
            pickle.dump(videos, handle, protocol=pickle.HIGHEST_PROTOCOL)
        lines = write_devkit_detections(data / "dets.txt", videos, detections, progress=False)
        for old in data.glob("input-*.ok"):
            old.unlink()
        marker.write_text("ok\n")
        print(
            f"built {args.frames} frames, {lines} detections "
            f"in {time.perf_counter() - started:.1f} s -> {data}"
        )
    import harness

    script = Path(__file__).resolve()
    env = os.environ.copy()  # the workers import the same harness as this process
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(harness.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    )
    rows = []
    for protocol in args.protocols.split(","):
        command = [sys.executable, str(script), "--worker", protocol, "--data", str(data)]
        done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{protocol:7s} read {row['read_s']:6.1f} s  flatten {row['flatten_s']:5.1f} s  "
            f"protocol {row['protocol_s']:6.1f} s (CPU {row['protocol_cpu_s']:6.1f} s)  "
            f"peak RSS {row['peak_rss_mb']:7.0f} MB "
            f"(before protocol {row['rss_before_protocol_mb']:.0f} MB)  "
            f"{row['num_detections']} dets  load {row['load_average']:.1f}  result {row['value']}",
            flush=True,
        )
    print(json.dumps(rows))
    if not keep:
        for path in data.iterdir():
            path.unlink()
        data.rmdir()


if __name__ == "__main__":
    main()
