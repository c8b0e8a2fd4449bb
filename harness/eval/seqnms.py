"""Seq-NMS (Han et al. 2016) with FGFA's defaults: video-level rescoring of linked detections.

Per video and class (a *group*): a detection in frame ``t`` links to one in the next frame
``t+1`` of the video's frame list when their IoU (devkit "+1" convention) is at least
``link_iou``. The path through the links with the largest sum of scores is found by dynamic
programming; its boxes are kept and rescored to the path's mean score (``rescore="max"``: its
maximum); every other box of the path's frames overlapping the path's box there with IoU of at
least ``suppress_iou`` is removed. The process repeats on the remaining boxes until none is
left, so a box without any link forms a one-box path and keeps its score. Ties go to the earliest
frame, then the first box (the order of the input). STSN+, STMN, SSVD and LSTS report numbers
with it.

Speed: the groups are independent, so they run *batched*: one DP sweep over frame positions
serves every (video, class) group at once and extracts one path per group, with links stored
as edge lists (src, dst) between consecutive frames. The number of sweeps is the largest number
of paths of any one group, not the total; each sweep restarts from the earliest frame any path
touched (earlier running sums are unaffected), and the arrays are re-packed whenever half of
the boxes are gone, so the many late sweeps of a few long-lived groups cost little.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from tqdm import tqdm

from harness.data.records import Detections, FrameDetections, VideoRecord
from harness.eval.devkit import pixel_iou
from harness.eval.split import check_frame_detections, split_classes

# Videos are processed in batches of about this many boxes (bounded memory on a full VID val).
BATCH_BOXES = 400_000
# Re-pack the arrays when fewer than this share of the boxes is still alive.
COMPACT_BELOW = 0.5


def _frame_links(boxes, group, prev: slice, cur: slice, link_iou: float):
    """Edges ``(src, dst)`` (flat indices) between same-group boxes of consecutive frame slices.

    Both slices are sorted by group; the edges come out sorted by ``dst`` then ``src``.
    """
    groups_prev, groups_cur = group[prev], group[cur]
    lo = np.searchsorted(groups_prev, groups_cur, side="left")
    hi = np.searchsorted(groups_prev, groups_cur, side="right")
    counts = hi - lo
    dst = np.repeat(np.arange(cur.start, cur.stop), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    src = prev.start + np.repeat(lo, counts) + offsets
    linked = pixel_iou(boxes[src], boxes[dst]) >= link_iou
    return src[linked], dst[linked]


def _link_table(src: np.ndarray, dst: np.ndarray):
    """``(src, dst, segment starts, segment of each edge)``; edges sorted by ``dst``, one segment per dst."""
    if len(dst) == 0:
        return src, dst, np.zeros(0, np.int64), np.zeros(0, np.int64)
    new_segment = np.empty(len(dst), bool)
    new_segment[0] = True
    np.not_equal(dst[1:], dst[:-1], out=new_segment[1:])
    return src, dst, np.flatnonzero(new_segment), np.cumsum(new_segment) - 1


def seq_nms_flat(
    *,
    frame_position: np.ndarray,
    group: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    link_iou: float = 0.5,
    suppress_iou: float = 0.3,
    rescore: Literal["mean", "max"] = "mean",
) -> np.ndarray:
    """Seq-NMS of many independent groups given as flat arrays.

    Args:
        frame_position: int ``(N,)`` position of each box's frame in its video (0, 1, 2...).
        group: int ``(N,)`` group id (one per video and class); boxes link only inside a group.
        boxes: float ``(N, 4)``; scores: float ``(N,)``.

    Returns:
        float64 ``(N,)``: the new score of each kept box, NaN for removed boxes.
    """
    if rescore not in ("mean", "max"):
        raise ValueError(f"rescore must be 'mean' or 'max', got {rescore!r}")
    n = len(scores)
    new_scores = np.full(n, np.nan)
    if n == 0:
        return new_scores
    # Flat layout sorted by (frame position, group), stable: input order kept inside a frame.
    order = np.lexsort((group, frame_position))
    position, grp = frame_position[order], group[order]
    box, score = np.asarray(boxes, np.float64)[order], np.asarray(scores, np.float64)[order]
    num_positions = int(position.max()) + 1
    bounds = np.searchsorted(position, np.arange(num_positions + 1))
    frames = [slice(int(bounds[t]), int(bounds[t + 1])) for t in range(num_positions)]
    no_links = _link_table(np.zeros(0, np.int64), np.zeros(0, np.int64))
    links = [no_links] + [
        _link_table(*_frame_links(box, grp, frames[t - 1], frames[t], link_iou))
        for t in range(1, num_positions)
    ]
    group_ids, group_index = np.unique(grp, return_inverse=True)  # dense group index (N,)
    num_groups = len(group_ids)

    alive = np.ones(n, bool)
    best_sum = np.full(n, -np.inf)  # best score sum of a path ending at each box
    back = np.full(n, -1, np.int64)  # predecessor (flat index) on that path
    kept = np.full(n, np.nan)
    layout_index = np.arange(n)  # position of each (compacted) box in the sorted layout
    start = 0
    while alive.any():
        if alive.sum() < COMPACT_BELOW * len(alive):
            # Most boxes are gone: drop them (order preserved, so ties resolve the same way).
            survivors = np.flatnonzero(alive)
            remap = np.full(len(alive), -1, np.int64)
            remap[survivors] = np.arange(len(survivors))
            position, grp, group_index = position[survivors], grp[survivors], group_index[survivors]
            box, score, layout_index = box[survivors], score[survivors], layout_index[survivors]
            bounds = np.searchsorted(position, np.arange(num_positions + 1))
            frames = [slice(int(bounds[t]), int(bounds[t + 1])) for t in range(num_positions)]
            for t in range(1, num_positions):
                src, dst = links[t][:2]
                live = alive[src] & alive[dst]
                links[t] = _link_table(remap[src[live]], remap[dst[live]])
            alive = np.ones(len(survivors), bool)
            best_sum = np.full(len(survivors), -np.inf)
            back = np.full(len(survivors), -1, np.int64)
            start = 0
        for t in range(start, num_positions):
            cur = frames[t]
            own = np.where(alive[cur], score[cur], -np.inf)
            best_prev = np.full(cur.stop - cur.start, -np.inf)
            pred = np.full(cur.stop - cur.start, -1, np.int64)
            src, dst, seg_starts, seg_of_edge = links[t]
            if len(src):
                live = alive[src] & alive[dst]
                if not live.all():  # drop links of removed boxes: later sweeps get cheaper
                    links[t] = _link_table(src[live], dst[live])
                    src, dst, seg_starts, seg_of_edge = links[t]
            if len(src):
                values = best_sum[src]
                seg_max = np.maximum.reduceat(values, seg_starts)
                edge_ids = np.where(values == seg_max[seg_of_edge], np.arange(len(src)), len(src))
                first_max = np.minimum.reduceat(edge_ids, seg_starts)  # first best predecessor
                best_prev[dst[seg_starts] - cur.start] = seg_max
                pred[dst[seg_starts] - cur.start] = src[first_max]
            linked = np.isfinite(best_prev)
            best_sum[cur] = np.where(linked, own + np.where(linked, best_prev, 0.0), own)
            back[cur] = np.where(linked & alive[cur], pred, -1)

        # One path per group that still has boxes: it ends at the group's best alive box (first on ties).
        candidates = np.flatnonzero(alive)
        group_best = np.full(num_groups, -np.inf)
        np.maximum.at(group_best, group_index[candidates], best_sum[candidates])
        is_end = best_sum[candidates] == group_best[group_index[candidates]]
        ends = candidates[is_end]
        ends = ends[np.unique(group_index[ends], return_index=True)[1]]  # lowest flat index per group

        # Walk all paths back at once, frame by frame.
        path_boxes, path_group = [], []
        current = ends.copy()
        while len(current):
            path_boxes.append(current)
            path_group.append(group_index[current])
            current = back[current]
            current = current[current >= 0]
        path = np.concatenate(path_boxes)
        path_grp = np.concatenate(path_group)
        if rescore == "mean":
            value = np.bincount(path_grp, weights=score[path], minlength=num_groups) / np.maximum(
                np.bincount(path_grp, minlength=num_groups), 1
            )
        else:
            value = np.full(num_groups, -np.inf)
            np.maximum.at(value, path_grp, score[path])
        kept[layout_index[path]] = value[path_grp]

        # Suppress, in each path frame, the group's boxes overlapping the path box.
        path_at = np.full((num_positions, num_groups), -1, np.int64)
        path_at[position[path], path_grp] = path
        alive_idx = np.flatnonzero(alive)
        owner = path_at[position[alive_idx], group_index[alive_idx]]
        has_owner = owner >= 0
        victims = alive_idx[has_owner]
        overlap = pixel_iou(box[victims], box[owner[has_owner]])
        alive[victims[overlap >= suppress_iou]] = False
        alive[path] = False
        start = int(position[path].min())
    new_scores[order] = kept
    return new_scores


def seq_nms_track(
    boxes: list[np.ndarray],
    scores: list[np.ndarray],
    *,
    link_iou: float = 0.5,
    suppress_iou: float = 0.3,
    rescore: Literal["mean", "max"] = "mean",
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Seq-NMS over one class of one video.

    Args:
        boxes: per frame (in temporal order) float ``(N_t, 4)`` boxes ``x1, y1, x2, y2``.
        scores: per frame float ``(N_t,)``.

    Returns:
        ``(keep, new_scores)``: per frame, the int64 indices of the kept boxes and their float64
        rescored scores ``(K_t,)``.
    """
    counts = [len(s) for s in scores]
    flat_boxes = np.concatenate([np.asarray(b, np.float64).reshape(-1, 4) for b in boxes])
    new = seq_nms_flat(
        frame_position=np.repeat(np.arange(len(counts)), counts),
        group=np.zeros(sum(counts), np.int64),
        boxes=flat_boxes,
        scores=np.concatenate([np.asarray(s, np.float64) for s in scores]),
        link_iou=link_iou,
        suppress_iou=suppress_iou,
        rescore=rescore,
    )
    per_frame = np.split(new, np.cumsum(counts)[:-1])
    keep = [np.flatnonzero(~np.isnan(s)) for s in per_frame]
    return keep, [s[k] for s, k in zip(per_frame, keep, strict=True)]


def _video_batches(videos: list[VideoRecord], detections: Detections) -> list[list[VideoRecord]]:
    batches, batch, size = [], [], 0
    for video in videos:
        batch.append(video)
        size += sum(len(detections[(f.video, int(f.frame_id))]) for f in video.frames
                    if (f.video, int(f.frame_id)) in detections)
        if size >= BATCH_BOXES:
            batches.append(batch)
            batch, size = [], 0
    return batches + ([batch] if batch else [])


def seq_nms(
    videos: list[VideoRecord],
    detections: Detections,
    *,
    link_iou: float = 0.5,
    suppress_iou: float = 0.3,
    rescore: Literal["mean", "max"] = "mean",
    progress: bool = True,
) -> Detections:
    """Seq-NMS of every video and class of ``detections``; frames follow ``videos``' order.

    Returns new :class:`Detections` with the kept boxes (original coordinates and labels) and
    their rescored scores, per frame sorted by descending score. Frames that had detections keep
    an entry (possibly empty); frames without detections stay absent.
    """
    if rescore not in ("mean", "max"):
        raise ValueError(f"rescore must be 'mean' or 'max', got {rescore!r}")
    num_classes = len(split_classes(videos))
    known = {(frame.video, int(frame.frame_id)) for video in videos for frame in video.frames}
    for key, dets in detections.items():
        if key not in known:
            raise KeyError(f"detections given for frame {key}, which is not in the videos")
        check_frame_detections(dets, key=key, num_classes=num_classes)
    result: Detections = {}
    batches = _video_batches(videos, detections)
    for batch in tqdm(batches, desc="seq-nms", unit="batch", disable=not progress or len(batches) < 2):
        keys, positions, groups, boxes, scores, labels = [], [], [], [], [], []
        for v, video in enumerate(batch):
            for t, frame in enumerate(video.frames):
                key = (frame.video, int(frame.frame_id))
                if key not in detections:
                    continue
                dets = detections[key]
                k = len(dets)
                keys.append((key, k))
                positions.append(np.full(k, t, np.int64))
                label = np.asarray(dets.labels, np.int64)
                groups.append(v * num_classes + label)
                boxes.append(np.asarray(dets.boxes, np.float64).reshape(k, 4))
                scores.append(np.asarray(dets.scores, np.float64))
                labels.append(label)
        if not keys:
            continue
        flat_boxes, flat_labels = np.concatenate(boxes), np.concatenate(labels)
        new = seq_nms_flat(
            frame_position=np.concatenate(positions),
            group=np.concatenate(groups),
            boxes=flat_boxes,
            scores=np.concatenate(scores),
            link_iou=link_iou,
            suppress_iou=suppress_iou,
            rescore=rescore,
        )
        start = 0
        for key, k in keys:
            frame_scores = new[start : start + k]
            keep = np.flatnonzero(~np.isnan(frame_scores))
            keep = keep[np.argsort(-frame_scores[keep], kind="stable")]
            result[key] = FrameDetections(
                boxes=flat_boxes[start : start + k][keep].astype(np.float32),
                scores=frame_scores[keep].astype(np.float32),
                labels=flat_labels[start : start + k][keep],
            )
            start += k
    return result
