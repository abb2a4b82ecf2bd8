"""``rto campaign --backend kube --context --dry-run`` through click's CliRunner.

The real ``get_backend("kube")`` builds a ``KubeBackend`` from a config file
pointing at the real kube-apiserver of tests/real_apiserver.py, with KubeVirt's
CRDs installed: the dry run reads the cluster (Nodes, Pods, a VMI and its
virt-launcher pod, made and stood up by the ``Cluster`` helper) and prints
every run's plan. The harness runs as its own user (``rto-runner``), so the API
server's audit log shows what it asked: only reads, or nothing at all; no
object's resourceVersion changed and nothing was journaled or stored. The
refused read is the RBAC authorizer's, for a user whose ClusterRole grants
every read the plan makes but listing pods.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from real_apiserver import (  # noqa: F401
    NOBODY,
    NS,
    RUNNER,
    Cluster,
    RealApiserver,
    cluster,
    kubevirt_crds,
    not_nodes,
    real_apiserver,
)

from chaos import cli
from chaos.backends import get_backend

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "experiments/kube/standard-kind.yaml"
READS = {"get", "list", "watch"}


@dataclass
class World:
    rs: RealApiserver
    c: Cluster
    tmp: Path
    node1: str
    crash_pod: str
    drain_pod: str


@pytest.fixture
def world(
    real_apiserver: RealApiserver,  # noqa: F811
    kubevirt_crds: list[str],  # noqa: F811
    cluster: Cluster,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[World]:
    """Three target nodes; the campaign's web-crash and web-drain pods on the first,
    its vm-crash VMI (and virt-launcher pod) on the second; its other workloads
    missing. The workload names are the campaign's own."""
    c = cluster
    node1, node2, _ = (c.node(n) for n in ("node1", "node2", "node3"))
    crash = c.pod("web-crash-a1", node1, "web-crash", ip="198.18.50.1")
    drain = c.pod("web-drain-a1", node1, "web-drain", ip="198.18.50.2")
    c.vmi("vm-crash", node2, "198.18.60.1")  # what virt-handler reports of its guest
    c.launcher("vm-crash", node2, "198.18.50.3")
    # The fixture's kubeconfig plus a "prod" context the allowlist leaves out.
    kc = json.loads(real_apiserver.kubeconfig.read_text())
    kc["contexts"].append({"name": "prod", "context": {"cluster": "real", "user": RUNNER}})
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps(kc))
    cfg = tmp_path / "rto-kube.yaml"
    cfg.write_text(
        yaml.safe_dump({"contexts": ["other", RUNNER, NOBODY], "kubeconfig": str(kubeconfig)})
    )
    monkeypatch.setenv("RTO_KUBE_CONFIG", str(cfg))
    monkeypatch.setenv("RTO_JOURNAL", str(tmp_path / "journal.jsonl"))
    # The CLI hands --context/--dry-run over in the environment: restore it after.
    monkeypatch.setenv("RTO_KUBE_CONTEXT", "")
    monkeypatch.setenv("RTO_KUBE_DRY_RUN", "0")
    monkeypatch.setattr(cli, "BACKEND_FACTORY", get_backend)
    yield World(real_apiserver, c, tmp_path, node1, crash, drain)


def test_campaign_dry_run_prints_every_run_and_touches_nothing(world: World) -> None:
    before, mark = world.c.versions(), world.rs.audit_mark()
    runs = world.tmp / "runs"
    res = CliRunner().invoke(
        cli.cli,
        ["campaign", str(CAMPAIGN), "--context", RUNNER, "--dry-run", "--runs-dir", str(runs)],
    )
    assert res.exit_code == 0, res.output
    out = res.output
    assert "dry run: 8 runs planned" in out
    for k in range(1, 9):
        assert f"run {k}/8: " in out
    # An existing pod: the kill from a node pod; an existing one on node1: cordon and evict.
    node1 = world.node1
    assert "process-crash on pod web-crash, healers watchdog,eviction" in out
    assert f"[dry-run] SIGKILL the main process of {NS}/{world.crash_pod}:main (container " in out
    assert f"from a node pod on {node1}" in out
    assert f"fault: node-drain on {node1}\n[dry-run] cordon node {node1}\n" in out
    assert f"[dry-run] evict pod {NS}/{world.drain_pod}" in out
    assert f"[dry-run] exec kill -9 QEMU in {NS}/virt-launcher-vm-crash-" in out
    # A missing workload: its creation (Service included), the fault aimed later.
    assert "workload web-power missing" in out
    assert f"[dry-run] create Service {NS}/web-power (probe endpoint, port 8080)" in out
    assert f"[dry-run] create Deployment {NS}/web-power" in out
    assert f"[dry-run] create VirtualMachine {NS}/vm-drain" in out
    assert "aimed once the workload exists" in out
    # Nothing changed, journaled or stored: the harness only read.
    # Nodes left out: the node lifecycle controller writes them on its own.
    assert not_nodes(world.c.versions()) == not_nodes(before)
    asked = world.rs.audit(RUNNER, mark)
    assert asked and {e["verb"] for e in asked} <= READS
    assert not (world.tmp / "journal.jsonl").exists() and not runs.exists()


def test_campaign_context_must_be_allowlisted(world: World) -> None:
    mark = world.rs.audit_mark()
    res = CliRunner().invoke(cli.cli, ["campaign", str(CAMPAIGN), "--context", "prod", "--dry-run"])
    assert res.exit_code == 2 and "'prod' is not in the allowlist" in res.output
    assert world.rs.audit(RUNNER, mark) == []  # "prod" is rto-runner too: not one request


def test_campaign_dry_run_is_kube_only(world: World) -> None:
    smoke = ROOT / "experiments/campaigns/smoke.yaml"
    res = CliRunner().invoke(cli.cli, ["campaign", str(smoke), "--dry-run"])
    assert res.exit_code == 2 and "apply to the kube backend only" in res.output


def test_campaign_dry_run_names_a_refused_read_and_fails(world: World) -> None:
    """rto-nobody may read what the plan reads (nodes, leases, services, Deployments,
    KubeVirt's objects) but not list pods: a real RBAC refusal, named per run."""
    reads = ["get", "list", "watch"]
    world.c.grant(
        NOBODY,
        [
            {"apiGroups": [""], "resources": ["nodes", "services", "configmaps"], "verbs": reads},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": reads},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": reads},
            {"apiGroups": ["kubevirt.io"], "resources": ["*"], "verbs": reads},
        ],
    )
    mark = world.rs.audit_mark()
    res = CliRunner().invoke(cli.cli, ["campaign", str(CAMPAIGN), "--context", NOBODY, "--dry-run"])
    assert res.exit_code == 2, res.output
    assert "cannot plan: RBAC: the harness may not 'list' 'pods'" in res.output
    assert "dry run could not plan" in res.output
    asked = world.rs.audit(NOBODY, mark)
    assert asked and {e["verb"] for e in asked} <= READS
    refused = [e for e in asked if e.get("objectRef", {}).get("resource") == "pods"]
    assert refused and all(e["verb"] == "list" for e in refused)
