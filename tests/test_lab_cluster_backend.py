"""The lab's backend with its real cluster up routes pods to the kube side, VMIs to the lab.

Both halves are ``tests.fakes.FakeBackend``s here (state in memory, fake clock):
what is tested is which half each call reaches and how the two views are
joined; the halves themselves are tested against the real cluster
(tests/test_lab_kube_cluster.py, tests/test_lab_cluster_real.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from cluster.api import VolumeFailure, WorkloadKind
from cluster.lab_cluster import LabClusterBackend
from core.clock import FakeClock
from core.errors import BackendError
from tests.fakes import FakeBackend


def _backend() -> tuple[LabClusterBackend, FakeBackend, FakeBackend, list[str]]:
    clock = FakeClock()
    lab, kube = FakeBackend(clock=clock), FakeBackend(clock=clock)
    switched: list[str] = []

    def reload() -> Any:
        fresh = FakeBackend(clock=clock)
        fresh.profile = switched[-1]
        return fresh

    b = LabClusterBackend(lab, kube, reload_kube=reload, switch_cluster=switched.append)  # type: ignore[arg-type]
    return b, lab, kube, switched


def test_pods_go_to_the_cluster_and_vmis_to_the_lab() -> None:
    b, lab, kube, _ = _backend()
    b.create_workload("web", WorkloadKind.POD, "node1")
    b.create_workload("vm", WorkloadKind.VMI, "node2")
    assert [w.name for w in kube.workloads()] == ["web"]
    assert [w.name for w in lab.workloads()] == ["vm"]
    assert sorted(w.name for w in b.workloads()) == ["vm", "web"]
    assert b.workload("web").node == "node1" and b.workload("vm").node == "node2"

    b.kill_main_process("web")
    b.kill_main_process("vm")
    assert [c for c in kube.calls if c.startswith("kill")] == ["kill_main_process(web)"]
    assert [c for c in lab.calls if c.startswith("kill")] == ["kill_main_process(vm)"]
    with pytest.raises(BackendError, match="only a VMI can be live-migrated"):
        b.migrate("web")


def test_node_acts_reach_the_sides_that_must_see_them() -> None:
    b, lab, kube, _ = _backend()
    b.cordon("node1")
    assert not lab.node("node1").schedulable and not kube.node("node1").schedulable
    b.uncordon("node1")
    assert lab.node("node1").schedulable and kube.node("node1").schedulable
    b.fence("node2")
    assert lab.node("node2").fenced and kube.node("node2").fenced
    b.unfence("node2")
    assert not lab.node("node2").fenced and not kube.node("node2").fenced

    # The power is the lab's; the node as read is the API server's, with the
    # lab's word on the power.
    b.power_off("node3")
    assert not lab.node("node3").powered and kube.node("node3").powered
    assert not b.node("node3").powered
    assert {n.name: n.powered for n in b.nodes()}["node3"] is False


def test_pod_volume_faults_are_refused_not_faked() -> None:
    b, _, _, _ = _backend()
    b.create_workload("web", WorkloadKind.POD, "node1")
    with pytest.raises(BackendError, match="no volume the lab can fail"):
        b.fail_volume("web", VolumeFailure.HANG)
    b.repair_volume("web", VolumeFailure.HANG)  # a revert of nothing is a no-op


def test_events_of_both_sides_in_time_order() -> None:
    b, lab, kube, _ = _backend()
    clock = b.clock
    assert isinstance(clock, FakeClock)
    b.power_off("node1")  # a lab event
    clock.advance(1.0)
    kube.power_off("node2")  # stands for an event of the API server
    clock.advance(1.0)
    lab.power_off("node3")
    got = [e.name for e in b.events(since=-1.0)]
    assert got == ["node1", "node2", "node3"]


def test_profile_switch_restarts_the_cluster_only_on_change() -> None:
    b, lab, kube, switched = _backend()
    kube.profile = "fast"
    b.set_profile("fast")
    assert switched == [] and lab.profile == "fast"
    b.set_profile("kubernetes-defaults")
    assert switched == ["kubernetes-defaults"]
    assert lab.profile == "kubernetes-defaults" and b.kube is not kube
    assert b.kube.profile == "kubernetes-defaults"
