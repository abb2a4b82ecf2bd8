"""``KubeReader``: what ``KubeBackend`` reads and where the prober probes.

Filled with the facade's ``KubeClient`` (cluster/kube/client.py); read by the
facade (``nodes``, ``workloads``, ``probe_target``: ``cluster.api.Observed``)
and by the faults and healing collaborators, which find their pods, VMIs and
virt-launcher pods here. Maps raw node, pod and VMI objects onto
``NodeStatus`` and ``WorkloadStatus``, and builds the service-proxy probe
target once per workload (cached; no API call per probe).
"""

from __future__ import annotations

import json
import ssl
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from kubernetes.client.exceptions import ApiException

from cluster.api import Condition, NodeStatus, Phase, ProbeTarget, WorkloadKind, WorkloadStatus
from cluster.kube.client import KV, OUT_OF_SERVICE, KubeClient, Obj
from core.errors import BackendError

__all__ = ["KubeReader"]


def _phase(value: str | None) -> Phase:
    try:
        return Phase(value or "Pending")
    except ValueError:
        return Phase.UNKNOWN


class KubeReader:
    """Lists and maps the config's target nodes and workloads."""

    def __init__(self, k: KubeClient) -> None:
        self.k = k
        # probe_target caches (service-proxy mode): the API server part, then per
        # workload (authorization it was built with, namespace, target).
        self._proxy_static: tuple[ProbeTarget, str] | None = None
        self.proxy_targets: dict[str, tuple[str | None, str, ProbeTarget]] = {}

    # --- reading -------------------------------------------------------------------
    def raw_nodes(self) -> list[Obj]:
        resp = self.k.call("list", "nodes", self.k.core.list_node, _preload_content=False)
        return list(json.loads(resp.data)["items"])

    def lease_renewals(self) -> dict[str, tuple[datetime, float | None]]:
        """Node name -> (renewTime, leaseDurationSeconds) of its Lease in kube-node-lease.

        {} if unreadable. The Lease is the kubelet's heartbeat. The Ready
        condition's lastHeartbeatTime is not: with leases the kubelet posts its
        status only when it changes or every nodeStatusReportFrequency (5 min by
        default), so a healthy node's condition can be minutes old (seen on the
        lab's real kubelets: a healer judging by it fenced a healthy node).
        """
        try:
            resp = self.k.call(
                "list",
                "leases",
                self.k.coord.list_namespaced_lease,
                "kube-node-lease",
                _preload_content=False,
            )
        except BackendError:
            return {}  # no right to read leases: fall back to the condition
        out: dict[str, tuple[datetime, float | None]] = {}
        for lease in json.loads(resp.data).get("items") or []:
            spec = lease.get("spec") or {}
            renew, duration = spec.get("renewTime"), spec.get("leaseDurationSeconds")
            if renew:
                out[lease["metadata"]["name"]] = (
                    datetime.fromisoformat(renew.replace("Z", "+00:00")),
                    float(duration) if isinstance(duration, int | float) else None,
                )
        return out

    def _status_of_node(
        self, n: Obj, renewals: dict[str, tuple[datetime, float | None]] | None = None
    ) -> NodeStatus:
        conds = (n.get("status") or {}).get("conditions") or []
        ready: Obj = next((c for c in conds if c.get("type") == "Ready"), {})
        age = None
        beat: datetime | None = None
        valid: float | None = None
        lease = (renewals or {}).get(n["metadata"]["name"])
        if lease is not None:
            beat, valid = lease
        if beat is None and ready.get("lastHeartbeatTime"):
            beat = datetime.fromisoformat(ready["lastHeartbeatTime"].replace("Z", "+00:00"))
        if beat is not None:
            age = max(0.0, (datetime.now(UTC) - beat).total_seconds())
        taints = (n.get("spec") or {}).get("taints") or []
        return NodeStatus(
            name=n["metadata"]["name"],
            ready=ready.get("status") == "True",
            schedulable=not (n.get("spec") or {}).get("unschedulable", False),
            fenced=any(t.get("key") == OUT_OF_SERVICE["key"] for t in taints),
            heartbeat_age=age,
            heartbeat_valid_s=valid,
        )

    def nodes(self) -> list[NodeStatus]:
        renewals = self.lease_renewals()
        return [
            self._status_of_node(n, renewals) for n in self.raw_nodes() if self.k.is_target_node(n)
        ]

    def node(self, name: str) -> NodeStatus:
        return self._status_of_node(self.k.target_node(name), self.lease_renewals())

    def raw_pods(self, extra: str = "", field: str = "") -> list[Obj]:
        pods: list[Obj] = []
        for ns in self.k.config.namespaces:
            resp = self.k.call(
                "list",
                "pods",
                self.k.core.list_namespaced_pod,
                ns,
                label_selector=extra or self.k.selector(),
                field_selector=field,
                _preload_content=False,
            )
            pods += json.loads(resp.data)["items"]
        return pods

    def raw_vmis(self) -> list[Obj]:
        return self._raw_kubevirt("virtualmachineinstances")

    def raw_vms(self) -> list[Obj]:
        return self._raw_kubevirt("virtualmachines")

    def _raw_kubevirt(self, plural: str) -> list[Obj]:
        if not self.k.has_kubevirt():
            return []
        found: list[Obj] = []
        for ns in self.k.config.namespaces:
            try:
                res: Any = self.k.custom.list_namespaced_custom_object(
                    *KV, ns, plural, label_selector=self.k.selector()
                )
            except ApiException as exc:
                if exc.status == 404:
                    self.k.kubevirt = False
                    return []
                raise self.k.explain(exc, "list", plural) from exc
            found += res["items"]
        return found

    def pod_status(self, p: Obj) -> WorkloadStatus:
        st = p.get("status") or {}
        cs = st.get("containerStatuses") or []
        phase = _phase(st.get("phase"))
        if p["metadata"].get("deletionTimestamp"):
            phase = Phase.TERMINATING
        ready = all(c.get("ready") for c in cs) and bool(cs)
        return WorkloadStatus(
            name=p["metadata"]["labels"][self.k.config.workload_label],
            kind=WorkloadKind.POD,
            phase=phase,
            node=(p.get("spec") or {}).get("nodeName"),
            instance=(cs[0].get("containerID") if cs else None) or p["metadata"].get("uid"),
            restarts=sum(c.get("restartCount", 0) for c in cs),
            conditions=(Condition("Ready", ready),),
        )

    def vmi_status(self, v: Obj) -> WorkloadStatus:
        st = v.get("status") or {}
        conds = tuple(
            Condition(c.get("type", ""), c.get("status") == "True", c.get("reason", ""))
            for c in st.get("conditions") or ()
        )
        mig = st.get("migrationState") or {}
        if mig:
            conds += (Condition("Migrated", bool(mig.get("completed")), mig.get("targetNode", "")),)
        return WorkloadStatus(
            name=v["metadata"]["labels"].get(self.k.config.workload_label, v["metadata"]["name"]),
            kind=WorkloadKind.VMI,
            phase=_phase(st.get("phase")),
            node=st.get("nodeName"),
            instance=v["metadata"].get("uid"),
            conditions=conds,
        )

    def current_pods(self) -> dict[str, Obj]:
        """Workload name -> its current pod (Running and not terminating first)."""
        best: dict[str, Obj] = {}
        for p in self.raw_pods():
            if (p["metadata"].get("labels") or {}).get("kubevirt.io") == "virt-launcher":
                continue
            name = p["metadata"]["labels"][self.k.config.workload_label]
            rank = (
                not p["metadata"].get("deletionTimestamp"),
                (p.get("status") or {}).get("phase") == "Running",
            )
            old = best.get(name)
            if old is None or rank > (
                not old["metadata"].get("deletionTimestamp"),
                (old.get("status") or {}).get("phase") == "Running",
            ):
                best[name] = p
        return best

    def workloads(self) -> list[WorkloadStatus]:
        pods = [self.pod_status(p) for p in self.current_pods().values()]
        vmis = [self.vmi_status(v) for v in self.raw_vmis()]
        return pods + vmis + self._vms_between_vmis({w.name for w in vmis})

    def _vms_between_vmis(self, have: set[str]) -> list[WorkloadStatus]:
        """A VirtualMachine with no VMI right now (its failed one deleted, the new
        one not made yet) is a Pending VMI workload, not a missing one."""
        if not self.k.has_kubevirt():
            return []
        out: list[WorkloadStatus] = []
        for vm in self.raw_vms():
            labels = vm["metadata"].get("labels") or {}
            name = labels.get(self.k.config.workload_label, vm["metadata"]["name"])
            if name not in have and not vm["metadata"].get("deletionTimestamp"):
                out.append(WorkloadStatus(name, WorkloadKind.VMI, Phase.PENDING, None))
        return out

    def workload(self, name: str) -> WorkloadStatus:
        for w in self.workloads():
            if w.name == name:
                return w
        raise BackendError(
            f"no target workload {name!r} in namespaces {', '.join(self.k.config.namespaces)} "
            f"with labels {self.k.selector()}={name}"
        )

    def pod_of(self, name: str) -> Obj:
        pod = self.current_pods().get(name)
        if pod is None:
            raise BackendError(f"no pod of workload {name!r} (labels {self.k.selector()}={name})")
        return pod

    def vmi_of(self, name: str) -> Obj:
        for v in self.raw_vmis():
            if self.vmi_status(v).name == name:
                return v
        raise BackendError(f"no VMI of workload {name!r} (labels {self.k.selector()}={name})")

    def launcher_of(self, vmi: Obj) -> Obj:
        ns, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
        resp = self.k.call(
            "list",
            "pods",
            self.k.core.list_namespaced_pod,
            ns,
            label_selector=f"kubevirt.io=virt-launcher,vm.kubevirt.io/name={name}",
            _preload_content=False,
        )
        items = [
            p
            for p in json.loads(resp.data)["items"]
            if (p.get("spec") or {}).get("nodeName") == (vmi.get("status") or {}).get("nodeName")
        ]
        if not items:
            raise BackendError(f"VMI {name}: no virt-launcher pod on its node")
        return dict(items[0])

    def probe_target(self, workload: str) -> ProbeTarget | None:
        """Where the prober reaches ``workload`` (called every probe interval).

        ``probe: service-proxy`` (default): the API server's service proxy,
        ``/api/v1/namespaces/{ns}/services/{svc}:{port}/proxy{path}``, over the
        kubeconfig's TLS settings with its bearer token. The API server picks a
        ready endpoint of the Service (a pod, or a VMI's virt-launcher pod whose
        network forwards to the guest), so a failed probe means no client could
        reach the workload through its Service: 503 with no ready endpoint, 502/503
        when the endpoint does not answer. Found once per workload (the Service's
        namespace), then cached: no API call per probe.
        ``probe: pod-ip``: the pod IP or the VMI's interface IP (harness inside
        the cluster network).
        """
        if self.k.config.probe == "service-proxy":
            return self._proxy_target(workload)
        cfg = self.k.config
        # One list of pods per call: this runs every probe interval.
        pod = self.current_pods().get(workload)
        port, path = cfg.probe_port, cfg.probe_path
        if pod is not None:
            ip = (pod.get("status") or {}).get("podIP")
        else:
            vmi = next((v for v in self.raw_vmis() if self.vmi_status(v).name == workload), None)
            if vmi is None:
                return None  # no pod right now (a Deployment between two): no endpoint
            # Guest reachability, not phase: the guest's own address.
            ifaces = (vmi.get("status") or {}).get("interfaces") or []
            ip = ifaces[0].get("ipAddress") if ifaces else None
            port, path = cfg.vmi_probe_port or port, cfg.vmi_probe_path or path
        if not ip:
            return None
        # A guest of ours answers from an nc loop, one connection at a time.
        return ProbeTarget(ip, port, path, netns=cfg.probe_netns, serial=pod is None)

    def service_name(self, workload: str) -> str:
        return self.k.config.probe_service.format(workload=workload)

    def _proxy_base(self) -> tuple[ProbeTarget, str]:
        """The static part of every proxy target: API server address, TLS, path prefix."""
        if self._proxy_static is not None:
            return self._proxy_static
        cfg = self.k.api.configuration
        if getattr(cfg, "proxy", None):
            raise BackendError(
                f"context {self.k.context!r} reaches its API server through an HTTP proxy "
                f"({cfg.proxy}), which the prober does not speak; set probe: pod-ip in the "
                "kube config and run the harness inside the cluster network"
            )
        url = urlsplit(cfg.host)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise BackendError(f"context {self.k.context!r}: API server URL {cfg.host!r} unusable")
        tls: ssl.SSLContext | None = None
        server_hostname: str | None = None
        if url.scheme == "https":
            try:
                tls = ssl.create_default_context(
                    cafile=cfg.ssl_ca_cert or None,
                    cadata=getattr(cfg, "ca_cert_data", None) or None,
                )
                if not cfg.verify_ssl or cfg.assert_hostname is False:
                    tls.check_hostname = False
                if not cfg.verify_ssl:
                    tls.verify_mode = ssl.CERT_NONE
                if cfg.cert_file:
                    tls.load_cert_chain(cfg.cert_file, cfg.key_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise BackendError(
                    f"context {self.k.context!r}: TLS settings for the prober ({exc}); check the "
                    "kubeconfig's certificate-authority and client-certificate files"
                ) from exc
            server_hostname = getattr(cfg, "tls_server_name", None) or url.hostname
        port = url.port or (443 if url.scheme == "https" else 80)
        base = ProbeTarget(url.hostname, port, tls=tls, server_hostname=server_hostname)
        self._proxy_static = (base, url.path.rstrip("/"))
        return self._proxy_static

    def _authorization(self) -> str | None:
        # Read the stored value, not get_api_key_with_prefix(): that runs the
        # refresh hook (maybe an exec plugin) and probe_target runs every 20 ms.
        # Every ordinary API call (the recorder's, every 100 ms) refreshes it.
        cfg = self.k.api.configuration
        for key in ("BearerToken", "authorization"):
            value = cfg.api_key.get(key)
            if value:
                prefix = cfg.api_key_prefix.get(key)
                return f"{prefix} {value}" if prefix else str(value)
        return None

    def _proxy_target(self, workload: str) -> ProbeTarget:
        auth = self._authorization()
        cached = self.proxy_targets.get(workload)
        if cached is not None and cached[0] == auth:
            return cached[2]
        base, prefix = self._proxy_base()
        svc = self.service_name(workload)
        # The namespace is looked up once; a new token only rebuilds the headers.
        ns = cached[1] if cached is not None else self._service_namespace(svc, workload)
        target = replace(
            base,
            path=f"{prefix}/api/v1/namespaces/{ns}/services/{svc}:{self.k.config.probe_port}"
            f"/proxy{self.k.config.probe_path}",
            headers=(("Authorization", auth),) if auth else (),
        )
        self.proxy_targets[workload] = (auth, ns, target)
        return target

    def _service_namespace(self, svc: str, workload: str) -> str:
        for ns in self.k.config.namespaces:
            try:
                self.k.call("get", "services", self.k.core.read_namespaced_service, svc, ns)
            except BackendError as exc:
                if "(404)" in str(exc):
                    continue
                raise
            return ns
        raise BackendError(
            f"no Service {svc!r} for workload {workload!r} in namespaces "
            f"{', '.join(self.k.config.namespaces)}: the prober reaches workloads through their "
            f"Service; create one selecting the workload's pods (port {self.k.config.probe_port}), "
            "name it in probe_service, or set probe: pod-ip"
        )

    def observed_pod(self, workload: str) -> tuple[Obj, WorkloadKind] | None:
        """The pod whose usage and output stand for ``workload``: its own pod, or
        a VMI's virt-launcher pod (QEMU runs in its "compute" container). None
        when it has none now (deleted, being re-created, not scheduled)."""
        pod = self.current_pods().get(workload)
        if pod is not None:
            return pod, WorkloadKind.POD
        for v in self.raw_vmis():
            if self.vmi_status(v).name == workload:
                try:
                    return self.launcher_of(v), WorkloadKind.VMI
                except BackendError as exc:
                    if "no virt-launcher pod" in str(exc):
                        return None
                    raise
        return None
