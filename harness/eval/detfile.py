"""Read and write detection files in the ILSVRC devkit / FGFA format.

One line per box, whitespace separated::

    <global image index> <class index> <score> <x1> <y1> <x2> <y2>

* global image index: 1-based position of the frame in ``VID_val_frames.txt`` order (the
  ``global_index`` of :class:`~harness.data.records.FrameRecord`);
* class index: 1-based (``label + 1``);
* box: pixels of the original frame, inclusive corners, as in the VID XML.

Saving predictions this way lets anyone re-evaluate them (with this harness, the MATLAB devkit
or FGFA's Python port) without re-running a model. Reading accepts what the official tools
accept and refuses only what cannot be parsed, naming the file, the line number and the problem;
lines the official tools skip are skipped and counted (:func:`read_devkit_file`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm import tqdm

from harness.data.records import Detections, FrameDetections, VideoRecord
from harness.eval.split import check_frame_detections, split_classes

NUM_FIELDS = 7
READ_CHUNK_LINES = 1_000_000
logger = logging.getLogger(__name__)


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


SKIP_REASONS = {
    "unknown_index": "a global index that is not in the image set",
    "background": "class 0 (background)",
    "unknown_class": "a class index outside 1..{num_classes}",
}


@dataclass(frozen=True)
class DevkitFile:
    """A read detection file: the detections and the lines skipped as the official tools skip them.

    Attributes:
        path: the file read.
        detections: ``(video, frame_id) -> FrameDetections``.
        skipped: ``reason -> number of lines`` for the reasons of :data:`SKIP_REASONS` that occurred.
        first_skipped: ``reason -> first line number`` (1-based) of each skipped reason.
        num_classes: ``C``, for the messages.
    """

    path: str
    detections: Detections
    skipped: dict[str, int] = field(default_factory=dict)
    first_skipped: dict[str, int] = field(default_factory=dict)
    num_classes: int = 0

    def summary(self) -> str | None:
        """One line saying which lines were skipped and why, or ``None`` when none was."""
        if not self.skipped:
            return None
        parts = [
            f"{count} with {SKIP_REASONS[reason].format(num_classes=self.num_classes)} "
            f"(first: line {self.first_skipped[reason]})"
            for reason, count in self.skipped.items()
        ]
        total = sum(self.skipped.values())
        return f"{self.path}: skipped {total} line(s), as FGFA and the devkit do: {'; '.join(parts)}"


def _check_line(line: str, *, num_classes: int, known: set[int] | None, strict: bool) -> str | None:
    """What is wrong with one line of a detection file, or ``None`` (blank lines are fine).

    Refused: what cannot be parsed (field count, non-integers for index and class, non-numbers,
    NaN or infinite values). With ``strict`` also what the official tools skip (unknown global
    index, class outside 1..C). A box with x2 < x1 or y2 < y1 is accepted (scored as FP).
    """
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
    if not np.isfinite(score):
        return f"score {fields[2]!r} is not a finite number"
    if not np.all(np.isfinite([x1, y1, x2, y2])):
        return f"box {fields[3:]} has a non-finite coordinate"
    if strict and not 1 <= label <= num_classes:
        return f"class index {label} outside 1..{num_classes} (skipped without --strict)"
    if strict and known is not None and index not in known:
        return f"unknown global index {index}: no frame of the ground truth has it (skipped without --strict)"
    return None


def _raise_first_bad_line(
    path: str | os.PathLike, *, num_classes: int, known: set[int] | None, strict: bool
) -> None:
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            problem = _check_line(line, num_classes=num_classes, known=known, strict=strict)
            if problem is not None:
                raise ValueError(f"{path}:{number}: {problem}: {line.rstrip()!r}")


def _line_numbers(path: str | os.PathLike) -> np.ndarray:
    """1-based line number of each non-blank line (the rows pandas returns), int64 ``(L,)``."""
    with open(path, "rb") as handle:
        return np.array([n for n, line in enumerate(handle, start=1) if line.strip()], np.int64)
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


def read_devkit_file(
    path: str | os.PathLike,
    videos: list[VideoRecord],
    *,
    strict: bool = False,
    subset: bool = False,
    progress: bool = True,
) -> DevkitFile:
    """Read a devkit detection file for ``videos``' frames, accepting what FGFA and the devkit accept.

    Lines map to frames through each frame's ``global_index``. A line that cannot be parsed
    (field count, non-integer index or class, non-number, NaN or infinity) raises ``ValueError``
    naming the file and line number. Lines the official tools skip (a global index of no frame of
    ``videos``, a class outside ``1..C`` such as class 0) are skipped and counted in the result;
    ``strict=True`` refuses them instead, except, with ``subset=True`` (``videos`` are part of the
    split the file was made for), the lines of other frames. Boxes with ``x2 < x1`` or ``y2 < y1``
    are kept: the evaluation scores them as false positives, as the official tools do.
    """
    num_classes = len(split_classes(videos))
    mapping = global_index_map(videos)
    known_sorted = np.array(sorted(mapping), np.int64)
    known = set(mapping)
    skipped: dict[str, int] = {}
    first_skipped: dict[str, int] = {}

    table = _read_table(path, progress=progress)
    if table is not None and table.size:
        index, label = table[:, 0], table[:, 1]
        parsed = (
            np.isfinite(table).all()
            and (index == np.round(index)).all()
            and (label == np.round(label)).all()
        )
        if not parsed:
            table = None
    if table is not None and table.size:
        index, label = table[:, 0], table[:, 1]
        position = np.minimum(np.searchsorted(known_sorted, index), max(len(known_sorted) - 1, 0))
        is_known = known_sorted[position] == index if len(known_sorted) else np.zeros(len(index), bool)
        reasons = {
            "unknown_index": ~is_known,
            "background": is_known & (label == 0),
            "unknown_class": is_known & (label != 0) & ((label < 1) | (label > num_classes)),
        }
        keep = ~(reasons["unknown_index"] | reasons["background"] | reasons["unknown_class"])
        refuse = ~keep & ~(reasons["unknown_index"] & subset) if strict else np.zeros_like(keep)
        if refuse.any():
            table = None
        elif not keep.all():
            lines = _line_numbers(path)
            for reason, mask in reasons.items():
                if mask.any():
                    skipped[reason] = int(mask.sum())
                    first_skipped[reason] = int(lines[np.argmax(mask)])
            table = table[keep]
    if table is None:
        _raise_first_bad_line(path, num_classes=num_classes, known=None if subset else known, strict=strict)
        raise ValueError(f"{path}: not a devkit detection file (pandas could not parse it)")

    detections: Detections = {}
    if len(table):
        index = table[:, 0].astype(np.int64)
        order = np.argsort(index, kind="stable")
        table, index = table[order], index[order]
        starts = np.r_[0, np.flatnonzero(np.diff(index)) + 1]
        ends = np.r_[starts[1:], len(index)]
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            rows = table[start:end]
            detections[mapping[int(index[start])]] = FrameDetections(
                boxes=rows[:, 3:7].astype(np.float32),
                scores=rows[:, 2].astype(np.float32),
                labels=rows[:, 1].astype(np.int64) - 1,
            )
    return DevkitFile(
        path=str(path),
        detections=detections,
        skipped=skipped,
        first_skipped=first_skipped,
        num_classes=num_classes,
    )


def read_devkit_detections(
    path: str | os.PathLike,
    videos: list[VideoRecord],
    *,
    strict: bool = False,
    progress: bool = True,
) -> Detections:
    """The detections of :func:`read_devkit_file`; skipped lines are logged as one warning."""
    read = read_devkit_file(path, videos, strict=strict, progress=progress)
    if read.summary() is not None:
        logger.warning(read.summary())
    return read.detections
