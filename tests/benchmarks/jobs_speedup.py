"""Does ``vodbench ablate --jobs 2`` beat ``--jobs 1`` on this machine? Prints both wall times and the ratio.

The same 4 phase-2 trainings and inferences (the calibration's two rows x seeds 0 and 1, first 4 val
videos, FPS not measured) run through :class:`ablations.base.Study` once per setting, side by side in
one invocation, sharing the already trained phase-1 detector under ``results/runs``. ``--jobs 1``
trains in this process with torch's threads; ``--jobs 2`` in two processes of ``threads // 2`` each.

    ./bootstrap python -m tests.benchmarks.jobs_speedup [--steps 300] [--repeats 1]

Measured (README "Reproducibility"): 0.91x at 300 steps, 0.89x at 60, on the 2-core machine.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from ablations import calibration
from ablations.base import Study
from harness.config import override
from harness.runs import stage_dir

SEEDS = (0, 1)


def wall_time(jobs: int, steps: int, results: Path) -> float:
    name = f"jobs-speedup-{jobs}"
    shutil.rmtree(results / name, ignore_errors=True)
    base = override(calibration.BASE, **{"phase2.steps": steps, "test.max_videos": 4})
    study = Study(name, base, calibration.ROWS, calibration.VARIANTS)
    for seed in SEEDS:  # this benchmark's trainings always run anew (phase 1 stays shared)
        for row in study.rows:
            shutil.rmtree(
                stage_dir(results / "runs", study.row_config(row, seed), "phase2"), ignore_errors=True
            )
    start = time.perf_counter()
    study.run(seeds=list(SEEDS), out=results / name, jobs=jobs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="phase-2 steps per training")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--results", default="results")
    args = parser.parse_args()
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for jobs in (2, 1):
            times[jobs].append(wall_time(jobs, args.steps, Path(args.results)))
    for jobs, seconds in times.items():
        print(f"--jobs {jobs}: " + ", ".join(f"{s:.1f} s" for s in seconds))
    ratio = min(times[1]) / min(times[2])
    print(f"speed-up of --jobs 2 over --jobs 1: {ratio:.2f}x (best of {args.repeats})")


if __name__ == "__main__":  # the workers are spawned: they must not run this again
    main()
