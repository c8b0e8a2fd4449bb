"""SparseVOD's TFE and SPFA (methods.sparsevod): the most-similar support features against a python loop,
both modes against per-bin / per-image references built by hand, padded supports never read, no valid
support = the input back, gradients, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from methods.sparsevod import ProposalAttention, TemporalRoIFeatures

D, S, H, W = 8, 2, 3, 4


def _tfe_inputs():
    """3 RoIs on 2 images (RoIs 0 and 2 on image 0, RoI 1 on image 1); image 0 has support 1 padded
    (NaN), image 1 has support 0 valid only."""
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(3, D, S, S, generator=generator)
    maps = torch.randn(2, 3, D, H, W, generator=generator)
    valid = torch.tensor([[True, False, True], [True, False, False]])
    maps[~valid] = float("nan")
    roi_image = torch.tensor([0, 1, 0])
    return target, maps, valid, roi_image


def _spfa_inputs():
    generator = torch.Generator().manual_seed(1)
    target = torch.randn(3, 5, D, generator=generator)
    supports = torch.randn(3, 3, 4, D, generator=generator)  # P' = 4 support proposals per frame
    valid = torch.tensor([[True, False, True], [False, True, False], [False, False, False]])
    supports[~valid] = float("nan")
    return target, supports, valid


def _loop_support_features(target, maps, valid, roi_image, top_k, similarity):
    """Reference: for each RoI bin and valid support frame, score every position, sort, softmax the
    top_k scores, sum the features with those weights (python floats)."""
    n, d, sh, sw = target.shape
    t, _, h, w = maps.shape[1:]
    out = torch.zeros(n, t, d, sh, sw)
    for i in range(n):
        image = int(roi_image[i])
        for frame in range(t):
            if not valid[image, frame]:
                continue
            for y in range(sh):
                for x in range(sw):
                    q = target[i, :, y, x]
                    scored = []
                    for py in range(h):
                        for px in range(w):
                            k = maps[image, frame, :, py, px]
                            if similarity == "cosine":
                                score = float(q @ k) / (float(q.norm()) * float(k.norm()))
                            else:
                                score = float(q @ k) / math.sqrt(d)
                            scored.append((score, py, px))
                    top = sorted(scored, key=lambda entry: -entry[0])[:top_k]
                    exps = [math.exp(score - top[0][0]) for score, _, _ in top]
                    for e, (_, py, px) in zip(exps, top, strict=True):
                        out[i, frame, :, y, x] += e / sum(exps) * maps[image, frame, :, py, px]
    return out


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("top_k", [1, 3])
def test_support_features_match_a_python_loop(similarity: str, top_k: int) -> None:
    target, maps, valid, roi_image = _tfe_inputs()
    tfe = TemporalRoIFeatures(D, top_k=top_k, similarity=similarity)
    out = tfe.support_features(target, maps, valid, roi_image)
    expected = _loop_support_features(target, maps, valid, roi_image, top_k, similarity)
    assert out.shape == (3, 3, D, S, S)
    torch.testing.assert_close(out, expected)
    assert torch.equal(out[[0, 2], 1], torch.zeros(2, D, S, S))  # padded slot: zeros, not NaN
    assert torch.equal(out[1, 1:], torch.zeros(2, D, S, S))


def test_top1_picks_the_most_similar_position() -> None:
    """A support map that holds 3 * q at one position and small noise elsewhere: top-1 returns it."""
    generator = torch.Generator().manual_seed(2)
    target = torch.randn(1, D, 1, 1, generator=generator)
    maps = 0.01 * torch.randn(1, 1, D, H, W, generator=generator)
    maps[0, 0, :, 2, 1] = 3 * target[0, :, 0, 0]
    tfe = TemporalRoIFeatures(D, top_k=1, mode="avg")
    valid, roi_image = torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, dtype=torch.int64)
    picked = tfe.support_features(target, maps, valid, roi_image)
    assert torch.equal(picked[0, 0, :, 0, 0], maps[0, 0, :, 2, 1])
    torch.testing.assert_close(tfe(target, maps, valid, roi_image), 2 * target)  # (q + 3q) / 2


def test_tfe_avg_is_the_mean_of_target_and_valid_supports() -> None:
    target, maps, valid, roi_image = _tfe_inputs()
    out = TemporalRoIFeatures(D, top_k=3, mode="avg")(target, maps, valid, roi_image)
    supports = _loop_support_features(target, maps, valid, roi_image, 3, "dot")
    torch.testing.assert_close(out[0], (target[0] + supports[0, 0] + supports[0, 2]) / 3)
    torch.testing.assert_close(out[1], (target[1] + supports[1, 0]) / 2)
    torch.testing.assert_close(out[2], (target[2] + supports[2, 0] + supports[2, 2]) / 3)


def test_tfe_attention_is_a_residual_per_bin_attention_over_the_valid_frames() -> None:
    """Reference: per RoI bin, the module's own attention over [target, valid supports] only (no
    mask at all), added to the target."""
    torch.manual_seed(0)
    target, maps, valid, roi_image = _tfe_inputs()
    tfe = TemporalRoIFeatures(D, top_k=3, num_heads=2).eval()
    out = tfe(target, maps, valid, roi_image)
    supports = _loop_support_features(target, maps, valid, roi_image, 3, "dot")
    for i in range(3):
        frames = valid[roi_image[i]].nonzero().flatten().tolist()
        for y in range(S):
            for x in range(S):
                query = target[i, :, y, x]
                tokens = torch.stack([query] + [supports[i, f, :, y, x] for f in frames])[None]
                attended, _ = tfe.attention(query[None, None], tokens, tokens)
                torch.testing.assert_close(out[i, :, y, x], query + attended[0, 0])


def test_spfa_attention_matches_per_image_attention_over_valid_frames() -> None:
    torch.manual_seed(0)
    target, supports, valid = _spfa_inputs()
    spfa = ProposalAttention(D, num_heads=2).eval()
    out = spfa(target, supports, valid)
    for b in range(2):
        keys = supports[b, valid[b]].reshape(1, -1, D)  # the valid frames' proposals only
        attended, _ = spfa.attention(target[b : b + 1], keys, keys)
        torch.testing.assert_close(out[b], spfa.norm(target[b] + attended[0]))
    assert torch.equal(out[2], target[2])  # no valid support: the target itself


def test_spfa_avg_adds_the_mean_of_the_valid_support_proposals() -> None:
    target, supports, valid = _spfa_inputs()
    out = ProposalAttention(D, mode="avg")(target, supports, valid)
    mean0 = torch.cat([supports[0, 0], supports[0, 2]]).mean(dim=0)
    torch.testing.assert_close(out[0], target[0] + mean0)
    torch.testing.assert_close(out[1], target[1] + supports[1, 1].mean(dim=0))
    assert torch.equal(out[2], target[2])


@pytest.mark.parametrize("mode", ["attention", "avg"])
def test_padded_supports_do_not_change_the_output(mode: str) -> None:
    torch.manual_seed(0)
    target, maps, valid, roi_image = _tfe_inputs()
    tfe = TemporalRoIFeatures(D, top_k=2, mode=mode)
    out = tfe(target, maps, valid, roi_image)
    assert torch.isfinite(out).all()
    other = maps.clone()
    other[~valid] = 100 * torch.randn(int((~valid).sum()), D, H, W)
    assert torch.equal(tfe(target, other, valid, roi_image), out)

    target_p, supports, valid_p = _spfa_inputs()
    spfa = ProposalAttention(D, mode=mode)
    out_p = spfa(target_p, supports, valid_p)
    assert torch.isfinite(out_p).all()
    other_p = supports.clone()
    other_p[~valid_p] = 100 * torch.randn(int((~valid_p).sum()), 4, D)
    assert torch.equal(spfa(target_p, other_p, valid_p), out_p)


@pytest.mark.parametrize("mode", ["attention", "avg"])
def test_no_valid_support_returns_the_target(mode: str) -> None:
    target, maps, valid, roi_image = _tfe_inputs()
    none = torch.zeros_like(valid)
    tfe = TemporalRoIFeatures(D, top_k=2, mode=mode)
    assert torch.equal(tfe(target, maps, none, roi_image), target)
    assert torch.equal(tfe(target, maps[:, :0], valid[:, :0], roi_image), target)  # T = 0
    target_p, supports, valid_p = _spfa_inputs()
    spfa = ProposalAttention(D, mode=mode)
    assert torch.equal(spfa(target_p, supports, torch.zeros_like(valid_p)), target_p)
    assert torch.equal(spfa(target_p, supports[:, :0], valid_p[:, :0]), target_p)


@pytest.mark.parametrize("mode", ["attention", "avg"])
def test_gradients_reach_target_and_valid_supports_only(mode: str) -> None:
    torch.manual_seed(0)
    target, maps, valid, roi_image = _tfe_inputs()
    target.requires_grad_(True)
    maps.requires_grad_(True)
    TemporalRoIFeatures(D, top_k=2, mode=mode)(target, maps, valid, roi_image).square().sum().backward()
    assert torch.isfinite(target.grad).all() and target.grad.abs().sum() > 0
    per_slot = maps.grad.abs().sum(dim=(2, 3, 4))  # (B, T)
    assert (per_slot[valid] > 0).all() and torch.equal(per_slot[~valid], torch.zeros(3))

    target_p, supports, valid_p = _spfa_inputs()
    target_p.requires_grad_(True)
    supports.requires_grad_(True)
    ProposalAttention(D, mode=mode)(target_p, supports, valid_p).square().sum().backward()
    assert torch.isfinite(target_p.grad).all() and target_p.grad.abs().sum() > 0
    per_slot_p = supports.grad.abs().sum(dim=(2, 3))
    assert (per_slot_p[valid_p] > 0).all() and torch.equal(per_slot_p[~valid_p], torch.zeros(6))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"mode": "msa"}, "mode"),
        ({"num_heads": 3}, "num_heads"),
        ({"similarity": "l2"}, "similarity"),
    ],
)
def test_tfe_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TemporalRoIFeatures(D, **kwargs)


@pytest.mark.parametrize("kwargs, match", [({"mode": "mean"}, "mode"), ({"num_heads": 3}, "divisible")])
def test_spfa_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ProposalAttention(D, **kwargs)


def test_tfe_bad_inputs_name_the_argument() -> None:
    target, maps, valid, roi_image = _tfe_inputs()
    tfe = TemporalRoIFeatures(D, top_k=2)
    cases = [
        ((target[0], maps, valid, roi_image), r"target_roi must be \(N, D=8"),
        ((target[:, :4], maps, valid, roi_image), "target_roi"),
        ((target, maps[0], valid, roi_image), r"support_maps must be \(B, T, D=8"),
        ((target, maps, valid[:, :2], roi_image), r"support_valid .*\(2, 3\)"),
        ((target, maps, valid.float(), roi_image), "support_valid"),
        ((target, maps, valid, roi_image[:2]), r"roi_image must be an \(N=3,\)"),
        ((target, maps, valid, roi_image.float()), "roi_image"),
        ((target, maps, valid, torch.tensor([0, 2, 0])), r"roi_image values .*\[0, B=2\)"),
        ((target, maps, valid, torch.tensor([0, -1, 0])), "roi_image values"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            tfe(*args)


def test_tfe_top_k_larger_than_the_map_is_an_error() -> None:
    target, maps, valid, roi_image = _tfe_inputs()
    tfe = TemporalRoIFeatures(D, top_k=H * W + 1)
    with pytest.raises(ValueError, match=r"top_k=13 exceeds the H\*W=12"):
        tfe(target, maps, valid, roi_image)
    TemporalRoIFeatures(D, top_k=H * W)(target, maps, valid, roi_image)  # every position: allowed


def test_spfa_bad_inputs_name_the_argument() -> None:
    target, supports, valid = _spfa_inputs()
    spfa = ProposalAttention(D)
    cases = [
        ((target[0], supports, valid), r"target must be \(B, P, D=8\)"),
        ((target, supports[:2], valid), r"supports must be \(B=3, T, P, D=8\)"),
        ((target, supports[..., :4], valid), "supports"),
        ((target, supports, valid[:, :2]), r"support_valid .*\(3, 3\)"),
        ((target, supports, valid.long()), "support_valid"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            spfa(*args)
