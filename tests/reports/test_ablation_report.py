"""The standard ablation report: hand-computed verdicts, box-count rules, cost pooling, HTML integrity."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from reports.ablation_report import (
    MIN_BOXES,
    NOT_RUN,
    Comparison,
    ReportSpec,
    assess,
    box_count,
    build_report,
    cost_table,
    gain_table,
    paired_gains,
    share_column,
    summary_table,
    what_we_learned,
)
from reports.verdicts import FAILS, HOLDS, INCONCLUSIVE, Claim
from tests.reports.html_checks import check_html


def _results() -> pd.DataFrame:
    """Two variants x three seeds; 'b' is 1, 2, 3 points below 'a'; 10% of 200 boxes are 'fast'."""
    rows = []
    for seed, (a, b) in enumerate([(60.0, 59.0), (62.0, 60.0), (61.0, 58.0)]):
        for variant, value in (("a", a), ("b", b)):
            rows.append(
                {
                    "variant": variant,
                    "row": variant,
                    "group": "table1",
                    "seed": seed,
                    "devkit_map": value,
                    "devkit_motion_fast": value - 10,
                    "devkit_motion_share_fast": 0.1,
                    "devkit_motion_slow": value + 5,
                    "devkit_motion_share_slow": 0.9,
                    "num_gt": 200.0,
                    "num_frames": 50.0,
                }
            )
    return pd.DataFrame(rows)


def test_assess_hand_computed_interval_and_per_seed():
    # d = 1, 2, 3: mean 2, sd 1, half width t(0.975, 2) / sqrt(3) = 4.3027 / 1.7321 = 2.4841
    a = assess(_results(), Comparison(Claim("a beats b", "a", "b")))
    assert a.per_seed == {0: 1.0, 1: 2.0, 2: 3.0}
    assert a.mean == pytest.approx(2.0)
    assert a.low == pytest.approx(2.0 - 2.4841, abs=1e-3) and a.high == pytest.approx(4.4841, abs=1e-3)
    assert a.verdict == INCONCLUSIVE and not a.contradicted


def test_reversed_claim_is_contradicted_on_every_seed_even_when_inconclusive():
    a = assess(_results(), Comparison(Claim("b beats a", "b", "a")))
    assert a.verdict == INCONCLUSIVE and a.contradicted
    tight = assess(
        _results(), Comparison(Claim("b within 10 of a", "b", "a", kind="not_worse", tolerance=10))
    )
    assert tight.verdict == HOLDS and tight.contradicted  # within the tolerance, yet below on every seed


def test_missing_variant_is_not_run_and_named():
    a = assess(_results(), Comparison(Claim("c beats a", "c", "a")))
    assert a.verdict == NOT_RUN and a.missing == ("c",)
    text = " ".join(what_we_learned([a]))
    assert "Not run (absent from this results table): c." in text


def test_opening_paragraph_carries_the_numbers():
    results = _results()
    held = assess(results, Comparison(Claim("a beats b by more than -5", "a", "b", margin=-5)))
    assert held.verdict == HOLDS
    (text,) = what_we_learned([held])
    assert "1 holds, 0 do not hold and 0 are inconclusive" in text
    assert "Hold: a - b +2.0 [-0.5, +4.5]." in text


def test_box_counts_and_small_cells():
    results = _results()
    assert share_column("devkit_motion_fast") == "devkit_motion_share_fast"
    assert share_column("degradation_devkit_motion_blur") == "degradation_devkit_share_motion_blur"
    assert share_column("devkit_map") is None
    assert box_count(results, "a", "devkit_motion_fast") == pytest.approx(20.0)  # 0.1 x 200 < MIN_BOXES
    table = summary_table(
        results, ["a", "b", "c"], columns=("devkit_map", "devkit_motion_fast", "devkit_motion_slow")
    )
    assert list(table.columns) == [
        "variant",
        "n",
        "mAP@0.5 devkit",
        "fast (devkit) [20 boxes]",
        "slow (devkit) [180 boxes]",
    ]
    assert table.loc[0, "fast (devkit) [20 boxes]"] == f"n<{MIN_BOXES}"
    assert table.loc[0, "slow (devkit) [180 boxes]"] == "66.0 ± 1.0"
    assert table.loc[2, "mAP@0.5 devkit"] == NOT_RUN and table.loc[2, "n"] == ""


def test_paper_number_sits_beside_the_same_protocol():
    table = summary_table(_results(), ["a"], columns=("devkit_motion_slow", "devkit_map"), paper={"a": 70.0})
    assert list(table.columns)[:4] == ["variant", "n", "paper (devkit mAP@0.5)", "mAP@0.5 devkit"]
    assert table.loc[0, "paper (devkit mAP@0.5)"] == "70.0"


def test_paired_gains_and_table():
    gains = paired_gains(_results(), ["a"], baseline="b")
    assert gains["gain"].tolist() == [1.0, 2.0, 3.0]
    table = gain_table(gains, ["a", "c"], baseline="b")
    assert table.loc[0, "gain over b"] == "+2.0" and table.loc[0, "95% CI"] == "[-0.5, +4.5]"
    assert table.loc[1, "gain over b"] == NOT_RUN
    with pytest.raises(KeyError, match="zzz"):
        paired_gains(_results(), ["a"], baseline="zzz")


def _cost(fps_a, fps_b, flops_b=1e6):
    rows = []
    for seed, (fa, fb) in enumerate(zip(fps_a, fps_b, strict=True)):
        for variant, fps, flops in (("a", fa, 1e6), ("b", fb, flops_b)):
            rows.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "fps": fps,
                    "seconds_backbone": 0.5 / fps,
                    "seconds_head": 0.5 / fps,
                    "seconds_per_frame": 1 / fps,
                    "flops_backbone": flops,
                    "flops_total": flops,
                    "params_backbone": 1000.0,
                    "params_total": 1000.0,
                    "train_seconds": 100.0,
                }
            )
    return pd.DataFrame(rows)


def test_same_architecture_within_spread_gets_one_pooled_fps():
    blocks = cost_table(_cost([20, 24, 28], [21, 25, 29]), ["a", "b"], hardware="test CPU")
    frame = blocks[0].frame
    assert frame["FPS"].tolist() == ["24.5 ± 3.6 (same arch.)"] * 2  # pooled over 6 runs
    assert list(frame.columns[:4]) == ["variant", "n", "backbone ms", "head ms"]
    assert "test CPU" in blocks[0].caption and "batch size: 1" in blocks[0].caption
    assert list(blocks[1].frame.columns) == [
        "variant",
        "backbone MFLOPs",
        "total MFLOPs",
        "backbone k params",
        "total k params",
    ]
    assert "within the per-seed sd" in blocks[2].text


def test_different_architectures_keep_their_own_fps():
    frame = cost_table(_cost([20, 24, 28], [21, 25, 29], flops_b=2e6), ["a", "b"])[0].frame
    assert frame["FPS"].tolist() == ["24.0 ± 4.0", "25.0 ± 4.0"]


def test_median_and_iqr_are_shown_when_measured():
    # harness.measure.summary_row's columns: seconds_<part> is the median, seconds_<part>_iqr its spread
    results = _cost([20, 20, 20], [20, 20, 20])
    results["seconds_backbone"] = 0.010
    results["seconds_backbone_iqr"] = 0.003
    results["seconds_backbone_mean"] = 0.011
    results["seconds_motion_stream"] = 0.004
    results["seconds_motion_stream_iqr"] = 0.001
    table = cost_table(results, ["a"])[0]
    assert table.frame.loc[0, "backbone ms"] == "10.0 (IQR 3.0)"
    assert table.frame.loc[0, "motion_stream ms"] == "4.0 (IQR 1.0)"  # a method's own scope is a part
    assert "backbone_mean ms" not in table.frame.columns
    assert "median (IQR)" in table.caption


def test_built_report_html_matches_markdown_and_renders_cleanly(tmp_path):
    results = _results()
    spec = ReportSpec(
        title="T",
        question="Question: does a beat b?",
        comparisons=[Comparison(Claim("a beats b", "a", "b")), Comparison(Claim("c | pipe", "c", "a"))],
        not_reproduced=[("Fig. 9", "no data")],
    )
    doc, assessments = build_report(spec, results, folder=tmp_path, body=[])
    assert [a.verdict for a in assessments] == [INCONCLUSIVE, NOT_RUN]
    md, html = doc.write(tmp_path)
    text = md.read_text()
    assert "Question: does a beat b?" in text and "Fig. 9: no data" in text
    assert "c \\| pipe" in text  # a pipe inside a cell does not split the Markdown table
    images = check_html(html)
    assert images == ["forest_paired_differences.png"]
    assert FAILS not in text.split("## Claims")[1].split("|")  # no claim here does not hold
    assert not math.isnan(assessments[0].mean)


def test_deviation_rows_name_a_non_window_aggregator_and_its_kwargs():
    """A row built on a registered aggregator reads as that aggregator, not as the window defaults."""
    from ablations.base import Row, Study
    from ablations.common import BASE
    from harness.config import AggregationConfig
    from reports.ablation_report import deviation_rows

    late = AggregationConfig(aggregator="ssvd", aggregator_kwargs={"fusion": "late", "flownet_weights": "/x"})
    rows = [
        Row("window", {"model.aggregation": AggregationConfig(alignment="stsn")}),
        Row("late", {"model.aggregation": late}),
    ]
    study = Study(name="t", base=BASE, rows=rows, variants=[])
    here = {r["item"]: r["here"] for r in deviation_rows(study, pd.DataFrame())}
    assert here["row window"].startswith("stsn + average;")
    assert here["row late"].startswith("aggregator:ssvd (fusion=late);")  # the weights' path is left out
