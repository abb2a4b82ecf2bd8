"""``KubeFaults`` partitions: through a node driver when it has them, else as before.

A power driver that is also a ``cluster.kube.power.PartitionDriver`` cuts nodes
and pod addresses itself (the lab's: nft in the node's netns); one that is not
keeps the node pod (node partition) and the NetworkPolicy (workload
partition). Run against the real kube-apiserver of tests/real_apiserver.py
(Nodes, Pods with their IPs and a VMI on KubeVirt's CRDs made and stood up by
the ``Cluster`` helper) with a hand-written driver that keeps its cuts as
state, so the tests check what is cut, not which calls were made: heals twice
(a journal replay), a heal by a fresh backend (the harness crashed between cut
and heal), a pod that moved between cut and heal, a workload that is gone,
dry-run (the audit log shows the harness only read). The cut records, the
NetworkPolicy and the node pod are the objects the API server stored.

No ReplicaSet controller or scheduler runs there: where a pod "moves", the test
deletes it and creates its replacement on another node by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from real_apiserver import (  # noqa: F401
    NS,
    RUNNER,
    Cluster,
    RealApiserver,
    cluster,
    kubevirt_crds,
    not_nodes,
    real_apiserver,
)

from cluster.kube.backend import KubeBackend
from cluster.kube.power import KindDriver, LibvirtDriver, PartitionDriver, PowerDriver
from cluster.lab.power_driver import LabPowerDriver
from core.errors import BackendError

READS = {"get", "list", "watch"}


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


@dataclass
class World:
    """What each test starts from: target nodes w1, w2, a tainted control-plane
    node, workload ``web`` (pod ``web_pod`` on w1 at 198.18.50.1) and ``solo``
    (a bare pod on w1 at 198.18.50.2). Names carry the test's suffix."""

    rs: RealApiserver
    c: Cluster
    w1: str
    w2: str
    cp: str
    web: str
    web_pod: str
    solo: str

    def backend(self, power: PowerDriver, dry_run: bool = False) -> KubeBackend:
        # As the harness's own user: its requests are its own in the audit log.
        cfg = self.rs.config(RUNNER, power_driver="fake")
        return KubeBackend(cfg, power=power, dry_run=dry_run, echo=lambda m: None)

    def node_pod(self, node: str) -> str:
        return f"rto-node-partition-{node}"

    def policy(self, workload: str) -> str:
        return f"rto-partition-{workload}"

    def record(self, workload: str) -> str:
        return f"rto-cut-{workload}"


@pytest.fixture
def world(real_apiserver: RealApiserver, cluster: Cluster) -> Iterator[World]:  # noqa: F811
    c = cluster
    w1, w2 = c.node("w1"), c.node("w2")
    cp = c.node("cp", labels={"node-role.kubernetes.io/control-plane": ""})
    taint = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
    c.core.patch_node(cp, {"spec": {"taints": [taint]}})
    web, solo = c.name("web"), c.name("solo")
    web_pod = c.pod("web-a1", w1, web, ip="198.18.50.1")
    c.pod("solo", w1, solo, ip="198.18.50.2")
    w = World(real_apiserver, c, w1, w2, cp, web, web_pod, solo)
    try:
        yield w
    finally:
        for name in (web, solo, c.name("vm1")):  # a failed test's cut records
            c.core.delete_collection_namespaced_config_map(
                NS, field_selector=f"metadata.name={w.record(name)}"
            )


def test_which_drivers_can_partition() -> None:
    assert isinstance(FakeNodeDriver(), PartitionDriver)
    assert isinstance(LabPowerDriver(), PartitionDriver)
    assert not isinstance(PowerOnly(), PartitionDriver)
    assert not isinstance(KindDriver(), PartitionDriver)
    assert not isinstance(LibvirtDriver(), PartitionDriver)


def test_node_partition_through_the_driver(world: World) -> None:
    driver = FakeNodeDriver()
    b = world.backend(driver)
    b.partition_node(world.w1)
    assert driver.cut_nodes == {world.w1}
    # No node pod: the cut-off node need not hear a heal.
    assert world.c.get("pods", world.node_pod(world.w1)) is None
    b.heal_node_partition(world.w1)
    b.heal_node_partition(world.w1)  # idempotent (journal replay)
    assert driver.cut_nodes == set()
    world.backend(driver).heal_node_partition(world.w1)  # a replay by a fresh harness
    assert driver.cut_nodes == set()


def test_node_partition_refuses_a_node_that_is_not_a_target(world: World) -> None:
    driver = FakeNodeDriver()
    b = world.backend(driver)
    with pytest.raises(BackendError, match="not a target"):
        b.partition_node(world.cp)
    with pytest.raises(BackendError, match="not a target"):
        b.heal_node_partition(world.cp)
    assert driver.cut_nodes == set()


def test_workload_partition_cuts_the_pod_address_on_its_node(world: World) -> None:
    driver = FakeNodeDriver()
    b = world.backend(driver)
    b.partition_workload(world.web)
    assert driver.cut_pods == {(world.w1, "198.18.50.1")}
    assert world.c.get("networkpolicies", world.policy(world.web)) is None
    b.heal_workload_partition(world.web)
    b.heal_workload_partition(world.web)  # idempotent (journal replay)
    assert driver.cut_pods == set()


def test_vmi_workload_partition_cuts_the_vmi_address(
    world: World,
    kubevirt_crds: list[str],  # noqa: F811
) -> None:
    vm1 = world.c.name("vm1")
    world.c.vmi(vm1, world.w2, "198.18.60.1")  # virt-handler's report of its guest
    driver = FakeNodeDriver()
    b = world.backend(driver)
    b.partition_workload(vm1)
    assert driver.cut_pods == {(world.w2, "198.18.60.1")}
    b.heal_workload_partition(vm1)
    assert driver.cut_pods == set()


def test_heal_after_a_crash_heals_the_current_address(world: World) -> None:
    driver = FakeNodeDriver()
    world.backend(driver).partition_workload(world.web)
    # The harness died; `rto revert` replays the heal from a new process.
    world.backend(driver).heal_workload_partition(world.web)
    assert driver.cut_pods == set()


def move_web(world: World) -> None:
    """Evicted meanwhile (a healer): its pod is gone and a new one runs on w2.
    The new pod is made here, as its ReplicaSet and the scheduler would (neither
    runs on this control plane), and stood up at a new address."""
    world.c.delete_pod(world.web_pod)
    world.c.pod("web-b2", world.w2, world.web, ip="198.18.51.7")


def test_heal_follows_the_cut_when_the_pod_moved(world: World) -> None:
    driver = FakeNodeDriver()
    b = world.backend(driver)
    b.partition_workload(world.web)
    move_web(world)
    assert b.workload(world.web).node == world.w2
    b.heal_workload_partition(world.web)
    # The old address is healed where it was cut; the new one (never cut) is
    # healed too, which a driver's idempotent heal takes as nothing to do.
    assert driver.cut_pods == set()
    assert driver.heals == [(world.w1, "198.18.50.1"), (world.w2, "198.18.51.7")]


def test_heal_of_a_workload_that_is_gone_heals_its_recorded_cut(world: World) -> None:
    driver = FakeNodeDriver()
    world.backend(driver).partition_workload(world.solo)
    (cut,) = driver.cut_pods
    world.c.delete_pod(world.c.name("solo"))  # a bare pod: nothing brings it back
    world.backend(driver).heal_workload_partition(world.solo)  # from the record alone
    assert driver.heals == [cut] and driver.cut_pods == set()
    assert world.c.get("configmaps", world.record(world.solo)) is None
    world.backend(driver).heal_workload_partition(world.solo)  # nothing known: nothing done
    assert driver.heals == [cut]


def test_heal_after_a_crash_and_a_move_heals_where_it_was_cut(world: World) -> None:
    """The harness died after the cut, then the pod moved: `rto revert` in a new
    process still heals the old address, which only the cluster's record knows."""
    driver = FakeNodeDriver()
    world.backend(driver).partition_workload(world.web)
    record = world.c.get("configmaps", world.record(world.web))
    assert record is not None
    assert record["metadata"]["labels"]["rto.harness/workload"] == world.web
    move_web(world)
    world.backend(driver).heal_workload_partition(world.web)
    assert (world.w1, "198.18.50.1") in driver.heals and driver.cut_pods == set()
    assert world.c.get("configmaps", world.record(world.web)) is None


def test_partition_of_a_pod_without_an_address_raises(world: World) -> None:
    # Running, but no IP reported yet (the kubelet has not written one).
    bare = world.c.name("bare")
    world.c.pod("bare-a1", world.w1, bare)
    driver = FakeNodeDriver()
    with pytest.raises(BackendError, match="no address yet"):
        world.backend(driver).partition_workload(bare)
    assert driver.cut_pods == set()
    assert world.c.get("configmaps", world.record(bare)) is None


def test_partition_of_an_unknown_workload_raises(world: World) -> None:
    with pytest.raises(BackendError, match="no target workload"):
        world.backend(FakeNodeDriver()).partition_workload(world.c.name("nope"))


def test_dry_run_plans_the_driver_cuts(world: World) -> None:
    driver = FakeNodeDriver()
    before, mark = world.c.versions(), world.rs.audit_mark()
    b = world.backend(driver, dry_run=True)
    w1, web = world.w1, world.web
    b.partition_node(w1)
    b.partition_workload(web)
    b.heal_workload_partition(web)
    b.heal_node_partition(w1)
    assert b.plan == [
        f"cut node {w1} off the network (fake driver)",
        f"cut {web} (198.18.50.1) off the network on {w1} (fake driver)",
        f"heal the network cut of {web} (198.18.50.1) on {w1} (fake driver)",
        f"heal the network cut of node {w1} (fake driver)",
    ]
    assert driver.cut_nodes == set() and driver.cut_pods == set() and driver.heals == []
    # Only reads reached the API server, and no object changed.
    asked = world.rs.audit(RUNNER, mark)
    assert asked and {e["verb"] for e in asked} <= READS
    # Nodes left out: the node lifecycle controller writes them on its own.
    assert not_nodes(world.c.versions()) == not_nodes(before)


def test_a_driver_without_partitions_keeps_the_policy_and_the_node_pod(world: World) -> None:
    b = world.backend(PowerOnly())
    b.partition_workload(world.web)
    pol = world.c.get("networkpolicies", world.policy(world.web))
    assert pol is not None
    assert pol["spec"]["podSelector"]["matchLabels"] == {"rto.harness/workload": world.web}
    b.heal_workload_partition(world.web)
    assert world.c.get("networkpolicies", world.policy(world.web)) is None
    cut = world.node_pod(world.w1)
    world.c.pods.append(cut)
    b.partition_node(world.w1)
    pod = world.c.get("pods", cut)
    assert pod is not None and "iptables" in pod["spec"]["containers"][0]["command"][-1]
    b.heal_node_partition(world.w1)
    # Heal deletes it gracefully: with no kubelet to confirm, it stays Terminating.
    gone = world.c.get("pods", cut)
    assert gone is None or gone["metadata"].get("deletionTimestamp")
