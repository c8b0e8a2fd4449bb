"""SparseVOD's two temporal parts of the Sparse R-CNN head, registered as proposal-level parts.

SparseVOD (Hashmi et al., BMVC 2022, Sec. 3.1) adds two modules to every stage of Sparse R-CNN's
dynamic head; the head itself (``harness.model.sparse_head``) owns proposals, RoI Align, the
instance-interactive head and the losses, and calls these parts:

* :class:`TemporalRoIFeatures` (TFE): the target frame's RoI features are enriched with features of
  the most similar positions of each support frame's feature map (Temporal RoI Align, Gong et al.,
  AAAI 2021: "Most Similar RoI Align"), then the target and the support RoI features are combined
  bin by bin, by multi-head attention ("MSA") or by their plain mean ("Avg", Table 4).
* :class:`ProposalAttention` (SPFA): each target proposal feature attends to all proposal features
  of the support frames of its image (SELSA-style, Eq. 1 read as ``softmax(θ(P̄_t) φ(P_s)^T / √d)
  σ(P_s)``: the printed order is dimensionally inconsistent, ``notes/wave2-methods.md`` 4.1), or
  adds their mean ("Avg").

Shapes: N = RoIs (all images of the batch together), B = images, T = support frames per image,
P = proposals per frame, D = feature channels, S x S = RoI bins, H x W = feature map.

Padded support slots (``support_valid`` False) may hold anything, even NaN: they are replaced by
zeros before anything reads them and masked out of every mean and softmax, so they cannot change the
output (nor receive gradient). With no valid support (or T = 0) both parts return their input
unchanged, in both modes, so a model at T = 0 is exactly the single-frame Sparse R-CNN.

Choices where paper and the public reference leave room (mmtracking's ``TemporalRoIAlign``,
``mmtrack/models/roi_heads/roi_extractors/temporal_roi_align.py``, was read to settle them; no code
copied):

* similarity: the dot product scaled by 1 / sqrt(D) (``similarity="dot"``, default). The paper's text
  says "cosine similarity" and mmtracking normalises both sides: ``similarity="cosine"`` does that
  (softmax over the unscaled cosines, as mmtracking).
* top-k: mmtracking uses the 2 most similar points per bin and support frame; the default here is
  ``top_k=4`` (as asked by the lead; set ``top_k=2`` for mmtracking's). A ``top_k`` larger than the
  support map's H * W is an error (``ValueError``), not clamped.
* TFE's "MSA": mmtracking's temporal attention embeds the RoI features with a 3x3 conv, computes per
  head and bin a softmax over the 1 + T frames of target-vs-frame dot products and returns the
  weighted sum of the raw features (no value/output projection, no residual). Here it is a standard
  ``nn.MultiheadAttention`` per bin (query = the target bin, keys = values = the target bin and its
  valid support bins, padded ones masked) whose output is *added to the target* (residual, no norm).
  mmtracking's average mode (``num_temporal_attention_blocks <= 0``) is ``mode="avg"``.
* SPFA "MSA": ``nn.MultiheadAttention`` (query = target proposals, keys = values = the T * P support
  proposals of the same image, padded frames masked), then ``LayerNorm(target + attention)``.
  SPFA "Avg" (the paper does not define it): ``target + mean of all valid support proposal features
  of the image``, i.e. the residual path of the attention with uniform weights and no projections;
  parameter-free, and it does not assume that proposal slot p means the same object in every frame.

Registry: ``"proposal:tfe"`` (site ``"roi"``) and ``"proposal:spfa"`` (site ``"proposal"``), built by
``harness.aggregation.ProposalLevelAggregator`` (``aggregation.aggregator = "proposal_level"``,
``aggregator_kwargs = {"parts": {"tfe": {...}, "spfa": {...}}}``) and run by the sparse head in every
stage: TFE on the target's RoI features before the dynamic interaction, SPFA on the target's proposal
features after the stage's feed-forward network, before its classification and box outputs (so every
stage's supervised output sees it; the paper's Fig. 2 puts SPFA "after each IIH" without saying
whether the stage's own outputs see it). One TFE and one SPFA serve all stages (shared weights; the
paper does not say whether they are per stage).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.aggregation import ProposalPart, register

Mode = Literal["attention", "avg"]
Similarity = Literal["dot", "cosine"]
MODES = ("attention", "avg")
SIMILARITIES = ("dot", "cosine")


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_common(dim: int, num_heads: int, mode: str) -> None:
    _check_int("dim", dim, 1)
    _check_int("num_heads", num_heads, 1)
    if dim % num_heads:
        raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _check_valid(name: str, valid: Tensor, expected: tuple[int, ...], names: str) -> None:
    if tuple(valid.shape) != expected or valid.dtype != torch.bool:
        raise ValueError(
            f"{name} must be a ({names}) bool tensor = {expected}, got {valid.dtype} {tuple(valid.shape)}"
        )


@register("proposal", "tfe")
class TemporalRoIFeatures(ProposalPart):
    """SparseVOD's TFE: target RoI features enriched with the most similar support-frame features.

    Args:
        dim: D, channels of RoI features and support maps.
        top_k: most similar support positions per RoI bin and support frame (>= 1, <= H * W).
        num_heads: heads of the temporal attention (``mode="attention"``); must divide ``dim``.
        mode: ``"attention"`` (residual multi-head attention over target + supports, per bin) or
            ``"avg"`` (mean of the target and its valid supports, per bin; no parameters).
        similarity: ``"dot"`` (dot product / sqrt(D), default) or ``"cosine"`` (mmtracking's).

    ``forward(target_roi (N, D, S, S), support_maps (B, T, D, H, W), support_valid (B, T) bool,
    roi_image (N,) int64) -> (N, D, S, S)``. RoI n belongs to image ``roi_image[n]`` and is compared
    with that image's T support maps only (the maps are passed once per image, not per RoI). A RoI
    whose image has no valid support is returned unchanged (both modes).

    For each bin feature q (D,) of a RoI and each support frame: similarity of q with every position
    of the support map, the ``top_k`` most similar positions, a softmax over their k similarities,
    and the weighted sum of their features (:meth:`support_features`, (N, T, D, S, S)).
    """

    site = "roi"

    def __init__(
        self,
        dim: int,
        *,
        top_k: int = 4,
        num_heads: int = 4,
        mode: Mode = "attention",
        similarity: Similarity = "dot",
    ):
        super().__init__()
        _check_common(dim, num_heads, mode)
        _check_int("top_k", top_k, 1)
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        self.dim, self.top_k, self.num_heads = dim, top_k, num_heads
        self.mode, self.similarity = mode, similarity
        self.attention = (
            nn.MultiheadAttention(dim, num_heads, batch_first=True) if mode == "attention" else None
        )

    def _check(
        self, target_roi: Tensor, support_maps: Tensor, support_valid: Tensor, roi_image: Tensor
    ) -> None:
        if target_roi.dim() != 4 or target_roi.shape[1] != self.dim:
            raise ValueError(f"target_roi must be (N, D={self.dim}, S, S), got {tuple(target_roi.shape)}")
        if support_maps.dim() != 5 or support_maps.shape[2] != self.dim:
            raise ValueError(
                f"support_maps must be (B, T, D={self.dim}, H, W), got {tuple(support_maps.shape)}"
            )
        b, t, _, h, w = support_maps.shape
        _check_valid("support_valid", support_valid, (b, t), "B, T")
        n = target_roi.shape[0]
        if tuple(roi_image.shape) != (n,) or roi_image.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"roi_image must be an (N={n},) int64 tensor, got {roi_image.dtype} {tuple(roi_image.shape)}"
            )
        if n and (int(roi_image.min()) < 0 or int(roi_image.max()) >= b):
            raise ValueError(
                f"roi_image values must be image indices in [0, B={b}) of support_maps "
                f"{tuple(support_maps.shape)}, got range [{int(roi_image.min())}, {int(roi_image.max())}]"
            )
        if self.top_k > h * w:
            raise ValueError(
                f"top_k={self.top_k} exceeds the H*W={h * w} positions of support_maps "
                f"{tuple(support_maps.shape)}"
            )

    def support_features(
        self, target_roi: Tensor, support_maps: Tensor, support_valid: Tensor, roi_image: Tensor
    ) -> Tensor:
        """The most-similar support RoI features (N, T, D, S, S); zeros for padded support slots."""
        self._check(target_roi, support_maps, support_valid, roi_image)
        n, d, sh, sw = target_roi.shape
        t = support_maps.shape[1]
        maps = torch.where(support_valid[:, :, None, None, None], support_maps, 0.0)  # padding never read
        keys = maps.flatten(3)  # (B, T, D, HW)
        queries = target_roi.flatten(2).transpose(1, 2)  # (N, SS, D)
        frame = torch.arange(t, device=maps.device)[None, None, :, None]
        out = target_roi.new_zeros((n, sh * sw, t, d))
        # One image at a time: each RoI is compared with its own image's maps only, without
        # materialising the maps per RoI.
        for image in roi_image.unique().tolist():
            rows = (roi_image == image).nonzero().flatten()
            query, key = queries[rows], keys[image]  # (n_b, SS, D), (T, D, HW)
            if self.similarity == "cosine":
                scores = torch.einsum("nsd,tdp->nstp", F.normalize(query, dim=-1), F.normalize(key, dim=1))
            else:
                scores = torch.einsum("nsd,tdp->nstp", query, key) / math.sqrt(d)
            top_scores, top_index = scores.topk(self.top_k, dim=-1)  # (n_b, SS, T, k)
            weights = top_scores.softmax(dim=-1)
            picked = key.transpose(1, 2)[frame, top_index]  # (n_b, SS, T, k, D)
            out = out.index_copy(0, rows, (weights.unsqueeze(-1) * picked).sum(dim=3))  # out of place
        valid = support_valid[roi_image]  # (N, T)
        out = torch.where(valid[:, None, :, None], out, 0.0)
        return out.permute(0, 2, 3, 1).reshape(n, t, d, sh, sw)

    def forward(
        self, target_roi: Tensor, support_maps: Tensor, support_valid: Tensor, roi_image: Tensor
    ) -> Tensor:
        supports = self.support_features(target_roi, support_maps, support_valid, roi_image)
        n, d, sh, sw = target_roi.shape
        t = supports.shape[1]
        if n == 0 or t == 0:
            return target_roi
        valid = support_valid[roi_image]  # (N, T)
        has_support = valid.any(dim=1)[:, None, None, None]  # (N, 1, 1, 1)
        if self.mode == "avg":
            count = 1 + valid.sum(dim=1).to(target_roi.dtype)  # target + valid supports (padded are zeros)
            return (target_roi + supports.sum(dim=1)) / count[:, None, None, None]
        # one attention per bin: sequence = [target, support_1, ..., support_T]
        tokens = torch.cat([target_roi.unsqueeze(1), supports], dim=1)  # (N, 1 + T, D, S, S)
        tokens = tokens.permute(0, 3, 4, 1, 2).reshape(n * sh * sw, 1 + t, d)
        frame_valid = torch.cat([valid.new_ones(n, 1), valid], dim=1)  # the target is always a key
        padding = ~frame_valid[:, None, :].expand(n, sh * sw, 1 + t).reshape(n * sh * sw, 1 + t)
        attended, _ = self.attention(
            tokens[:, :1], tokens, tokens, key_padding_mask=padding, need_weights=False
        )
        attended = attended.reshape(n, sh, sw, d).permute(0, 3, 1, 2)
        return torch.where(has_support, target_roi + attended, target_roi)


@register("proposal", "spfa")
class ProposalAttention(ProposalPart):
    """SparseVOD's SPFA: each target proposal feature attends to the support proposals of its image.

    Args:
        dim: D, channels of the proposal features.
        num_heads: attention heads; must divide ``dim``.
        mode: ``"attention"``: ``LayerNorm(target + MHA(target, supports, supports))`` over the
            T * P' support proposals of the image (padded frames masked); ``"avg"``:
            ``target + mean of the image's valid support proposal features`` (no parameters).

    ``forward(target (B, P, D), supports (B, T, P', D), support_valid (B, T) bool) -> (B, P, D)``
    (P' = P in SparseVOD; any P' is accepted). An image with no valid support gets its target back
    exactly in both modes (the attention is skipped there, so no all-masked softmax).
    """

    site = "proposal"

    def __init__(self, dim: int, *, num_heads: int = 4, mode: Mode = "attention"):
        super().__init__()
        _check_common(dim, num_heads, mode)
        self.dim, self.num_heads, self.mode = dim, num_heads, mode
        if mode == "attention":
            self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
            self.norm = nn.LayerNorm(dim)

    def _check(self, target: Tensor, supports: Tensor, support_valid: Tensor) -> None:
        if target.dim() != 3 or target.shape[2] != self.dim:
            raise ValueError(f"target must be (B, P, D={self.dim}), got {tuple(target.shape)}")
        b = target.shape[0]
        if supports.dim() != 4 or supports.shape[0] != b or supports.shape[3] != self.dim:
            raise ValueError(f"supports must be (B={b}, T, P, D={self.dim}), got {tuple(supports.shape)}")
        _check_valid("support_valid", support_valid, tuple(supports.shape[:2]), "B, T")

    def forward(self, target: Tensor, supports: Tensor, support_valid: Tensor) -> Tensor:
        self._check(target, supports, support_valid)
        b, p, d = target.shape
        t, ps = supports.shape[1:3]
        if b == 0 or p == 0 or t * ps == 0:
            return target
        supports = torch.where(support_valid[:, :, None, None], supports, 0.0)  # padding never read
        has_support = support_valid.any(dim=1)[:, None, None]  # (B, 1, 1)
        if self.mode == "avg":
            count = (support_valid.sum(dim=1) * ps).clamp(min=1).to(target.dtype)  # (B,)
            return target + supports.sum(dim=(1, 2))[:, None, :] / count[:, None, None]
        keys = supports.reshape(b, t * ps, d)  # frame-major: key t * P' + q is proposal q of frame t
        key_valid = support_valid.repeat_interleave(ps, dim=1)  # (B, T * P')
        # An image without valid support would softmax over nothing (NaN): let it attend to its
        # zeroed slots instead, and discard the result below.
        key_valid = key_valid | ~has_support[:, :, 0]
        attended, _ = self.attention(target, keys, keys, key_padding_mask=~key_valid, need_weights=False)
        return torch.where(has_support, self.norm(target + attended), target)
