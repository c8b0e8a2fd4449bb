"""STSN (Bertasius et al., ECCV 2018) on SynthVID: does deformable spatiotemporal sampling match
flow-based aggregation without optical flow?

Question: with one detector, trainer and evaluation, how do single-frame detection (SSN), FGFA-style
flow warping (a learned flow net, with and without flow-data pretraining), STSN's deformable sampling
and an oracle-flow upper bound compare; how does STSN depend on the number of supporting frames T,
their temporal stride k, and which supports does it weight?

Reproduces: Table 1 (+ Seq-NMS rows), Fig. 3 left (mAP vs T = 1, 3, ..., 27, trained with K=1), the
temporal-stride result (k = 1, 2, 4), Fig. 3 right (mean aggregation weight at object centres vs k),
Fig. 4 (sampled locations), plus oracle-flow warping as an extra row.

Knobs varied: the alignment (identity / flow_warp[flownet|flownet+flow data|oracle] / stsn) and, for
two controls, the fusion; at test time T, k and Seq-NMS. Fixed: backbone, head, fusion (cosine-similarity
softmax, the reference counting as its own support) for every other video row, training budget, data,
seeds. Controls at T = 7 with the same seeds and budget: identity alignment + cosine-softmax fusion
(aggregation without alignment) and STSN + average fusion (alignment without learned weights).

Deviations from the paper, forced by a 2-core CPU and documented in the report: a small ResNet on
128x128 SynthVID frames instead of Deformable ResNet-101 + R-FCN on ImageNet VID; all Table 1 rows
are tested with the same window (T = ``TABLE_T``) so rows differ in the aggregation alone, on the first
``TABLE_VIDEOS`` validation videos (the sweeps on the first ``SWEEP_VIDEOS``); the stride study uses
T = 9 (K = 4 supports each side at stride k) because SynthVID videos are 30-60 frames long; the flow
net of the "FGFA+flow data" row is pretrained once per dataset and shared by all seeds (and by every
other ablation that uses it).

Command: ``./bootstrap nox -s ablate-stsn`` (``-- --quick`` for the smoke run, ``-- --seeds 0 1 2``).
Expected runtime on 2 CPU cores: see README (measured); the quick run is the CI smoke test.
Paper numbers: ``harness/paper_numbers.yaml`` (stsn).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ablations import common
from ablations.base import Ablation, Row, Study, Variant, doc_paragraph
from ablations.collectors import FusionWeightsByOffset, SamplingLocations
from ablations.common import sliding, window
from harness.config import override
from reports import figures
from reports.document import Document, Figure, Heading, Paragraph, Table
from reports.paper_numbers import paper
from reports.tables import DEFINITIONS_NOTE, per_seed, summarise
from reports.verdicts import RULE_TEXT, Claim, judge

NAME = "stsn"
TABLE_T = common.TEST_T  # test window of every Table 1 row: K = 3 supports each side
T_SWEEP = (1, 3, 5, 9, 13, 19, 27)  # Fig. 3 left (the paper plots T = 1, 3, ..., 27)
T_SWEEP_QUICK = (1, 5, 9)
STRIDES = (1, 2, 4)
STRIDE_T = 9  # frames of the stride study's window: K = 4 supports each side at stride k
STRIDE_K = (STRIDE_T - 1) // 2  # supports each side in the stride study
WEIGHTS_T = 19  # Fig. 3 right: k in [-9, 9]
WEIGHTS_RADIUS = (WEIGHTS_T - 1) // 2
SAMPLING_T = 5  # Fig. 4: the sampling locations of supports at k in [-2, 2]
SAMPLING_VIDEOS = 4  # Fig. 4 is drawn from the first val videos
SWEEP_VIDEOS = 4  # the T, stride and weight studies run on the first val videos (CPU budget)
TABLE_VIDEOS = 20  # Table 1 on the first val videos (a CPU budget; None = all 60)
SWEEP_VIDEOS_QUICK = 4
TABLE_VIDEOS_QUICK = None
DEFAULT_SEEDS = (0, 1, 2)
STSN_HIDDEN = 32  # width of STSN's intermediate deformable convs (paper: 1024 on a ResNet-101)
STSN_KERNEL = 3  # STSN's deformable kernel: the sampling collector reads its 3x3 taps

BASE = common.BASE
QUICK = common.QUICK


def rows(quick: bool) -> list[Row]:
    """Table 1's rows and the two controls, each carrying its whole difference from the base."""
    stsn = window("stsn", hidden_channels=STSN_HIDDEN)
    return [
        common.single_frame("SSN"),
        common.flow_warp("FGFA", flow_data=False, quick=quick),
        common.flow_warp("FGFA+flow data", flow_data=True, quick=quick),
        Row("STSN", {"model.aggregation": stsn}),
        common.oracle_flow("Oracle flow"),
        Row("Identity + cosine softmax", {"model.aggregation": window("identity")}),
        Row("STSN + average", {"model.aggregation": window("stsn", "average", hidden_channels=STSN_HIDDEN)}),
    ]


ROWS = rows(quick=False)


def _video_subsets(quick: bool) -> tuple[int | None, int]:
    """(Table 1, sweeps): how many of the first validation videos each is tested on (None = all)."""
    return (TABLE_VIDEOS_QUICK, SWEEP_VIDEOS_QUICK) if quick else (TABLE_VIDEOS, SWEEP_VIDEOS)


def _variants(quick: bool) -> list[Variant]:
    """Table 1 rows (timed) and the sweeps (untimed), each on the first videos of the validation split."""
    table_videos, sweep_videos = _video_subsets(quick)
    subset = {"max_videos": sweep_videos, "measure": False}
    variants = []
    for row in ROWS:
        table = {"max_videos": table_videos}
        variants.append(Variant(row.name, row.name, table, group="table1"))
        seq_nms = {**table, "seq_nms": True, "measure": False}
        variants.append(Variant(f"{row.name} + Seq-NMS", row.name, seq_nms, group="table1"))
    for t in T_SWEEP_QUICK if quick else T_SWEEP:
        variants.append(Variant(f"STSN T={t}", "STSN", {"support": sliding(t), **subset}, group="fig3_left"))
    for k in STRIDES:
        changes = {"support": sliding(STRIDE_T, k), **subset}
        variants.append(Variant(f"STSN stride k={k}", "STSN", changes, group="stride"))
    changes = {"support": sliding(WEIGHTS_T), **subset}
    variants.append(Variant("STSN weights", "STSN", changes, group="fig3_right", collect="weights"))
    changes = {"support": sliding(SAMPLING_T), **subset, "max_videos": SAMPLING_VIDEOS}
    variants.append(Variant("STSN sampling", "STSN", changes, group="fig4", collect="sampling"))
    return variants


def build_study(quick: bool) -> Study:
    base = override(BASE, **QUICK) if quick else BASE
    image_size = base.data.image_size
    return Study(
        name=NAME,
        base=base,
        rows=rows(quick),
        variants=_variants(quick),
        collectors={
            "weights": lambda: FusionWeightsByOffset(image_size),
            "sampling": lambda: SamplingLocations(image_size, kernel=STSN_KERNEL, limit=8),
        },
    )


# ---------------------------------------------------------------------------------------------
# Claims and report
# ---------------------------------------------------------------------------------------------


def claims(quick: bool) -> list[tuple[Claim, str, str]]:
    """(claim, variant a, variant b) on devkit mAP@0.5."""
    t_max = (T_SWEEP_QUICK if quick else T_SWEEP)[-1]
    t_mid = (T_SWEEP_QUICK if quick else T_SWEEP)[-2]  # the plateau: the largest T against the next one
    return [
        (
            Claim("STSN outperforms the single-frame baseline SSN", "STSN", "SSN", paper="78.9 vs 76.0"),
            "STSN",
            "SSN",
        ),
        (
            Claim(
                "STSN matches FGFA without using optical flow (within 1 point or better)",
                "STSN",
                "FGFA+flow data",
                kind="not_worse",
                tolerance=1.0,
                paper="78.9 vs 78.8",
            ),
            "STSN",
            "FGFA+flow data",
        ),
        (
            Claim("Seq-NMS post-processing improves STSN", "STSN + Seq-NMS", "STSN", paper="80.4 vs 78.9"),
            "STSN + Seq-NMS",
            "STSN",
        ),
        (
            Claim(
                f"more supporting frames help: T={t_max} beats T=1",
                f"STSN T={t_max}",
                "STSN T=1",
                paper="Fig. 3 left: rises with T",
            ),
            f"STSN T={t_max}",
            "STSN T=1",
        ),
        (
            Claim(
                f"mAP plateaus: T={t_max} is within 0.5 of T={t_mid} or better",
                f"STSN T={t_max}",
                f"STSN T={t_mid}",
                kind="not_worse",
                tolerance=0.5,
                paper="Fig. 3 left: plateau at T=27",
            ),
            f"STSN T={t_max}",
            f"STSN T={t_mid}",
        ),
        (
            Claim(
                "temporal stride k=2 is as good as k=1 (within 1 point or better)",
                "STSN stride k=2",
                "STSN stride k=1",
                kind="not_worse",
                tolerance=1.0,
                paper="79.0 vs 78.9",
            ),
            "STSN stride k=2",
            "STSN stride k=1",
        ),
        (
            Claim(
                "temporal stride k=4 is worse than k=1",
                "STSN stride k=1",
                "STSN stride k=4",
                paper="78.9 vs 77.9",
            ),
            "STSN stride k=1",
            "STSN stride k=4",
        ),
    ]


class STSNAblation(Ablation):
    name = NAME
    default_seeds = DEFAULT_SEEDS

    def build_study(self, quick: bool) -> Study:
        return build_study(quick)

    def render(self, folder: Path) -> Path:
        results = pd.read_parquet(folder / "results.parquet")
        quick = self.is_quick(folder)
        numbers = paper(NAME)
        doc = Document("STSN on SynthVID: spatiotemporal sampling vs flow warping")
        doc.add(Paragraph(doc_paragraph(__doc__, 1)))
        table_videos, sweep_videos = _video_subsets(quick)
        sizes = {"TABLE_T": TABLE_T, "TABLE_VIDEOS": table_videos, "SWEEP_VIDEOS": sweep_videos}
        doc.add(Paragraph(doc_paragraph(__doc__, "Deviations", sizes)))
        seeds = sorted(results["seed"].unique().tolist())
        doc.add(
            Paragraph(
                f"Seeds: {seeds}. "
                + (
                    "QUICK smoke run (small data, few steps): the numbers are not meaningful."
                    if quick
                    else ""
                )
            )
        )
        doc.add(Paragraph(DEFINITIONS_NOTE))

        doc.add(Heading("Table 1: methods"))
        table1 = [r.name for r in ROWS] + [f"{r.name} + Seq-NMS" for r in ROWS]
        paper_map = {
            "SSN": numbers["table1_map50"]["SSN"]["map50"],
            "FGFA+flow data": numbers["table1_map50"]["FGFA"]["map50"],
            "STSN": numbers["table1_map50"]["STSN"]["map50"],
            "STSN + Seq-NMS": numbers["table1_map50"]["STSN+"]["map50"],
        }
        doc.add(
            Table(
                summarise(results, table1, paper=paper_map),
                caption=f"Every video row tested with T={TABLE_T} (pad boundary).",
            )
        )
        extra = [c for c in ("fps", "params_aggregation", "flops_aggregation") if c in results.columns]
        if extra:
            cost = (
                results[results["group"] == "table1"]
                .groupby("variant", sort=False)[extra]
                .mean()
                .dropna(how="all")  # the Seq-NMS variants reuse their row's detections: not timed
                .reset_index()
            )
            doc.add(
                Table(
                    cost,
                    caption="Cost per frame (see measure.json in each run folder for what was timed).",
                    float_format="{:.3g}",
                )
            )

        doc.add(Heading("Fig. 3 left: number of supporting frames"))
        sweep = results[results["group"] == "fig3_left"].copy()
        if not sweep.empty:
            sweep["T"] = sweep["variant"].str.extract(r"T=(\d+)").astype(int)
            path = figures.line_with_spread(
                sweep,
                x="T",
                y="devkit_map",
                path=folder / "fig3_left.png",
                xlabel="supporting frames T at inference",
                ylabel="mAP@0.5 (devkit)",
                title="STSN trained with K=1",
            )
            doc.add(Figure(path, "mAP vs T, mean ± sd over seeds"))
            doc.add(
                Table(
                    summarise(results, sorted(sweep["variant"].unique(), key=lambda v: int(v.split("=")[1])))
                )
            )

        doc.add(Heading("Temporal stride"))
        stride_paper = {f"STSN stride k={k}": v for k, v in numbers["temporal_stride_map50"].items()}
        doc.add(
            Table(
                summarise(results, [f"STSN stride k={k}" for k in STRIDES], paper=stride_paper),
                caption=f"T={2 * STRIDE_K + 1}: supports at ±k, ±2k, ..., ±{STRIDE_K}k (paper: T=27)",
            )
        )

        self._weights_section(doc, folder)
        self._sampling_section(doc, folder)

        doc.add(Heading("Claims"))
        doc.add(Paragraph(RULE_TEXT))
        verdict_rows = []
        for claim, a, b in claims(quick):
            if a not in set(results["variant"]) or b not in set(results["variant"]):
                continue
            sa, sb = per_seed(results, a), per_seed(results, b)
            common = sa.index.intersection(sb.index)
            verdict = judge(claim, sa.loc[common].to_numpy(), sb.loc[common].to_numpy())
            verdict_rows.append(
                {
                    "claim": claim.text,
                    "paper": claim.paper,
                    "a - b (mean)": f"{verdict.mean_difference:+.1f}",
                    "95% CI": f"[{verdict.ci_low:.1f}, {verdict.ci_high:.1f}]",
                    "seeds": verdict.seeds,
                    "verdict": verdict.verdict,
                }
            )
        verdict_rows += self._weight_claims(folder)
        doc.add(Table(pd.DataFrame(verdict_rows)))
        md, _ = doc.write(folder)
        return md

    # --- Fig. 3 right / Fig. 4 ------------------------------------------------------------------
    def _weights(self, folder: Path) -> pd.DataFrame:
        rows = []
        for path in sorted((folder / "collected").glob("STSN weights-s*.json")):
            seed = int(path.stem.split("-s")[-1])
            data = json.loads(path.read_text())["mean_weight_by_offset"]
            rows += [{"seed": seed, "k": int(k), "weight": w} for k, w in data.items()]
        return pd.DataFrame(rows)

    def _weights_section(self, doc: Document, folder: Path) -> None:
        doc.add(Heading("Fig. 3 right: aggregation weight by support offset"))
        weights = self._weights(folder)
        if weights.empty:
            doc.add(Paragraph("No weights were collected."))
            return
        path = figures.weights_by_offset(
            weights,
            path=folder / "fig3_right.png",
            title=f"STSN, T={2 * WEIGHTS_RADIUS + 1}, at object centres",
        )
        doc.add(
            Figure(
                path,
                "mean weight at object centres vs k (reference = k 0); uniform weight would be "
                f"{1 / (2 * WEIGHTS_RADIUS + 1):.3f}",
            )
        )

    def _weight_claims(self, folder: Path) -> list[dict]:
        weights = self._weights(folder)
        if weights.empty:
            return []
        by_seed = weights.pivot_table(index="seed", columns="k", values="weight")
        near = by_seed[[k for k in (-1, 0, 1) if k in by_seed]].mean(axis=1)
        far_keys = [k for k in by_seed.columns if abs(k) >= 5]
        far = by_seed[far_keys].mean(axis=1)
        edge_keys = [k for k in by_seed.columns if abs(k) == WEIGHTS_RADIUS]
        edge = by_seed[edge_keys].mean(axis=1)
        uniform = 1 / (2 * WEIGHTS_RADIUS + 1)
        out = []
        for claim, a, b in [
            (
                Claim(
                    "largest weights on the nearest supports (k = -1, 0, 1) vs far ones (k <= -5, k >= 5)",
                    "near",
                    "far",
                    paper="Fig. 3 right",
                ),
                near,
                far,
            ),
            (
                Claim(
                    f"supports at k = ±{WEIGHTS_RADIUS} still get a substantial weight (> 25% of uniform)",
                    "edge",
                    "0.25 uniform",
                    paper="Fig. 3 right",
                ),
                edge,
                pd.Series(0.25 * uniform, index=edge.index),
            ),
        ]:
            v = judge(claim, a.to_numpy(), b.to_numpy())
            out.append(
                {
                    "claim": claim.text,
                    "paper": claim.paper,
                    "a - b (mean)": f"{v.mean_difference:+.3f}",
                    "95% CI": f"[{v.ci_low:.3f}, {v.ci_high:.3f}]",
                    "seeds": v.seeds,
                    "verdict": v.verdict,
                }
            )
        return out

    def _sampling_section(self, doc: Document, folder: Path) -> None:
        doc.add(Heading("Fig. 4: where STSN samples the supporting frames"))
        files = sorted((folder / "collected").glob("STSN sampling-s*.json"))
        if not files:
            doc.add(Paragraph("No sampling locations were collected."))
            return
        examples = json.loads(files[0].read_text())["examples"]
        if not examples:
            doc.add(Paragraph("No sampling locations were collected."))
            return
        path = figures.sampling_locations(
            examples,
            image_for=_support_image,
            path=folder / "fig4.png",
            title="red: the 3x3 deformable taps at the object's centre (last layer)",
        )
        caption = "green: reference box and centre; red: sampled locations in each support frame"
        shares = [e["tap_weight"] for e in examples if e.get("tap_weight")]
        if shares:
            centre = float(np.mean([share[len(share) // 2] for share in shares]))
            caption += (
                "; a point's area is proportional to its tap's share of the sampling kernel's weight "
                f"(the centre tap holds {centre:.0%} of it)"
            )
        doc.add(Figure(path, caption))


def _support_image(example: dict, offset: int) -> np.ndarray:
    """The frame ``offset`` frames from the example's reference (clamped into the video), RGB."""
    import cv2

    reference = Path(example["image"])
    frames = sorted(reference.parent.glob("*" + reference.suffix))
    index = frames.index(reference) + offset
    path = frames[min(max(index, 0), len(frames) - 1)]
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read frame {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


ABLATION = STSNAblation()
