"""Developer sessions: tests, lint, typecheck, lab demo, benchmarks, kind e2e.

Sessions run inside the project venv made by ``scripts/install.sh`` (the lab
needs root, system packages and built images, which a throw-away nox venv
would not have): ``.venv/bin/nox -s tests``.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "typecheck", "tests"]

PACKAGES = ["cluster", "chaos", "healers", "reports"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, lab tests included (root)."""
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.run("mypy", *PACKAGES)


@nox.session
def lab(session: nox.Session) -> None:
    """Bring the lab up, run the smoke campaign, report, tear the lab down."""
    session.run(
        "rto",
        "campaign",
        "experiments/campaigns/smoke.yaml",
        "--with-lab",
        "--report",
        "reports/latest",
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks; each writes its figures to benchmarks/results/*.json."""
    benches = session.posargs or [
        "benchmarks/recorder_precision.py",
        "benchmarks/lab_rto.py",
        "benchmarks/guest_boot.py",
        "benchmarks/vmi_rto.py",
    ]
    for bench_file in benches:
        session.run("python", bench_file)
