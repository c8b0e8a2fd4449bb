"""VID / DET / COCO-VID readers and FGFA lists, on the tiny SynthVID and on corrupted copies of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.data import imagesets
from harness.data.cache import FrameCache, decode_frame
from harness.data.classes import SYNTHVID_CLASSES, VID_CLASSES, display_name
from harness.data.cocovid import read_cocovid, write_cocovid
from harness.data.errors import DataError, SkipReport
from harness.data.vid import dataset_classes, read_det_split, read_vid_split

NUM_FRAMES = 12  # tiny preset


def first_xml(root: Path, split: str = "val") -> Path:
    return sorted((root / "Annotations" / "VID" / split).rglob("*.xml"))[0]


def test_vid_class_table():
    assert len(VID_CLASSES) == 30 and len(set(VID_CLASSES)) == 30
    assert VID_CLASSES[0] == "n02691156" and display_name("n02391049") == "zebra"


def test_read_splits(tiny_synthvid):
    assert dataset_classes(tiny_synthvid) == SYNTHVID_CLASSES
    train = read_vid_split(tiny_synthvid, "train")
    val = read_vid_split(tiny_synthvid, "val")
    assert [len(v) for v in train] == [NUM_FRAMES] * 4 and [len(v) for v in val] == [NUM_FRAMES] * 2
    assert train[0].name == "train/SYNTHVID_train_0000/synthvid_train_000000"  # one folder deeper
    assert val[1].name == "val/synthvid_val_000001"
    for video in train + val:
        assert video.flow_path is not None and Path(video.flow_path).is_file()
        assert [f.frame_id for f in video.frames] == list(range(NUM_FRAMES))
        for frame in video.frames:
            assert frame.boxes.dtype == np.float32 and frame.labels.max(initial=0) < len(SYNTHVID_CLASSES)
            assert np.all(frame.boxes[:, 2:] < 64) and np.all(frame.boxes >= 0)
            assert Path(frame.image_path).is_file()
    # val global indices follow VID_val_frames.txt: 1..24 in order
    assert [f.global_index for v in val for f in v.frames] == list(range(1, 2 * NUM_FRAMES + 1))
    assert sum(f.num_objects for v in train for f in v.frames) > 0


def test_max_videos_keeps_global_indices(tiny_copy):
    (tiny_copy / "ImageSets" / "VID_val_frames.txt").unlink()  # -> sorted order over the whole split
    full = read_vid_split(tiny_copy, "val")
    second = f"val/synthvid_val_000001 13 0 {NUM_FRAMES}\n"
    (tiny_copy / "ImageSets" / "second_val_videos.txt").write_text(second)
    last = read_vid_split(tiny_copy, "val", image_set="second_val_videos.txt")  # a subset
    assert len(last) == 1 and len(read_vid_split(tiny_copy, "val", max_videos=1)) == 1
    expected = list(range(NUM_FRAMES + 1, 2 * NUM_FRAMES + 1))
    assert [f.global_index for f in full[1].frames] == expected == [f.global_index for f in last[0].frames]


def test_image_set_restricts_videos(tiny_synthvid, tmp_path):
    entries = imagesets.read_train_frames(tiny_synthvid / "ImageSets" / "VID_train_15frames.txt")
    assert len(entries) == 4 * NUM_FRAMES  # videos shorter than 15 frames list every frame
    path = tmp_path / "one_video.txt"
    imagesets.write_train_frames([e for e in entries if e.video.endswith("000002")], path)
    videos = read_vid_split(tiny_synthvid, "train", image_set=path)
    assert [v.name for v in videos] == ["train/SYNTHVID_train_0001/synthvid_train_000002"]


def test_xml_fields_parsed_back(tiny_synthvid):
    from lxml import etree

    val = read_vid_split(tiny_synthvid, "val")
    frame = next(f for v in val for f in v.frames if f.num_objects)
    xml = tiny_synthvid / "Annotations" / "VID" / frame.video / f"{frame.frame_id:06d}.xml"
    tree = etree.parse(str(xml)).getroot()
    assert tree.findtext("filename") == f"{frame.frame_id:06d}"
    assert int(tree.findtext("size/width")) == frame.width == 64
    objects = tree.findall("object")
    assert [int(o.findtext("trackid")) for o in objects] == frame.track_ids.tolist()
    assert [o.findtext("name") for o in objects] == [SYNTHVID_CLASSES[i] for i in frame.labels]
    assert [float(o.findtext("bndbox/xmax")) for o in objects] == frame.boxes[:, 2].tolist()
    assert [int(o.findtext("degradation")) for o in objects] == frame.degradation.tolist()


def test_fgfa_lists(tiny_synthvid):
    sets = tiny_synthvid / "ImageSets"
    videos = imagesets.read_val_videos(sets / "VID_val_videos.txt")
    assert [(v.video, v.start_index, v.video_len) for v in videos] == [
        ("val/synthvid_val_000000", 1, NUM_FRAMES),
        ("val/synthvid_val_000001", NUM_FRAMES + 1, NUM_FRAMES),
    ]
    assert (sets / "VID_val_frames.txt").read_text().splitlines()[13] == "val/synthvid_val_000001/000001 14"
    every10 = imagesets.read_train_frames(sets / "VID_train_every10frames.txt")
    assert [e.frame_id for e in every10[:2]] == [0, 10] and every10[0].video_len == NUM_FRAMES
    lines = (sets / "VID_train_15frames.txt").read_text().splitlines()
    assert lines[0] == "train/SYNTHVID_train_0000/synthvid_train_000000 1 0 12"
    det = imagesets.read_det_list(sets / "DET_train_30classes.txt")
    assert len(det) == 20 and det[0] == "train/SYNTHVID_DET_train/synthvid_det_000000"


def test_list_with_wrong_columns_raises(tmp_path):
    path = tmp_path / "VID_val_videos.txt"
    path.write_text("val/a 1 0 10\nval/b 11 0\n")
    with pytest.raises(DataError, match=r"VID_val_videos.txt:2: expected 4 columns"):
        imagesets.read_val_videos(path)
    path.write_text("val/a one 0 10\n")
    with pytest.raises(DataError, match="start_index"):
        imagesets.read_val_videos(path)


def test_det_stills(tiny_synthvid):
    stills = read_det_split(tiny_synthvid)
    assert len(stills) == 20 and all(s.is_still and len(s) == 1 for s in stills)
    assert (
        stills[0].frames[0].image_path.endswith("Data/DET/train/SYNTHVID_DET_train/synthvid_det_000000.JPEG")
    )


def test_cocovid_round_trip(tiny_synthvid, tmp_path):
    for split in ("train", "val"):
        videos = read_vid_split(tiny_synthvid, split)
        path = tmp_path / f"{split}.json"
        write_cocovid(videos, path, image_root=tiny_synthvid / "Data" / "VID")
        back = read_cocovid(path, image_root=tiny_synthvid / "Data" / "VID")
        assert_same_videos(videos, back)
    # the JSON written by the generator reads back to the same records too
    shipped = read_cocovid(
        tiny_synthvid / "annotations" / "synthvid_val_cocovid.json", image_root=tiny_synthvid / "Data" / "VID"
    )
    assert_same_videos(read_vid_split(tiny_synthvid, "val"), shipped)


def test_cocovid_fields(tiny_synthvid):
    import json

    document = json.loads((tiny_synthvid / "annotations" / "synthvid_train_cocovid.json").read_text())
    image = document["images"][0]
    assert {"id", "video_id", "frame_id", "file_name", "width", "height", "is_vid_train_frame"} <= set(image)
    assert image["file_name"] == "train/SYNTHVID_train_0000/synthvid_train_000000/000000.JPEG"
    assert image["is_vid_train_frame"] is True  # frame 0 is in VID_train_15frames.txt
    annotation = document["annotations"][0]
    assert {
        "image_id",
        "video_id",
        "category_id",
        "instance_id",
        "bbox",
        "area",
        "iscrowd",
        "occluded",
        "generated",
    } <= set(annotation)
    x, y, w, h = annotation["bbox"]
    assert annotation["area"] == pytest.approx(w * h) and annotation["category_id"] >= 1
    assert [c["encode_name"] for c in document["categories"]] == list(SYNTHVID_CLASSES)


def assert_same_videos(expected, actual):
    assert [v.name for v in expected] == [v.name for v in actual]
    for a, b in zip(expected, actual, strict=True):
        assert a.classes == b.classes and a.flow_path == b.flow_path and len(a) == len(b)
        for fa, fb in zip(a.frames, b.frames, strict=True):
            assert (fa.video, fa.frame_id, fa.image_path, fa.width, fa.height, fa.global_index) == (
                fb.video,
                fb.frame_id,
                fb.image_path,
                fb.width,
                fb.height,
                fb.global_index,
            )
            for name in ("boxes", "labels", "track_ids", "occluded", "generated", "degradation"):
                np.testing.assert_array_equal(getattr(fa, name), getattr(fb, name), err_msg=name)


# ---------------------------------------------------------------------------------------------
# Bad input: raise naming the file, or skip and count
# ---------------------------------------------------------------------------------------------


def test_malformed_xml(tiny_copy):
    xml = first_xml(tiny_copy)
    xml.write_text("<annotation><size><width>64</width>")
    with pytest.raises(DataError, match=rf"{xml}: malformed XML"):
        read_vid_split(tiny_copy, "val")
    report = SkipReport()
    videos = read_vid_split(tiny_copy, "val", on_bad_input="skip", skip_report=report)
    assert report.count("frame") == 1 and len(videos[0]) == NUM_FRAMES - 1
    assert str(xml) in report.examples[0]


def test_missing_xml(tiny_copy):
    xml = first_xml(tiny_copy)
    xml.unlink()
    with pytest.raises(DataError, match="image without annotation"):
        read_vid_split(tiny_copy, "val")
    report = SkipReport()
    read_vid_split(tiny_copy, "val", on_bad_input="skip", skip_report=report)
    assert report.counts == {"frame: image without annotation": 1}


def test_missing_jpeg(tiny_copy):
    image = tiny_copy / "Data" / "VID" / "val" / "synthvid_val_000001" / "000005.JPEG"
    image.unlink()
    with pytest.raises(DataError, match=rf"{image}: missing image"):
        read_vid_split(tiny_copy, "val")
    report = SkipReport()
    videos = read_vid_split(tiny_copy, "val", on_bad_input="skip", skip_report=report)
    assert report.count("frame") == 1 and 5 not in [f.frame_id for f in videos[1].frames]


def test_truncated_jpeg_fails_on_decode(tiny_copy):
    videos = read_vid_split(tiny_copy, "val")
    frame = videos[0].frames[3]
    data = Path(frame.image_path).read_bytes()
    Path(frame.image_path).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{frame.image_path}: truncated JPEG"):
        decode_frame(frame)
    with pytest.raises(DataError, match="truncated"):
        FrameCache(32).video(videos[0])


def test_empty_video(tiny_copy):
    empty = tiny_copy / "Annotations" / "VID" / "val" / "synthvid_val_000002"
    empty.mkdir()
    with pytest.raises(DataError, match=rf"{empty}: empty video"):
        read_vid_split(tiny_copy, "val")
    report = SkipReport()
    assert len(read_vid_split(tiny_copy, "val", on_bad_input="skip", skip_report=report)) == 2
    assert report.count("video") == 1


def frame_with_objects(root: Path) -> Path:
    return next(
        p
        for p in sorted((root / "Annotations" / "VID" / "val").rglob("*.xml"))
        if "<object>" in p.read_text()
    )


def test_unknown_class(tiny_copy):
    xml = frame_with_objects(tiny_copy)
    name = xml.read_text().split("<name>")[1].split("</name>")[0]
    xml.write_text(xml.read_text().replace(f"<name>{name}</name>", "<name>n99999999</name>", 1))
    with pytest.raises(DataError, match=rf"{xml}: unknown class id 'n99999999'"):
        read_vid_split(tiny_copy, "val")
    report = SkipReport()
    read_vid_split(tiny_copy, "val", on_bad_input="skip", skip_report=report)
    assert report.count("box") == 1 and report.count("frame") == 0
    with pytest.raises(DataError, match="unknown class"):  # the VID table does not know SynthVID names
        read_vid_split(tiny_copy, "val", classes=VID_CLASSES)


def test_box_outside_image(tiny_copy):
    xml = frame_with_objects(tiny_copy)
    text = xml.read_text()
    xmax = text.split("<xmax>")[1].split("</xmax>")[0]
    xml.write_text(text.replace(f"<xmax>{xmax}</xmax>", "<xmax>500</xmax>", 1))
    with pytest.raises(DataError, match=rf"{xml}: box outside the image"):
        read_vid_split(tiny_copy, "val")
    report = SkipReport()
    read_vid_split(tiny_copy, "val", on_bad_input="skip", skip_report=report)
    assert report.counts == {"box: box outside the image or inverted": 1}


def test_missing_split_and_bad_policy(tiny_copy):
    with pytest.raises(DataError, match="test"):
        read_vid_split(tiny_copy, "test")
    with pytest.raises(ValueError, match="on_bad_input"):
        read_vid_split(tiny_copy, "val", on_bad_input="ignore")


def test_cocovid_bad_input(tiny_synthvid, tmp_path):
    import json

    videos = read_vid_split(tiny_synthvid, "val")
    path = tmp_path / "val.json"
    write_cocovid(videos, path, image_root=tiny_synthvid / "Data" / "VID")
    document = json.loads(path.read_text())
    document["annotations"][0]["category_id"] = 99
    document["annotations"][1]["bbox"] = [60, 60, 10, 10]
    path.write_text(json.dumps(document))
    with pytest.raises(DataError, match=rf"{path} .*unknown category_id 99"):
        read_cocovid(path, image_root=tiny_synthvid / "Data" / "VID")
    report = SkipReport()
    back = read_cocovid(
        path, image_root=tiny_synthvid / "Data" / "VID", on_bad_input="skip", skip_report=report
    )
    assert report.count("box") == 2
    assert sum(f.num_objects for v in back for f in v.frames) == len(document["annotations"]) - 2
    path.write_text("{not json")
    with pytest.raises(DataError, match="malformed JSON"):
        read_cocovid(path, image_root=tiny_synthvid)
