"""``KubeFaults`` partitions: through a node driver when it has them, else as before.

A power driver that is also a ``cluster.kube.power.PartitionDriver`` cuts nodes
and pod addresses itself (the lab's: nft in the node's netns); one that is not
keeps the node pod (node partition) and the NetworkPolicy (workload
partition). Run against the stateful API emulator (tests/kube_emulator.py)
with a hand-written driver that keeps its cuts as state, so the tests check
what is cut, not which calls were made: heals twice (a journal replay), a heal
by a fresh backend (the harness crashed between cut and heal), a pod that moved
between cut and heal, a workload that is gone, dry-run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_emulator import KubeEmulator, emulator, eventually, write_kubeconfig

from cluster.kube.backend import KubeBackend
from cluster.kube.config import KubeConfig
from cluster.kube.power import KindDriver, LibvirtDriver, PartitionDriver, PowerDriver
from cluster.lab.power_driver import LabPowerDriver
from core.errors import BackendError

NS = "rto"
TARGET = {"rto.harness/target": "true"}
POLICY = ("networking.k8s.io", "networkpolicies", NS, "rto-partition-web")
NODE_POD = ("", "pods", NS, "rto-node-partition-w1")


def wl(name: str) -> dict[str, str]:
    return {**TARGET, "rto.harness/workload": name}


class PowerOnly:
    """A power driver with no partition capability (IPMI, Redfish...)."""

    def __init__(self) -> None:
        self.off: set[str] = set()

    def power_off(self, node: str) -> None:
        self.off.add(node)

    def power_on(self, node: str) -> None:
        self.off.discard(node)


class FakeNodeDriver(PowerOnly):
    """A node driver that keeps its cuts as state; heals of absent cuts do nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.cut_nodes: set[str] = set()
        self.cut_pods: set[tuple[str, str]] = set()
        self.heals: list[tuple[str, str]] = []  # pod heals asked, in order

    def partition_node(self, node: str) -> None:
        self.cut_nodes.add(node)

    def heal_node_partition(self, node: str) -> None:
        self.cut_nodes.discard(node)

    def partition_pod(self, node: str, pod_ip: str) -> None:
        self.cut_pods.add((node, pod_ip))

    def heal_pod_partition(self, node: str, pod_ip: str) -> None:
        self.heals.append((node, pod_ip))
        self.cut_pods.discard((node, pod_ip))


@pytest.fixture
def emu() -> Iterator[KubeEmulator]:
    with emulator() as e:
        for n in ("w1", "w2"):
            e.add_node(n, TARGET)
        cp = e.add_node("cp", {"node-role.kubernetes.io/control-plane": ""})
        cp["spec"]["taints"] = [
            {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
        ]
        e.put("", "nodes", cp)
        e.add_pod(NS, "web-a1", "w1", wl("web"), owner="web-rs")  # its ReplicaSet replaces it
        e.add_pod(NS, "solo", "w1", wl("solo"))  # a bare pod: gone once deleted
        e.add_vmi(NS, "vm1", "w2", wl("vm1"))
        yield e


def make(
    emu: KubeEmulator, tmp_path: Path, power: PowerDriver, dry_run: bool = False
) -> KubeBackend:
    cfg_path = write_kubeconfig(str(tmp_path / "kubeconfig"), {"emu": emu.url}, "emu")
    cfg = KubeConfig(contexts=("emu",), kubeconfig=cfg_path, namespaces=(NS,), power_driver="fake")
    return KubeBackend(cfg, power=power, dry_run=dry_run, sleep=lambda s: None, echo=lambda m: None)


def test_which_drivers_can_partition() -> None:
    assert isinstance(FakeNodeDriver(), PartitionDriver)
    assert isinstance(LabPowerDriver(), PartitionDriver)
    assert not isinstance(PowerOnly(), PartitionDriver)
    assert not isinstance(KindDriver(), PartitionDriver)
    assert not isinstance(LibvirtDriver(), PartitionDriver)


def test_node_partition_through_the_driver(emu: KubeEmulator, tmp_path: Path) -> None:
    driver = FakeNodeDriver()
    b = make(emu, tmp_path, driver)
    b.partition_node("w1")
    assert driver.cut_nodes == {"w1"}
    assert NODE_POD not in emu.objects  # no node pod: the cut-off node need not hear a heal
    b.heal_node_partition("w1")
    b.heal_node_partition("w1")  # idempotent (journal replay)
    assert driver.cut_nodes == set()
    make(emu, tmp_path, driver).heal_node_partition("w1")  # a replay by a fresh harness
    assert driver.cut_nodes == set()


def test_node_partition_refuses_a_node_that_is_not_a_target(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    driver = FakeNodeDriver()
    b = make(emu, tmp_path, driver)
    with pytest.raises(BackendError, match="not a target"):
        b.partition_node("cp")
    with pytest.raises(BackendError, match="not a target"):
        b.heal_node_partition("cp")
    assert driver.cut_nodes == set()


def test_workload_partition_cuts_the_pod_address_on_its_node(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    driver = FakeNodeDriver()
    b = make(emu, tmp_path, driver)
    b.partition_workload("web")
    assert driver.cut_pods == {("w1", "198.18.50.1")}
    assert POLICY not in emu.objects
    b.heal_workload_partition("web")
    b.heal_workload_partition("web")  # idempotent (journal replay)
    assert driver.cut_pods == set()


def test_vmi_workload_partition_cuts_the_vmi_address(emu: KubeEmulator, tmp_path: Path) -> None:
    driver = FakeNodeDriver()
    b = make(emu, tmp_path, driver)
    b.partition_workload("vm1")
    assert driver.cut_pods == {("w2", "198.18.60.1")}
    b.heal_workload_partition("vm1")
    assert driver.cut_pods == set()


def test_heal_after_a_crash_heals_the_current_address(emu: KubeEmulator, tmp_path: Path) -> None:
    driver = FakeNodeDriver()
    make(emu, tmp_path, driver).partition_workload("web")
    # The harness died; `rto revert` replays the heal from a new process.
    make(emu, tmp_path, driver).heal_workload_partition("web")
    assert driver.cut_pods == set()


def test_heal_follows_the_cut_when_the_pod_moved(emu: KubeEmulator, tmp_path: Path) -> None:
    driver = FakeNodeDriver()
    b = make(emu, tmp_path, driver)
    b.partition_workload("web")
    # Evicted meanwhile (a healer): the ReplicaSet's new pod runs on w2, elsewhere.
    emu.remove("", "pods", NS, "web-a1")
    new = eventually(
        lambda: [p for p in emu.items("", "pods") if p["metadata"]["name"].startswith("web-rs-")]
    )
    assert new[0]["spec"]["nodeName"] == "w2"
    emu.set_pod_ready(NS, new[0]["metadata"]["name"], True, pod_ip="198.18.51.7")
    b.heal_workload_partition("web")
    # The old address is healed where it was cut; the new one (never cut) is
    # healed too, which a driver's idempotent heal takes as nothing to do.
    assert driver.cut_pods == set()
    assert driver.heals == [("w1", "198.18.50.1"), ("w2", "198.18.51.7")]


def test_heal_of_a_workload_that_is_gone_heals_its_recorded_cut(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    driver = FakeNodeDriver()
    make(emu, tmp_path, driver).partition_workload("solo")
    (cut,) = driver.cut_pods
    emu.remove("", "pods", NS, "solo")
    make(emu, tmp_path, driver).heal_workload_partition("solo")  # from the record alone
    assert driver.heals == [cut] and driver.cut_pods == set()
    assert ("", "configmaps", NS, "rto-cut-solo") not in emu.objects
    make(emu, tmp_path, driver).heal_workload_partition("solo")  # nothing known: nothing done
    assert driver.heals == [cut]


def test_heal_after_a_crash_and_a_move_heals_where_it_was_cut(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    """The harness died after the cut, then the pod moved: `rto revert` in a new
    process still heals the old address, which only the cluster's record knows."""
    driver = FakeNodeDriver()
    make(emu, tmp_path, driver).partition_workload("web")
    record = emu.objects[("", "configmaps", NS, "rto-cut-web")]
    assert record["metadata"]["labels"]["rto.harness/workload"] == "web"
    emu.remove("", "pods", NS, "web-a1")
    new = eventually(
        lambda: [p for p in emu.items("", "pods") if p["metadata"]["name"].startswith("web-rs-")]
    )
    emu.set_pod_ready(NS, new[0]["metadata"]["name"], True, pod_ip="198.18.51.7")
    make(emu, tmp_path, driver).heal_workload_partition("web")
    assert ("w1", "198.18.50.1") in driver.heals and driver.cut_pods == set()
    assert ("", "configmaps", NS, "rto-cut-web") not in emu.objects


def test_partition_of_a_pod_without_an_address_raises(emu: KubeEmulator, tmp_path: Path) -> None:
    pod = emu.objects[("", "pods", NS, "web-a1")]
    del pod["status"]["podIP"]
    emu.put("", "pods", pod)
    driver = FakeNodeDriver()
    with pytest.raises(BackendError, match="no address yet"):
        make(emu, tmp_path, driver).partition_workload("web")
    assert driver.cut_pods == set()


def test_partition_of_an_unknown_workload_raises(emu: KubeEmulator, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="no target workload"):
        make(emu, tmp_path, FakeNodeDriver()).partition_workload("nope")


def test_dry_run_plans_the_driver_cuts(emu: KubeEmulator, tmp_path: Path) -> None:
    driver = FakeNodeDriver()
    b = make(emu, tmp_path, driver, dry_run=True)
    b.partition_node("w1")
    b.partition_workload("web")
    b.heal_workload_partition("web")
    b.heal_node_partition("w1")
    assert b.plan == [
        "cut node w1 off the network (fake driver)",
        "cut web (198.18.50.1) off the network on w1 (fake driver)",
        "heal the network cut of web (198.18.50.1) on w1 (fake driver)",
        "heal the network cut of node w1 (fake driver)",
    ]
    assert driver.cut_nodes == set() and driver.cut_pods == set() and driver.heals == []
    assert not [m for m, _ in emu.requests if m != "GET"]


def test_a_driver_without_partitions_keeps_the_policy_and_the_node_pod(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    b = make(emu, tmp_path, PowerOnly())
    b.partition_workload("web")
    assert POLICY in emu.objects
    b.heal_workload_partition("web")
    assert POLICY not in emu.objects
    b.partition_node("w1")
    assert "iptables" in emu.objects[NODE_POD]["spec"]["containers"][0]["command"][-1]
    b.heal_node_partition("w1")
    assert NODE_POD not in emu.objects
