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
write; the target's handler then adopts the running domain.
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
        switched: list[bool] = []
        lock = threading.Lock()
        try:
            dst_index = _node_indexes()[target]
            dst_ip = state.node_ip(dst_index)

            def switch() -> None:
                with lock:
                    if ip and not switched:
                        net.route_vmi(ip, dst_index)
                        switched.append(True)

            def on_event(ev: virt.VirtEvent) -> None:
                if ev.domain == name and (ev.reason, ev.detail) == ("Resumed", "Migrated"):
                    with contextlib.suppress(HarnessError, OSError):
                        switch()  # on libvirt's event thread: the guest runs there now

            src = virt.connect(virtd.node_uri(self.node))
            dst = virt.connect(virtd.node_uri(target))
            watch = virt.VirtEvents(dst, target, clock=self.clock, listener=on_event)
            try:
                stats = virt.migrate_vmi(
                    src, virtd.node_tcp_uri(dst_ip), dst_ip, name, clock=self.clock
                )
                switch()
            finally:
                watch.close()
                for c in (src, dst):
                    with contextlib.suppress(libvirt.libvirtError):
                        c.close()
            outcome = {"completed": True}
            log.info("vmi %s: migrated to %s (QEMU downtime %s ms)", name, target,
                     stats.downtime_ms)  # fmt: skip
        except (HarnessError, OSError, KeyError, libvirt.libvirtError) as exc:
            outcome = {"failed": True, "failureReason": str(exc)[:500]}
            log.error("vmi %s: migration to %s failed: %s", name, target, exc)
        self._finish_migration(vmi, {**mig, **outcome, "endTimestamp": now_iso()})

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
