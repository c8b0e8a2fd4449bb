"""Sessions: `nox -l` lists them. Run them through `./bootstrap nox -s <session>`.

Every session runs in the one project environment that ./bootstrap creates (venv_backend="none"):
torch alone is several GB, so per-session environments would cost minutes and gigabytes each.
Arguments after `--` reach the underlying command (`nox -s ablate-stsn -- --quick`).
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]

# One `ablate-<paper>` session per ablation module in ablations/ (the issue names them exactly so).
ABLATIONS = ("stsn", "ssvd", "stmn", "lsts", "sparsevod")


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Run the test suite (CPU; CUDA tests skip with a reason when no GPU is present)."""
    session.run(
        "python", "-m", "pytest", "-n", "2", "--dist", "loadgroup", "--durations=10", *session.posargs
    )


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """Lint with ruff."""
    session.run("ruff", "check", "harness", "methods", "ops", "ablations", "reports", "tests", "noxfile.py")


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Op latency benchmarks (pytest-benchmark); prints speed/memory ratios against the baselines."""
    import platform
    from pathlib import Path

    out = Path("results/bench")
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"bench-{platform.machine()}-{platform.python_version()}.json"
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/benchmarks",
        "--benchmark-enable",
        "--benchmark-only",
        f"--benchmark-json={json_path}",
        "-p",
        "no:xdist",
        *session.posargs,
    )
    session.run("python", "-m", "reports.bench", str(json_path), "--out", str(out))


@nox.session(venv_backend="none")
def report(session: nox.Session) -> None:
    """Re-render the reports of every finished ablation under results/ (no training)."""
    session.run("vodbench", "report", *session.posargs)


def _make_ablation_session(paper: str):
    def session_fn(session: nox.Session) -> None:
        session.run("vodbench", "ablate", paper, *session.posargs)

    session_fn.__doc__ = (
        f"Reproduce the {paper.upper()} paper's ablations on the embedded dataset (`-- --quick`: smoke run)."
    )
    session_fn.__name__ = f"ablate_{paper}"
    return session_fn


for _paper in ABLATIONS:
    nox.session(name=f"ablate-{_paper}", venv_backend="none")(_make_ablation_session(_paper))
