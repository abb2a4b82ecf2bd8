"""Faults on the FakeBackend: what inject/revert do, idempotence, composition."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeBackend

from chaos.faults import (
    Compose,
    NetworkPartition,
    NodeDrain,
    NodePowerOff,
    ProcessCrash,
    StorageLost,
    build_fault,
    from_record,
)
from chaos.faults.node_drain import NodeDrainSpec
from chaos.faults.node_power import NodePowerOffSpec
from chaos.journal import Journal
from chaos.spec import TargetSpec
from cluster.api import VolumeFailure, WorkloadKind
from core.errors import FaultError


@pytest.fixture
def backend() -> FakeBackend:
    b = FakeBackend()
    b.create_workload("web", WorkloadKind.POD, "node1")
    b.create_workload("db", WorkloadKind.POD, "node2")
    return b


def test_revert_before_inject_is_a_noop(backend: FakeBackend) -> None:
    calls = len(backend.calls)
    for f in (
        NodePowerOff(backend, "node1"),
        NetworkPartition(backend, "workload", "web"),
        StorageLost(backend, "web", VolumeFailure.EIO),
    ):
        f.revert()
    assert len(backend.calls) == calls


def test_inject_twice_is_refused(backend: FakeBackend) -> None:
    f = ProcessCrash(backend, "web")
    f.inject()
    with pytest.raises(FaultError, match="already injected"):
        f.inject()
    f.revert()
    assert backend.calls[-1] == "kill_main_process(web)"  # nothing to undo


def test_drain_cordons_evicts_and_uncordons(backend: FakeBackend) -> None:
    f = NodeDrain(backend, "node1")
    f.inject()
    assert backend.node_state("node1")["schedulable"] is False
    assert backend.workload("web").node != "node1"
    assert backend.workload("db").node == "node2"  # only the drained node's workloads
    assert f.evicted == ["web"]
    f.revert()
    assert backend.node_state("node1")["schedulable"] is True


def test_drain_without_pdb_falls_back_to_reschedule(backend: FakeBackend) -> None:
    backend.fail_on["evict"] = "disruption budget"
    with pytest.raises(FaultError, match="disruption budget"):
        NodeDrain(backend, "node1").inject()
    NodeDrain(backend, "node2", respect_pdb=False).inject()
    assert "reschedule(db)" in backend.calls


def test_compose_reverts_in_reverse_and_reports_every_failure(
    backend: FakeBackend, tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "j")
    a = NetworkPartition(backend, "node", "node1", journal)
    b = StorageLost(backend, "db", VolumeFailure.HANG, journal)
    c = NodePowerOff(backend, "node3", journal)
    both = Compose([a, b, c])
    both.inject()
    backend.fail_on["repair_volume"] = "stuck"
    with pytest.raises(FaultError, match="stuck"):
        both.revert()
    tail = backend.calls[-2:]
    assert tail == ["power_on(node3)", "heal_node_partition(node1)"]
    assert [r.fault for r in journal.pending()] == ["storage-lost"]


def test_compose_stops_at_first_failed_inject(backend: FakeBackend) -> None:
    backend.fail_on["power_off"] = "no BMC"
    a = NetworkPartition(backend, "node", "node1")
    b = NodePowerOff(backend, "node1")
    c = ProcessCrash(backend, "web")
    both = Compose([a, b, c])
    with pytest.raises(FaultError, match="no BMC"):
        both.inject()
    assert c.state == "new"
    del backend.fail_on["power_off"]
    both.revert()  # b half-acted ("injecting"): its undo runs too
    assert "power_on(node1)" in backend.calls
    assert backend.node_state("node1")["partitioned"] is False


def test_records_round_trip(backend: FakeBackend, tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    for f in (
        ProcessCrash(backend, "web", journal),
        NodeDrain(backend, "node2", False, journal),
        NodePowerOff(backend, "node3", journal),
        NetworkPartition(backend, "workload", "web", journal),
        StorageLost(backend, "web", VolumeFailure.EIO, journal),
    ):
        rec = f.to_record()
        again = from_record(rec, backend)
        assert (type(again), again.params(), again.target) == (type(f), f.params(), f.target)


def test_build_fault_aims_at_the_current_node(backend: FakeBackend) -> None:
    target = TargetSpec(workload="web", node="node1")
    backend.evict("web")  # moved since the experiment was written
    f = build_fault(NodePowerOffSpec(type="node-power-off"), target, backend, None)
    assert f.target == backend.workload("web").node != "node1"
    drain = build_fault(NodeDrainSpec(type="node-drain", respect_pdb=False), target, backend, None)
    assert isinstance(drain, NodeDrain) and not drain.respect_pdb
