"""``vodbench eval``: re-evaluate a saved devkit detection file against a VID-layout root.

Example::

    vodbench eval --root /data/ILSVRC2015 --split val --detections dets.txt \\
        --protocol all --motion --json results/eval.json

The ground truth is read with :func:`harness.data.vid.read_vid_split`; the detection file maps to
frames through their global index (``VID_val_frames.txt`` order). Lines FGFA and the devkit skip
(a global index not in the image set, class 0) are skipped and counted (``--strict`` refuses
them); boxes with x2 < x1 are scored as false positives. The printed tables and the JSON name the
mAP definition of every number (devkit / fixed / coco). Errors are one line (``--debug``: traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness.eval.detfile import read_devkit_file
from harness.eval.evaluate import ALL_PROTOCOLS, evaluate
from harness.eval.motion import BUCKETS, MOTION_RANGES
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
    parser.add_argument(
        "--root",
        required=True,
        help="VID-layout dataset root (Data/, Annotations/); the parent folder given to `vodbench generate "
        "--root` works too when it holds one dataset",
    )
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
        "--motion-ranges",
        choices=MOTION_RANGES,
        default="fgfa",
        help="fgfa (default): FGFA's closed ranges, motion IoU 0.9 is slow and medium; partition: "
        "vodbench's corrected half-open ranges (not comparable with published numbers)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse detection lines FGFA and the devkit skip (unknown global index, class 0)",
    )
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
    parser.add_argument("--no-progress", action="store_true", help="hide every progress bar")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.set_defaults(func=run_eval)
    return parser


class EvalInputError(ValueError):
    """A problem with ``vodbench eval``'s arguments or inputs, reported as one line."""


def dataset_root(root: str | Path, split: str) -> tuple[Path, str | None]:
    """The VID-layout dataset folder ``root`` designates, and a note when it was found below ``root``.

    ``root`` is used as is when it has ``Annotations/``; otherwise the one folder up to two levels
    below it that has ``Annotations/VID/<split>`` is (``vodbench generate --root`` takes the parent).
    Raises :class:`EvalInputError` naming ``root`` and the fix otherwise.
    """
    root = Path(root)
    if not root.is_dir():
        raise EvalInputError(f"--root {root}: no such folder")
    if (root / "Annotations").is_dir():
        return root, None
    pattern = f"Annotations/VID/{split}"
    found = [*root.glob(f"*/{pattern}"), *root.glob(f"*/*/{pattern}")]
    below = sorted({p.parent.parent.parent.resolve() for p in found if p.is_dir()})
    if len(below) == 1:
        return below[0], f"--root {root} has no Annotations/: using the dataset folder below it, {below[0]}"
    if below:
        names = ", ".join(str(p) for p in below)
        raise EvalInputError(
            f"--root {root} has no Annotations/ but holds several datasets; pass one as --root: {names}"
        )
    raise EvalInputError(
        f"--root {root} has no Annotations/ and no dataset folder below it with Annotations/VID/{split}; "
        "pass the dataset folder (the one holding Data/ and Annotations/)"
    )


def run_eval(args: argparse.Namespace) -> int:
    """Run ``vodbench eval``; prints the tables, writes ``--json``; returns 0, or 2 after a one-line error."""
    try:
        return _run_eval(args)
    except (ValueError, KeyError, OSError) as error:  # DataError is a ValueError
        if getattr(args, "debug", False):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        message = " ".join(str(message).split())  # one line, whatever the message holds
        print(f"vodbench eval: error: {message}", file=sys.stderr)
        return 2


def _run_eval(args: argparse.Namespace) -> int:
    from harness.data.vid import read_vid_split

    progress = not args.no_progress
    protocols = ALL_PROTOCOLS if args.protocol == "all" else (args.protocol,)
    root, note = dataset_root(args.root, args.split)
    if note:
        print(f"vodbench eval: {note}", file=sys.stderr)
    if not Path(args.detections).is_file():
        raise EvalInputError(f"--detections {args.detections}: no such file")
    videos = read_vid_split(
        root, args.split, image_set=args.image_set, max_videos=args.max_videos, progress=progress
    )
    subset = args.max_videos is not None or args.image_set is not None
    read = read_devkit_file(args.detections, videos, strict=args.strict, subset=subset, progress=progress)
    if read.summary():
        print(f"vodbench eval: {read.summary()}; --strict refuses them", file=sys.stderr)
    detections = read.detections
    if args.seq_nms:
        detections = seq_nms(videos, detections, rescore=args.seq_nms_rescore, progress=progress)
    result = evaluate(
        videos,
        detections,
        protocols=protocols,
        motion=args.motion,
        degradation=args.degradation,
        progress=progress,
        motion_ranges=args.motion_ranges,
    )
    result["meta"] = {
        "root": str(root),
        "split": args.split,
        "detections": str(args.detections),
        "protocols": list(protocols),
        "definitions": {p: DEFINITIONS[p] for p in protocols},
        "seq_nms": {"rescore": args.seq_nms_rescore} if args.seq_nms else None,
        "num_videos": len(videos),
        "skipped_lines": read.skipped,
        "motion_ranges": args.motion_ranges if args.motion else None,
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
            ranges = table.get("motion", {}).get("ranges", "fgfa")
            cells.append("" if ranges == "fgfa" else f"motion ranges: {ranges} (vodbench's, not FGFA's)")
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
