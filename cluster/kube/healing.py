"""``KubeHealing``: the healer actions of ``KubeBackend`` on a real cluster.

Filled with the facade's ``KubeClient``, ``KubeReader`` and ``KubeFaults`` (a
hung guest is resumed by the hang command's counterpart); read by the facade,
whose ``cluster.api.HealerActions`` methods delegate here. Fencing taints the
node out-of-service (the node keeps its other taints), reschedule
force-deletes the pod or VMI, resume unpauses or resumes a guest, and a live
migration is started as a VirtualMachineInstanceMigration and followed
through a watch to its end.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import partial

from kubernetes.watch.watch import iter_resp_lines
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_fixed

from cluster.api import WorkloadKind
from cluster.kube.client import KV, OUT_OF_SERVICE, KubeClient, Obj
from cluster.kube.faults import KubeFaults
from cluster.kube.reading import KubeReader
from cluster.kube.watch import ResourceRef, raw_request, resource_path
from core.errors import BackendError

__all__ = ["KubeHealing"]


class KubeHealing:
    """Fence, reschedule, resume and migrate the config's targets."""

    def __init__(self, k: KubeClient, r: KubeReader, f: KubeFaults) -> None:
        self.k, self.r, self.f = k, r, f
        self._restart_healing = True  # the kubelet's own behaviour (restartPolicy Always)

    # --- healer actions ------------------------------------------------------------
    def restart_healing(self) -> bool:
        return self._restart_healing

    def set_restart_healing(self, enabled: bool) -> None:
        # The kubelet always restarts containers; this flag only tells the
        # harness's own watchdog healer whether to act.
        self._restart_healing = enabled

    def _set_taints(self, node: str, add: bool) -> None:
        """Add or remove the out-of-service taint, keeping every other taint.

        The taints are one list, so this is a read-modify-write. The node lifecycle
        controller (or a user) may change the list in between; the resourceVersion
        makes the API refuse the stale write (409) instead of dropping their taint,
        and the list is read again.
        """

        def write() -> None:
            raw = self.k.target_node(node)
            taints = [
                t
                for t in (raw.get("spec") or {}).get("taints") or ()
                if t.get("key") != OUT_OF_SERVICE["key"]
            ]
            if add:
                taints.append(dict(OUT_OF_SERVICE))
            body = {
                "metadata": {"resourceVersion": raw["metadata"]["resourceVersion"]},
                "spec": {"taints": taints or None},
            }
            self.k.call("patch", "nodes", self.k.core.patch_node, node, body)

        Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, BackendError) and "(409)" in str(e)),
            stop=stop_after_attempt(5),
            wait=wait_fixed(0.05),
            sleep=self.k.sleep,
            reraise=True,
        )(write)

    def fence(self, node: str) -> None:
        self.k.target_node(node)
        self.k.act(
            f"taint {node} {OUT_OF_SERVICE['key']}=nodeshutdown:NoExecute",
            lambda: self._set_taints(node, True),
        )

    def unfence(self, node: str) -> None:
        self.k.target_node(node)
        self.k.act(
            f"remove taint {OUT_OF_SERVICE['key']} from {node}",
            lambda: self._set_taints(node, False),
        )

    def _force_delete_pod(self, ns: str, name: str) -> None:
        """Delete with grace 0: its node is fenced, nobody will confirm a stop."""
        self.k.act(
            f"force-delete pod {ns}/{name}",
            lambda: self.k.ignore_404(
                "delete",
                "pods",
                self.k.core.delete_namespaced_pod,
                name,
                ns,
                grace_period_seconds=0,
            ),
        )

    def reschedule(self, workload: str) -> None:
        w = self.r.workload(workload)
        if w.node is not None:
            self.k.target_node(w.node)
        if w.kind is WorkloadKind.POD:
            pod = self.r.pod_of(workload)
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            self._force_delete_pod(ns, name)
            return
        vmi = self.r.vmi_of(workload)
        ns, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
        try:
            launcher = self.r.launcher_of(vmi)
            lname = launcher["metadata"]["name"]
            self._force_delete_pod(ns, lname)
        except BackendError:
            pass  # no launcher left: deleting the VMI is enough
        self.k.act(
            f"force-delete VMI {ns}/{name}",
            lambda: self.k.ignore_404(
                "delete",
                "virtualmachineinstances",
                self.k.custom.delete_namespaced_custom_object,
                *KV,
                ns,
                "virtualmachineinstances",
                name,
                grace_period_seconds=0,
            ),
        )

    def start_migration(self, workload: str, node: str | None = None) -> str | None:
        """Start a live migration of the workload's VMI; the migration's name."""
        self.k.require_kubevirt()
        vmi = self.r.vmi_of(workload)
        ns = vmi["metadata"]["namespace"]
        body: Obj = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstanceMigration",
            "metadata": {
                "generateName": f"rto-{vmi['metadata']['name']}-",
                "labels": self.k.labels(workload),
            },
            "spec": {"vmiName": vmi["metadata"]["name"]},
        }
        if node is not None:
            # KubeVirt >= 1.3: the target must also match this selector.
            body["spec"]["addedNodeSelector"] = {"kubernetes.io/hostname": node}
        made = self.k.act(
            f"create VirtualMachineInstanceMigration for {ns}/{vmi['metadata']['name']}",
            lambda: self.k.call(
                "create",
                "virtualmachineinstancemigrations",
                self.k.custom.create_namespaced_custom_object,
                *KV,
                ns,
                "virtualmachineinstancemigrations",
                body,
            ),
        )
        return None if made is None else str(made["metadata"]["name"])

    def wait_migration(self, name: str, timeout: int = 300) -> str:
        """Follow one migration through a watch until Succeeded/Failed; its last phase."""
        ns = self.k.config.namespaces[0]
        resp = self.k.call(
            "watch",
            "virtualmachineinstancemigrations",
            raw_request,
            self.k.api,
            "GET",
            resource_path(ResourceRef(*KV, "virtualmachineinstancemigrations", ns)),
            [
                ("watch", "true"),
                ("timeoutSeconds", timeout),
                ("fieldSelector", f"metadata.name={name}"),
            ],
            timeout=(5, timeout + 10),
        )
        phase = ""
        try:
            for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                if not line:
                    continue
                obj = json.loads(line).get("object") or {}
                if obj.get("metadata", {}).get("name") != name:
                    continue
                phase = (obj.get("status") or {}).get("phase", "")
                if phase in ("Succeeded", "Failed"):
                    break
        finally:
            resp.close()
        return phase

    def migrate(self, workload: str, node: str | None = None) -> dict[str, str]:
        """Live-migrate and wait for the end (the Backend contract); figures as strings."""
        source = self.r.workload(workload).node or ""
        name = self.start_migration(workload, node)
        if name is None:  # dry-run
            return {"downtime_ms": "", "total_ms": "", "source": source, "target": ""}
        phase = self.wait_migration(name)
        if phase != "Succeeded":
            raise BackendError(f"migration {name} of {workload} ended {phase or 'without a phase'}")
        state = (self.r.vmi_of(workload).get("status") or {}).get("migrationState") or {}
        total = ""
        if state.get("startTimestamp") and state.get("endTimestamp"):
            t0 = datetime.fromisoformat(state["startTimestamp"].replace("Z", "+00:00"))
            t1 = datetime.fromisoformat(state["endTimestamp"].replace("Z", "+00:00"))
            total = str(int((t1 - t0).total_seconds() * 1000))
        # KubeVirt does not publish QEMU's downtime: the recorder's probes measure it.
        return {
            "downtime_ms": "",
            "total_ms": total,
            "source": source,
            "target": str(state.get("targetNode", "")),
        }

    def hang_workload(self, workload: str) -> None:
        if self.r.workload(workload).kind is not WorkloadKind.VMI:
            raise BackendError(f"{workload} is a pod: only a VMI guest can be hung")
        self.f.hang_guest(workload)

    def resume_workload(self, workload: str) -> None:
        st = self.r.workload(workload)
        if st.kind is not WorkloadKind.VMI:
            raise BackendError(f"{workload} is a pod: only a VMI guest can be resumed")
        paused = st.condition("Paused")
        if paused is not None and paused.status:
            vmi = self.r.vmi_of(workload)
            ns, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
            self.k.act(f"unpause VMI {ns}/{name}", partial(self.k.sub, ns, name, "unpause"))
        else:
            self.f.hang_guest(workload, resume=True)
