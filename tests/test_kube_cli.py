"""``rto campaign --backend kube --context --dry-run`` through click's CliRunner.

The real ``get_backend("kube")`` builds a ``KubeBackend`` from a config file
pointing at the API emulator (tests/kube_emulator.py): the dry run reads the
"cluster" and prints every run's plan; the test checks nothing was changed
(only GETs, no new resourceVersion), journaled or stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from kube_emulator import KubeEmulator, emulator, write_kubeconfig

from chaos import cli
from chaos.backends import get_backend

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "experiments/kube/standard-kind.yaml"
NS = "rto"
TARGET = {"rto.harness/target": "true"}


def wl(name: str) -> dict[str, str]:
    return {**TARGET, "rto.harness/workload": name}


@pytest.fixture
def emu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeEmulator]:
    with emulator() as e:
        for n in ("node1", "node2", "node3"):
            e.add_node(n, TARGET)
        e.add_pod(NS, "web-crash-a1", "node1", wl("web-crash"), owner="web-crash-rs")
        e.add_pod(NS, "web-drain-a1", "node1", wl("web-drain"), owner="web-drain-rs")
        e.add_vmi(NS, "vm-crash", "node2", wl("vm-crash"))
        kc = write_kubeconfig(str(tmp_path / "kubeconfig"), {"emu": e.url, "prod": e.url}, "prod")
        cfg = tmp_path / "rto-kube.yaml"
        cfg.write_text(yaml.safe_dump({"contexts": ["other", "emu"], "kubeconfig": kc}))
        monkeypatch.setenv("RTO_KUBE_CONFIG", str(cfg))
        monkeypatch.setenv("RTO_JOURNAL", str(tmp_path / "journal.jsonl"))
        # The CLI hands --context/--dry-run over in the environment: restore it after.
        monkeypatch.setenv("RTO_KUBE_CONTEXT", "")
        monkeypatch.setenv("RTO_KUBE_DRY_RUN", "0")
        monkeypatch.setattr(cli, "BACKEND_FACTORY", get_backend)
        yield e


def test_campaign_dry_run_prints_every_run_and_touches_nothing(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    before = emu.rv
    runs = tmp_path / "runs"
    res = CliRunner().invoke(
        cli.cli,
        ["campaign", str(CAMPAIGN), "--context", "emu", "--dry-run", "--runs-dir", str(runs)],
    )
    assert res.exit_code == 0, res.output
    out = res.output
    assert "dry run: 8 runs planned" in out
    for k in range(1, 9):
        assert f"run {k}/8: " in out
    # An existing pod: the kill from a node pod; an existing one on node1: cordon and evict.
    assert "process-crash on pod web-crash, healers watchdog,eviction" in out
    assert f"[dry-run] SIGKILL the main process of {NS}/web-crash-a1:main (container " in out
    assert "from a node pod on node1" in out
    assert "fault: node-drain on node1\n[dry-run] cordon node node1\n" in out
    assert f"[dry-run] evict pod {NS}/web-drain-a1" in out
    assert f"[dry-run] exec kill -9 QEMU in {NS}/virt-launcher-vm-crash-" in out
    # A missing workload: its creation (Service included), the fault aimed later.
    assert "workload web-power missing" in out
    assert f"[dry-run] create Service {NS}/web-power (probe endpoint, port 8080)" in out
    assert f"[dry-run] create Deployment {NS}/web-power" in out
    assert f"[dry-run] create VirtualMachine {NS}/vm-drain" in out
    assert "aimed once the workload exists" in out
    # Nothing changed, journaled or stored.
    assert emu.rv == before
    assert {m for m, _ in emu.requests} == {"GET"}
    assert not (tmp_path / "journal.jsonl").exists() and not runs.exists()


def test_campaign_context_must_be_allowlisted(emu: KubeEmulator) -> None:
    res = CliRunner().invoke(cli.cli, ["campaign", str(CAMPAIGN), "--context", "prod", "--dry-run"])
    assert res.exit_code == 2 and "'prod' is not in the allowlist" in res.output
    assert emu.requests == []


def test_campaign_dry_run_is_kube_only(emu: KubeEmulator) -> None:
    smoke = ROOT / "experiments/campaigns/smoke.yaml"
    res = CliRunner().invoke(cli.cli, ["campaign", str(smoke), "--dry-run"])
    assert res.exit_code == 2 and "apply to the kube backend only" in res.output


def test_campaign_dry_run_names_a_refused_read_and_fails(emu: KubeEmulator) -> None:
    emu.deny.add(("list", "pods"))
    res = CliRunner().invoke(cli.cli, ["campaign", str(CAMPAIGN), "--context", "emu", "--dry-run"])
    assert res.exit_code == 2, res.output
    assert "cannot plan: RBAC: the harness may not 'list' 'pods'" in res.output
    assert "dry run could not plan" in res.output
    assert {m for m, _ in emu.requests} == {"GET"}
