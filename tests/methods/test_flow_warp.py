"""Flow-guided warping: oracle flow aligns a known shift exactly, flow resizing, Farneback accuracy."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from harness.aggregation import TemporalContext
from methods._images import check_pixels, normalize_pixels
from methods.farneback import farneback_flow
from methods.flow_warp import FlowWarpAlignment, flow_to_grid


def _texture(seed: int, size: int, sigma: float = 2.0) -> np.ndarray:
    """(size, size) float32 smooth random texture stretched to 0..255."""
    noise = np.random.default_rng(seed).uniform(0, 255, (size, size)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), sigma)
    return cv2.normalize(smooth, None, 0, 255, cv2.NORM_MINMAX)


def test_oracle_flow_aligns_a_known_translation_exactly() -> None:
    """Support = reference moved by (dx, dy) = (2, 1) feature cells = (16, 8) image pixels; warping it
    with that constant oracle flow gives the reference back wherever p + (2, 1) is inside the map."""
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(1, 5, 8, 8, generator=generator)
    support = torch.roll(reference, shifts=(1, 2), dims=(-2, -1))  # support(p + d) = reference(p)
    oracle = torch.tensor([16.0, 8.0]).view(1, 1, 2, 1, 1).expand(1, 1, 2, 64, 64)
    ctx = TemporalContext(
        reference=reference,
        supports=support.unsqueeze(1),
        offsets=torch.ones(1, 1, dtype=torch.int64),
        valid=torch.ones(1, 1, dtype=torch.bool),
        oracle_flow=oracle,
    )
    out = FlowWarpAlignment(channels=5, flow_source="oracle")(ctx)
    torch.testing.assert_close(out.aux["flow"][0, 0], torch.tensor([2.0, 1.0]).view(2, 1, 1).expand(2, 8, 8))
    torch.testing.assert_close(out.features[0, 0, :, :-1, :-2], reference[0, :, :-1, :-2], rtol=0, atol=1e-5)
    assert not torch.allclose(support[0, :, :-1, :-2], reference[0, :, :-1, :-2])  # the test is not vacuous


def test_flow_to_grid_averages_blocks_and_divides_by_the_stride() -> None:
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 0, :8, :8] = 8.0  # top-left 8x8 block moves 8 image px right
    flow[:, 1, :4, 8:] = 16.0  # top half of the top-right block moves 16 px down
    grid = flow_to_grid(flow, grid_size=(2, 2), image_size=(16, 16))  # stride 8
    expected = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]])  # dx; dy (mean of 2 and 0)
    torch.testing.assert_close(grid[0], expected)
    # A flow net's 1/4-resolution map (4x4 over a 16x16 image) keeps image-pixel units.
    quarter = torch.full((1, 2, 4, 4), 4.0)
    grid = flow_to_grid(quarter, grid_size=(2, 2), image_size=(16, 16))
    torch.testing.assert_close(grid, torch.full((1, 2, 2, 2), 0.5))
    with pytest.raises(ValueError, match="flow"):
        flow_to_grid(torch.zeros(1, 3, 4, 4), grid_size=(2, 2), image_size=(16, 16))


@pytest.mark.parametrize("shift", [(3.0, -2.0), (1.5, 2.5)])
def test_farneback_recovers_a_translation_within_half_a_pixel(shift: tuple[float, float]) -> None:
    dx, dy = shift
    reference = _texture(0, 64)
    # support(p + d) = reference(p): translate the reference by +d (fractional shifts by bilinear warp).
    translation = np.float32([[1, 0, dx], [0, 1, dy]])
    support = cv2.warpAffine(reference, translation, (64, 64), borderMode=cv2.BORDER_REFLECT)

    def as_rgb(gray: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(gray).round().clamp(0, 255).to(torch.uint8).expand(1, 3, 64, 64)

    flow = farneback_flow(as_rgb(reference), as_rgb(support))  # (1, 2, 64, 64)
    interior = flow[0, :, 12:-12, 12:-12]
    assert (interior[0] - dx).abs().max() < 0.5 and (interior[1] - dy).abs().max() < 0.5


def test_missing_inputs_raise_naming_the_field() -> None:
    ctx = TemporalContext(
        reference=torch.zeros(1, 2, 4, 4),
        supports=torch.zeros(1, 1, 2, 4, 4),
        offsets=torch.ones(1, 1, dtype=torch.int64),
        valid=torch.ones(1, 1, dtype=torch.bool),
    )
    with pytest.raises(ValueError, match="oracle_flow"):
        FlowWarpAlignment(channels=2, flow_source="oracle")(ctx)
    with pytest.raises(ValueError, match="reference_image"):
        FlowWarpAlignment(channels=2, flow_source="farneback")(ctx)
    with pytest.raises(ValueError, match="flow_source"):
        FlowWarpAlignment(channels=2, flow_source="raft")
    with pytest.raises(ValueError, match="flownet_weights"):
        FlowWarpAlignment(channels=2, flow_source="oracle", flownet_weights="x.pt")
    assert FlowWarpAlignment(channels=2, flow_source="oracle").needs_oracle_flow
    assert FlowWarpAlignment(channels=2, flow_source="farneback").needs_images


def test_pixels_are_normalised_with_the_backbone_constants_and_must_be_uint8() -> None:
    """Hand-computed: channel values 0, 128, 255 -> (x - mean) / std with ImageNet's 0..255 constants."""
    images = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    expected = torch.tensor([(0 - 123.675) / 58.395, (128 - 116.28) / 57.12, (255 - 103.53) / 57.375])
    torch.testing.assert_close(normalize_pixels(images), expected.view(1, 3, 1, 1).expand(2, 3, 2, 2))
    with pytest.raises(ValueError, match="support_images must be uint8"):
        check_pixels(images.float(), name="support_images")
    with pytest.raises(ValueError, match="RGB"):
        check_pixels(images[:, :2])
    with pytest.raises(ValueError, match="uint8"):
        farneback_flow(images.float(), images.float())
