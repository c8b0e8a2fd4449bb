"""The ``evaluate`` entry point: result layout, JSON/NaN safety, the degradation split."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.data.records import DEGRADATIONS
from harness.eval.evaluate import evaluate
from tests.eval.eval_builders import make_dets, make_frame, make_video, random_split

MOTION_BLUR, OCCLUSION = 1 << DEGRADATIONS.index("motion_blur"), 1 << DEGRADATIONS.index("occlusion")


def _walk(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)
    else:
        yield value


def test_layout_is_json_serialisable_and_nan_free():
    videos, dets = random_split(
        np.random.default_rng(0), num_videos=2, num_frames=6, classes=("cat", "dog", "fox")
    )
    result = evaluate(videos, dets, progress=False)
    assert set(result) == {"devkit", "fixed", "coco", "degradation", "num_frames", "num_gt", "num_detections"}
    assert set(result["devkit"]) == {"map", "per_class", "classes_without_gt", "motion"}
    assert set(result["coco"]) >= {"ap50", "ap75", "ap50_95", "ap_vs_iou", "per_class_ap50"}
    assert set(result["degradation"]) == {"devkit", "fixed"}
    json.loads(json.dumps(result, allow_nan=False))  # raises on NaN / inf
    assert not any(isinstance(v, float) and math.isnan(v) for v in _walk(result))
    # A class without ground truth is listed, never averaged.
    missing = {"cat", "dog", "fox"} - set(result["devkit"]["per_class"])
    assert set(result["devkit"]["classes_without_gt"]) == missing == set(result["coco"]["classes_without_gt"])


def test_degradation_split_by_hand():
    box_a, box_b, box_c = [0, 0, 49, 49], [100, 0, 149, 49], [0, 100, 49, 149]
    frames = [
        make_frame("v", 0, [box_a, box_b], [0, 0], degradation=[0, MOTION_BLUR | OCCLUSION]),
        make_frame("v", 1, [box_c], [0], degradation=[OCCLUSION]),
    ]
    # The clean object and the occluded-only one are found; the blurred + occluded one is missed.
    dets = {("v", 0): make_dets([box_a], [0.9], [0]), ("v", 1): make_dets([box_c], [0.8], [0])}
    table = evaluate([make_video("v", frames)], dets, protocols=("devkit",), motion=False, progress=False)
    split = table["degradation"]["devkit"]
    # clean {a}: 100. degraded {b, c}: d1 hits ignored a (neither), d2 finds c -> recall 1/2 at precision 1.
    assert split["clean"] == pytest.approx(100.0)
    assert split["degraded"] == pytest.approx(50.0)
    assert split["occlusion"] == pytest.approx(50.0)
    assert split["motion_blur"] == pytest.approx(0.0)
    assert split["defocus"] is None and split["jpeg"] is None
    assert split["share"]["clean"] == pytest.approx(1 / 3) and split["share"]["occlusion"] == pytest.approx(
        2 / 3
    )
    assert table["devkit"]["map"] == pytest.approx(100 * 2 / 3)


def test_bad_arguments_raise():
    videos, dets = random_split(np.random.default_rng(0), num_videos=1, num_frames=2)
    with pytest.raises(ValueError, match=r"unknown protocol\(s\) \['voc07'\]"):
        evaluate(videos, dets, protocols=("devkit", "voc07"), progress=False)
    with pytest.raises(ValueError, match="no videos to evaluate"):
        evaluate([], {}, progress=False)
    bad = [make_video("v", [make_frame("v", 0, [[0, 0, 9, 9]], [0], degradation=[1 << 9])])]
    with pytest.raises(ValueError, match=r"\('v', 0\): degradation mask 512 has bits outside"):
        evaluate(bad, {}, protocols=("devkit",), motion=False, progress=False)
