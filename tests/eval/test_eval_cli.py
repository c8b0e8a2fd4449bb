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


def test_eval_command_rejects_a_bad_file(vid_root, tmp_path):
    with pytest.raises(ValueError, match=r"dets.txt:2: unknown global index 99"):
        _run(vid_root, tmp_path, ["1 1 0.9 10 10 59 49", "99 1 0.9 10 10 59 49"])


def test_eval_command_on_a_subset_skips_other_videos_lines(vid_root, tmp_path):
    lines = ["1 1 0.9 10 10 59 49", "4 2 0.9 100 20 139 69"]
    result = _run(vid_root, tmp_path, lines, "--max-videos", "1", "--protocol", "fixed")
    assert result["num_frames"] == 3 and result["fixed"]["per_class"] == {AIRPLANE: pytest.approx(100 / 3)}
