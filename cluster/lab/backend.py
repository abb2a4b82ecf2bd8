"""``LabBackend``: the embedded lab behind ``cluster.api.Backend``.

Created by the runner/CLI when the backend is ``lab`` (after ``lab_up``); read
by faults, healers and the recorder. Reads come from the lab's state database
(what the control plane last heard and decided); "API" writes (cordon, fence,
evict, create) go to that database, where the control plane and node agents
pick them up as controllers would watch the Kubernetes API. Faults act on the
real parts: SIGKILL of the container's main process, the node's cgroup for a
power-off, nft tables for partitions, the volume's filesystem for storage
faults (``cluster.lab.net``/``cgroups``/``runtime``/``volumes``).
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import os
import re
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from cluster.api import (
    Condition,
    Event,
    NodeStatus,
    Phase,
    ProbeTarget,
    VolumeFailure,
    WorkloadKind,
    WorkloadStatus,
)
from cluster.lab import cgroups, net, runtime, state, vmi_faults, vmis, volumes
from cluster.lab.lifecycle import set_profile
from cluster.lab.scheduling import choose_node, usable
from cluster.lab.state import node_ip
from cluster.lab.store import NodeRow, Store, WorkloadRow
from core.clock import Clock, RealClock
from core.errors import BackendError, LabError
from core.samples import MetricSample
from core.wait import WaitTimeout, poll_until

if TYPE_CHECKING:  # libvirt-python is the optional 'vm' extra: imported where used
    import libvirt

    from cluster.lab import virt

__all__ = ["EVICTION_STRATEGIES", "HEALTH_PATH", "ROUTE_SWITCH", "VMI_HEALTH_PATH", "LabBackend"]

# KubeVirt's evictionStrategy values the lab implements.
EVICTION_STRATEGIES = ("LiveMigrate", "None")
# When the hub /32 route follows a migrated VMI: on the destination libvirtd's
# Resumed/Migrated event, or once the migrate call has returned.
ROUTE_SWITCH = ("event", "return")

HEALTH_PATH = "/cgi-bin/healthz"
VMI_HEALTH_PATH = "/healthz"  # served by the guest itself (cluster/lab/guest/healthz.c)
# Pod names become netns, cgroup and file names: keep them DNS-label-like and short.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")

T = TypeVar("T")

# libvirt domain events kept for events() (oldest dropped first): a backend that
# nobody reads for hours must not grow without bound.
_VIRT_BUFFER = 4096
# How often a node whose libvirtd does not answer (powered off, starting) is retried.
_VIRT_RETRY_S = 2.0


class LabBackend:
    """The lab as a ``cluster.api.Backend``; every method may raise ``BackendError``.

    ``clock`` stamps and ages (monotonic, like the daemons) and is what waits
    sleep and stop on (``core.wait``), so tests of wait logic never sleep.
    """

    name = "lab"
    dry_run = False  # the lab acts for real; a dry run is a kube-backend mode

    def __init__(
        self,
        store: Store | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.clock: Clock = clock or RealClock()
        self.store = store or Store(clock=self.clock)
        # When a migrated VMI's hub route moves (one of ROUTE_SWITCH).
        self.route_switch = "event"
        # libvirt domain events (Watchdog, Reboot, IOError, lifecycle) of each
        # node's libvirtd, listened to from the first events() call of a lab with
        # VMs on. _virt_lock guards the connections, _virt_buf_lock the buffer
        # (taken on libvirt's event thread, so never held while connecting).
        self._virt_lock = threading.Lock()
        self._virt_buf_lock = threading.Lock()
        self._virt: dict[str, tuple[libvirt.virConnect, virt.VirtEvents]] = {}
        self._virt_retry: dict[str, float] = {}
        self._virt_buf: deque[virt.VirtEvent] = deque(maxlen=_VIRT_BUFFER)
        self._virt_closed = False

    def close(self) -> None:
        self._close_virt()
        self.store.close()

    # --- helpers ---------------------------------------------------------------
    def wait_until(
        self, check: Callable[[], T | None], timeout: float, what: str, period: float = 0.05
    ) -> T:
        """Call ``check`` until it returns something other than None/False.

        Sleeps on and times out by the backend's clock (``core.wait.poll_until``).
        """
        try:
            return poll_until(check, timeout, what, self.clock, interval=period)
        except WaitTimeout as exc:
            raise BackendError(str(exc)) from None  # callers handle BackendError

    def _bound(self, workload: str) -> tuple[WorkloadRow, str]:
        w = self.store.workload(workload)
        if w.node is None:
            raise BackendError(
                f"workload {workload} is not on any node (phase {w.phase.value}); "
                "wait until it is scheduled"
            )
        return w, w.node

    @staticmethod
    def _node_status(n: NodeRow, now: float) -> NodeStatus:
        return NodeStatus(
            name=n.name,
            ready=n.ready,
            schedulable=n.schedulable,
            fenced=n.fenced,
            powered=n.powered,
            heartbeat_age=None if n.last_heartbeat is None else max(0.0, now - n.last_heartbeat),
        )

    @staticmethod
    def _workload_status(w: WorkloadRow) -> WorkloadStatus:
        return WorkloadStatus(
            name=w.name,
            kind=w.kind,
            phase=w.phase,
            node=w.node,
            instance=w.instance,
            restarts=w.restarts,
            conditions=w.conditions + _storage_condition(w),
        )

    # --- reading ---------------------------------------------------------------
    def nodes(self) -> list[NodeStatus]:
        now = self.clock.now()
        return [self._node_status(n, now) for n in self.store.nodes()]

    def node(self, name: str) -> NodeStatus:
        return self._node_status(self.store.node(name), self.clock.now())

    def workloads(self) -> list[WorkloadStatus]:
        return [self._workload_status(w) for w in self.store.workloads()]

    def workload(self, name: str) -> WorkloadStatus:
        return self._workload_status(self.store.workload(name))

    def probe_target(self, workload: str) -> ProbeTarget | None:
        w = self.store.workload(workload)
        if w.ip is None:
            return None
        path = VMI_HEALTH_PATH if w.kind is WorkloadKind.VMI else HEALTH_PATH
        return ProbeTarget(host=w.ip, port=w.port, path=path, netns=net.HUB_NS)

    def events(self, since: float) -> Iterator[Event]:
        """The events table merged in time order with the libvirt domain events
        (source ``vmi``, name ``vmi/<domain>``) heard since the first call."""
        self._watch_virt()
        table = [
            Event(at=e.at, source=e.source, name=e.name, reason=e.reason, message=e.message,
                  data=e.data)
            for e in self.store.events_since(since)
        ]  # fmt: skip
        with self._virt_buf_lock:
            heard = sorted((v for v in self._virt_buf if v.at > since), key=lambda v: v.at)
        domain = [
            Event(
                at=v.at,
                source="vmi",
                name=f"vmi/{v.domain}",
                reason=v.reason,
                message=f"{v.detail} on {v.node}" if v.detail else f"on {v.node}",
                # "vmi" lets followers (chaos.recorder) match the workload by name.
                data={"node": v.node, "detail": v.detail, "vmi": v.domain},
            )
            for v in heard
        ]
        yield from heapq.merge(table, domain, key=lambda e: e.at)

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
        if self._virt_closed or self.store.get_setting("vms") is not True:
            return
        try:
            import libvirt

            # libvirt: the optional 'vm' extra
            from cluster.lab import virt, virtd
        except ImportError:
            return  # lab_up(vms=True) already required libvirt-python: nothing to hear
        nodes = self.store.nodes()
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

    def log_path(self, workload: str) -> Path | None:
        w = self.store.workload(workload)
        # The files the agent (container stdout/stderr) and cluster.lab.virt
        # (serial0, append='on') write; both follow the workload across nodes.
        logs = Path(state.STATE_DIR) / "logs"
        if w.kind is WorkloadKind.VMI:
            return logs / "vmi" / f"{w.name}.console.log"
        return logs / "pods" / f"{w.name}.log"

    def platform_version(self, kind: WorkloadKind | None = None) -> str | None:
        # This backend's pods and VMIs run on the project's model of the control
        # plane and kubelet (controlplane.py, agent.py), whatever else is up.
        return "lab model"

    def vm_accelerator(self) -> str | None:
        # Chosen and stored by `rto lab up` (cluster.lab.accel); None: no VMs.
        chosen = self.store.get_setting("accelerator")
        return chosen if isinstance(chosen, str) else None

    def metrics(self, workload: str) -> MetricSample | None:
        # cluster.lab.metrics reads cgroup files (pod) or libvirt + /proc (VMI).
        from cluster.lab import metrics

        w = self.store.workload(workload)
        if w.node is None:
            return None
        try:
            if w.kind is WorkloadKind.VMI:
                return metrics.vmi_sample(w.node, workload, self.clock.now())
            return metrics.pod_sample(w.node, workload, self.clock.now())
        except LabError as exc:
            raise BackendError(f"metrics of {workload} on {w.node}: {exc}") from exc

    # --- workloads -------------------------------------------------------------
    def create_workload(
        self,
        name: str,
        kind: WorkloadKind,
        node: str | None = None,
        *,
        watchdog_heartbeat_s: int | None = 2,
        eviction_strategy: str = "LiveMigrate",
    ) -> None:
        if eviction_strategy not in EVICTION_STRATEGIES:
            raise BackendError(
                f"eviction strategy {eviction_strategy!r} is not supported; use one of "
                f"{', '.join(EVICTION_STRATEGIES)}"
            )
        if kind is WorkloadKind.VMI and self.store.get_setting("vms") is not True:
            raise BackendError(
                f"cannot create VMI {name}: the lab runs without VMs; "
                "bring it up with VMs (lab_up(..., vms=True))"
            )
        if not _NAME.match(name):
            raise BackendError(
                f"workload name {name!r} is not valid: use 1-32 lowercase letters, digits "
                "and '-', starting and ending with a letter or digit"
            )
        if kind is WorkloadKind.VMI:
            # Written before the row exists, so the agent's first start reads it
            # (cluster.lab.vmis puts it on the guest's kernel command line).
            self.store.put_setting(
                vmis.heartbeat_key(name),
                "default" if watchdog_heartbeat_s is None else int(watchdog_heartbeat_s),
            )
        self.store.insert_workload(name, kind, node, eviction_strategy=eviction_strategy)

    def delete_workload(self, name: str) -> None:
        w = self.store.delete_workload(name)
        if w.node is not None:
            n = self.store.find_node(w.node)
            if n is not None and n.powered:
                # The agent stops the container when it sees the pod gone; the
                # volume can only go once nothing holds it.
                if w.kind is WorkloadKind.VMI:
                    self.wait_until(
                        lambda: vmis.qemu_pid(w.node or "", name) is None,
                        20.0,
                        f"node {w.node} to destroy the domain of deleted VMI {name}",
                    )
                else:
                    self.wait_until(
                        lambda: name not in runtime.list_containers(w.node or ""),
                        10.0,
                        f"node {w.node} to stop the container of deleted workload {name}",
                    )
        volumes.destroy_volume(name)

    def set_min_available(self, workload: str, value: int) -> None:
        """Lab-only: the workload's disruption budget (PDB minAvailable)."""
        if value < 0:
            raise BackendError(f"min_available must be >= 0, not {value}")
        self.store.set_min_available(workload, value)

    # --- fault actions ---------------------------------------------------------
    def kill_main_process(self, workload: str) -> None:
        w, node = self._bound(workload)
        if w.kind is WorkloadKind.VMI:
            pid = vmis.qemu_pid(node, workload)
            if pid is None:
                raise BackendError(f"VMI {workload} has no running QEMU on {node}; nothing to kill")
        else:
            pid = runtime.main_pid(node, workload)
        if pid is None:
            raise BackendError(
                f"workload {workload} has no running container on {node}; nothing to kill"
            )
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            raise BackendError(
                f"main process {pid} of {workload} exited before it could be killed"
            ) from None

    def hang_workload(self, workload: str) -> None:
        w, _ = self._bound(workload)
        if w.kind is not WorkloadKind.VMI:
            raise BackendError(
                f"cannot hang {workload}: only a VMI's guest can be hung (through its control "
                "channel); for a pod use process-crash mode kill"
            )
        reply = vmis.guest_command(workload, "hang")
        if reply != "hung":
            raise BackendError(f"VMI {workload} answered {reply!r} to hang, not 'hung'")

    def cordon(self, node: str) -> None:
        self.store.set_node_flag(node, "schedulable", False, "NodeNotSchedulable")

    def uncordon(self, node: str) -> None:
        self.store.set_node_flag(node, "schedulable", True, "NodeSchedulable")

    def evict(self, workload: str) -> None:
        w = self.store.workload(workload)
        if w.node is None:
            return  # already off every node: nothing to evict (idempotent)
        if (
            w.kind is WorkloadKind.VMI
            and w.eviction_strategy == "LiveMigrate"
            and w.phase is Phase.RUNNING
        ):
            # KubeVirt turns the eviction of a LiveMigrate VMI into a migration
            # (the budget holds: the VMI never stops). A VMI not running yet has
            # nothing to keep, so it is evicted like a pod below.
            self.migrate(workload)
            return
        # The lab runs one replica per workload: any budget >= 1 forbids it.
        if w.min_available >= 1:
            raise BackendError(
                f"cannot evict {workload}: its disruption budget requires min_available="
                f"{w.min_available} and it has 1 replica, so the drain of {w.node} cannot "
                "proceed; lower the budget (set_min_available) or delete the workload"
            )
        self.store.unbind(workload, "Evicted", f"evicted from {w.node} (API eviction)")

    def power_off(self, node: str) -> None:
        self.store.node(node)
        try:
            cgroups.kill_node(node)
        finally:
            # Even a partial kill is a node that can no longer be trusted as on.
            self.store.set_node_flag(node, "powered", False)

    def power_on(self, node: str) -> None:
        from cluster.lab import lifecycle  # lifecycle imports the store; avoid a cycle

        n = self.store.node(node)
        if n.powered and lifecycle.agent_alive(node):
            return
        lifecycle.reboot_node(self.store, n)

    def partition_node(self, node: str) -> None:
        self.store.node(node)
        net.partition_node(node)

    def heal_node_partition(self, node: str) -> None:
        self.store.node(node)
        net.heal_node_partition(node)

    def partition_workload(self, workload: str) -> None:
        w, node = self._bound(workload)
        if w.kind is WorkloadKind.VMI:
            if w.ip is None:
                raise BackendError(f"VMI {workload} has no address yet: nothing to cut off")
            vmi_faults.partition_vmi(node, workload, w.ip)
            return
        net.partition_pod(workload)

    def heal_workload_partition(self, workload: str) -> None:
        w = self.store.workload(workload)
        if w.kind is WorkloadKind.VMI:
            # Every node: the VMI may have moved since it was cut off.
            vmi_faults.heal_vmi([n.name for n in self.store.nodes()], workload)
            return
        net.heal_pod_partition(workload)

    def fail_volume(self, workload: str, mode: VolumeFailure) -> None:
        w = self.store.workload(workload)
        if mode is VolumeFailure.UNPLUG:
            if w.kind is not WorkloadKind.VMI:
                raise BackendError(
                    f"cannot unplug the volume of pod {workload}: hot-unplug is a VMI disk "
                    "fault; use hang or eio for pods"
                )
            _, node = self._bound(workload)
            vmi_faults.unplug_disk(node, workload)
            return
        if mode is VolumeFailure.HANG:
            volumes.freeze(workload)
        else:
            volumes.shutdown(workload)

    def repair_volume(self, workload: str, mode: VolumeFailure) -> None:
        w0 = self.store.workload(workload)
        if mode is VolumeFailure.UNPLUG:
            n = None if w0.node is None else self.store.find_node(w0.node)
            if n is not None and n.powered and vmis.qemu_pid(n.name, workload) is not None:
                vmi_faults.replug_disk(n.name, workload)
            # No QEMU: the next start plugs the disk from the definition.
            return
        if mode is VolumeFailure.HANG:
            volumes.thaw(workload)
            return
        if not volumes.is_shut_down(workload):
            return  # healthy volume: nothing to repair (idempotent revert)
        volumes.repair(workload)
        if w0.kind is WorkloadKind.VMI:
            # QEMU keeps its fd on the dead filesystem and stays paused
            # (PausedIOError) as KubeVirt's VMI does: resuming it, or restarting
            # it when a resume cannot help, is the watchdog healer's job.
            return
        # The container still holds the dead mount in its namespace: restart it
        # so the agent binds the fresh one (first restart is immediate).
        w = self.store.workload(workload)
        if w.node is not None:
            pid = runtime.main_pid(w.node, workload)
            if pid is not None:
                # If it died on its own meanwhile, the agent restarts it anyway.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    # --- healer actions --------------------------------------------------------
    def restart_healing(self) -> bool:
        # Unset until `rto lab up` writes it; the agents' default is on.
        return self.store.get_setting("restart_healing", True) is not False

    def set_restart_healing(self, enabled: bool) -> None:
        self.store.put_setting("restart_healing", bool(enabled))

    def fence(self, node: str) -> None:
        self.store.set_node_flag(node, "fenced", True, "NodeFenced")

    def unfence(self, node: str) -> None:
        self.store.set_node_flag(node, "fenced", False, "NodeUnfenced")

    def resume_workload(self, workload: str) -> None:
        w, node = self._bound(workload)
        if w.kind is not WorkloadKind.VMI:
            raise BackendError(f"cannot resume pod {workload}: only a VMI can be paused")
        vmi_faults.resume(node, workload)

    def reschedule(self, workload: str) -> None:
        w = self.store.workload(workload)
        if w.node is None:
            return  # Pending: the scheduler already places it
        n = self.store.node(w.node)
        if w.phase is Phase.FAILED:
            # Nothing of it runs (its node reported it Failed): an ordinary
            # delete and recreate, as a controller replaces a Failed pod.
            self.store.unbind(workload, "Replaced", f"Failed on {n.name}, started anew")
            return
        if not n.fenced:
            raise BackendError(
                f"refusing to force-delete {workload} on {n.name}: the node is not fenced, so "
                "its copy may still run (split brain); fence the node first"
            )
        self.store.unbind(workload, "ForceDeleted", f"force-deleted on fenced node {n.name}")

    # --- live migration --------------------------------------------------------
    def _migration_target(self, workload: str, src: str, node: str | None) -> NodeRow:

        if node is not None:
            n = self.store.node(node)
            if n.name == src:
                raise BackendError(f"VMI {workload} already runs on {src}; pick another node")
            if not usable(n):
                raise BackendError(
                    f"cannot migrate VMI {workload} to {n.name}: the node is not Ready, "
                    "schedulable, unfenced and powered"
                )
            return n
        counts: dict[str, int] = {}
        for w in self.store.workloads():
            if w.node is not None:
                counts[w.node] = counts.get(w.node, 0) + 1
        target = choose_node([n for n in self.store.nodes() if n.name != src], counts)
        if target is None:
            raise BackendError(
                f"cannot migrate VMI {workload}: no other Ready, schedulable node; "
                "uncordon or power on a node"
            )
        return target

    def migrate(self, workload: str, node: str | None = None) -> dict[str, str]:
        """Live-migrate running VMI ``workload`` to ``node`` (default: the least
        loaded other usable node) between the nodes' libvirtds.

        The row is marked in flight first (the source agent leaves the domain
        alone), the hub /32 route moves at the switch-over (``route_switch``
        attribute: ``event`` or ``return``), then the row names the destination
        (generation+1) and its agent adopts the running domain. Returns QEMU's
        figures as strings: ``downtime_ms``, ``total_ms``, plus ``wall_ms``,
        ``route_switch_ms`` (after the call started), ``source``, ``target``.
        Events MigrationScheduled/Running/Succeeded/Failed go to the event table.
        """
        try:
            import libvirt

            # libvirt: the optional 'vm' extra
            from cluster.lab import virt, virtd
        except ImportError as exc:
            raise BackendError(
                f"cannot migrate {workload}: libvirt-python is missing ({exc}); "
                "install the 'vm' extra"
            ) from exc

        w, src = self._bound(workload)
        if w.kind is not WorkloadKind.VMI:
            raise BackendError(f"workload {workload} is a pod: only VMIs live-migrate")
        if w.phase is not Phase.RUNNING or w.ip is None:
            raise BackendError(
                f"VMI {workload} is {w.phase.value}, not Running: only a running guest "
                "can be live-migrated; wait until it is ready"
            )
        ip = w.ip
        dst = self._migration_target(workload, src, node)
        dst_ip = node_ip(dst.idx)
        mode = self.route_switch
        if mode not in ROUTE_SWITCH:
            raise BackendError(f"route_switch {mode!r} is not one of {', '.join(ROUTE_SWITCH)}")
        # The source's libvirtd opens the migration connection: from a node cut
        # off the network it would hang for minutes (TCP connect retries), so
        # refuse at once when the source cannot reach the destination's daemon.
        if not net.can_connect(net.node_ns(src), dst_ip, virtd.LIBVIRT_TCP_PORT, 2.0):
            raise BackendError(
                f"cannot migrate VMI {workload}: node {src} cannot reach {dst.name}'s "
                f"libvirtd at {dst_ip}:{virtd.LIBVIRT_TCP_PORT} (node partitioned or "
                "destination down); a guest on a cut-off node cannot be live-migrated"
            )
        self.store.begin_migration(workload, src, dst.name)
        switched: list[float] = []
        lock = threading.Lock()

        def switch() -> None:
            with lock:
                if not switched:
                    net.route_vmi(ip, dst.idx)
                    switched.append(self.clock.now())

        def on_event(ev: virt.VirtEvent) -> None:
            if ev.domain == workload and (ev.reason, ev.detail) == ("Resumed", "Migrated"):
                # On libvirt's event thread: an error here would be lost, and the
                # caller switches after the call anyway.
                with contextlib.suppress(LabError, OSError):
                    switch()

        conns: list[libvirt.virConnect] = []
        watch: virt.VirtEvents | None = None
        t0 = self.clock.now()
        try:
            try:
                src_conn = virt.connect(virtd.node_uri(src))
                conns.append(src_conn)
                if mode == "event":
                    dst_conn = virt.connect(virtd.node_uri(dst.name))
                    conns.append(dst_conn)
                    watch = virt.VirtEvents(dst_conn, dst.name, clock=self.clock, listener=on_event)
                self.store.add_event(
                    "migration", workload, "MigrationRunning", f"{src} -> {dst.name}",
                    {"source": src, "target": dst.name},
                )  # fmt: skip
                t0 = self.clock.now()
                stats = virt.migrate_vmi(
                    src_conn, virtd.node_tcp_uri(dst_ip), dst_ip, workload, clock=self.clock
                )
                switch()
            finally:
                if watch is not None:
                    watch.close()
                for c in conns:
                    with contextlib.suppress(libvirt.libvirtError):
                        c.close()
        except (LabError, OSError, libvirt.libvirtError) as exc:
            self.store.finish_migration(
                workload, dst.name, False, str(exc), {"source": src, "target": dst.name}
            )
            raise BackendError(
                f"live migration of {workload} {src} -> {dst.name} failed: {exc}"
            ) from exc
        data = {
            "source": src,
            "target": dst.name,
            "downtime_ms": _fmt(stats.downtime_ms),
            "total_ms": _fmt(stats.total_ms),
            "wall_ms": _fmt(stats.wall_s * 1000),
            "route_switch": mode,
            "route_switch_ms": _fmt((switched[0] - t0) * 1000 if switched else None),
        }
        self.store.finish_migration(
            workload,
            dst.name,
            True,
            f"{src} -> {dst.name}, QEMU downtime {data['downtime_ms']} ms",
            data,
        )
        return data

    # --- around a run (cluster.api.RunHooks) -----------------------------------
    @property
    def profile(self) -> str | None:
        """The profile the lab runs now: chosen at `rto lab up`, switched per run."""
        name = self.store.get_setting("profile")
        return name if isinstance(name, str) else None

    def set_profile(self, name: str) -> None:
        """Switch the lab's timings; returns once every Ready node beats under them."""

        set_profile(name)

    # --- lab-only helpers ------------------------------------------------------
    def freeze_workload(self, name: str) -> None:
        """Freeze every process of the pod (ground truth for hang benchmarks)."""
        _, node = self._bound(name)
        cgroups.freeze_pod(node, name)

    def thaw_workload(self, name: str) -> None:
        _, node = self._bound(name)
        cgroups.thaw_pod(node, name)

    def probe(self, name: str, timeout: float = 1.0) -> tuple[int, str]:
        """One HTTP GET of the workload's health endpoint from the hub netns."""
        target = self.probe_target(name)
        if target is None:
            raise BackendError(f"workload {name} has no address yet")
        return http_get(target, timeout)

    def wait_ready(self, name: str, timeout: float = 30.0) -> WorkloadStatus:
        """Wait until the workload runs, is Ready and answers its probe with its
        current instance; returns its status then."""

        def check() -> WorkloadStatus | None:
            w = self.workload(name)
            ready = w.condition("Ready")
            if w.phase is not Phase.RUNNING or ready is None or not ready.status:
                return None
            try:
                code, body = self.probe(name, timeout=0.5)
            except (BackendError, OSError):
                return None
            # Pods answer "<name> <instance>", VMIs add " boot=<n>".
            if code != 200 or body.split()[:2] != [name, w.instance or ""]:
                return None
            return w

        return self.wait_until(check, timeout, f"workload {name} to be Ready and answer")


def _close_virt_conn(conn: libvirt.virConnect, watch: virt.VirtEvents) -> None:
    import libvirt

    watch.close()
    # A connection whose libvirtd died is closed already on the server side.
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _storage_condition(w: WorkloadRow) -> tuple[Condition, ...]:
    """VMIs: whether the volume under the data disk works (the lab knows: its
    storage faults leave markers), like a CSI volume-health condition. The
    watchdog healer resumes a PausedIOError VMI only once this is True."""
    if w.kind is not WorkloadKind.VMI:
        return ()
    if volumes.is_shut_down(w.name):
        return (Condition("StorageReady", False, "IOError"),)
    if volumes.is_frozen(w.name):
        return (Condition("StorageReady", False, "Frozen"),)
    return (Condition("StorageReady", True),)


def http_get(target: ProbeTarget, timeout: float) -> tuple[int, str]:
    """GET ``target`` from inside its netns (a short-lived thread enters it, so
    the caller's own namespace never changes). Returns (status, body)."""
    result: list[tuple[int, str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            if target.netns is not None:
                net.enter_netns(target.netns)
            conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
            try:
                conn.request("GET", target.path)
                resp = conn.getresponse()
                result.append((resp.status, resp.read().decode(errors="replace")))
            finally:
                conn.close()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, name=f"probe-{target.host}", daemon=True)
    t.start()
    t.join(timeout + 1.0)
    if errors:
        err = errors[0]
        if isinstance(err, LabError | OSError | http.client.HTTPException):
            raise BackendError(f"probe of {target.host}:{target.port} failed: {err}") from err
        raise err
    if not result:
        raise BackendError(f"probe of {target.host}:{target.port} got no answer in {timeout} s")
    return result[0]
