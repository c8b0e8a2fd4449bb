"""The small FlowNet-C and its losses: shapes, bad input, hand-computed endpoint errors."""

from __future__ import annotations

import pytest
import torch

from methods.flownet import FlowNetC, endpoint_error, multiscale_epe


def test_output_shape_and_bad_input() -> None:
    net = FlowNetC(width=4, max_displacement=2)
    images = torch.randint(0, 256, (3, 3, 32, 48), dtype=torch.uint8)
    assert net(images, images.flip(0)).shape == (3, 2, 8, 12)
    assert [level.shape[-1] for level in net.forward_pyramid(images, images)] == [6, 12]
    with pytest.raises(ValueError, match="multiple of 8"):
        net(images[..., :30], images[..., :30])
    with pytest.raises(ValueError, match="support_images"):
        net(images, images[:2])
    with pytest.raises(ValueError, match="reference_images must be uint8"):
        net(images.float(), images)


def test_endpoint_errors_hand_computed() -> None:
    """Target (3, 4) everywhere, prediction 0: EPE 5 at any size (the target is pooled to it)."""
    target = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1).expand(2, 2, 8, 8)
    coarse, fine = torch.zeros(2, 2, 2, 2), torch.zeros(2, 2, 4, 4)
    assert float(endpoint_error(fine, target)) == pytest.approx(5.0)
    fine[:, 0] = 3.0  # now off by (0, 4) at 1/4
    assert float(endpoint_error(fine, target)) == pytest.approx(4.0)
    assert float(multiscale_epe([coarse, fine], target)) == pytest.approx(0.5 * 5.0 + 1.0 * 4.0)
    with pytest.raises(ValueError, match="2 pyramid levels but 1 loss weights"):
        multiscale_epe([coarse, fine], target, weights=(1.0,))
