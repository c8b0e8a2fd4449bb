"""ILSVRC2015 VID / DET reader (and writer) for a root as it lies on disk.

Layout (SynthVID is written in the very same one and read back through this module)::

    <root>/Data/VID/val/<video>/<frame:06d>.JPEG
    <root>/Data/VID/train/<chunk>/<video>/<frame:06d>.JPEG      # train videos sit one folder deeper
    <root>/Annotations/VID/{train,val}/.../<frame:06d>.xml        # Pascal-VOC style, one per frame
    <root>/Data/DET/train/<path>.JPEG, <root>/Annotations/DET/train/<path>.xml
    <root>/ImageSets/*.txt                                        # FGFA lists, see imagesets.py
    <root>/Flow/VID/<split>/.../<video>.npz                       # SynthVID only: ground-truth flow

Video names keep the split prefix (``val/ILSVRC2015_val_00000000``, ``train/<chunk>/<video>``), as in
the FGFA lists, so a name is unique across splits.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lxml import etree
from tqdm import tqdm

from harness.data import imagesets
from harness.data.classes import VID_CLASSES
from harness.data.errors import (
    GAP_IN_FRAME_NUMBERS,
    BadInputPolicy,
    DataError,
    OnBadInput,
    SkipReport,
    first_few,
)
from harness.data.records import FrameRecord, VideoRecord

SYNTHVID_META = "synthvid.json"
_PROGRESS_MIN_FILES = 2000  # show a progress bar when reading at least this many annotation files


def dataset_classes(root: str | Path) -> tuple[str, ...]:
    """Class list of a VID-layout root: SynthVID's (from ``synthvid.json``) or the 30 VID WordNet ids."""
    meta_path = Path(root) / SYNTHVID_META
    if meta_path.is_file():
        try:
            classes = json.loads(meta_path.read_text())["classes"]
        except (json.JSONDecodeError, KeyError) as error:
            raise DataError(f"{meta_path}: cannot read the class list ({error})") from None
        return tuple(classes)
    return VID_CLASSES


# ---------------------------------------------------------------------------------------------
# One annotation file
# ---------------------------------------------------------------------------------------------


@dataclass
class _ParsedFrame:
    width: int
    height: int
    boxes: list[list[float]]
    labels: list[int]
    track_ids: list[int]
    occluded: list[bool]
    generated: list[bool]
    degradation: list[int]


def _int_field(element, tag: str, xml_path: Path, default: int | None = None) -> int:
    text = element.findtext(tag)
    if text is None:
        if default is not None:
            return default
        raise DataError(f"{xml_path}: missing field <{tag}>")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):  # "inf", "nan", "1e400", "ten": int() would raise OverflowError on some
        raise DataError(f"{xml_path}: field <{tag}> is not a finite number: {text!r}")
    return int(value)


def parse_annotation(
    xml_path: Path,
    *,
    class_to_index: dict[str, int],
    policy: BadInputPolicy,
    drop_other_classes: bool = False,
    track_ids_required: bool = False,
) -> _ParsedFrame | None:
    """Parse one VID/DET annotation file; ``None`` when the whole frame is skipped.

    Frame-level problems (missing file, malformed XML, missing size) raise or skip the frame; box-level
    problems (unknown class, malformed, non-finite or out-of-image box) raise or skip the box. With
    ``drop_other_classes`` objects of classes outside ``class_to_index`` are dropped on purpose (DET
    images carry 200 classes, of which the 30 VID ones are used). With ``track_ids_required`` (VID
    frames) an object without ``<trackid>``, or with the ``<trackid>`` of an earlier object of the frame,
    is bad input: numbering it by position could merge two tracks and change the motion buckets. DET
    stills carry no track ids; their objects are numbered 0, 1, 2...
    """
    try:
        root = etree.parse(str(xml_path)).getroot()
    except OSError:
        policy.problem("frame", "missing or unreadable annotation", str(xml_path))
        return None
    except etree.XMLSyntaxError as error:
        policy.problem("frame", "malformed XML", str(xml_path), str(error))
        return None
    try:
        size = root.find("size")
        if size is None:
            raise DataError(f"{xml_path}: missing <size>")
        width, height = _int_field(size, "width", xml_path), _int_field(size, "height", xml_path)
        if width <= 0 or height <= 0:
            raise DataError(f"{xml_path}: non-positive image size {width}x{height}")
    except DataError as error:
        policy.problem("frame", "bad <size>", str(xml_path), str(error))
        return None

    parsed = _ParsedFrame(width, height, [], [], [], [], [], [])
    object_of_track: dict[int, int] = {}  # track id -> index of the object that has it in this frame
    for object_index, obj in enumerate(root.iterfind("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in class_to_index:
            if drop_other_classes:
                continue
            policy.problem("box", f"unknown class id {name!r}", str(xml_path), f"object {object_index}")
            continue
        try:
            bndbox = obj.find("bndbox")
            if bndbox is None:
                raise DataError(f"{xml_path}: object {object_index} has no <bndbox>")
            box = [_int_field(bndbox, tag, xml_path) for tag in ("xmin", "ymin", "xmax", "ymax")]
            has_track_id = obj.find("trackid") is not None
            track_id = _int_field(obj, "trackid", xml_path, default=object_index)
            occluded = _int_field(obj, "occluded", xml_path, default=0)
            generated = _int_field(obj, "generated", xml_path, default=0)
            degradation = _int_field(obj, "degradation", xml_path, default=0)
        except DataError as error:
            policy.problem("box", "malformed object", str(xml_path), str(error))
            continue
        x1, y1, x2, y2 = box
        if x2 < x1 or y2 < y1 or x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            policy.problem(
                "box",
                "box outside the image or inverted",
                str(xml_path),
                f"object {object_index} {name}: {box} in a {width}x{height} image",
            )
            continue
        if track_ids_required and not has_track_id:
            policy.problem("box", "object without <trackid>", str(xml_path), f"object {object_index} {name}")
            continue
        if track_ids_required and track_id in object_of_track:
            policy.problem(
                "box",
                "duplicate <trackid> in a frame",
                str(xml_path),
                f"object {object_index} {name}: <trackid> {track_id} is also object "
                f"{object_of_track[track_id]}'s",
            )
            continue
        object_of_track[track_id] = object_index
        parsed.boxes.append([float(v) for v in box])
        parsed.labels.append(class_to_index[name])
        parsed.track_ids.append(track_id)
        parsed.occluded.append(bool(occluded))
        parsed.generated.append(bool(generated))
        parsed.degradation.append(degradation)
    return parsed


def _frame_record(parsed: _ParsedFrame, *, video: str, frame_id: int, image_path: Path) -> FrameRecord:
    return FrameRecord(
        video=video,
        frame_id=frame_id,
        image_path=str(image_path),
        width=parsed.width,
        height=parsed.height,
        boxes=np.asarray(parsed.boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(parsed.labels, np.int64),
        track_ids=np.asarray(parsed.track_ids, np.int64),
        occluded=np.asarray(parsed.occluded, bool),
        generated=np.asarray(parsed.generated, bool),
        degradation=np.asarray(parsed.degradation, np.int64),
    )


def annotation_xml(frame: FrameRecord, *, classes: tuple[str, ...], folder: str, filename: str) -> bytes:
    """VID-style XML of one frame (``degradation`` is SynthVID's extra per-object tag)."""
    root = etree.Element("annotation")
    etree.SubElement(root, "folder").text = folder
    etree.SubElement(root, "filename").text = filename
    source = etree.SubElement(root, "source")
    etree.SubElement(source, "database").text = "SynthVID" if classes != VID_CLASSES else "ILSVRC_2015"
    size = etree.SubElement(root, "size")
    etree.SubElement(size, "width").text = str(frame.width)
    etree.SubElement(size, "height").text = str(frame.height)
    for i in range(frame.num_objects):
        obj = etree.SubElement(root, "object")
        etree.SubElement(obj, "trackid").text = str(int(frame.track_ids[i]))
        etree.SubElement(obj, "name").text = classes[int(frame.labels[i])]
        bndbox = etree.SubElement(obj, "bndbox")
        for tag, value in zip(("xmax", "xmin", "ymax", "ymin"), frame.boxes[i][[2, 0, 3, 1]], strict=True):
            etree.SubElement(bndbox, tag).text = str(int(round(float(value))))
        etree.SubElement(obj, "occluded").text = str(int(frame.occluded[i]))
        etree.SubElement(obj, "generated").text = str(int(frame.generated[i]))
        etree.SubElement(obj, "degradation").text = str(int(frame.degradation[i]))
    return etree.tostring(root, pretty_print=True)


# ---------------------------------------------------------------------------------------------
# VID videos
# ---------------------------------------------------------------------------------------------


_LISTED_NOT_IN_SPLIT = "listed in VID_val_frames.txt but not in the split"
_STALE_LIST = (
    "the list is stale: write it again for this root, or remove it to number the frames in sorted order"
)


def _list_dir(path: Path) -> list[os.DirEntry]:
    try:
        return sorted(os.scandir(path), key=lambda entry: entry.name)
    except FileNotFoundError:
        return []


def _video_dirs(annotation_split_dir: Path) -> list[Path]:
    """Video folders under a split: those holding ``.xml`` files directly, or one folder deeper (train)."""
    videos = []
    for entry in _list_dir(annotation_split_dir):
        if not entry.is_dir():
            continue
        children = _list_dir(Path(entry.path))
        if any(child.name.endswith(".xml") for child in children) or not any(c.is_dir() for c in children):
            videos.append(Path(entry.path))  # a video (possibly empty: reported when read)
        else:
            videos.extend(Path(child.path) for child in children if child.is_dir())
    return videos


def _image_set_videos(path: Path) -> set[str]:
    """Video names named by an FGFA list (any of the VID lists)."""
    if "val_frames" in path.name:
        return {video for video, _ in imagesets.read_val_frames(path)}
    if "val_videos" in path.name:
        return {entry.video for entry in imagesets.read_val_videos(path)}
    return {entry.video for entry in imagesets.read_train_frames(path)}


def read_vid_split(
    root: str | Path,
    split: str,
    *,
    classes: tuple[str, ...] | None = None,
    image_set: str | Path | None = None,
    on_bad_input: OnBadInput = "raise",
    max_videos: int | None = None,
    skip_report: SkipReport | None = None,
    progress: bool = True,
) -> list[VideoRecord]:
    """Read the videos of one split of a VID-layout root (``progress``: bar from 2000 files on).

    Args:
        root: dataset root (holds ``Data/`` and ``Annotations/``).
        split: ``"train"``, ``"val"`` (or any folder under ``Annotations/VID``).
        classes: class ids in label order; default :func:`dataset_classes` of the root.
        image_set: optional FGFA list (path, or a file name under ``<root>/ImageSets``) restricting the
            videos read (all frames of each named video are read: supports need them).
        on_bad_input: ``"raise"`` a :class:`DataError` naming the file, or ``"skip"`` the bad
            box/frame/video and count it in ``skip_report`` (a warning with the summary is logged).
        max_videos: read only the first videos in sorted order (global indices stay those of the
            full split).

    Returns:
        Videos in sorted name order, frames in frame order. ``global_index`` (1-based) follows
        ``ImageSets/VID_val_frames.txt`` when the root has it, else the sorted order of all frames of
        the split. A list that covers the split must name exactly its frames (a frame on disk it does
        not list, or a listed frame not on disk, is bad input: the list is stale); a split the list does
        not cover at all (FGFA's lists val only) gets index 0.

    A video's frames must be numbered 0..n-1 without gaps (a number with neither an annotation nor an
    image is bad input; under ``"skip"`` each missing frame is counted and the rest kept).
    """
    root = Path(root)
    classes = dataset_classes(root) if classes is None else tuple(classes)
    class_to_index = {name: i for i, name in enumerate(classes)}
    policy = BadInputPolicy(on_bad_input, skip_report)
    annotation_split_dir = root / "Annotations" / "VID" / split
    if not annotation_split_dir.is_dir():
        raise DataError(f"{annotation_split_dir}: annotation folder of split {split!r} not found")
    video_dirs = _video_dirs(annotation_split_dir)

    frame_lists = {}
    for video_dir in video_dirs:
        frame_lists[video_dir] = sorted(e.name for e in _list_dir(video_dir) if e.name.endswith(".xml"))
    val_frames_list = root / "ImageSets" / "VID_val_frames.txt"
    listed_index = imagesets.read_val_frames(val_frames_list) if val_frames_list.is_file() else None
    # The list numbers the frames of the split it covers (FGFA's: val); it must name exactly the frames
    # on disk, else detection files made from it point at the wrong frames. Other splits get index 0.
    listed_frames: dict[str, set[int]] = {}
    for video_name, frame_id in listed_index or {}:
        if video_name.startswith(f"{split}/"):
            listed_frames.setdefault(video_name, set()).add(frame_id)
    split_videos = {f"{split}/{d.relative_to(annotation_split_dir).as_posix()}" for d in video_dirs}
    ghosts = [
        f"{video}/{frame:06d}"
        for video in sorted(set(listed_frames) - split_videos)
        for frame in sorted(listed_frames[video])
    ]
    if ghosts:
        policy.problem(
            "frame",
            _LISTED_NOT_IN_SPLIT,
            str(val_frames_list),
            f"{first_few(ghosts)}: no such video under {annotation_split_dir}; {_STALE_LIST}",
            count=len(ghosts),
        )
    running_index, next_index = {}, 1
    for video_dir in video_dirs:  # sorted order of the whole split, before any restriction
        running_index[video_dir] = next_index
        next_index += len(frame_lists[video_dir])

    if image_set is not None:
        image_set_path = Path(image_set)
        if not image_set_path.is_file():
            image_set_path = root / "ImageSets" / image_set_path
        wanted = _image_set_videos(image_set_path)
        video_dirs = [
            d for d in video_dirs if f"{split}/{d.relative_to(annotation_split_dir).as_posix()}" in wanted
        ]
    if max_videos is not None:
        video_dirs = video_dirs[:max_videos]

    num_files = sum(len(frame_lists[d]) for d in video_dirs)
    progress = tqdm(
        total=num_files,
        desc=f"reading {split} annotations",
        unit="frame",
        disable=not progress or num_files < _PROGRESS_MIN_FILES,
        leave=False,
    )
    videos = []
    for video_dir in video_dirs:
        relative = video_dir.relative_to(annotation_split_dir).as_posix()
        video_name = f"{split}/{relative}"
        data_dir = root / "Data" / "VID" / split / relative
        images = {e.name for e in _list_dir(data_dir)}
        annotated = {name[: -len(".xml")] + ".JPEG" for name in frame_lists[video_dir]}
        for image_name in sorted(images - annotated):
            policy.problem(
                "frame",
                "image without annotation",
                str(data_dir / image_name),
                f"expected {video_dir / image_name.replace('.JPEG', '.xml')}",
            )
        # frame numbers with an annotation or an image (one without the other is reported on its own)
        on_disk = {int(name.split(".")[0]) for name in images | annotated if name.split(".")[0].isdigit()}
        missing = sorted(set(range(max(on_disk, default=-1) + 1)) - on_disk)
        if missing:
            policy.problem(
                "frame",
                GAP_IN_FRAME_NUMBERS,
                str(video_dir),
                f"frame numbers {first_few(missing, 10)} are missing; a video's frames are numbered 0..n-1",
                count=len(missing),
            )
        stale = sorted(listed_frames.get(video_name, set()) - on_disk)
        if stale:
            policy.problem(
                "frame",
                _LISTED_NOT_IN_SPLIT,
                str(val_frames_list),
                f"{first_few([f'{video_name}/{f:06d}' for f in stale])}: not in {video_dir}; {_STALE_LIST}",
                count=len(stale),
            )
        frames = []
        for position, xml_name in enumerate(frame_lists[video_dir]):
            progress.update(1)
            xml_path = video_dir / xml_name
            stem = xml_name[: -len(".xml")]
            try:
                frame_id = int(stem)
            except ValueError:
                policy.problem("frame", "annotation name is not a frame number", str(xml_path))
                continue
            if listed_frames and frame_id not in listed_frames.get(video_name, ()):
                policy.problem(
                    "frame",
                    "in the split but not listed in VID_val_frames.txt",
                    str(val_frames_list),
                    f"{video_name}/{frame_id:06d} ({xml_path}) has no global index; {_STALE_LIST}",
                )
                continue
            image_path = data_dir / f"{stem}.JPEG"
            if image_path.name not in images:
                policy.problem("frame", "missing image", str(image_path), f"annotated by {xml_path}")
                continue
            parsed = parse_annotation(
                xml_path, class_to_index=class_to_index, policy=policy, track_ids_required=True
            )
            if parsed is None:
                continue
            frame = _frame_record(parsed, video=video_name, frame_id=frame_id, image_path=image_path)
            if listed_index is not None:
                frame.global_index = listed_index.get((video_name, frame_id), 0)
            else:
                frame.global_index = running_index[video_dir] + position
            frames.append(frame)
        if not frames:
            policy.problem("video", "empty video (no readable frames)", str(video_dir))
            continue
        flow_path = root / "Flow" / "VID" / f"{video_name}.npz"
        videos.append(
            VideoRecord(
                name=video_name,
                frames=frames,
                classes=classes,
                flow_path=str(flow_path) if flow_path.is_file() else None,
            )
        )
    progress.close()
    policy.log_summary(f"read_vid_split({root}, {split!r})")
    return videos


def read_det_split(
    root: str | Path,
    split: str = "train",
    *,
    classes: tuple[str, ...] | None = None,
    image_set: str | Path | None = None,
    on_bad_input: OnBadInput = "raise",
    max_images: int | None = None,
    drop_other_classes: bool = True,
    skip_report: SkipReport | None = None,
) -> list[VideoRecord]:
    """Read DET still images as one-frame videos (``is_still=True``, ``frame_id`` 0).

    The images are those of ``image_set`` (default ``<root>/ImageSets/DET_train_30classes.txt`` when
    present), else every annotation under ``Annotations/DET/<split>`` in sorted order. Objects of classes
    outside ``classes`` are dropped when ``drop_other_classes`` (real DET annotates 200 classes; the
    30 VID ones are kept), else they are bad input. Objects without ``trackid`` get 0, 1, 2...
    """
    root = Path(root)
    classes = dataset_classes(root) if classes is None else tuple(classes)
    class_to_index = {name: i for i, name in enumerate(classes)}
    policy = BadInputPolicy(on_bad_input, skip_report)
    list_path = Path(image_set) if image_set is not None else root / "ImageSets" / "DET_train_30classes.txt"
    if image_set is not None and not list_path.is_file():
        list_path = root / "ImageSets" / image_set
    if list_path.is_file():
        relative_paths = [
            p.partition("/")[2] for p in imagesets.read_det_list(list_path) if p.startswith(f"{split}/")
        ]
    else:
        annotation_dir = root / "Annotations" / "DET" / split
        if not annotation_dir.is_dir():
            raise DataError(f"{annotation_dir}: DET annotation folder not found (and no {list_path.name})")
        relative_paths = sorted(
            p.relative_to(annotation_dir).with_suffix("").as_posix() for p in annotation_dir.rglob("*.xml")
        )
    if max_images is not None:
        relative_paths = relative_paths[:max_images]

    stills = []
    for relative in tqdm(
        relative_paths,
        desc=f"reading DET {split}",
        unit="image",
        disable=len(relative_paths) < _PROGRESS_MIN_FILES,
        leave=False,
    ):
        xml_path = root / "Annotations" / "DET" / split / f"{relative}.xml"
        image_path = root / "Data" / "DET" / split / f"{relative}.JPEG"
        if not image_path.is_file():
            policy.problem("frame", "missing image", str(image_path), f"annotated by {xml_path}")
            continue
        parsed = parse_annotation(
            xml_path, class_to_index=class_to_index, policy=policy, drop_other_classes=drop_other_classes
        )
        if parsed is None:
            continue
        name = f"{split}/{relative}"
        frame = _frame_record(parsed, video=name, frame_id=0, image_path=image_path)
        stills.append(VideoRecord(name=name, frames=[frame], classes=classes, is_still=True))
    policy.log_summary(f"read_det_split({root}, {split!r})")
    return stills
