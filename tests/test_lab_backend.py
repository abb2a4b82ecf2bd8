"""The real lab end to end: namespaces, runc pods, control plane, agents.

Each module run brings up its own lab under private names (state/run dirs,
netns prefix ``rtoa2``, nodes ``a2n1..3``) so it never touches a lab a user
(or another test) has up on the same machine, and takes it down in finally.
Timings are the ``fast`` profile's; measured figures are printed (``-s``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from private_lab import PrivateLab

from cluster.api import Backend, Phase, VolumeFailure, WorkloadKind
from cluster.lab import lifecycle
from cluster.lab.backend import LabBackend
from cluster.profiles import get_profile
from core.errors import BackendError, SpecError

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB = PrivateLab("a2test", "rtoa2", "a2n")
PREFIX = LAB.prefix
NODES = {LAB.node(i) for i in (1, 2, 3)}
FAST = get_profile("fast")


@pytest.fixture(scope="module")
def lab() -> Iterator[LabBackend]:
    with LAB.up(3) as backend:
        yield backend


def _other(lab: LabBackend, node: str) -> str:
    return next(n.name for n in lab.nodes() if n.name != node)


def test_lab_up_every_node_ready(lab: LabBackend) -> None:
    assert isinstance(lab, Backend)
    nodes = lab.nodes()
    assert {n.name for n in nodes} == NODES
    assert all(n.ready and n.powered and n.schedulable for n in nodes)
    assert all(n.heartbeat_age is not None and n.heartbeat_age < 1.0 for n in nodes)
    status = lifecycle.lab_status()
    assert status["up"] and status["profile"] == "fast"
    assert set(status["netns"]) >= {f"{PREFIX}-hub", *(f"{PREFIX}-{n}" for n in NODES)}


def test_pod_runs_and_answers(lab: LabBackend) -> None:
    lab.create_workload("web1", WorkloadKind.POD)
    w = lab.wait_ready("web1", timeout=20)
    assert w.node in NODES and w.instance
    code, body = lab.probe("web1")
    assert code == 200 and body.split() == ["web1", w.instance]
    target = lab.probe_target("web1")
    assert target is not None and target.netns == f"{PREFIX}-hub" and target.port == 80
    reasons = [e.reason for e in lab.events(0.0) if e.name == "web1"]
    assert reasons[:2] == ["Created", "Scheduled"] and "Started" in reasons
    with pytest.raises(BackendError, match="without VMs"):
        lab.create_workload("vm1", WorkloadKind.VMI)


def test_kill_main_process_restarts_in_place(lab: LabBackend) -> None:
    before = lab.wait_ready("web1", timeout=20)
    lab.kill_main_process("web1")
    after = lab.wait_until(
        lambda: w if (w := lab.workload("web1")).instance not in (None, before.instance) else None,
        10,
        "a new instance of web1",
    )
    assert after.node == before.node and after.restarts == before.restarts + 1
    lab.wait_ready("web1", timeout=10)


def test_drain_respects_budget_then_evict_moves(lab: LabBackend) -> None:
    w = lab.wait_ready("web1", timeout=20)
    assert w.node is not None
    lab.cordon(w.node)
    try:
        lab.set_min_available("web1", 1)
        with pytest.raises(BackendError, match="min_available=1"):
            lab.evict("web1")
        assert lab.workload("web1").node == w.node
        lab.set_min_available("web1", 0)
        t0 = time.monotonic()
        lab.evict("web1")
        moved = lab.wait_ready("web1", timeout=20)
        print(f"\nFIGURE evict -> ready elsewhere: {time.monotonic() - t0:.2f} s")
        assert moved.node not in (None, w.node) and moved.instance != w.instance
        assert not lab.node(w.node).schedulable
    finally:
        lab.uncordon(w.node)


def test_power_off_not_ready_after_grace_evicted_after_toleration(lab: LabBackend) -> None:
    w = lab.wait_ready("web1", timeout=20)
    dead = w.node
    assert dead is not None
    t0 = lab.clock.now()
    lab.power_off(dead)
    try:
        assert not lab.node(dead).powered
        lab.wait_until(lambda: not lab.node(dead).ready, 5, f"{dead} NotReady")
        not_ready = lab.clock.now() - t0
        # Still bound to the dead node until the toleration has passed.
        assert lab.workload("web1").node == dead
        moved = lab.wait_until(
            lambda: x if (x := lab.workload("web1")).node not in (None, dead) else None,
            FAST.grace_period + FAST.toleration + 5,
            "web1 rescheduled off the dead node",
        )
        evicted = lab.clock.now() - t0
        lab.wait_ready("web1", timeout=20)
        running = lab.clock.now() - t0
        print(
            f"\nFIGURE power_off -> NotReady {not_ready:.2f} s, evicted {evicted:.2f} s, "
            f"running+answering elsewhere {running:.2f} s (fast, no healer)"
        )
        # Grace counts from the last heartbeat, up to one interval before the kill.
        early = FAST.heartbeat_interval
        assert FAST.grace_period - early <= not_ready <= FAST.grace_period + 1.5
        assert FAST.grace_period + FAST.toleration - early <= evicted
        assert moved.node != dead
        events = [e for e in lab.events(0.0) if e.reason == "TaintManagerEviction"]
        assert events and events[-1].name == "web1"
    finally:
        lab.power_on(dead)
    lab.wait_until(lambda: lab.node(dead).ready, 10, f"{dead} Ready again after power_on")
    assert lifecycle.agent_alive(dead)


def test_fence_and_reschedule_move_at_once(lab: LabBackend) -> None:
    w = lab.wait_ready("web1", timeout=20)
    node = w.node
    assert node is not None
    with pytest.raises(BackendError, match="fence the node first"):
        lab.reschedule("web1")
    lab.fence(node)
    try:
        t0 = time.monotonic()
        lab.reschedule("web1")
        moved = lab.wait_until(
            lambda: x if (x := lab.workload("web1")).node not in (None, node) else None,
            1.0,
            "web1 scheduled elsewhere",
        )
        scheduled = time.monotonic() - t0
        lab.wait_ready("web1", timeout=20)
        print(
            f"\nFIGURE fence+reschedule -> scheduled {scheduled:.2f} s, "
            f"ready {time.monotonic() - t0:.2f} s"
        )
        assert moved.node != node
        # The fenced node's agent must drop its copy (no split brain).
        lab.wait_until(lambda: lab.workload("web1").phase is Phase.RUNNING, 5, "web1 running")
    finally:
        lab.unfence(node)


def test_partition_node_goes_not_ready_and_heals(lab: LabBackend) -> None:
    w = lab.wait_ready("web1", timeout=20)
    assert w.node is not None
    lab.partition_node(w.node)
    try:
        lab.partition_node(w.node)  # idempotent
        lab.wait_until(lambda: not lab.node(w.node or "").ready, 3, "partitioned node NotReady")
        ready = lab.workload("web1").condition("Ready")
        assert ready is not None and not ready.status
    finally:
        lab.heal_node_partition(w.node)
    lab.wait_until(lambda: lab.node(w.node or "").ready, 3, "healed node Ready")
    assert lab.wait_ready("web1", timeout=10).instance == w.instance  # never restarted


def test_volume_eio_answers_503_and_repair_restarts(lab: LabBackend) -> None:
    w = lab.wait_ready("web1", timeout=20)
    lab.fail_volume("web1", VolumeFailure.EIO)
    try:
        code, _ = lab.probe("web1")
        assert code == 503
    finally:
        lab.repair_volume("web1", VolumeFailure.EIO)
    back = lab.wait_ready("web1", timeout=15)
    assert back.instance != w.instance and back.node == w.node
    lab.repair_volume("web1", VolumeFailure.EIO)  # healthy: a no-op
    assert lab.wait_ready("web1", timeout=5).instance == back.instance


def test_set_profile_reaches_the_control_plane(lab: LabBackend) -> None:
    with pytest.raises(SpecError):
        lifecycle.set_profile("nope")
    lifecycle.set_profile("kubernetes-defaults")
    try:
        assert lifecycle.lab_status()["profile"] == "kubernetes-defaults"
    finally:
        lifecycle.set_profile("fast")


def test_delete_workload_removes_its_volume(lab: LabBackend) -> None:
    lab.create_workload("tmp1", WorkloadKind.POD)
    lab.wait_ready("tmp1", timeout=20)
    lab.delete_workload("tmp1")
    assert "tmp1" not in {w.name for w in lab.workloads()}
    assert not (LAB.state_dir / "volumes" / "tmp1.img").exists()


def test_lab_down_leaves_nothing(lab: LabBackend) -> None:
    # Runs last in this module: the fixture's own lab_down then tests the
    # "already down" path.
    assert LAB.our_objects(), "the lab should have objects before lab_down"
    t0 = time.monotonic()
    lifecycle.lab_down()
    print(f"\nFIGURE lab_down (3 nodes, pods running): {time.monotonic() - t0:.2f} s")
    assert LAB.our_objects() == {}
    assert lifecycle.leftovers(NODES) == {}
    assert not lifecycle.lab_status()["up"]


def test_lab_down_after_everything_was_sigkilled() -> None:
    mp = pytest.MonkeyPatch()
    LAB.isolate(mp)
    try:
        lifecycle.lab_up("fast", 1, node_prefix=LAB.node_prefix)
        backend = LabBackend()
        try:
            backend.create_workload("crash1", WorkloadKind.POD)
            backend.wait_ready("crash1", timeout=20)
        finally:
            backend.close()
        # The harness "dies": daemons SIGKILLed, containers orphaned.
        for pid in lifecycle.lab_processes():
            if "cluster.lab" in " ".join(lifecycle._cmdline(pid)):
                os.kill(pid, signal.SIGKILL)
        assert LAB.our_objects()
        lifecycle.lab_down()
        assert LAB.our_objects() == {}
    finally:
        try:
            lifecycle.lab_down()
        finally:
            mp.undo()
