"""VID / DET / COCO-VID readers and FGFA lists, on the tiny SynthVID and on corrupted copies of it."""

from __future__ import annotations

import json
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


# ---------------------------------------------------------------------------------------------
# Silently wrong labels and unnamed errors (issue 14, section 4)
# ---------------------------------------------------------------------------------------------


def val_xml(root: Path, video: int = 0, frame: int = 0) -> Path:
    return root / "Annotations" / "VID" / "val" / f"synthvid_val_{video:06d}" / f"{frame:06d}.xml"


def test_vid_object_without_trackid(tiny_copy):
    xml = val_xml(tiny_copy)  # three objects, track ids 0, 1, 2
    text = xml.read_text()
    assert text.count("<trackid>") == 3
    xml.write_text(text.replace("<trackid>2</trackid>", "", 1))
    with pytest.raises(DataError, match=rf"{xml}: object without <trackid>.*object 2"):
        read_vid_split(tiny_copy, "val")
    report = SkipReport()
    videos = read_vid_split(tiny_copy, "val", on_bad_input="skip", skip_report=report)
    assert report.counts == {"box: object without <trackid>": 1}
    assert videos[0].frames[0].track_ids.tolist() == [0, 1]
    # DET stills carry no track ids: their objects are numbered, as before
    assert read_det_split(tiny_copy)[0].frames[0].track_ids.tolist() == list(
        range(read_det_split(tiny_copy)[0].frames[0].num_objects)
    )


def test_vid_duplicate_trackid_in_a_frame(tiny_copy):
    xml = val_xml(tiny_copy)
    xml.write_text(xml.read_text().replace("<trackid>2</trackid>", "<trackid>0</trackid>", 1))
    duplicate = rf"{xml}: duplicate <trackid> in a frame \(object 2 .*<trackid> 0 is also object 0's"
    with pytest.raises(DataError, match=duplicate):
        read_vid_split(tiny_copy, "val")
    report = SkipReport()
    videos = read_vid_split(tiny_copy, "val", on_bad_input="skip", skip_report=report)
    assert report.counts == {"box: duplicate <trackid> in a frame": 1}
    assert videos[0].frames[0].track_ids.tolist() == [0, 1]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400", "ten"])
def test_vid_non_finite_coordinate(tiny_copy, value):
    xml = val_xml(tiny_copy)
    xml.write_text(xml.read_text().replace("<xmin>30</xmin>", f"<xmin>{value}</xmin>", 1))
    with pytest.raises(DataError, match=rf"{xml}: .*<xmin> is not a finite number: '{value}'"):
        read_vid_split(tiny_copy, "val")
    report = SkipReport()
    videos = read_vid_split(tiny_copy, "val", on_bad_input="skip", skip_report=report)
    assert report.counts == {"box: malformed object": 1}
    assert videos[0].frames[0].track_ids.tolist() == [1, 2]


def test_vid_non_finite_size(tiny_copy):
    xml = val_xml(tiny_copy)
    xml.write_text(xml.read_text().replace("<width>64</width>", "<width>inf</width>", 1))
    with pytest.raises(DataError, match=rf"{xml}: .*<width> is not a finite number"):
        read_vid_split(tiny_copy, "val")
    report = SkipReport()
    read_vid_split(tiny_copy, "val", on_bad_input="skip", skip_report=report)
    assert report.counts == {"frame: bad <size>": 1}


def test_vid_gap_in_frame_numbers(tiny_copy):
    video = "SYNTHVID_train_0000/synthvid_train_000001"
    annotation_dir = tiny_copy / "Annotations" / "VID" / "train" / video
    for frame in (4, 5):
        (annotation_dir / f"{frame:06d}.xml").unlink()
        (tiny_copy / "Data" / "VID" / "train" / video / f"{frame:06d}.JPEG").unlink()
    with pytest.raises(DataError, match=rf"{annotation_dir}: missing from .*numbers 4, 5 are missing"):
        read_vid_split(tiny_copy, "train")
    report = SkipReport()
    videos = read_vid_split(tiny_copy, "train", on_bad_input="skip", skip_report=report)
    assert report.counts == {"frame: missing from its video (gap in the frame numbers)": 2}
    assert [f.frame_id for f in videos[1].frames] == [0, 1, 2, 3, *range(6, NUM_FRAMES)]


def test_vid_missing_first_frame_is_a_gap(tiny_copy):
    video = "SYNTHVID_train_0000/synthvid_train_000000"
    (tiny_copy / "Annotations" / "VID" / "train" / video / "000000.xml").unlink()
    (tiny_copy / "Data" / "VID" / "train" / video / "000000.JPEG").unlink()
    with pytest.raises(DataError, match=r"synthvid_train_000000: missing from .*numbers 0 are missing"):
        read_vid_split(tiny_copy, "train")


def val_frames_path(root: Path) -> Path:
    return root / "ImageSets" / "VID_val_frames.txt"


def test_val_frames_duplicate_index(tiny_copy):
    path = val_frames_path(tiny_copy)
    lines = path.read_text().splitlines()
    lines[2] = "val/synthvid_val_000000/000002 2"  # index 2 is line 2's
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{path}:3: global index 2 is already used on line 2"):
        imagesets.read_val_frames(path)
    with pytest.raises(DataError, match=rf"{path}:3: global index 2"):  # the reader, before any evaluation
        read_vid_split(tiny_copy, "val")


def test_val_frames_duplicate_frame_and_bad_index(tmp_path):
    path = tmp_path / "VID_val_frames.txt"
    path.write_text("val/a/000000 1\nval/a/000001 2\nval/a/000000 3\n")
    with pytest.raises(DataError, match=rf"{path}:3: frame val/a/000000 is already listed on line 1"):
        imagesets.read_val_frames(path)
    path.write_text("val/a/000000 0\n")
    with pytest.raises(DataError, match=rf"{path}:1: global index 0 must be positive"):
        imagesets.read_val_frames(path)


def test_val_frames_naming_a_frame_not_on_disk(tiny_copy):
    path = val_frames_path(tiny_copy)
    with path.open("a") as handle:
        handle.write(f"val/synthvid_val_000001/{NUM_FRAMES:06d} {2 * NUM_FRAMES + 1}\n")
    stale = rf"{path}: listed in VID_val_frames.txt but not in the split \(val/synthvid_val_000001/000012: "
    stale += r".*the list is stale"
    with pytest.raises(DataError, match=stale):
        read_vid_split(tiny_copy, "val")
    report = SkipReport()
    videos = read_vid_split(tiny_copy, "val", on_bad_input="skip", skip_report=report)
    assert report.counts == {"frame: listed in VID_val_frames.txt but not in the split": 1}
    assert [f.global_index for v in videos for f in v.frames] == list(range(1, 2 * NUM_FRAMES + 1))


def test_val_frames_missing_a_frame_on_disk(tiny_copy):
    path = val_frames_path(tiny_copy)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")  # the last frame of the last video is not listed
    not_listed = rf"{path}: in the split but not listed .*\(val/synthvid_val_000001/000011 .*stale"
    with pytest.raises(DataError, match=not_listed):
        read_vid_split(tiny_copy, "val")
    report = SkipReport()
    videos = read_vid_split(tiny_copy, "val", on_bad_input="skip", skip_report=report)
    assert report.counts == {"frame: in the split but not listed in VID_val_frames.txt": 1}
    assert len(videos[1]) == NUM_FRAMES - 1 and 0 not in [f.global_index for v in videos for f in v.frames]
    # a split the list does not cover at all keeps global index 0, as before (FGFA lists val only)
    assert {f.global_index for v in read_vid_split(tiny_copy, "train") for f in v.frames} == {0}


# ---------------------------------------------------------------------------------------------
# COCO-VID: dangling references, missing keys, renumbered instances, duplicate or missing frames
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def cocovid_val(tiny_synthvid, tmp_path):
    """(path, document, image_root) of a COCO-VID file of the tiny val split, to corrupt."""
    image_root = tiny_synthvid / "Data" / "VID"
    path = tmp_path / "val.json"
    write_cocovid(read_vid_split(tiny_synthvid, "val"), path, image_root=image_root)
    return path, json.loads(path.read_text()), image_root


def write_json(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document))


def read_both_ways(path: Path, image_root: Path, match: str):
    """Assert the default refuses naming ``path`` and ``match``; return (videos, report) under skip."""
    with pytest.raises(DataError, match=rf"{path}.*{match}"):
        read_cocovid(path, image_root=image_root)
    report = SkipReport()
    videos = read_cocovid(path, image_root=image_root, on_bad_input="skip", skip_report=report)
    return videos, report


def num_boxes(videos) -> int:
    return sum(f.num_objects for v in videos for f in v.frames)


def test_cocovid_dangling_image_id(cocovid_val):
    path, document, image_root = cocovid_val
    document["annotations"][3]["image_id"] = 9999
    write_json(path, document)
    match = r"\(annotation 4\): dangling image_id \(image_id 9999 is not an image"
    videos, report = read_both_ways(path, image_root, match)
    assert report.counts == {"box: dangling image_id": 1}
    assert num_boxes(videos) == len(document["annotations"]) - 1


def test_cocovid_dangling_video_id(cocovid_val):
    path, document, image_root = cocovid_val
    document["images"][5]["video_id"] = 77
    write_json(path, document)
    match = r"\(image 6, .*\): dangling video_id \(video_id 77 is not a video"
    videos, report = read_both_ways(path, image_root, match)
    # the image is skipped; the gap it leaves in its video is counted apart from it
    assert report.counts == {
        "frame: dangling video_id": 1,
        "frame: missing from its video (gap in the frame numbers)": 1,
    }
    assert len(videos[0]) == NUM_FRAMES - 1


def test_cocovid_annotation_video_id_disagrees_with_its_image(cocovid_val):
    path, document, image_root = cocovid_val
    document["annotations"][0]["video_id"] = 2  # its image belongs to video 1
    write_json(path, document)
    match = r"\(annotation 1\): .*video_id 2 but its image 1 is in video 1"
    _, report = read_both_ways(path, image_root, match)
    assert report.counts == {"box: video_id disagrees with its image": 1}


def test_cocovid_without_instance_id(cocovid_val):
    path, document, image_root = cocovid_val
    del document["annotations"][2]["instance_id"]
    write_json(path, document)
    videos, report = read_both_ways(path, image_root, r"\(annotation 3\): missing key 'instance_id'")
    assert report.counts == {"box: missing key 'instance_id'": 1}
    assert num_boxes(videos) == len(document["annotations"]) - 1


def test_cocovid_duplicate_instance_id_in_a_frame(cocovid_val):
    path, document, image_root = cocovid_val
    first, second = [a for a in document["annotations"] if a["image_id"] == 1][:2]
    second["instance_id"] = first["instance_id"]
    write_json(path, document)
    _, report = read_both_ways(path, image_root, rf"\(annotation {second['id']}\): duplicate instance_id")
    assert report.counts == {"box: duplicate instance_id in a frame": 1}


@pytest.mark.parametrize(
    "section, key",
    [
        ("annotations", "bbox"),
        ("annotations", "image_id"),
        ("annotations", "category_id"),
        ("images", "width"),
        ("images", "height"),
        ("images", "frame_id"),
        ("images", "file_name"),
        ("images", "video_id"),
        ("images", "id"),
    ],
)
def test_cocovid_missing_key(cocovid_val, section, key):
    path, document, image_root = cocovid_val
    del document[section][3][key]
    write_json(path, document)
    videos, report = read_both_ways(path, image_root, rf"missing key '{key}'")
    kind = "box" if section == "annotations" else "frame"
    assert report.counts[f"{kind}: missing key {key!r}"] == 1
    if section == "images":  # the image and its boxes are left out (and the gap it leaves is counted)
        assert sum(len(v) for v in videos) == len(document["images"]) - 1
    else:
        assert num_boxes(videos) == len(document["annotations"]) - 1


@pytest.mark.parametrize("bbox", [[1, 2, 3], "1 2 3 4", [1, 2, float("nan"), 4], [1, "x", 3, 4]])
def test_cocovid_malformed_bbox(cocovid_val, bbox):
    path, document, image_root = cocovid_val
    document["annotations"][0]["bbox"] = bbox
    write_json(path, document)
    match = r"\(annotation 1\): malformed bbox \(bbox must be 4 finite numbers"
    _, report = read_both_ways(path, image_root, match)
    assert report.counts == {"box: malformed bbox": 1}


def test_cocovid_missing_video_key(cocovid_val):
    path, document, image_root = cocovid_val
    del document["videos"][1]["name"]
    write_json(path, document)
    videos, report = read_both_ways(path, image_root, r"\(video 2\): missing key 'name'")
    assert [v.name for v in videos] == ["val/synthvid_val_000000"]
    assert report.counts == {"video: missing key 'name'": 1}  # its images and boxes go with it


def test_cocovid_duplicate_frame_id(cocovid_val):
    path, document, image_root = cocovid_val
    copy = dict(document["images"][4], id=10_000, global_index=10_000)  # frame 4 of video 1, again
    document["images"].append(copy)
    write_json(path, document)
    videos, report = read_both_ways(
        path,
        image_root,
        (r"\(image 10000, .*\): duplicate frame_id \(duplicate frame_id 4 in video 1, also image 5"),
    )
    assert report.counts == {"frame: duplicate frame_id": 1}
    assert [f.frame_id for f in videos[0].frames] == list(range(NUM_FRAMES))


def test_cocovid_duplicate_ids(cocovid_val):
    path, document, image_root = cocovid_val
    document["images"][1]["id"] = document["images"][0]["id"]
    write_json(path, document)
    with pytest.raises(DataError, match=rf"{path}: image id 1 is used twice"):
        read_cocovid(path, image_root=image_root)
    document["images"][1]["id"] = 2
    document["videos"][1]["id"] = 1
    write_json(path, document)
    with pytest.raises(DataError, match=rf"{path}: video id 1 is used twice"):
        read_cocovid(path, image_root=image_root)


def test_cocovid_duplicate_global_index(cocovid_val):
    path, document, image_root = cocovid_val
    document["images"][7]["global_index"] = 3
    write_json(path, document)
    match = rf"{path} \(image 8, .*\): duplicate global_index \(global_index 3 is also image 3's"
    with pytest.raises(DataError, match=match):
        read_cocovid(path, image_root=image_root)


def test_cocovid_gap_in_frame_numbers(cocovid_val):
    path, document, image_root = cocovid_val
    (gone,) = [i["id"] for i in document["images"] if (i["video_id"], i["frame_id"]) == (2, 6)]
    document["images"] = [i for i in document["images"] if i["id"] != gone]
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] != gone]
    write_json(path, document)
    gap = r"\(video 2 val/synthvid_val_000001\): missing from .* \(frame numbers 6 are missing"
    videos, report = read_both_ways(path, image_root, gap)
    assert report.counts == {"frame: missing from its video (gap in the frame numbers)": 1}
    assert 6 not in [f.frame_id for f in videos[1].frames] and len(videos[1]) == NUM_FRAMES - 1


def test_cocovid_missing_category_key(cocovid_val):
    path, document, image_root = cocovid_val
    del document["categories"][0]["id"]
    write_json(path, document)
    with pytest.raises(DataError, match=rf"{path}: category 1: missing key 'id'"):
        read_cocovid(path, image_root=image_root)


def test_cocovid_train_frames_dangling_video_id(cocovid_val, tmp_path):
    from harness.data.cocovid import read_cocovid_train_frames

    path, document, _ = cocovid_val
    for image in document["images"]:
        image["is_vid_train_frame"] = image["frame_id"] == 0
    document["images"][0]["video_id"] = 77
    write_json(path, document)
    with pytest.raises(DataError, match=rf"{path} \(image 1, .*\): dangling video_id \(video_id 77 is not"):
        read_cocovid_train_frames(path)
    assert read_cocovid_train_frames(path, on_bad_input="skip") == [("val/synthvid_val_000001", 0)]
