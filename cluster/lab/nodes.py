"""``LabNodes``: what only the lab can do to its nodes, and what it hears from them.

Used by ``cluster.lab_cluster.LabClusterBackend`` (the lab's ``cluster.api.Backend``)
beside the kube backend, which does everything Kubernetes does. This side is the
machine room: a node's power (``cgroups.kill_node`` freezes and SIGKILLs every
process of the node, kubelet and containerd included; power-on reboots it with
``lifecycle.reboot_node``), a node's network cut (``net.partition_node``), the
lab's settings (``cluster.lab.machines``) and the libvirt domain events of each
node's libvirtd (watchdog, reboot, I/O error, lifecycle), which KubeVirt's
virt-launcher would turn into VMI events and the lab's libvirtds give directly.
Nothing here decides anything Kubernetes decides: readiness, taints, eviction,
placement and restarts are the real components'.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

from cluster.api import Event
from cluster.lab import cgroups, net
from cluster.lab.kube import node as kube_node
from cluster.lab.machines import Machine, Machines
from core.clock import Clock, RealClock
from core.errors import LabError

if TYPE_CHECKING:  # libvirt-python is the optional 'vm' extra: imported where used
    import libvirt

    from cluster.lab import virt

__all__ = ["LabNodes"]

# libvirt domain events kept for events() (oldest dropped first): a backend that
# nobody reads for hours must not grow without bound.
_VIRT_BUFFER = 4096
# How often a node whose libvirtd does not answer (powered off, starting) is retried.
_VIRT_RETRY_S = 2.0


class LabNodes:
    """The lab's own side of its nodes; every method may raise ``BackendError``.

    ``clock`` stamps the libvirt events (monotonic, like the kube timeline).
    """

    def __init__(self, machines: Machines | None = None, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or RealClock()
        self.machines = machines or Machines()
        # libvirt domain events of each node's libvirtd, listened to from the
        # first events() call of a lab with VMs on. _virt_lock guards the
        # connections, _virt_buf_lock the buffer (taken on libvirt's event
        # thread, so never held while connecting).
        self._virt_lock = threading.Lock()
        self._virt_buf_lock = threading.Lock()
        self._virt: dict[str, tuple[libvirt.virConnect, virt.VirtEvents]] = {}
        self._virt_retry: dict[str, float] = {}
        self._virt_buf: deque[virt.VirtEvent] = deque(maxlen=_VIRT_BUFFER)
        self._virt_closed = False

    def close(self) -> None:
        self._close_virt()

    # --- the machines ----------------------------------------------------------------
    def nodes(self) -> list[Machine]:
        return self.machines.nodes()

    def node(self, name: str) -> Machine:
        return self.machines.node(name)

    def vms(self) -> bool:
        """Did the lab come up with VMs (a libvirtd per node, VMIs as KubeVirt objects)?"""
        return self.machines.get_setting("vms") is True

    def vm_accelerator(self) -> str | None:
        # Chosen and recorded by `rto lab up` (cluster.lab.accel); None: no VMs.
        chosen = self.machines.get_setting("accelerator")
        return chosen if isinstance(chosen, str) else None

    def power_off(self, node: str) -> None:
        self.machines.node(node)
        try:
            cgroups.kill_node(node)
        finally:
            # Even a partial kill is a node that can no longer be trusted as on.
            self.machines.set_powered(node, False)

    def power_on(self, node: str) -> None:
        from cluster.lab import lifecycle  # lifecycle makes the machines; avoid a cycle

        m = self.machines.node(node)
        if m.powered and kube_node.component_pid(node, "kubelet") is not None:
            return  # on already (a journal replay after a crash): a reboot would be a fault
        lifecycle.reboot_node(m)

    def partition_node(self, node: str) -> None:
        self.machines.node(node)
        net.partition_node(node)

    def heal_node_partition(self, node: str) -> None:
        self.machines.node(node)
        net.heal_node_partition(node)

    # --- settings ----------------------------------------------------------------------
    @property
    def profile(self) -> str | None:
        name = self.machines.get_setting("profile")
        return name if isinstance(name, str) else None

    def record_profile(self, name: str) -> None:
        self.machines.put_setting("profile", name)

    def restart_healing(self) -> bool:
        """Is the watchdog healer's restart switched on for this run (a run setting)?"""
        return self.machines.get_setting("restart_healing", True) is not False

    def set_restart_healing(self, enabled: bool) -> None:
        self.machines.put_setting("restart_healing", bool(enabled))

    # --- libvirt domain events ---------------------------------------------------------
    def events(self, since: float) -> Iterator[Event]:
        """The libvirt domain events (source ``vmi``, name ``vmi/<domain>``) heard
        since the first call, in time order."""
        self._watch_virt()
        with self._virt_buf_lock:
            heard = sorted((v for v in self._virt_buf if v.at > since), key=lambda v: v.at)
        for v in heard:
            yield Event(
                at=v.at,
                source="vmi",
                name=f"vmi/{v.domain}",
                reason=v.reason,
                message=f"{v.detail} on {v.node}" if v.detail else f"on {v.node}",
                # "vmi" lets followers (chaos.recorder) match the workload by name.
                data={"node": v.node, "detail": v.detail, "vmi": v.domain},
            )

    def _on_virt_event(self, ev: virt.VirtEvent) -> None:
        # On libvirt's event thread: only append (the deque drops the oldest).
        with self._virt_buf_lock:
            self._virt_buf.append(ev)

    def _watch_virt(self) -> None:
        """Listen to each powered node's libvirtd that has no live listener yet.

        A libvirtd that does not answer (node powered off, still starting) is
        retried every ``_VIRT_RETRY_S`` on later calls; virt.py keeps libvirt's
        own error printing off stderr.
        """
        if self._virt_closed or not self.vms():
            return
        try:
            import libvirt

            # libvirt: the optional 'vm' extra
            from cluster.lab import virt, virtd
        except ImportError:
            return  # lab_up(vms=True) already required libvirt-python: nothing to hear
        nodes = self.machines.nodes()
        now = self.clock.now()
        with self._virt_lock:
            for n in nodes:
                held = self._virt.get(n.name)
                if held is not None:
                    conn, watch = held
                    with contextlib.suppress(libvirt.libvirtError):
                        if conn.isAlive():
                            watch.drain()  # the listener buffered them already
                            continue
                    # libvirtd died with its node: drop it, reconnect once it is back.
                    del self._virt[n.name]
                    _close_virt_conn(conn, watch)
                if self._virt_closed or not n.powered or now < self._virt_retry.get(n.name, now):
                    continue
                self._virt_retry[n.name] = now + _VIRT_RETRY_S
                try:
                    conn = virt.connect(virtd.node_uri(n.name))
                except LabError:
                    continue  # not answering yet: retried after _VIRT_RETRY_S
                try:
                    watch = virt.VirtEvents(
                        conn, n.name, clock=self.clock, listener=self._on_virt_event
                    )
                except libvirt.libvirtError:
                    with contextlib.suppress(libvirt.libvirtError):
                        conn.close()
                    continue  # it died between connect and register: retried later
                self._virt[n.name] = (conn, watch)

    def _close_virt(self) -> None:
        with self._virt_lock:
            self._virt_closed = True
            held, self._virt = self._virt, {}
        for conn, watch in held.values():
            _close_virt_conn(conn, watch)


def _close_virt_conn(conn: libvirt.virConnect, watch: virt.VirtEvents) -> None:
    import libvirt

    watch.close()
    # A connection whose libvirtd died is closed already on the server side.
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()
