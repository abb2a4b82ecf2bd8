"""``KubeBackend``: the backend interface on a real Kubernetes (+ KubeVirt) cluster.

Filled from a ``KubeConfig`` (cluster/kube/config.py) and a kubeconfig context;
read by the runner, faults, healers and recorder through ``cluster.api.Backend``.
The only module besides watch.py that talks to the ``kubernetes`` client. Every
call goes through ``_call`` so a refusal names what to fix: RBAC (verb and
resource), a missing KubeVirt, an unreachable API server. Every change goes
through ``_act`` so ``dry_run`` prints the plan and touches nothing. Every target
is checked against the config: workloads only in its namespaces with its label,
nodes only with its label or by name. Reverts read their state back from the
cluster (the VM spec keeps the unplugged volume, the node keeps its taints), so
``rto revert`` after a killed harness can undo a fault from the journal alone.
"""

from __future__ import annotations

import json
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from tenacity import Retrying, retry_if_exception, wait_exponential

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
from cluster.kube import workloads
from cluster.kube.config import KubeConfig
from cluster.kube.observe import LogSource, PodLogFollower, PodMetricsReader
from cluster.kube.power import PowerDriver, get_power_driver
from cluster.kube.timeline import KubeTimeline
from cluster.kube.watch import ResourceRef, WatchFollower, raw_request, resource_path
from core.clock import Clock, RealClock
from core.errors import BackendError
from core.samples import MetricSample
from core.wait import stop_after

__all__ = ["OUT_OF_SERVICE", "Executor", "KubeBackend", "kube_exec"]

OUT_OF_SERVICE = {
    "key": "node.kubernetes.io/out-of-service",
    "value": "nodeshutdown",
    "effect": "NoExecute",
}
KV = ("kubevirt.io", "v1")
Obj = dict[str, Any]
# (api client, namespace, pod, container, argv) -> combined output
Executor = Callable[[k8s.ApiClient, str, str, str, list[str]], str]


def kube_exec(api: k8s.ApiClient, ns: str, pod: str, container: str, argv: list[str]) -> str:
    """Run argv in a container through the exec subresource (a websocket)."""
    from kubernetes.stream import stream

    out: str = stream(
        k8s.CoreV1Api(api).connect_get_namespaced_pod_exec,
        pod,
        ns,
        container=container,
        command=argv,
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )
    return out


def _done(resp: Any) -> None:
    """Read a raw response to its end before its connection goes back to the pool.

    Released unread, the body stays in the socket and the next request on
    that pooled connection reads it as its own status line.
    """
    resp.drain_conn()
    resp.release_conn()


def _phase(value: str | None) -> Phase:
    try:
        return Phase(value or "Pending")
    except ValueError:
        return Phase.UNKNOWN


class KubeBackend:
    name = "kube"

    def __init__(
        self,
        config: KubeConfig,
        context: str | None = None,
        dry_run: bool = False,
        api_client: k8s.ApiClient | None = None,
        executor: Executor = kube_exec,
        power: PowerDriver | None = None,
        sleep: Callable[[float], None] | None = None,
        echo: Callable[[str], None] = print,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or RealClock()  # stamps metric samples
        self.context = context or config.contexts[0]
        if self.context not in config.contexts:
            raise BackendError(
                f"kube context {self.context!r} is not in the allowlist "
                f"({', '.join(config.contexts)}); add it to 'contexts' in the kube config "
                "if the harness may inject faults there"
            )
        # One clock for waits: sleeping on it is what moves a fake clock's time,
        # so a wait stopping on the clock can never spin.
        self.sleep: Callable[[float], None] = sleep or self.clock.sleep
        self.dry_run, self.echo = dry_run, echo
        self.plan: list[str] = []
        self.executor = executor
        self._power = power
        if api_client is None:
            try:
                api_client = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
                    config_file=config.kubeconfig, context=self.context
                )
            except (ConfigException, OSError) as exc:
                raise BackendError(f"kubeconfig context {self.context!r}: {exc}") from exc
        self.api = api_client
        self.core = k8s.CoreV1Api(api_client)
        self.apps = k8s.AppsV1Api(api_client)
        self.net = k8s.NetworkingV1Api(api_client)
        self.custom = k8s.CustomObjectsApi(api_client)
        self.timeline = KubeTimeline()
        self.followers: list[WatchFollower] = []
        self._kubevirt: bool | None = None
        # probe_target caches (service-proxy mode): the API server part, then per
        # workload (authorization it was built with, namespace, target).
        self._proxy_static: tuple[ProbeTarget, str] | None = None
        self._proxy_targets: dict[str, tuple[str | None, str, ProbeTarget]] = {}
        # metrics-server reader (caches "not installed") and per-workload log
        # followers writing under a directory of this backend instance.
        self._metrics = PodMetricsReader(self.api, self._explain)
        self._log_followers: dict[str, PodLogFollower] = {}
        self._log_dir: Path | None = None
        self._log_lock = threading.Lock()  # log_path from the recorder and the runner
        self._restart_healing = True  # the kubelet's own behaviour (restartPolicy Always)

    # --- plumbing ----------------------------------------------------------------
    def _call(self, verb: str, resource: str, fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except ApiException as exc:
            raise self._explain(exc, verb, resource) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise BackendError(
                f"kube API server of context {self.context!r} unreachable "
                f"({self.api.configuration.host}): {exc}; is the cluster up?"
            ) from exc

    def _explain(self, exc: ApiException, verb: str, resource: str) -> BackendError:
        try:
            message = json.loads(exc.body or "{}").get("message", exc.reason)
        except ValueError:
            message = exc.reason
        if exc.status == 403:
            return BackendError(
                f"RBAC: the harness may not '{verb}' '{resource}' (context {self.context!r}): "
                f"{message}; grant verbs [{verb}] on resources [{resource}] to its account"
            )
        if exc.status == 404 and resource.startswith(("virtualmachine", "kubevirt")):
            return BackendError(f"KubeVirt is not installed or lacks {resource}: {message}")
        if exc.status == 429:
            return BackendError(f"{verb} {resource} refused (429): {message}")
        return BackendError(f"{verb} {resource} failed ({exc.status}): {message}")

    def _act(self, description: str, fn: Callable[[], Any]) -> Any:
        """Every change to the cluster: in dry-run, recorded and printed instead."""
        if self.dry_run:
            self.plan.append(description)
            self.echo(f"[dry-run] {description}")
            return None
        return fn()

    def has_kubevirt(self) -> bool:
        """Does the cluster serve kubevirt.io/v1? Asked once, by API discovery.

        Discovery, not a list of VMIs: every authenticated user may read it, and
        a real API server checks RBAC before it notices a group is not served,
        so an account without VMI rights would get 403 where "no KubeVirt" is
        the answer (seen against kube-apiserver 1.34).
        """
        if self._kubevirt is None:
            try:
                _done(raw_request(self.api, "GET", "/apis/kubevirt.io/v1"))
                self._kubevirt = True
            except ApiException as exc:
                if exc.status != 404:
                    raise self._explain(exc, "get", "kubevirt.io/v1") from exc
                self._kubevirt = False
            except urllib3.exceptions.HTTPError as exc:
                raise BackendError(f"kube API server unreachable: {exc}") from exc
        return self._kubevirt

    def require_kubevirt(self) -> None:
        if not self.has_kubevirt():
            raise BackendError(
                f"KubeVirt is not installed on context {self.context!r} (no kubevirt.io/v1 "
                "API): VMI experiments need it (see README, Real clusters)"
            )

    def _sub(self, ns: str, vmi: str, sub: str, body: Obj | None = None) -> None:
        path = (
            f"/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{vmi}/{sub}"
        )
        _done(
            self._call(
                "update",
                f"virtualmachineinstances/{sub}",
                raw_request,
                self.api,
                "PUT",
                path,
                body=body or {},
            )
        )

    # --- safety --------------------------------------------------------------------
    def _is_target_node(self, node: Obj) -> bool:
        key, value = self.config.target_pair
        labels = node["metadata"].get("labels") or {}
        return node["metadata"]["name"] in self.config.nodes or labels.get(key) == value

    def _target_node(self, name: str) -> Obj:
        resp = self._call("get", "nodes", self.core.read_node, name, _preload_content=False)
        raw: Obj = json.loads(resp.data)
        if not self._is_target_node(raw):
            raise BackendError(
                f"node {name!r} is not a target: label it {self.config.target_label} or name it "
                "in 'nodes' of the kube config"
            )
        return raw

    def _selector(self) -> str:
        return f"{self.config.target_label},{self.config.workload_label}"

    # --- reading -------------------------------------------------------------------
    def _raw_nodes(self) -> list[Obj]:
        resp = self._call("list", "nodes", self.core.list_node, _preload_content=False)
        return list(json.loads(resp.data)["items"])

    def _status_of_node(self, n: Obj) -> NodeStatus:
        conds = (n.get("status") or {}).get("conditions") or []
        ready: Obj = next((c for c in conds if c.get("type") == "Ready"), {})
        age = None
        if ready.get("lastHeartbeatTime"):
            beat = datetime.fromisoformat(ready["lastHeartbeatTime"].replace("Z", "+00:00"))
            age = max(0.0, (datetime.now(UTC) - beat).total_seconds())
        taints = (n.get("spec") or {}).get("taints") or []
        return NodeStatus(
            name=n["metadata"]["name"],
            ready=ready.get("status") == "True",
            schedulable=not (n.get("spec") or {}).get("unschedulable", False),
            fenced=any(t.get("key") == OUT_OF_SERVICE["key"] for t in taints),
            heartbeat_age=age,
        )

    def nodes(self) -> list[NodeStatus]:
        return [self._status_of_node(n) for n in self._raw_nodes() if self._is_target_node(n)]

    def node(self, name: str) -> NodeStatus:
        return self._status_of_node(self._target_node(name))

    def _raw_pods(self, extra: str = "", field: str = "") -> list[Obj]:
        pods: list[Obj] = []
        for ns in self.config.namespaces:
            resp = self._call(
                "list",
                "pods",
                self.core.list_namespaced_pod,
                ns,
                label_selector=extra or self._selector(),
                field_selector=field,
                _preload_content=False,
            )
            pods += json.loads(resp.data)["items"]
        return pods

    def _raw_vmis(self) -> list[Obj]:
        if not self.has_kubevirt():
            return []
        vmis: list[Obj] = []
        for ns in self.config.namespaces:
            try:
                res: Any = self.custom.list_namespaced_custom_object(
                    *KV, ns, "virtualmachineinstances", label_selector=self._selector()
                )
            except ApiException as exc:
                if exc.status == 404:
                    self._kubevirt = False
                    return []
                raise self._explain(exc, "list", "virtualmachineinstances") from exc
            vmis += res["items"]
        return vmis

    def _pod_status(self, p: Obj) -> WorkloadStatus:
        st = p.get("status") or {}
        cs = st.get("containerStatuses") or []
        phase = _phase(st.get("phase"))
        if p["metadata"].get("deletionTimestamp"):
            phase = Phase.TERMINATING
        ready = all(c.get("ready") for c in cs) and bool(cs)
        return WorkloadStatus(
            name=p["metadata"]["labels"][self.config.workload_label],
            kind=WorkloadKind.POD,
            phase=phase,
            node=(p.get("spec") or {}).get("nodeName"),
            instance=(cs[0].get("containerID") if cs else None) or p["metadata"].get("uid"),
            restarts=sum(c.get("restartCount", 0) for c in cs),
            conditions=(Condition("Ready", ready),),
        )

    def _vmi_status(self, v: Obj) -> WorkloadStatus:
        st = v.get("status") or {}
        conds = tuple(
            Condition(c.get("type", ""), c.get("status") == "True", c.get("reason", ""))
            for c in st.get("conditions") or ()
        )
        mig = st.get("migrationState") or {}
        if mig:
            conds += (Condition("Migrated", bool(mig.get("completed")), mig.get("targetNode", "")),)
        return WorkloadStatus(
            name=v["metadata"]["labels"].get(self.config.workload_label, v["metadata"]["name"]),
            kind=WorkloadKind.VMI,
            phase=_phase(st.get("phase")),
            node=st.get("nodeName"),
            instance=v["metadata"].get("uid"),
            conditions=conds,
        )

    def _current_pods(self) -> dict[str, Obj]:
        """Workload name -> its current pod (Running and not terminating first)."""
        best: dict[str, Obj] = {}
        for p in self._raw_pods():
            if (p["metadata"].get("labels") or {}).get("kubevirt.io") == "virt-launcher":
                continue
            name = p["metadata"]["labels"][self.config.workload_label]
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
        pods = [self._pod_status(p) for p in self._current_pods().values()]
        return pods + [self._vmi_status(v) for v in self._raw_vmis()]

    def workload(self, name: str) -> WorkloadStatus:
        for w in self.workloads():
            if w.name == name:
                return w
        raise BackendError(
            f"no target workload {name!r} in namespaces {', '.join(self.config.namespaces)} "
            f"with labels {self._selector()}={name}"
        )

    def _pod_of(self, name: str) -> Obj:
        pod = self._current_pods().get(name)
        if pod is None:
            raise BackendError(f"no pod of workload {name!r} (labels {self._selector()}={name})")
        return pod

    def _vmi_of(self, name: str) -> Obj:
        for v in self._raw_vmis():
            if self._vmi_status(v).name == name:
                return v
        raise BackendError(f"no VMI of workload {name!r} (labels {self._selector()}={name})")

    def _launcher_of(self, vmi: Obj) -> Obj:
        ns, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
        resp = self._call(
            "list",
            "pods",
            self.core.list_namespaced_pod,
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
        if self.config.probe == "service-proxy":
            return self._proxy_target(workload)
        w = self.workload(workload)
        if w.kind is WorkloadKind.POD:
            ip = (self._pod_of(workload).get("status") or {}).get("podIP")
            return ProbeTarget(ip, 8080) if ip else None
        # Guest reachability, not phase: the guest's own address.
        ifaces = (self._vmi_of(workload).get("status") or {}).get("interfaces") or []
        ip = ifaces[0].get("ipAddress") if ifaces else None
        return ProbeTarget(ip, 8080) if ip else None

    def _service_name(self, workload: str) -> str:
        return self.config.probe_service.format(workload=workload)

    def _proxy_base(self) -> tuple[ProbeTarget, str]:
        """The static part of every proxy target: API server address, TLS, path prefix."""
        if self._proxy_static is not None:
            return self._proxy_static
        cfg = self.api.configuration
        if getattr(cfg, "proxy", None):
            raise BackendError(
                f"context {self.context!r} reaches its API server through an HTTP proxy "
                f"({cfg.proxy}), which the prober does not speak; set probe: pod-ip in the "
                "kube config and run the harness inside the cluster network"
            )
        url = urlsplit(cfg.host)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise BackendError(f"context {self.context!r}: API server URL {cfg.host!r} unusable")
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
                    f"context {self.context!r}: TLS settings for the prober ({exc}); check the "
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
        cfg = self.api.configuration
        for key in ("BearerToken", "authorization"):
            value = cfg.api_key.get(key)
            if value:
                prefix = cfg.api_key_prefix.get(key)
                return f"{prefix} {value}" if prefix else str(value)
        return None

    def _proxy_target(self, workload: str) -> ProbeTarget:
        auth = self._authorization()
        cached = self._proxy_targets.get(workload)
        if cached is not None and cached[0] == auth:
            return cached[2]
        base, prefix = self._proxy_base()
        svc = self._service_name(workload)
        # The namespace is looked up once; a new token only rebuilds the headers.
        ns = cached[1] if cached is not None else self._service_namespace(svc, workload)
        target = replace(
            base,
            path=f"{prefix}/api/v1/namespaces/{ns}/services/{svc}:{self.config.probe_port}"
            f"/proxy{self.config.probe_path}",
            headers=(("Authorization", auth),) if auth else (),
        )
        self._proxy_targets[workload] = (auth, ns, target)
        return target

    def _service_namespace(self, svc: str, workload: str) -> str:
        for ns in self.config.namespaces:
            try:
                self._call("get", "services", self.core.read_namespaced_service, svc, ns)
            except BackendError as exc:
                if "(404)" in str(exc):
                    continue
                raise
            return ns
        raise BackendError(
            f"no Service {svc!r} for workload {workload!r} in namespaces "
            f"{', '.join(self.config.namespaces)}: the prober reaches workloads through their "
            f"Service; create one selecting the workload's pods (port {self.config.probe_port}), "
            "name it in probe_service, or set probe: pod-ip"
        )

    # --- watches -----------------------------------------------------------------
    def start_watches(self) -> None:
        if self.followers:
            return
        refs: list[tuple[str, ResourceRef, str | None]] = [
            ("node", ResourceRef("", "v1", "nodes"), None)
        ]
        for ns in self.config.namespaces:
            refs.append(("pod", ResourceRef("", "v1", "pods", ns), self.config.target_label))
            if self.has_kubevirt():
                refs.append(("vmi", ResourceRef(*KV, "virtualmachineinstances", ns), None))
                refs.append(
                    ("migration", ResourceRef(*KV, "virtualmachineinstancemigrations", ns), None)
                )
        for source, ref, sel in refs:
            f = WatchFollower(
                self.api, ref, self.timeline.feeder(source), label_selector=sel, sleep=self.sleep
            )
            f.start()
            self.followers.append(f)

    def stop_watches(self) -> None:
        for f in self.followers:
            f.stop()
        self.followers.clear()

    def close(self) -> None:
        self.stop_watches()
        with self._log_lock:
            for f in self._log_followers.values():
                f.stop()
            self._log_followers.clear()
            if self._log_dir is not None:
                shutil.rmtree(self._log_dir, ignore_errors=True)
                self._log_dir = None

    def events(self, since: float) -> Iterator[Event]:
        self.start_watches()
        for f in self.followers:
            if f.error is not None:
                err = f.error
                if isinstance(err, ApiException):
                    if err.status == 404 and "virtualmachine" in f.ref.plural:
                        continue  # no KubeVirt: pods only
                    raise self._explain(err, "watch", f.ref.plural) from err
                raise BackendError(f"watch of {f.ref.plural} failed: {err}") from err
        return self.timeline.since(since)

    # --- workloads ---------------------------------------------------------------
    def _labels(self, name: str) -> dict[str, str]:
        key, value = self.config.target_pair
        return {key: value, self.config.workload_label: name}

    def create_workload(
        self,
        name: str,
        kind: WorkloadKind,
        node: str | None = None,
        *,
        watchdog_heartbeat_s: int | None = 2,
        eviction_strategy: str = "LiveMigrate",
    ) -> None:
        # watchdog_heartbeat_s is a guest setting (the i6300esb driver's timeout):
        # the guest image decides it on a real cluster, so it is not applied here.
        ns, labels = self.config.namespaces[0], self._labels(name)
        sel = {"kubernetes.io/hostname": node} if node else None
        if kind is WorkloadKind.VMI:
            self.require_kubevirt()
        self._create_service(ns, name, labels)
        if kind is WorkloadKind.POD:
            body = workloads.deployment(name, labels, self.config.pod_image, sel)
            self._act(
                f"create Deployment {ns}/{name}",
                lambda: self._call(
                    "create", "deployments", self.apps.create_namespaced_deployment, ns, body
                ),
            )
            return
        vm = workloads.virtual_machine(name, labels, self.config.vmi_image, sel, eviction_strategy)
        self._act(
            f"create VirtualMachine {ns}/{name}",
            lambda: self._call(
                "create",
                "virtualmachines",
                self.custom.create_namespaced_custom_object,
                *KV,
                ns,
                "virtualmachines",
                vm,
            ),
        )

    def _create_service(self, ns: str, name: str, labels: dict[str, str]) -> None:
        """The Service the prober reaches the workload through (see probe_target).

        Selects the workload's labels: the Deployment's pods, or the VMI's
        virt-launcher pod (KubeVirt copies the VMI's labels onto it; the VM
        template carries them). An existing one (a rerun) is kept: same selector.
        """
        svc = self._service_name(name)
        port = self.config.probe_port
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": svc, "labels": labels},
            "spec": {
                "selector": labels,
                "ports": [{"name": "probe", "port": port, "targetPort": port, "protocol": "TCP"}],
            },
        }

        def create() -> None:
            try:
                self._call("create", "services", self.core.create_namespaced_service, ns, body)
            except BackendError as exc:
                if "(409)" not in str(exc):
                    raise

        self._act(f"create Service {ns}/{svc} (probe endpoint, port {port})", create)

    def delete_workload(self, name: str) -> None:
        ns = self.config.namespaces[0]
        self._proxy_targets.pop(name, None)
        svc = self._service_name(name)
        self._act(
            f"delete services {ns}/{svc}",
            partial(
                self._ignore_404, "delete", "services", self.core.delete_namespaced_service, svc, ns
            ),
        )
        for resource, fn in (
            ("deployments", lambda: self.apps.delete_namespaced_deployment(name, ns)),
            (
                "virtualmachines",
                lambda: self.custom.delete_namespaced_custom_object(
                    *KV, ns, "virtualmachines", name
                ),
            ),
        ):
            try:
                self._act(
                    f"delete {resource} {ns}/{name}",
                    partial(self._call, "delete", resource, fn),
                )
            except BackendError as exc:
                if "(404)" not in str(exc) and "not installed" not in str(exc):
                    raise

    # --- faults ------------------------------------------------------------------
    def kill_main_process(self, workload: str) -> None:
        w = self.workload(workload)
        if w.kind is WorkloadKind.POD:
            pod = self._pod_of(workload)
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            container = pod["spec"]["containers"][0]["name"]
            self._act(
                f"exec kill -9 1 in {ns}/{name}:{container}",
                lambda: self._kill_pod_main(ns, name, container),
            )
            return
        launcher = self._launcher_of(self._vmi_of(workload))
        ns, name = launcher["metadata"]["namespace"], launcher["metadata"]["name"]
        self._act(
            f"exec kill -9 QEMU in {ns}/{name}:compute",
            lambda: self._call(
                "create",
                "pods/exec",
                self.executor,
                self.api,
                ns,
                name,
                "compute",
                ["sh", "-c", "kill -9 $(pgrep -f qemu-kvm || pgrep -f qemu-system)"],
            ),
        )

    def _kill_pod_main(self, ns: str, pod: str, container: str) -> None:
        try:
            self._call(
                "create",
                "pods/exec",
                self.executor,
                self.api,
                ns,
                pod,
                container,
                ["kill", "-9", "1"],
            )
        except BackendError as exc:
            if "RBAC" in str(exc):
                raise
            # No kill binary in the image: an ephemeral container sharing the
            # target's process namespace does it.
            body = {
                "spec": {
                    "ephemeralContainers": [
                        {
                            "name": f"rto-kill-{int(time.time())}",
                            "image": self.config.node_pod_image,
                            "command": ["kill", "-9", "1"],
                            "targetContainerName": container,
                        }
                    ]
                }
            }
            self._call(
                "patch",
                "pods/ephemeralcontainers",
                self.core.patch_namespaced_pod_ephemeralcontainers,
                pod,
                ns,
                body,
            )

    def hang_guest(self, workload: str, resume: bool = False) -> None:
        """Hang the guest via the configured command (default: an NMI that panics
        the harness's guest; its watchdog then resets it), or resume it."""
        vmi = self._vmi_of(workload)
        launcher = self._launcher_of(vmi)
        ns = vmi["metadata"]["namespace"]
        domain = f"{ns}_{vmi['metadata']['name']}"
        cmd = self.config.guest_resume_command if resume else self.config.guest_hang_command
        argv = [a.format(domain=domain) for a in cmd]
        self._act(
            f"exec {' '.join(argv)} in {launcher['metadata']['name']}:compute",
            lambda: self._call(
                "create",
                "pods/exec",
                self.executor,
                self.api,
                ns,
                launcher["metadata"]["name"],
                "compute",
                argv,
            ),
        )

    def cordon(self, node: str) -> None:
        self._target_node(node)
        self._act(
            f"cordon node {node}",
            lambda: self._call(
                "patch", "nodes", self.core.patch_node, node, {"spec": {"unschedulable": True}}
            ),
        )

    def uncordon(self, node: str) -> None:
        self._target_node(node)
        self._act(
            f"uncordon node {node}",
            lambda: self._call(
                "patch", "nodes", self.core.patch_node, node, {"spec": {"unschedulable": None}}
            ),
        )

    def _evict_pod(self, ns: str, pod: str, patience: float = 60.0) -> None:
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
            stop=stop_after(self.clock, patience),
            wait=wait_exponential(multiplier=0.5, max=5),
            sleep=self.sleep,
            reraise=True,
        )
        try:
            retrying(
                self._call,
                "create",
                "pods/eviction",
                self.core.create_namespaced_pod_eviction,
                pod,
                ns,
                body,
            )
        except BackendError as exc:
            if blocked(exc):
                raise BackendError(
                    f"eviction of {ns}/{pod} blocked by a PodDisruptionBudget "
                    f"for {patience:.0f} s: {exc}"
                ) from exc
            raise

    def evict(self, workload: str, patience: float = 60.0) -> None:
        w = self.workload(workload)
        obj = (
            self._pod_of(workload)
            if w.kind is WorkloadKind.POD
            else self._launcher_of(self._vmi_of(workload))
        )
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        self._act(f"evict pod {ns}/{name}", lambda: self._evict_pod(ns, name, patience))

    def _driver(self) -> PowerDriver:
        if self._power is None:
            self._power = get_power_driver(self.config.power_driver, self.config.power_options)
        return self._power

    def power_off(self, node: str) -> None:
        self._target_node(node)
        self._act(
            f"power off {node} ({self.config.power_driver})", lambda: self._driver().power_off(node)
        )

    def power_on(self, node: str) -> None:
        self._target_node(node)
        self._act(
            f"power on {node} ({self.config.power_driver})", lambda: self._driver().power_on(node)
        )

    def _policy_name(self, workload: str) -> str:
        return f"rto-partition-{workload}"

    def partition_workload(self, workload: str) -> None:
        self.workload(workload)
        ns = self.config.namespaces[0]
        body: Obj = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": self._policy_name(workload), "labels": self._labels(workload)},
            "spec": {
                "podSelector": {"matchLabels": {self.config.workload_label: workload}},
                "policyTypes": ["Ingress", "Egress"],
            },
        }
        self._act(
            f"create NetworkPolicy {ns}/{body['metadata']['name']} (deny all)",
            lambda: self._call(
                "create", "networkpolicies", self.net.create_namespaced_network_policy, ns, body
            ),
        )

    def heal_workload_partition(self, workload: str) -> None:
        ns, name = self.config.namespaces[0], self._policy_name(workload)
        self._act(
            f"delete NetworkPolicy {ns}/{name}",
            lambda: self._ignore_404(
                "delete", "networkpolicies", self.net.delete_namespaced_network_policy, name, ns
            ),
        )

    def _ignore_404(
        self, verb: str, resource: str, fn: Callable[..., Any], *a: Any, **kw: Any
    ) -> None:
        try:
            self._call(verb, resource, fn, *a, **kw)
        except BackendError as exc:
            if "(404)" not in str(exc):
                raise

    def _node_pod(self, node: str, purpose: str, script: str) -> None:
        """A privileged pod on the node (host network and PID) running ``script``."""
        ns, name = self.config.namespaces[0], f"rto-node-{purpose}-{node}"
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
                        "image": self.config.node_pod_image,
                        "command": ["nsenter", "-t", "1", "-m", "-n", "--", "sh", "-c", script],
                        "securityContext": {"privileged": True},
                    }
                ],
            },
        }
        self._ignore_404("delete", "pods", self.core.delete_namespaced_pod, name, ns)
        self._call("create", "pods", self.core.create_namespaced_pod, ns, body)

    def partition_node(self, node: str, max_seconds: int = 600) -> None:
        self._target_node(node)
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
        self._act(
            f"cut node {node} off the network (node pod, {max_seconds} s max)",
            lambda: self._node_pod(node, "partition", script),
        )

    def heal_node_partition(self, node: str) -> None:
        self._target_node(node)
        ns, name = self.config.namespaces[0], f"rto-node-partition-{node}"
        self._act(
            f"delete node pod {ns}/{name} (lifts the cut)",
            lambda: self._ignore_404("delete", "pods", self.core.delete_namespaced_pod, name, ns),
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
        w = self.workload(workload)
        if w.kind is WorkloadKind.VMI:
            self.require_kubevirt()
            vmi = self._vmi_of(workload)
            vol = self._hotplug_volume(vmi)
            ns, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
            self._act(
                f"removevolume {vol['name']} from VMI {ns}/{name}",
                lambda: self._sub(ns, name, "removevolume", {"name": vol["name"]}),
            )
            return
        self._fsfreeze_pod_volumes(workload, freeze=True, why=f" ({mode})")

    def _fsfreeze_pod_volumes(self, workload: str, *, freeze: bool, why: str = "") -> None:
        """Freeze or thaw every volume of the workload's pod, by a node pod."""
        pod = self._pod_of(workload)
        uid, node = pod["metadata"]["uid"], pod["spec"]["nodeName"]
        flag, verb = ("-f", "freeze") if freeze else ("-u", "thaw")
        script = f"for m in /var/lib/kubelet/pods/{uid}/volumes/*/*; do fsfreeze {flag} $m; done"
        self._act(
            f"{verb} volumes of pod {pod['metadata']['name']} on {node}{why}",
            lambda: self._node_pod(node, verb, script),
        )

    def repair_volume(self, workload: str, mode: VolumeFailure) -> None:
        w = self.workload(workload)
        if w.kind is WorkloadKind.VMI:
            vmi = self._vmi_of(workload)
            ns, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
            # The unplug was not persisted: the VM's template still names the volume.
            vm = self._call(
                "get",
                "virtualmachines",
                self.custom.get_namespaced_custom_object,
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
                self._act(
                    f"addvolume {vol['name']} to VMI {ns}/{name}",
                    partial(self._sub, ns, name, "addvolume", body),
                )
            return
        self._fsfreeze_pod_volumes(workload, freeze=False)

    # --- healer actions ------------------------------------------------------------
    def restart_healing(self) -> bool:
        return self._restart_healing

    def set_restart_healing(self, enabled: bool) -> None:
        # The kubelet always restarts containers; this flag only tells the
        # harness's own watchdog healer whether to act.
        self._restart_healing = enabled

    # --- around a run (cluster.api.RunHooks) -----------------------------------------
    @property
    def profile(self) -> str | None:
        """None: a real cluster's timings are its own, not one of cluster.profiles."""
        return None

    def set_profile(self, name: str) -> None:
        """Nothing to switch: the cluster's controllers keep their configured timings."""

    def wait_ready(self, name: str, timeout: float) -> WorkloadStatus | None:
        """None: readiness is the run's steady-state probe (through the service
        proxy), which also holds in dry-run mode where nothing was created."""
        return None

    def _set_taints(self, node: str, add: bool) -> None:
        raw = self._target_node(node)
        taints = [
            t
            for t in (raw.get("spec") or {}).get("taints") or ()
            if t.get("key") != OUT_OF_SERVICE["key"]
        ]
        if add:
            taints.append(dict(OUT_OF_SERVICE))
        self._call(
            "patch", "nodes", self.core.patch_node, node, {"spec": {"taints": taints or None}}
        )

    def fence(self, node: str) -> None:
        self._target_node(node)
        self._act(
            f"taint {node} {OUT_OF_SERVICE['key']}=nodeshutdown:NoExecute",
            lambda: self._set_taints(node, True),
        )

    def unfence(self, node: str) -> None:
        self._target_node(node)
        self._act(
            f"remove taint {OUT_OF_SERVICE['key']} from {node}",
            lambda: self._set_taints(node, False),
        )

    def reschedule(self, workload: str) -> None:
        w = self.workload(workload)
        if w.node is not None:
            self._target_node(w.node)
        if w.kind is WorkloadKind.POD:
            pod = self._pod_of(workload)
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            self._act(
                f"force-delete pod {ns}/{name}",
                lambda: self._ignore_404(
                    "delete",
                    "pods",
                    self.core.delete_namespaced_pod,
                    name,
                    ns,
                    grace_period_seconds=0,
                ),
            )
            return
        vmi = self._vmi_of(workload)
        ns, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
        try:
            launcher = self._launcher_of(vmi)
            lname = launcher["metadata"]["name"]
            self._act(
                f"force-delete pod {ns}/{lname}",
                lambda: self._ignore_404(
                    "delete",
                    "pods",
                    self.core.delete_namespaced_pod,
                    lname,
                    ns,
                    grace_period_seconds=0,
                ),
            )
        except BackendError:
            pass  # no launcher left: deleting the VMI is enough
        self._act(
            f"force-delete VMI {ns}/{name}",
            lambda: self._ignore_404(
                "delete",
                "virtualmachineinstances",
                self.custom.delete_namespaced_custom_object,
                *KV,
                ns,
                "virtualmachineinstances",
                name,
                grace_period_seconds=0,
            ),
        )

    def start_migration(self, workload: str, node: str | None = None) -> str | None:
        """Start a live migration of the workload's VMI; the migration's name."""
        self.require_kubevirt()
        vmi = self._vmi_of(workload)
        ns = vmi["metadata"]["namespace"]
        body: Obj = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstanceMigration",
            "metadata": {
                "generateName": f"rto-{vmi['metadata']['name']}-",
                "labels": self._labels(workload),
            },
            "spec": {"vmiName": vmi["metadata"]["name"]},
        }
        if node is not None:
            # KubeVirt >= 1.3: the target must also match this selector.
            body["spec"]["addedNodeSelector"] = {"kubernetes.io/hostname": node}
        made = self._act(
            f"create VirtualMachineInstanceMigration for {ns}/{vmi['metadata']['name']}",
            lambda: self._call(
                "create",
                "virtualmachineinstancemigrations",
                self.custom.create_namespaced_custom_object,
                *KV,
                ns,
                "virtualmachineinstancemigrations",
                body,
            ),
        )
        return None if made is None else str(made["metadata"]["name"])

    def wait_migration(self, name: str, timeout: int = 300) -> str:
        """Follow one migration through a watch until Succeeded/Failed; its last phase."""
        ns = self.config.namespaces[0]
        resp = self._call(
            "watch",
            "virtualmachineinstancemigrations",
            raw_request,
            self.api,
            "GET",
            resource_path(ResourceRef(*KV, "virtualmachineinstancemigrations", ns)),
            [
                ("watch", "true"),
                ("timeoutSeconds", timeout),
                ("fieldSelector", f"metadata.name={name}"),
            ],
            timeout=(5, timeout + 10),
        )
        from kubernetes.watch.watch import iter_resp_lines

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
        source = self.workload(workload).node or ""
        name = self.start_migration(workload, node)
        if name is None:  # dry-run
            return {"downtime_ms": "", "total_ms": "", "source": source, "target": ""}
        phase = self.wait_migration(name)
        if phase != "Succeeded":
            raise BackendError(f"migration {name} of {workload} ended {phase or 'without a phase'}")
        state = (self._vmi_of(workload).get("status") or {}).get("migrationState") or {}
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
        if self.workload(workload).kind is not WorkloadKind.VMI:
            raise BackendError(f"{workload} is a pod: only a VMI guest can be hung")
        self.hang_guest(workload)

    def resume_workload(self, workload: str) -> None:
        st = self.workload(workload)
        if st.kind is not WorkloadKind.VMI:
            raise BackendError(f"{workload} is a pod: only a VMI guest can be resumed")
        paused = st.condition("Paused")
        if paused is not None and paused.status:
            vmi = self._vmi_of(workload)
            ns, name = vmi["metadata"]["namespace"], vmi["metadata"]["name"]
            self._act(f"unpause VMI {ns}/{name}", partial(self._sub, ns, name, "unpause"))
        else:
            self.hang_guest(workload, resume=True)

    def _observed_pod(self, workload: str) -> tuple[Obj, WorkloadKind] | None:
        """The pod whose usage and output stand for ``workload``: its own pod, or
        a VMI's virt-launcher pod (QEMU runs in its "compute" container). None
        when it has none now (deleted, being re-created, not scheduled)."""
        pod = self._current_pods().get(workload)
        if pod is not None:
            return pod, WorkloadKind.POD
        for v in self._raw_vmis():
            if self._vmi_status(v).name == workload:
                try:
                    return self._launcher_of(v), WorkloadKind.VMI
                except BackendError as exc:
                    if "no virt-launcher pod" in str(exc):
                        return None
                    raise
        return None

    def metrics(self, workload: str) -> MetricSample | None:
        """A metrics-server reading of the workload's pod (``cluster.kube.observe``).

        None when metrics.k8s.io is not served (asked once), when the pod has no
        reading yet or the workload has no pod now (down: the sampler counts it
        missing). metrics-server publishes a CPU rate and a working set only, so:
        ``cpu_s`` is the rate integrated between samples (an estimate, from 0 for
        each new pod); for a VMI it is the whole virt-launcher pod (vCPUs, QEMU's
        own threads and virt-launcher cannot be told apart), so ``host_cpu_s`` =
        ``cpu_s``; ``mem_bytes`` is the pod's working set (for a VMI the guest
        memory QEMU touched plus its overhead, hence ``overhead_bytes`` 0); disk
        and network stay 0. An RBAC denial raises (the sampler keeps the message).
        """
        if not self._metrics.available():
            return None
        found = self._observed_pod(workload)
        if found is None:
            return None  # no pod now: nothing running to read
        pod, kind = found
        meta = pod["metadata"]
        usage = self._metrics.usage(meta["namespace"], meta["name"])
        if usage is None:
            return None
        t = self.clock.now()
        cpu_s = self._metrics.cpu_seconds(workload, meta.get("uid", meta["name"]), t, usage.cores)
        return MetricSample(
            t=t,
            workload=workload,
            kind=kind.value,
            cpu_s=cpu_s,
            host_cpu_s=cpu_s,
            mem_bytes=usage.mem_bytes,
        )

    def _log_source(self, workload: str) -> LogSource:
        found = self._observed_pod(workload)
        if found is None:
            # The follower backs off and asks again: a new pod is on its way.
            raise BackendError(f"workload {workload!r} has no pod to read the log of now")
        pod, kind = found
        names = [c["name"] for c in (pod.get("spec") or {}).get("containers") or ()]
        if kind is WorkloadKind.POD:
            container = "main" if "main" in names else (names[0] if names else "main")
        else:
            # The serial console (KubeVirt's guest-console-log sidecar) if enabled,
            # else virt-launcher's own output.
            container = "guest-console-log" if "guest-console-log" in names else "compute"
        meta = pod["metadata"]
        return LogSource(meta["namespace"], meta["name"], container, meta.get("uid", ""))

    def vm_accelerator(self) -> str | None:
        """Unknown on a real cluster: whether KubeVirt emulates (useEmulation) or
        uses /dev/kvm is per node and not in the API the harness is granted."""
        return None

    def log_path(self, workload: str) -> Path | None:
        """A local file the workload's container log (a VMI: its serial console) is
        streamed into by a ``PodLogFollower`` started on the first call and stopped
        by ``close``; the file holds this backend instance's output only."""
        with self._log_lock:
            follower = self._log_followers.get(workload)
            if follower is None:
                if self._log_dir is None:
                    root = Path(tempfile.gettempdir()) / "rto-kube-logs"
                    root.mkdir(parents=True, exist_ok=True)
                    self._log_dir = Path(tempfile.mkdtemp(prefix=f"{self.context}-", dir=root))
                follower = PodLogFollower(
                    self.api,
                    partial(self._log_source, workload),
                    self._log_dir / f"{workload}.log",
                    explain=self._explain,
                )
                follower.start()
                self._log_followers[workload] = follower
            return follower.path
