"""The lab's backend: Kubernetes calls go to the kube side, the machine room to ``LabNodes``.

The kube half is a ``tests.fakes.FakeBackend`` and the lab half a
``FakeLabNodes`` here (state in memory, fake clock): what is tested is which
half each call reaches and how the two views are joined; the halves themselves
are tested against the real cluster (tests/test_lab_kube_cluster.py,
tests/test_lab_cluster_real.py, tests/test_lab_node_driver.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cluster import lab_cluster
from cluster.api import Event, VolumeFailure, WorkloadKind
from cluster.lab import state
from cluster.lab.machines import Machine
from cluster.lab_cluster import LabClusterBackend
from core.clock import FakeClock
from core.errors import BackendError
from tests.fakes import FakeBackend


class FakeLabNodes:
    """``cluster.lab.nodes.LabNodes`` by hand: machines with a power switch,
    settings, and the events a node's libvirtd would send (``heard``)."""

    def __init__(self, clock: FakeClock, vms: bool = True) -> None:
        self.clock = clock
        self.powered = {f"node{i}": True for i in (1, 2, 3)}
        self._vms = vms
        self.profile: str | None = "fast"
        self.restart = True
        self.heard: list[Event] = []
        self.calls: list[str] = []

    def close(self) -> None:
        pass

    def nodes(self) -> list[Machine]:
        return [Machine(n, i, p) for i, (n, p) in enumerate(self.powered.items(), start=1)]

    def node(self, name: str) -> Machine:
        if name not in self.powered:
            raise BackendError(f"no lab node {name!r}")
        return next(m for m in self.nodes() if m.name == name)

    def vms(self) -> bool:
        return self._vms

    def vm_accelerator(self) -> str | None:
        return "tcg" if self._vms else None

    def power_off(self, node: str) -> None:
        self.node(node)
        self.calls.append(f"power_off({node})")
        self.powered[node] = False
        self.heard.append(Event(self.clock.now(), "vmi", f"vmi/on-{node}", "Stopped"))

    def power_on(self, node: str) -> None:
        self.calls.append(f"power_on({node})")
        self.powered[node] = True

    def partition_node(self, node: str) -> None:
        self.calls.append(f"partition_node({node})")

    def heal_node_partition(self, node: str) -> None:
        self.calls.append(f"heal_node_partition({node})")

    def record_profile(self, name: str) -> None:
        self.profile = name

    def restart_healing(self) -> bool:
        return self.restart

    def set_restart_healing(self, enabled: bool) -> None:
        self.restart = enabled

    def events(self, since: float) -> list[Event]:
        return [e for e in self.heard if e.at > since]


class FakeVolumes:
    """``cluster.lab.volumes`` by hand: the state of each pod's volume, no mounts.

    The real volumes are tested on loop devices (tests/test_lab_volumes.py)
    and under real pods (tests/test_lab_pod_volumes.py).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state: dict[str, str] = {}  # pod -> "ok" | "frozen" | "dead"
        self.calls: list[str] = []

    def mountpoint(self, pod: str) -> Path:
        return self.root / pod / "mnt"

    def ensure_volume(self, pod: str) -> Path:
        self.calls.append(f"ensure {pod}")
        self.state.setdefault(pod, "ok")
        return self.mountpoint(pod)

    def freeze(self, pod: str) -> None:
        self.calls.append(f"freeze {pod}")
        self.state[pod] = "frozen"

    def thaw(self, pod: str) -> None:
        if self.state.get(pod) == "frozen":
            self.calls.append(f"thaw {pod}")
            self.state[pod] = "ok"

    def shutdown(self, pod: str) -> None:
        self.calls.append(f"shutdown {pod}")
        self.state[pod] = "dead"

    def is_shut_down(self, pod: str) -> bool:
        return self.state.get(pod) == "dead"

    def repair(self, pod: str) -> None:
        self.calls.append(f"repair {pod}")
        self.state[pod] = "ok"

    def destroy_volume(self, pod: str) -> None:
        self.calls.append(f"destroy {pod}")
        self.state.pop(pod, None)


@pytest.fixture(autouse=True)
def vols(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeVolumes:
    fake = FakeVolumes(tmp_path)
    monkeypatch.setattr(lab_cluster, "volumes", fake)
    # A VMI's data disk PersistentVolume (the real one: tests/test_lab_kubevirt.py).
    monkeypatch.setattr(lab_cluster, "_ensure_data_volume", lambda n: fake.calls.append(f"pv {n}"))
    monkeypatch.setattr(
        lab_cluster, "_remove_data_volume", lambda n: fake.calls.append(f"rm pv {n}")
    )
    # No lab of this machine (a node's mount namespace is looked at before a
    # volume fault): node pid files are looked for here, and not found.
    monkeypatch.setattr(state, "RUN_DIR", tmp_path / "run")
    return fake


def _backend(vms: bool = True) -> tuple[LabClusterBackend, FakeLabNodes, FakeBackend, list[str]]:
    clock = FakeClock()
    lab, kube = FakeLabNodes(clock, vms), FakeBackend(clock=clock)
    switched: list[str] = []

    def reload() -> Any:
        fresh = FakeBackend(clock=clock)
        fresh.profile = switched[-1]
        return fresh

    b = LabClusterBackend(lab, kube, reload_kube=reload, switch_cluster=switched.append)  # type: ignore[arg-type]
    return b, lab, kube, switched


def test_workloads_are_objects_of_the_cluster(vols: FakeVolumes) -> None:
    b, lab, kube, _ = _backend()
    b.create_workload("web", WorkloadKind.POD, "node1")
    b.create_workload("vm", WorkloadKind.VMI, "node2")
    # Each has its lab volume; the VMI's data disk also its PersistentVolume.
    assert vols.calls == ["ensure web", "ensure vm", "pv vm"]
    assert sorted(w.name for w in kube.workloads()) == ["vm", "web"]
    assert sorted(w.name for w in b.workloads()) == ["vm", "web"]
    assert b.workload("web").node == "node1" and b.workload("vm").node == "node2"
    b.kill_main_process("web")
    assert [c for c in kube.calls if c.startswith("kill")] == ["kill_main_process(web)"]
    b.migrate("vm", "node3")
    assert "migrate(vm)" in kube.calls and b.workload("vm").node == "node3"
    assert lab.calls == []  # nothing of it is the machine room's


def test_a_vmi_on_a_lab_without_vms_is_refused_before_anything_is_made() -> None:
    b, _, kube, _ = _backend(vms=False)
    with pytest.raises(BackendError, match="without VMs"):
        b.create_workload("vm", WorkloadKind.VMI, "node1")
    assert kube.workloads() == [] and not any(c.startswith("create") for c in kube.calls)


def test_node_acts_reach_the_sides_that_must_see_them() -> None:
    b, lab, kube, _ = _backend()
    b.cordon("node1")
    assert not kube.node("node1").schedulable
    b.uncordon("node1")
    b.fence("node2")
    assert kube.node("node2").fenced  # the real out-of-service taint
    b.unfence("node2")
    assert not kube.node("node2").fenced
    assert lab.calls == []

    # The power is the lab's; the node as read is the API server's, with the
    # lab's word on the power.
    b.power_off("node3")
    assert lab.calls == ["power_off(node3)"] and kube.node("node3").powered
    assert not b.node("node3").powered
    assert {n.name: n.powered for n in b.nodes()}["node3"] is False
    b.partition_node("node1")
    b.heal_node_partition("node1")
    assert lab.calls[-2:] == ["partition_node(node1)", "heal_node_partition(node1)"]


def test_a_pod_has_the_labs_volume_from_creation_to_deletion(vols: FakeVolumes) -> None:
    b, _, kube, _ = _backend()
    b.create_workload("web", WorkloadKind.POD, "node1")
    assert vols.calls == ["ensure web"]  # before its Deployment: the hostPath must exist
    b.delete_workload("web")
    assert vols.calls[-1] == "destroy web" and "web" not in vols.state
    assert "rm pv web" not in vols.calls  # a pod has no PersistentVolume of the lab's
    assert [w.name for w in kube.workloads()] == []


def test_a_pod_volume_fails_and_is_repaired_on_the_lab(vols: FakeVolumes) -> None:
    b, _, kube, _ = _backend()
    b.create_workload("web", WorkloadKind.POD, "node1")
    b.fail_volume("web", VolumeFailure.HANG)
    assert vols.state["web"] == "frozen"
    b.repair_volume("web", VolumeFailure.HANG)
    b.repair_volume("web", VolumeFailure.HANG)  # a replayed revert
    assert vols.state["web"] == "ok" and vols.calls.count("thaw web") == 1

    b.fail_volume("web", VolumeFailure.EIO)
    b.repair_volume("web", VolumeFailure.EIO)
    # The container still binds the dead mount: restarted once, after the repair.
    assert vols.calls[-2:] == ["shutdown web", "repair web"]
    assert kube.calls.count("kill_main_process(web)") == 1
    b.repair_volume("web", VolumeFailure.EIO)  # a replayed revert: nothing more
    assert vols.calls.count("repair web") == 1
    assert kube.calls.count("kill_main_process(web)") == 1
    assert not any(c.startswith("fail_volume") for c in kube.calls)

    with pytest.raises(BackendError, match="hot-unplug is a VMI disk fault"):
        b.fail_volume("web", VolumeFailure.UNPLUG)
    b.repair_volume("web", VolumeFailure.UNPLUG)  # a revert of nothing is a no-op


def test_a_repair_interrupted_before_the_restart_restarts_on_replay(vols: FakeVolumes) -> None:
    b, _, kube, _ = _backend()
    b.create_workload("web", WorkloadKind.POD, "node1")
    b.fail_volume("web", VolumeFailure.EIO)

    def crash(workload: str) -> None:
        raise KeyboardInterrupt  # the harness dies between the repair and the kill

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kube, "kill_main_process", crash)
        with pytest.raises(KeyboardInterrupt):
            b.repair_volume("web", VolumeFailure.EIO)
    assert vols.state["web"] == "ok"
    b.repair_volume("web", VolumeFailure.EIO)  # the journal's replay
    assert kube.calls.count("kill_main_process(web)") == 1
    assert vols.calls.count("repair web") == 1


def test_events_of_both_sides_in_time_order() -> None:
    b, lab, kube, _ = _backend()
    clock = b.clock
    assert isinstance(clock, FakeClock)
    b.power_off("node1")  # a libvirt event heard by the lab
    clock.advance(1.0)
    kube.power_off("node2")  # stands for an event of the API server
    clock.advance(1.0)
    lab.power_off("node3")
    got = [e.name for e in b.events(since=-1.0)]
    assert got == ["vmi/on-node1", "node2", "vmi/on-node3"]


def test_profile_switch_restarts_the_cluster_only_on_change() -> None:
    b, lab, kube, switched = _backend()
    kube.profile = "fast"
    b.set_profile("fast")
    assert switched == [] and lab.profile == "fast"
    b.set_profile("kubernetes-defaults")
    assert switched == ["kubernetes-defaults"]
    assert lab.profile == "kubernetes-defaults" and b.kube is not kube
    assert b.kube.profile == "kubernetes-defaults"
