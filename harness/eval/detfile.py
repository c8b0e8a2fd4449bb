"""Read and write detection files in the ILSVRC devkit / FGFA format.

One line per box, whitespace separated::

    <global image index> <class index> <score> <x1> <y1> <x2> <y2>

* global image index: 1-based position of the frame in ``VID_val_frames.txt`` order (the
  ``global_index`` of :class:`~harness.data.records.FrameRecord`);
* class index: 1-based (``label + 1``);
* box: pixels of the original frame, inclusive corners, as in the VID XML.

Saving predictions this way lets anyone re-evaluate them (with this harness, the MATLAB devkit
or FGFA's Python port) without re-running a model. Reading checks every line; an error names
the file, the line number and what is wrong with it.
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
import pandas as pd
from tqdm import tqdm

from harness.data.records import Detections, FrameDetections, VideoRecord
from harness.eval.split import check_frame_detections, split_classes

NUM_FIELDS = 7
READ_CHUNK_LINES = 1_000_000


def global_index_map(videos: list[VideoRecord]) -> dict[int, tuple[str, int]]:
    """``global_index -> (video, frame_id)`` of every frame with a global index (> 0)."""
    mapping: dict[int, tuple[str, int]] = {}
    for video in videos:
        for frame in video.frames:
            if frame.global_index <= 0:
                continue
            key = (frame.video, int(frame.frame_id))
            if frame.global_index in mapping:
                raise ValueError(
                    f"global index {frame.global_index} is used by both "
                    f"{mapping[frame.global_index]} and {key}"
                )
            mapping[int(frame.global_index)] = key
    return mapping


def write_devkit_detections(
    path: str | os.PathLike, videos: list[VideoRecord], detections: Detections, *, progress: bool = True
) -> int:
    """Write ``detections`` of ``videos``' frames to ``path`` in devkit format; returns the line count.

    Frames are written in global-index order. Scores and coordinates use 9 significant digits,
    so float32 values survive a round trip exactly.
    """
    num_classes = len(split_classes(videos))
    global_index = {}
    for video in videos:
        for frame in video.frames:
            global_index[(frame.video, int(frame.frame_id))] = int(frame.global_index)
    rows = []
    for key, dets in tqdm(detections.items(), desc="write detections", unit="frame", disable=not progress):
        if key not in global_index:
            raise KeyError(f"detections given for frame {key}, which is not in the videos")
        check_frame_detections(dets, key=key, num_classes=num_classes)
        if len(dets) == 0:
            continue
        if global_index[key] <= 0:
            raise ValueError(f"frame {key} has no global index (0): cannot write it in devkit format")
        k = len(dets)
        rows.append(
            np.column_stack(
                [
                    np.full(k, global_index[key], np.float64),
                    np.asarray(dets.labels, np.float64) + 1,
                    np.asarray(dets.scores, np.float64),
                    np.asarray(dets.boxes, np.float64),
                ]
            )
        )
    table = np.concatenate(rows) if rows else np.zeros((0, NUM_FIELDS))
    table = table[np.argsort(table[:, 0], kind="stable")]
    np.savetxt(path, table, fmt="%d %d %.9g %.9g %.9g %.9g %.9g")
    return int(table.shape[0])


def _check_line(line: str, *, num_classes: int, known: set[int] | None) -> str | None:
    """What is wrong with one line of a detection file, or ``None`` (blank lines are fine)."""
    fields = line.split()
    if not fields:
        return None
    if len(fields) != NUM_FIELDS:
        fields_format = "<global index> <class> <score> <x1> <y1> <x2> <y2>"
        return f"expected {NUM_FIELDS} fields '{fields_format}', got {len(fields)}"
    try:
        index, label = int(fields[0]), int(fields[1])
    except ValueError:
        return f"global index {fields[0]!r} and class {fields[1]!r} must be integers"
    try:
        score, x1, y1, x2, y2 = (float(f) for f in fields[2:])
    except ValueError:
        return f"score and box must be numbers, got {fields[2:]}"
    if not 1 <= label <= num_classes:
        return f"class index {label} outside 1..{num_classes}"
    if not np.isfinite(score):
        return f"score {fields[2]!r} is not a finite number"
    if not np.all(np.isfinite([x1, y1, x2, y2])):
        return f"box {fields[3:]} has a non-finite coordinate"
    if x2 < x1 or y2 < y1:
        return f"box {fields[3:]} has x2 < x1 or y2 < y1"
    if known is not None and index not in known:
        return f"unknown global index {index} (no frame of the ground truth has it)"
    return None


def _raise_first_bad_line(path: str | os.PathLike, *, num_classes: int, known: set[int] | None) -> None:
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            problem = _check_line(line, num_classes=num_classes, known=known)
            if problem is not None:
                raise ValueError(f"{path}:{number}: {problem}: {line.rstrip()!r}")


def _read_table(path: str | os.PathLike, *, progress: bool) -> np.ndarray | None:
    """The file as a float64 ``(L, 7)`` table, or ``None`` when it cannot be parsed as one."""
    if os.path.getsize(path) == 0:
        return np.zeros((0, NUM_FIELDS))
    chunks = []
    try:
        reader = pd.read_csv(
            path, sep=r"\s+", header=None, dtype=np.float64, chunksize=READ_CHUNK_LINES, engine="c"
        )
        with tqdm(desc=f"read {os.path.basename(path)}", unit="line", disable=not progress) as bar:
            for chunk in reader:
                if chunk.shape[1] != NUM_FIELDS:
                    return None
                chunks.append(chunk.to_numpy())
                bar.update(len(chunk))
    except (ValueError, pd.errors.ParserError):
        return None
    except pd.errors.EmptyDataError:
        return np.zeros((0, NUM_FIELDS))
    return np.concatenate(chunks) if chunks else np.zeros((0, NUM_FIELDS))


def read_devkit_detections(
    path: str | os.PathLike,
    videos: list[VideoRecord],
    *,
    on_unknown: Literal["raise", "skip"] = "raise",
    progress: bool = True,
) -> Detections:
    """Read a devkit detection file into :class:`Detections` for ``videos``' frames.

    Lines map to frames through each frame's ``global_index``. ``on_unknown="skip"`` drops lines
    whose global index is not in ``videos`` (evaluating a subset of the split with a file made
    for all of it); by default they raise. Any malformed line raises ``ValueError`` naming the
    file and line number.
    """
    if on_unknown not in ("raise", "skip"):
        raise ValueError(f"on_unknown must be 'raise' or 'skip', got {on_unknown!r}")
    num_classes = len(split_classes(videos))
    mapping = global_index_map(videos)
    known_sorted = np.array(sorted(mapping), np.int64)
    check_known = set(mapping) if on_unknown == "raise" else None

    table = _read_table(path, progress=progress)
    if table is not None and table.size:
        index, label, score, boxes = table[:, 0], table[:, 1], table[:, 2], table[:, 3:]
        ok = (
            np.isfinite(table).all()
            and (index == np.round(index)).all()
            and (label == np.round(label)).all()
            and ((label >= 1) & (label <= num_classes)).all()
            and np.isfinite(score).all()
            and ((boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])).all()
        )
        position = np.minimum(np.searchsorted(known_sorted, index), max(len(known_sorted) - 1, 0))
        is_known = (
            known_sorted[position] == index if len(known_sorted) else np.zeros(len(index), bool)
        )
        if on_unknown == "raise" and not is_known.all():
            ok = False
        if not ok:
            table = None
        else:
            table = table[is_known]
    if table is None:
        _raise_first_bad_line(path, num_classes=num_classes, known=check_known)
        raise ValueError(f"{path}: not a devkit detection file (pandas could not parse it)")

    if len(table) == 0:
        return {}
    index = table[:, 0].astype(np.int64)
    order = np.argsort(index, kind="stable")
    table, index = table[order], index[order]
    starts = np.r_[0, np.flatnonzero(np.diff(index)) + 1]
    ends = np.r_[starts[1:], len(index)]
    detections: Detections = {}
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        rows = table[start:end]
        detections[mapping[int(index[start])]] = FrameDetections(
            boxes=rows[:, 3:7].astype(np.float32),
            scores=rows[:, 2].astype(np.float32),
            labels=rows[:, 1].astype(np.int64) - 1,
        )
    return detections
