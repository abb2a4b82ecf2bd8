"""Campaigns with VMIs: the shipped VMI experiments and standard campaign, `vms: true`
(the lab comes up with VMs, a VMI entry without it is refused at load) and
`delete_workloads` (one workload alive at a time), on the FakeBackend + FakeClock.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fakes import FakeBackend, FakeHealer, fake_recorder_factory

from chaos.campaign import plan_campaign, run_campaign
from chaos.journal import Journal
from chaos.results import ResultsStore, RunStatus
from chaos.runner import RunOptions
from chaos.spec import fault_variant, load_experiment
from core.clock import FakeClock
from core.errors import SpecError

ROOT = Path(__file__).resolve().parents[1]
VMIS = sorted((ROOT / "experiments" / "vmis").glob("*.yaml"))
PODS = sorted((ROOT / "experiments" / "pods").glob("*.yaml"))


def test_vmi_experiments_cover_every_fault_with_their_own_workloads() -> None:
    specs = {p.stem: load_experiment(p) for p in VMIS}
    assert all(s.rto.target.kind == "vmi" for s in specs.values())
    assert {(s.fault.type, fault_variant(s.fault, s.rto.target)) for s in specs.values()} == {
        ("process-crash", ""),
        ("process-crash", "hang"),
        ("node-drain", ""),
        ("node-drain", "evictionStrategy=None"),
        ("node-power-off", ""),
        ("network-partition", "node"),
        ("network-partition", "workload"),
        ("storage-lost", "eio"),
        ("storage-lost", "hang"),
        ("storage-lost", "unplug"),
        ("network-flap", "workload"),
    }
    assert specs["node-drain"].rto.target.eviction_strategy == "LiveMigrate"
    assert specs["node-drain-no-migrate"].rto.target.eviction_strategy == "None"
    assert specs["process-crash-hang"].rto.target.watchdog_heartbeat_s == 2
    names = [s.rto.target.workload for s in specs.values()]
    pod_names = {load_experiment(p).rto.target.workload for p in PODS}
    assert len(set(names)) == len(names) and not set(names) & pod_names
    assert all("migration" in s.rto.healers for s in specs.values())


def test_standard_campaign_has_pods_and_vmis_with_healers_and_baselines() -> None:
    plan = plan_campaign(ROOT / "experiments/campaigns/standard.yaml")
    assert plan.spec.vms and plan.spec.delete_workloads
    exps = [e for e, _ in plan.entries]
    files = {(e.path.parent.name, e.path.stem) for e in exps}
    assert {("vmis", p.stem) for p in VMIS} | {("pods", p.stem) for p in PODS} <= files
    defaults = [e for e in exps if e.rto.profile == "kubernetes-defaults"]
    healed = [e for e in defaults if e.rto.healers == ["watchdog", "eviction", "migration"]]
    assert {e.rto.target.kind for e in healed} == {"pod", "vmi"}
    assert len(healed) == len(PODS) + len(VMIS)
    baselines = [e for e in exps if e.rto.healers == ["watchdog"]]
    assert all(e.fault.type == "node-power-off" for e in baselines)
    assert [(e.rto.target.kind, e.rto.profile) for e in baselines] == [
        ("pod", "kubernetes-defaults"),
        ("pod", "fast"),
        ("vmi", "fast"),
    ]
    # Budget: what the campaign holds faults for stays well under 25 minutes.
    held = sum(getattr(e.fault, "duration_s", 0.0) for e in exps)
    assert held < 16 * 60


def _campaign(tmp_path: Path, **doc: object) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "c", "backend": "lab", **doc}))
    return path


def test_vmi_entry_needs_vms_true(tmp_path: Path) -> None:
    entry = {"path": str(ROOT / "experiments/vmis/process-crash.yaml")}
    with pytest.raises(SpecError, match=r"targets a vmi .* add `vms: true`"):
        plan_campaign(_campaign(tmp_path, experiments=[entry]))
    assert plan_campaign(_campaign(tmp_path, vms=True, experiments=[entry])).spec.vms


def test_lab_up_with_vms_and_one_workload_alive_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTO_JOURNAL", str(tmp_path / "journal.jsonl"))
    crash = str(ROOT / "experiments/pods/process-crash.yaml")
    cut = str(ROOT / "experiments/pods/network-partition-workload.yaml")
    path = _campaign(
        tmp_path,
        vms=True,
        delete_workloads=True,
        profile="fast",
        experiments=[{"path": crash}, {"path": crash}, {"path": cut, "duration_s": 2}],
    )
    clock = FakeClock(1000.0)
    backend = FakeBackend(clock)
    ups: list[tuple[str, int, bool]] = []
    downs: list[bool] = []
    deleted_while: list[list[str]] = []
    real_delete = backend.delete_workload

    def delete(name: str) -> None:
        deleted_while.append(sorted(w.name for w in backend.workloads()))
        real_delete(name)

    backend.delete_workload = delete  # type: ignore[method-assign]

    def healers(names: list[str], profile: str) -> list[FakeHealer]:
        return [FakeHealer(n) for n in names]

    opts = RunOptions(
        clock=clock,
        journal=Journal(tmp_path / "journal.jsonl"),
        recorder_factory=fake_recorder_factory,
        healer_factory=healers,  # type: ignore[arg-type]
    )
    results = run_campaign(
        plan_campaign(path),
        ResultsStore(tmp_path / "runs"),
        backend_factory=lambda _: backend,
        options=opts,
        lab_lifecycle=True,
        lab_up=lambda profile, nodes, vms: ups.append((profile, nodes, vms)),
        lab_down=lambda: downs.append(True),
    )
    assert ups == [("fast", 3, True)] and downs == [True]
    assert [r.status for r in results] == [RunStatus.RECOVERED] * 3
    # web-crash survives between its two entries, goes before web-netpod is made,
    # and the last workload goes too.
    assert deleted_while == [["web-crash"], ["web-netpod"]]
    assert backend.workloads() == []
