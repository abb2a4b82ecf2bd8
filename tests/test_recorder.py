"""The recorder: its control-plane follower on a fake backend and a fake clock,
then a whole run (prober + follower threads) against a loopback workload."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from loopback_target import LoopbackTarget

from chaos.recorder import Recorder
from chaos.results import RunStatus
from chaos.rto import measure
from cluster.api import (
    Condition,
    Event,
    NodeStatus,
    Observed,
    Phase,
    ProbeTarget,
    WorkloadKind,
    WorkloadStatus,
)
from core.clock import FakeClock, RealClock
from core.errors import BackendError
from core.timeline import EventKind, Timeline


class FakeBackend:
    """``cluster.api.Observed`` (the recorder's role) with state: one workload, an
    event log, an endpoint, and a switch that makes the next reads fail like an
    API outage. No log file, no metrics, one node."""

    name = "fake"

    def __init__(self, clock: FakeClock | RealClock, target: ProbeTarget | None = None) -> None:
        self.clock = clock
        self.target = target
        self.status = WorkloadStatus("web", WorkloadKind.POD, Phase.RUNNING, "node1", "i1")
        self.log: list[Event] = []
        self.failing: str | None = None  # error message while the API is "down"

    def emit(self, source: str, name: str, reason: str, at: float | None = None) -> None:
        self.log.append(Event(self.clock.now() if at is None else at, source, name, reason))

    def set_status(self, **changes: object) -> None:
        self.status = WorkloadStatus(**{**self.status.__dict__, **changes})  # type: ignore[arg-type]

    def _check(self) -> None:
        if self.failing:
            raise BackendError(self.failing)

    def workload(self, name: str) -> WorkloadStatus:
        self._check()
        if name != self.status.name:
            raise BackendError(f"no workload {name}")
        return self.status

    def probe_target(self, workload: str) -> ProbeTarget | None:
        return self.target

    def events(self, since: float) -> Iterator[Event]:
        self._check()
        return iter([e for e in sorted(self.log, key=lambda e: e.at) if e.at > since])

    def nodes(self) -> list[NodeStatus]:
        return [self.node("node1")]

    def node(self, name: str) -> NodeStatus:
        return NodeStatus(name, ready=True, schedulable=True)

    def workloads(self) -> list[WorkloadStatus]:
        return [self.workload(self.status.name)]

    def metrics(self, workload: str) -> None:
        return None

    def log_path(self, workload: str) -> None:
        return None

    def vm_accelerator(self) -> None:
        return None

    def platform_version(self, kind: object = None) -> None:
        return None


def test_the_fake_plays_the_recorders_role() -> None:
    assert isinstance(FakeBackend(FakeClock(0.0)), Observed)


def control(tl: Timeline) -> list[tuple[str, str]]:
    return [(e.source, e.message) for e in tl.events() if e.kind is EventKind.CONTROL]


Rig = tuple[FakeClock, FakeBackend, Timeline, Recorder]


@pytest.fixture
def fake() -> Rig:
    clock = FakeClock(100.0)
    be = FakeBackend(clock)
    tl = Timeline(origin=clock.now())
    return clock, be, tl, Recorder(be, "web", tl, clock=clock)


def test_follower_keeps_nodes_and_this_workload_only(fake: Rig) -> None:
    clock, be, tl, rec = fake
    clock.advance(1)
    be.emit("node", "node2", "NodeNotReady")
    be.emit("pod", "web", "Evicted")
    be.emit("pod", "db", "Evicted")
    be.log.append(Event(clock.now(), "migration", "mig-1", "Running", data={"vmi": "web"}))
    rec.poll_control()
    rec.poll_control()  # nothing new: nothing added twice
    got = [m for s, m in control(tl) if s != "status"]
    assert got == ["node/node2 NodeNotReady", "pod/web Evicted", "migration/mig-1 Running"]
    assert rec.control_events == 4  # + the first status


def test_follower_notes_each_status_change_once(fake: Rig) -> None:
    clock, be, tl, rec = fake
    rec.poll_control()
    clock.advance(0.1)
    rec.poll_control()
    clock.advance(0.1)
    be.set_status(conditions=(Condition("Ready", False, "NodeNotReady"),))
    rec.poll_control()
    clock.advance(0.1)
    be.set_status(phase=Phase.PENDING, node=None, instance=None)
    rec.poll_control()
    status = [e for e in tl.events() if e.source == "status"]
    assert [e.t for e in status] == pytest.approx([0.0, 0.2, 0.3])
    assert status[1].data["conditions"] == "Ready=False:NodeNotReady"
    assert status[1].data["phase"] == "Running"  # phase lies, the condition tells
    assert status[2].data["phase"] == "Pending" and status[2].data["node"] == ""


def test_backend_errors_are_marked_once_counted_and_retried(fake: Rig) -> None:
    clock, be, tl, rec = fake
    be.failing = "apiserver unreachable"
    for _ in range(5):
        clock.advance(0.1)
        rec.poll_control()
    be.failing = None
    be.emit("node", "node1", "NodeReady")
    rec.poll_control()
    marks = [e for e in tl.events() if e.kind is EventKind.MARK]
    assert [(m.data["event"], m.data["what"]) for m in marks] == [
        ("backend_error", "events"),
        ("backend_error", "status"),
        ("backend_recovered", "events"),
        ("backend_recovered", "status"),
    ]
    assert "apiserver unreachable" in marks[0].message
    assert rec.control_errors == 10
    assert ("node", "node/node1 NodeReady") in control(tl)


def test_late_written_event_within_slack_is_picked_up_once(fake: Rig) -> None:
    clock, be, tl, rec = fake
    clock.advance(2)
    be.emit("node", "node1", "A")
    rec.poll_control()
    # Committed after the read above, stamped before the newest event seen.
    be.emit("pod", "web", "Late", at=clock.now() - 0.3)
    rec.poll_control()
    rec.poll_control()
    msgs = [m for s, m in control(tl) if s != "status"]
    assert msgs == ["pod/web Late", "node/node1 A"]  # timeline order is by time


# --- a whole run, real threads ------------------------------------------------------


@pytest.fixture
def server() -> Iterator[LoopbackTarget]:
    srv = LoopbackTarget(name="web", instance="i1").start()
    try:
        yield srv
    finally:
        srv.stop()


def test_whole_run_restart_with_new_instance(server: LoopbackTarget) -> None:
    clock = RealClock()
    be = FakeBackend(clock, server.target())
    tl = Timeline(origin=clock.now())
    rec = Recorder(be, "web", tl, control_interval=0.05)
    rec.start()
    try:
        assert rec.wait_until_up(3)
        assert rec.is_up()
        injected = clock.now()
        tl.add(injected, EventKind.FAULT_INJECTED, "runner")
        down_at = server.set_mode("refuse")
        assert rec.wait_until_down(2)
        be.emit("pod", "web", "BackOff")
        be.set_status(restarts=1, instance="i2")
        assert not rec.wait_until_recovered(injected, 0.2)  # still down
        time.sleep(0.3)
        server.instance = "i2"
        up_at = server.set_mode("ok")
        assert rec.wait_until_recovered(injected, 3)
    finally:
        rec.stop()
    m = measure(tl.events(), injected - tl.origin)
    assert m.status is RunStatus.RECOVERED
    assert m.rto_s is not None and abs(m.rto_s - (up_at - down_at)) < 0.15
    assert m.same_instance is False and (m.instance_before, m.instance_after) == ("i1", "i2")
    assert m.detection_s is not None and m.detection_s < 1.0
    assert rec.probes_sent > 20 and rec.probes_failed >= 5
    stopped = tl.events()[-1]
    assert stopped.data["event"] == "recorder_stopped"
    assert stopped.data["probes_sent"] == str(rec.probes_sent)


def test_no_endpoint_never_comes_up() -> None:
    clock = RealClock()
    be = FakeBackend(clock, target=None)
    tl = Timeline(origin=clock.now())
    with Recorder(be, "web", tl) as rec:
        assert rec.wait_until_down(1)
        assert not rec.wait_until_up(0.3)
    fail = next(e for e in tl.events() if e.kind is EventKind.PROBE_FAIL)
    assert fail.data["reason"] == "no endpoint"
