"""VMI faults and the VM side of the watchdog healer, on the FakeBackend and a FakeClock.

Covers the spec fields (process-crash ``mode``, storage-lost ``unplug``,
``target.eviction_strategy`` / ``watchdog_heartbeat_s``, refused for pods with
the field named), the faults built from them (journaled, reverted, rebuilt
from their records), and ``VmiWatcher``: watchdog reset vs QEMU restart, resume
of a PausedIOError VMI once its storage is back, restart when the resume does
not hold. Real lab behaviour is in ``test_e2e_vmi_faults.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes import FakeBackend

from chaos.faults import ProcessCrash, StorageLost, build_fault, from_record
from chaos.journal import Journal
from chaos.spec import ExperimentSpec, load_experiment
from cluster.api import VolumeFailure, WorkloadKind
from core.clock import FakeClock
from core.errors import BackendError, FaultError, SpecError
from healers.base import HealerContext
from healers.watchdog import Watchdog

__all__: list[str] = []


def _write(tmp: Path, target: dict[str, Any], fault: dict[str, Any]) -> Path:
    doc = {
        "title": "t",
        "description": "d",
        "method": [],
        "extensions": [
            {
                "name": "rto",
                "target": target,
                "fault": fault,
                "recovery": {"deadline_s": 60},
            }
        ],
    }
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _load(tmp: Path, target: dict[str, Any], fault: dict[str, Any]) -> ExperimentSpec:
    return load_experiment(_write(tmp, target, fault))


# --- spec ---------------------------------------------------------------------------


def test_vmi_spec_fields_and_defaults(tmp_path: Path) -> None:
    spec = _load(tmp_path, {"workload": "vm", "kind": "vmi"}, {"type": "process-crash"})
    assert spec.rto.fault.mode == "kill"  # type: ignore[union-attr]
    assert spec.rto.target.eviction_strategy == "LiveMigrate"
    assert spec.rto.target.watchdog_heartbeat_s == 2
    spec = _load(
        tmp_path,
        {
            "workload": "vm",
            "kind": "vmi",
            "watchdog_heartbeat_s": None,
            "eviction_strategy": "None",
        },
        {"type": "storage-lost", "mode": "unplug", "duration_s": 5},
    )
    assert spec.rto.target.watchdog_heartbeat_s is None  # the driver's 30 s
    assert spec.rto.target.eviction_strategy == "None"
    # Overrides re-validate the whole spec: VMI fields survive the round trip.
    again = spec.with_overrides(duration_s=3)
    assert again.rto.target.watchdog_heartbeat_s is None
    assert again.rto.fault.mode == "unplug"  # type: ignore[union-attr]


def test_every_vmi_experiment_file_loads() -> None:
    files = sorted((Path(__file__).resolve().parents[1] / "experiments" / "vmis").glob("*.yaml"))
    assert files
    for f in files:
        assert load_experiment(f).rto.target.kind == "vmi"


@pytest.mark.parametrize(
    ("target", "fault", "field"),
    [
        ({"workload": "p"}, {"type": "process-crash", "mode": "hang"}, "fault.mode"),
        ({"workload": "p"}, {"type": "storage-lost", "mode": "unplug"}, "fault.mode"),
        ({"workload": "p", "watchdog_heartbeat_s": 5}, {"type": "process-crash"}, "watchdog"),
        ({"workload": "p", "eviction_strategy": "None"}, {"type": "process-crash"}, "eviction"),
        (
            {"workload": "v", "kind": "vmi", "watchdog_heartbeat_s": 1},
            {"type": "process-crash"},
            "watchdog_heartbeat_s",
        ),
        ({"workload": "v", "kind": "vmi"}, {"type": "process-crash", "mode": "melt"}, "mode"),
    ],
)
def test_bad_vmi_fields_name_the_field(
    tmp_path: Path, target: dict[str, Any], fault: dict[str, Any], field: str
) -> None:
    with pytest.raises(SpecError, match=field):
        _load(tmp_path, target, fault)


def test_old_files_stay_valid(tmp_path: Path) -> None:
    spec = _load(tmp_path, {"workload": "p"}, {"type": "storage-lost", "mode": "eio"})
    assert spec.rto.target.kind == "pod"
    assert spec.rto.target.watchdog_heartbeat_s == 2  # default, ignored for pods


# --- faults -------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def backend(clock: FakeClock) -> FakeBackend:
    be = FakeBackend(clock=clock, restart_delay=1.0)
    be.create_workload("vm", WorkloadKind.VMI, "node1", watchdog_heartbeat_s=2)
    be.create_workload("pod", WorkloadKind.POD, "node1")
    return be


def test_hang_fault_resets_guest_after_heartbeat(
    tmp_path: Path, backend: FakeBackend, clock: FakeClock
) -> None:
    spec = _load(
        tmp_path, {"workload": "vm", "kind": "vmi"}, {"type": "process-crash", "mode": "hang"}
    )
    journal = Journal(tmp_path / "j.jsonl")
    fault = build_fault(spec.rto.fault, spec.rto.target, backend, journal)
    old = backend.workload("vm").instance
    fault.inject()
    assert "hang_workload(vm)" in backend.calls
    assert backend.answers("vm") == (False, old)  # hung, watchdog not fired yet
    clock.advance(2.5)
    ok, new = backend.answers("vm")
    assert not ok and new != old  # reset: a new guest is booting
    clock.advance(1.0)
    assert backend.answers("vm") == (True, new)
    assert backend.workload("vm").restarts == 0  # a reset is not a restart
    fault.revert()
    assert journal.pending() == []


def test_hang_of_a_pod_is_refused(backend: FakeBackend) -> None:
    fault = ProcessCrash(backend, "pod", mode="hang")
    with pytest.raises(FaultError, match="only a VMI"):
        fault.inject()


def test_old_process_crash_record_is_a_kill(tmp_path: Path, backend: FakeBackend) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    fault = ProcessCrash(backend, "vm", journal, mode="hang")
    record = fault.to_record()
    rebuilt = from_record(record.model_copy(update={"params": {"workload": "vm"}}), backend)
    assert isinstance(rebuilt, ProcessCrash) and rebuilt.mode == "kill"
    assert from_record(record, backend).mode == "hang"  # type: ignore[attr-defined]


def test_unplug_fault_outage_and_replug(tmp_path: Path, backend: FakeBackend) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    fault = StorageLost(backend, "vm", VolumeFailure.UNPLUG, journal)
    instance = backend.workload("vm").instance
    fault.inject()
    assert backend.answers("vm")[0] is False
    assert journal.pending() != []
    fault.revert()
    fault.revert()  # idempotent
    assert backend.answers("vm") == (True, instance)  # same guest: no reboot
    assert journal.pending() == []
    with pytest.raises(FaultError, match="unplug"):
        StorageLost(backend, "pod", VolumeFailure.UNPLUG).inject()


# --- the watchdog healer's VMI side -------------------------------------------------------


class Records:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, dict[str, str]]] = []

    def __call__(self, healer: str, message: str, data: dict[str, str]) -> None:
        self.items.append((healer, message, data))

    def actions(self) -> list[str]:
        return [d.get("action", "") for _, _, d in self.items]


def _healer(backend: FakeBackend, clock: FakeClock, records: Records) -> Watchdog:
    wd = Watchdog(period=0.1)
    wd.prepare(HealerContext(backend=backend, workloads=["vm"], record=records, clock=clock))
    return wd


def _steps(wd: Watchdog, clock: FakeClock, seconds: float, dt: float = 0.1) -> None:
    end = clock.now() + seconds
    while clock.now() < end:
        clock.advance(dt)
        wd.step()


def test_watchdog_records_reset_not_restart(backend: FakeBackend, clock: FakeClock) -> None:
    records = Records()
    wd = _healer(backend, clock, records)
    _steps(wd, clock, 0.5)
    backend.hang_workload("vm")
    _steps(wd, clock, 4.0)
    assert records.actions() == ["watchdog-reset"]
    wd.stop()


def test_watchdog_records_restart_after_qemu_death(backend: FakeBackend, clock: FakeClock) -> None:
    records = Records()
    wd = _healer(backend, clock, records)
    _steps(wd, clock, 0.3)
    backend.kill_main_process("vm")
    _steps(wd, clock, 2.0)
    assert records.actions() == ["restarted"]
    assert records.items[0][2]["reason"] == "qemu-died"
    wd.stop()


def test_paused_vmi_waits_for_storage_then_resume_then_restart(
    backend: FakeBackend, clock: FakeClock
) -> None:
    records = Records()
    wd = _healer(backend, clock, records)
    _steps(wd, clock, 0.3)
    backend.fail_volume("vm", VolumeFailure.EIO)
    _steps(wd, clock, 3.0)
    # Storage still broken: nothing to do yet (a resume would only re-pause).
    assert records.actions() == []
    assert "resume_workload(vm)" not in backend.calls
    backend.repair_volume("vm", VolumeFailure.EIO)
    _steps(wd, clock, 0.2)
    assert records.actions() == ["resume"]
    # QEMU's fd died with the filesystem: still paused after the confirm time.
    _steps(wd, clock, 1.5)
    assert records.actions()[:2] == ["resume", "restart"]
    _steps(wd, clock, 2.0)
    assert records.actions() == ["resume", "restart", "restarted"]
    assert records.items[-1][2]["reason"] == "qemu-killed-by-healer"
    assert backend.answers("vm")[0] is True
    wd.stop()


def test_resume_that_holds_is_not_followed_by_a_restart(
    backend: FakeBackend, clock: FakeClock
) -> None:
    records = Records()
    wd = _healer(backend, clock, records)
    _steps(wd, clock, 0.3)
    # A pause whose cause went away by itself (no dead fd): resume holds.
    backend.fail_volume("vm", VolumeFailure.EIO)
    backend.fail_volume("vm", VolumeFailure.HANG)
    backend.repair_volume("vm", VolumeFailure.HANG)
    _steps(wd, clock, 3.0)
    assert records.actions() == ["resume", "resume-held"]
    assert backend.workload("vm").restarts == 0
    assert backend.answers("vm")[0] is True
    wd.stop()


def test_resume_of_a_pod_is_refused(backend: FakeBackend) -> None:
    with pytest.raises(BackendError, match="only a VMI"):
        backend.resume_workload("pod")
