"""The lab's virt-controller: VirtualMachines into VMIs, VMIs into virt-launcher pods, migrations.

Started by ``cluster.lab.lifecycle`` (``lab_up(vms=True)``) as
``python -m cluster.lab.kube.virt_controller`` in the hub's network namespace
and cgroup (so the hub's teardown kills it with the control plane). It stands
in for KubeVirt's virt-controller, which cannot be built here (its launcher
needs cgo and libvirt's headers for the guest it manages, FACTS.md), and acts
as KubeVirt documents it, on KubeVirt's own CRDs in the real API server:

- A VirtualMachine whose run strategy wants it running (Always,
  RerunOnFailure, or ``running: true``) gets a VMI of its name, owned by it.
  A VMI that ended (Failed; Succeeded for Always) is deleted, and the next pass
  makes a new one: a crashed guest is a new VMI, not a restart in place.
- A new VMI gets a guest address (the lab's VMI network) and a virt-launcher
  pod, owned by it (the real garbage collector removes it with the VMI), with
  the VMI's labels, affinity, node selector and tolerations, so the real
  scheduler places it, the real kubelet runs it, and the real taint eviction
  takes it off a lost node. Phases: Pending, Scheduling, then Scheduled with
  ``status.nodeName`` once its pod runs; that node's virt-handler then starts
  the guest and writes Running.
- A Scheduled or Running VMI without a live launcher pod (no pod object left,
  or one that ended) is Failed. A Terminating pod on a dead node still counts
  as alive, as in KubeVirt: without fencing such a VM stays down.
- A VirtualMachineInstanceMigration gets a target launcher pod kept off the
  source node (plus ``addedNodeSelector``); once it runs, the VMI's
  ``migrationState`` names source and target and the source's virt-handler
  migrates the domain; the controller then ends the migration (Succeeded or
  Failed) and deletes the launcher pod that lost.

The same process serves the lab's virt-api: its admission webhooks
(``virt_webhooks``) and the pause/unpause subresources behind the aggregator
(``virt_subresources``). What it leaves out of KubeVirt: the addvolume and
removevolume subresources, start-failure back-off, node heartbeats and
``kubevirt.io/schedulable``, DataVolumes and disks other than the lab's guest.
"""

from __future__ import annotations

import argparse
import logging
import threading

from kubernetes.client.exceptions import ApiException

from cluster.lab import net, state
from cluster.lab.kube.virt_api import (
    ADDRESS_ANNOTATION,
    CREATED_BY,
    GROUP,
    LAUNCHER,
    MIGRATION_UID,
    NODE_LABEL,
    VERSION,
    VM_NAME,
    Obj,
    ObjectCache,
    VirtApi,
    custom_path,
    daemon_stop_event,
    now_iso,
    pods_path,
    webhook_tls,
)
from cluster.lab.kube.virt_api import (
    metadata as _md,
)
from cluster.lab.kube.virt_api import (
    status_of as _status,
)
from cluster.lab.kube.virt_subresources import Subresources, libvirt_act, register_apiservice
from cluster.lab.kube.virt_webhooks import Webhooks, register, serve

__all__ = ["VirtController", "address_slots", "launcher_pod", "main", "vmi_of_vm"]

log = logging.getLogger("virt-controller")

_ENDED = ("Failed", "Succeeded")
WEBHOOK_PORT = 8443  # on the hub's bridge address, where the API server calls it
_FIRST_SLOT, _LAST_SLOT = 150, 250  # of net.VMI_SUBNET (below: the benchmarks' guests)


def address_slots() -> range:
    return range(_FIRST_SLOT, _LAST_SLOT + 1)


def _owner(obj: Obj, kind: str) -> Obj:
    md = _md(obj)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "name": md["name"],
        "uid": md["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def vmi_of_vm(vm: Obj) -> Obj:
    """The VMI a VirtualMachine's template describes, owned by the VM."""
    md = _md(vm)
    tmpl = (vm.get("spec") or {}).get("template") or {}
    tmd = tmpl.get("metadata") or {}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VirtualMachineInstance",
        "metadata": {
            "name": md["name"],
            "namespace": md["namespace"],
            "labels": {**(tmd.get("labels") or {}), VM_NAME: md["name"]},
            "annotations": dict(tmd.get("annotations") or {}),
            "ownerReferences": [_owner(vm, "VirtualMachine")],
        },
        "spec": tmpl.get("spec") or {},
    }


def launcher_pod(vmi: Obj, image: str, migration: Obj | None = None) -> Obj:
    """The virt-launcher pod of ``vmi`` (of ``migration``'s target when given).

    Its one container ("compute", as in KubeVirt) holds the VMI's place on its
    node; the guest itself runs under the node's libvirtd (``virt_handler``),
    so a power-off of the node takes both. The pause image ends at SIGTERM at
    once, so an eviction or a deletion ends the pod without a grace wait.
    """
    md, spec = _md(vmi), vmi.get("spec") or {}
    uid = str((migration and _md(migration)["uid"]) or md["uid"])
    labels = {
        **{k: v for k, v in (md.get("labels") or {}).items() if k != NODE_LABEL},
        **LAUNCHER,
        VM_NAME: md["name"],
        CREATED_BY: md["uid"],
    }
    affinity: Obj = dict(spec.get("affinity") or {})
    selector = dict(spec.get("nodeSelector") or {})
    if migration is not None:
        labels[MIGRATION_UID] = uid
        source = _status(vmi).get("nodeName")
        node_aff = dict(affinity.get("nodeAffinity") or {})
        node_aff["requiredDuringSchedulingIgnoredDuringExecution"] = {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": [source]}
                    ]
                }
            ]
        }
        affinity["nodeAffinity"] = node_aff
        selector.update((migration.get("spec") or {}).get("addedNodeSelector") or {})
    pod: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"virt-launcher-{md['name']}-{uid[:5]}",
            "namespace": md["namespace"],
            "labels": labels,
            "ownerReferences": [_owner(vmi, "VirtualMachineInstance")],
        },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "containers": [{"name": "compute", "image": image}],
        },
    }
    if affinity:
        pod["spec"]["affinity"] = affinity
    if selector:
        pod["spec"]["nodeSelector"] = selector
    if spec.get("tolerations"):
        pod["spec"]["tolerations"] = spec["tolerations"]
    return pod


def _pod_alive(pod: Obj) -> bool:
    """Not ended: a Terminating pod counts (its node may be dead, nobody confirmed)."""
    return _status(pod).get("phase") not in _ENDED


def _pod_running(pod: Obj) -> bool:
    st = _status(pod)
    return (
        st.get("phase") == "Running"
        and bool((pod.get("spec") or {}).get("nodeName"))
        and not _md(pod).get("deletionTimestamp")
    )


class VirtController:
    """One level-triggered pass over every VM, VMI and migration (``reconcile``)."""

    def __init__(self, api: VirtApi, image: str) -> None:
        self.api, self.image = api, image
        self.wake = threading.Event()
        self.vms = self._cache(custom_path("virtualmachines"))
        self.vmis = self._cache(custom_path("virtualmachineinstances"))
        self.migrations = self._cache(custom_path("virtualmachineinstancemigrations"))
        self.pods = self._cache(pods_path(), "kubevirt.io=virt-launcher")
        self.caches = [self.vms, self.vmis, self.migrations, self.pods]
        # VMI uid -> the address given it, until its annotation is back in the
        # cache: two VMIs new in one pass must not both get the first free one.
        self._claimed: dict[str, str] = {}

    def _cache(self, path: str, selector: str | None = None) -> ObjectCache:
        return ObjectCache(self.api, path, selector, self.wake.set)

    def start(self, timeout: float = 30.0) -> None:
        for c in self.caches:
            c.start()
        for c in self.caches:
            if not c.synced.wait(timeout):
                raise RuntimeError(f"no first list of {c.path} in {timeout:.0f} s")

    def stop(self) -> None:
        for c in self.caches:
            c.stop()

    def reconcile(self) -> None:
        alive = {_md(v).get("uid") for v in self.vmis.items()}
        self._claimed = {u: ip for u, ip in self._claimed.items() if u in alive}
        for obj, fn in (
            *((o, self._vm) for o in self.vms.items()),
            *((o, self._vmi) for o in self.vmis.items()),
            *((o, self._migration) for o in self.migrations.items()),
        ):
            try:
                fn(obj)
            except ApiException as exc:
                md = _md(obj)
                log.warning("%s %s/%s: %s %s", obj.get("kind"), md.get("namespace"),
                            md.get("name"), exc.status, exc.reason)  # fmt: skip

    # --- VirtualMachine ----------------------------------------------------------------
    def _vm(self, vm: Obj) -> None:
        md, spec = _md(vm), vm.get("spec") or {}
        if md.get("deletionTimestamp"):
            return  # the garbage collector takes its VMI
        ns, name = md["namespace"], md["name"]
        strategy = spec.get("runStrategy") or ("Always" if spec.get("running") else "Halted")
        vmi = self.vmis.get(ns, name)
        if vmi is not None and md["uid"] not in {
            o.get("uid") for o in _md(vmi).get("ownerReferences") or ()
        }:
            vmi = None  # a VMI of the same name this VM did not make: not ours to touch
        elif vmi is None:
            if strategy in ("Always", "RerunOnFailure") and self.api.create(
                custom_path("virtualmachineinstances", ns), vmi_of_vm(vm)
            ):
                log.info("vm %s/%s: created its VMI", ns, name)
        else:
            phase = _status(vmi).get("phase")
            rerun = phase == "Failed" and strategy in ("Always", "RerunOnFailure")
            rerun |= phase == "Succeeded" and strategy == "Always"
            if (rerun or strategy == "Halted") and not _md(vmi).get("deletionTimestamp"):
                self.api.delete(custom_path("virtualmachineinstances", ns, name), grace=0)
                log.info("vm %s/%s: VMI %s; deleted, a new one follows", ns, name, phase)
        self._vm_status(vm, vmi, strategy)

    def _vm_status(self, vm: Obj, vmi: Obj | None, strategy: str) -> None:
        phase = _status(vmi).get("phase") if vmi is not None else None
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (_status(vmi).get("conditions") if vmi else None) or ()
        )
        printable = (
            "Stopped"
            if vmi is None and strategy == "Halted"
            else "Running"
            if phase == "Running"
            else "Starting"
        )
        want: Obj = {"created": vmi is not None, "ready": ready, "printableStatus": printable}
        have = {k: _status(vm).get(k) for k in want}
        # The Ready condition too: kubectl's READY column of a VM reads it.
        conds = {c.get("type"): c.get("status") for c in _status(vm).get("conditions") or ()}
        if have != want or conds.get("Ready") != str(ready):
            md = _md(vm)
            want["conditions"] = [
                {"type": "Ready", "status": str(ready), "lastTransitionTime": now_iso()}
            ]
            self.api.patch(
                custom_path("virtualmachines", md["namespace"], md["name"]) + "/status",
                {"metadata": {"resourceVersion": md["resourceVersion"]}, "status": want},
            )

    # --- VirtualMachineInstance ------------------------------------------------------
    def _launchers(self, vmi: Obj) -> list[Obj]:
        uid = _md(vmi)["uid"]
        return [p for p in self.pods.items() if (_md(p).get("labels") or {}).get(CREATED_BY) == uid]

    def _address(self, vmi: Obj) -> str | None:
        """The VMI's guest address, or a free one of the lab's VMI network."""
        have = (_md(vmi).get("annotations") or {}).get(ADDRESS_ANNOTATION)
        if have:
            return str(have)
        uid = _md(vmi)["uid"]
        if uid in self._claimed:
            return self._claimed[uid]
        used = {
            (_md(v).get("annotations") or {}).get(ADDRESS_ANNOTATION) for v in self.vmis.items()
        } | set(self._claimed.values())
        ip = next((ip for s in address_slots() if (ip := net.vmi_ip(s)) not in used), None)
        if ip is not None:
            self._claimed[uid] = ip
        return ip

    def _patch_vmi(self, vmi: Obj, body: Obj) -> bool:
        md = _md(vmi)
        body.setdefault("metadata", {})["resourceVersion"] = md["resourceVersion"]
        return self.api.patch(
            custom_path("virtualmachineinstances", md["namespace"], md["name"]), body
        )

    def _fail(self, vmi: Obj, reason: str) -> None:
        md = _md(vmi)
        if self._patch_vmi(
            vmi,
            {
                "status": {
                    "phase": "Failed",
                    "reason": reason,
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "False",
                            "reason": reason,
                            "lastTransitionTime": now_iso(),
                        }
                    ],
                }
            },
        ):
            log.info("vmi %s/%s: Failed (%s)", md["namespace"], md["name"], reason)

    def _vmi(self, vmi: Obj) -> None:
        md, st = _md(vmi), _status(vmi)
        if md.get("deletionTimestamp"):
            return
        ns, name, phase = md["namespace"], md["name"], st.get("phase") or ""
        pods = self._launchers(vmi)
        if phase in ("", "Pending", "Scheduling"):
            primary = next((p for p in pods if MIGRATION_UID not in _md(p).get("labels", {})), None)
            if primary is None:
                address = self._address(vmi)
                if address is None:
                    self._fail(vmi, "NoGuestAddress")
                    return
                self.api.create(pods_path(ns), launcher_pod(vmi, self.image))
                self._patch_vmi(
                    vmi,
                    {
                        "metadata": {"annotations": {ADDRESS_ANNOTATION: address}},
                        "status": {"phase": "Scheduling"},
                    },
                )
                return
            if not _pod_alive(primary):
                self._fail(vmi, "LauncherPodEnded")
            elif _pod_running(primary):
                node = primary["spec"]["nodeName"]
                if self._patch_vmi(
                    vmi,
                    {
                        "metadata": {"labels": {NODE_LABEL: node}},
                        "status": {
                            "phase": "Scheduled",
                            "nodeName": node,
                            "activePods": {_md(primary)["uid"]: node},
                        },
                    },
                ):
                    log.info("vmi %s/%s: Scheduled on %s", ns, name, node)
            elif phase == "":
                self._patch_vmi(vmi, {"status": {"phase": "Pending"}})
            return
        if phase not in ("Scheduled", "Running"):
            return
        mig = st.get("migrationState") or {}
        if mig and not mig.get("completed") and not mig.get("failed"):
            return  # the source handler is moving it; the migration decides
        node = st.get("nodeName")
        if not any(_pod_alive(p) for p in pods if (p.get("spec") or {}).get("nodeName") == node):
            self._fail(vmi, "NoLauncherPod")
            return
        self._evacuate(vmi)

    def _evacuate(self, vmi: Obj) -> None:
        """An eviction the webhook turned into an evacuation: migrate the VMI away."""
        md, st = _md(vmi), _status(vmi)
        away = st.get("evacuationNodeName")
        if not away:
            return
        ns, name = md["namespace"], md["name"]
        if away != st.get("nodeName"):
            self._patch_vmi(vmi, {"status": {"evacuationNodeName": None}})  # it left
            return
        pending = [
            m
            for m in self.migrations.items()
            if (_md(m).get("namespace"), (m.get("spec") or {}).get("vmiName")) == (ns, name)
            and _status(m).get("phase") not in _ENDED
        ]
        if pending or st.get("phase") != "Running":
            return
        # One name per (VMI, last migration): a retried pass makes no second one.
        last = str((st.get("migrationState") or {}).get("migrationUid") or md["uid"])
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": f"kubevirt-evacuation-{name}-{last[:5]}", "namespace": ns},
            "spec": {"vmiName": name},
        }
        if self.api.create(custom_path("virtualmachineinstancemigrations", ns), body):
            log.info("vmi %s/%s: evacuation of %s: migration created", ns, name, away)

    # --- VirtualMachineInstanceMigration -----------------------------------------------
    def _patch_migration(self, mig: Obj, status: Obj) -> bool:
        md = _md(mig)
        path = custom_path("virtualmachineinstancemigrations", md["namespace"], md["name"])
        body = {"metadata": {"resourceVersion": md["resourceVersion"]}, "status": status}
        # Its CRD has a status subresource: the main resource ignores status.
        return self.api.patch(path + "/status", body)

    def _end_migration(self, mig: Obj, vmi: Obj | None, ok: bool, why: str) -> None:
        md = _md(mig)
        uid = md["uid"]
        now_on = _status(vmi).get("nodeName") if vmi is not None else None
        for p in self._launchers(vmi) if vmi is not None else ():
            is_target = (_md(p).get("labels") or {}).get(MIGRATION_UID) == uid
            node = (p.get("spec") or {}).get("nodeName")
            loser = (not is_target and node != now_on) if ok else is_target
            if loser:
                self.api.delete(pods_path(_md(p)["namespace"], _md(p)["name"]))
        if self._patch_migration(mig, {"phase": "Succeeded" if ok else "Failed"}):
            log.info("migration %s/%s: %s (%s)", md["namespace"], md["name"],
                     "Succeeded" if ok else "Failed", why)  # fmt: skip

    def _migration(self, mig: Obj) -> None:
        md, phase = _md(mig), _status(mig).get("phase") or ""
        if phase in _ENDED or md.get("deletionTimestamp"):
            return
        ns, uid = md["namespace"], md["uid"]
        vmi = self.vmis.get(ns, str((mig.get("spec") or {}).get("vmiName", "")))
        if vmi is None:
            self._end_migration(mig, None, False, "no such VMI")
            return
        st = _status(vmi)
        state = st.get("migrationState") or {}
        if state.get("migrationUid") == uid:
            if state.get("completed"):
                self._end_migration(mig, vmi, True, f"{state.get('sourceNode')} -> "
                                    f"{state.get('targetNode')}")  # fmt: skip
            elif state.get("failed"):
                self._end_migration(mig, vmi, False, str(state.get("failureReason", "")))
            elif phase != "Running":
                self._patch_migration(mig, {"phase": "Running"})
            return
        if st.get("phase") != "Running":
            if phase == "":
                self._end_migration(mig, vmi, False, f"VMI is {st.get('phase')}, not Running")
            return
        if state and not state.get("completed") and not state.get("failed"):
            return  # another migration of this VMI is in flight: wait for it
        target = next(
            (
                p
                for p in self._launchers(vmi)
                if (_md(p).get("labels") or {}).get(MIGRATION_UID) == uid
            ),
            None,
        )
        if target is None:
            self.api.create(pods_path(ns), launcher_pod(vmi, self.image, mig))
            if phase == "":
                self._patch_migration(mig, {"phase": "Scheduling"})
            return
        if not _pod_alive(target):
            self._end_migration(mig, vmi, False, "target pod ended")
        elif (target.get("spec") or {}).get("nodeName") == st.get("nodeName"):
            # Placed while the VMI was elsewhere (it has moved since): no move left to make.
            self._end_migration(mig, vmi, False, "target pod is on the VMI's node")
        elif _pod_running(target):
            state = {
                "migrationUid": uid,
                "sourceNode": st.get("nodeName"),
                "targetNode": target["spec"]["nodeName"],
                "targetPod": _md(target)["name"],
                "startTimestamp": now_iso(),
                "mode": "PreCopy",
                # A merge patch keeps what it does not name: clear the last
                # migration's outcome, or this one would read as ended already.
                "completed": None,
                "failed": None,
                "failureReason": None,
                "endTimestamp": None,
            }
            if self._patch_vmi(vmi, {"status": {"migrationState": state}}):
                self._patch_migration(mig, {"phase": "TargetReady"})
                log.info("migration %s/%s: target ready on %s", ns, md["name"],
                         state["targetNode"])  # fmt: skip

    # --- the loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event, period: float = 0.5) -> None:
        """Reconcile at every change, and at least every ``period`` (level-triggered)."""
        while not stop.is_set():
            self.wake.wait(period)
            self.wake.clear()
            self.reconcile()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="virt-controller", description=__doc__)
    parser.add_argument("--image", required=True, help="the virt-launcher pods' image")
    args = parser.parse_args(argv)
    stop = daemon_stop_event()
    api = VirtApi()
    ctl = VirtController(api, args.image)
    ctl.start()
    hooks = Webhooks(api, ctl.pods.get, ctl.vmis.items)
    tls = webhook_tls()
    subs = Subresources(api, ctl.vmis.get, libvirt_act)
    server = serve(hooks, state.HUB_IP, WEBHOOK_PORT, tls, subs)
    register(api, f"https://{state.HUB_IP}:{WEBHOOK_PORT}", tls[2])
    register_apiservice(api, tls[2], WEBHOOK_PORT)
    log.info("virt-controller up: %d VMs, %d VMIs; webhooks on %s:%d", len(ctl.vms.items()),
             len(ctl.vmis.items()), state.HUB_IP, WEBHOOK_PORT)  # fmt: skip
    try:
        ctl.run(stop)
    finally:
        server.shutdown()
        ctl.stop()
        api.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
