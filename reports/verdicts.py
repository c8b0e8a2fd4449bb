"""Verdicts on a paper's claims from several seeds: holds / does not hold / inconclusive.

A claim compares two quantities measured on the same seeds (paired): ``a`` vs ``b``. The paired
differences ``d_s = a_s - b_s`` give a mean and a two-sided 95% t-interval. A claim

* ``greater`` (the paper says a > b) holds when the interval lies above ``margin`` and does not hold
  when it lies below it; otherwise (or with a single seed, whose spread is unknown) it is inconclusive;
* ``not_worse`` (a >= b - tolerance, e.g. "STSN matches FGFA") holds when the interval's lower end is
  above ``-tolerance`` and does not hold when its upper end is below it.

The rule is stated in every report next to the verdicts, so a reader can recompute them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Claim:
    """One sentence of the paper reduced to a comparison of two measured quantities."""

    text: str  # the paper's claim, in words
    a: str  # name of quantity a (a key of the measurements)
    b: str  # name of quantity b
    kind: Literal["greater", "not_worse"] = "greater"
    margin: float = 0.0  # greater: a must exceed b by more than this
    tolerance: float = 1.0  # not_worse: a may be at most this much below b
    paper: str = ""  # the paper's numbers behind the claim


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    verdict: str
    mean_difference: float
    ci_low: float
    ci_high: float
    seeds: int


def paired_interval(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of a - b and its two-sided t-interval (NaN bounds for fewer than two pairs)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    diff = a - b
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(diff.mean())
    if diff.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, diff.size - 1) * diff.std(ddof=1) / math.sqrt(diff.size))
    return mean, mean - half, mean + half


def judge(claim: Claim, a: np.ndarray, b: np.ndarray) -> Verdict:
    """Apply the module's rule to the per-seed values of the claim's two quantities."""
    mean, low, high = paired_interval(a, b)
    n = int(np.isfinite(np.asarray(a, float) - np.asarray(b, float)).sum())
    if math.isnan(low):
        verdict = INCONCLUSIVE
    elif claim.kind == "greater":
        verdict = HOLDS if low > claim.margin else FAILS if high < claim.margin else INCONCLUSIVE
    elif claim.kind == "not_worse":
        verdict = HOLDS if low > -claim.tolerance else FAILS if high < -claim.tolerance else INCONCLUSIVE
    else:
        raise ValueError(f"unknown claim kind {claim.kind!r}")
    return Verdict(claim, verdict, mean, low, high, n)


RULE_TEXT = (
    "Verdict rule: for each claim the per-seed difference a - b is computed on paired seeds; "
    "'holds' when its two-sided 95% t-interval lies entirely on the claimed side "
    "(above the margin for 'a > b'; above -tolerance for 'a not worse than b'), 'does not hold' when it "
    "lies entirely on the other side, otherwise 'inconclusive' (always so with a single seed)."
)
