"""Data-plane probes on kube: through the workload's Service, via the API server's proxy.

A harness on a laptop or CI runner has API access only, so ``KubeBackend`` probes
``/api/v1/namespaces/NS/services/SVC:8080/proxy/cgi-bin/healthz`` on the API server. Here
the API server is the emulator (tests/kube_emulator.py), which really forwards to
a ready pod behind the Service: the pod's IP is set to 127.0.0.1 and the
Service's targetPort to a ``LoopbackTarget`` standing in for the workload's
endpoint. The real Prober and Recorder run against it. HTTPS to the API server is
covered in tests/test_prober.py (the emulator speaks plain HTTP).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_emulator import KubeEmulator, emulator, write_kubeconfig
from loopback_target import LoopbackTarget

from chaos.recorder import Recorder
from cluster.api import WorkloadKind
from cluster.kube.backend import KubeBackend
from cluster.kube.config import KubeConfig
from core.clock import RealClock
from core.errors import BackendError
from core.timeline import EventKind, Timeline

NS = "rto"
TARGET = {"rto.harness/target": "true"}


def wl(name: str) -> dict[str, str]:
    return {**TARGET, "rto.harness/workload": name}


@pytest.fixture
def emu() -> Iterator[KubeEmulator]:
    with emulator() as e:
        for n in ("w1", "w2"):
            e.add_node(n, TARGET)
        yield e


@pytest.fixture
def endpoint() -> Iterator[LoopbackTarget]:
    srv = LoopbackTarget(name="web", instance="i1").start()
    try:
        yield srv
    finally:
        srv.stop()


def make(emu: KubeEmulator, tmp_path: Path, **cfg: object) -> KubeBackend:
    kc = write_kubeconfig(str(tmp_path / "kubeconfig"), {"emu": emu.url}, "emu")
    cfg.setdefault("namespaces", ("other", NS))  # creation goes to the first one
    config = KubeConfig(contexts=("emu",), kubeconfig=kc, **cfg)
    return KubeBackend(config, sleep=lambda s: None, echo=lambda m: None)


def point_service_at(emu: KubeEmulator, svc: str, port: int) -> None:
    """The Service's targetPort -> the loopback stand-in's port (the pod IP is 127.0.0.1)."""
    obj = emu.get("", "services", NS, svc)
    assert obj is not None
    obj["spec"]["ports"][0]["targetPort"] = port
    emu.put("", "services", obj)


def test_create_and_delete_workload_manage_its_service(emu: KubeEmulator, tmp_path: Path) -> None:
    b = make(emu, tmp_path)
    b.create_workload("web", WorkloadKind.POD)
    b.create_workload("vm2", WorkloadKind.VMI)
    for name in ("web", "vm2"):
        svc = emu.get("", "services", "other", name)
        assert svc is not None, name
        assert svc["spec"]["selector"] == wl(name)
        assert svc["spec"]["ports"] == [
            {"name": "probe", "port": 8080, "targetPort": 8080, "protocol": "TCP"}
        ]
    # The VM's template carries the labels KubeVirt copies to the VMI and then
    # to its virt-launcher pod: what the Service selects.
    vm = emu.get("kubevirt.io", "virtualmachines", "other", "vm2")
    assert vm is not None and vm["spec"]["template"]["metadata"]["labels"] == wl("vm2")
    b._create_service("other", "web", wl("web"))  # a rerun keeps the existing Service
    b.delete_workload("web")
    b.delete_workload("web")  # idempotent: journal replay, campaign clean-up
    b.delete_workload("vm2")
    assert emu.get("", "services", "other", "web") is None
    assert emu.get("", "services", "other", "vm2") is None
    assert emu.get("apps", "deployments", "other", "web") is None


def test_dry_run_plans_the_service_and_creates_nothing(emu: KubeEmulator, tmp_path: Path) -> None:
    kc = write_kubeconfig(str(tmp_path / "kubeconfig"), {"emu": emu.url}, "emu")
    config = KubeConfig(contexts=("emu",), kubeconfig=kc, namespaces=(NS,))
    b = KubeBackend(config, dry_run=True, echo=lambda m: None)
    before = emu.rv
    b.create_workload("web", WorkloadKind.POD)
    b.delete_workload("web")
    assert emu.rv == before
    assert b.plan == [
        f"create Service {NS}/web (probe endpoint, port 8080)",
        f"create Deployment {NS}/web",
        f"delete services {NS}/web",
        f"delete deployments {NS}/web",
        f"delete virtualmachines {NS}/web",
    ]


def test_probe_target_is_the_service_proxy_and_cached(emu: KubeEmulator, tmp_path: Path) -> None:
    b = make(emu, tmp_path)
    with pytest.raises(BackendError, match=r"no Service 'web' for workload 'web'.*probe: pod-ip"):
        b.probe_target("web")
    emu.put(
        "",
        "services",
        {"metadata": {"name": "web", "namespace": NS}, "spec": {"selector": wl("web")}},
    )
    t = b.probe_target("web")
    assert t is not None
    assert (t.host, t.port, t.tls) == ("127.0.0.1", int(emu.url.rsplit(":", 1)[1]), None)
    assert t.path == f"/api/v1/namespaces/{NS}/services/web:8080/proxy/cgi-bin/healthz"
    assert t.headers == (("Authorization", "Bearer emulator"),)
    calls = len(emu.requests)
    for _ in range(100):
        assert b.probe_target("web") is t
    assert len(emu.requests) == calls  # no API call per probe
    # A refreshed token rebuilds the header, keeps the rest.
    b.api.configuration.api_key["BearerToken"] = "Bearer rotated"
    t2 = b.probe_target("web")
    assert t2 is not None and t2.headers == (("Authorization", "Bearer rotated"),)
    assert t2.path == t.path and len(emu.requests) == calls
    # pod-ip mode keeps the in-cluster behaviour.
    emu.add_pod(NS, "web-a1", "w1", wl("web"))
    direct = make(emu, tmp_path, probe="pod-ip").probe_target("web")
    assert direct is not None and (direct.host, direct.port) == ("198.18.50.1", 8080)
    assert direct.path == "/cgi-bin/healthz" and direct.netns is None and direct.tls is None
    # From a namespace that reaches the pod network (the lab's hub), on the configured path.
    inside = make(emu, tmp_path, probe="pod-ip", probe_netns="hub", probe_path="/ready")
    t3 = inside.probe_target("web")
    assert t3 is not None and (t3.netns, t3.path) == ("hub", "/ready")


def test_user_service_template_and_https_api_server(tmp_path: Path) -> None:
    # No request is made: the Service's namespace is known once cached, and
    # the TLS context is built from the kubeconfig alone.
    import ssl

    from kubernetes import client as k8s

    cfg = k8s.Configuration()
    cfg.host = "https://api.example:6443/prefix"
    cfg.verify_ssl = False
    cfg.api_key = {"BearerToken": "Bearer t0k"}
    config = KubeConfig(contexts=("c",), namespaces=(NS,), probe_service="{workload}-http")
    b = KubeBackend(config, api_client=k8s.ApiClient(cfg))
    b._proxy_targets["db"] = (None, NS, None)  # type: ignore[assignment]  # namespace known
    t = b.probe_target("db")
    assert t is not None and (t.host, t.port, t.server_hostname) == (
        "api.example",
        6443,
        "api.example",
    )
    assert t.path == f"/prefix/api/v1/namespaces/{NS}/services/db-http:8080/proxy/cgi-bin/healthz"
    assert isinstance(t.tls, ssl.SSLContext) and t.tls.verify_mode is ssl.CERT_NONE
    assert t.headers == (("Authorization", "Bearer t0k"),)


def test_recorder_sees_the_pod_through_its_service(
    emu: KubeEmulator, endpoint: LoopbackTarget, tmp_path: Path
) -> None:
    b = make(emu, tmp_path, namespaces=(NS,))
    b.create_workload("web", WorkloadKind.POD)
    emu.add_pod(NS, "web-a1", "w1", wl("web"))  # what the Deployment controller would do
    emu.set_pod_ready(NS, "web-a1", True, pod_ip="127.0.0.1")
    point_service_at(emu, "web", endpoint.port)
    clock = RealClock()
    tl = Timeline(origin=clock.now())
    rec = Recorder(b, "web", tl, clock=clock, good_needed=3)
    rec.start()
    try:
        assert rec.wait_until_up(5), "never up through the service proxy"
        emu.set_pod_ready(NS, "web-a1", False)  # no ready endpoint: 503
        assert rec.wait_until_down(5)
        emu.set_pod_ready(NS, "web-a1", True)
        assert rec.wait_until_up(5)
        endpoint.set_mode("refuse")  # the process is gone, the pod still Ready
        assert rec.wait_until_down(5)
        endpoint.set_mode("ok")
        assert rec.wait_until_up(5)
        emu.remove("", "pods", NS, "web-a1")  # the pod is gone
        assert rec.wait_until_down(5)
        emu.add_pod(NS, "web-b2", "w2", wl("web"))
        emu.set_pod_ready(NS, "web-b2", True, pod_ip="127.0.0.1")
        assert rec.wait_until_up(5)
    finally:
        rec.stop()
        b.close()
    probes = [e for e in tl.events() if e.kind in (EventKind.PROBE_OK, EventKind.PROBE_FAIL)]
    assert [e.kind for e in probes] == [EventKind.PROBE_OK, EventKind.PROBE_FAIL] * 3 + [
        EventKind.PROBE_OK
    ]
    assert {e.data["reason"] for e in probes if e.kind is EventKind.PROBE_FAIL} == {"http 503"}
    assert all(e.data["endpoint"] == emu.url.removeprefix("http://") for e in probes)
    # The API server saw the token and forwarded the probe's path to the pod.
    auth = {a for a, _, _, _ in emu.proxied}
    assert auth == {"Bearer emulator"}
    proxied = {(u, p) for _, u, p, _ in emu.proxied}
    assert (f"127.0.0.1:{endpoint.port}", "/cgi-bin/healthz") in proxied


def test_vmi_probe_is_guest_reachability_not_phase(emu: KubeEmulator, tmp_path: Path) -> None:
    guest = LoopbackTarget(name="vm2", instance="boot1").start()
    b = make(emu, tmp_path, namespaces=(NS,))
    try:
        b.create_workload("vm2", WorkloadKind.VMI)
        vmi = emu.add_vmi(NS, "vm2", "w1", wl("vm2"), vm=False)  # virt-controller's part
        launcher = next(
            p["metadata"]["name"]
            for p in emu.items("", "pods")
            if p["metadata"]["labels"].get("vm.kubevirt.io/name") == "vm2"
        )
        emu.set_pod_ready(NS, launcher, True, pod_ip="127.0.0.1")
        point_service_at(emu, "vm2", guest.port)
        clock = RealClock()
        tl = Timeline(origin=clock.now())
        rec = Recorder(b, "vm2", tl, clock=clock, good_needed=3)
        rec.start()
        try:
            assert rec.wait_until_up(5)
            guest.set_mode("hang")  # the guest is hung; the VMI stays Running
            assert rec.wait_until_down(5)
            assert b.workload("vm2").phase == "Running" == vmi["status"]["phase"]
            guest.set_mode("ok")
            assert rec.wait_until_up(5)
        finally:
            rec.stop()
            b.close()
    finally:
        guest.stop()
    fails = [e for e in tl.events() if e.kind is EventKind.PROBE_FAIL]
    assert len(fails) == 1 and fails[0].data["reason"] == "timeout"


def test_rbac_refusal_of_the_proxy_is_a_failed_probe(
    emu: KubeEmulator, endpoint: LoopbackTarget, tmp_path: Path
) -> None:
    emu.deny.add(("get", "services/proxy"))
    b = make(emu, tmp_path, namespaces=(NS,))
    b.create_workload("web", WorkloadKind.POD)
    emu.add_pod(NS, "web-a1", "w1", wl("web"))
    emu.set_pod_ready(NS, "web-a1", True, pod_ip="127.0.0.1")
    point_service_at(emu, "web", endpoint.port)
    tl = Timeline(origin=RealClock().now())
    rec = Recorder(b, "web", tl, good_needed=3)
    rec.start()
    try:
        assert rec.wait_until_down(5)
    finally:
        rec.stop()
        b.close()
    fail = next(e for e in tl.events() if e.kind is EventKind.PROBE_FAIL)
    assert fail.data["reason"] == "http 403" and endpoint.requests == 0
