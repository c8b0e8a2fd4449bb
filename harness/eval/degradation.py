"""AP split by whether a ground-truth object is degraded in that frame (SynthVID) or clean.

SynthVID records, per object and frame, a bit mask over ``records.DEGRADATIONS`` (motion blur,
defocus, occlusion, ...). The question temporal aggregation is meant to answer is whether it
helps on the degraded frames of an object more than on its clean ones; this evaluates the same
detections with only one kind of ground truth counting at a time, using FGFA's bucket rules
(the motion breakdown's machinery, :func:`harness.eval.motion.evaluate_buckets`).

Buckets: ``clean`` (mask 0), ``degraded`` (any bit), and one per flag (that bit set, whatever
the others). On real VID every mask is 0, so only ``clean`` has an AP; the others are ``None``.
"""

from __future__ import annotations

import numpy as np

from harness.data.records import DEGRADATIONS
from harness.eval.devkit import Protocol
from harness.eval.motion import evaluate_buckets
from harness.eval.split import EvalSplit


def degradation_buckets(degradation: np.ndarray) -> dict[str, np.ndarray]:
    """Bool masks ``(G,)`` for ``clean``, ``degraded`` and each flag, from bit masks ``(G,)``."""
    buckets = {"clean": degradation == 0, "degraded": degradation != 0}
    for bit, name in enumerate(DEGRADATIONS):
        buckets[name] = (degradation >> bit) & 1 == 1
    return buckets


def evaluate_degradation(split: EvalSplit, *, protocol: Protocol, progress: bool = True) -> dict:
    """mAP (percent) per degradation bucket of ``split`` under ``protocol``, with each bucket's share."""
    unknown = split.gt_degradation >> len(DEGRADATIONS)
    if (split.gt_degradation < 0).any() or unknown.any():
        i = int(np.argmax((split.gt_degradation < 0) | (unknown != 0)))
        raise ValueError(
            f"ground truth of frame {split.frame_keys[split.gt_frame[i]]}: degradation mask "
            f"{int(split.gt_degradation[i])} has bits outside {DEGRADATIONS}"
        )
    buckets = degradation_buckets(split.gt_degradation)
    return evaluate_buckets(split, buckets, protocol=protocol, progress=progress)
