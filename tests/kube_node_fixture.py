"""A private lab network with a real etcd + kube-apiserver in its hub, for node tests.

Filled by nobody; read by tests/test_lab_kube_node.py (its module fixture is
``kube_node_lab``). The lab is private (tests/private_lab.py's ``isolate``: own
state and run dirs ``/var/lib/rto-lab-<name>`` and ``/run/rto-lab-<name>``, own
netns prefix, so node cgroups are ``rto-lab/<prefix>-<node>``): its hub and node
namespaces are made with ``net.create_hub``/``create_node_net`` as ``lab up``
makes them, and etcd and the API server run in the hub namespace
(``nsenter --net``) where the kubelets reach them at ``HUB_IP:6443`` over the
lab bridge. No controller-manager, no scheduler: pods are bound with
``spec.nodeName``, and the API is read and written from a thread that entered
the hub namespace (``KubeNodeLab.api``). Certificates come from Debian's
openssl: a CA, the API server's, an admin in ``system:masters``, and per node
a kubelet client certificate (``O=system:nodes``, ``CN=system:node:<node>``)
and a serving certificate for its address.
"""

from __future__ import annotations

import shutil
import signal
import ssl
import subprocess
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from lab_node_kit import in_netns
from private_lab import PrivateLab

from cluster.lab import cgroups, net, state
from cluster.lab.kube import node as kube_node
from cluster.lab.kube import paths
from cluster.lab.kube.pki import kubeconfig, make_ca, make_cert
from core.wait import poll_until

__all__ = ["NS", "KubeNodeLab", "kube_node_lab"]

T = TypeVar("T")
NS = "rto"


def _openssl(pki: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=pki, check=True, capture_output=True)


def _kubeconfig(path: Path, pki: Path, who: str, server: str) -> None:
    kubeconfig(path, server, pki / "ca.crt", pki / f"{who}.crt", pki / f"{who}.key", who)


@dataclass
class KubeNodeLab:
    """The private lab: its nodes (name -> index), PKI, and the API from the hub."""

    lab: PrivateLab
    nodes: dict[str, int]
    pki: Path
    admin: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spec(self, node: str, **kw: Any) -> kube_node.KubeletSpec:
        return kube_node.KubeletSpec(
            node=node,
            index=self.nodes[node],
            kubeconfig=paths.kube_dir() / f"{node}.kubeconfig",
            ca_file=self.pki / "ca.crt",
            serving_cert=self.pki / f"{node}-serving.crt",
            serving_key=self.pki / f"{node}-serving.key",
            **kw,
        )

    def api(self, fn: Callable[[k8s.CoreV1Api], T]) -> T:
        """``fn(CoreV1Api)`` in a thread of the hub netns (where the API server is)."""

        def call() -> T:
            api = k8s_config.new_client_from_config(config_file=str(self.admin))  # type: ignore[no-untyped-call]
            try:
                return fn(k8s.CoreV1Api(api))
            finally:
                api.close()

        return in_netns(net.HUB_NS, call)

    def log(self, name: str) -> str:
        p = Path(state.STATE_DIR) / "logs" / f"{name}.log"
        return "\n".join(p.read_text(errors="replace").splitlines()[-15:]) if p.exists() else ""


def _start(lab: KubeNodeLab, name: str, *argv: str) -> None:
    logs = Path(state.STATE_DIR) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "wb") as out:
        lab.procs[name] = subprocess.Popen(
            ["nsenter", f"--net={net.NETNS_DIR / net.HUB_NS}", str(paths.bin_dir() / name), *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=state.STATE_DIR,
        )


def _alive(lab: KubeNodeLab, name: str) -> None:
    p = lab.procs[name]
    if p.poll() is not None:
        raise AssertionError(f"{name} exited ({p.returncode}):\n{lab.log(name)}")


def _get_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
    def get() -> bool:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    return in_netns(net.HUB_NS, get)


def _control_plane(lab: KubeNodeLab) -> None:
    pki = lab.pki
    pki.mkdir(parents=True)
    make_ca(pki, "rto-kube-node-test-ca")
    make_cert(pki, "apiserver", "/CN=kube-apiserver", [f"IP:{state.HUB_IP}", "IP:127.0.0.1"])
    make_cert(pki, "admin", "/O=system:masters/CN=rto-admin")
    make_cert(pki, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client")
    server = f"https://{state.HUB_IP}:{paths.API_PORT}"
    for node, index in lab.nodes.items():
        make_cert(pki, node, f"/O=system:nodes/CN=system:node:{node}")
        make_cert(
            pki, f"{node}-serving", f"/CN={node}", [f"IP:{state.node_ip(index)}", f"DNS:{node}"]
        )
        _kubeconfig(paths.kube_dir() / f"{node}.kubeconfig", pki, node, server)
    _openssl(pki, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key")
    _openssl(pki, "ec", "-in", "sa.key", "-pubout", "-out", "sa.pub")
    _kubeconfig(lab.admin, pki, "admin", server)

    etcd = "http://127.0.0.1:2379"  # the hub's own loopback: no clash with another lab
    _start(lab, "etcd", "--name=t", f"--data-dir={paths.kube_dir() / 'etcd'}",
           f"--listen-client-urls={etcd}", f"--advertise-client-urls={etcd}",
           "--listen-peer-urls=http://127.0.0.1:2380",
           "--initial-advertise-peer-urls=http://127.0.0.1:2380",
           "--initial-cluster=t=http://127.0.0.1:2380", "--initial-cluster-state=new",
           "--listen-metrics-urls=", "--log-level=warn")  # fmt: skip

    def etcd_up() -> bool:
        _alive(lab, "etcd")
        return _get_ok(f"{etcd}/health")

    poll_until(etcd_up, 30, "etcd /health", interval=0.1)
    _start(lab, "kube-apiserver", f"--etcd-servers={etcd}", "--bind-address=0.0.0.0",
           f"--advertise-address={state.HUB_IP}", f"--secure-port={paths.API_PORT}",
           f"--tls-cert-file={pki / 'apiserver.crt'}",
           f"--tls-private-key-file={pki / 'apiserver.key'}",
           f"--client-ca-file={pki / 'ca.crt'}",
           f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
           f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
           f"--service-account-key-file={pki / 'sa.pub'}",
           f"--service-account-signing-key-file={pki / 'sa.key'}",
           "--service-account-issuer=https://kubernetes.default.svc",
           f"--service-cluster-ip-range={paths.SERVICE_CIDR}",
           "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
           f"--cert-dir={paths.kube_dir() / 'apiserver-certs'}")  # fmt: skip
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def api_up() -> bool:
        _alive(lab, "kube-apiserver")
        return _get_ok(f"{server}/readyz", ctx)

    poll_until(api_up, 90, "kube-apiserver /readyz", interval=0.2)
    lab.api(lambda core: core.create_namespace({"metadata": {"name": NS}}))
    # No controller-manager: the ServiceAccount admission plugin needs "default".
    lab.api(
        lambda core: core.create_namespaced_service_account(NS, {"metadata": {"name": "default"}})
    )


def _teardown(lab: KubeNodeLab) -> list[str]:
    errors: list[str] = []
    for node in lab.nodes:
        try:
            kube_node.stop_node(node)
        except Exception as exc:
            errors.append(f"stop_node({node}): {exc}")
    for p in reversed(list(lab.procs.values())):  # apiserver before etcd
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
    for node in lab.nodes:
        try:
            cgroups.delete_node_cgroup(node)
            net.delete_node_net(node)
        except Exception as exc:
            errors.append(f"{node}: {exc}")
    net.delete_hub()
    return errors


@pytest.fixture(scope="module")
def kube_node_lab() -> Iterator[KubeNodeLab]:
    missing = [
        b for b in ("etcd", "kube-apiserver", "kubelet", "containerd")
        if not (paths.bin_dir() / b).is_file()
    ]  # fmt: skip
    if missing:
        pytest.fail(f"{', '.join(missing)} missing in {paths.bin_dir()}: "
                    "run `bash scripts/build-kube.sh`", pytrace=False)  # fmt: skip
    tag = uuid.uuid4().hex[:4]
    private = PrivateLab(name=f"kn{tag}", prefix=f"rtkn{tag}", node_prefix="kn")
    mp = pytest.MonkeyPatch()
    private.isolate(mp)
    lab = KubeNodeLab(
        lab=private,
        nodes={private.node(i): i for i in (1, 2, 3)},  # three side by side
        pki=private.state_dir / "kube" / "pki",
        admin=private.state_dir / "kube" / "admin.kubeconfig",
    )
    errors: list[str] = []
    try:
        paths.kube_dir().mkdir(parents=True, exist_ok=True)
        net.create_hub()
        for node, index in lab.nodes.items():
            net.create_node_net(node, index)
        _control_plane(lab)
        yield lab
    finally:
        try:
            errors = _teardown(lab)
        finally:
            shutil.rmtree(private.state_dir, ignore_errors=True)
            shutil.rmtree(private.run_dir, ignore_errors=True)
            mp.undo()
    assert not errors, f"teardown failed: {errors}"
