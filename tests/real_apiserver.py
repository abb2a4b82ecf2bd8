"""A real control plane for the kube backend's tests: etcd + kube-apiserver + KCM.

Filled by ``scripts/build-kube.sh`` (the v1.34.4 binaries in ``KUBE_BIN``,
overridable with ``$RTO_KUBE_BIN``); read by tests/test_kube_real_apiserver.py,
which imports the ``real_apiserver`` session fixture from here (as the other
tests import from fakes.py). The fixture makes a CA and certificates with
Debian's ``openssl`` (serving cert for 127.0.0.1, an admin client cert in
``system:masters``, a client cert ``rto-nobody`` with no RBAC binding, an EC
service-account key), starts etcd, kube-apiserver (Node,RBAC, default admission
plugins, privileged containers allowed) and kube-controller-manager (only the
disruption and taint-eviction controllers: PDB status, NoExecute eviction, and
node-lifecycle for the latter's pod index) on free ports of 127.0.0.1, waits
for ``/readyz`` with ``core.wait.poll_until`` and writes a kubeconfig with
contexts ``rto-real`` (admin) and ``rto-nobody``. There is no kubelet and no
scheduler: tests create Nodes and Pods (with ``spec.nodeName``) through the API
and stand them up by patching their status subresource as the admin.

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
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from cluster.kube.backend import KubeBackend
from cluster.kube.config import KubeConfig
from cluster.lab.kube.kubevirt_crds import install_crds
from cluster.lab.kube.pki import make_ca, make_cert
from core.errors import LabError
from core.wait import poll_until

__all__ = [
    "CONTEXT",
    "KUBE_BIN",
    "NOBODY",
    "NS",
    "RealApiserver",
    "kubevirt_crds",
    "real_apiserver",
    "remove_crds",
]

KUBE_BIN = Path(os.environ.get("RTO_KUBE_BIN", "/var/cache/rto-harness/kube/v1.34.4/bin"))
CONTEXT = "rto-real"  # the admin (system:masters)
NOBODY = "rto-nobody"  # a client certificate with no RBAC binding
NS = "rto"
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
    make_cert(d, "nobody", f"/CN={NOBODY}")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=d)
    _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


def _kubeconfig(path: Path, server: str, pki: Path) -> None:
    users = {CONTEXT: "admin", NOBODY: "nobody"}
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
        return KubeConfig(
            contexts=(context,), kubeconfig=str(self.kubeconfig), namespaces=(NS,), **kw
        )

    def backend(self, context: str = CONTEXT, **kw: Any) -> KubeBackend:
        """A KubeBackend on ``context`` (real sleeps: waits hit a real server)."""
        kw.setdefault("echo", lambda m: None)
        return KubeBackend(self.config(context), **kw)

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
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NS)))
        # No serviceaccount controller: the ServiceAccount admission plugin needs "default".
        core.create_namespaced_service_account(
            NS, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="default"))
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

    poll_until(gone, timeout, f"CRDs {', '.join(names)} to be deleted", interval=0.1)


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
