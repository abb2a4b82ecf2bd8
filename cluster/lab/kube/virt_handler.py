"""The lab's virt-handler: one per node, VMIs of the real API server into libvirt domains.

Started by ``cluster.lab.lifecycle`` for every node of a lab with the real
cluster and VMs, as ``python -m cluster.lab.kube.virt_handler --node N
--index I`` in the node's network namespace and cgroup: a power-off of the
node kills it with the node's kubelet, containerd, libvirtd and QEMUs, and
the VMI status it wrote goes stale, as KubeVirt's does. The power-on starts
it again.

It stands in for KubeVirt's virt-handler (see ``virt_controller`` for why) and
does its part: the VMIs labelled ``kubevirt.io/nodeName`` with this node are
run through ``cluster.lab.vmis.VmiHandler`` (the lab's libvirt code: guest
image, data disk on the lab volume, watchdog, console), and their status is
written back as KubeVirt writes it: phase Scheduled, then Running once the
guest says it is ready; conditions Ready, Paused (an I/O error pauses the
guest) and LiveMigratable; the guest address in ``interfaces``.

As in KubeVirt, a handler never restarts a guest: a QEMU that died makes its
VMI Failed, and the VirtualMachine's run strategy makes a new one through the
controller. For the same reason a VMI that was Running before this handler
started (the node rebooted) and has no domain is Failed, not booted again.
A watchdog reset reboots the guest inside the same QEMU and VMI.

Migrations: when a VMI of this node names it as ``migrationState.sourceNode``,
the handler live-migrates the domain to the target node's libvirtd, moves the
hub's route to the guest address at the destination's resume, then writes the
outcome (``completed`` or ``failed``) and, on success, the new node, in one
write; the target's handler then adopts the running domain. Before the copy
it gives the destination a neighbour entry for the guest's MAC and opens the
hub's netlink socket on a thread of its own, so the switch-over pays neither
an ARP round trip nor a socket set-up; it logs the switch-over's monotonic
stamps ("migration timeline") for ``benchmarks/migration_lab.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import threading
from typing import Any

from cluster.lab import net, state
from cluster.lab.kube import paths
from cluster.lab.kube.virt_api import (
    ADDRESS_ANNOTATION,
    INSTANCE_ANNOTATION,
    NODE_LABEL,
    Obj,
    ObjectCache,
    VirtApi,
    custom_path,
    daemon_stop_event,
    now_iso,
)
from cluster.lab.kube.virt_api import (
    metadata as _md,
)
from cluster.lab.kube.virt_api import (
    migration_in_flight as _in_flight,
)
from cluster.lab.kube.virt_api import (
    status_of as _status,
)
from cluster.lab.vmis import VmiHandler, VmiRun
from core.clock import Clock, RealClock
from core.errors import HarnessError

__all__ = ["VirtHandler", "desired_status", "main"]

log = logging.getLogger("virt-handler")


def desired_status(run: VmiRun) -> tuple[dict[str, Any], str | None]:
    """The VMI status fields (and the boot instance) a handler writes for ``run``."""
    if run.phase == "Failed":
        reason = run.reason or "Stopped"
        return {
            "phase": "Failed",
            "reason": reason,
            "conditions": [{"type": "Ready", "status": "False", "reason": reason}],
        }, run.instance
    paused, why = run.paused
    running = run.phase == "Running"
    ready = running and not paused
    conditions = [
        {"type": "Ready", "status": str(ready), "reason": "" if ready else (why or run.reason)},
        {"type": "LiveMigratable", "status": "True", "reason": ""},
    ]
    if paused:
        reason = "PausedIOError" if why == "IOError" else "PausedByUser"
        conditions.append({"type": "Paused", "status": "True", "reason": reason})
    ip = run.ip if run.active else None
    return {
        "phase": "Running" if running else "Scheduled",
        "conditions": conditions,
        "interfaces": [{"name": "default", "ipAddress": ip, "ipAddresses": [ip]}] if ip else [],
    }, run.instance


def _comparable(status: dict[str, Any]) -> dict[str, Any]:
    keep = ("phase", "interfaces")
    out = {k: status.get(k) or None for k in keep}
    out["conditions"] = sorted(
        (c.get("type"), c.get("status"), c.get("reason") or "")
        for c in status.get("conditions") or ()
    )
    return out


def _node_indexes() -> dict[str, int]:
    doc = json.loads((paths.kube_dir() / "cluster.json").read_text())
    return {str(k): int(v) for k, v in (doc.get("nodes") or {}).items()}


def _timeline_json(
    marks: dict[str, float], events: list[tuple[float, str, str, str]], switched_by: str | None
) -> str:
    """One migration's stamps (monotonic s) as the handler logs them."""
    return json.dumps(
        {
            "marks": {k: round(v, 6) for k, v in marks.items()},
            "events": [[round(t, 6), node, r, d] for t, node, r, d in events],
            "switched_by": switched_by,
        },
        sort_keys=True,
    )


class _RouteSwitch:
    """Moves one migrating VMI's hub route from a thread that holds the hub socket.

    Opened before the memory copy, so the switch-over pays one netlink round
    trip and neither of what a fresh socket costs on this path: a helper
    process forked for the netns (``net.HubRoutes``) and pyroute2's event loop,
    set up once per thread on first use (~12 ms), which libvirt's event thread
    (where the resume is seen) would pay every migration. ``request`` is quick
    and safe from any thread; the first request wins.
    """

    def __init__(self, ip: str, index: int, clock: Clock) -> None:
        self.ip, self.index, self.clock = ip, index, clock
        self.marks: dict[str, float] = {}
        self.by: str | None = None  # what the route was switched on
        self._want: str | None = None
        self._closed = False
        self._cv = threading.Condition()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"route {ip}", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def request(self, by: str) -> None:
        with self._cv:
            if self._want is None and not self._closed:
                self._want = by
                self.marks["switch_requested"] = self.clock.now()
                self._cv.notify()

    def finish(self, by: str, timeout: float = 5.0) -> None:
        """Switched when this returns (the migration is over): on the thread,
        or here if that thread could not."""
        self.request(by)
        self._thread.join(timeout)
        if self.by is None:
            self._switch(None, by)

    def cancel(self, timeout: float = 5.0) -> None:
        """No switch from now on (one under way is waited for); the socket closes."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        hub: net.HubRoutes | None = None
        try:
            hub = net.HubRoutes()
        except (HarnessError, OSError) as exc:
            log.warning("route of %s: no hub socket kept open: %s", self.ip, exc)
        self._ready.set()
        try:
            with self._cv:
                while self._want is None and not self._closed:
                    self._cv.wait()
                by = None if self._closed and self._want is None else self._want
            if by is not None:
                self._switch(hub, by)
        finally:
            if hub is not None:
                with contextlib.suppress(OSError):
                    hub.close()

    def _switch(self, hub: net.HubRoutes | None, by: str) -> None:
        self.marks["switch_start"] = self.clock.now()
        try:
            if hub is not None:
                hub.route_vmi(self.ip, self.index)
            else:
                net.route_vmi(self.ip, self.index)
        except (HarnessError, OSError) as exc:
            log.error("route of %s: switch to node %s failed: %s", self.ip, self.index, exc)
            return
        self.marks["switched"] = self.clock.now()
        self.by = by


class VirtHandler:
    """One node's VMIs: converge the domains, write the statuses, migrate off."""

    def __init__(self, node: str, index: int, api: VirtApi, clock: Clock | None = None) -> None:
        self.node, self.index, self.api = node, index, api
        self.clock = clock or RealClock()
        self.wake = threading.Event()
        self.cache = ObjectCache(api, custom_path("virtualmachineinstances"), None, self.wake.set)
        self.vmis = VmiHandler(node, index, self.clock)
        self._gens: dict[str, int] = {}  # VMI uid -> VmiRun generation
        self._known: set[str] = set()  # VMI uids this process started or adopted
        self._migrating: dict[str, threading.Thread] = {}

    def _gen(self, uid: str) -> int:
        return self._gens.setdefault(uid, len(self._gens) + 1)

    def _mine(self) -> list[Obj]:
        return [
            v
            for v in self.cache.items()
            if (_md(v).get("labels") or {}).get(NODE_LABEL) == self.node
            and not _md(v).get("deletionTimestamp")
            and _status(v).get("phase") in ("Scheduled", "Running")
        ]

    def reconcile(self) -> None:
        mine = self._mine()
        wanted: dict[str, tuple[int, str | None]] = {}
        leaving: set[str] = set()
        for v in mine:
            md = _md(v)
            name, uid = md["name"], md["uid"]
            mig = _in_flight(v)
            if mig.get("sourceNode") == self.node:
                leaving.add(name)
            elif (
                uid not in self._known
                and _status(v).get("phase") == "Running"
                and not self.vmis.has_domain(name)
            ):
                # Ran here before this handler started (the node rebooted):
                # KubeVirt does not boot it again; the VM makes a new VMI.
                lost = {"type": "Ready", "status": "False", "reason": "DomainLost"}
                self._write(
                    v, {"phase": "Failed", "reason": "DomainLost", "conditions": [lost]}, None
                )
                continue
            self._known.add(uid)
            wanted[name] = (self._gen(uid), (md.get("annotations") or {}).get(ADDRESS_ANNOTATION))
        arriving = {
            _md(v)["name"]
            for v in self.cache.items()
            if _in_flight(v).get("targetNode") == self.node
        }
        self.vmis.sync(wanted, leaving=leaving)
        self.vmis.sweep_orphans(set(wanted) | arriving)
        for v in mine:
            name = _md(v)["name"]
            run = self.vmis.vmis.get(name)
            if name in leaving:
                if name not in self._migrating:
                    t = threading.Thread(target=self._migrate, args=(v,), name=f"migrate {name}")
                    self._migrating[name] = t
                    t.start()
            elif run is not None and run.generation == self._gens.get(_md(v)["uid"]):
                self._write(v, *desired_status(run))
        for name, t in list(self._migrating.items()):
            if not t.is_alive():
                del self._migrating[name]

    def _write(self, vmi: Obj, status: dict[str, Any], instance: str | None) -> None:
        md = _md(vmi)
        have = (md.get("annotations") or {}).get(INSTANCE_ANNOTATION)
        if _comparable(_status(vmi)) == _comparable(status) and (instance or have) == have:
            return
        now = now_iso()
        for c in status.get("conditions") or ():
            c.setdefault("lastTransitionTime", now)
        body: Obj = {"metadata": {"resourceVersion": md["resourceVersion"]}, "status": status}
        if instance is not None:
            body["metadata"]["annotations"] = {INSTANCE_ANNOTATION: instance}
        path = custom_path("virtualmachineinstances", md["namespace"], md["name"])
        if self.api.patch(path, body):
            log.info("vmi %s/%s: %s%s", md["namespace"], md["name"], status["phase"],
                     f" ({status['reason']})" if status.get("reason") else "")  # fmt: skip

    # --- live migration off this node ---------------------------------------------
    def _migrate(self, vmi: Obj) -> None:
        import libvirt

        # libvirt: the optional 'vm' extra
        from cluster.lab import virt, virtd

        md, mig = _md(vmi), dict(_in_flight(vmi))
        name, target = md["name"], str(mig.get("targetNode"))
        ip = (md.get("annotations") or {}).get(ADDRESS_ANNOTATION)
        outcome: dict[str, Any] = {}
        # Monotonic stamps (the clock every process of the host shares) of the
        # switch-over, logged for ``benchmarks/migration_lab.py`` to line up
        # with its probes: which part of the outage is QEMU's, which the route's.
        marks: dict[str, float] = {}
        events: list[tuple[float, str, str, str]] = []
        route: _RouteSwitch | None = None
        try:
            dst_index = _node_indexes()[target]
            dst_ip = state.node_ip(dst_index)
            if ip:
                self._seed_neighbour(name, ip, target)
                route = _RouteSwitch(ip, dst_index, self.clock)

            def on_event(ev: virt.VirtEvent) -> None:
                # On libvirt's event thread: quick, and never raising into libvirt.
                if ev.domain != name:
                    return
                events.append((ev.at, ev.node, ev.reason, ev.detail))
                pause = (ev.node, ev.reason, ev.detail) == (self.node, "Suspended", "Migrated")
                resume = (ev.node, ev.reason, ev.detail) == (target, "Resumed", "Migrated")
                if pause:
                    marks.setdefault("src_suspended", ev.at)
                elif resume:
                    marks.setdefault("dst_resumed", ev.at)
                if route is not None and resume:
                    # At the resume, not at the pause: switched at the pause,
                    # the destination's tap holds every request of the pause
                    # (QEMU reads no packet while the VM is stopped) and the
                    # guest, whose TCG starts cold in the new QEMU, gets them
                    # all at once at its resume; measured, that burst made the
                    # first answers slower than the timeout and the outage
                    # longer (benchmarks/migration_lab.py's docstring).
                    route.request("resume")

            src = virt.connect(virtd.node_uri(self.node))
            dst = virt.connect(virtd.node_uri(target))
            watches = [
                virt.VirtEvents(src, self.node, clock=self.clock, listener=on_event),
                virt.VirtEvents(dst, target, clock=self.clock, listener=on_event),
            ]
            try:
                marks["call"] = self.clock.now()
                stats = virt.migrate_vmi(
                    src, virtd.node_tcp_uri(dst_ip), dst_ip, name, clock=self.clock
                )
                marks["returned"] = self.clock.now()
                if route is not None:
                    route.finish("return")
            finally:
                for w in watches:
                    w.close()
                for c in (src, dst):
                    with contextlib.suppress(libvirt.libvirtError):
                        c.close()
            outcome = {"completed": True}
            log.info("vmi %s: migrated to %s (QEMU downtime %s ms)", name, target,
                     stats.downtime_ms)  # fmt: skip
        except (HarnessError, OSError, KeyError, libvirt.libvirtError) as exc:
            outcome = {"failed": True, "failureReason": str(exc)[:500]}
            log.error("vmi %s: migration to %s failed: %s", name, target, exc)
        finally:
            # A route switched on the destination's resume stays: the guest
            # runs there even if a later phase of the call failed.
            if route is not None:
                route.cancel()
                marks.update(route.marks)
        by = route.by if route is not None else None
        log.info("vmi %s: migration timeline %s", name, _timeline_json(marks, events, by))
        self._finish_migration(vmi, {**mig, **outcome, "endTimestamp": now_iso()})

    def _seed_neighbour(self, name: str, ip: str, target: str) -> None:
        """Before the copy: the destination knows the guest's MAC (no ARP in the outage).

        Not needed for correctness: without it the destination asks by ARP.
        """
        from cluster.lab import virt  # libvirt: the optional 'vm' extra

        try:
            net.seed_vmi_neighbour(target, ip, virt.vmi_mac(name))
        except (HarnessError, OSError) as exc:
            log.warning("vmi %s: cannot seed %s's neighbour entry: %s", name, target, exc)

    def _finish_migration(self, vmi: Obj, mig: dict[str, Any]) -> None:
        """Write the outcome (and the new node) on a fresh read, until it is taken."""
        md = _md(vmi)
        path = custom_path("virtualmachineinstances", md["namespace"], md["name"])
        for _ in range(20):
            try:
                fresh = self.api.json("GET", path)
            except Exception as exc:  # the API server may be restarting
                log.warning("vmi %s: cannot read it to end its migration: %s", md["name"], exc)
                self.clock.sleep(0.5)
                continue
            body: Obj = {
                "metadata": {"resourceVersion": _md(fresh)["resourceVersion"]},
                "status": {"migrationState": mig},
            }
            if mig.get("completed"):
                body["metadata"]["labels"] = {NODE_LABEL: mig["targetNode"]}
                body["status"]["nodeName"] = mig["targetNode"]
            if self.api.patch(path, body):
                return
        log.error("vmi %s: the end of its migration was never written", md["name"])

    # --- the loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event, period: float = 0.2) -> None:
        """Pass at every change of a VMI and every ``period`` (QEMU's state is polled)."""
        self.cache.start()
        while not self.cache.synced.wait(1.0):
            if stop.is_set():
                return
        while not stop.is_set():
            try:
                self.reconcile()
            except Exception:
                log.exception("pass failed")
            self.wake.wait(period)
            self.wake.clear()

    def shutdown(self) -> None:
        """Stop watching; the domains stay (a stopped handler is not a stopped node)."""
        self.cache.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="virt-handler", description=__doc__)
    parser.add_argument("--node", required=True)
    parser.add_argument("--index", type=int, required=True)
    args = parser.parse_args(argv)
    stop = daemon_stop_event()
    api = VirtApi()
    handler = VirtHandler(args.node, args.index, api)
    log.info("virt-handler of %s up", args.node)
    try:
        handler.run(stop)
    finally:
        handler.shutdown()
        api.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
