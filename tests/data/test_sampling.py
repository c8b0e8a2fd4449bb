"""Support sampling: every strategy by hand, inside the video and at both boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from harness.config import SupportSpec
from harness.data.sampling import support_indices


def spec(**kwargs) -> SupportSpec:
    return SupportSpec(**kwargs)


def test_none_is_empty():
    out = support_indices(3, 10, spec(strategy="none"))
    assert out.dtype == np.int64 and out.shape == (0,)


@pytest.mark.parametrize(
    "ref, boundary, expected",
    [
        (10, "pad", [6, 8, 12, 14]),  # inside: +-2, +-4
        (1, "pad", [0, 0, 3, 5]),  # left: copies of frame 0
        (18, "pad", [14, 16, 19, 19]),  # right: copies of frame 19
        (1, "clamp", [0, 2, 6, 8]),  # window [-3, 5] shifted by +3 to [0, 8]
        (18, "clamp", [11, 13, 17, 19]),  # window [14, 22] shifted by -3 to [11, 19]
    ],
)
def test_fixed_stride(ref, boundary, expected):
    out = support_indices(ref, 20, spec(strategy="fixed_stride", num=4, stride=2, boundary=boundary))
    np.testing.assert_array_equal(out, expected)


def test_fixed_stride_needs_even_num():
    with pytest.raises(ValueError, match="even"):
        support_indices(5, 20, spec(strategy="fixed_stride", num=3))


def test_sliding_window_length_and_boundaries():
    sliding = spec(strategy="sliding", radius=3, stride=1)
    np.testing.assert_array_equal(support_indices(5, 20, sliding), [2, 3, 4, 6, 7, 8])
    np.testing.assert_array_equal(support_indices(0, 20, sliding), [0, 0, 0, 1, 2, 3])
    clamp = spec(strategy="sliding", radius=3, stride=1, boundary="clamp")
    np.testing.assert_array_equal(support_indices(0, 20, clamp), [0, 1, 2, 4, 5, 6])  # window [0, 6]
    # a video shorter than the window: aligned to frame 0, clamped past the end
    np.testing.assert_array_equal(support_indices(1, 4, clamp), [0, 1, 2, 3, 3, 3])


def test_clip_reference_in_the_middle():
    clip = spec(strategy="clip", num=5, stride=10)
    np.testing.assert_array_equal(support_indices(30, 100, clip), [10, 20, 40, 50])
    np.testing.assert_array_equal(support_indices(5, 100, clip), [0, 0, 15, 25])
    np.testing.assert_array_equal(
        support_indices(5, 100, spec(strategy="clip", num=5, stride=10, boundary="clamp")), [0, 10, 30, 40]
    )


def test_buffer_uniform_matches_ssvd_buffer():
    buffer = spec(strategy="buffer_uniform", num=6, radius=12)
    np.testing.assert_array_equal(support_indices(50, 100, buffer), [38, 43, 48, 52, 57, 62])
    np.testing.assert_array_equal(support_indices(2, 100, buffer), [0, 0, 0, 4, 9, 14])


def test_video_uniform_deterministic_and_random():
    uniform = spec(strategy="video_uniform", num=3)
    np.testing.assert_array_equal(
        support_indices(0, 7, uniform), [1, 3, 6]
    )  # evenly over 1..6 (np.round: half to even)
    drawn = support_indices(3, 7, uniform, np.random.default_rng(0))
    assert len(set(drawn.tolist())) == 3 and 3 not in drawn.tolist()
    np.testing.assert_array_equal(support_indices(0, 1, uniform), [0, 0, 0])  # a still


@pytest.mark.parametrize("seed", range(5))
def test_random_window_stays_in_window(seed):
    rng = np.random.default_rng(seed)
    window = spec(strategy="random_window", num=2, radius=9, boundary="pad")
    for ref in (0, 5, 30, 49):
        out = support_indices(ref, 50, window, rng)
        assert out.shape == (2,)
        assert np.all(np.abs(out - ref) <= 9) and np.all((out >= 0) & (out < 50))
        if 9 <= ref <= 40:  # window inside the video: distinct frames, never the reference
            assert ref not in out.tolist() and len(set(out.tolist())) == 2
    clamp = spec(strategy="random_window", num=2, radius=9, boundary="clamp")
    out = support_indices(0, 50, clamp, rng)  # window shifted to [0, 18]: no copy of frame 0 needed
    assert np.all((out >= 1) & (out <= 18)) and len(set(out.tolist())) == 2


def test_random_window_is_reproducible_and_needs_rng():
    window = spec(strategy="random_window", num=3, radius=5)
    a = support_indices(10, 40, window, np.random.default_rng(7))
    b = support_indices(10, 40, window, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="rng"):
        support_indices(10, 40, window)


def test_still_gets_copies_of_itself():
    for strategy in ("random_window", "fixed_stride", "sliding", "buffer_uniform"):
        out = support_indices(0, 1, spec(strategy=strategy, num=2, radius=4), np.random.default_rng(0))
        assert np.all(out == 0) and len(out) >= 2


def test_causal_takes_the_previous_frames():
    causal = spec(strategy="causal", num=3, stride=2)
    assert support_indices(10, 40, causal).tolist() == [4, 6, 8]
    assert support_indices(3, 40, causal).tolist() == [0, 0, 1]  # pad: copies of frame 0
    clamp = spec(strategy="causal", num=3, stride=2, boundary="clamp")
    assert support_indices(3, 40, clamp).tolist() == [0, 2, 4]  # window shifted into the video


def test_keyframe_triplet_follows_the_official_offsets():
    """LSTS official (L = 10): old keyframe at -10..-6, new keyframe at -5..+4, every value drawn."""
    triplet = spec(strategy="keyframe_triplet", num=2, radius=10)
    rng = np.random.default_rng(0)
    draws = np.stack([support_indices(20, 40, triplet, rng) - 20 for _ in range(2000)])
    assert set(draws[:, 0].tolist()) == set(range(-10, -5))
    assert set(draws[:, 1].tolist()) == set(range(-5, 5))
    # near the start both are clamped to frame 0; at the end the new keyframe to the last frame
    early = np.stack([support_indices(2, 40, triplet, rng) for _ in range(200)])
    assert early[:, 0].tolist() == [0] * 200 and early[:, 1].min() == 0 and early[:, 1].max() == 6
    late = np.stack([support_indices(39, 40, triplet, rng) for _ in range(200)])
    assert late[:, 1].max() == 39 and late[:, 0].max() <= 33
    assert support_indices(0, 1, triplet, rng).tolist() == [0, 0]  # a still: copies of itself
    with pytest.raises(ValueError, match="rng"):
        support_indices(20, 40, triplet)
    with pytest.raises(ValueError, match="num=2"):
        support_indices(20, 40, spec(strategy="keyframe_triplet", num=3, radius=10), rng)
    with pytest.raises(ValueError, match="radius"):
        support_indices(20, 40, spec(strategy="keyframe_triplet", num=2, radius=1), rng)


def test_bad_arguments():
    with pytest.raises(ValueError, match="outside"):
        support_indices(10, 10, spec(strategy="sliding", radius=2))
    with pytest.raises(ValueError, match="boundary"):
        support_indices(1, 10, spec(strategy="sliding", radius=2, boundary="wrap"))
    with pytest.raises(ValueError, match="strategy"):
        support_indices(1, 10, spec(strategy="bogus"))
