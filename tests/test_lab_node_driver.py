"""The lab's node driver cuts real kubelets' pods and nodes off the network.

A private 2-node lab with the real cluster (``lab_up``, fast
profile); the kube backend configured by the file the lab writes, so its
``power_driver: lab`` is found by entry point and, being a ``PartitionDriver``,
does the network-partition fault from outside the nodes (nft in the node's
netns) instead of a node pod or a NetworkPolicy the lab's CNI does not enforce.
A Deployment's pod answers the prober from the hub netns and through the API
server's service proxy; the workload cut silences both while its node stays
Ready; the node cut stops the node's Lease and turns it NotReady by the real
node lifecycle controller; heals (twice, as a journal replay would) bring it
all back and leave no table of ours in any node's nft ruleset.
The tests run in order on one module fixture.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator

import pytest
from lab_node_kit import in_netns
from private_lab import PrivateLab

from chaos.prober import http_probe
from cluster.api import ProbeTarget, WorkloadKind
from cluster.kube.backend import KubeBackend
from cluster.kube.config import load_kube_config
from cluster.kube.power import PartitionDriver
from cluster.lab import net
from cluster.lab.kube import paths
from cluster.lab.power_driver import LabPowerDriver
from core.errors import BackendError, LabError
from core.wait import poll_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB = PrivateLab("kndriver", "rtond", "ndn")
NODES = (LAB.node(1), LAB.node(2))


@pytest.fixture(scope="module")
def kb() -> Iterator[KubeBackend]:
    with LAB.up(2, profile="fast"):
        kb = KubeBackend(load_kube_config(paths.kube_dir() / "rto-kube.yaml"), echo=print)
        try:
            yield kb
        finally:
            try:
                for node in NODES:  # a failed test must not leave the lab cut off
                    LabPowerDriver().heal_node_partition(node)
                    for ip in net.partitioned_ips(node):
                        net.heal_ip_partition(node, ip)
            finally:
                kb.close()


def _ready(kb: KubeBackend) -> bool:
    try:
        ready = kb.workload("web").condition("Ready")
    except BackendError:  # no pod yet: the Deployment controller makes it
        return False
    return ready is not None and ready.status


def _address(kb: KubeBackend) -> tuple[str, str]:
    pod = kb.reader.pod_of("web")
    return pod["spec"]["nodeName"], pod["status"]["podIP"]


def _from_hub(ip: str, timeout: float = 1.0) -> tuple[bool, str]:
    """One probe of the pod's address from the hub netns, as the lab's probers send it."""
    target = ProbeTarget(ip, 8080, "/cgi-bin/healthz", netns=net.HUB_NS)
    good, _, reason = in_netns(
        net.HUB_NS, lambda: asyncio.run(http_probe(target, timeout, expect_name="web"))
    )
    return good, reason


def _through_proxy(kb: KubeBackend, timeout: float = 3.0) -> tuple[bool, str]:
    """One probe through the API server's service proxy (how the kube backend probes
    from outside a cluster network; the lab's own config probes from the hub)."""
    proxied = KubeBackend(kb.client.config.model_copy(update={"probe": "service-proxy"}))
    try:
        target = proxied.probe_target("web")
    finally:
        proxied.close()
    assert target is not None and target.tls is not None and target.netns is None

    async def probe() -> tuple[bool, str]:
        good, _, reason = await http_probe(target, timeout, expect_name="web")
        # The prober's loop lives on; this one ends here: let the TLS close finish first.
        await asyncio.sleep(0.2)
        return good, reason

    return asyncio.run(probe())


def _heartbeat_age(kb: KubeBackend, node: str) -> float:
    age = next(n.heartbeat_age for n in kb.nodes() if n.name == node)
    assert age is not None
    return age


def _node_ready(kb: KubeBackend, node: str) -> bool:
    return next(n.ready for n in kb.nodes() if n.name == node)


def _our_tables(node: str) -> list[str]:
    out = subprocess.run(
        ["ip", "netns", "exec", net.node_ns(node), "nft", "list", "tables"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return [line for line in out.splitlines() if " rto_" in line]


def test_the_lab_driver_refuses_what_is_not_the_labs(kb: KubeBackend) -> None:
    driver = LabPowerDriver()
    assert isinstance(driver, PartitionDriver)
    with pytest.raises(LabError, match="not a lab address"):
        driver.partition_pod(NODES[0], "10.0.0.7")
    with pytest.raises(LabError, match="not an IP address"):
        driver.heal_pod_partition(NODES[0], "198.18.51.7; flush ruleset")
    with pytest.raises(BackendError, match="not a node of the lab"):
        driver.partition_node("elsewhere")
    assert _our_tables(NODES[0]) == []


def test_workload_partition_cuts_the_pod_not_its_node(kb: KubeBackend) -> None:
    kb.create_workload("web", kind=WorkloadKind.POD, node=NODES[0])
    poll_until(lambda: _ready(kb), 90, "web Ready", interval=0.5)
    node, ip = _address(kb)
    assert node == NODES[0] and ip.startswith("198.18.51.")
    poll_until(lambda: _from_hub(ip)[0], 30, f"web answers at {ip} from the hub", interval=0.5)
    assert _through_proxy(kb) == (True, "")

    kb.partition_workload("web")
    assert net.partitioned_ips(node) == [ip]
    assert _from_hub(ip) == (False, "timeout")
    assert not _through_proxy(kb)[0]  # the API server reaches the pod through the node too
    # The node is untouched: its kubelet keeps renewing its Lease (every 0.25 s)
    # and still probes the pod over the node's bridge, so the pod stays Ready.
    assert _heartbeat_age(kb, node) < 2.0 and _node_ready(kb, node)
    assert _ready(kb)

    kb.heal_workload_partition("web")
    kb.heal_workload_partition("web")  # idempotent (journal replay)
    assert net.partitioned_ips(node) == []
    poll_until(lambda: _from_hub(ip)[0], 30, "web answers again after the heal", interval=0.5)
    assert _through_proxy(kb) == (True, "")


def test_node_partition_cuts_the_kubelet_off_the_api_server(kb: KubeBackend) -> None:
    node, ip = _address(kb)
    assert _heartbeat_age(kb, node) < 2.0
    kb.partition_node(node)
    try:
        assert net.is_partitioned(node)
        assert _from_hub(ip) == (False, "timeout")
        # The Lease stops renewing, and the real node lifecycle controller
        # (fast: node-monitor-grace-period 2 s) marks the Node not Ready.
        poll_until(
            lambda: _heartbeat_age(kb, node) > 3.0, 30, f"{node}'s Lease stale", interval=0.25
        )
        poll_until(lambda: not _node_ready(kb, node), 30, f"{node} NotReady", interval=0.5)
    finally:
        kb.heal_node_partition(node)
    kb.heal_node_partition(node)  # idempotent (journal replay)
    assert not net.is_partitioned(node)
    # The kubelet's connections died silently; it redials within its HTTP/2 health checks.
    poll_until(lambda: _node_ready(kb, node), 120, f"{node} Ready again", interval=0.5)
    poll_until(lambda: _heartbeat_age(kb, node) < 2.0, 30, f"{node}'s Lease renewed", interval=0.25)
    # The pod may have been evicted meanwhile (fast: 6 s tolerations): whichever
    # pod the Deployment runs now answers.
    poll_until(lambda: _ready(kb), 120, "web Ready again", interval=0.5)
    poll_until(lambda: _from_hub(_address(kb)[1])[0], 60, "web answers", interval=0.5)


def test_nothing_of_the_cuts_is_left(kb: KubeBackend) -> None:
    kb.delete_workload("web")
    for node in NODES:
        assert not net.is_partitioned(node)
        assert net.partitioned_ips(node) == []
        assert _our_tables(node) == []
