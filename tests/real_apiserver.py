"""A real control plane for the kube backend's tests: etcd + kube-apiserver + KCM.

Filled by ``scripts/build-kube.sh`` (the v1.34.4 binaries in ``KUBE_BIN``,
overridable with ``$RTO_KUBE_BIN``); read by the kube backend's tests
(tests/test_kube_real_apiserver.py, test_kube_real_kubevirt.py,
test_kube_node_driver.py, test_kube_cli.py, test_kube_probe.py), which import
the ``real_apiserver`` session fixture and the helpers below from here (as the
other tests import from fakes.py). The fixture makes a CA and certificates with
Debian's ``openssl`` (serving cert for 127.0.0.1, admin client certs in
``system:masters``, a client cert ``rto-nobody`` with no RBAC binding, an EC
service-account key), starts etcd, kube-apiserver (Node,RBAC, default admission
plugins, privileged containers allowed, an audit log) and
kube-controller-manager (only the disruption and taint-eviction controllers:
PDB status, NoExecute eviction, and node-lifecycle for the latter's pod index)
on free ports of 127.0.0.1, waits for ``/readyz`` with ``core.wait.poll_until``
and writes a kubeconfig with contexts ``rto-real`` (admin: the tests' own
helpers and the controller-manager), ``rto-runner`` (admin too, under its own
name: the harness in tests that read what it asked of the API server) and
``rto-nobody``. Namespaces ``rto`` and ``rto-other`` (a second target
namespace). There is no kubelet, no scheduler and no ReplicaSet, Deployment or
endpoints controller: tests create Nodes and Pods (with ``spec.nodeName``)
through the API and stand them up by patching their status subresource as the
admin (``Cluster``), and write a Service's Endpoints themselves.

The audit log (``RealApiserver.audit``) holds the requests of ``rto-runner``
and ``rto-nobody`` only, at level Metadata, with each request's RequestReceived
stage: the log backend is synchronous (mode blocking), so a request's
RequestReceived event is in the file before the API server acts on it. Tests use
it to check what the harness asked: only reads in a dry run, no request at all,
no API call per probe.

The watch cache is off for configmaps only (``--watch-cache-sizes=configmaps#0``):
a watch on them goes to etcd, so compacting etcd (``compact_etcd``) makes an old
resourceVersion answer 410 Gone at once, as it does on any cluster once the
watch cache's window has passed; pods and nodes keep the real watch cache.

Missing binaries fail the fixture (never skip): ``bash scripts/build-kube.sh``
builds them (scripts/install.sh calls it).

``kubevirt_crds`` (module scope, on top of ``real_apiserver``) installs
KubeVirt's own VirtualMachine, VirtualMachineInstance and
VirtualMachineInstanceMigration CRDs (``cluster.lab.kube.kubevirt_crds``, the
file build-kube.sh's crdgen writes) for tests/test_kube_real_kubevirt.py, and
deletes them again when that module is done, waiting until kubevirt.io/v1 is
gone from discovery: the other tests of the session keep a cluster without
KubeVirt whatever order they run in. CRDs only: no virt-api (so no
subresources.kubevirt.io, no webhooks) and no virt-controller or virt-handler.

Shared helpers: ``Cluster`` (the ``cluster`` fixture) makes and stands up Nodes,
Pods, VMIs and virt-launcher pods as a kubelet and virt-handler would report
them, writes Endpoints as the endpoints controller would, grants RBAC to a user
and waits until the authorizer applies it, snapshots resourceVersions, and
cleans up after each test. ``endpoint_address`` adds ``ENDPOINT_IP`` to ``lo``
(root) and ``EndpointTarget`` serves a workload stand-in there: the service
proxy dials endpoint addresses and refuses loopback ones.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from loopback_target import LoopbackTarget

from cluster.kube import workloads
from cluster.kube.backend import KubeBackend
from cluster.kube.config import KubeConfig
from cluster.lab.kube.kubevirt_crds import install_crds
from cluster.lab.kube.pki import make_ca, make_cert
from core.errors import LabError
from core.wait import WaitTimeout, poll_until

__all__ = [
    "CONTEXT",
    "ENDPOINT_IP",
    "KUBE_BIN",
    "NOBODY",
    "NS",
    "OTHER_NS",
    "RUNNER",
    "TARGET",
    "Cluster",
    "EndpointTarget",
    "RealApiserver",
    "cluster",
    "endpoint_address",
    "kubevirt_crds",
    "not_nodes",
    "real_apiserver",
    "remove_crds",
    "wl",
]

KUBE_BIN = Path(os.environ.get("RTO_KUBE_BIN", "/var/cache/rto-harness/kube/v1.34.4/bin"))
CONTEXT = "rto-real"  # the admin (system:masters): test helpers, the controller-manager
RUNNER = "rto-runner"  # an admin too, under its own name in the audit log: the harness
NOBODY = "rto-nobody"  # a client certificate with no RBAC binding
NS = "rto"
OTHER_NS = "rto-other"  # a second target namespace
TARGET = {"rto.harness/target": "true"}
KV = ("kubevirt.io", "v1")
# The service proxy dials endpoint addresses and refuses loopback ones, so the
# workload stand-in listens on this address, added to lo for one test (root only).
ENDPOINT_IP = "198.19.255.254"
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "rules": [{"level": "Metadata", "users": [RUNNER, NOBODY]}, {"level": "None"}],
}
SERVICE_RANGE = "198.18.128.0/20"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(d: Path) -> None:
    """CA, apiserver serving cert, admin + nobody client certs, SA key (EC P-256: fast),
    with the lab's own certificate code (cluster/lab/kube/pki.py)."""
    make_ca(d, "rto-real-ca")
    make_cert(d, "apiserver", "/CN=kube-apiserver", ["IP:127.0.0.1", "DNS:localhost"])
    make_cert(d, "admin", "/O=system:masters/CN=rto-admin")
    make_cert(d, "runner", f"/O=system:masters/CN={RUNNER}")
    make_cert(d, "nobody", f"/CN={NOBODY}")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=d)
    _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


def _kubeconfig(path: Path, server: str, pki: Path) -> None:
    users = {CONTEXT: "admin", RUNNER: "runner", NOBODY: "nobody"}
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "real",
                "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": ctx,
                "user": {
                    "client-certificate": str(pki / f"{who}.crt"),
                    "client-key": str(pki / f"{who}.key"),
                },
            }
            for ctx, who in users.items()
        ],
        "contexts": [{"name": ctx, "context": {"cluster": "real", "user": ctx}} for ctx in users],
        "current-context": CONTEXT,
    }
    path.write_text(json.dumps(doc))  # JSON is YAML


@dataclass
class RealApiserver:
    """What a test needs of the running control plane."""

    workdir: Path
    kubeconfig: Path
    server: str
    etcd_url: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    startup_s: dict[str, float] = field(default_factory=dict)

    def api(self, context: str = CONTEXT) -> k8s.ApiClient:
        api: k8s.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig), context=context
        )
        return api

    def config(self, context: str = CONTEXT, **kw: Any) -> KubeConfig:
        kw.setdefault("namespaces", (NS,))
        return KubeConfig(contexts=(context,), kubeconfig=str(self.kubeconfig), **kw)

    def backend(self, context: str = CONTEXT, **kw: Any) -> KubeBackend:
        """A KubeBackend on ``context`` (real sleeps: waits hit a real server)."""
        kw.setdefault("echo", lambda m: None)
        return KubeBackend(self.config(context), **kw)

    def audit_mark(self) -> int:
        """Where the audit log ends now: ``audit`` after it reads what came later."""
        path = self.workdir / "audit.log"
        return path.stat().st_size if path.exists() else 0

    def audit(self, user: str, since: int = 0) -> list[dict[str, Any]]:
        """The requests ``user`` made (its RequestReceived audit events, one each)
        logged after the mark ``since``, oldest first. Only ``RUNNER`` and
        ``NOBODY`` are audited."""
        path = self.workdir / "audit.log"
        if not path.exists():
            return []
        with path.open("rb") as f:
            f.seek(since)
            data = f.read()
        events = []
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # being written (a request of another user's thread)
            ev = json.loads(line)
            if ev.get("stage") == "RequestReceived" and ev["user"]["username"] == user:
                events.append(ev)
        return events

    def log(self, name: str) -> str:
        p = self.workdir / f"{name}.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def etcd(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """One call of etcd's v3 JSON gateway (``kv/range``, ``kv/compaction``)."""
        req = urllib.request.Request(
            f"{self.etcd_url}/v3/{method}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            out: dict[str, Any] = json.loads(resp.read())
            return out

    def compact_etcd(self) -> int:
        """Compact etcd up to its current revision; that revision."""
        key = base64.b64encode(b"/registry").decode()
        rev = int(self.etcd("kv/range", {"key": key, "limit": 1})["header"]["revision"])
        self.etcd("kv/compaction", {"revision": str(rev), "physical": True})
        return rev


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """Stop in reverse start order, each before the next: an apiserver whose etcd
    went first hangs in its graceful shutdown (10 s and more) instead of 1 s."""
    for p in reversed(list(procs.values())):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def _readyz(server: str, pki: Path) -> Callable[[], bool]:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def check() -> bool:
        try:
            with urllib.request.urlopen(f"{server}/readyz", context=ctx, timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    return check


@pytest.fixture(scope="session")
def real_apiserver() -> Iterator[RealApiserver]:
    missing = [b for b in BINARIES if not (KUBE_BIN / b).is_file()]
    if missing:
        pytest.fail(
            f"real-apiserver tests need {', '.join(missing)} in {KUBE_BIN} (RTO_KUBE_BIN): "
            "`bash scripts/build-kube.sh` builds them (scripts/install.sh calls it)",
            pytrace=False,
        )
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="rto-real-apiserver-"))
    pki = work / "pki"
    pki.mkdir()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        _make_pki(pki)
        client_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
        etcd_url = f"http://127.0.0.1:{client_port}"
        server = f"https://127.0.0.1:{api_port}"
        rs = RealApiserver(work, work / "kubeconfig", server, etcd_url, procs)
        rs.startup_s["pki"] = time.monotonic() - t0

        def start(name: str, *argv: str) -> None:
            with open(work / f"{name}.log", "wb") as log:
                procs[name] = subprocess.Popen(
                    [str(KUBE_BIN / name), *argv],
                    cwd=work,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )

        def alive(name: str) -> None:
            if procs[name].poll() is not None:
                raise AssertionError(f"{name} exited ({procs[name].returncode}):\n{rs.log(name)}")

        start(
            "etcd",
            "--name=real",
            f"--data-dir={work / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=real=http://127.0.0.1:{peer_port}",
            "--initial-cluster-state=new",
            "--listen-metrics-urls=",
            "--log-level=warn",
        )

        def etcd_up() -> bool:
            alive("etcd")
            try:
                with urllib.request.urlopen(f"{etcd_url}/health", timeout=2) as r:
                    return bool(json.loads(r.read()).get("health") == "true")
            except OSError:
                return False

        poll_until(etcd_up, 30, "etcd /health", interval=0.1)
        rs.startup_s["etcd"] = time.monotonic() - t0
        policy = work / "audit-policy.json"
        policy.write_text(json.dumps(AUDIT_POLICY))  # JSON is YAML
        start(
            "kube-apiserver",
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            "--authorization-mode=Node,RBAC",
            # As the lab's hub (cluster/lab/kube/hub.py) and kubeadm run it: the
            # backend's node pods are privileged, refused (422) without this.
            "--allow-privileged=true",
            "--watch-cache-sizes=configmaps#0",
            f"--cert-dir={work / 'apiserver-certs'}",
            f"--audit-policy-file={policy}",
            f"--audit-log-path={work / 'audit.log'}",
            "--audit-log-mode=blocking",
        )

        def api_ready() -> bool:
            alive("kube-apiserver")
            return _readyz(server, pki)()

        poll_until(api_ready, 90, "kube-apiserver /readyz", interval=0.2)
        rs.startup_s["apiserver"] = time.monotonic() - t0
        _kubeconfig(rs.kubeconfig, server, pki)
        start(
            "kube-controller-manager",
            f"--kubeconfig={rs.kubeconfig}",
            # node-lifecycle for its pod index by spec.nodeName, which the taint-eviction
            # controller needs ("Index with name spec.nodeName does not exist"); its grace
            # periods are long so it never judges the kubelet-less Nodes by heartbeat.
            "--controllers=disruption-controller,taint-eviction-controller,"
            "node-lifecycle-controller",
            "--node-monitor-grace-period=1h",
            "--node-startup-grace-period=1h",
            "--use-service-account-credentials=false",
            "--leader-elect=false",
            "--secure-port=0",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
        )
        core = k8s.CoreV1Api(rs.api())
        for ns in (NS, OTHER_NS):
            core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=ns)))
            # No serviceaccount controller: the ServiceAccount admission plugin needs "default".
            core.create_namespaced_service_account(
                ns, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="default"))
            )
        yield rs
    finally:
        _stop(procs)
        shutil.rmtree(work, ignore_errors=True)


def remove_crds(api: k8s.ApiClient, names: list[str], timeout: float = 60) -> None:
    """Delete the CRDs ``names`` (their objects go with them) and wait until they
    and their group's discovery document are gone."""
    ext = k8s.ApiextensionsV1Api(api)
    for name in names:
        try:
            ext.delete_custom_resource_definition(name, _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise
    groups = {name.split(".", 1)[1] for name in names}

    def gone() -> bool:
        # Raw JSON: the client's models of KubeVirt's schemas take seconds to build.
        resp: Any = ext.list_custom_resource_definition(_preload_content=False)
        left = {c["metadata"]["name"] for c in json.loads(resp.data)["items"]}
        if left & set(names):
            return False
        served = {g.name for g in k8s.ApisApi(api).get_api_versions().groups}
        return not served & groups

    try:
        poll_until(gone, timeout, f"CRDs {', '.join(names)} to be deleted", interval=0.1)
    except WaitTimeout as exc:
        resp: Any = ext.list_custom_resource_definition(_preload_content=False)
        left = [
            (
                c["metadata"]["name"],
                c["metadata"].get("finalizers"),
                c.get("status", {}).get("conditions"),
            )
            for c in json.loads(resp.data)["items"]
            if c["metadata"]["name"] in names
        ]
        served = {g.name for g in k8s.ApisApi(api).get_api_versions().groups}
        raise AssertionError(f"{exc}; left: {left}; groups served: {sorted(served)}") from exc


@pytest.fixture(scope="module")
def kubevirt_crds(real_apiserver: RealApiserver) -> Iterator[list[str]]:
    """KubeVirt's CRDs installed into the session's API server for one test module."""
    t0 = time.monotonic()
    api = real_apiserver.api()
    try:
        names = install_crds(api)
    except LabError as exc:
        pytest.fail(f"KubeVirt CRDs: {exc}", pytrace=False)
    real_apiserver.startup_s["kubevirt_crds"] = time.monotonic() - t0
    try:
        yield names
    finally:
        remove_crds(api, names)


def wl(name: str) -> dict[str, str]:
    """The labels of workload ``name``'s pods (and VMIs): a target, named."""
    return {**TARGET, "rto.harness/workload": name}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Cluster:
    """Admin-side helpers: make and stand up Nodes and Pods, clean up after a test.

    What a kubelet, virt-handler, virt-controller or the endpoints controller
    would write, a test writes here through the API as the admin (none of them
    runs). The API handles are ``Any`` where bodies are plain mappings, which
    the client's typed signatures (they want its models) do not describe.
    """

    def __init__(self, rs: RealApiserver) -> None:
        self.rs = rs
        api = rs.api()
        self.core: Any = k8s.CoreV1Api(api)
        self.policy: Any = k8s.PolicyV1Api(api)
        self.rbac: Any = k8s.RbacAuthorizationV1Api(api)
        self.net: Any = k8s.NetworkingV1Api(api)
        self.apps: Any = k8s.AppsV1Api(api)
        self.custom: Any = k8s.CustomObjectsApi(api)
        self.suffix = uuid.uuid4().hex[:6]  # tests share one apiserver: own names each
        self.nodes: list[str] = []
        self.pods: list[str] = []
        self.vmis: list[str] = []
        self.endpoints_made: list[str] = []
        self.roles: list[str] = []

    def name(self, base: str) -> str:
        return f"{base}-{self.suffix}"

    def node(self, base: str, labels: dict[str, str] | None = None, ready: bool = True) -> str:
        name = f"{base}-{self.suffix}"
        self.core.create_node({"metadata": {"name": name, "labels": labels or dict(TARGET)}})
        self.nodes.append(name)
        self.set_node_ready(name, ready)
        return name

    def set_node_ready(self, name: str, ready: bool) -> None:
        now = _now()
        cond = {
            "type": "Ready",
            "status": "True" if ready else "False",
            "reason": "KubeletReady" if ready else "KubeletNotReady",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        self.core.patch_node_status(name, {"status": {"conditions": [cond]}})

    def pod(self, base: str, node: str, workload: str, ip: str | None = None) -> str:
        """A pod of ``workload`` on ``node``, Running and Ready (with ``ip``, if given)."""
        name = f"{base}-{self.suffix}"
        body = {
            "metadata": {"name": name, "labels": wl(workload)},
            "spec": {
                "nodeName": node,
                "automountServiceAccountToken": False,
                "containers": [{"name": "main", "image": "busybox"}],
            },
        }
        self.core.create_namespaced_pod(NS, body)
        self.pods.append(name)
        self.run_pod(name, ip=ip)
        return name

    def run_pod(
        self, name: str, restarts: int = 0, ip: str | None = None, ready: bool = True
    ) -> None:
        """What a kubelet would report: Running, Ready (or not), one container."""
        now = _now()
        status: dict[str, Any] = {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": str(ready), "lastTransitionTime": now},
            ],
            "containerStatuses": [
                {
                    "name": "main",
                    "image": "busybox",
                    "imageID": "",
                    "ready": ready,
                    "restartCount": restarts,
                    "containerID": f"containerd://{name}-{restarts}",
                    "state": {"running": {"startedAt": now}},
                }
            ],
        }
        if ip:
            status |= {"podIP": ip, "podIPs": [{"ip": ip}]}
        self.core.patch_namespaced_pod_status(name, NS, {"status": status})

    def delete_pod(self, name: str) -> None:
        """Gone at once (grace 0): what a kubelet's confirmation ends with."""
        self.core.delete_namespaced_pod(name, NS, grace_period_seconds=0)

    def vmi(self, name: str, node: str, ip: str) -> None:
        """A VMI of workload ``name`` (the spec virt-controller copies from the
        harness's own VM template), Running on ``node`` as virt-handler reports
        it: a patch of the whole object, the VMI CRD has no status subresource.
        Needs the ``kubevirt_crds`` fixture."""
        image = "quay.io/kubevirt/cirros-container-disk-demo:v1.4.0"
        vm = workloads.virtual_machine(name, wl(name), image, None, "LiveMigrate")
        body = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "labels": wl(name)},
            "spec": vm["spec"]["template"]["spec"],
        }
        self.custom.create_namespaced_custom_object(*KV, NS, "virtualmachineinstances", body)
        self.vmis.append(name)
        status = {
            "phase": "Running",
            "nodeName": node,
            "interfaces": [{"name": "default", "ipAddress": ip, "ipAddresses": [ip]}],
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": _now()}],
        }
        self.custom.patch_namespaced_custom_object(
            *KV, NS, "virtualmachineinstances", name, {"status": status}
        )

    def launcher(self, vmi: str, node: str, ip: str) -> str:
        """virt-controller's virt-launcher pod for ``vmi`` (labels copied from the
        VMI), Running with ``ip`` as its kubelet would report it."""
        name = f"virt-launcher-{vmi}-{uuid.uuid4().hex[:5]}"
        labels = {**wl(vmi), "kubevirt.io": "virt-launcher", "vm.kubevirt.io/name": vmi}
        body = {
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "nodeName": node,
                "automountServiceAccountToken": False,
                "containers": [{"name": "compute", "image": "virt-launcher"}],
            },
        }
        self.core.create_namespaced_pod(NS, body)
        self.pods.append(name)
        status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        self.core.patch_namespaced_pod_status(name, NS, {"status": status})
        return name

    def endpoints(
        self, svc: str, port: int, ready: list[str], not_ready: list[str] | None = None
    ) -> None:
        """What the endpoints controller writes for Service ``svc``: its ready and
        not-ready pods (by name, at their pod IP) on port ``port`` under the port
        name the harness's Services use ("probe"); ``port`` stands for the
        Service's targetPort. The service proxy takes an address only with a
        targetRef naming a pod that has that IP."""

        def addr(pod: str) -> dict[str, Any]:
            ip = self.core.read_namespaced_pod(pod, NS).status.pod_ip
            return {"ip": ip, "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}}

        subset: dict[str, Any] = {"ports": [{"name": "probe", "port": port, "protocol": "TCP"}]}
        if ready:
            subset["addresses"] = [addr(p) for p in ready]
        if not_ready:
            subset["notReadyAddresses"] = [addr(p) for p in not_ready]
        subsets = [subset] if len(subset) > 1 else []
        body = {"metadata": {"name": svc}, "subsets": subsets}
        if svc in self.endpoints_made:
            self.core.replace_namespaced_endpoints(svc, NS, body)
        else:
            self.core.create_namespaced_endpoints(NS, body)
            self.endpoints_made.append(svc)

    def grant(self, user: str, rules: list[dict[str, Any]]) -> None:
        """A ClusterRole with ``rules`` bound to ``user``; returns once the RBAC
        authorizer (which reads bindings from an informer) allows the first verb
        of every rule."""
        role = f"rto-test-{self.suffix}-{len(self.roles)}"
        subject = [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}]
        ref = {"kind": "ClusterRole", "name": role, "apiGroup": "rbac.authorization.k8s.io"}
        self.rbac.create_cluster_role({"metadata": {"name": role}, "rules": rules})
        self.roles.append(role)
        self.rbac.create_cluster_role_binding(
            {"metadata": {"name": role}, "subjects": subject, "roleRef": ref}
        )
        authz: Any = k8s.AuthorizationV1Api(self.core.api_client)

        def allowed(rule: dict[str, Any]) -> bool:
            resource, _, sub = rule["resources"][0].partition("/")
            attrs = {
                "namespace": NS,
                "verb": rule["verbs"][0],
                "group": rule["apiGroups"][0],
                "resource": resource,
                "subresource": sub,
            }
            review = {"spec": {"user": user, "resourceAttributes": attrs}}
            return bool(authz.create_subject_access_review(review).status.allowed)

        poll_until(
            lambda: all(allowed(r) for r in rules), 10, f"RBAC to apply {role}", interval=0.05
        )

    def get(self, plural: str, name: str, ns: str = NS) -> dict[str, Any] | None:
        """One object as the API serves it (JSON), None if there is none."""
        core, apps, net = self.core, self.apps, self.net
        read: dict[str, Any] = {
            "pods": core.read_namespaced_pod,
            "services": core.read_namespaced_service,
            "endpoints": core.read_namespaced_endpoints,
            "configmaps": core.read_namespaced_config_map,
            "deployments": apps.read_namespaced_deployment,
            "networkpolicies": net.read_namespaced_network_policy,
        }
        try:
            if plural in read:
                resp = read[plural](name, ns, _preload_content=False)
                obj: dict[str, Any] = json.loads(resp.data)
            else:  # kubevirt.io
                obj = self.custom.get_namespaced_custom_object(*KV, ns, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def versions(self) -> dict[tuple[str, str, str], str]:
        """(resource, namespace, name) -> resourceVersion of every Node and of every
        object in the target namespaces (KubeVirt's when it is served): equal
        before and after means nothing was created, changed or deleted."""
        out: dict[tuple[str, str, str], str] = {}

        def add(plural: str, resp: Any) -> None:
            items = resp["items"] if isinstance(resp, dict) else json.loads(resp.data)["items"]
            for o in items:
                meta = o["metadata"]
                out[(plural, meta.get("namespace", ""), meta["name"])] = meta["resourceVersion"]

        add("nodes", self.core.list_node(_preload_content=False))
        served = {g.name for g in k8s.ApisApi(self.core.api_client).get_api_versions().groups}
        for ns in (NS, OTHER_NS):
            for plural, fn in (
                ("pods", self.core.list_namespaced_pod),
                ("services", self.core.list_namespaced_service),
                ("configmaps", self.core.list_namespaced_config_map),
                ("deployments", self.apps.list_namespaced_deployment),
                ("networkpolicies", self.net.list_namespaced_network_policy),
            ):
                add(plural, fn(ns, _preload_content=False))
            if KV[0] in served:
                for plural in ("virtualmachines", "virtualmachineinstances"):
                    add(plural, self.custom.list_namespaced_custom_object(*KV, ns, plural))
        return out

    def raw_node(self, name: str) -> Any:
        return self.core.read_node(name)

    def pod_or_none(self, name: str) -> Any:
        try:
            return self.core.read_namespaced_pod(name, NS)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def cleanup(self) -> None:
        def quietly(fn: Any, *a: Any, **kw: Any) -> None:
            try:
                fn(*a, **kw)
            except ApiException as exc:
                if exc.status != 404:
                    raise

        for role in self.roles:
            quietly(self.rbac.delete_cluster_role_binding, role)
            quietly(self.rbac.delete_cluster_role, role)
        for v in self.vmis:
            quietly(
                self.custom.delete_namespaced_custom_object, *KV, NS, "virtualmachineinstances", v
            )
        for e in self.endpoints_made:
            quietly(self.core.delete_namespaced_endpoints, e, NS)
        for p in self.pods:
            quietly(self.core.delete_namespaced_pod, p, NS, grace_period_seconds=0)
        for n in self.nodes:
            self.core.delete_node(n)


@pytest.fixture
def cluster(real_apiserver: RealApiserver) -> Iterator[Cluster]:
    c = Cluster(real_apiserver)
    try:
        yield c
    finally:
        c.cleanup()


@pytest.fixture
def endpoint_address() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("adding an address to lo for the proxied endpoint needs root")
    dev = ["ip", "addr", "add", f"{ENDPOINT_IP}/32", "dev", "lo"]
    subprocess.run(dev, check=True, capture_output=True)
    try:
        yield ENDPOINT_IP
    finally:
        dev[2] = "del"
        subprocess.run(dev, check=True, capture_output=True)


class EndpointTarget(LoopbackTarget):
    """tests/loopback_target.py's workload stand-in on ``host`` (``ENDPOINT_IP``:
    the service proxy refuses loopback endpoints), keeping the request line of
    each request it gets: what the API server forwarded."""

    def __init__(self, name: str = "web", instance: str = "i1", host: str = ENDPOINT_IP) -> None:
        super().__init__(name, instance)
        self.host = host
        self.request_lines: list[str] = []

    def _listen(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(256)
        self.port = s.getsockname()[1]
        self._listener = s
        self._accept_thread = threading.Thread(target=self._accept, args=(s,), daemon=True)
        self._accept_thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        with contextlib.suppress(OSError):
            head = conn.recv(4096, socket.MSG_PEEK)  # left for the stand-in to read
            self.request_lines.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        super()._serve(conn)


def not_nodes(versions: dict[tuple[str, str, str], str]) -> dict[tuple[str, str, str], str]:
    """``Cluster.versions`` but Nodes (the controller-manager updates those itself)."""
    return {k: v for k, v in versions.items() if k[0] != "nodes"}
