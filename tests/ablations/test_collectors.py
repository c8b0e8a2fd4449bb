import numpy as np
import pytest
import torch

from ablations.base import Variant
from ablations.collectors import FusionWeightsByOffset, SamplingLocations
from harness.data.records import FrameRecord


def _frame(box, video="v", frame_id=5, size=64):
    return FrameRecord(
        video=video,
        frame_id=frame_id,
        image_path=f"/x/{frame_id:06d}.JPEG",
        width=size,
        height=size,
        boxes=np.array([box], np.float32),
        labels=np.zeros(1, np.int64),
        track_ids=np.zeros(1, np.int64),
        occluded=np.zeros(1, bool),
        generated=np.zeros(1, bool),
        degradation=np.zeros(1, np.int64),
    )


def test_fusion_weights_are_read_at_the_object_centre_cell_and_grouped_by_offset():
    # 64 px image, 8x8 grid (stride 8): a box centred at (20, 44) px sits in cell row 5, col 2
    weights = torch.zeros(1, 3, 8, 8)
    weights[0, :, 5, 2] = torch.tensor([0.5, 0.3, 0.2])
    weights[0, :, 0, 0] = torch.tensor([0.9, 0.05, 0.05])  # elsewhere: must be ignored
    collector = FusionWeightsByOffset(image_size=64)
    collector([_frame((10, 34, 30, 54))], torch.tensor([[-2, 3]]), {"fusion_weights": weights})
    summary = collector.summary()["mean_weight_by_offset"]
    assert summary == pytest.approx({"-2": 0.3, "0": 0.5, "3": 0.2})
    assert collector.count == 1


def test_fusion_weights_skip_windows_with_padded_copies():
    collector = FusionWeightsByOffset(image_size=64)
    padded = torch.tensor([[0, 1]])  # a copy of the reference at a video boundary
    collector([_frame((10, 10, 30, 30))], padded, {"fusion_weights": torch.rand(1, 3, 8, 8)})
    assert collector.count == 0


def test_sampling_locations_map_zero_offsets_to_the_regular_grid_around_the_centre():
    # zero deformation: the 3x3 taps are the cell centres around the box centre's cell
    sampling = torch.zeros(1, 2, 18, 8, 8)
    sampling[0, 1, 0:2, 5, 2] = torch.tensor(
        [1.0, -1.0]
    )  # support 1, tap 0 moved by (dy, dx) = (1, -1) cells
    collector = SamplingLocations(image_size=64, kernel=3)
    collector([_frame((10, 34, 30, 54))], torch.tensor([[-1, 1]]), {"sampling_offsets": sampling})
    (example,) = collector.summary()["examples"]
    points = np.asarray(example["points_xy"])  # (T, 9, 2) as (x, y)
    centre = np.array([2 * 8 + 4, 5 * 8 + 4])
    expected = centre + 8 * np.array([[dx, dy] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    np.testing.assert_allclose(points[0], expected)
    np.testing.assert_allclose(points[1][0], expected[0] + 8 * np.array([-1, 1]))
    np.testing.assert_allclose(points[1][1:], expected[1:])


def test_variant_must_be_test_time_only():
    with pytest.raises(ValueError, match="'phase2.steps', which is not a test-time field"):
        Variant("bad", "row", {"phase2.steps": 3})
    with pytest.raises(ValueError, match="'data.test_support'"):  # the old spelling is no test field
        Variant("bad", "row", {"data.test_support": None})
    Variant("ok", "row", {"support": None, "seq_nms": True})


def test_sampling_locations_keep_the_tap_weights_and_the_figure_stays_on_the_frame(tmp_path, monkeypatch):
    import matplotlib.figure

    from reports.figures import sampling_locations

    sampling = torch.zeros(1, 1, 18, 8, 8)
    sampling[0, 0, 0:2, 5, 2] = torch.tensor([0.0, -20.0])  # tap 0 pushed 160 px left of the frame
    share = torch.full((1, 1, 9, 8, 8), 0.05)
    share[:, :, 4] = 0.6
    collector = SamplingLocations(image_size=64, kernel=3)
    aux = {"sampling_offsets": sampling, "sampling_tap_weight": share}
    collector([_frame((10, 34, 30, 54))], torch.tensor([[1]]), aux)
    (example,) = collector.summary()["examples"]
    assert example["tap_weight"] == pytest.approx([0.05] * 4 + [0.6] + [0.05] * 4)

    panels = []
    savefig = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        panels.extend((ax.get_title(), ax.get_xlim(), ax.get_ylim()) for ax in fig.axes[1:])
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    black = np.zeros((64, 64, 3), np.uint8)
    path = sampling_locations([example], image_for=lambda e, k: black, path=tmp_path / "f.png", title="t")
    assert path.stat().st_size > 1000
    # the panel shows the whole frame and nothing beyond it, and says what fell outside
    assert panels == [("support k=+1, 1/9 outside", (-0.5, 63.5), (63.5, -0.5))]
