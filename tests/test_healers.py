"""Healers on a FakeClock against a small stateful backend of this file's own.

The fake carries state (nodes that heartbeat, a scheduler that places
rescheduled workloads, a restart switch) so the healers are judged by what
they did to the cluster, not by which methods were called. Timing logic is
driven step by step (``prepare`` + ``step``); the thread machinery is tested
separately.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pytest

from cluster.api import (
    Backend,
    Event,
    HealerActions,
    NodeStatus,
    Observed,
    Phase,
    ProbeTarget,
    WorkloadKind,
    WorkloadStatus,
)
from cluster.profiles import get_profile
from core.clock import FakeClock
from core.errors import BackendError, HarnessError, SpecError
from healers.base import Healer, HealerContext, LoopHealer
from healers.eviction import EvictionHealer, default_confirm_after
from healers.registry import HEALERS, build_healers
from healers.watchdog import Watchdog

GRACE = 1.0  # the fake control plane marks a node NotReady after this silence


@dataclass
class _Node:
    name: str
    last_heartbeat: float | None
    fenced: bool = False
    alive: bool = True
    lease_s: float | None = None  # how long a heartbeat holds, if the platform says


@dataclass
class _Workload:
    name: str
    node: str | None
    kind: WorkloadKind = WorkloadKind.POD
    restarts: int = 0
    instance: str = "i0"
    generation: int = 0


@dataclass
class FakeCluster:
    """Nodes that heartbeat on a FakeClock, workloads on them, an action log."""

    clock: FakeClock
    hosts: dict[str, _Node] = field(default_factory=dict)
    pods: dict[str, _Workload] = field(default_factory=dict)
    actions: list[tuple[str, str]] = field(default_factory=list)
    healing: bool = False
    fail_reads_after: int | None = None  # raise BackendError after N reads
    name: str = "fake"
    _reads: int = 0

    # --- test controls -------------------------------------------------------
    def add_node(self, name: str) -> None:
        self.hosts[name] = _Node(name, self.clock.now())

    def add(self, name: str, node: str, kind: WorkloadKind = WorkloadKind.POD) -> None:
        self.pods[name] = _Workload(name, node, kind)

    def heartbeats(self) -> None:
        """Every live node sends one heartbeat now."""
        for n in self.hosts.values():
            if n.alive:
                n.last_heartbeat = self.clock.now()

    def crash(self, workload: str) -> None:
        w = self.pods[workload]
        w.restarts += 1
        w.instance = f"i{w.restarts}"

    def restart_healing(self) -> bool:
        return self.healing

    def _read(self) -> None:
        self._reads += 1
        if self.fail_reads_after is not None and self._reads > self.fail_reads_after:
            raise BackendError("fake backend: the state store went away")

    # --- Observed: what the healers read --------------------------------------
    def _node_status(self, n: _Node) -> NodeStatus:
        age = None if n.last_heartbeat is None else self.clock.now() - n.last_heartbeat
        return NodeStatus(
            name=n.name,
            ready=age is not None and age <= GRACE,
            schedulable=True,
            fenced=n.fenced,
            heartbeat_age=age,
            heartbeat_valid_s=n.lease_s,
        )

    def nodes(self) -> list[NodeStatus]:
        self._read()
        return [self._node_status(n) for n in self.hosts.values()]

    def node(self, name: str) -> NodeStatus:
        return self._node_status(self.hosts[name])

    def _status(self, w: _Workload) -> WorkloadStatus:
        return WorkloadStatus(
            name=w.name,
            kind=w.kind,
            phase=Phase.RUNNING if w.node else Phase.PENDING,
            node=w.node,
            instance=w.instance,
            restarts=w.restarts,
        )

    def workloads(self) -> list[WorkloadStatus]:
        self._read()
        return [self._status(w) for w in self.pods.values()]

    def workload(self, name: str) -> WorkloadStatus:
        return self._status(self.pods[name])

    def probe_target(self, workload: str) -> ProbeTarget | None:
        return None

    def events(self, since: float) -> Iterator[Event]:
        return iter(())

    def log_path(self, workload: str) -> None:
        return None  # no workload output here

    def metrics(self, workload: str) -> None:
        return None  # the healers never read metrics

    def vm_accelerator(self) -> None:
        return None  # nor what runs the VMs

    def platform_version(self, kind: object = None) -> None:
        return None  # nor what the cluster runs

    # --- HealerActions: what the healers do --------------------------------------
    def set_restart_healing(self, enabled: bool) -> None:
        self.actions.append(("set_restart_healing", str(enabled)))
        self.healing = enabled

    def fence(self, node: str) -> None:
        self.actions.append(("fence", node))
        self.hosts[node].fenced = True

    def unfence(self, node: str) -> None:
        self.actions.append(("unfence", node))
        self.hosts[node].fenced = False

    def reschedule(self, workload: str) -> None:
        self.actions.append(("reschedule", workload))
        w = self.pods[workload]
        if w.node is None or not self.hosts[w.node].fenced:
            raise BackendError(f"fake backend: {workload} is not on a fenced node")
        # The fake scheduler: first ready, unfenced node, in name order.
        ok = [
            n.name
            for n in sorted(self.hosts.values(), key=lambda n: n.name)
            if not n.fenced and self._node_status(n).ready
        ]
        w.node = ok[0] if ok else None
        w.restarts, w.instance, w.generation = 0, f"g{w.generation + 1}", w.generation + 1

    # --- HealerActions the healers here never reach ------------------------------
    def _unused(self, *args: object) -> None:
        raise BackendError(f"fake backend: not an action these healers take {args!r}")

    def kill_main_process(self, workload: str) -> None:
        self._unused(workload)

    def resume_workload(self, workload: str) -> None:
        self._unused(workload)

    def migrate(self, workload: str, node: str | None = None) -> dict[str, str]:
        self._unused(workload, node)
        return {}


@dataclass
class Records:
    """The timeline stand-in: (time, healer, message, data) per HEALER_ACTION."""

    clock: FakeClock
    items: list[tuple[float, str, str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, healer: str, message: str, data: dict[str, str]) -> None:
        with self.lock:
            self.items.append((self.clock.now(), healer, message, data))

    def messages(self) -> list[str]:
        return [m for _, _, m, _ in self.items]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)


@pytest.fixture
def cluster(clock: FakeClock) -> FakeCluster:
    c = FakeCluster(clock)
    for n in ("node1", "node2", "node3"):
        c.add_node(n)
    c.add("web", "node1")  # target
    c.add("db", "node1")  # not a target, same node
    c.add("api", "node2")  # target
    c.add("cache", "node3")  # not a target, alone on its node
    return c


def _ctx(cluster: FakeCluster, records: Records, targets: list[str]) -> HealerContext:
    return HealerContext(backend=cluster, workloads=targets, record=records, clock=cluster.clock)


def _run(healer: LoopHealer, cluster: FakeCluster, seconds: float, dt: float = 0.05) -> None:
    """Advance time in ``dt`` steps: live nodes heartbeat, then the healer steps."""
    for _ in range(round(seconds / dt)):
        cluster.clock.advance(dt)
        cluster.heartbeats()
        healer.step()


def test_fake_cluster_plays_the_healers_roles(cluster: FakeCluster) -> None:
    # What healers read and what they do; no fault actions, no run hooks.
    assert isinstance(cluster, Observed) and isinstance(cluster, HealerActions)
    assert not isinstance(cluster, Backend)


# --- eviction ----------------------------------------------------------------


def test_eviction_fences_after_confirm_after_and_not_before(cluster: FakeCluster) -> None:
    records = Records(cluster.clock)
    # 0.72 so float steps of 0.05 land clearly on either side of it
    healer = EvictionHealer(period=0.05, confirm_after=0.72, fresh_within=0.35)
    healer.prepare(_ctx(cluster, records, ["web", "api"]))
    _run(healer, cluster, 1.0)  # all healthy: nothing happens
    assert cluster.actions == []

    cluster.hosts["node1"].alive = False
    lost_at = cluster.clock.now()
    _run(healer, cluster, 0.7)  # silence just below confirm_after: not yet
    assert ("fence", "node1") not in cluster.actions
    assert cluster.clock.now() - lost_at == pytest.approx(0.7)
    _run(healer, cluster, 0.05)  # first step past the threshold
    assert cluster.actions[0] == ("fence", "node1")
    fenced_at = next(t for t, _, m, _ in records.items if m.startswith("fenced node node1"))
    assert fenced_at - lost_at == pytest.approx(0.75)


def test_eviction_waits_while_the_nodes_lease_is_valid(cluster: FakeCluster) -> None:
    """A Lease valid 1.2 s outlasts confirm_after 0.72 s: the node is not lost before."""
    records = Records(cluster.clock)
    healer = EvictionHealer(period=0.05, confirm_after=0.72, fresh_within=0.35)
    healer.prepare(_ctx(cluster, records, ["web", "api"]))
    cluster.hosts["node1"].lease_s = 1.2
    _run(healer, cluster, 0.5)
    cluster.hosts["node1"].alive = False
    lost_at = cluster.clock.now()
    _run(healer, cluster, 1.15)  # past confirm_after, inside the lease
    assert ("fence", "node1") not in cluster.actions
    _run(healer, cluster, 0.1)
    assert cluster.actions[0] == ("fence", "node1")
    msg = next(m for _, _, m, _ in records.items if m.startswith("fenced node node1"))
    assert "> 1.2 s" in msg and cluster.clock.now() - lost_at == pytest.approx(1.25)


def test_eviction_reschedules_only_targets_and_leaves_other_nodes(cluster: FakeCluster) -> None:
    records = Records(cluster.clock)
    healer = EvictionHealer(period=0.05, confirm_after=0.7, fresh_within=0.35)
    healer.prepare(_ctx(cluster, records, ["web", "api"]))
    cluster.hosts["node1"].alive = False
    cluster.hosts["node3"].alive = False  # hosts only a non-target: not ours to fence
    _run(healer, cluster, 2.0)

    assert cluster.actions == [("fence", "node1"), ("reschedule", "web")]
    assert cluster.pods["web"].node == "node2"
    assert cluster.pods["db"].node == "node1"  # not a target: left to the platform
    assert cluster.pods["cache"].node == "node3"
    assert not cluster.hosts["node3"].fenced
    assert healer.fenced_nodes == {"node1"}
    assert any(m == "rescheduled web off node node1" for m in records.messages())
    assert all(h == "eviction" for _, h, _, _ in records.items)


def test_eviction_unfences_when_node_returns_and_does_not_flap(cluster: FakeCluster) -> None:
    records = Records(cluster.clock)
    healer = EvictionHealer(period=0.05, confirm_after=0.7, fresh_within=0.35)
    healer.prepare(_ctx(cluster, records, ["web", "api"]))
    cluster.hosts["node1"].alive = False
    _run(healer, cluster, 1.0)
    assert cluster.hosts["node1"].fenced

    cluster.hosts["node1"].alive = True
    _run(healer, cluster, 1.0)
    assert not cluster.hosts["node1"].fenced
    assert cluster.actions == [("fence", "node1"), ("reschedule", "web"), ("unfence", "node1")]
    assert records.messages()[-1] == "unfenced node node1 (node is back)"
    healer.stop()  # nothing held any more: stop does not unfence again
    assert cluster.actions[-1] == ("unfence", "node1")
    assert len([a for a in cluster.actions if a[0] == "unfence"]) == 1


def test_eviction_unfences_held_nodes_at_stop(cluster: FakeCluster) -> None:
    records = Records(cluster.clock)
    healer = EvictionHealer(period=0.05, confirm_after=0.7, fresh_within=0.35)
    healer.prepare(_ctx(cluster, records, ["web"]))
    cluster.hosts["node1"].alive = False
    _run(healer, cluster, 1.0)
    assert cluster.hosts["node1"].fenced
    healer.stop()
    assert not cluster.hosts["node1"].fenced
    assert records.messages()[-1] == "unfenced node node1 (healer stopped)"


def test_eviction_leaves_nodes_fenced_by_someone_else(cluster: FakeCluster) -> None:
    records = Records(cluster.clock)
    cluster.hosts["node1"].fenced = True  # an operator's fence
    healer = EvictionHealer(period=0.05, confirm_after=0.7, fresh_within=0.35)
    healer.prepare(_ctx(cluster, records, ["web"]))
    cluster.hosts["node1"].alive = False
    _run(healer, cluster, 1.0)
    cluster.hosts["node1"].alive = True
    _run(healer, cluster, 1.0)
    healer.stop()
    assert cluster.actions == []
    assert cluster.hosts["node1"].fenced


def test_eviction_defaults_scale_with_profile() -> None:
    fast, k8s = get_profile("fast"), get_profile("kubernetes-defaults")
    assert default_confirm_after(fast) == pytest.approx(0.875)  # 3.5 x 0.25 s
    assert default_confirm_after(k8s) == pytest.approx(35.0)
    h = EvictionHealer.for_profile(k8s)
    assert h.confirm_after < k8s.grace_period + k8s.toleration
    assert h.fresh_within < h.confirm_after
    assert EvictionHealer.for_profile(fast, confirm_after=2.0).confirm_after == 2.0
    with pytest.raises(HarnessError, match="flap"):
        EvictionHealer(period=0.1, confirm_after=1.0, fresh_within=1.0)


# --- watchdog ----------------------------------------------------------------


def test_watchdog_switches_restarts_on_records_them_and_restores(cluster: FakeCluster) -> None:
    records = Records(cluster.clock)
    cluster.crash("web")  # a restart before the run: baseline, not reported
    healer = Watchdog(period=0.1)
    healer.prepare(_ctx(cluster, records, ["web", "api"]))
    assert cluster.healing is True

    cluster.crash("web")
    cluster.crash("db")  # not a target
    healer.step()
    cluster.crash("web")
    cluster.crash("api")
    healer.step()
    healer.step()  # nothing new
    healer.stop()

    assert records.messages() == [
        "restarted web (restart 2)",
        "restarted web (restart 3)",
        "restarted api (restart 1)",
    ]
    assert records.items[0][3]["restarts"] == "2"
    assert cluster.healing is False  # the state before the run
    assert cluster.actions == [
        ("set_restart_healing", "True"),
        ("set_restart_healing", "False"),
    ]


def test_watchdog_ignores_counter_reset_after_reschedule(cluster: FakeCluster) -> None:
    records = Records(cluster.clock)
    healer = Watchdog(period=0.1)
    healer.prepare(_ctx(cluster, records, ["web"]))
    cluster.crash("web")
    healer.step()
    cluster.pods["web"] = replace(cluster.pods["web"], node="node2", restarts=0)
    healer.step()
    cluster.crash("web")
    healer.step()
    assert records.messages() == ["restarted web (restart 1)", "restarted web (restart 1)"]


# --- registry ----------------------------------------------------------------


def test_registry_builds_fresh_healers_scaled_to_profile() -> None:
    healers = build_healers(["watchdog", "eviction"], "fast")
    assert [h.name for h in healers] == ["watchdog", "eviction"]
    assert all(isinstance(h, Healer) for h in healers)
    ev = healers[1]
    assert isinstance(ev, EvictionHealer)
    assert ev.confirm_after == pytest.approx(0.875)
    assert build_healers(["watchdog"], "fast")[0] is not healers[0]
    assert build_healers([], "fast") == []
    assert all(spec.description for spec in HEALERS.values())


def test_unknown_healer_name_lists_known_ones() -> None:
    with pytest.raises(SpecError, match=r"unknown healer\(s\) 'bogus'; known healers: eviction"):
        build_healers(["watchdog", "bogus"], "fast")
    with pytest.raises(SpecError, match="more than once"):
        build_healers(["eviction", "eviction"], "fast")
    with pytest.raises(SpecError, match="unknown timing profile"):
        build_healers(["watchdog"], "slowest")


# --- the loop ----------------------------------------------------------------


class _Counting(LoopHealer):
    name = "counting"

    def __init__(self, period: float, fail_at: int | None = None) -> None:
        super().__init__(period)
        self.steps: list[float] = []
        self.third = threading.Event()
        self.fail_at = fail_at
        self.stopped = 0

    def step(self) -> None:
        self.steps.append(self.ctx.clock.now())
        if len(self.steps) == self.fail_at:
            raise BackendError("the backend broke in step")
        if len(self.steps) == 3:
            self.third.set()

    def on_stop(self) -> None:
        self.stopped += 1


def test_loop_steps_on_the_context_clock_until_stopped(cluster: FakeCluster) -> None:
    records = Records(cluster.clock)
    healer = _Counting(period=0.25)
    healer.start(_ctx(cluster, records, []))
    assert healer.third.wait(10), "the healer thread never stepped three times"
    healer.stop()
    healer.stop()  # idempotent
    assert healer.stopped == 1
    gaps = [b - a for a, b in zip(healer.steps, healer.steps[1:], strict=False)]
    assert gaps and all(g == pytest.approx(0.25) for g in gaps[:2])
    assert records.items == []


def test_exception_in_loop_is_recorded_and_raised_from_stop(cluster: FakeCluster) -> None:
    records = Records(cluster.clock)
    healer = _Counting(period=0.1, fail_at=1)
    healer.start(_ctx(cluster, records, []))
    with pytest.raises(BackendError, match="broke in step"):
        healer.stop()
    assert healer.stopped == 1  # on_stop still undid what on_start did
    assert records.messages() == ["healer failed: BackendError('the backend broke in step')"]
    healer.stop()  # second stop: no-op, raises nothing


def test_watchdog_backend_failure_surfaces_and_still_restores(cluster: FakeCluster) -> None:
    records = Records(cluster.clock)
    cluster.fail_reads_after = 1  # the baseline read works, the loop's first read fails
    healer = Watchdog(period=0.1)
    healer.start(_ctx(cluster, records, ["web"]))
    with pytest.raises(BackendError, match="state store went away"):
        healer.stop()
    assert cluster.healing is False
    assert records.items[0][1] == "watchdog"


def test_start_twice_is_refused(cluster: FakeCluster) -> None:
    healer = _Counting(period=0.1)
    healer.prepare(_ctx(cluster, Records(cluster.clock), []))
    with pytest.raises(HarnessError, match="started twice"):
        healer.prepare(_ctx(cluster, Records(cluster.clock), []))
    _Counting(period=0.1).stop()  # stop before start: nothing to do
