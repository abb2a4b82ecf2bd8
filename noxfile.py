"""Developer sessions: tests, lint, typecheck, lab demo, benchmarks, kind e2e.

Sessions run inside the project venv made by ``scripts/install.sh`` (the lab
needs root, system packages and built images, which a throw-away nox venv
would not have): ``.venv/bin/nox -s tests``.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "typecheck", "tests"]

PACKAGES = ["core", "cluster", "chaos", "healers", "reports"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, lab tests included (root)."""
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")  # the layer contracts in pyproject.toml


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
        "benchmarks/probe_path.py",
        "benchmarks/edge_truth.py",
    ]
    for bench_file in benches:
        session.run("python", bench_file)


KUBEVIRT_VERSION = "v1.4.0"


@nox.session
def kind(session: nox.Session) -> None:
    """Real cluster e2e: kind (kind-config.yaml) + KubeVirt (software emulation).

    Needs a Docker host, `kind` and `kubectl` on PATH and internet access (images);
    never run by CI here. Leaves reports/kind/ like the lab campaign does.
    """
    kv = f"https://github.com/kubevirt/kubevirt/releases/download/{KUBEVIRT_VERSION}"
    session.run("kind", "create", "cluster", "--config", "kind-config.yaml", external=True)
    try:
        kubectl = ["kubectl", "--context", "kind-rto"]
        session.run(*kubectl, "apply", "-f", f"{kv}/kubevirt-operator.yaml", external=True)
        session.run(*kubectl, "apply", "-f", f"{kv}/kubevirt-cr.yaml", external=True)
        # No nested virtualisation in kind nodes: QEMU TCG.
        session.run(
            *kubectl, "-n", "kubevirt", "patch", "kubevirt", "kubevirt", "--type=merge",
            "-p", '{"spec":{"configuration":{"developerConfiguration":{"useEmulation":true,'
            '"featureGates":["HotplugVolumes"]}}}}',
            external=True,
        )  # fmt: skip
        session.run(*kubectl, "-n", "kubevirt", "wait", "kv", "kubevirt", "--for",
                    "condition=Available", "--timeout=15m", external=True)  # fmt: skip
        session.run(*kubectl, "create", "namespace", "rto", external=True, success_codes=[0, 1])
        env = {"RTO_KUBE_CONFIG": "experiments/kube/kind.yaml"}
        session.run("python", "-m", "pytest", "--with-e2e", "tests/test_kube_e2e.py", env=env)
        session.run("rto", "campaign", "experiments/kube/standard-kind.yaml",
                    "--report", "reports/kind", env=env)  # fmt: skip
    finally:
        session.run("kind", "delete", "cluster", "--name", "rto", external=True)
