"""The ``lab`` power driver: how the kube backend switches a lab node off and on.

Declared as the ``lab`` entry of ``rto.power_drivers`` (pyproject.toml) and
named by ``power_driver: lab`` in the kube config the lab writes at ``lab up
--kube`` (``cluster.lab.kube.cluster``). The kube backend finds it by name, so
``cluster.kube`` never imports the lab. Power-off is the lab's own: freeze the
node's cgroup and SIGKILL every process in it (kubelet, containerd, shims,
containers, the node's libvirtd and QEMUs); power-on is a reboot of the node
(``lifecycle.reboot_node``), which starts its containerd and kubelet again.
"""

from __future__ import annotations

from cluster.lab import cgroups, lifecycle
from cluster.lab.store import Store
from core.errors import BackendError

__all__ = ["LabPowerDriver"]


class LabPowerDriver:
    """``cluster.kube.power.PowerDriver`` for the nodes of the lab on this machine."""

    def __init__(self, **_: str) -> None:
        pass

    def _node(self, store: Store, node: str) -> None:
        if node not in {n.name for n in store.nodes()}:
            raise BackendError(f"power driver lab: {node!r} is not a node of the lab")

    def power_off(self, node: str) -> None:
        store = Store()
        try:
            self._node(store, node)
            try:
                cgroups.kill_node(node)
            finally:
                store.set_node_flag(node, "powered", False)
        finally:
            store.close()

    def power_on(self, node: str) -> None:
        store = Store()
        try:
            self._node(store, node)
            lifecycle.reboot_node(store, store.node(node))
        finally:
            store.close()
