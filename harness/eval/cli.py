"""``vodbench eval``: re-evaluate a saved devkit detection file against a VID-layout root.

Example::

    vodbench eval --root /data/ILSVRC2015 --split val --detections dets.txt \\
        --protocol all --motion --json results/eval.json

The ground truth is read with :func:`harness.data.vid.read_vid_split`; the detection file maps to
frames through their global index (``VID_val_frames.txt`` order). The printed tables and the JSON
name the mAP definition of every number (devkit / fixed / coco).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness.eval.detfile import read_devkit_detections
from harness.eval.evaluate import ALL_PROTOCOLS, evaluate
from harness.eval.motion import BUCKETS
from harness.eval.seqnms import seq_nms

DEFINITIONS = {
    "devkit": "ILSVRC devkit (size-dependent IoU, +1 boxes, VOC AP)",
    "fixed": "IoU 0.5, +1 boxes, VOC AP (MEGA)",
    "coco": "COCO AP50 (101-point, maxDets 100)",
}


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``eval`` subcommand on an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a devkit detection file (all three mAP@0.5 definitions, motion buckets)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", required=True, help="VID-layout dataset root (Data/, Annotations/)")
    parser.add_argument("--split", default="val", help="split folder under Annotations/VID (default: val)")
    parser.add_argument(
        "--detections",
        required=True,
        help="devkit detection file: '<global index> <class 1..C> <score> <x1> <y1> <x2> <y2>' per line",
    )
    parser.add_argument(
        "--protocol",
        choices=(*ALL_PROTOCOLS, "all"),
        default="all",
        help="mAP definition: devkit (ILSVRC/FGFA), fixed (IoU 0.5, MEGA), coco, or all (default)",
    )
    parser.add_argument("--motion", action="store_true", help="add FGFA's slow/medium/fast breakdown")
    parser.add_argument(
        "--degradation", action="store_true", help="add the clean/degraded split (SynthVID degradation flags)"
    )
    parser.add_argument(
        "--seq-nms", action="store_true", help="apply Seq-NMS (FGFA defaults) before evaluating"
    )
    parser.add_argument("--seq-nms-rescore", choices=("mean", "max"), default="mean")
    parser.add_argument(
        "--image-set", default=None, help="FGFA list restricting the videos (e.g. VID_val_videos.txt)"
    )
    parser.add_argument(
        "--max-videos", type=int, default=None,
        help="evaluate only the first N videos (lines of other videos in the file are skipped)",
    )
    parser.add_argument("--json", default=None, help="write the full result here")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run_eval)
    return parser


def run_eval(args: argparse.Namespace) -> int:
    """Run ``vodbench eval`` with parsed ``args``; prints the tables, writes ``--json``; returns 0."""
    from harness.data.vid import read_vid_split

    progress = not args.no_progress
    protocols = ALL_PROTOCOLS if args.protocol == "all" else (args.protocol,)
    videos = read_vid_split(args.root, args.split, image_set=args.image_set, max_videos=args.max_videos)
    subset = args.max_videos is not None or args.image_set is not None
    detections = read_devkit_detections(
        args.detections, videos, on_unknown="skip" if subset else "raise", progress=progress
    )
    if args.seq_nms:
        detections = seq_nms(videos, detections, rescore=args.seq_nms_rescore, progress=progress)
    result = evaluate(
        videos,
        detections,
        protocols=protocols,
        motion=args.motion,
        degradation=args.degradation,
        progress=progress,
    )
    result["meta"] = {
        "root": str(args.root),
        "split": args.split,
        "detections": str(args.detections),
        "protocols": list(protocols),
        "definitions": {p: DEFINITIONS[p] for p in protocols},
        "seq_nms": {"rescore": args.seq_nms_rescore} if args.seq_nms else None,
        "num_videos": len(videos),
    }
    print_result(result, console=Console())
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_result(result: dict, *, console: Console) -> None:
    """Print the summary table (one row per definition) and the per-class AP table."""
    protocols = [p for p in ALL_PROTOCOLS if p in result]
    with_motion = any("motion" in result[p] for p in protocols if p != "coco")
    summary = Table(title=f"mAP (%) on {result['num_frames']} frames, {result['num_gt']} GT boxes")
    summary.add_column("definition")
    summary.add_column("mAP@0.5", justify="right")
    if with_motion:
        for bucket in BUCKETS:
            summary.add_column(bucket, justify="right")
    summary.add_column("notes")
    for protocol in protocols:
        table = result[protocol]
        label = f"{protocol}: {DEFINITIONS[protocol]}"
        if protocol == "coco":
            cells = [label, _fmt(table["ap50"])] + (["-"] * len(BUCKETS) if with_motion else [])
            cells.append(f"AP75 {_fmt(table['ap75'])}, AP50:95 {_fmt(table['ap50_95'])}")
        else:
            cells = [label, _fmt(table["map"])]
            if with_motion:
                motion = table.get("motion", {})
                cells += [_fmt(motion.get(b)) for b in BUCKETS]
            cells.append("")
        summary.add_row(*cells)
    console.print(summary)

    per_class = Table(title="AP@0.5 (%) per class")
    per_class.add_column("class")
    for protocol in protocols:
        per_class.add_column(protocol, justify="right")
    names = list(dict.fromkeys(n for p in protocols for n in _class_table(result[p])))
    for name in names:
        per_class.add_row(name, *[_fmt(_class_table(result[p]).get(name)) for p in protocols])
    console.print(per_class)

    for protocol, table in result.get("degradation", {}).items():
        degraded = Table(title=f"degradation split ({protocol}), mAP (%) and share of GT")
        degraded.add_column("bucket")
        degraded.add_column("mAP", justify="right")
        degraded.add_column("share", justify="right")
        for bucket, share in table["share"].items():
            degraded.add_row(bucket, _fmt(table[bucket]), f"{100 * share:.1f}%")
        console.print(degraded)


def _class_table(table: dict) -> dict:
    return table.get("per_class_ap50", table.get("per_class", {}))
