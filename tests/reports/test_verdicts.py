import math

import numpy as np
import pytest
from scipy import stats

from reports.verdicts import FAILS, HOLDS, INCONCLUSIVE, Claim, judge, paired_interval


def test_paired_interval_matches_a_hand_computed_t_interval():
    a, b = np.array([3.0, 4.0, 5.0]), np.array([1.0, 1.0, 1.0])
    mean, low, high = paired_interval(a, b)
    # differences 2, 3, 4: mean 3, sd 1, half width t(0.975, 2) / sqrt(3)
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert mean == pytest.approx(3.0)
    assert (low, high) == pytest.approx((3 - half, 3 + half))


def test_greater_claim_all_three_outcomes():
    claim = Claim("a beats b", "a", "b")
    assert judge(claim, np.array([3.0, 4, 5]), np.zeros(3)).verdict == HOLDS
    assert judge(claim, np.zeros(3), np.array([3.0, 4, 5])).verdict == FAILS
    assert judge(claim, np.array([1.0, -1, 0.5]), np.zeros(3)).verdict == INCONCLUSIVE


def test_single_seed_is_always_inconclusive():
    assert judge(Claim("x", "a", "b"), np.array([10.0]), np.array([0.0])).verdict == INCONCLUSIVE


def test_not_worse_uses_the_tolerance():
    claim = Claim("a matches b", "a", "b", kind="not_worse", tolerance=1.0)
    assert judge(claim, np.array([9.6, 9.7, 9.8]), np.array([10.0, 10.0, 10.0])).verdict == HOLDS
    assert judge(claim, np.array([7.0, 7.1, 7.2]), np.array([10.0, 10.0, 10.0])).verdict == FAILS


def test_unpaired_lengths_raise():
    with pytest.raises(ValueError, match="differ in length"):
        paired_interval(np.zeros(2), np.zeros(3))
