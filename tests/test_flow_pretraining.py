"""Flow-net pretraining: learning a translation from pairs, and the SynthVID glue end to end."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from harness.flow_pretraining import pretrain_flownet, train_flownet
from methods.flow_warp import FlowWarpAlignment
from methods.flownet import FlowNetC, endpoint_error


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Many tiny tensor ops: one intra-op thread is ~10x faster on the 2 shared cores (restored after)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def translated_texture_pairs(
    rng: np.random.Generator, count: int, *, size: int = 64, max_shift: int = 8, sigma: float = 3.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random colour textures and the same texture moved by an integer (dx, dy): flow is (dx, dy)."""
    margin = max_shift + 1
    references, supports, flows = [], [], []
    for _ in range(count):
        texture = rng.uniform(0, 255, (size + 2 * margin, size + 2 * margin, 3)).astype(np.float32)
        texture = cv2.normalize(cv2.GaussianBlur(texture, (0, 0), sigma), None, 0, 255, cv2.NORM_MINMAX)
        dx, dy = (int(v) for v in rng.integers(-max_shift, max_shift + 1, 2))
        references.append(texture[margin : margin + size, margin : margin + size])
        # support(p) = texture(p + margin - d), so support(p + d) = reference(p).
        supports.append(texture[margin - dy : margin - dy + size, margin - dx : margin - dx + size])
        flows.append(np.broadcast_to(np.float32([dx, dy])[:, None, None], (2, size, size)))

    def to_images(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).round().to(torch.uint8)  # NHWC -> NCHW

    return to_images(references), to_images(supports), torch.from_numpy(np.stack(flows).copy())


def test_training_on_translations_beats_zero_flow_on_held_out_pairs() -> None:
    torch.manual_seed(0)
    net = FlowNetC(width=8, max_displacement=2)
    validation = translated_texture_pairs(np.random.default_rng(1000), 32)
    metrics = train_flownet(
        net,
        lambda rng: translated_texture_pairs(rng, 8),
        steps=100,
        lr=2e-3,
        seed=0,
        validation_pairs=validation,
        progress=False,
    )
    assert len(metrics["train_loss"]) == 100
    # Held-out textures and shifts: clearly better than predicting no motion (~7 px here).
    assert metrics["zero_flow_epe"] > 5.0
    assert metrics["epe"] < 0.6 * metrics["zero_flow_epe"], metrics
    with torch.no_grad():
        recomputed = endpoint_error(net.eval()(*validation[:2]), validation[2])
    assert metrics["epe"] == pytest.approx(float(recomputed))


@pytest.fixture(scope="module")
def tiny_videos(tmp_path_factory) -> list:
    synthvid = pytest.importorskip("harness.data.synthvid")
    dataset = pytest.importorskip("harness.data.dataset")
    from harness.config import DataConfig

    data_dir = tmp_path_factory.mktemp("synthvid")
    root = synthvid.ensure_synthvid("tiny", seed=0, data_dir=data_dir, progress=False)
    return dataset.load_split(DataConfig(root=str(root), image_size=64), "train")


def test_pretrain_flownet_on_synthvid_and_load_into_flow_warp(tiny_videos, tmp_path) -> None:
    result = pretrain_flownet(
        tiny_videos, image_size=64, steps=2, batch_size=2, lr=1e-3, seed=0, max_offset=2,
        progress=False, width=4, max_displacement=2, validation_size=4,
    )
    metrics = result["metrics"]
    assert metrics["train_videos"] + metrics["validation_videos"] == len(tiny_videos)
    assert np.isfinite(metrics["epe"]) and metrics["zero_flow_epe"] > 0  # SynthVID pairs do move
    path = tmp_path / "flownet.pt"
    torch.save(result, path)
    alignment = FlowWarpAlignment(
        channels=4, flownet_weights=str(path), flownet_width=4, flownet_max_displacement=2
    )
    for name, value in alignment.flownet.state_dict().items():
        assert torch.equal(value, result["state_dict"][name]), name
    torch.save(result["state_dict"], path)  # a bare state dict loads too
    FlowWarpAlignment(channels=4, flownet_weights=str(path), flownet_width=4, flownet_max_displacement=2)
    with pytest.raises(RuntimeError, match="size mismatch"):
        FlowWarpAlignment(channels=4, flownet_weights=str(path), flownet_width=8, flownet_max_displacement=2)
