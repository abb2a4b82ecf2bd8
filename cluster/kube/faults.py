"""``KubeFaults``: the faults ``KubeBackend`` injects on a real cluster, and their reverts.

Filled with the facade's ``KubeClient`` and ``KubeReader`` (and an optional
``PowerDriver``); read by the facade, whose ``cluster.api.FaultActions`` methods
delegate here. Kill and hang go through the exec subresource, cordon and evict
(backing off while a PodDisruptionBudget says not now) through the API, network
partitions through the power driver when it is also a ``PartitionDriver`` (the
node's owner cuts from outside the node), else a NetworkPolicy or a privileged
node pod, volume failures through a hot-unplug (VMI) or fsfreeze (pod). Reverts
read their state back from the cluster (the VM spec keeps the unplugged volume),
so ``rto revert`` after a killed harness can undo a fault from the journal alone
(a pod cut made through a driver is healed at the pod's address then).
"""

from __future__ import annotations

import json
from functools import partial

from kubernetes.client.exceptions import ApiException
from tenacity import RetryError, Retrying, retry_if_exception, retry_if_result, wait_exponential

from cluster.api import VolumeFailure, WorkloadKind
from cluster.kube.client import KV, KubeClient, Obj
from cluster.kube.cut_records import CutRecords
from cluster.kube.power import PartitionDriver, PowerDriver, get_power_driver
from cluster.kube.reading import KubeReader
from core.errors import BackendError
from core.wait import stop_after

__all__ = ["KubeFaults"]


class KubeFaults:
    """Process, node, network and volume faults on the config's targets."""

    def __init__(self, k: KubeClient, r: KubeReader, power: PowerDriver | None = None) -> None:
        self.k, self.r = k, r
        self._power = power
        # workload -> (node, IP) of the pod cuts made through a PartitionDriver.
        self._pod_cuts: dict[str, tuple[str, str]] = {}
        self._cut_records = CutRecords(k)

    # --- faults ------------------------------------------------------------------
    def kill_main_process(self, workload: str) -> None:
        w = self.r.workload(workload)
        if w.kind is WorkloadKind.POD:
            pod = self.r.pod_of(workload)
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            container = pod["spec"]["containers"][0]["name"]
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            cid = next(
                (c.get("containerID", "") for c in statuses if c.get("name") == container), ""
            ).rpartition("://")[2]
            if not cid:
                raise BackendError(f"{ns}/{name}:{container} has no running container to kill")
            node = pod["spec"]["nodeName"]
            self.k.act(
                f"SIGKILL the main process of {ns}/{name}:{container} (container {cid[:12]}) "
                f"from a node pod on {node}",
                lambda: self._kill_from_node(node, cid),
            )
            return
        launcher = self.r.launcher_of(self.r.vmi_of(workload))
        ns, name = launcher["metadata"]["namespace"], launcher["metadata"]["name"]
        self.k.act(
            f"exec kill -9 QEMU in {ns}/{name}:compute",
            lambda: self.k.call(
                "create",
                "pods/exec",
                self.k.executor,
                self.k.api,
                ns,
                name,
                "compute",
                ["sh", "-c", "kill -9 $(pgrep -f qemu-kvm || pgrep -f qemu-system)"],
            ),
        )

    def _kill_from_node(self, node: str, container_id: str, timeout: float = 60.0) -> None:
        """SIGKILL a container's pid 1 from the node's PID namespace, then remove the node pod.

        Not ``exec kill -9 1`` in the container: the kernel drops a SIGKILL sent
        to a PID namespace's init from inside that namespace, so the exec
        succeeds and nothing dies (seen on the lab's real kubelet; an ephemeral
        container shares the namespace and fails the same way). From the host
        PID namespace the main process is the one whose cgroup path names the
        container and whose innermost PID is 1 (``NSpid``), whatever the cgroup
        driver. The node pod fails when it finds no such process.
        """
        script = (
            "n=0; for f in /proc/[0-9]*/cgroup; do "
            f'grep -q {container_id} "$f" 2>/dev/null || continue; '
            "p=${f#/proc/}; p=${p%/cgroup}; "
            'grep -Eq "^NSpid:.*[[:space:]]1$" /proc/$p/status 2>/dev/null || continue; '
            'kill -9 "$p" && n=$((n+1)); done; echo "killed $n"; [ "$n" -gt 0 ]'
        )
        self._node_pod(node, "kill", script)
        ns, name = self.k.config.namespaces[0], f"rto-node-kill-{node}"
        deadline = self.k.clock.now() + timeout
        phase = "Pending"
        while self.k.clock.now() < deadline:
            resp = self.k.call(
                "get", "pods", self.k.core.read_namespaced_pod, name, ns, _preload_content=False
            )
            phase = (json.loads(resp.data).get("status") or {}).get("phase") or "Pending"
            if phase in ("Succeeded", "Failed"):
                break
            self.k.sleep(0.2)
        self.k.ignore_404("delete", "pods", self.k.core.delete_namespaced_pod, name, ns)
        if phase != "Succeeded":
            raise BackendError(
                f"node pod {ns}/{name} did not kill container {container_id[:12]} on {node} "
                f"(phase {phase} after at most {timeout:.0f} s)"
            )

    def hang_guest(self, workload: str, resume: bool = False) -> None:
        """Hang the guest via the configured command (default: an NMI that panics
        the harness's guest; its watchdog then resets it), or resume it."""
        vmi = self.r.vmi_of(workload)
        launcher = self.r.launcher_of(vmi)
        ns = vmi["metadata"]["namespace"]
        domain = f"{ns}_{vmi['metadata']['name']}"
        cmd = self.k.config.guest_resume_command if resume else self.k.config.guest_hang_command
        argv = [a.format(domain=domain) for a in cmd]
        self.k.act(
            f"exec {' '.join(argv)} in {launcher['metadata']['name']}:compute",
            lambda: self.k.call(
                "create",
                "pods/exec",
                self.k.executor,
                self.k.api,
                ns,
                launcher["metadata"]["name"],
                "compute",
                argv,
            ),
        )

    def cordon(self, node: str) -> None:
        self.k.target_node(node)
        self.k.act(
            f"cordon node {node}",
            lambda: self.k.call(
                "patch", "nodes", self.k.core.patch_node, node, {"spec": {"unschedulable": True}}
            ),
        )

    def uncordon(self, node: str) -> None:
        self.k.target_node(node)
        self.k.act(
            f"uncordon node {node}",
            lambda: self.k.call(
                "patch", "nodes", self.k.core.patch_node, node, {"spec": {"unschedulable": None}}
            ),
        )

    def evict_pod(self, ns: str, pod: str, patience: float = 60.0) -> None:
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": ns},
        }

        def blocked(exc: BaseException) -> bool:
            return isinstance(exc, BackendError) and "(429)" in str(exc)

        # 429 = a PodDisruptionBudget says not now: wait and ask again, as kubectl drain does.
        retrying = Retrying(
            retry=retry_if_exception(blocked),
            stop=stop_after(self.k.clock, patience),
            wait=wait_exponential(multiplier=0.5, max=5),
            sleep=self.k.sleep,
            reraise=True,
        )
        try:
            retrying(
                self.k.call,
                "create",
                "pods/eviction",
                self.k.core.create_namespaced_pod_eviction,
                pod,
                ns,
                body,
            )
        except BackendError as exc:
            if "(404)" in str(exc):
                # Gone while the eviction was retried: KubeVirt refuses a VMI's
                # launcher pod eviction (429) and migrates it away, then deletes
                # the pod. A drain counts that as done, as kubectl drain does.
                return
            if blocked(exc):
                raise BackendError(
                    f"eviction of {ns}/{pod} blocked by a PodDisruptionBudget "
                    f"or KubeVirt's evacuation for {patience:.0f} s: {exc}"
                ) from exc
            raise

    def evict(self, workload: str, patience: float = 60.0) -> None:
        w = self.r.workload(workload)
        obj = (
            self.r.pod_of(workload)
            if w.kind is WorkloadKind.POD
            else self.r.launcher_of(self.r.vmi_of(workload))
        )
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        self.k.act(f"evict pod {ns}/{name}", lambda: self.evict_pod(ns, name, patience))

    def _driver(self) -> PowerDriver:
        if self._power is None:
            self._power = get_power_driver(self.k.config.power_driver, self.k.config.power_options)
        return self._power

    def power_off(self, node: str) -> None:
        self.k.target_node(node)
        self.k.act(
            f"power off {node} ({self.k.config.power_driver})",
            lambda: self._driver().power_off(node),
        )

    def power_on(self, node: str) -> None:
        self.k.target_node(node)
        self.k.act(
            f"power on {node} ({self.k.config.power_driver})", lambda: self._driver().power_on(node)
        )

    def _policy_name(self, workload: str) -> str:
        return f"rto-partition-{workload}"

    def _partitioner(self) -> PartitionDriver | None:
        """The configured driver when it can cut networks itself, else None."""
        driver = self._driver()
        return driver if isinstance(driver, PartitionDriver) else None

    def _address_of(self, workload: str) -> tuple[str, str] | None:
        """(node, IP) of the workload's pod, or of its VMI; None while it has none.

        No pod and no VMI is an answer, not an error (a heal replayed after the
        workload is gone); a failing API call still raises.
        """
        pod = self.r.current_pods().get(workload)
        if pod is not None:
            ip = (pod.get("status") or {}).get("podIP")
            node = (pod.get("spec") or {}).get("nodeName")
        else:
            vmi = next(
                (v for v in self.r.raw_vmis() if self.r.vmi_status(v).name == workload), None
            )
            if vmi is None:
                return None
            ifaces = (vmi.get("status") or {}).get("interfaces") or []
            ip = ifaces[0].get("ipAddress") if ifaces else None
            node = (vmi.get("status") or {}).get("nodeName")
        return (str(node), str(ip)) if ip and node else None

    def partition_workload(self, workload: str) -> None:
        driver = self._partitioner()
        if driver is not None:
            self.r.workload(workload)
            where = self._address_of(workload)
            if where is None:
                raise BackendError(f"workload {workload!r} has no address yet: nothing to cut off")
            node, ip = where

            def cut() -> None:
                # Healed where it was cut, even if the pod moves meanwhile (an
                # eviction) or the harness dies: recorded in the cluster first.
                self._cut_records.add(workload, node, ip)
                driver.partition_pod(node, ip)
                self._pod_cuts[workload] = (node, ip)

            self.k.act(
                f"cut {workload} ({ip}) off the network on {node} "
                f"({self.k.config.power_driver} driver)",
                cut,
            )
            return
        self.r.workload(workload)
        ns = self.k.config.namespaces[0]
        body: Obj = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": self._policy_name(workload), "labels": self.k.labels(workload)},
            "spec": {
                "podSelector": {"matchLabels": {self.k.config.workload_label: workload}},
                "policyTypes": ["Ingress", "Egress"],
            },
        }
        self.k.act(
            f"create NetworkPolicy {ns}/{body['metadata']['name']} (deny all)",
            lambda: self.k.call(
                "create", "networkpolicies", self.k.net.create_namespaced_network_policy, ns, body
            ),
        )

    def heal_workload_partition(self, workload: str) -> None:
        driver = self._partitioner()
        if driver is not None:
            # The cut this process made, those recorded in the cluster (a journal
            # replay after a crash of the harness knows only the name), and the
            # workload's address now (a cut recorded by nothing: an older harness).
            made = self._pod_cuts.get(workload)
            cuts: list[tuple[str, str] | None] = [made]
            cuts += [*self._cut_records.cuts(workload), self._address_of(workload)]
            for node, ip in dict.fromkeys(c for c in cuts if c):
                self.k.act(
                    f"heal the network cut of {workload} ({ip}) on {node} "
                    f"({self.k.config.power_driver} driver)",
                    partial(driver.heal_pod_partition, node, ip),
                )
            if not self.k.dry_run:  # after the heals: a failed one is retried from it
                self._cut_records.forget(workload)
            self._pod_cuts.pop(workload, None)
            return
        ns, name = self.k.config.namespaces[0], self._policy_name(workload)
        self.k.act(
            f"delete NetworkPolicy {ns}/{name}",
            lambda: self.k.ignore_404(
                "delete", "networkpolicies", self.k.net.delete_namespaced_network_policy, name, ns
            ),
        )

    def _node_pod(self, node: str, purpose: str, script: str) -> None:
        """A privileged pod on the node (host network and PID) running ``script``."""
        ns, name = self.k.config.namespaces[0], f"rto-node-{purpose}-{node}"
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"rto.harness/node-pod": purpose}},
            "spec": {
                "nodeName": node,
                "hostNetwork": True,
                "hostPID": True,
                "restartPolicy": "Never",
                "tolerations": [{"operator": "Exists"}],
                "containers": [
                    {
                        "name": "node",
                        "image": self.k.config.node_pod_image,
                        "command": [*self.k.config.node_pod_enter, "sh", "-c", script],
                        "securityContext": {"privileged": True},
                    }
                ],
            },
        }
        self.k.ignore_404("delete", "pods", self.k.core.delete_namespaced_pod, name, ns)
        self._wait_pod_gone(ns, name)
        try:
            self.k.call("create", "pods", self.k.core.create_namespaced_pod, ns, body)
        except BackendError as exc:
            refusal = _privileged_refusal(exc.__cause__)
            if refusal is None:
                raise
            raise BackendError(
                f"the {purpose} fault on node {node} needs a privileged pod (host network "
                f"and PID) in namespace {ns}, and the cluster refuses it: {refusal}. Let "
                f"{ns} run privileged pods (namespace label "
                "pod-security.kubernetes.io/enforce=privileged; an API server with "
                "--allow-privileged=true), or set power_driver in the kube config to a "
                "driver that reaches the node from outside; nothing was injected"
            ) from None

    def _wait_pod_gone(self, ns: str, name: str, patience: float = 60.0) -> None:
        """Until the node pod of the same name has ended (its grace period: the
        partition pod lifts its cut on SIGTERM). A create before that is refused
        with 409 "object is being deleted": a second cut of a node soon after the
        first one's heal."""

        def present() -> bool:
            try:
                self.k.call("get", "pods", self.k.core.read_namespaced_pod, name, ns)
            except BackendError as exc:
                if "(404)" in str(exc):
                    return False
                raise
            return True

        try:
            Retrying(
                retry=retry_if_result(bool),
                stop=stop_after(self.k.clock, patience),
                wait=wait_exponential(multiplier=0.1, max=2),
                sleep=self.k.sleep,
            )(present)
        except RetryError:
            raise BackendError(
                f"node pod {ns}/{name} of an earlier fault is still terminating after "
                f"{patience:g} s (is the kubelet of its node up?); delete it and try again"
            ) from None

    def partition_node(self, node: str, max_seconds: int = 600) -> None:
        self.k.target_node(node)
        driver = self._partitioner()
        if driver is not None:
            self.k.act(
                f"cut node {node} off the network ({self.k.config.power_driver} driver)",
                lambda: driver.partition_node(node),
            )
            return
        # The node cannot hear a revert while cut off: the pod lifts the cut by
        # itself after max_seconds, and on SIGTERM once the kubelet is back.
        script = (
            "iptables -N RTO-CUT; iptables -A RTO-CUT -i lo -j RETURN; "
            "iptables -A RTO-CUT -j DROP; iptables -I INPUT -j RTO-CUT; "
            "iptables -I OUTPUT -j RTO-CUT; "
            "trap 'iptables -D INPUT -j RTO-CUT; iptables -D OUTPUT -j RTO-CUT; "
            "iptables -F RTO-CUT; iptables -X RTO-CUT; exit 0' TERM EXIT; "
            f"sleep {max_seconds} & wait"
        )
        self.k.act(
            f"cut node {node} off the network (node pod, {max_seconds} s max)",
            lambda: self._node_pod(node, "partition", script),
        )

    def heal_node_partition(self, node: str) -> None:
        self.k.target_node(node)
        driver = self._partitioner()
        if driver is not None:
            self.k.act(
                f"heal the network cut of node {node} ({self.k.config.power_driver} driver)",
                lambda: driver.heal_node_partition(node),
            )
            return
        ns, name = self.k.config.namespaces[0], f"rto-node-partition-{node}"
        self.k.act(
            f"delete node pod {ns}/{name} (lifts the cut)",
            lambda: self.k.ignore_404(
                "delete", "pods", self.k.core.delete_namespaced_pod, name, ns
            ),
        )

    def _hotplug_volume(self, vmi: Obj) -> Obj:
        vols = [
            v
            for v in (vmi.get("spec") or {}).get("volumes") or ()
            if "persistentVolumeClaim" in v or "dataVolume" in v
        ]
        if not vols:
            raise BackendError(
                f"VMI {vmi['metadata']['name']} has no PVC/DataVolume volume to unplug"
            )
        return dict(vols[-1])

    def fail_volume(self, workload: str, mode: VolumeFailure) -> None:
        w = self.r.workload(workload)
        if w.kind is WorkloadKind.VMI:
            self.k.require_kubevirt()
            vmi = self.r.vmi_of(workload)
            vol = self._hotplug_volume(vmi)
            ns, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
            self.k.act(
                f"removevolume {vol['name']} from VMI {ns}/{name}",
                lambda: self.k.sub(ns, name, "removevolume", {"name": vol["name"]}),
            )
            return
        self._fsfreeze_pod_volumes(workload, freeze=True, why=f" ({mode})")

    def _fsfreeze_pod_volumes(self, workload: str, *, freeze: bool, why: str = "") -> None:
        """Freeze or thaw every volume of the workload's pod, by a node pod."""
        pod = self.r.pod_of(workload)
        uid, node = pod["metadata"]["uid"], pod["spec"]["nodeName"]
        flag, verb = ("-f", "freeze") if freeze else ("-u", "thaw")
        script = f"for m in /var/lib/kubelet/pods/{uid}/volumes/*/*; do fsfreeze {flag} $m; done"
        self.k.act(
            f"{verb} volumes of pod {pod['metadata']['name']} on {node}{why}",
            lambda: self._node_pod(node, verb, script),
        )

    def repair_volume(self, workload: str, mode: VolumeFailure) -> None:
        w = self.r.workload(workload)
        if w.kind is WorkloadKind.VMI:
            vmi = self.r.vmi_of(workload)
            ns, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
            # The unplug was not persisted: the VM's template still names the volume.
            vm = self.k.call(
                "get",
                "virtualmachines",
                self.k.custom.get_namespaced_custom_object,
                *KV,
                ns,
                "virtualmachines",
                name,
            )
            present = {v["name"] for v in (vmi.get("spec") or {}).get("volumes") or ()}
            for vol in vm["spec"]["template"]["spec"].get("volumes") or ():
                if vol["name"] in present or not (
                    "persistentVolumeClaim" in vol or "dataVolume" in vol
                ):
                    continue
                source = {k: v for k, v in vol.items() if k != "name"}
                body = {
                    "name": vol["name"],
                    "disk": {"disk": {"bus": "scsi"}},
                    "volumeSource": source,
                }
                self.k.act(
                    f"addvolume {vol['name']} to VMI {ns}/{name}",
                    partial(self.k.sub, ns, name, "addvolume", body),
                )
            return
        self._fsfreeze_pod_volumes(workload, freeze=False)


def _privileged_refusal(cause: BaseException | None) -> str | None:
    """What the API said if it refused a node pod for being privileged, else None.

    Pod Security admission answers 403 "violates PodSecurity" (which ``explain``
    would otherwise read as RBAC); an API server without --allow-privileged
    answers 422 "... privileged: Forbidden: disallowed by cluster policy".
    """
    if not isinstance(cause, ApiException):
        return None
    try:
        message = str(json.loads(cause.body or "{}").get("message") or cause.reason)
    except ValueError:
        message = str(cause.reason)
    if cause.status == 403 and "PodSecurity" in message:
        return f"Pod Security admission (403): {message}"
    if cause.status == 422 and "disallowed by cluster policy" in message:
        return f"the API server's policy (422): {message}"
    return None
