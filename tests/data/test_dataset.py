"""Frame cache, letterboxing, samples, batches, oracle flow and build_dataset on the tiny SynthVID."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from harness.config import DataConfig, SupportSpec
from harness.data.cache import FrameCache, letterbox
from harness.data.dataset import (
    VideoFrameDataset,
    build_dataset,
    collate,
    load_split,
    measure_loading,
    oracle_flow_for,
)
from harness.data.errors import DataError
from harness.data.flow import warp_by_flow
from harness.data.records import VideoRecord
from harness.data.synthvid import ensure_synthvid
from harness.data.vid import read_det_split, read_vid_split

WINDOW = SupportSpec(strategy="random_window", num=2, radius=3)


@pytest.fixture(scope="module")
def val_videos(tiny_synthvid):
    return read_vid_split(tiny_synthvid, "val")


def test_letterbox_by_hand():
    image = np.zeros((20, 40, 3), np.uint8)  # h=20, w=40
    image[:, :, 0] = 200
    out = letterbox(image, 10)  # scale 0.25 -> 10 x 5, padded at the bottom
    assert out.shape == (3, 10, 10)
    assert np.all(out[0, :5] == 200) and np.all(out[:, 5:] == 0) and np.all(out[1:] == 0)


def test_cache_decodes_once_and_on_disk(val_videos, tmp_path, monkeypatch):
    cache = FrameCache(32, cache_dir=tmp_path)
    frames = cache.video(val_videos[0])
    assert frames.shape == (12, 3, 32, 32) and frames.dtype == np.uint8
    assert cache.video(val_videos[0]) is frames
    # a second cache on the same folder reads the .npy instead of decoding
    monkeypatch.setattr(
        "harness.data.cache.decode_frame", lambda frame: (_ for _ in ()).throw(AssertionError)
    )
    np.testing.assert_array_equal(FrameCache(32, cache_dir=tmp_path).video(val_videos[0]), frames)
    reference = cv2.cvtColor(cv2.imread(val_videos[0].frames[4].image_path), cv2.COLOR_BGR2RGB)
    expected = cv2.resize(reference, (32, 32), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
    np.testing.assert_array_equal(frames[4], expected)


def test_sample_shapes_and_boxes(val_videos):
    dataset = VideoFrameDataset(val_videos, image_size=32, support=WINDOW)
    assert len(dataset) == 24
    sample = dataset[5]
    assert sample.image.shape == (3, 32, 32) and sample.image.dtype == torch.uint8
    assert sample.support_images.shape == (2, 3, 32, 32) and sample.offsets.dtype == torch.int64
    assert sample.oracle_flow is None and sample.scale == 0.5
    frame = val_videos[0].frames[5]
    assert sample.frame is frame
    np.testing.assert_allclose(sample.boxes.numpy(), frame.boxes * 0.5)
    assert torch.equal(sample.labels, torch.from_numpy(frame.labels))
    for support, offset in zip(sample.support_images, sample.offsets.tolist(), strict=True):
        assert torch.equal(support, dataset[5 + offset].image)  # the support is the frame at that offset
        assert 0 < abs(offset) <= 3


def test_supports_are_deterministic_per_seed_epoch_index(val_videos):
    dataset = VideoFrameDataset(val_videos, image_size=32, support=WINDOW, seed=3)
    offsets = [dataset[i].offsets.tolist() for i in range(24)]
    assert offsets == [dataset[i].offsets.tolist() for i in range(24)]
    assert offsets == [
        VideoFrameDataset(val_videos, image_size=32, support=WINDOW, seed=3)[i].offsets.tolist()
        for i in range(24)
    ]
    dataset.set_epoch(1)
    assert offsets != [dataset[i].offsets.tolist() for i in range(24)]


def test_stills_and_fraction(tiny_synthvid, val_videos):
    stills = read_det_split(tiny_synthvid)
    dataset = VideoFrameDataset(val_videos, image_size=32, support=WINDOW, stills=stills, still_fraction=0.25)
    assert len(dataset) == 24 + 8
    sample = dataset[30]
    assert sample.frame.video.startswith("train/SYNTHVID_DET_train/")
    assert sample.offsets.tolist() == [0, 0]
    assert torch.equal(sample.support_images[0], sample.image)
    with pytest.raises(ValueError, match="still_fraction"):
        VideoFrameDataset(val_videos, image_size=32, support=WINDOW, still_fraction=1.0)


def test_frames_from_a_list(val_videos):
    dataset = VideoFrameDataset(
        val_videos, image_size=32, support=SupportSpec(), frames=[("val/synthvid_val_000001", 7)]
    )
    assert len(dataset) == 1 and dataset[0].frame.frame_id == 7 and dataset[0].support_images.shape[0] == 0
    with pytest.raises(DataError, match="synthvid_val_000009/000003"):
        VideoFrameDataset(
            val_videos, image_size=32, support=SupportSpec(), frames=[("val/synthvid_val_000009", 3)]
        )


def test_collate_pads_supports(val_videos):
    dataset = VideoFrameDataset(val_videos, image_size=32, support=WINDOW, with_oracle_flow=True)
    short = VideoFrameDataset(
        val_videos, image_size=32, support=SupportSpec(strategy="sliding", radius=1), with_oracle_flow=True
    )
    batch = collate([dataset[0], short[3]])
    assert batch.images.shape == (2, 3, 32, 32) and batch.support_images.shape == (2, 2, 3, 32, 32)
    assert batch.valid.tolist() == [[True, True], [True, True]]
    one = VideoFrameDataset(val_videos, image_size=32, support=SupportSpec(strategy="clip", num=2))
    batch = collate([dataset[0], one[4]])
    assert batch.valid.tolist() == [[True, True], [True, False]]
    assert batch.oracle_flow is None  # not every sample carries flow
    assert torch.all(batch.support_images[1, 1] == 0) and batch.offsets[1].tolist() == [-1, 0]
    moved = batch.to("cpu")
    assert moved.images.device.type == "cpu" and len(moved.boxes) == 2 and moved.frames == batch.frames


@pytest.fixture(scope="module")
def clean_fast_videos(tmp_path_factory):
    """Val videos without degradations and with fast objects: alignment, not noise, dominates errors."""
    root = ensure_synthvid(
        "tiny",
        seed=5,
        data_dir=tmp_path_factory.mktemp("clean"),
        progress=False,
        num_train_videos=1,
        num_val_videos=3,
        num_stills=1,
        frame_burst_rate=0.0,
        object_burst_rate=0.0,
        speed_buckets=((1.0, 0.05, 0.08),),
        camera_speed=0.02,
    )
    return read_vid_split(root, "val")


@pytest.mark.parametrize("image_size", [64, 48])
def test_oracle_flow_aligns_support_with_reference(clean_fast_videos, image_size):
    """Warping each support with the oracle flow matches the reference on the objects much better than
    the unwarped support does (the flow is reference -> support: sample the support at p + flow).
    Frames are slightly smoothed first: bilinear resampling of a 3-pixel texture is lossy by itself."""
    errors_warped, errors_raw, errors_negated = [], [], []
    cache = FrameCache(image_size)
    for video in clean_fast_videos:
        frames = np.stack(
            [
                cv2.GaussianBlur(f.transpose(1, 2, 0), (0, 0), 1.0).transpose(2, 0, 1)
                for f in cache.video(video).astype(np.float32)
            ]
        )  # (T, 3, S, S)
        for ref in range(1, len(video) - 3, 2):
            supports = np.array([ref - 1, ref + 1, ref + 3])
            flows = oracle_flow_for(video, ref, supports, image_size)
            assert flows.shape == (3, 2, image_size, image_size) and flows.dtype == np.float32
            boxes = (video.frames[ref].boxes * cache.scale(video.frames[ref])).astype(int)
            region = np.zeros((image_size, image_size), bool)
            for x1, y1, x2, y2 in boxes:
                region[y1 : y2 + 1, x1 : x2 + 1] = True
            if not region.any():
                continue
            for support, flow in zip(supports, flows, strict=True):
                warped = warp_by_flow(frames[support], flow)
                errors_warped.append(np.abs(warped - frames[ref])[:, region].mean())
                errors_raw.append(np.abs(frames[support] - frames[ref])[:, region].mean())
                negated = warp_by_flow(frames[support], -flow)
                errors_negated.append(np.abs(negated - frames[ref])[:, region].mean())
    # residual error: disocclusions around moving objects and the half-resolution flow at boundaries
    assert np.mean(errors_warped) < 0.65 * np.mean(errors_raw) < 0.65 * np.mean(errors_negated)


def test_oracle_flow_zero_for_the_reference_itself(val_videos):
    zero = oracle_flow_for(val_videos[0], 0, np.array([0, 0]), 32)
    assert np.all(zero == 0)  # padded copies of the reference


def test_oracle_flow_chains_consecutive_fields(val_videos):
    """Flow over two frames equals the composition of the two one-frame flows, by hand at one pixel."""
    video = val_videos[0]
    size = 64
    f01 = oracle_flow_for(video, 0, np.array([1]), size)[0]
    f12 = oracle_flow_for(video, 1, np.array([2]), size)[0]
    f02 = oracle_flow_for(video, 0, np.array([2]), size)[0]
    y, x = 30, 30
    px, py = x + f01[0, y, x], y + f01[1, y, x]
    second = warp_by_flow(f12, np.zeros((2, size, size), np.float32))  # identity sampling
    sx = cv2.getRectSubPix(second[0], (1, 1), (float(px), float(py)))[0, 0]
    sy = cv2.getRectSubPix(second[1], (1, 1), (float(px), float(py)))[0, 0]
    assert f02[0, y, x] == pytest.approx(f01[0, y, x] + sx, abs=0.3)
    assert f02[1, y, x] == pytest.approx(f01[1, y, x] + sy, abs=0.3)
    back = oracle_flow_for(video, 2, np.array([0]), size)[0]  # backward: roughly the negation
    assert np.median(np.abs(back[:, 20:44, 20:44] + f02[:, 20:44, 20:44])) < 0.5


def test_oracle_flow_needs_flow_file(val_videos):
    video = VideoRecord(name="val/x", frames=val_videos[0].frames, classes=val_videos[0].classes)
    with pytest.raises(DataError, match="val/x"):
        oracle_flow_for(video, 0, np.array([1]), 32)
    with pytest.raises(DataError, match="flow"):
        VideoFrameDataset([video], image_size=32, support=WINDOW, with_oracle_flow=True)


def test_build_dataset_phases(tiny_synthvid):
    data = DataConfig(
        root=str(tiny_synthvid),
        image_size=48,
        train_support=WINDOW,
    )
    phase1 = build_dataset(data, "train", phase=1, seed=0, with_oracle_flow=True)
    assert len(phase1) == 4 * 12 + 20  # every train frame and every still once
    assert phase1[0].support_images.shape == (0, 3, 48, 48) and phase1[0].oracle_flow is None
    assert phase1[4 * 12 + 19].frame.video.endswith("synthvid_det_000019")
    phase2 = build_dataset(data, "train", phase=2, seed=0, with_oracle_flow=True)
    assert len(phase2) == 48 and phase2[0].support_images.shape[0] == 2
    assert phase2[0].oracle_flow.shape == (2, 2, 48, 48)
    val = build_dataset(data, "val", phase=2, seed=0, support=SupportSpec(strategy="sliding", radius=2))
    assert len(val) == 2 * 12 and val[6].offsets.tolist() == [-2, -1, 1, 2]  # both val videos
    listed = build_dataset(
        DataConfig(root=str(tiny_synthvid), train_list="VID_train_every10frames.txt"),
        "train",
        phase=2,
        seed=0,
    )
    assert [listed[i].frame.frame_id for i in range(len(listed))] == [0, 10] * 4
    with pytest.raises(ValueError, match="phase"):
        build_dataset(data, "train", phase=3, seed=0)


def test_measure_loading(val_videos):
    dataset = VideoFrameDataset(val_videos, image_size=32, support=WINDOW, with_oracle_flow=True)
    result = measure_loading(dataset, batch_size=4, num_batches=2, step_seconds=1.0)
    assert result["seconds_per_batch"] > 0 and result["ratio"] == result["seconds_per_batch"]


def test_default_root_is_synthvid_with_cached_records(tiny_synthvid, monkeypatch):
    monkeypatch.setenv("VODBENCH_DATA", str(tiny_synthvid.parent))
    data = DataConfig(synth_preset="tiny")
    first = load_split(data, "val", max_videos=1)
    assert (tiny_synthvid / "cache" / "records-val.pkl").is_file()
    assert [v.name for v in first] == ["val/synthvid_val_000000"]
    again = load_split(data, "val", max_videos=1)  # from the pickle: the same records
    assert [f.boxes.tolist() for f in again[0].frames] == [f.boxes.tolist() for f in first[0].frames]
    assert len(load_split(data, "det")) == 20


def test_cocovid_training_frames_follow_is_vid_train_frame(tiny_synthvid, tmp_path):
    from harness.data import imagesets
    from harness.data.cocovid import write_cocovid

    # a COCO-VID file that flags the frames of VID_train_every10frames.txt
    every10 = imagesets.read_train_frames(tiny_synthvid / "ImageSets" / "VID_train_every10frames.txt")
    image_root = tiny_synthvid / "Data" / "VID"
    for split in ("train", "val"):
        write_cocovid(read_vid_split(tiny_synthvid, split), tmp_path / f"{split}.json", image_root,
                      train_frames={(e.video, e.frame_id) for e in every10})
    cocovid = DataConfig(root=str(image_root), format="cocovid", cocovid_json=str(tmp_path / "{split}.json"),
                         train_list="is_vid_train_frame")
    flagged = build_dataset(cocovid, "train", phase=2, seed=0)
    listed = build_dataset(
        DataConfig(root=str(tiny_synthvid), train_list="VID_train_every10frames.txt"),
        "train",
        phase=2,
        seed=0,
    )

    def frames(dataset):
        return [(s.frame.video, s.frame.frame_id) for s in (dataset[i] for i in range(len(dataset)))]

    assert frames(flagged) == frames(listed) and [f for _, f in frames(flagged)] == [0, 10] * 4
    assert len(build_dataset(cocovid, "val", phase=2, seed=0)) == 2 * 12  # evaluation is never restricted
    with pytest.raises(ValueError, match="format='cocovid'"):
        build_dataset(DataConfig(root=str(tiny_synthvid), train_list="is_vid_train_frame"), "train",
                      phase=2, seed=0)


def test_cocovid_train_frames_need_the_flag(tmp_path):
    import json

    from harness.data.cocovid import read_cocovid_train_frames

    path = tmp_path / "noflag.json"
    path.write_text(json.dumps({"videos": [{"id": 1, "name": "v"}], "images": [
        {"id": 1, "video_id": 1, "frame_id": 0, "file_name": "v/000000.JPEG", "width": 8, "height": 8}]}))
    with pytest.raises(DataError, match="noflag.json.*is_vid_train_frame"):
        read_cocovid_train_frames(path)


def test_flow_cache_holds_every_video_of_each_preset():
    # training samples videos at random: a cache smaller than the split decompresses a .npz per sample
    from harness.data.flow import FLOW_CACHE_VIDEOS
    from harness.data.synthvid.config import PRESETS

    for name, preset in PRESETS.items():
        assert preset.num_train_videos + preset.num_val_videos <= FLOW_CACHE_VIDEOS, name


def test_flow_is_loaded_once_per_video(val_videos):
    from harness.data.flow import load_flow

    load_flow.cache_clear()
    for ref in range(len(val_videos[0])):
        oracle_flow_for(val_videos[0], ref, np.array([0, len(val_videos[0]) - 1]), 32)
    info = load_flow.cache_info()
    assert (info.misses, info.hits) == (1, len(val_videos[0]) - 1)


def test_train_list_naming_a_missing_video(tiny_synthvid, tmp_path, caplog):
    from harness.data import imagesets

    every10 = imagesets.read_train_frames(tiny_synthvid / "ImageSets" / "VID_train_every10frames.txt")
    ghost = "train/SYNTHVID_train_0009/synthvid_train_00009{}"
    ghosts = [imagesets.TrainFrameEntry(ghost.format(i), 0, 12) for i in range(3)]
    path = tmp_path / "with_ghosts.txt"
    imagesets.write_train_frames(every10[:2] + ghosts + every10[2:], path)
    data = DataConfig(root=str(tiny_synthvid), train_list=str(path))
    missing = rf"{path}: listed video not in the split \(3 listed frame\(s\) of 3 video\(s\) not in split"
    with pytest.raises(DataError, match=missing + r".*synthvid_train_000090.*synthvid_train_000091"):
        build_dataset(data, "train", phase=2, seed=0)
    skipping = DataConfig(root=str(tiny_synthvid), train_list=str(path), on_bad_input="skip")
    with caplog.at_level("WARNING"):
        dataset = build_dataset(skipping, "train", phase=2, seed=0)
    assert len(dataset) == len(every10)  # the listed frames that exist, and nothing else
    assert "skipped 3 item(s)" in caplog.text and "frame: listed video not in the split" in caplog.text


def test_train_list_naming_a_missing_frame(tiny_synthvid, tmp_path):
    from harness.data import imagesets

    path = tmp_path / "too_far.txt"
    imagesets.write_train_frames(
        [imagesets.TrainFrameEntry("train/SYNTHVID_train_0000/synthvid_train_000000", 12, 13)], path
    )
    with pytest.raises(DataError, match=rf"{path}: .*synthvid_train_000000/000012"):
        build_dataset(DataConfig(root=str(tiny_synthvid), train_list=str(path)), "train", phase=2, seed=0)
