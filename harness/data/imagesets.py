"""FGFA's ``ImageSets`` list files: readers and writers, with what every column means.

These are the lists the public VID codebases (FGFA/DFF, MEGA, SELSA, LSTS...) train and test
from. All paths are relative to ``Data/VID`` (or ``Data/DET``) and carry no extension.

=============================  =================================================================
file                           one line per ...
=============================  =================================================================
``VID_train_15frames.txt``     training reference frame: ``train/<video> 1 <frame_id> <video_len>``
``VID_train_every10frames.txt`` same columns, every 10th frame of each training video
``VID_val_videos.txt``         val video: ``val/<video> <global start index> 0 <video_len>``
``VID_val_frames.txt``         val frame: ``val/<video>/<frame:06d> <global index>``
``DET_train_30classes.txt``    DET still: ``train/<path> 1``
=============================  =================================================================

* ``<video>`` of a training video includes its chunk folder (``ILSVRC2015_VID_train_0000/...``).
* ``<frame_id>`` is the 0-based frame number (the ``<frame:06d>`` of the file name).
* ``<global index>`` is 1-based and runs over all val frames in list order; it is the first column
  of the devkit detection file. ``<global start index>`` is the global index of a video's frame 0.
* The constant columns (``1`` and ``0``) are placeholders kept from the original lists
  (FGFA reads them as a "flipped" flag / a pattern slot); they carry no information.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.data.errors import BadInputPolicy, DataError, OnBadInput, first_few
from harness.data.records import VideoRecord


@dataclass(frozen=True)
class TrainFrameEntry:
    """A line of ``VID_train_15frames.txt`` / ``VID_train_every10frames.txt``."""

    video: str  # "train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000"
    frame_id: int  # 0-based frame number of the reference frame
    video_len: int  # number of frames of the video


@dataclass(frozen=True)
class ValVideoEntry:
    """A line of ``VID_val_videos.txt``."""

    video: str  # "val/ILSVRC2015_val_00000000"
    start_index: int  # 1-based global index of the video's first frame
    video_len: int


def _split_lines(path: Path, num_columns: int) -> list[tuple[int, list[str]]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: list file not found")
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        columns = line.split()
        if len(columns) != num_columns:
            raise DataError(f"{path}:{line_no}: expected {num_columns} columns, got {len(columns)}: {line!r}")
        rows.append((line_no, columns))
    return rows


def _to_int(path: Path, line_no: int, text: str, column: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{path}:{line_no}: column {column} is not an integer: {text!r}") from None


def read_train_frames(path: str | Path) -> list[TrainFrameEntry]:
    """Read ``VID_train_15frames.txt`` or ``VID_train_every10frames.txt``.

    Columns: ``train/<video>`` ``1`` (unused) ``<frame_id>`` (0-based) ``<video_len>`` (frames in the video).
    """
    rows = _split_lines(Path(path), 4)
    return [
        TrainFrameEntry(
            video=cols[0],
            frame_id=_to_int(path, n, cols[2], "frame_id"),
            video_len=_to_int(path, n, cols[3], "video_len"),
        )
        for n, cols in rows
    ]


def write_train_frames(entries: Iterable[TrainFrameEntry], path: str | Path) -> None:
    """Write a training frame list: ``<video> 1 <frame_id> <video_len>`` per line."""
    lines = [f"{e.video} 1 {e.frame_id} {e.video_len}" for e in entries]
    Path(path).write_text("\n".join(lines) + "\n")


def read_val_videos(path: str | Path) -> list[ValVideoEntry]:
    """Read ``VID_val_videos.txt``.

    Columns: ``val/<video>`` ``<global start index>`` (1-based global index of frame 0) ``0`` (unused)
    ``<video_len>``.
    """
    rows = _split_lines(Path(path), 4)
    return [
        ValVideoEntry(
            video=cols[0],
            start_index=_to_int(path, n, cols[1], "start_index"),
            video_len=_to_int(path, n, cols[3], "video_len"),
        )
        for n, cols in rows
    ]


def write_val_videos(entries: Iterable[ValVideoEntry], path: str | Path) -> None:
    """Write ``VID_val_videos.txt``: ``<video> <global start index> 0 <video_len>`` per line."""
    lines = [f"{e.video} {e.start_index} 0 {e.video_len}" for e in entries]
    Path(path).write_text("\n".join(lines) + "\n")


def read_val_frames(path: str | Path) -> dict[tuple[str, int], int]:
    """Read ``VID_val_frames.txt`` into ``{(video, frame_id): global index}``.

    Columns: ``val/<video>/<frame:06d>`` ``<global index>`` (1-based, the devkit detection file's first
    column). A frame listed twice, an index used twice or an index below 1 raises :class:`DataError`
    naming the file and line.
    """
    path = Path(path)
    index: dict[tuple[str, int], int] = {}
    line_of_frame: dict[tuple[str, int], int] = {}
    line_of_index: dict[int, int] = {}
    for n, cols in _split_lines(path, 2):
        video, _, frame = cols[0].rpartition("/")
        if not video:
            raise DataError(f"{path}:{n}: expected '<video>/<frame>', got {cols[0]!r}")
        key = (video, _to_int(path, n, frame, "frame"))
        global_index = _to_int(path, n, cols[1], "global index")
        # a repeated frame or index would send a detection line to the wrong frame: refuse the list here,
        # so the evaluation never blames the detection file for it
        if key in line_of_frame:
            raise DataError(f"{path}:{n}: frame {cols[0]} is already listed on line {line_of_frame[key]}")
        if global_index <= 0:
            raise DataError(f"{path}:{n}: global index {global_index} must be positive (it is 1-based)")
        if global_index in line_of_index:
            raise DataError(
                f"{path}:{n}: global index {global_index} is already used on line "
                f"{line_of_index[global_index]}"
            )
        line_of_frame[key], line_of_index[global_index] = n, n
        index[key] = global_index
    return index


def write_val_frames(frames: Iterable[tuple[str, int]], path: str | Path) -> None:
    """Write ``VID_val_frames.txt`` for ``(video, frame_id)`` pairs in order; global indices are 1-based."""
    lines = [f"{video}/{frame_id:06d} {i}" for i, (video, frame_id) in enumerate(frames, start=1)]
    Path(path).write_text("\n".join(lines) + "\n")


def read_det_list(path: str | Path) -> list[str]:
    """Read ``DET_train_30classes.txt``.

    Columns: ``train/<path>`` (under ``Data/DET``, no extension), ``1``.
    """
    return [cols[0] for _, cols in _split_lines(Path(path), 2)]


def write_det_list(paths: Iterable[str], path: str | Path) -> None:
    """Write ``DET_train_30classes.txt``: ``<path> 1`` per line."""
    Path(path).write_text("".join(f"{p} 1\n" for p in paths))


def check_listed_frames(
    frames: Sequence[tuple[str, int]],
    videos: Sequence[VideoRecord],
    *,
    source: str | Path,
    split: str,
    on_bad_input: OnBadInput = "raise",
) -> list[tuple[str, int]]:
    """The ``(video, frame_id)`` pairs of a training list (read from ``source``) that are among ``videos``.

    A list naming a video the split does not have, or a frame its video does not have, names the wrong
    data (another root, an old list): :class:`DataError` naming ``source`` and the first missing
    entries; under ``on_bad_input="skip"`` they are left out, counted and logged.
    """
    loaded = {video.name: {frame.frame_id for frame in video.frames} for video in videos}
    policy = BadInputPolicy(on_bad_input)
    no_video = [pair for pair in frames if pair[0] not in loaded]
    if no_video:
        names = list(dict.fromkeys(video for video, _ in no_video))
        policy.problem(
            "frame",
            "listed video not in the split",
            str(source),
            f"{len(no_video)} listed frame(s) of {len(names)} video(s) not in split {split!r}: "
            + first_few(names),
            count=len(no_video),
        )
    no_frame = [pair for pair in frames if pair[0] in loaded and pair[1] not in loaded[pair[0]]]
    if no_frame:
        policy.problem(
            "frame",
            "listed frame not in its video",
            str(source),
            f"{len(no_frame)} listed frame(s) not in split {split!r}: "
            + first_few([f"{video}/{frame_id:06d}" for video, frame_id in no_frame]),
            count=len(no_frame),
        )
    policy.log_summary(f"training list {source}")
    return [pair for pair in frames if pair[1] in loaded.get(pair[0], ())]
