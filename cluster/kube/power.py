"""Node power drivers: how the kube backend switches a real node off and on.

Filled by the drivers below and by any package declaring an entry point in the
group ``rto.power_drivers`` (IPMI, Redfish, a cloud API: a class taking
``**options`` with ``power_off(node)`` and ``power_on(node)``); read by
``KubeBackend.power_off/power_on``, named by ``power_driver`` in the kube config.
Built in: ``kind`` (the node is a Docker container: ``docker stop``/``start``)
and ``libvirt`` (the node is a libvirt domain: ``virsh destroy``/``start``).
A power-off is abrupt on purpose: it is the fault "node lost", not a shutdown.

A driver may also offer optional capabilities, found by ``isinstance`` on the
``runtime_checkable`` protocols below (no registration): ``PartitionDriver``
(``partition_node``/``heal_node_partition``, ``partition_pod``/
``heal_pod_partition``) when the node's owner can cut a node, or one pod
address, off the network from outside the node. ``KubeFaults`` then uses it for
the network-partition fault instead of a node pod (which a cut-off node cannot
be told to remove) or a NetworkPolicy (which a CNI may not enforce). Heals
must be idempotent: a revert replayed from the journal may run them twice, or
after the pod is gone.
"""

from __future__ import annotations

import subprocess
from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

from core.errors import BackendError

__all__ = [
    "ENTRY_POINT_GROUP",
    "KindDriver",
    "LibvirtDriver",
    "PartitionDriver",
    "PowerDriver",
    "get_power_driver",
]

ENTRY_POINT_GROUP = "rto.power_drivers"


class PowerDriver(Protocol):
    def power_off(self, node: str) -> None: ...

    def power_on(self, node: str) -> None: ...


@runtime_checkable
class PartitionDriver(Protocol):
    """Optional: network cuts made by the node's owner, outside the node.

    ``partition_node`` drops everything the node sends or receives on its
    network (its kubelet loses the API server: the real fault);
    ``partition_pod`` drops what the node forwards to or from ``pod_ip`` (a
    pod, or a VMI's address, on ``node``), leaving the node and its other pods
    alone. All four are idempotent; a heal of a cut that is not there (or of a
    pod that is gone) does nothing.
    """

    def partition_node(self, node: str) -> None: ...

    def heal_node_partition(self, node: str) -> None: ...

    def partition_pod(self, node: str, pod_ip: str) -> None: ...

    def heal_pod_partition(self, node: str, pod_ip: str) -> None: ...


def _run(argv: list[str], what: str) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError as exc:
        raise BackendError(f"{what}: {argv[0]} is not installed on this host") from exc
    if proc.returncode != 0:
        raise BackendError(f"{what}: {' '.join(argv)} failed: {proc.stderr.strip()}")


class KindDriver:
    """kind nodes are containers named after the node: stop = power cut (SIGKILL)."""

    def __init__(self, docker: str = "docker", **_: str) -> None:
        self.docker = docker

    def power_off(self, node: str) -> None:
        _run([self.docker, "kill", node], f"power off kind node {node}")

    def power_on(self, node: str) -> None:
        _run([self.docker, "start", node], f"power on kind node {node}")


class LibvirtDriver:
    """Nodes are libvirt domains (named as the node unless ``prefix`` is given)."""

    def __init__(self, uri: str = "qemu:///system", prefix: str = "", **_: str) -> None:
        self.uri, self.prefix = uri, prefix

    def power_off(self, node: str) -> None:
        _run(["virsh", "-c", self.uri, "destroy", self.prefix + node], f"power off {node}")

    def power_on(self, node: str) -> None:
        _run(["virsh", "-c", self.uri, "start", self.prefix + node], f"power on {node}")


BUILTIN: dict[str, type[KindDriver] | type[LibvirtDriver]] = {
    "kind": KindDriver,
    "libvirt": LibvirtDriver,
}


def get_power_driver(name: str, options: dict[str, str]) -> PowerDriver:
    if name in BUILTIN:
        return BUILTIN[name](**options)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            driver: PowerDriver = ep.load()(**options)
            return driver
    known = sorted(BUILTIN) + sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    raise BackendError(f"no power driver {name!r}; known: {', '.join(known)}")
