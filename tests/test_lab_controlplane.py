"""Control-plane decisions on a FakeClock against a real (temporary) SQLite store.

No namespaces, no processes: heartbeats are handed to the controller directly,
time only moves when the test says so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.api import Phase, WorkloadKind
from cluster.lab.controlplane import (
    Controller,
    Heartbeat,
    choose_node,
    is_lost,
    parse_heartbeat,
    should_evict,
)
from cluster.lab.store import NodeRow, PodReport, Store
from cluster.profiles import get_profile
from core.clock import FakeClock
from core.errors import BackendError

FAST = get_profile("fast")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    s = Store(tmp_path / "state.db", clock)
    s.put_setting("profile", "fast")
    for i in (1, 2, 3):
        s.add_node(f"node{i}", i)
    yield s
    s.close()


def beat(
    ctl: Controller, node: str, seq: int, *reports: PodReport, sent: float | None = None
) -> None:
    sent_at = float(seq) if sent is None else sent
    ctl.handle_heartbeat(Heartbeat(node=node, seq=seq, sent=sent_at, pods=reports))


def all_ready(ctl: Controller, seq: int = 1) -> None:
    for i in (1, 2, 3):
        beat(ctl, f"node{i}", seq)


def running(w: str, gen: int, instance: str = "i1", restarts: int = 0) -> PodReport:
    return PodReport(w, Phase.RUNNING, instance, restarts, gen, None)


def node(name: str = "n", idx: int = 1, **kw: object) -> NodeRow:
    base: dict[str, object] = dict(
        name=name,
        idx=idx,
        schedulable=True,
        ready=True,
        fenced=False,
        powered=True,
        last_heartbeat=0.0,
        ready_changed=0.0,
        agent_pid=None,
    )
    base.update(kw)
    return NodeRow(**base)  # type: ignore[arg-type]


def test_is_lost_only_after_grace() -> None:
    n = node(last_heartbeat=10.0)
    assert not is_lost(n, 10.0 + FAST.grace_period, FAST)
    assert is_lost(n, 10.0 + FAST.grace_period + 0.01, FAST)
    assert not is_lost(node(ready=False, last_heartbeat=0.0), 100.0, FAST)


def test_should_evict_only_after_toleration_from_not_ready() -> None:
    n = node(ready=False, ready_changed=50.0)
    assert not should_evict(n, 50.0 + FAST.toleration, FAST)
    assert should_evict(n, 50.0 + FAST.toleration + 0.01, FAST)
    assert not should_evict(node(ready=True, ready_changed=0.0), 1e6, FAST)


def test_choose_node_fewest_pods_skips_unusable() -> None:
    nodes = [
        node("a", 1),
        node("b", 2),
        node("c", 3, schedulable=False),
        node("d", 4, fenced=True),
        node("e", 5, powered=False),
        node("f", 6, ready=False),
    ]
    assert choose_node(nodes, {"a": 2, "b": 1}).name == "b"  # type: ignore[union-attr]
    assert choose_node(nodes, {"a": 1, "b": 1}).name == "a"  # type: ignore[union-attr]
    assert choose_node(nodes[2:], {}) is None


def test_parse_heartbeat_roundtrip_and_rejects_garbage() -> None:
    msg = {
        "node": "node1",
        "seq": 3,
        "sent": 1.5,
        "pods": {
            "web": {
                "phase": "Running",
                "instance": "ab",
                "restarts": 2,
                "generation": 4,
                "ip": "198.18.11.2",
            }
        },
    }
    hb = parse_heartbeat(json.dumps(msg).encode())
    assert hb.node == "node1" and hb.seq == 3
    assert hb.pods == (PodReport("web", Phase.RUNNING, "ab", 2, 4, "198.18.11.2"),)
    with pytest.raises(ValueError, match="malformed heartbeat"):
        parse_heartbeat(b'{"node": "x"}')
    with pytest.raises(ValueError, match="malformed heartbeat"):
        parse_heartbeat(b"not json")


def test_heartbeat_makes_node_ready_and_schedules(store: Store, clock: FakeClock) -> None:
    ctl = Controller(store, clock)
    store.insert_workload("web", WorkloadKind.POD)
    ctl.schedule()
    assert store.workload("web").node is None  # nobody is Ready yet
    all_ready(ctl)
    assert all(n.ready for n in store.nodes())
    ctl.schedule()
    w = store.workload("web")
    assert (w.node, w.ip, w.slot, w.phase) == ("node1", "198.18.11.2", 2, Phase.PENDING)
    reasons = [e.reason for e in store.events_since(0)]
    assert reasons.count("NodeReady") == 3 and "Scheduled" in reasons


def test_scheduler_spreads_and_skips_cordoned(store: Store, clock: FakeClock) -> None:
    ctl = Controller(store, clock)
    all_ready(ctl)
    store.set_node_flag("node1", "schedulable", False, "NodeNotSchedulable")
    for name in ("a", "b", "c"):
        store.insert_workload(name, WorkloadKind.POD)
    ctl.schedule()
    placed = {w.name: w.node for w in store.workloads()}
    assert placed["a"] == "node2" and placed["b"] == "node3" and placed["c"] == "node2"
    # Two pods on node2 get distinct slots.
    assert {store.workload("a").slot, store.workload("c").slot} == {2, 3}


def test_status_applies_only_for_bound_node_and_generation(store: Store, clock: FakeClock) -> None:
    ctl = Controller(store, clock)
    all_ready(ctl)
    store.insert_workload("web", WorkloadKind.POD)
    ctl.schedule()
    w = store.workload("web")
    beat(ctl, "node2", 2, running("web", w.generation))  # wrong node
    assert store.workload("web").phase is Phase.PENDING
    beat(ctl, "node1", 2, running("web", w.generation - 1))  # stale generation
    assert store.workload("web").phase is Phase.PENDING
    beat(ctl, "node1", 3, running("web", w.generation))
    now = store.workload("web")
    assert now.phase is Phase.RUNNING and now.instance == "i1"
    assert any(c.type == "Ready" and c.status for c in now.conditions)
    beat(ctl, "node1", 4, running("web", w.generation, "i2", restarts=1))
    reasons = [e.reason for e in store.events_since(0) if e.name == "web"]
    assert reasons.count("Started") == 2 and "ContainerRestarted" in reasons


def test_replayed_heartbeat_is_ignored(store: Store, clock: FakeClock) -> None:
    ctl = Controller(store, clock)
    beat(ctl, "node1", 5)
    first = store.node("node1").last_heartbeat
    assert first is not None
    clock.advance(0.5)
    beat(ctl, "node1", 5)
    assert store.node("node1").last_heartbeat == first
    beat(ctl, "node1", 6)
    assert store.node("node1").last_heartbeat == first + 0.5


def test_silent_node_not_ready_after_grace_then_evicted_after_toleration(
    store: Store, clock: FakeClock
) -> None:
    ctl = Controller(store, clock)
    all_ready(ctl)
    store.insert_workload("web", WorkloadKind.POD, node="node1")
    gen = store.workload("web").generation
    beat(ctl, "node1", 2, running("web", gen))
    # node1 goes silent; the others keep beating every heartbeat interval.
    seq = 3
    lost_at = clock.now()

    def tick(seconds: float) -> None:
        nonlocal seq
        steps = round(seconds / FAST.monitor_period)
        for _ in range(steps):
            clock.advance(FAST.monitor_period)
            seq += 1
            beat(ctl, "node2", seq)
            beat(ctl, "node3", seq)
            ctl.monitor()
            ctl.schedule()

    tick(FAST.grace_period - 0.1)
    assert store.node("node1").ready
    tick(0.2)
    assert not store.node("node1").ready
    w = store.workload("web")
    assert w.node == "node1"  # not yet evicted, only not ready
    assert not next(c for c in w.conditions if c.type == "Ready").status
    tick(FAST.toleration - 0.3)
    assert store.workload("web").node == "node1"
    tick(0.3)
    moved = store.workload("web")
    assert moved.node in ("node2", "node3") and moved.generation > gen
    assert moved.phase is Phase.PENDING and moved.instance is None
    evicted = [e for e in store.events_since(0) if e.reason == "TaintManagerEviction"]
    assert len(evicted) == 1
    total = evicted[0].at - lost_at
    assert (
        FAST.grace_period + FAST.toleration
        <= total
        <= (FAST.grace_period + FAST.toleration + 3 * FAST.monitor_period)
    )
    # A late report from the old node cannot overwrite the replacement.
    beat(ctl, "node1", 99, running("web", gen, "old"))
    assert store.workload("web").instance is None
    assert store.node("node1").ready  # but the node itself is back


def test_profile_is_reloaded(store: Store, clock: FakeClock) -> None:
    ctl = Controller(store, clock)
    assert ctl.profile.name == "fast"
    store.put_setting("profile", "kubernetes-defaults")
    ctl.reload_profile()
    assert ctl.profile.grace_period == 50.0
    store.put_setting("profile", "no-such-profile")
    ctl.reload_profile()  # keeps the last good one
    assert ctl.profile.name == "kubernetes-defaults"


def test_store_errors_are_actionable(store: Store) -> None:
    store.insert_workload("web", WorkloadKind.POD)
    with pytest.raises(BackendError, match="already exists"):
        store.insert_workload("web", WorkloadKind.POD)
    with pytest.raises(BackendError, match="no lab node 'nodeX'"):
        store.insert_workload("other", WorkloadKind.POD, node="nodeX")
    assert store.find_workload("other") is None  # rolled back as a whole
    with pytest.raises(BackendError, match="no lab workload"):
        store.workload("missing")


def test_rebooted_agent_is_heard_although_its_seq_starts_again(
    store: Store, clock: FakeClock
) -> None:
    """A powered-on node's new agent counts from seq 0; it must still be heard."""
    ctl = Controller(store)
    beat(ctl, "node1", 500, sent=10.0)
    first = store.node("node1").last_heartbeat
    assert first is not None
    clock.advance(5.0)
    beat(ctl, "node1", 499, sent=9.5)  # an old, reordered datagram: ignored
    assert store.node("node1").last_heartbeat == first
    beat(ctl, "node1", 0, sent=20.0)  # the new boot
    assert store.node("node1").last_heartbeat == pytest.approx(first + 5.0)


def test_switch_to_a_faster_profile_does_not_lose_nodes_that_beat_slowly(
    store: Store, clock: FakeClock
) -> None:
    """After kubernetes-defaults -> fast, a node heard 8 s ago is not lost at once
    (its agent beats on the old 10 s schedule until it sees the change); it is
    lost only if it stays silent for the new grace period after the switch."""
    store.put_setting("profile", "kubernetes-defaults")
    ctl = Controller(store, clock)
    all_ready(ctl)
    clock.advance(8.0)
    store.put_setting("profile", "fast")
    ctl.reload_profile()
    ctl.monitor()
    assert store.node("node1").ready
    clock.advance(FAST.grace_period + 0.1)
    ctl.monitor()
    assert not store.node("node1").ready
