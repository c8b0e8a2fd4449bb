"""The ``vodbench`` command: generate, train, eval, ablate, report, methods.

Thin by design: each subcommand parses its arguments and calls one library function.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

ABLATION_PACKAGE = "ablations"
# Rows x seeds are independent trainings and may run in parallel processes (`--jobs N`, torch threads
# split among them). On the 2-core machine two one-thread jobs were slower than one two-thread job
# (0.91x at 300 phase-2 steps: `python -m tests.benchmarks.jobs_speedup`), so the default is serial.
DEFAULT_JOBS = 1


def _generate(args: argparse.Namespace) -> int:
    from harness.data.synthvid import ensure_synthvid

    if args.force:
        import shutil

        from harness.data.synthvid import default_data_dir

        shutil.rmtree(
            Path(args.root or default_data_dir()) / f"synthvid-{args.preset}-s{args.seed}", ignore_errors=True
        )
    root = ensure_synthvid(preset=args.preset, seed=args.seed, data_dir=args.root)
    print(root)
    return 0


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``["phase2.steps=300", "data.synth_preset=quick"]`` -> dotted overrides. A value is JSON when it
    parses (numbers, true/false, lists, ``{...}`` for a nested config), else a string."""
    changes: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"vodbench: --set expects KEY=VALUE, got {item!r}")
        try:
            changes[key] = json.loads(value)
        except json.JSONDecodeError:
            changes[key] = value
    return changes


def _train(args: argparse.Namespace) -> int:
    from harness.build import build_model
    from harness.config import ConfigError, RunConfig, from_dict, override
    from harness.pipeline import run_experiment

    try:
        config = RunConfig()
        if (
            args.config
        ):  # a RunConfig JSON, or a phase-2 folder's config.json (its identity: no name, no test)
            payload = json.loads(Path(args.config).read_text())
            payload.pop("synthvid_fingerprint", None)  # recomputed from the generator, never read back
            config = from_dict(RunConfig, payload)
        changes = parse_overrides(args.set or [])
        if changes:
            config = override(config, **changes)
        build_model(config, phase=2)  # an unknown method or one without supports fails before training
    except (ConfigError, KeyError, ValueError, TypeError, OSError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise SystemExit(f"vodbench train: {message}") from None
    row = run_experiment(config, runs_root=Path(args.runs), force=args.force)
    print(json.dumps(row, indent=2, default=str))
    return 0


def _ablation_module(name: str):
    try:
        return importlib.import_module(f"{ABLATION_PACKAGE}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{ABLATION_PACKAGE}.{name}":
            raise
        known = sorted(
            p.stem
            for p in Path(__file__).resolve().parent.parent.joinpath(ABLATION_PACKAGE).glob("*.py")
            if not p.stem.startswith("_") and p.stem not in {"base", "collectors", "__init__"}
        )
        raise SystemExit(f"vodbench: unknown ablation {name!r}; available: {', '.join(known)}") from None


def _ablate(args: argparse.Namespace) -> int:
    module = _ablation_module(args.paper)
    module.ABLATION.run(
        quick=args.quick,
        seeds=args.seeds,
        out=Path(args.out),
        force=args.force,
        jobs=args.jobs,
        remeasure=args.remeasure,
        full=args.full,
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from harness.runs import load_results

    out = Path(args.out)
    folders = sorted(p for p in out.glob("*") if (p / "ablation.json").exists())
    if args.papers:
        folders = [f for f in folders if f.name.split("-")[0] in args.papers]
    if not folders:
        print(f"vodbench report: no ablation under {out}", file=sys.stderr)
        return 1
    for folder in folders:
        ablation = _ablation_module(folder.name.split("-")[0]).ABLATION
        partial = ablation.is_partial(folder)
        if partial and not args.partial:
            _, missing = ablation.rebuild_results(folder)
            raise SystemExit(
                f"vodbench report: {folder} is partial (its study was killed or is still running; "
                f"{len(missing)} evaluations missing, e.g. {', '.join(missing[:3])}): rerun "
                f"`vodbench ablate {ablation.name}{' --quick' if ablation.is_quick(folder) else ''}` "
                "to finish it, or pass --partial for a report marked partial"
            )
        try:
            load_results(folder / "results.parquet")
            readable = (folder / "results.parquet").exists()
        except ValueError:
            readable = False
        if partial or not readable:  # the table is rebuilt from the run folders
            ablation.rebuild_results(folder)
        print(ablation.render(folder))
    return 0


def _methods(args: argparse.Namespace) -> int:
    import inspect

    from tabulate import tabulate

    from harness.aggregation import REGISTRY

    def signature(kwargs: dict[str, object]) -> str:
        return ", ".join(k if v is inspect.Parameter.empty else f"{k}={v!r}" for k, v in kwargs.items())

    rows = [(f"{i.kind}:{i.name}", i.qualname, signature(i.kwargs), i.summary) for i in REGISTRY.describe()]
    print(tabulate(rows, headers=["part", "class", "arguments", "description"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vodbench", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate the embedded SynthVID dataset (done on first use anyway)")
    gen.add_argument("--preset", default="default", help="default | quick | tiny")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--root", default=None, help="parent folder (default: <repo>/data or $VODBENCH_DATA)")
    gen.add_argument("--force", action="store_true", help="regenerate even when complete")
    gen.set_defaults(func=_generate)

    train = sub.add_parser("train", help="train and evaluate one configuration (a run folder)")
    train.add_argument("--config", help="RunConfig JSON (e.g. a run folder's config.json)")
    train.add_argument(
        "--set",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. model.aggregation.alignment=stsn phase2.steps=300 "
        'data.train_support={"strategy": "random_window", "num": 2, "radius": 9} '
        'test.support={"strategy": "sliding", "radius": 3}',
    )
    train.add_argument("--runs", default="runs", help="runs root")
    train.add_argument("--force", action="store_true")
    train.set_defaults(func=_train)

    from harness.eval.cli import add_eval_parser

    add_eval_parser(sub)

    ablate = sub.add_parser("ablate", help="run a paper's ablations and write its report")
    ablate.add_argument("paper", help="ablation module name, e.g. stsn")
    ablate.add_argument(
        "--quick", action="store_true", help="smaller data, fewer steps, one seed (smoke test)"
    )
    ablate.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the ablation's)")
    ablate.add_argument("--out", default="results", help="results root")
    ablate.add_argument("--force", action="store_true", help="redo finished runs")
    ablate.add_argument(
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        help=f"phase-2 trainings run in parallel, torch threads split among them (default {DEFAULT_JOBS})",
    )
    ablate.add_argument(
        "--remeasure",
        action="store_true",
        help="time every timed variant again (keeps trainings and metrics): for a machine that was busy",
    )
    ablate.add_argument(
        "--full",
        action="store_true",
        help="every cell of the tables the default runs a subset of (ablations that have a full mode)",
    )
    ablate.set_defaults(func=_ablate)

    report = sub.add_parser("report", help="re-render reports of finished ablations")
    report.add_argument("papers", nargs="*")
    report.add_argument("--out", default="results")
    report.add_argument(
        "--partial", action="store_true", help="render a killed study's report, marked partial"
    )
    report.set_defaults(func=_report)

    methods = sub.add_parser("methods", help="list the registered method parts and their arguments")
    methods.set_defaults(func=_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. An error reaches the user as one line naming its culprit (the exception's
    own message: file and line, config key, run folder), and what was computed before it stays on
    disk; ``--debug`` shows the traceback instead."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as error:  # noqa: BLE001 - the one place errors become a line for the user
        if args.debug:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(
            f"vodbench {args.command}: {type(error).__name__}: {message} (--debug shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
