"""Data-plane probes on kube: through the workload's Service, via the API server's proxy.

A harness on a laptop or CI runner has API access only, so ``KubeBackend`` probes
``/api/v1/namespaces/NS/services/SVC:8080/proxy/cgi-bin/healthz`` on the API server.
Here the API server is the real kube-apiserver of tests/real_apiserver.py (HTTPS,
client certificates), whose service proxy forwards to a ready endpoint of the
Service. No kubelet runs the workload and no endpoints controller publishes it:
the test stands the pod up (its IP ``ENDPOINT_IP``, added to lo: the proxy
refuses loopback endpoints) and writes the Service's Endpoints as that
controller would, their port that of an ``EndpointTarget`` (tests/loopback_target.py's
stand-in on that address) standing in for the workload's endpoint. The real
Prober and Recorder run against it. The harness runs as ``rto-runner``: the
audit log shows what it asked of the API server. A refusal of ``services/proxy``
is the RBAC authorizer's, for a user whose ClusterRole grants everything else
the harness uses.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s
from real_apiserver import (  # noqa: F401
    NOBODY,
    NS,
    OTHER_NS,
    RUNNER,
    Cluster,
    EndpointTarget,
    RealApiserver,
    cluster,
    endpoint_address,
    kubevirt_crds,
    not_nodes,
    real_apiserver,
    wl,
)

from chaos.recorder import Recorder
from cluster.api import WorkloadKind
from cluster.kube.backend import KubeBackend
from core.clock import RealClock
from core.errors import BackendError
from core.timeline import EventKind, Timeline

READS = {"get", "list", "watch"}


@pytest.fixture
def nodes(cluster: Cluster) -> tuple[str, str]:  # noqa: F811
    return cluster.node("w1"), cluster.node("w2")


@pytest.fixture
def endpoint(endpoint_address: str) -> Iterator[EndpointTarget]:  # noqa: F811
    srv = EndpointTarget(name="web", instance="i1", host=endpoint_address)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def make(rs: RealApiserver, context: str = RUNNER, **cfg: object) -> KubeBackend:
    cfg.setdefault("namespaces", (OTHER_NS, NS))  # creation goes to the first one
    return KubeBackend(rs.config(context, **cfg), echo=lambda m: None)


@pytest.fixture
def workloads(real_apiserver: RealApiserver) -> Iterator[list[tuple[str, str]]]:  # noqa: F811
    """(namespace, name) of the workloads a test creates: deleted after it."""
    made: list[tuple[str, str]] = []
    try:
        yield made
    finally:
        for ns, name in made:
            make(real_apiserver, namespaces=(ns,)).delete_workload(name)


def test_create_and_delete_workload_manage_its_service(
    real_apiserver: RealApiserver,  # noqa: F811
    kubevirt_crds: list[str],  # noqa: F811
    cluster: Cluster,  # noqa: F811
    workloads: list[tuple[str, str]],
) -> None:
    b = make(real_apiserver)
    web, vm2 = cluster.name("web"), cluster.name("vm2")
    workloads += [(OTHER_NS, web), (OTHER_NS, vm2)]
    mark = real_apiserver.audit_mark()
    b.create_workload(web, WorkloadKind.POD)
    b.create_workload(vm2, WorkloadKind.VMI)
    for name in (web, vm2):
        svc = cluster.get("services", name, OTHER_NS)
        assert svc is not None, name
        assert svc["spec"]["selector"] == wl(name)
        assert svc["spec"]["ports"] == [
            {"name": "probe", "port": 8080, "targetPort": 8080, "protocol": "TCP"}
        ]
    made = {
        (e["objectRef"]["resource"], e["objectRef"].get("name") or e["objectRef"]["namespace"])
        for e in real_apiserver.audit(RUNNER, mark)
        if e["verb"] == "create"
    }
    assert {("services", OTHER_NS), ("deployments", OTHER_NS)} <= made
    # The VM's template carries the labels KubeVirt copies to the VMI and then
    # to its virt-launcher pod: what the Service selects (KubeVirt's schema kept them).
    vm = cluster.get("virtualmachines", vm2, OTHER_NS)
    assert vm is not None and vm["spec"]["template"]["metadata"]["labels"] == wl(vm2)
    b._create_service(OTHER_NS, web, wl(web))  # a rerun keeps the existing Service (409)
    b.delete_workload(web)
    b.delete_workload(web)  # idempotent: journal replay, campaign clean-up
    b.delete_workload(vm2)
    assert cluster.get("services", web, OTHER_NS) is None
    assert cluster.get("services", vm2, OTHER_NS) is None
    assert cluster.get("deployments", web, OTHER_NS) is None
    assert cluster.get("virtualmachines", vm2, OTHER_NS) is None


def test_dry_run_plans_the_service_and_creates_nothing(
    real_apiserver: RealApiserver,  # noqa: F811
    cluster: Cluster,  # noqa: F811
) -> None:
    web = cluster.name("web")
    b = KubeBackend(real_apiserver.config(RUNNER), dry_run=True, echo=lambda m: None)
    before, mark = cluster.versions(), real_apiserver.audit_mark()
    b.create_workload(web, WorkloadKind.POD)
    b.delete_workload(web)
    # Nodes left out: the node lifecycle controller writes them on its own.
    assert not_nodes(cluster.versions()) == not_nodes(before)
    assert {e["verb"] for e in real_apiserver.audit(RUNNER, mark)} <= READS
    assert b.plan == [
        f"create Service {NS}/{web} (probe endpoint, port 8080)",
        f"create Deployment {NS}/{web}",
        f"delete services {NS}/{web}",
        f"delete deployments {NS}/{web}",
        f"delete virtualmachines {NS}/{web}",
    ]


def test_probe_target_is_the_service_proxy_and_cached(
    real_apiserver: RealApiserver,  # noqa: F811
    cluster: Cluster,  # noqa: F811
    nodes: tuple[str, str],
) -> None:
    web = cluster.name("web")
    b = make(real_apiserver)
    with pytest.raises(BackendError, match=rf"no Service '{web}' for workload '{web}'.*pod-ip"):
        b.probe_target(web)
    service = {"metadata": {"name": web}, "spec": {"selector": wl(web), "ports": [{"port": 8080}]}}
    cluster.core.create_namespaced_service(NS, service)
    try:
        mark = real_apiserver.audit_mark()
        t = b.probe_target(web)  # found in the second namespace
        assert t is not None
        api_port = int(real_apiserver.server.rsplit(":", 1)[1])
        assert (t.host, t.port, t.server_hostname) == ("127.0.0.1", api_port, "127.0.0.1")
        assert isinstance(t.tls, ssl.SSLContext) and t.tls.verify_mode is ssl.CERT_REQUIRED
        assert t.path == f"/api/v1/namespaces/{NS}/services/{web}:8080/proxy/cgi-bin/healthz"
        assert t.headers == ()  # a client certificate, in the TLS context: no token
        asked = real_apiserver.audit(RUNNER, mark)
        looked_up = [
            (e["verb"], e["objectRef"]["resource"], e["objectRef"]["namespace"]) for e in asked
        ]
        # The Service, looked up once in each namespace, in order.
        assert looked_up == [("get", "services", OTHER_NS), ("get", "services", NS)]
        calls = len(asked)
        for _ in range(100):
            assert b.probe_target(web) is t
        assert len(real_apiserver.audit(RUNNER, mark)) == calls  # no API call per probe
        # A refreshed token rebuilds the header, keeps the rest.
        b.api.configuration.api_key["BearerToken"] = "Bearer rotated"
        t2 = b.probe_target(web)
        assert t2 is not None and t2.headers == (("Authorization", "Bearer rotated"),)
        assert t2.path == t.path and len(real_apiserver.audit(RUNNER, mark)) == calls
        # pod-ip mode keeps the in-cluster behaviour.
        cluster.pod("web-a1", nodes[0], web, ip="198.18.50.1")
        direct = make(real_apiserver, probe="pod-ip").probe_target(web)
        assert direct is not None and (direct.host, direct.port) == ("198.18.50.1", 8080)
        assert direct.path == "/cgi-bin/healthz" and direct.netns is None and direct.tls is None
        assert not direct.serial  # a pod takes overlapping probes (edge probes)
        # From a namespace that reaches the pod network (the lab's hub), on the configured path.
        inside = make(real_apiserver, probe="pod-ip", probe_netns="hub", probe_path="/ready")
        t3 = inside.probe_target(web)
        assert t3 is not None and (t3.netns, t3.path) == ("hub", "/ready")
    finally:
        cluster.core.delete_namespaced_service(web, NS)


def test_user_service_template_and_https_api_server() -> None:
    # No request is made: the Service's namespace is known once cached, and
    # the TLS context is built from the kubeconfig alone.
    from cluster.kube.config import KubeConfig

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
    real_apiserver: RealApiserver,  # noqa: F811
    cluster: Cluster,  # noqa: F811
    nodes: tuple[str, str],
    endpoint: EndpointTarget,
    workloads: list[tuple[str, str]],
) -> None:
    web = cluster.name("web")
    endpoint.name = web  # what the workload answers: "<name> <instance>"
    b = make(real_apiserver, namespaces=(NS,))
    workloads.append((NS, web))
    b.create_workload(web, WorkloadKind.POD)  # the Service (and a Deployment nothing runs)
    # What the Deployment's ReplicaSet, the scheduler and the kubelet would do,
    # then the endpoints controller: a ready pod behind the Service.
    a1 = cluster.pod("web-a1", nodes[0], web, ip=endpoint.host)
    cluster.endpoints(web, endpoint.port, ready=[a1])
    clock = RealClock()
    tl = Timeline(origin=clock.now())
    rec = Recorder(b, web, tl, clock=clock, good_needed=3)
    mark = real_apiserver.audit_mark()
    rec.start()
    try:
        assert rec.wait_until_up(5), "never up through the service proxy"
        cluster.run_pod(a1, ip=endpoint.host, ready=False)  # no ready endpoint: 503
        cluster.endpoints(web, endpoint.port, ready=[], not_ready=[a1])
        assert rec.wait_until_down(5)
        cluster.run_pod(a1, ip=endpoint.host)
        cluster.endpoints(web, endpoint.port, ready=[a1])
        assert rec.wait_until_up(5)
        endpoint.set_mode("refuse")  # the process is gone, the pod still Ready
        assert rec.wait_until_down(5)
        endpoint.set_mode("ok")
        assert rec.wait_until_up(5)
        cluster.delete_pod(a1)  # the pod is gone
        cluster.endpoints(web, endpoint.port, ready=[])
        assert rec.wait_until_down(5)
        # Its replacement (the ReplicaSet's part, made here) on the other node.
        b2 = cluster.pod("web-b2", nodes[1], web, ip=endpoint.host)
        cluster.endpoints(web, endpoint.port, ready=[b2])
        assert rec.wait_until_up(5)
    finally:
        rec.stop()
        b.close()
    probes = [e for e in tl.events() if e.kind in (EventKind.PROBE_OK, EventKind.PROBE_FAIL)]
    assert [e.kind for e in probes] == [EventKind.PROBE_OK, EventKind.PROBE_FAIL] * 3 + [
        EventKind.PROBE_OK
    ]
    assert {e.data["reason"] for e in probes if e.kind is EventKind.PROBE_FAIL} == {"http 503"}
    assert all(e.data["endpoint"] == real_apiserver.server.removeprefix("https://") for e in probes)
    # The API server authenticated the probes as the harness's user and forwarded
    # the probe's path to the pod.
    proxied = [
        e
        for e in real_apiserver.audit(RUNNER, mark)
        if e.get("objectRef", {}).get("subresource") == "proxy"
    ]
    named = {(e["verb"], e["objectRef"]["name"]) for e in proxied}
    assert proxied and named == {("get", f"{web}:8080")}  # the Service and its port
    assert endpoint.request_lines
    assert {line.split()[:2] == ["GET", "/cgi-bin/healthz"] for line in endpoint.request_lines} == {
        True
    }


def test_vmi_probe_is_guest_reachability_not_phase(
    real_apiserver: RealApiserver,  # noqa: F811
    kubevirt_crds: list[str],  # noqa: F811
    cluster: Cluster,  # noqa: F811
    nodes: tuple[str, str],
    endpoint_address: str,  # noqa: F811
    workloads: list[tuple[str, str]],
) -> None:
    vm2 = cluster.name("vm2")
    guest = EndpointTarget(name=vm2, instance="boot1", host=endpoint_address).start()
    b = make(real_apiserver, namespaces=(NS,))
    workloads.append((NS, vm2))
    try:
        b.create_workload(vm2, WorkloadKind.VMI)
        # virt-controller's part: the VMI (Running, as virt-handler reports it) and
        # its virt-launcher pod, whose network forwards to the guest; then the
        # endpoints controller's.
        cluster.vmi(vm2, nodes[0], "198.18.60.1")
        launcher = cluster.launcher(vm2, nodes[0], endpoint_address)
        cluster.endpoints(vm2, guest.port, ready=[launcher])
        clock = RealClock()
        tl = Timeline(origin=clock.now())
        rec = Recorder(b, vm2, tl, clock=clock, good_needed=3)
        rec.start()
        try:
            assert rec.wait_until_up(5)
            guest.set_mode("hang")  # the guest is hung; the VMI stays Running
            assert rec.wait_until_down(5)
            vmi = cluster.get("virtualmachineinstances", vm2)
            assert vmi is not None
            assert b.workload(vm2).phase == "Running" == vmi["status"]["phase"]
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
    real_apiserver: RealApiserver,  # noqa: F811
    cluster: Cluster,  # noqa: F811
    nodes: tuple[str, str],
    endpoint: EndpointTarget,
    workloads: list[tuple[str, str]],
) -> None:
    """rto-nobody may do everything this run does (make the workload, read and watch
    pods, nodes, its Service, KubeVirt's objects) but not get services/proxy: the
    RBAC authorizer's 403 is a failed probe, and the workload is never asked."""
    every = ["get", "list", "watch", "create", "update", "patch", "delete"]
    reads = ["get", "list", "watch"]
    cluster.grant(
        NOBODY,
        [
            {"apiGroups": [""], "resources": ["services", "configmaps"], "verbs": every},
            {"apiGroups": [""], "resources": ["pods", "nodes", "endpoints"], "verbs": reads},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": reads},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": every},
            {"apiGroups": ["kubevirt.io"], "resources": ["*"], "verbs": reads},
        ],
    )
    web = cluster.name("web")
    endpoint.name = web
    b = make(real_apiserver, NOBODY, namespaces=(NS,))
    workloads.append((NS, web))
    b.create_workload(web, WorkloadKind.POD)
    a1 = cluster.pod("web-a1", nodes[0], web, ip=endpoint.host)
    cluster.endpoints(web, endpoint.port, ready=[a1])
    tl = Timeline(origin=RealClock().now())
    rec = Recorder(b, web, tl, good_needed=3)
    rec.start()
    try:
        assert rec.wait_until_down(5)
    finally:
        rec.stop()
        b.close()
    fail = next(e for e in tl.events() if e.kind is EventKind.PROBE_FAIL)
    assert fail.data["reason"] == "http 403" and endpoint.requests == 0
