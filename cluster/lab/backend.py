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
import http.client
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_fixed,
)

from chaos.clock import Clock, RealClock
from chaos.errors import BackendError, LabError
from cluster.api import (
    Event,
    NodeStatus,
    Phase,
    ProbeTarget,
    VolumeFailure,
    WorkloadKind,
    WorkloadStatus,
)
from cluster.lab import cgroups, net, runtime, state, vmis, volumes
from cluster.lab.store import NodeRow, Store, WorkloadRow

__all__ = ["HEALTH_PATH", "VMI_HEALTH_PATH", "LabBackend"]

HEALTH_PATH = "/cgi-bin/healthz"
VMI_HEALTH_PATH = "/healthz"  # served by the guest itself (cluster/lab/guest/healthz.sh)
# Pod names become netns, cgroup and file names: keep them DNS-label-like and short.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")

T = TypeVar("T")


class _NotYet(Exception):
    """A wait condition does not hold yet (tenacity retries on it)."""


class LabBackend:
    """The lab as a ``cluster.api.Backend``; every method may raise ``BackendError``.

    ``clock`` stamps and ages (monotonic, like the daemons); ``sleep`` is what
    waits use between checks, injectable so tests of wait logic never sleep.
    """

    name = "lab"

    def __init__(
        self,
        store: Store | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.clock: Clock = clock or RealClock()
        self.store = store or Store(clock=self.clock)
        self._sleep = sleep or self.clock.sleep

    def close(self) -> None:
        self.store.close()

    # --- helpers ---------------------------------------------------------------
    def wait_until(
        self, check: Callable[[], T | None], timeout: float, what: str, period: float = 0.05
    ) -> T:
        """Call ``check`` until it returns something other than None/False."""

        def attempt() -> T:
            value = check()
            if value is None or value is False:
                raise _NotYet
            return value

        try:
            for att in Retrying(
                retry=retry_if_exception_type(_NotYet),
                stop=stop_after_delay(timeout),
                wait=wait_fixed(period),
                sleep=self._sleep,
            ):
                with att:
                    return attempt()
        except RetryError:
            raise BackendError(f"timed out after {timeout} s waiting for {what}") from None
        raise AssertionError("unreachable")  # pragma: no cover

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
            conditions=w.conditions,
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
        for e in self.store.events_since(since):
            yield Event(
                at=e.at,
                source=e.source,
                name=e.name,
                reason=e.reason,
                message=e.message,
                data=e.data,
            )

    def log_path(self, workload: str) -> Path | None:
        w = self.store.workload(workload)
        # The files the agent (container stdout/stderr) and cluster.lab.virt
        # (serial0, append='on') write; both follow the workload across nodes.
        logs = Path(state.STATE_DIR) / "logs"
        if w.kind is WorkloadKind.VMI:
            return logs / "vmi" / f"{w.name}.console.log"
        return logs / "pods" / f"{w.name}.log"

    # --- workloads -------------------------------------------------------------
    def create_workload(self, name: str, kind: WorkloadKind, node: str | None = None) -> None:
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
        self.store.insert_workload(name, kind, node)

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

    def cordon(self, node: str) -> None:
        self.store.set_node_flag(node, "schedulable", False, "NodeNotSchedulable")

    def uncordon(self, node: str) -> None:
        self.store.set_node_flag(node, "schedulable", True, "NodeSchedulable")

    def evict(self, workload: str) -> None:
        w = self.store.workload(workload)
        if w.node is None:
            return  # already off every node: nothing to evict (idempotent)
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
        self._bound(workload)
        net.partition_pod(workload)

    def heal_workload_partition(self, workload: str) -> None:
        self.store.workload(workload)
        net.heal_pod_partition(workload)

    def fail_volume(self, workload: str, mode: VolumeFailure) -> None:
        self.store.workload(workload)
        if mode is VolumeFailure.HANG:
            volumes.freeze(workload)
        else:
            volumes.shutdown(workload)

    def repair_volume(self, workload: str, mode: VolumeFailure) -> None:
        self.store.workload(workload)
        if mode is VolumeFailure.HANG:
            volumes.thaw(workload)
            return
        if not volumes.is_shut_down(workload):
            return  # healthy volume: nothing to repair (idempotent revert)
        volumes.repair(workload)
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
    def set_restart_healing(self, enabled: bool) -> None:
        self.store.put_setting("restart_healing", bool(enabled))

    def fence(self, node: str) -> None:
        self.store.set_node_flag(node, "fenced", True, "NodeFenced")

    def unfence(self, node: str) -> None:
        self.store.set_node_flag(node, "fenced", False, "NodeUnfenced")

    def reschedule(self, workload: str) -> None:
        w = self.store.workload(workload)
        if w.node is None:
            return  # Pending: the scheduler already places it
        n = self.store.node(w.node)
        if not n.fenced:
            raise BackendError(
                f"refusing to force-delete {workload} on {n.name}: the node is not fenced, so "
                "its copy may still run (split brain); fence the node first"
            )
        self.store.unbind(workload, "ForceDeleted", f"force-deleted on fenced node {n.name}")

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
