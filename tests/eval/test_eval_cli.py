"""``vodbench eval`` end to end on a tiny VID-layout root written by a small XML writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main

AIRPLANE, ANTELOPE = "n02691156", "n02419796"  # VID classes 1 and 2


def write_vid_frame(root: Path, video: str, frame_id: int, objects: list[tuple[int, str, list[int]]]) -> None:
    """Write ``Annotations/VID/val/<video>/<frame>.xml`` (objects: trackid, wnid, box) and an empty JPEG."""
    xml_dir = root / "Annotations" / "VID" / "val" / video
    image_dir = root / "Data" / "VID" / "val" / video
    xml_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    (image_dir / f"{frame_id:06d}.JPEG").write_bytes(b"")
    parts = [
        f"<annotation><folder>{video}</folder><filename>{frame_id:06d}</filename>"
        "<size><width>200</width><height>100</height></size>"
    ]
    for track, wnid, (x1, y1, x2, y2) in objects:
        parts.append(
            f"<object><trackid>{track}</trackid><name>{wnid}</name><bndbox><xmax>{x2}</xmax><xmin>{x1}</xmin>"
            f"<ymax>{y2}</ymax><ymin>{y1}</ymin></bndbox><occluded>0</occluded><generated>0</generated></object>"
        )
    parts.append("</annotation>")
    (xml_dir / f"{frame_id:06d}.xml").write_text("".join(parts))


@pytest.fixture
def vid_root(tmp_path):
    # Two videos of 3 frames; global indices follow the sorted order: video a -> 1..3, video b -> 4..6.
    for t in range(3):
        write_vid_frame(tmp_path, "ILSVRC2015_val_a", t, [(0, AIRPLANE, [10, 10, 59, 49])])
        write_vid_frame(tmp_path, "ILSVRC2015_val_b", t, [(0, ANTELOPE, [100 + 4 * t, 20, 139 + 4 * t, 69])])
    return tmp_path


def _run(vid_root, tmp_path, lines, *extra):
    dets = tmp_path / "dets.txt"
    dets.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "eval.json"
    code = main(
        [
            "eval",
            "--root",
            str(vid_root),
            "--split",
            "val",
            "--detections",
            str(dets),
            "--json",
            str(out),
            "--no-progress",
            *extra,
        ]
    )
    assert code == 0
    return json.loads(out.read_text())


def test_eval_command_all_protocols_with_motion(vid_root, tmp_path, capsys):
    # Airplane found in all its frames; antelope found in frame 4 only, plus a false positive.
    lines = [f"{i} 1 0.9 10 10 59 49" for i in (1, 2, 3)] + ["4 2 0.8 100 20 139 69", "5 2 0.95 0 0 20 20"]
    result = _run(vid_root, tmp_path, lines, "--motion")
    assert result["num_frames"] == 6 and result["num_gt"] == 6
    assert result["devkit"]["per_class"] == {AIRPLANE: 100.0, ANTELOPE: pytest.approx(50 / 3)}  # FP, TP of 3
    assert result["fixed"]["map"] == pytest.approx((100 + 100 / 6) / 2)
    assert result["coco"]["per_class_ap50"][AIRPLANE] == pytest.approx(100.0)
    assert set(result["devkit"]["motion"]) >= {"slow", "medium", "fast", "share"}
    assert result["meta"]["protocols"] == ["devkit", "fixed", "coco"]
    printed = capsys.readouterr().out
    assert "devkit" in printed and "coco" in printed and "slow" in printed


def test_eval_command_single_protocol_and_seq_nms(vid_root, tmp_path):
    # The antelope track is found everywhere but with a weak middle frame; Seq-NMS lifts it to the mean.
    lines = ["4 2 0.9 100 20 139 69", "5 2 0.1 104 20 143 69", "6 2 0.8 108 20 147 69", "1 1 0.5 10 10 59 49"]
    result = _run(vid_root, tmp_path, lines, "--protocol", "devkit", "--seq-nms")
    assert set(result) >= {"devkit", "meta"} and "coco" not in result and "fixed" not in result
    assert result["meta"]["seq_nms"] == {"rescore": "mean"}
    assert result["devkit"]["per_class"][ANTELOPE] == pytest.approx(100.0)


def _main(vid_root, tmp_path, text, *extra, progress=False):
    dets = tmp_path / "dets.txt"
    dets.write_text(text)
    argv = ["eval", "--root", str(vid_root), "--detections", str(dets), "--protocol", "devkit", *extra]
    return main(argv + ([] if progress else ["--no-progress"]))


def test_skipped_lines_are_counted_and_strict_refuses_them(vid_root, tmp_path, capsys):
    # Global index 99 is in no frame and class 0 is the background: FGFA skips both lines.
    lines = ["1 1 0.9 10 10 59 49", "99 1 0.9 10 10 59 49", "2 0 0.9 10 10 59 49"]
    result = _run(vid_root, tmp_path, lines)
    assert result["meta"]["skipped_lines"] == {"unknown_index": 1, "background": 1}
    err = capsys.readouterr().err
    assert "skipped 2 line(s)" in err and "(first: line 2)" in err and "--strict refuses them" in err
    assert _main(vid_root, tmp_path, "\n".join(lines) + "\n", "--strict") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vodbench eval: error: ") and "dets.txt:2: unknown global index 99" in err
    assert len(err.splitlines()) == 1


def test_unparsable_file_is_one_line_error_and_debug_shows_the_traceback(vid_root, tmp_path, capsys):
    text = "1 1 0.9 10 10 59 49\n2 1 0.9 10 10 59\n"
    assert _main(vid_root, tmp_path, text) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dets.txt:2: expected 7 fields" in err
    with pytest.raises(ValueError, match="dets.txt:2: expected 7 fields"):
        _main(vid_root, tmp_path, text, "--debug")


def test_box_with_x2_below_x1_is_scored_as_a_false_positive(vid_root, tmp_path):
    # Frame 1: a box 0.5 px wide (+1 convention) scored above the true box: FP, then TP; frames 2, 3 missed.
    lines = ["1 1 0.95 30 10 29.5 49", "1 1 0.9 10 10 59 49"]
    result = _run(vid_root, tmp_path, lines, "--protocol", "devkit")
    # Airplane: recall 1/3 at precision 1/2 -> AP 1/6; antelope: no detection -> 0.
    assert result["devkit"]["per_class"] == {AIRPLANE: pytest.approx(100 / 6), ANTELOPE: 0.0}


def test_root_given_as_the_parent_folder(tmp_path, capsys):
    # `vodbench generate --root P` writes P/<dataset>: eval --root P finds the one dataset below.
    parent = tmp_path / "data"
    dataset = parent / "synthvid-tiny-s0"
    write_vid_frame(dataset, "ILSVRC2015_val_a", 0, [(0, AIRPLANE, [10, 10, 59, 49])])
    lines = "1 1 0.9 10 10 59 49\n"
    assert _main(parent, tmp_path, lines) == 0
    assert f"using the dataset folder below it, {dataset}" in capsys.readouterr().err
    # Two datasets below: a one-line error naming both.
    write_vid_frame(parent / "other", "ILSVRC2015_val_a", 0, [(0, AIRPLANE, [10, 10, 59, 49])])
    assert _main(parent, tmp_path, lines) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds several datasets" in err
    assert str(dataset) in err and str(parent / "other") in err


def test_root_without_annotations_is_one_line_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _main(empty, tmp_path, "1 1 0.9 10 10 59 49\n") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"vodbench eval: error: --root {empty} has no Annotations/")
    assert _main(tmp_path / "missing", tmp_path, "") == 2
    assert "missing: no such folder" in capsys.readouterr().err


def test_no_progress_silences_every_bar(vid_root, tmp_path, capsys, monkeypatch):
    import harness.data.vid

    monkeypatch.setattr(harness.data.vid, "_PROGRESS_MIN_FILES", 0)  # show the annotation bar on 6 files
    text = "1 1 0.9 10 10 59 49\n4 2 0.8 100 20 139 69\n"
    assert _main(vid_root, tmp_path, text, "--protocol", "all", "--motion", progress=True) == 0
    shown = capsys.readouterr().err
    assert "reading val annotations" in shown and "read dets.txt" in shown and "eval:" in shown
    assert _main(vid_root, tmp_path, text, "--protocol", "all", "--motion") == 0
    assert capsys.readouterr().err == ""


def test_eval_command_on_a_subset_skips_other_videos_lines(vid_root, tmp_path):
    lines = ["1 1 0.9 10 10 59 49", "4 2 0.9 100 20 139 69"]
    result = _run(vid_root, tmp_path, lines, "--max-videos", "1", "--protocol", "fixed", "--strict")
    assert result["num_frames"] == 3 and result["fixed"]["per_class"] == {AIRPLANE: pytest.approx(100 / 3)}


def test_partition_motion_ranges_are_labelled(vid_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich would wrap the notes column at 80
    lines = [f"{i} 1 0.9 10 10 59 49" for i in (1, 2, 3)]
    default = _run(vid_root, tmp_path, lines, "--protocol", "devkit", "--motion")
    assert default["meta"]["motion_ranges"] == "fgfa" and default["devkit"]["motion"]["ranges"] == "fgfa"
    assert "not FGFA" not in capsys.readouterr().out
    result = _run(vid_root, tmp_path, lines, "--protocol", "devkit", "--motion", "--motion-ranges=partition")
    assert result["meta"]["motion_ranges"] == "partition"
    assert result["devkit"]["motion"]["ranges"] == "partition"
    assert "motion ranges: partition (vodbench's, not FGFA's)" in capsys.readouterr().out
