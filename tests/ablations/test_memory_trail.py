"""MemoryTrail (STMN Fig. 4 as a number): the memory norm at an object's earlier cell over its current one."""

import numpy as np
import torch

from ablations.collectors import MemoryTrail
from harness.data.records import FrameRecord


def _frame(box, frame_id, video="v", size=64):
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


def test_ratio_of_the_earlier_cell_over_the_current_one():
    collector = MemoryTrail(image_size=64, min_cells=2)
    offsets = torch.tensor([[-4, -2, 2, 4]])
    # frame 0: centre (12, 12) px -> cell (1, 1); frame 4: centre (44, 12) -> cell (1, 5)
    collector([_frame((8, 8, 16, 16), 0)], offsets, {"memory_norm_forward": torch.ones(1, 8, 8)})
    norms = torch.ones(1, 8, 8)
    norms[0, 1, 1], norms[0, 1, 5] = 0.5, 2.0
    collector([_frame((40, 8, 48, 16), 4)], offsets, {"memory_norm_forward": norms})
    assert collector.count == 1 and collector.summary()["mean_ratio"] == 0.25


def test_objects_that_did_not_move_or_padded_windows_are_skipped():
    collector = MemoryTrail(image_size=64, min_cells=2)
    norms = {"memory_norm_forward": torch.ones(1, 8, 8)}
    collector([_frame((8, 8, 16, 16), 0)], torch.tensor([[-4, -2, 2, 4]]), norms)
    collector([_frame((10, 8, 18, 16), 4)], torch.tensor([[-4, -2, 2, 4]]), norms)  # moved < 2 cells
    collector([_frame((40, 8, 48, 16), 4, video="w")], torch.tensor([[0, 0, 2, 4]]), norms)  # padded
    assert collector.count == 0
