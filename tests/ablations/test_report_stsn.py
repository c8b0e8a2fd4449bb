"""The STSN and calibration reports rendered from the kept results tables (docs/results), in a temp folder."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ablations import calibration, stsn
from reports.verdicts import HOLDS
from tests.reports.html_checks import check_html

KEPT = Path(__file__).resolve().parents[2] / "docs" / "results"


def _copy(name: str, tmp_path: Path) -> Path:
    source = KEPT / name / "results.parquet"
    if not source.is_file():
        pytest.skip(f"no kept results at {source}")
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(source, folder / "results.parquet")
    return folder


def _write_weights(folder: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> None:
    """Fusion weights of the given seeds, peaked at k = 0 and decaying with |k| (sum 1 per seed)."""
    for seed in seeds:
        raw = {k: 0.04 + 0.03 * math.exp(-abs(k) / 3) + 0.001 * seed * (k == 1) for k in range(-9, 10)}
        total = sum(raw.values())
        path = folder / "collected" / f"STSN weights-s{seed}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"mean_weight_by_offset": {str(k): v / total for k, v in raw.items()}}))


def test_stsn_report_from_kept_results(tmp_path):
    folder = _copy("stsn", tmp_path)
    _write_weights(folder)
    md = stsn.ABLATION.render(folder).read_text()
    html = folder / "report.html"
    images = check_html(html)
    assert {"fig3_left.png", "stride.png", "fig3_right.png", "forest_paired_differences.png"} <= set(images)
    results = pd.read_parquet(folder / "results.parquet")
    # the control rows are absent from this older table: Table 1 and the claims say so
    for control in stsn.CONTROLS:
        if control not in set(results["variant"]):
            assert f"| {control}" in md and "not run: " + control in md
    assert md.index("What we learned") < md.index("## Deviations from the paper") < md.index("## Table 1")
    # every comparison gets one row in the claims table, plus the two weight claims
    claims_section = md.split("## Claims")[1]
    rows = [line for line in claims_section.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) - 1 == len(stsn._comparisons(quick=False)) + 2
    # Fig. 3 right: k = 0 is left out of "near", and the floor is the softmax's structural minimum
    floor = 1 / (1 + 18 * math.exp(2))
    assert f"{floor:.4f}" in md
    near_row = next(line for line in rows if line.startswith("| nearest supports"))
    assert "| " + HOLDS in near_row
    # the paper's number sits beside the same protocol's figure
    assert "paper (devkit mAP@0.5)" in md


def test_calibration_met_column_follows_the_verdict_rule(tmp_path):
    folder = _copy("calibration", tmp_path)
    md = calibration.ABLATION.render(folder).read_text()
    check_html(folder / "report.html")
    results = pd.read_parquet(folder / "results.parquet")
    assessments = calibration.criteria(results)
    table = calibration.criteria_table(assessments)
    for a, (_, row) in zip(assessments, table.iterrows(), strict=True):
        expected = {"holds": "yes", "does not hold": "no"}.get(a.verdict, a.verdict)
        assert row["met"] == expected
        if len(a.per_seed) > 1:
            assert row["95% CI"].startswith("[") and row["95% CI"] in md
    gain = next(a for a in assessments if "gains more than" in a.comparison.claim.text)
    # the rule: "met" only when the whole interval clears the margin
    assert (gain.low > calibration.MIN_GAIN) == (gain.verdict == HOLDS)


def _write_sampling(folder: Path, tmp_path: Path) -> None:
    """Two seeds' sampling examples on a 5-frame video of 32x32 PNGs; centre-tap share 0.6 and 0.8."""
    import cv2
    import numpy as np

    video = tmp_path / "video"
    video.mkdir()
    for i in range(5):
        cv2.imwrite(str(video / f"{i:06d}.png"), np.full((32, 32, 3), 40 * i, np.uint8))
    for seed, centre in ((0, 0.6), (1, 0.8)):
        share = [(1 - centre) / 8] * 4 + [centre] + [(1 - centre) / 8] * 4
        points = [[16 + dx, 16 + dy] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        example = {
            "video": "val/video_000001",
            "frame_id": 2,
            "image": str(video / "000002.png"),
            "box": [10.0, 10.0, 22.0, 22.0],
            "support_offsets": [-1, 1],
            "points_xy": [points, points],
            "tap_weight": share,
        }
        path = folder / "collected" / f"STSN sampling-s{seed}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"examples": [example]}))


def test_fig4_states_the_centre_tap_share_over_all_seeds(tmp_path):
    folder = _copy("stsn", tmp_path)
    _write_sampling(folder, tmp_path)
    md = stsn.ABLATION.render(folder).read_text()
    assert (folder / "fig4.png").stat().st_size > 1000
    assert (
        "holds 70% of the last deformable conv's kernel weight (seed 0: 60%, seed 1: 80%; 2 object centres)"
        in md
    )
    assert "identity initialisation" in md
    check_html(folder / "report.html")


def test_one_seed_quick_table_gives_every_claim_a_verdict(tmp_path):
    """Seed 0 of the kept table cut to the quick study's variants, less one control row: one row per
    claim, inconclusive where its variants ran and "not run" where they did not (the inconclusive count
    is what test_stsn_quick.py checks after a real quick run)."""
    folder = _copy("stsn", tmp_path)
    results = pd.read_parquet(folder / "results.parquet")
    declared = {v.name for v in stsn.build_study(quick=True).variants}
    dropped = {"STSN + average", "STSN + average + Seq-NMS"}  # as if this control had not been run
    keep = (results["seed"] == 0) & results["variant"].isin(declared - dropped)
    results = results[keep]
    results.to_parquet(folder / "results.parquet")
    (folder / "ablation.json").write_text(json.dumps({"quick": True, "seeds": [0]}))
    _write_weights(folder, seeds=(0,))
    md = stsn.ABLATION.render(folder).read_text()
    assert "QUICK smoke run" in md
    kept = set(results["variant"])
    runnable = [c for c in stsn.claims(quick=True) if {c.claim.a, c.claim.b} <= kept]
    assert 0 < len(runnable) < len(stsn.claims(quick=True))
    assert md.count("| inconclusive") == len(runnable) + 2
    assert md.count("| not run ") >= len(stsn.claims(quick=True)) - len(runnable)
    check_html(folder / "report.html")
