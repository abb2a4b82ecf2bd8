"""The default lab runs its pods on its real cluster: ``backend: lab`` reaches the kube backend.

A private 2-node lab brought up as ``rto lab up`` does by default (the real
cluster: etcd, kube-apiserver, controller-manager, scheduler, a containerd and a
kubelet per node), on the ``fast`` profile. A campaign of unchanged experiment
files with ``backend: lab`` runs there: the pod is a Deployment's Pod in the
lab's API server, run by a real kubelet; the crash is restarted by that kubelet,
the power-off is seen by the real node lifecycle controller and healed by the
eviction healer with the real out-of-service taint; every row names the
Kubernetes version it was measured on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from private_lab import PrivateLab, run_rto_campaign

from cluster.api import WorkloadKind
from cluster.lab.kube import cluster as kube_cluster
from cluster.lab.kube import paths
from cluster.lab_cluster import LabClusterBackend, LabClusterProvider
from core.errors import BackendError

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB = PrivateLab("lcreal", "rtolr", "node")  # node names as the experiment files place them
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    with LAB.up(2, profile="fast") as backend:
        backend.close()  # the provider makes the backend the harness uses
        yield


def test_the_provider_gives_the_cluster_backend_when_the_cluster_is_up(lab: None) -> None:
    backend = LabClusterProvider().backend()
    try:
        assert isinstance(backend, LabClusterBackend)
        assert {n.name for n in backend.nodes()} == {LAB.node(1), LAB.node(2)}
        assert all(n.ready and n.powered for n in backend.nodes())
        assert backend.platform_version() == f"Kubernetes {paths.KUBE_VERSION}"
    finally:
        backend.close()


def test_a_vmi_on_a_lab_without_vms_is_refused_before_anything_is_made(lab: None) -> None:
    backend = LabClusterProvider().backend()
    try:
        with pytest.raises(BackendError, match="without VMs"):
            backend.create_workload("novm", WorkloadKind.VMI, LAB.node(1))
        assert "novm" not in {w.name for w in backend.workloads()}
    finally:
        backend.close()


def test_a_lab_campaign_measures_real_pods(lab: None, tmp_path: Path) -> None:
    campaign = {
        "name": "real-lab-pods",
        "backend": "lab",
        "repetitions": 1,
        "delete_workloads": False,
        "healers": ["watchdog", "eviction"],
        "experiments": [
            {"path": str(ROOT / "experiments/pods/process-crash.yaml"), "profile": "fast"},
            {
                "path": str(ROOT / "experiments/pods/node-power-off.yaml"),
                "profile": "fast",
                "duration_s": 10,
                "deadline_s": 60,
            },
        ],
    }
    rows = run_rto_campaign(campaign, tmp_path)
    assert [(r["fault"], r["status"]) for r in rows] == [
        ("process-crash", "recovered"),
        ("node-power-off", "recovered"),
    ], rows
    for r in rows:
        assert (r["backend"], r["profile"]) == ("lab", "fast")
        assert r["platform"] == f"Kubernetes {paths.KUBE_VERSION}"
        assert 0 < r["rto_s"] < 60
    # The workloads are real Pods of the lab's API server (delete_workloads: false).
    api = kube_cluster.api_client()
    try:
        pods = k8s.CoreV1Api(api).list_namespaced_pod(kube_cluster.NAMESPACE).items
    finally:
        api.close()  # type: ignore[no-untyped-call]
    owners = {(p.metadata.labels or {}).get("rto.harness/workload") for p in pods}
    assert {"web-crash", "web-power"} <= owners, owners
    # The power-off run's healer fenced with the real taint and lifted it again.
    timeline = " ".join(e.get("message", "") for e in rows[1].get("timeline", []))
    assert "fenced node" in timeline, timeline[:2000]
