"""The ``lab`` power driver: how the kube backend switches a lab node off and on.

Declared as the ``lab`` entry of ``rto.power_drivers`` (pyproject.toml) and
named by ``power_driver: lab`` in the kube config the lab writes at ``lab up``
(``cluster.lab.kube.cluster``). The kube backend finds it by name, so
``cluster.kube`` never imports the lab. Power-off is the lab's own: freeze the
node's cgroup and SIGKILL every process in it (kubelet, containerd, shims,
containers, the node's libvirtd and QEMUs); power-on is a reboot of the node
(``lifecycle.reboot_node``), which starts its containerd and kubelet again.

It is also a ``cluster.kube.power.PartitionDriver``: the harness owns the
node's network namespace, so it cuts from outside the node and a cut-off node
needs to hear nothing to be healed. A node partition is the lab's own
(``net.partition_node``: everything on the node's eth0, so its kubelet loses
the API server); a pod partition drops what the node forwards to and from
the pod's address (``net.partition_ip``), which is how the hub's probers and
the API server's service proxy reach it. Only the lab's own namespaces and
198.18.0.0/15 addresses are touched.
"""

from __future__ import annotations

from cluster.lab import net
from cluster.lab.machines import Machines
from cluster.lab.nodes import LabNodes
from core.errors import BackendError

__all__ = ["LabPowerDriver"]


class LabPowerDriver:
    """``PowerDriver`` and ``PartitionDriver`` (``cluster.kube.power``) for the
    nodes of the lab on this machine."""

    def __init__(self, **_: str) -> None:
        pass

    def _known(self, node: str) -> None:
        if Machines().find(node) is None:
            raise BackendError(f"power driver lab: {node!r} is not a node of the lab")

    def power_off(self, node: str) -> None:
        self._known(node)
        LabNodes().power_off(node)

    def power_on(self, node: str) -> None:
        self._known(node)
        LabNodes().power_on(node)

    def partition_node(self, node: str) -> None:
        self._known(node)
        net.partition_node(node)

    def heal_node_partition(self, node: str) -> None:
        self._known(node)
        net.heal_node_partition(node)

    def partition_pod(self, node: str, pod_ip: str) -> None:
        self._known(node)
        net.partition_ip(node, pod_ip)

    def heal_pod_partition(self, node: str, pod_ip: str) -> None:
        self._known(node)
        net.heal_ip_partition(node, pod_ip)
