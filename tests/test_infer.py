"""Sliding-buffer inference: equivalence with a naive per-frame loop, one backbone pass per frame,
supports as planned, box mapping back to original pixels, collect hook. Stream inference: a window
method run as a stream gives the window engine's detections, batching and state reset change nothing,
keyframes follow each video's own positions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import harness.infer
from harness.aggregation import AggregationOutput, TemporalAggregator, TemporalContext
from harness.config import AggregationConfig, BackboneConfig, DataConfig, HeadConfig, ModelConfig, SupportSpec
from harness.data.cache import FrameCache
from harness.data.dataset import load_split, oracle_flow_for
from harness.data.records import FrameRecord
from harness.data.sampling import support_indices
from harness.data.synthvid import ensure_synthvid
from harness.infer import plan_supports, predict_split, to_original_pixels
from harness.model.detector import build_detector
from tests.stream_methods import HoldKeyframe, WindowAsStream

IMAGE_SIZE = 32  # SynthVID tiny frames are 64x64: letterbox scale 0.5
SLIDING = SupportSpec(strategy="sliding", radius=2, stride=1, boundary="pad")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = ensure_synthvid("tiny", seed=0, data_dir=tmp_path_factory.mktemp("synthvid"), progress=False)
    return load_split(DataConfig(root=str(root)), "val")


pytestmark = pytest.mark.usefixtures("one_thread")


def make_detector(num_classes: int, aggregation: AggregationConfig | None = None, single_frame: bool = False):
    torch.manual_seed(0)
    model = ModelConfig(
        num_classes=num_classes,
        backbone=BackboneConfig(width=8, depth=(1, 1), out_channels=16),
        head=HeadConfig(channels=16, num_convs=1, score_threshold=0.0, max_detections=20),
        aggregation=aggregation or AggregationConfig(alignment="identity", fusion="average"),
    )
    return build_detector(model, single_frame=single_frame).eval()


class ReferenceOnly(TemporalAggregator):
    """Returns the reference untouched whatever the supports: predictions must equal single-frame ones."""

    def forward(self, ctx: TemporalContext) -> AggregationOutput:
        ctx.validate()
        return AggregationOutput({"main": ctx.reference}, {"num_supports": torch.tensor(ctx.num_supports)})


def _assert_same_detections(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key].boxes, b[key].boxes, rtol=1e-5, atol=1e-4, err_msg=str(key))
        np.testing.assert_allclose(a[key].scores, b[key].scores, rtol=1e-5, atol=1e-6, err_msg=str(key))
        np.testing.assert_array_equal(a[key].labels, b[key].labels, err_msg=str(key))


def naive_predict(detector, videos, support):
    """Independent reference: every frame and each of its supports through the backbone on its own;
    images and ground-truth flow passed whenever the aggregator declares it needs them."""
    cache = FrameCache(IMAGE_SIZE)
    result = {}
    with torch.no_grad():
        for video in videos:
            for ref in range(len(video)):
                supports = support_indices(ref, len(video), support)
                frames = torch.from_numpy(np.stack([cache.frame(video, i) for i in [ref, *supports]]))
                features = torch.cat([detector.extract(frame[None]) for frame in frames])
                flow = None
                if detector.aggregator.needs_oracle_flow:
                    flow = torch.from_numpy(oracle_flow_for(video, ref, supports, IMAGE_SIZE))[None]
                agg = detector.aggregate(
                    features[:1],
                    features[None, 1:],
                    torch.as_tensor(supports - ref)[None],
                    torch.ones((1, len(supports)), dtype=torch.bool),
                    images=frames[:1],
                    support_images=frames[None, 1:],
                    oracle_flow=flow,
                )
                boxes, scores, labels = detector.detect(agg, IMAGE_SIZE)[0]
                frame = video.frames[ref]
                result[(frame.video, frame.frame_id)] = (
                    to_original_pixels(boxes, scale=0.5, frame=frame),
                    scores.numpy(),
                    labels.numpy(),
                )
    return result


@pytest.mark.parametrize(
    "aggregation",
    [
        AggregationConfig(alignment="identity", fusion="average"),
        AggregationConfig(
            alignment="flow_warp", fusion="average", alignment_kwargs={"flow_source": "oracle"}
        ),
        AggregationConfig(
            alignment="flow_warp", fusion="cosine_softmax", alignment_kwargs={"flow_source": "farneback"}
        ),
    ],
    ids=["identity-average", "oracle-flow", "farneback-images"],
)
def test_matches_naive_per_frame_loop(videos, aggregation):
    detector = make_detector(len(videos[0].classes), aggregation)
    fast = predict_split(
        detector, videos, support=SLIDING, image_size=IMAGE_SIZE, batch_videos=2, device="cpu", progress=False
    )
    slow = naive_predict(detector, videos, SLIDING)
    assert fast.keys() == slow.keys()
    for key, (boxes, scores, labels) in slow.items():
        np.testing.assert_allclose(fast[key].boxes, boxes, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(fast[key].scores, scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(fast[key].labels, labels)


def test_reference_only_aggregator_with_supports_equals_single_frame(videos):
    detector = make_detector(len(videos[0].classes), single_frame=True)
    single = predict_split(
        detector, videos, support=SupportSpec(), image_size=IMAGE_SIZE, device="cpu", progress=False
    )
    detector.aggregator = ReferenceOnly()
    seen = []
    windowed = predict_split(
        detector,
        videos,
        support=SLIDING,
        image_size=IMAGE_SIZE,
        device="cpu",
        progress=False,
        collect=lambda frames, offsets, aux: seen.append(aux["num_supports"]),
    )
    assert seen and all(int(n) == 4 for n in seen)
    _assert_same_detections(windowed, single)


def test_image_method_tested_with_no_supports_equals_single_frame(videos):
    """A method that reads the images (a flow net), tested with no supports (SSVD's Table V, n = 0):
    the empty support stacks are built, not refused, and the reference passes through unchanged."""
    aggregation = AggregationConfig(
        alignment="flow_warp", fusion="average", alignment_kwargs={"flow_source": "farneback"}
    )
    detector = make_detector(len(videos[0].classes), aggregation)
    assert detector.aggregator.needs_images
    windowed = predict_split(
        detector, videos, support=SupportSpec(), image_size=IMAGE_SIZE, device="cpu", progress=False
    )
    detector.aggregator = ReferenceOnly()
    single = predict_split(
        detector, videos, support=SupportSpec(), image_size=IMAGE_SIZE, device="cpu", progress=False
    )
    _assert_same_detections(windowed, single)


def test_batching_videos_does_not_change_results(videos):
    detector = make_detector(len(videos[0].classes))
    one = predict_split(
        detector, videos, support=SLIDING, image_size=IMAGE_SIZE, batch_videos=1, device="cpu", progress=False
    )
    many = predict_split(
        detector, videos, support=SLIDING, image_size=IMAGE_SIZE, batch_videos=8, device="cpu", progress=False
    )
    _assert_same_detections(one, many)


@pytest.mark.parametrize(
    "support",
    [
        SLIDING,
        SupportSpec(strategy="sliding", radius=6, stride=2, boundary="clamp"),
        SupportSpec(strategy="buffer_uniform", num=4, radius=5, boundary="pad"),
    ],
)
def test_each_frame_goes_through_the_backbone_once(videos, support):
    detector = make_detector(len(videos[0].classes))
    extracted = []
    original = detector.extract
    detector.extract = lambda images: extracted.append(images.shape[0]) or original(images)
    predict_split(
        detector, videos, support=support, image_size=IMAGE_SIZE, batch_videos=2, device="cpu", progress=False
    )
    assert sum(extracted) == sum(len(v) for v in videos)


def test_buffer_keeps_only_the_window(videos, monkeypatch):
    """Sliding radius 2: at most 5 frames' features are held per video (reference +- 2)."""
    held = []
    original = harness.infer._VideoCursor.evict

    def recording_evict(self, reference):
        held.append(len(self.features))
        original(self, reference)

    monkeypatch.setattr(harness.infer._VideoCursor, "evict", recording_evict)
    predict_split(
        make_detector(len(videos[0].classes)),
        videos,
        support=SLIDING,
        image_size=IMAGE_SIZE,
        device="cpu",
        progress=False,
    )
    assert max(held) == 5 and len(held) == sum(len(v) for v in videos)


def test_collect_sees_every_frame_once_with_planned_offsets(videos):
    detector = make_detector(len(videos[0].classes))
    seen = {}

    def collect(frames, offsets, aux):
        assert aux["fusion_weights"].shape[:2] == (len(frames), 1 + offsets.shape[1])
        for frame, row in zip(frames, offsets, strict=True):
            assert (frame.video, frame.frame_id) not in seen
            seen[(frame.video, frame.frame_id)] = row.tolist()

    predict_split(
        detector,
        videos,
        support=SLIDING,
        image_size=IMAGE_SIZE,
        batch_videos=2,
        device="cpu",
        progress=False,
        collect=collect,
    )
    for video in videos:
        for ref, frame in enumerate(video.frames):
            ids = [video.frames[i].frame_id for i in support_indices(ref, len(video), SLIDING)]
            expected = [i - frame.frame_id for i in ids]
            assert seen[(frame.video, frame.frame_id)] == expected


def test_plan_supports_last_use_hand_computed():
    """5 frames, sliding radius 1, pad: supports [0,1],[0,2],[1,3],[2,4],[3,4]; frame f is last used
    by reference f+1 (the last frame by itself)."""
    supports, last_use = plan_supports(5, SupportSpec(strategy="sliding", radius=1, boundary="pad"))
    assert supports.tolist() == [[0, 1], [0, 2], [1, 3], [2, 4], [3, 4]]
    assert last_use.tolist() == [1, 2, 3, 4, 4]


def test_to_original_pixels_divides_by_scale_and_clips():
    frame = FrameRecord(video="v", frame_id=0, image_path="x.jpg", width=64, height=48)
    boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0], [-2.0, 1.0, 3.0, 2.0]])
    np.testing.assert_allclose(
        to_original_pixels(boxes, scale=0.5, frame=frame), [[20, 20, 64, 48], [0, 2, 6, 4]]
    )


# ---------------------------------------------------------------------------------------------
# Stream engine
# ---------------------------------------------------------------------------------------------

CAUSAL = SupportSpec(strategy="causal", num=2, stride=1, boundary="pad")


def _cut(video, name, length):
    """The first ``length`` frames of ``video`` as a video of its own called ``name``."""
    frames = [dataclasses.replace(frame, video=name) for frame in video.frames[:length]]
    return dataclasses.replace(video, name=name, frames=frames)


def _stream(detector, videos, *, batch_videos, collect=None):
    return predict_split(
        detector,
        videos,
        support=SupportSpec(),  # unused in stream mode
        image_size=IMAGE_SIZE,
        batch_videos=batch_videos,
        device="cpu",
        progress=False,
        collect=collect,
    )


@pytest.mark.parametrize(
    "aggregation",
    [
        AggregationConfig(alignment="identity", fusion="cosine_softmax"),
        AggregationConfig(
            alignment="flow_warp", fusion="average", alignment_kwargs={"flow_source": "farneback"}
        ),
    ],
    ids=["identity-cosine", "farneback-images"],
)
def test_window_method_as_a_stream_gives_the_window_engines_detections(videos, aggregation):
    """The adapter runs the window aggregator on the previous 2 frames (pad): the window engine with
    the causal strategy computes the same thing, and batching videos in the stream changes nothing."""
    detector = make_detector(len(videos[0].classes), aggregation)
    window = predict_split(
        detector, videos, support=CAUSAL, image_size=IMAGE_SIZE, batch_videos=2, device="cpu", progress=False
    )
    detector.aggregator = WindowAsStream(detector.aggregator, num=2)
    one = _stream(detector, videos, batch_videos=1)
    many = _stream(detector, videos, batch_videos=3)
    _assert_same_detections(one, window)
    _assert_same_detections(many, window)


def test_stream_state_is_fresh_for_every_video(videos):
    """Without the reset, the first frames of the second video of a slot would take the first video's
    last frames as supports: videos run one after another must match videos run alone."""
    detector = make_detector(len(videos[0].classes))
    detector.aggregator = WindowAsStream(detector.aggregator, num=2)
    inits = []
    original = detector.aggregator.init_state
    detector.aggregator.init_state = lambda: inits.append(1) or original()
    together = _stream(detector, videos, batch_videos=1)
    assert len(inits) == len(videos)
    alone = {}
    for video in videos:
        alone.update(_stream(detector, [video], batch_videos=1))
    _assert_same_detections(together, alone)


def test_keyframes_follow_each_videos_own_positions(videos):
    """Interval 3 with videos of different lengths in 3 slots (refilled slots drift apart): every
    frame's detections are those of its video's frame 3 * (position // 3), computed single-frame."""
    interval = 3
    videos = [_cut(videos[i % len(videos)], f"cut{i}", n) for i, n in enumerate([7, 12, 4, 9, 11])]
    lengths = [len(video) for video in videos]
    detector = make_detector(len(videos[0].classes), single_frame=True)
    single = predict_split(
        detector, videos, support=SupportSpec(), image_size=IMAGE_SIZE, device="cpu", progress=False
    )
    detector.aggregator = HoldKeyframe(keyframe_interval=interval)
    high_rows, seen = [], []
    original = detector.extract_high
    detector.extract_high = lambda low: high_rows.append(low.shape[0]) or original(low)
    streamed = _stream(
        detector, videos, batch_videos=3, collect=lambda frames, offsets, aux: seen.append(aux["keyframe"])
    )
    assert sum(high_rows) == sum(-(-n // interval) for n in lengths)  # ceil(n / interval) per video
    assert sum(int(k.sum()) for k in seen) == sum(high_rows)
    expected = {}
    for video in videos:
        for position, frame in enumerate(video.frames):
            key = video.frames[position // interval * interval]
            held = single[(key.video, key.frame_id)]
            # same letterbox within a video: the keyframe's boxes in original pixels, as they are
            expected[(frame.video, frame.frame_id)] = held
    _assert_same_detections(streamed, expected)


def test_stream_interval_one_runs_the_full_backbone_on_every_frame(videos):
    detector = make_detector(len(videos[0].classes), single_frame=True)
    single = predict_split(
        detector, videos, support=SupportSpec(), image_size=IMAGE_SIZE, device="cpu", progress=False
    )
    detector.aggregator = HoldKeyframe(keyframe_interval=1)
    high_rows = []
    original = detector.extract_high
    detector.extract_high = lambda low: high_rows.append(low.shape[0]) or original(low)
    streamed = _stream(detector, videos, batch_videos=2)
    assert sum(high_rows) == sum(len(v) for v in videos)
    _assert_same_detections(streamed, single)


def test_stream_engine_refuses_what_it_cannot_run(videos):
    detector = make_detector(len(videos[0].classes))
    detector.aggregator = HoldKeyframe(keyframe_interval=2)
    detector.aggregator.is_keyframe = lambda position: position == 1
    with pytest.raises(ValueError, match="is_keyframe.0. is False"):
        _stream(detector, videos, batch_videos=1)
    detector.aggregator = HoldKeyframe(keyframe_interval=2)
    detector.aggregator.needs_oracle_flow = True
    with pytest.raises(ValueError, match="oracle flow"):
        _stream(detector, videos, batch_videos=1)
    detector.aggregator = ReferenceOnly()
    detector.aggregator.mode = "online"
    with pytest.raises(ValueError, match="mode='online'"):
        _stream(detector, videos, batch_videos=1)
    with pytest.raises(ValueError, match="keyframe_interval"):
        HoldKeyframe(keyframe_interval=0)


def test_bad_arguments_raise(videos):
    detector = make_detector(len(videos[0].classes))
    with pytest.raises(ValueError, match="batch_videos"):
        predict_split(
            detector, videos, support=SLIDING, image_size=IMAGE_SIZE, batch_videos=0, progress=False
        )
    with pytest.raises(ValueError, match="letterboxes to 64"):
        predict_split(
            detector, videos, support=SLIDING, image_size=IMAGE_SIZE, cache=FrameCache(64), progress=False
        )
