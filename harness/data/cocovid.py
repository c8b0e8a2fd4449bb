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
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from harness.data.classes import display_name
from harness.data.errors import BadInputPolicy, DataError, OnBadInput, SkipReport
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


def read_cocovid(
    json_path: str | Path,
    image_root: str | Path,
    *,
    on_bad_input: OnBadInput = "raise",
    skip_report: SkipReport | None = None,
) -> list[VideoRecord]:
    """Read a COCO-VID JSON into videos (in ``videos`` order, frames sorted by ``frame_id``).

    Class ids are the categories' ``encode_name`` (WordNet id) when present, else ``name``, in
    category-id order. ``global_index`` is read when present, else the running 1-based index over
    the frames in that order. Bad boxes (outside the image, unknown category) raise or are skipped.
    """
    json_path, image_root = Path(json_path), Path(image_root)
    policy = BadInputPolicy(on_bad_input, skip_report)
    document = _load_document(json_path)
    for key in ("videos", "images", "annotations", "categories"):
        if key not in document:
            raise DataError(f"{json_path}: missing top-level key {key!r}")
    categories = sorted(document["categories"], key=lambda c: c["id"])
    classes = tuple(c.get("encode_name", c["name"]) for c in categories)
    category_to_label = {c["id"]: i for i, c in enumerate(categories)}

    annotations_of = defaultdict(list)
    for annotation in document["annotations"]:
        annotations_of[annotation["image_id"]].append(annotation)
    images_of = defaultdict(list)
    for image in document["images"]:
        images_of[image["video_id"]].append(image)

    videos, running_index = [], 1
    for video in document["videos"]:
        frames = []
        for image in sorted(images_of[video["id"]], key=lambda im: im["frame_id"]):
            source = f"{json_path} (image {image['id']}, {image['file_name']})"
            kept = []
            for annotation in annotations_of[image["id"]]:
                if annotation["category_id"] not in category_to_label:
                    policy.problem("box", f"unknown category_id {annotation['category_id']}", source)
                    continue
                x, y, w, h = annotation["bbox"]
                if w < 0 or h < 0 or x < 0 or y < 0 or x + w > image["width"] or y + h > image["height"]:
                    policy.problem(
                        "box",
                        "box outside the image or negative size",
                        source,
                        f"bbox {annotation['bbox']} in {image['width']}x{image['height']}",
                    )
                    continue
                kept.append(annotation)
            frame = FrameRecord(
                video=video["name"],
                frame_id=int(image["frame_id"]),
                image_path=str(image_root / image["file_name"]),
                width=int(image["width"]),
                height=int(image["height"]),
                boxes=np.asarray(
                    [
                        [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                        for a in kept
                    ],
                    np.float32,
                ).reshape(-1, 4),
                labels=np.asarray([category_to_label[a["category_id"]] for a in kept], np.int64),
                track_ids=np.asarray([a.get("instance_id", i) for i, a in enumerate(kept)], np.int64),
                occluded=np.asarray([bool(a.get("occluded", False)) for a in kept], bool),
                generated=np.asarray([bool(a.get("generated", False)) for a in kept], bool),
                degradation=np.asarray([int(a.get("degradation", 0)) for a in kept], np.int64),
                global_index=int(image.get("global_index", running_index)),
            )
            running_index += 1
            check_frame_record(frame, source)
            frames.append(frame)
        if not frames:
            policy.problem("video", "empty video (no images)", f"{json_path} (video {video['name']})")
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


def read_cocovid_train_frames(json_path: str | Path) -> list[tuple[str, int]]:
    """``(video name, frame_id)`` of the images flagged ``is_vid_train_frame``, in file order: the
    frames mmtracking trains on (the counterpart of :func:`write_cocovid`'s ``train_frames``).

    Raises :class:`DataError` naming the file when no image carries the flag at all (then the file
    cannot say which frames are training frames)."""
    json_path = Path(json_path)
    document = _load_document(json_path)
    names = {video["id"]: video["name"] for video in document.get("videos", [])}
    images = document.get("images", [])
    if not any(TRAIN_FRAME_FLAG in image for image in images):
        raise DataError(f"{json_path}: no image has {TRAIN_FRAME_FLAG!r}, so no training frames are marked")
    return [
        (names[image["video_id"]], int(image["frame_id"]))
        for image in images
        if image.get(TRAIN_FRAME_FLAG, False) and image["video_id"] in names
    ]
