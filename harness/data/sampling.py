"""Which frames support a reference frame: every ``SupportStrategy`` of ``harness.config``.

:func:`support_indices` returns int64 frame indices (never the offsets), excluding the reference
itself except where a boundary makes a copy of it unavoidable. Its length depends only on the spec:

=================  ====================================================================  ===========
strategy           offsets relative to the reference                                     length
=================  ====================================================================  ===========
``none``           none                                                                  0
``random_window``  ``num`` distinct multiples of ``stride`` drawn in ``[-radius, radius]``  ``num``
                   without 0 (needs ``rng``)
``fixed_stride``   ``-num/2*stride .. -stride, stride .. num/2*stride`` (``num`` even)      ``num``
``sliding``        every multiple of ``stride`` in ``[-radius, radius]`` but 0             2*(radius//stride)
``clip``           a clip of ``num`` frames at ``stride``, reference at position ``num//2``; ``num - 1``
                   the supports are the clip's other frames (STMN)
``buffer_uniform`` ``num`` offsets evenly spaced over ``[-radius, radius]`` (SSVD buffer),  ``num``
                   rounded (an odd ``num`` includes offset 0: a copy of the reference)
``video_uniform``  ``num`` frames over the whole video: evenly spaced without ``rng``,      ``num``
                   drawn without replacement (among frames other than the reference) with
``causal``         ``-num*stride .. -stride``: the previous frames only (online methods)     ``num``
``keyframe_        old keyframe in ``[-L, -L/2 - 1]``, new keyframe in ``[-L/2, L/2 - 1]``     2
triplet``          (L = ``radius``, needs ``rng``; ``num`` must be 2), each clamped into the
                   video: LSTS's training triplet with the current frame
=================  ====================================================================  ===========

``keyframe_triplet`` follows LSTS's official code, not its text (which only says "three images
sampled from one video"): ``lib/utils/image.py`` ``get_triple_image_fromrec_offline`` (the loader
``AnchorLoaderOffline`` that ``lsts_rfcn/lsts_network_train_end2end.py`` trains with, segment length
10 in ``experiments/lsts_rfcn/cfgs/lsts_*.yaml``) draws the old keyframe at
``cur + randint(-L, -L/2)`` and the new one at ``cur + randint(-L/2, L/2)`` (numpy's exclusive upper
bound: offsets -10..-6 and -5..+4 for L = 10), both clamped into the video; the new keyframe may lie
after the current frame or be it. A still (one frame) gets two copies of itself.

Boundaries (offset-based strategies):

* ``"pad"`` (STSN, SSVD): each index is clamped to ``[0, n-1]``: supports falling before the video
  are copies of frame 0, after it copies of frame ``n-1``.
* ``"clamp"`` (FGFA): the whole window ``[ref + min offset, ref + max offset]`` is shifted by the
  smallest amount that puts it inside the video, keeping the spacing; when the video is shorter than
  the window it is aligned to frame 0 and the indices past the end are clamped to ``n-1``. For
  ``random_window`` the draw is made inside the shifted window. A shifted support can coincide
  with the reference.
"""

from __future__ import annotations

import numpy as np

from harness.config import SupportSpec


def _window_offsets(radius: int, stride: int) -> np.ndarray:
    """Multiples of ``stride`` in ``[-radius, radius]``, without 0, ascending."""
    positive = np.arange(stride, radius + 1, stride)
    return np.concatenate([-positive[::-1], positive]).astype(np.int64)


def _shift_into_video(ref: int, offsets: np.ndarray, num_frames: int) -> int:
    """The smallest shift putting ``ref + [min(offsets), max(offsets)]`` inside ``[0, num_frames-1]``."""
    if not len(offsets):
        return 0
    low, high = ref + int(min(offsets.min(), 0)), ref + int(max(offsets.max(), 0))
    if low < 0:
        return -low
    if high > num_frames - 1:
        return max(num_frames - 1 - high, -low)  # never shift the window's start before frame 0
    return 0


def _place(ref: int, offsets: np.ndarray, num_frames: int, boundary: str) -> np.ndarray:
    if boundary == "clamp":
        offsets = offsets + _shift_into_video(ref, offsets, num_frames)
    elif boundary != "pad":
        raise ValueError(f"unknown boundary mode {boundary!r} (expected 'pad' or 'clamp')")
    return np.clip(ref + offsets, 0, num_frames - 1).astype(np.int64)


def support_indices(
    ref: int, num_frames: int, spec: SupportSpec, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Indices (int64, length fixed by ``spec``, see the module table) of the supports of frame ``ref``.

    Args:
        ref: 0-based index of the reference frame, ``0 <= ref < num_frames``.
        num_frames: length of the video (1 for a still: every support is then the still itself).
        spec: strategy, number, radius, stride and boundary mode.
        rng: random source of the random strategies (``random_window``, ``video_uniform``).
    """
    if num_frames < 1 or not 0 <= ref < num_frames:
        raise ValueError(f"reference frame {ref} outside a video of {num_frames} frames")
    if spec.stride < 1:
        raise ValueError(f"SupportSpec.stride must be >= 1, got {spec.stride}")
    strategy = spec.strategy
    if strategy == "none":
        return np.zeros((0,), np.int64)
    if strategy == "fixed_stride":
        if spec.num % 2:
            raise ValueError(f"fixed_stride needs an even num (symmetric offsets), got {spec.num}")
        offsets = _window_offsets(spec.num // 2 * spec.stride, spec.stride)
        return _place(ref, offsets, num_frames, spec.boundary)
    if strategy == "sliding":
        return _place(ref, _window_offsets(spec.radius, spec.stride), num_frames, spec.boundary)
    if strategy == "clip":
        if spec.num < 1:
            raise ValueError(f"clip needs num >= 1 (frames in the clip), got {spec.num}")
        offsets = (np.arange(spec.num) - spec.num // 2) * spec.stride
        return _place(ref, offsets[offsets != 0].astype(np.int64), num_frames, spec.boundary)
    if strategy == "buffer_uniform":
        offsets = np.round(np.linspace(-spec.radius, spec.radius, spec.num)).astype(np.int64)
        return _place(ref, offsets, num_frames, spec.boundary)
    if strategy == "random_window":
        if rng is None:
            raise ValueError("random_window draws its supports at random: pass rng")
        candidates = _window_offsets(spec.radius, spec.stride)
        if spec.boundary == "clamp":  # draw inside the window shifted into the video
            shifted = candidates + _shift_into_video(ref, candidates, num_frames)
            candidates = np.unique(np.clip(ref + shifted, 0, num_frames - 1)) - ref
            candidates = candidates[candidates != 0] if np.any(candidates != 0) else candidates
        replace = len(candidates) < spec.num
        offsets = (
            rng.choice(candidates, size=spec.num, replace=replace) if len(candidates) else np.zeros(spec.num)
        )
        return np.clip(ref + np.sort(offsets), 0, num_frames - 1).astype(np.int64)
    if strategy == "video_uniform":
        others = np.delete(np.arange(num_frames), ref)
        if not len(others):
            return np.full(spec.num, ref, np.int64)
        if rng is None:
            positions = np.linspace(0, len(others) - 1, spec.num).round().astype(np.int64)
            return others[positions]
        return np.sort(rng.choice(others, size=spec.num, replace=len(others) < spec.num)).astype(np.int64)
    if strategy == "causal":
        offsets = -np.arange(spec.num, 0, -1, dtype=np.int64) * spec.stride  # ascending, all < 0
        return _place(ref, offsets, num_frames, spec.boundary)
    if strategy == "keyframe_triplet":
        return _keyframe_triplet(ref, num_frames, spec, rng)
    raise ValueError(f"unknown support strategy {strategy!r}")


def _keyframe_triplet(
    ref: int, num_frames: int, spec: SupportSpec, rng: np.random.Generator | None
) -> np.ndarray:
    """[old keyframe, new keyframe] of LSTS's training triplet (see the module docstring)."""
    if rng is None:
        raise ValueError("keyframe_triplet draws its keyframes at random: pass rng")
    if spec.num != 2:
        raise ValueError(f"keyframe_triplet has 2 supports (old and new keyframe); set num=2, got {spec.num}")
    length = spec.radius
    if length < 2:
        raise ValueError(f"keyframe_triplet needs radius = keyframe interval L >= 2, got {spec.radius}")
    half = length // 2  # the official int(0.5 * L)
    old = ref + int(rng.integers(-length, -half))  # numpy's high is exclusive, as np.random.randint's
    new = ref + int(rng.integers(-half, half))
    return np.clip(np.array([old, new], np.int64), 0, num_frames - 1)
