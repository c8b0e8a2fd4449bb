"""Devkit detection files: exact format, round trip, and bad lines named by line number."""

from __future__ import annotations

import numpy as np
import pytest

from harness.eval.detfile import (
    global_index_map,
    read_devkit_detections,
    read_devkit_file,
    write_devkit_detections,
)
from tests.eval.eval_builders import make_dets, make_frame, make_video, random_split


def _videos():
    frames = [make_frame("val/a", t, global_index=t + 1) for t in range(3)]
    return [make_video("val/a", frames)]


def _read_text(tmp_path, text, videos=None, **kwargs):
    path = tmp_path / "dets.txt"
    path.write_text(text)
    return read_devkit_file(path, videos or _videos(), progress=False, **kwargs).detections


def test_written_lines_by_hand(tmp_path):
    videos = _videos()
    dets = {
        ("val/a", 2): make_dets([[1, 2, 3.5, 4]], [0.25], [1]),
        ("val/a", 0): make_dets([[0, 0, 10, 10], [5, 5, 6, 6]], [0.5, 0.125], [0, 0]),
    }
    path = tmp_path / "out.txt"
    assert write_devkit_detections(path, videos, dets, progress=False) == 3
    # Global-index order; class is label + 1.
    assert path.read_text().splitlines() == ["1 1 0.5 0 0 10 10", "1 1 0.125 5 5 6 6", "3 2 0.25 1 2 3.5 4"]


def test_round_trip_is_exact(tmp_path):
    videos, perfect = random_split(np.random.default_rng(0), num_videos=3, num_frames=6)
    rng = np.random.default_rng(1)
    dets = {
        key: make_dets(d.boxes + rng.uniform(0, 1, d.boxes.shape), rng.uniform(0, 1, len(d)), d.labels)
        for key, d in perfect.items()
    }
    dets[next(iter(dets))] = make_dets()  # an empty frame: absent after the round trip
    path = tmp_path / "dets.txt"
    write_devkit_detections(path, videos, dets, progress=False)
    back = read_devkit_detections(path, videos, progress=False)
    assert set(back) == {key for key, d in dets.items() if len(d)}
    for key, d in back.items():
        np.testing.assert_array_equal(d.boxes, dets[key].boxes)
        np.testing.assert_array_equal(d.scores, dets[key].scores)
        np.testing.assert_array_equal(d.labels, dets[key].labels)
        assert d.boxes.dtype == np.float32 and d.labels.dtype == np.int64


def test_blank_lines_and_empty_file(tmp_path):
    dets = _read_text(tmp_path, "\n2 1 0.5 0 0 4 4\n\n")
    assert list(dets) == [("val/a", 1)]
    assert _read_text(tmp_path, "") == {}


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("1 1 0.5 0 0 4 4\n2 1 0.5 0 0 4\n", r"dets.txt:2: expected 7 fields"),
        ("1 1 0.5 0 0 4 4 9\n", r"dets.txt:1: expected 7 fields"),
        ("1 1 nan 0 0 4 4\n", r"dets.txt:1: score 'nan' is not a finite number"),
        ("1 1 0.5 0 NaN 4 4\n", r"dets.txt:1: box .* has a non-finite coordinate"),
        ("1 1 0.5 0 0 inf 4\n", r"dets.txt:1: box .* has a non-finite coordinate"),
        ("1.5 1 0.5 0 0 4 4\n", r"dets.txt:1: global index '1.5' and class '1' must be integers"),
        ("1 1 high 0 0 4 4\n", r"dets.txt:1: score and box must be numbers"),
    ],
)
def test_unparsable_lines_raise_with_line_number(tmp_path, text, pattern):
    with pytest.raises(ValueError, match=pattern):
        _read_text(tmp_path, text)


def test_box_with_x2_below_x1_is_accepted(tmp_path):
    # Width 0.5 - 1 ... in the +1 convention: what detectors emit after clipping; FGFA scores it as an FP.
    dets = _read_text(tmp_path, "1 1 0.5 5 0 4.5 4\n2 2 0.25 3 8 9 2\n")
    np.testing.assert_array_equal(dets[("val/a", 0)].boxes, [[5, 0, 4.5, 4]])
    np.testing.assert_array_equal(dets[("val/a", 1)].boxes, [[3, 8, 9, 2]])


def test_lines_the_official_tools_skip_are_counted(tmp_path):
    lines = ["9 1 0.5 0 0 4 4", "1 1 0.5 0 0 4 4", "", "1 0 0.5 0 0 4 4", "12 2 0.5 0 0 4 4"]
    lines.append("2 3 0.5 0 0 4 4")
    text = "\n".join([*lines, "3 0 0.1 1 1 2 2"]) + "\n"
    path = tmp_path / "dets.txt"
    path.write_text(text)
    read = read_devkit_file(path, _videos(), progress=False)
    assert list(read.detections) == [("val/a", 0)] and len(read.detections[("val/a", 0)]) == 1
    assert read.skipped == {"unknown_index": 2, "background": 2, "unknown_class": 1}
    assert read.first_skipped == {"unknown_index": 1, "background": 4, "unknown_class": 6}  # line 3 is blank
    summary = read.summary()
    assert summary.startswith(f"{path}: skipped 5 line(s)") and "\n" not in summary
    assert "2 with class 0 (background) (first: line 4)" in summary
    # The plain reader returns the same detections (and logs the summary).
    assert list(read_devkit_detections(path, _videos(), progress=False)) == [("val/a", 0)]


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("1 1 0.5 0 0 4 4\n\n9 1 0.5 0 0 4 4\n", r"dets.txt:3: unknown global index 9"),
        ("1 1 0.5 0 0 4 4\n1 3 0.5 0 0 4 4\n", r"dets.txt:2: class index 3 outside 1..2"),
        ("1 0 0.5 0 0 4 4\n", r"dets.txt:1: class index 0 outside 1..2"),
    ],
)
def test_strict_refuses_skipped_lines(tmp_path, text, pattern):
    with pytest.raises(ValueError, match=pattern):
        _read_text(tmp_path, text, strict=True)
    assert _read_text(tmp_path, text) is not None  # accepted (skipped) without strict


def test_subset_skips_other_frames_even_when_strict(tmp_path):
    dets = _read_text(tmp_path, "1 1 0.5 0 0 4 4\n9 1 0.5 0 0 4 4\n", strict=True, subset=True)
    assert list(dets) == [("val/a", 0)]
    with pytest.raises(ValueError, match="dets.txt:2: class index 0"):  # other lines still refused
        _read_text(tmp_path, "9 1 0.5 0 0 4 4\n1 0 0.5 0 0 4 4\n", strict=True, subset=True)


def test_write_errors_name_the_frame(tmp_path):
    videos = [make_video("val/a", [make_frame("val/a", 0, global_index=0)])]
    with pytest.raises(ValueError, match=r"frame \('val/a', 0\) has no global index"):
        write_devkit_detections(
            tmp_path / "x.txt", videos, {("val/a", 0): make_dets([[0, 0, 1, 1]], [0.5], [0])}, progress=False
        )
    with pytest.raises(KeyError, match=r"\('val/b', 0\)"):
        write_devkit_detections(tmp_path / "x.txt", videos, {("val/b", 0): make_dets()}, progress=False)
    duplicated = [
        make_video("val/a", [make_frame("val/a", 0, global_index=4), make_frame("val/a", 1, global_index=4)])
    ]
    with pytest.raises(ValueError, match="global index 4 is used by both"):
        global_index_map(duplicated)
