"""fusion:quality_softmax: equal scores = the average of the valid inputs; a hand-set score network gives
a hand-computed softmax across frames; invalid supports get exactly zero; layouts; bad kwargs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from methods.average import AverageFusion
from methods.quality_softmax import QualitySoftmaxFusion


def _inputs():
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(2, 8, 4, 5, generator=generator)
    aligned = torch.randn(2, 3, 8, 4, 5, generator=generator)
    valid = torch.tensor([[True, False, True], [False, False, False]])
    aligned[0, 1] = float("nan")  # padding may hold anything
    return reference, aligned, valid


def _convs(fusion: QualitySoftmaxFusion) -> list[nn.Conv2d]:
    return [layer for layer in fusion.quality if isinstance(layer, nn.Conv2d)]


def test_equal_scores_give_the_average_of_the_valid_inputs() -> None:
    fusion = QualitySoftmaxFusion(channels=8)
    with torch.no_grad():  # a constant score for every input and position
        last = _convs(fusion)[-1]
        last.weight.zero_()
        last.bias.fill_(0.7)
    reference, aligned, valid = _inputs()
    out = fusion(reference, aligned, valid)
    expected = AverageFusion(channels=8)(reference, aligned, valid)
    torch.testing.assert_close(out.features, expected.features)
    torch.testing.assert_close(out.weights, expected.weights)


def test_hand_set_scores_give_the_softmax_across_frames() -> None:
    """Score network = "channel 0 of the input" (1x1 picks it, both 3x3 convs pass it by their centre tap),
    so at each position w_i = softmax_i(x_i[0]) over the reference and the valid supports."""
    fusion = QualitySoftmaxFusion(channels=8)
    with torch.no_grad():
        for conv in _convs(fusion):
            conv.weight.zero_()
            conv.bias.zero_()
            centre = conv.kernel_size[0] // 2
            conv.weight[0, 0, centre, centre] = 1.0
    reference, aligned, valid = _inputs()
    out = fusion(reference, aligned, valid)
    # first batch element: the reference, support 0 and support 2 count
    scores = torch.stack([reference[0, 0], aligned[0, 0, 0], aligned[0, 2, 0]])  # (3, H, W)
    weights = torch.softmax(scores, dim=0)
    torch.testing.assert_close(out.weights[0, [0, 1, 3]], weights)
    assert torch.equal(out.weights[0, 2], torch.zeros(4, 5))
    expected = weights[0] * reference[0] + weights[1] * aligned[0, 0] + weights[2] * aligned[0, 2]
    torch.testing.assert_close(out.features[0], expected)
    # second: no valid support, the reference alone
    torch.testing.assert_close(out.features[1], reference[1])
    assert torch.equal(out.weights[1, 0], torch.ones(4, 5))


def test_invalid_supports_get_zero_weight_and_weights_sum_to_one() -> None:
    torch.manual_seed(0)
    fusion = QualitySoftmaxFusion(channels=8, relu=True)
    with torch.no_grad():  # scores far from the init's near-zero, so the weights are not uniform
        for conv in _convs(fusion):
            conv.weight.normal_(std=0.5)
    reference, aligned, valid = _inputs()
    out = fusion(reference, aligned, valid)
    assert torch.isfinite(out.features).all()
    invalid = out.weights[:, 1:][~valid]  # (number invalid, H, W)
    assert torch.equal(invalid, torch.zeros_like(invalid))
    torch.testing.assert_close(out.weights.sum(dim=1), torch.ones(2, 4, 5))
    assert out.weights[0, [0, 1, 3]].std() > 0.01  # learned weighting, not an average


@pytest.mark.parametrize("layout, kernels", [("code", [1, 3, 3]), ("paper", [3, 1, 1])])
def test_layouts(layout: str, kernels: list[int]) -> None:
    fusion = QualitySoftmaxFusion(channels=64, layout=layout)
    convs = _convs(fusion)
    assert [conv.kernel_size[0] for conv in convs] == kernels
    assert [conv.out_channels for conv in convs] == [32, 8, 1]  # C / 2, C / 8, 1
    assert not any(isinstance(layer, nn.ReLU) for layer in fusion.quality)  # the official code: linear
    assert sum(isinstance(layer, nn.ReLU) for layer in QualitySoftmaxFusion(64, relu=True).quality) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"layout": "fpn"}, "layout"),
        ({"hidden_channels": 0}, "hidden_channels"),
        ({"score_channels": 0}, "score_channels"),
    ],
)
def test_bad_kwargs_raise_naming_them(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        QualitySoftmaxFusion(channels=8, **kwargs)
