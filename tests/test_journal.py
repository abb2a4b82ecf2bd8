"""The fault journal: fsync'd before acting, pending/revert, crash recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fakes import FakeBackend

from chaos.faults import NodePowerOff, StorageLost, revert_pending
from chaos.journal import FaultRecord, Journal
from cluster.api import VolumeFailure, WorkloadKind
from core.errors import JournalError

ROOT = Path(__file__).resolve().parents[1]


def test_states_follow_the_fault(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    backend = FakeBackend()
    fault = NodePowerOff(backend, "node2", journal)
    fault.inject()
    [rec] = journal.pending()
    assert (rec.state, rec.fault, rec.target, rec.backend) == (
        "injected",
        "node-power-off",
        "node2",
        "fake",
    )
    fault.revert()
    fault.revert()  # idempotent
    assert journal.pending() == []
    assert [r.state for r in journal.records()] == ["reverted"]
    assert backend.calls.count("power_on(node2)") == 1


def test_record_is_on_disk_before_the_fault_acts(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    backend = FakeBackend()
    seen: list[list[FaultRecord]] = []
    original = backend.power_off

    def power_off(node: str) -> None:
        seen.append(Journal(journal.path).pending())  # a fresh reader: what is on disk
        original(node)

    backend.power_off = power_off  # type: ignore[method-assign]
    NodePowerOff(backend, "node1", journal).inject()
    assert [r.state for r in seen[0]] == ["injecting"]


def test_env_overrides_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTO_JOURNAL", str(tmp_path / "x.jsonl"))
    assert Journal().path == tmp_path / "x.jsonl"


def test_revert_pending_reports_failures_and_keeps_them(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    backend = FakeBackend()
    backend.create_workload("web", WorkloadKind.POD, "node1")
    StorageLost(backend, "web", VolumeFailure.HANG, journal).inject()
    NodePowerOff(backend, "node3", journal).inject()
    backend.fail_on["repair_volume"] = "volume server down"
    with pytest.raises(JournalError, match="volume server down"):
        revert_pending(journal, lambda name: backend)
    # The power-off was reverted anyway; the storage fault stays pending.
    assert [(r.fault, r.state) for r in journal.pending()] == [("storage-lost", "revert_failed")]
    assert backend.node_state("node3")["powered"] is True
    del backend.fail_on["repair_volume"]
    assert [r.fault for r in revert_pending(journal, lambda name: backend)] == ["storage-lost"]
    assert journal.pending() == []


def test_torn_last_line_is_ignored_but_corruption_is_not(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    NodePowerOff(FakeBackend(), "node1", journal).inject()
    with journal.path.open("a") as fh:
        fh.write('{"id": "abc", "fau')
    assert len(journal.pending()) == 1
    with journal.path.open("a") as fh:
        fh.write("\n{}\n")
    with pytest.raises(JournalError, match="line 3"):
        journal.records()


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from core.clock import RealClock
    from chaos.faults import NetworkPartition, NodePowerOff, Compose
    from chaos.journal import Journal
    from fakes import FakeBackend
    backend = FakeBackend(RealClock(), state_file=Path({state!r}))
    journal = Journal(Path({journal!r}))
    Compose([NodePowerOff(backend, "node1", journal),
             NetworkPartition(backend, "node", "node2", journal)]).inject()
    print("INJECTED", flush=True)
    time.sleep(60)
    """
)


def test_process_killed_mid_fault_then_revert_pending_restores(tmp_path: Path) -> None:
    state, jpath = tmp_path / "fake.json", tmp_path / "journal.jsonl"
    code = _CHILD.format(tests=str(ROOT / "tests"), state=str(state), journal=str(jpath))
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "INJECTED"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    backend = FakeBackend(state_file=state)
    assert backend.node_state("node1")["powered"] is False
    assert backend.node_state("node2")["partitioned"] is True
    journal = Journal(jpath)
    assert sorted(r.fault for r in journal.pending()) == ["network-partition", "node-power-off"]
    built: list[str] = []

    def factory(name: str) -> FakeBackend:
        built.append(name)
        return FakeBackend(state_file=state)

    revert_pending(journal, factory)
    assert built == ["fake"]
    assert backend.node_state("node1")["powered"] is True
    assert backend.node_state("node2")["partitioned"] is False
    assert journal.pending() == []
    # Idempotent: nothing left, nothing done.
    assert revert_pending(journal, factory) == []
