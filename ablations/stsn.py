"""STSN (Bertasius et al., ECCV 2018) on SynthVID: does deformable spatiotemporal sampling match
flow-based aggregation without optical flow?

Question: with one detector, trainer and evaluation, how do single-frame detection (SSN), FGFA-style
flow warping (a learned flow net, with and without flow-data pretraining), STSN's deformable sampling
and an oracle-flow upper bound compare; how does STSN depend on the number of supporting frames T,
their temporal stride k, and which supports does it weight?

Reproduces: Table 1 (+ Seq-NMS rows), Fig. 3 left (mAP vs T = 1, 3, ..., 27, trained with K=1), the
temporal-stride result (k = 1, 2, 4), Fig. 3 right (mean aggregation weight at object centres vs k),
Fig. 4 (sampled locations), plus oracle-flow warping as an extra row.

Knobs varied: the alignment (identity / flow_warp[flownet|flownet+flow data|oracle] / stsn); at test
time T, k and Seq-NMS. Fixed: backbone, head, fusion (cosine-similarity softmax, the reference counting
as its own support) for every video row, training budget, data, seeds.

Deviations from the paper, forced by a 2-core CPU and documented in the report: a small ResNet on
128x128 SynthVID frames instead of Deformable ResNet-101 + R-FCN on ImageNet VID; all Table 1 rows
are tested with the same window (T = ``TABLE_T``) so rows differ in the aggregation alone, on the first
``TABLE_VIDEOS`` validation videos (the sweeps on the first ``SWEEP_VIDEOS``); the stride study uses
T = 9 (K = 4 supports each side at stride k) because SynthVID videos are 30-60 frames long; the flow
net of the "FGFA+flow data" row is pretrained once per dataset and shared by all seeds.

Command: ``./bootstrap nox -s ablate-stsn`` (``-- --quick`` for the smoke run, ``-- --seeds 0 1 2``).
Expected runtime on 2 CPU cores: see README (measured); the quick run is the CI smoke test.
Paper numbers: ``harness/paper_numbers.yaml`` (stsn).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ablations.base import Ablation, Row, Study, Variant, doc_paragraph
from ablations.collectors import FusionWeightsByOffset, SamplingLocations
from harness.config import (
    AggregationConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    RunConfig,
    SupportSpec,
    TrainConfig,
    override,
)
from reports import figures
from reports.document import Document, Figure, Heading, Paragraph, Table
from reports.paper_numbers import paper
from reports.tables import DEFINITIONS_NOTE, per_seed, summarise
from reports.verdicts import RULE_TEXT, Claim, judge

NAME = "stsn"
TABLE_T = 7  # test window of every Table 1 row: K = 3 supports each side
T_SWEEP = (1, 3, 5, 9, 13, 19, 27)  # Fig. 3 left (the paper plots T = 1, 3, ..., 27)
T_SWEEP_QUICK = (1, 5, 9)
STRIDES = (1, 2, 4)
STRIDE_K = 4  # supports each side in the stride study (T = 9)
WEIGHTS_RADIUS = 9  # Fig. 3 right: k in [-9, 9]
SWEEP_VIDEOS = 4  # the T, stride and weight studies run on the first val videos (CPU budget)
TABLE_VIDEOS = 20  # Table 1 on the first val videos (a CPU budget; None = all 60)
SWEEP_VIDEOS_QUICK = 4
TABLE_VIDEOS_QUICK = None
DEFAULT_SEEDS = (0, 1, 2)
FLOW_PRETRAIN_STEPS = 400  # flow-net pretraining on ground-truth flow ("flow data" row)
FLOW_PRETRAIN_STEPS_QUICK = 40
FLOW_PRETRAIN_SEED = 0  # one pretrained flow net per dataset, shared by all seeds
STSN_HIDDEN = 32  # width of STSN's intermediate deformable convs (paper: 1024 on a ResNet-101)
FLOWNET_WIDTH = 8  # the flow net's base width (16 costs 3.6x more per support on the CPU)

BASE = RunConfig(
    name=NAME,
    phase1_seed=0,  # one still-image detector shared by every row and seed (a "pretrained" model)
    data=DataConfig(
        synth_preset="default",
        image_size=128,
        # STSN trains with K = 1: supports drawn at random in a neighbourhood of the reference.
        train_support=SupportSpec("random_window", num=2, radius=9, boundary="pad"),
        test_support=SupportSpec("sliding", radius=TABLE_T // 2, stride=1, boundary="pad"),
        still_fraction=0.1,
    ),
    model=ModelConfig(aggregation=AggregationConfig(alignment="identity", fusion="cosine_softmax")),
    phase1=TrainConfig(steps=3000, batch_size=16, lr=2e-3, warmup_steps=50),
    phase2=TrainConfig(steps=300, batch_size=8, lr=1e-3, warmup_steps=20),
    eval=EvalConfig(protocols=("devkit", "fixed", "coco"), motion=True, seq_nms=False),
)

QUICK = {
    "data.synth_preset": "quick",
    "phase1.steps": 150,
    "phase1.batch_size": 8,
    "phase2.steps": 60,
    "phase2.batch_size": 4,
}

NO_SUPPORT = SupportSpec("none")


def _alignment(name: str, **kwargs) -> dict:
    return {
        "model.aggregation": AggregationConfig(
            alignment=name, fusion="cosine_softmax", alignment_kwargs=kwargs
        )
    }


ROWS = [
    Row(
        "SSN",
        {
            "model.aggregation": AggregationConfig(alignment="identity", fusion="average"),
            "data.train_support": NO_SUPPORT,
            "data.test_support": NO_SUPPORT,
            "data.still_fraction": 0.0,
        },
        paper_key="SSN",
        description="single-frame baseline, same detector and training budget",
    ),
    Row(
        "FGFA",
        _alignment("flow_warp", flow_source="flownet", flownet_width=FLOWNET_WIDTH),
        paper_key=None,
        description="flow warping, the flow net learned end to end from the detection loss (no flow data)",
    ),
    Row(
        "FGFA+flow data",
        _alignment("flow_warp", flow_source="flownet", flownet_width=FLOWNET_WIDTH),
        paper_key="FGFA",
        description="as FGFA, the flow net first pretrained on SynthVID's ground-truth flow (flow data)",
    ),
    Row(
        "STSN",
        _alignment("stsn", hidden_channels=STSN_HIDDEN),
        paper_key="STSN",
        description="deformable spatiotemporal sampling, no flow",
    ),
    Row(
        "Oracle flow",
        {**_alignment("flow_warp", flow_source="oracle"), "data.with_oracle_flow": True},
        description="warping with ground-truth flow: an upper bound for flow-based alignment",
    ),
]


def _video_subsets(quick: bool) -> tuple[int | None, int]:
    """(Table 1, sweeps): how many of the first validation videos each is tested on (None = all)."""
    return (TABLE_VIDEOS_QUICK, SWEEP_VIDEOS_QUICK) if quick else (TABLE_VIDEOS, SWEEP_VIDEOS)


def _variants(quick: bool) -> list[Variant]:
    """Table 1 rows (timed) and the sweeps (untimed), each on the first videos of the validation split."""
    table_videos, sweep_videos = _video_subsets(quick)
    subset = {"data.max_val_videos": sweep_videos, "eval.measure": False}

    def sliding(radius: int, stride: int = 1) -> SupportSpec:
        return SupportSpec("sliding", radius=radius, stride=stride, boundary="pad") if radius else NO_SUPPORT

    variants = []
    for row in ROWS:
        table = {"data.max_val_videos": table_videos}
        variants.append(Variant(row.name, row.name, table, group="table1"))
        seq_nms = {**table, "eval.seq_nms": True, "eval.measure": False}
        variants.append(Variant(f"{row.name} + Seq-NMS", row.name, seq_nms, group="table1"))
    for t in T_SWEEP_QUICK if quick else T_SWEEP:
        changes = {"data.test_support": sliding((t - 1) // 2), **subset}
        variants.append(Variant(f"STSN T={t}", "STSN", changes, group="fig3_left"))
    for k in STRIDES:
        changes = {"data.test_support": sliding(STRIDE_K * k, k), **subset}
        variants.append(Variant(f"STSN stride k={k}", "STSN", changes, group="stride"))
    changes = {"data.test_support": sliding(WEIGHTS_RADIUS), **subset}
    variants.append(Variant("STSN weights", "STSN", changes, group="fig3_right", collect="weights"))
    changes = {"data.test_support": sliding(2), **subset, "data.max_val_videos": 4}
    variants.append(Variant("STSN sampling", "STSN", changes, group="fig4", collect="sampling"))
    return variants


def _pretrain_flow(config: RunConfig, out: Path) -> RunConfig:
    """For the 'FGFA+flow data' row: pretrain the flow net on ground-truth flow, once per dataset.

    Like FGFA's FlowNet pretrained on Flying Chairs, the pretrained flow net is an input shared by
    every seed (seed ``FLOW_PRETRAIN_SEED``); the seeds vary the detector's phase 2 built on it."""
    if not config.name.endswith("FGFA+flow data"):
        return config
    from harness.data.synthvid import data_fingerprint

    data = config.data
    if data.root is None:
        identity = f"{data.synth_preset}-s{data.synth_seed}-{data_fingerprint(data.synth_preset)}"
    else:
        identity = hashlib.sha1(str(Path(data.root).resolve()).encode()).hexdigest()[:10]
    weights = out / "flownet" / f"flownet-{identity}-s{FLOW_PRETRAIN_SEED}.pt"
    if not weights.exists():
        import torch

        from harness.data.dataset import load_split
        from harness.flow_pretraining import pretrain_flownet

        quick = config.data.synth_preset != "default"
        result = pretrain_flownet(
            load_split(config.data, config.data.train_split),
            image_size=config.data.image_size,
            steps=FLOW_PRETRAIN_STEPS_QUICK if quick else FLOW_PRETRAIN_STEPS,
            batch_size=8,
            lr=2e-3,
            seed=FLOW_PRETRAIN_SEED,
            max_offset=config.data.train_support.radius,
            width=FLOWNET_WIDTH,
        )
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(result, weights.with_suffix(".tmp"))
        weights.with_suffix(".tmp").replace(weights)
        weights.with_suffix(".json").write_text(json.dumps(result["metrics"], indent=2, default=float))
    aggregation = config.model.aggregation
    kwargs = {**aggregation.alignment_kwargs, "flownet_weights": str(weights)}
    return override(config, **{"model.aggregation.alignment_kwargs": kwargs})


def build_study(quick: bool) -> Study:
    base = override(BASE, **QUICK) if quick else BASE
    image_size = base.data.image_size
    return Study(
        name=NAME,
        base=base,
        rows=ROWS,
        variants=_variants(quick),
        collectors={
            "weights": lambda: FusionWeightsByOffset(image_size),
            "sampling": lambda: SamplingLocations(image_size, kernel=3, limit=8),
        },
        prepare=_pretrain_flow,
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
