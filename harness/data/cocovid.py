"""COCO-VID JSON (mmtracking's ImageNet VID format), read and written compatibly.

Structure (extra keys are ignored by mmtracking and kept here so a round trip loses nothing)::

    videos:      [{id, name}]                                   # name: "val/ILSVRC2015_val_00000000"
    images:      [{id, video_id, frame_id, file_name, width, height, is_vid_train_frame,
                   global_index*}]                              # file_name relative to image_root
    annotations: [{id, image_id, video_id, category_id, instance_id, bbox: [x, y, w, h], area,
                   iscrowd, occluded, generated, degradation*}]
    categories:  [{id, name, encode_name}]                      # id 1-based; encode_name = class id
    (* = vodbench extras; a video's ``flow_file`` too, relative to the JSON file's folder)

Boxes: VID's ``x1, y1, x2, y2`` become ``[x1, y1, x2 - x1, y2 - y1]`` as mmtracking's converter does
(no "+1"), and back.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from harness.data.classes import display_name
from harness.data.errors import (
    GAP_IN_FRAME_NUMBERS,
    BadInputPolicy,
    DataError,
    OnBadInput,
    SkipReport,
    first_few,
)
from harness.data.records import FrameRecord, VideoRecord, check_frame_record


def write_cocovid(
    videos: list[VideoRecord],
    json_path: str | Path,
    image_root: str | Path,
    *,
    train_frames: set[tuple[str, int]] | None = None,
) -> None:
    """Write ``videos`` as one COCO-VID JSON file.

    Args:
        image_root: folder the ``file_name`` entries are relative to (``<root>/Data/VID``).
        train_frames: ``(video, frame_id)`` pairs flagged ``is_vid_train_frame`` (mmtracking marks the
            frames of ``VID_train_15frames.txt``); default none.
    """
    json_path, image_root = Path(json_path), Path(image_root)
    if not videos:
        raise ValueError(f"{json_path}: no videos to write")
    classes = videos[0].classes
    categories = [{"id": i + 1, "name": display_name(c), "encode_name": c} for i, c in enumerate(classes)]
    out_videos, images, annotations = [], [], []
    for video_id, video in enumerate(videos, start=1):
        if video.classes != classes:
            raise ValueError(f"{video.name}: class list differs from the first video's")
        entry = {"id": video_id, "name": video.name}
        if video.flow_path:
            entry["flow_file"] = os.path.relpath(video.flow_path, json_path.parent)
        out_videos.append(entry)
        for frame in video.frames:
            image_id = len(images) + 1
            images.append(
                {
                    "id": image_id,
                    "video_id": video_id,
                    "frame_id": frame.frame_id,
                    "file_name": Path(frame.image_path).relative_to(image_root).as_posix(),
                    "width": frame.width,
                    "height": frame.height,
                    "is_vid_train_frame": bool(train_frames and (video.name, frame.frame_id) in train_frames),
                    "global_index": frame.global_index,
                }
            )
            for i in range(frame.num_objects):
                x1, y1, x2, y2 = (float(v) for v in frame.boxes[i])
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "video_id": video_id,
                        "category_id": int(frame.labels[i]) + 1,
                        "instance_id": int(frame.track_ids[i]),
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": False,
                        "occluded": bool(frame.occluded[i]),
                        "generated": bool(frame.generated[i]),
                        "degradation": int(frame.degradation[i]),
                    }
                )
    document = {"videos": out_videos, "images": images, "annotations": annotations, "categories": categories}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(document))


def _load_document(json_path: Path) -> dict:
    """The parsed COCO-VID file; a missing or malformed file raises :class:`DataError` naming it."""
    try:
        return json.loads(json_path.read_text())
    except FileNotFoundError:
        raise DataError(f"{json_path}: COCO-VID file not found") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{json_path}: malformed JSON ({error})") from None


_IMAGE_KEYS = ("id", "video_id", "frame_id", "file_name", "width", "height")
_ANNOTATION_KEYS = ("image_id", "category_id", "bbox", "instance_id")


def _as_int(value) -> int | None:
    """``value`` as an int when it is an integral number (JSON ``3`` or ``3.0``), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    return int(value)


def _as_box(bbox) -> list[float] | None:
    """``[x, y, w, h]`` as 4 floats when it is a list of 4 finite numbers, else ``None``."""
    if not isinstance(bbox, list) or len(bbox) != 4:
        return None
    if any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in bbox):
        return None
    return [float(v) for v in bbox]


def _describe(kind: str, entry: dict, position: int) -> str:
    """``"image 12"``, or ``"image #5 (no id)"`` for the fifth entry of its list when it has no id."""
    return f"{kind} {entry['id']}" if "id" in entry else f"{kind} #{position} (no id)"


def _entries(document: dict, key: str, json_path: Path) -> list[dict]:
    entries = document[key]
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise DataError(f"{json_path}: {key!r} must be a list of objects")
    return entries


def _categories(document: dict, json_path: Path) -> tuple[tuple[str, ...], dict[int, int]]:
    """The class ids and ``category id -> 0-based label``; a malformed category raises (no skipping:
    without it every label would shift)."""
    categories = _entries(document, "categories", json_path)
    for position, category in enumerate(categories, start=1):
        for key in ("id", "name"):
            if key not in category:
                raise DataError(f"{json_path}: category {position}: missing key {key!r}")
        if _as_int(category["id"]) is None:
            raise DataError(f"{json_path}: category {position}: id {category['id']!r} is not an integer")
    categories = sorted(categories, key=lambda c: c["id"])
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        raise DataError(f"{json_path}: category ids are not unique: {ids}")
    classes = tuple(c.get("encode_name", c["name"]) for c in categories)
    return classes, {c["id"]: i for i, c in enumerate(categories)}


def _unique_ids(entries: list[dict], kind: str, json_path: Path) -> None:
    seen = set()
    for entry in entries:
        if "id" in entry and entry["id"] in seen:
            raise DataError(f"{json_path}: {kind} id {entry['id']} is used twice")
        seen.add(entry.get("id"))


def read_cocovid(
    json_path: str | Path,
    image_root: str | Path,
    *,
    on_bad_input: OnBadInput = "raise",
    skip_report: SkipReport | None = None,
) -> list[VideoRecord]:
    """Read a COCO-VID JSON into videos (in ``videos`` order, frames sorted by ``frame_id``).

    Class ids are the categories' ``encode_name`` (WordNet id) when present, else ``name``, in
    category-id order. ``global_index`` is read when present (0: the frame has none), else the running
    1-based index over the frames in that order.

    Bad input raises :class:`DataError` naming the file and the entry, or with ``on_bad_input="skip"``
    is left out and counted: a video without ``id``/``name``; an image without one of ``id``,
    ``video_id``, ``frame_id``, ``file_name``, ``width``, ``height``, whose ``video_id`` is no video, or
    that repeats a ``frame_id`` or ``global_index``; each frame number missing from a video (frames are
    numbered 0..n-1); an annotation without ``image_id``, ``category_id``, ``bbox`` or ``instance_id``
    (track ids are never made up), whose ``image_id`` is no image, whose ``video_id`` is not its image's,
    with an unknown category, a malformed or out-of-image box, or the ``instance_id`` of another box of
    its frame. Repeated video or image ids and malformed categories always raise. The images and boxes
    of a skipped video or image go with it (counted once, as the video or image).
    """
    json_path, image_root = Path(json_path), Path(image_root)
    policy = BadInputPolicy(on_bad_input, skip_report)
    document = _load_document(json_path)
    if not isinstance(document, dict):
        raise DataError(f"{json_path}: not a COCO-VID file (the top level is not an object)")
    for key in ("videos", "images", "annotations", "categories"):
        if key not in document:
            raise DataError(f"{json_path}: missing top-level key {key!r}")
    classes, category_to_label = _categories(document, json_path)

    videos_in = _entries(document, "videos", json_path)
    _unique_ids(videos_in, "video", json_path)
    kept_videos, skipped_videos, names = [], set(), set()
    for position, video in enumerate(videos_in, start=1):
        source = f"{json_path} ({_describe('video', video, position)})"
        missing = [key for key in ("id", "name") if key not in video]
        if missing:
            policy.problem("video", f"missing key {missing[0]!r}", source)
            if "id" in video:
                skipped_videos.add(video["id"])
            continue
        if video["name"] in names:
            raise DataError(f"{source}: video name {video['name']!r} is used twice")
        names.add(video["name"])
        kept_videos.append(video)
    video_by_id = {video["id"]: video for video in kept_videos}

    images_in = _entries(document, "images", json_path)
    _unique_ids(images_in, "image", json_path)
    images_of, image_by_id, skipped_images = defaultdict(list), {}, set()
    for position, image in enumerate(images_in, start=1):
        source = f"{json_path} ({_describe('image', image, position)}, {image.get('file_name', '?')})"
        missing = [key for key in _IMAGE_KEYS if key not in image]
        if missing:
            policy.problem("frame", f"missing key {missing[0]!r}", source)
            skipped_images.add(image.get("id"))
            continue
        if image["video_id"] in skipped_videos:  # left out with its video
            skipped_images.add(image["id"])
            continue
        if image["video_id"] not in video_by_id:
            policy.problem(
                "frame",
                "dangling video_id",
                source,
                f"video_id {image['video_id']} is not a video of the file",
            )
            skipped_images.add(image["id"])
            continue
        numbers = {key: _as_int(image[key]) for key in ("frame_id", "width", "height")}
        if (
            numbers["frame_id"] is None
            or numbers["frame_id"] < 0
            or min(numbers["width"] or 0, numbers["height"] or 0) <= 0
        ):
            policy.problem(
                "frame",
                "malformed image",
                source,
                "frame_id must be an integer >= 0, width and height positive integers: "
                f"{[image[key] for key in ('frame_id', 'width', 'height')]}",
            )
            skipped_images.add(image["id"])
            continue
        if "global_index" in image and (_as_int(image["global_index"]) is None or image["global_index"] < 0):
            policy.problem(
                "frame", "malformed image", source, f"global_index {image['global_index']!r} is not >= 0"
            )
            skipped_images.add(image["id"])
            continue
        image_by_id[image["id"]] = image
        images_of[image["video_id"]].append((numbers, image, source))

    annotations_of = defaultdict(list)
    for position, annotation in enumerate(_entries(document, "annotations", json_path), start=1):
        source = f"{json_path} ({_describe('annotation', annotation, position)})"
        missing = [key for key in _ANNOTATION_KEYS if key not in annotation]
        if missing:
            policy.problem("box", f"missing key {missing[0]!r}", source)
            continue
        if annotation["image_id"] in skipped_images:  # left out with its image
            continue
        image = image_by_id.get(annotation["image_id"])
        if image is None:
            policy.problem(
                "box",
                "dangling image_id",
                source,
                f"image_id {annotation['image_id']} is not an image of the file",
            )
            continue
        if "video_id" in annotation and annotation["video_id"] != image["video_id"]:
            policy.problem(
                "box",
                "video_id disagrees with its image",
                source,
                f"video_id {annotation['video_id']} but its image {image['id']} "
                f"is in video {image['video_id']}",
            )
            continue
        annotations_of[image["id"]].append((annotation, source))

    videos, running_index, global_indices = [], 1, {}
    for video in kept_videos:
        frames, image_of_frame = [], {}
        for numbers, image, source in sorted(images_of[video["id"]], key=lambda item: item[0]["frame_id"]):
            frame_id, width, height = numbers["frame_id"], numbers["width"], numbers["height"]
            if frame_id in image_of_frame:
                policy.problem(
                    "frame",
                    "duplicate frame_id",
                    source,
                    f"duplicate frame_id {frame_id} in video {video['id']}, "
                    f"also image {image_of_frame[frame_id]}",
                )
                continue
            image_of_frame[frame_id] = image["id"]
            global_index = _as_int(image["global_index"]) if "global_index" in image else running_index
            running_index += 1
            if global_index > 0 and global_index in global_indices:  # 0: no index (a training frame)
                policy.problem(
                    "frame",
                    "duplicate global_index",
                    source,
                    f"global_index {global_index} is also image {global_indices[global_index]}'s",
                )
                continue
            global_indices[global_index] = image["id"]
            boxes, labels, track_ids, kept = [], [], [], []
            for annotation, box_source in annotations_of[image["id"]]:
                if annotation["category_id"] not in category_to_label:
                    policy.problem("box", f"unknown category_id {annotation['category_id']}", box_source)
                    continue
                box = _as_box(annotation["bbox"])
                if box is None:
                    policy.problem(
                        "box",
                        "malformed bbox",
                        box_source,
                        f"bbox must be 4 finite numbers, got {annotation['bbox']!r}",
                    )
                    continue
                x, y, w, h = box
                if w < 0 or h < 0 or x < 0 or y < 0 or x + w > width or y + h > height:
                    policy.problem(
                        "box",
                        "box outside the image or negative size",
                        box_source,
                        f"bbox {annotation['bbox']} in {width}x{height}",
                    )
                    continue
                track_id = _as_int(annotation["instance_id"])
                if track_id is None:
                    policy.problem(
                        "box",
                        "malformed instance_id",
                        box_source,
                        f"{annotation['instance_id']!r} is not an integer",
                    )
                    continue
                if track_id in track_ids:
                    policy.problem(
                        "box",
                        "duplicate instance_id in a frame",
                        box_source,
                        f"instance_id {track_id} is also another box's of image {image['id']}",
                    )
                    continue
                boxes.append([x, y, x + w, y + h])
                labels.append(category_to_label[annotation["category_id"]])
                track_ids.append(track_id)
                kept.append(annotation)
            frame = FrameRecord(
                video=video["name"],
                frame_id=frame_id,
                image_path=str(image_root / image["file_name"]),
                width=width,
                height=height,
                boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                labels=np.asarray(labels, np.int64),
                track_ids=np.asarray(track_ids, np.int64),
                occluded=np.asarray([bool(a.get("occluded", False)) for a in kept], bool),
                generated=np.asarray([bool(a.get("generated", False)) for a in kept], bool),
                degradation=np.asarray([int(a.get("degradation", 0)) for a in kept], np.int64),
                global_index=global_index,
            )
            check_frame_record(frame, source)
            frames.append(frame)
        video_source = f"{json_path} (video {video['id']} {video['name']})"
        missing_frames = sorted(set(range(max(image_of_frame, default=-1) + 1)) - set(image_of_frame))
        if missing_frames:
            policy.problem(
                "frame",
                GAP_IN_FRAME_NUMBERS,
                video_source,
                f"frame numbers {first_few(missing_frames, 10)} are missing; "
                "a video's frames are numbered 0..n-1",
                count=len(missing_frames),
            )
        if not frames:
            policy.problem("video", "empty video (no images)", video_source)
            continue
        flow_file = video.get("flow_file")
        videos.append(
            VideoRecord(
                name=video["name"],
                frames=frames,
                classes=classes,
                flow_path=str((json_path.parent / flow_file).resolve()) if flow_file else None,
            )
        )
    policy.log_summary(f"read_cocovid({json_path})")
    return videos


TRAIN_FRAME_FLAG = "is_vid_train_frame"


def read_cocovid_train_frames(
    json_path: str | Path, *, on_bad_input: OnBadInput = "raise"
) -> list[tuple[str, int]]:
    """``(video name, frame_id)`` of the images flagged ``is_vid_train_frame``, in file order: the
    frames mmtracking trains on (the counterpart of :func:`write_cocovid`'s ``train_frames``).

    Raises :class:`DataError` naming the file when no image carries the flag at all (then the file
    cannot say which frames are training frames). A flagged image without ``video_id``/``frame_id``, or
    whose ``video_id`` is no video, raises too, or with ``on_bad_input="skip"`` is left out and counted."""
    json_path = Path(json_path)
    policy = BadInputPolicy(on_bad_input)
    document = _load_document(json_path)
    names = {
        video["id"]: video["name"] for video in document.get("videos", []) if {"id", "name"} <= set(video)
    }
    images = document.get("images", [])
    if not any(TRAIN_FRAME_FLAG in image for image in images):
        raise DataError(f"{json_path}: no image has {TRAIN_FRAME_FLAG!r}, so no training frames are marked")
    frames = []
    for position, image in enumerate(images, start=1):
        if not image.get(TRAIN_FRAME_FLAG, False):
            continue
        source = f"{json_path} ({_describe('image', image, position)}, {image.get('file_name', '?')})"
        missing = [key for key in ("video_id", "frame_id") if key not in image]
        if missing:
            policy.problem("frame", f"missing key {missing[0]!r}", source)
        elif image["video_id"] not in names:
            policy.problem(
                "frame",
                "dangling video_id",
                source,
                f"video_id {image['video_id']} is not a video of the file",
            )
        elif _as_int(image["frame_id"]) is None:
            policy.problem(
                "frame", "malformed image", source, f"frame_id {image['frame_id']!r} is not an integer"
            )
        else:
            frames.append((names[image["video_id"]], _as_int(image["frame_id"])))
    policy.log_summary(f"read_cocovid_train_frames({json_path})")
    return frames
