"""How far do ``alignment:lsts``'s learned locations move in one phase 2? Prints the drift per multiplier.

Trains the ablations' base phase 2 (300 steps x 8 references, AdamW lr 1e-3, cosine after 20 warm-up
steps, 2 random supports within +-9) with ``alignment:lsts`` + ``fusion:quality_softmax`` once per
``--lr-mults`` value, from one shared phase-1 detector, and reads the locations' drift (current minus
initial, feature cells) from the checkpoints (every ``--every`` steps and the final one).
``--preset quick --phase1-steps 600`` keeps it to a few minutes on the 2-core machine; the default
base phase 1 (3,000 steps on the default preset) is the ablations' own detector.

    ./bootstrap python -m tests.benchmarks.lsts_location_drift [--lr-mults 1 10 100] [--init gaussian]

The multiplier chosen from this is ``methods.lsts_sampling.DEFAULT_LOCATION_LR_MULT``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ablations.common import BASE, window
from harness.config import override
from harness.pipeline import train_run
from harness.runs import stage_dir

LOCATIONS_KEY = "aggregator.alignment.locations"
INITIAL_KEY = "aggregator.alignment.initial_locations"


def drift_summary(state: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean and max |drift| (Euclidean, feature cells) and the mean drift per axis (dy, dx)."""
    locations = next(v for k, v in state.items() if k.endswith(LOCATIONS_KEY))
    initial = next(v for k, v in state.items() if k.endswith(INITIAL_KEY))
    drift = (locations - initial).float()  # (N, 2)
    norm = drift.norm(dim=1)
    return {
        "mean": float(norm.mean()),
        "median": float(norm.median()),
        "max": float(norm.max()),
        "moved_over_1_cell": float((norm > 1).float().mean()),
        "mean_dy": float(drift[:, 0].mean()),
        "mean_dx": float(drift[:, 1].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lr-mults", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    parser.add_argument("--init", default="gaussian", choices=["gaussian", "uniform"])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--phase1-steps", type=int, default=600)
    parser.add_argument("--phase2-steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100, help="checkpoint interval read for the drift")
    parser.add_argument("--runs", default="results/runs")
    args = parser.parse_args()
    for mult in args.lr_mults:
        aggregation = window("lsts", "quality_softmax", init=args.init, location_lr_mult=mult)
        run = override(
            BASE,
            **{
                "name": f"lsts-drift-{mult:g}",
                "data.synth_preset": args.preset,
                "phase1.steps": args.phase1_steps,
                "phase2.steps": args.phase2_steps,
                "phase2.checkpoint_every": args.every,
                "model.aggregation": aggregation,
            },
        )
        train_run(run, runs_root=Path(args.runs), progress=False)
        folder = stage_dir(Path(args.runs), run, "phase2") / "phase2"
        checkpoints = sorted(folder.glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        for path in [*checkpoints, folder / "final.pt"]:
            state = torch.load(path, map_location="cpu", weights_only=False)["model"]
            summary = drift_summary(state)
            print(
                f"lr_mult {mult:g} {path.name}: |drift| mean {summary['mean']:.3f} median "
                f"{summary['median']:.3f} max {summary['max']:.3f} cells, share > 1 cell "
                f"{summary['moved_over_1_cell']:.2f}, mean (dy, dx) ({summary['mean_dy']:+.3f}, "
                f"{summary['mean_dx']:+.3f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
