"""SynthVID calibration: is the embedded dataset one on which temporal aggregation genuinely matters?

Question: with the shared detector, does the single-frame baseline land in a useful range
(devkit mAP@0.5 between 45 and 75), does averaging the features of +-4 neighbours aligned with
ground-truth (oracle) flow gain at least 8 points, and is the baseline's fast-motion bucket its
lowest? These are the dataset's acceptance criteria (issue: SynthVID); they are reached by tuning the
generator's difficulty (``harness/data/synthvid/config.py``), never the evaluation.

Knobs varied: the aggregation (none vs oracle-flow warping + average over T = 9). Fixed: detector,
training budget, data, seeds.

Command: ``./bootstrap vodbench ablate calibration`` (``--quick`` for a smoke run).
Expected runtime on 2 CPU cores and the measured numbers: README, "Calibration".
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ablations import common
from ablations.base import Ablation, Study, Variant, doc_paragraph
from harness.config import SupportSpec, override
from reports.document import Document, Heading, Paragraph, Table
from reports.tables import DEFINITIONS_NOTE, per_seed, summarise
from reports.verdicts import RULE_TEXT, Claim, judge

NAME = "calibration"
ORACLE_T = 9  # the oracle row averages +-4 neighbours, trained with supports within +-4
BASE = common.BASE

ROWS = [
    common.single_frame("single frame"),
    common.oracle_flow(
        "oracle flow, average of ±4",
        fusion="average",
        **{
            "data.train_support": SupportSpec("random_window", num=2, radius=(ORACLE_T - 1) // 2),
            "test.support": common.sliding(ORACLE_T),
        },
    ),
]
VARIANTS = [Variant(row.name, row.name, {"measure": False}) for row in ROWS]


class CalibrationAblation(Ablation):
    name = NAME
    default_seeds = (0,)

    def build_study(self, quick: bool) -> Study:
        base = override(BASE, **common.QUICK) if quick else BASE
        return Study(NAME, base, ROWS, VARIANTS)

    def render(self, folder: Path) -> Path:
        results = pd.read_parquet(folder / "results.parquet")
        doc = Document("SynthVID calibration")
        doc.add(Paragraph(doc_paragraph(__doc__, 1)))
        doc.add(Paragraph(DEFINITIONS_NOTE))
        doc.add(Table(summarise(results, [row.name for row in ROWS])))
        single, oracle = (per_seed(results, row.name) for row in ROWS)
        fast = per_seed(results, ROWS[0].name, "devkit_motion_fast")
        other_buckets = [per_seed(results, ROWS[0].name, f"devkit_motion_{b}") for b in ("slow", "medium")]
        slowest = pd.concat(other_buckets, axis=1).min(axis=1)
        checks = pd.DataFrame(
            [
                {
                    "criterion": "single-frame devkit mAP@0.5 in [45, 75]",
                    "value": f"{single.mean():.1f}",
                    "met": bool(45 <= single.mean() <= 75),
                },
                {
                    "criterion": "oracle-flow average of ±4 gains >= 8 points",
                    "value": f"{(oracle - single).mean():+.1f}",
                    "met": bool((oracle - single).mean() >= 8),
                },
                {
                    "criterion": "single frame: fast bucket is the lowest",
                    "value": f"fast {fast.mean():.1f} vs min(slow, medium) {slowest.mean():.1f}",
                    "met": bool(fast.mean() < slowest.mean()),
                },
            ]
        )
        doc.add(Heading("Acceptance criteria (means over seeds)"))
        doc.add(Table(checks))
        verdict = judge(
            Claim("oracle average gains 8 points", "oracle", "single", margin=8.0),
            oracle.to_numpy(),
            single.loc[oracle.index].to_numpy(),
        )
        doc.add(
            Paragraph(
                f"{RULE_TEXT} Gain over 8 points: {verdict.verdict} "
                f"(mean {verdict.mean_difference:+.1f}, seeds {verdict.seeds})."
            )
        )
        md, _ = doc.write(folder)
        return md


ABLATION = CalibrationAblation()
