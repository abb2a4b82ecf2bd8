"""The lab as a real Kubernetes cluster: ``lab_up(kube=True)`` end to end.

A private 2-node lab on the ``fast`` profile with the real cluster: etcd,
kube-apiserver, kube-controller-manager, kube-scheduler in the hub, a containerd
and a kubelet per node (``cluster.lab.kube``). Checked through the official
client with the kubeconfig ``rto lab kubeconfig`` prints: Nodes Ready with the
pinned kubelet version, the profile's real flags in effect (the
DefaultTolerationSeconds admission writes 6 s into a pod), the kube backend
driving a workload on it through the kube config the lab writes, the ``lab``
power driver (a powered-off node turns NotReady by the real node lifecycle
controller), and a teardown after a SIGKILL of every cluster process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from private_lab import PrivateLab

from cluster.api import WorkloadKind
from cluster.kube.backend import KubeBackend
from cluster.kube.config import load_kube_config
from cluster.lab import lifecycle
from cluster.lab.kube import cluster as kube_cluster
from cluster.lab.kube import hub, paths
from cluster.lab.power_driver import LabPowerDriver
from core.errors import BackendError
from core.wait import poll_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB = PrivateLab("kcluster", "rtokc", "kcn")
ROOT = Path(__file__).resolve().parent.parent
RTO = [str(Path(sys.executable).parent / "rto")]  # the console script of this venv


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    with LAB.up(2, profile="fast", kube=True) as backend:
        backend.close()  # this module drives the real cluster, not the model
        yield


@pytest.fixture
def api(lab: None) -> Iterator[k8s.ApiClient]:
    api = kube_cluster.api_client()
    yield api
    api.close()


def _ready(api: k8s.ApiClient) -> dict[str, bool]:
    return kube_cluster.ready_nodes(api)


def test_nodes_ready_with_the_pinned_kubelet(api: k8s.ApiClient) -> None:
    nodes = k8s.CoreV1Api(api).list_node().items
    assert sorted(n.metadata.name for n in nodes) == [LAB.node(1), LAB.node(2)]
    for n in nodes:
        assert n.status.node_info.kubelet_version == paths.KUBE_VERSION
        assert n.status.node_info.container_runtime_version == "containerd://2.2.9"
        assert _ready(api)[n.metadata.name]
        internal = [a.address for a in n.status.addresses if a.type == "InternalIP"]
        assert internal and internal[0].startswith("198.18.0.")


def test_kubeconfig_command_prints_a_working_kubeconfig(lab: None, tmp_path: Path) -> None:
    out = subprocess.run(
        [*RTO, "lab", "kubeconfig"], capture_output=True, text=True, check=True, timeout=60
    )
    path = tmp_path / "lab.kubeconfig"
    path.write_text(out.stdout)
    api = k8s_config.new_client_from_config(config_file=str(path))  # type: ignore[no-untyped-call]
    try:
        assert k8s.VersionApi(api).get_code().git_version == paths.KUBE_VERSION
        assert len(k8s.CoreV1Api(api).list_node().items) == 2
    finally:
        api.close()
    status = subprocess.run(
        [*RTO, "lab", "status"], capture_output=True, text=True, check=True, timeout=60
    )
    assert '"kube-apiserver": true' in status.stdout


def test_fast_profile_sets_the_real_knobs(api: k8s.ApiClient) -> None:
    """The API server's DefaultTolerationSeconds admission applies the fast flag."""
    core = k8s.CoreV1Api(api)
    pod = core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "tolerations"},
            "spec": {"containers": [{"name": "c", "image": "rto.local/none:0"}]},
        },
    )
    try:
        secs = {t.key: t.toleration_seconds for t in pod.spec.tolerations}
        assert secs["node.kubernetes.io/not-ready"] == 6
        assert secs["node.kubernetes.io/unreachable"] == 6
    finally:
        core.delete_namespaced_pod("tolerations", "default", grace_period_seconds=0)


def test_kube_backend_runs_a_workload_on_the_lab(lab: None) -> None:
    """The kube backend, configured by the file the lab wrote, on the real cluster."""
    cfg = load_kube_config(paths.kube_dir() / "rto-kube.yaml")
    kb = KubeBackend(cfg, echo=lambda m: None)
    try:
        kb.create_workload("web", kind=WorkloadKind.POD, node=LAB.node(1))

        def ready() -> bool:
            try:
                ready = kb.workload("web").condition("Ready")
                return ready is not None and ready.status
            except BackendError:  # no pod yet: the Deployment controller makes it
                return False

        poll_until(ready, 90, "web Ready", interval=0.5)
        assert kb.workload("web").node == LAB.node(1)
        # The probe the recorder sends: through the API server's service proxy.
        target = kb.probe_target("web")
        assert target is not None and target.tls is not None
        req = urllib.request.Request(
            f"https://{target.host}:{target.port}{target.path}", headers=dict(target.headers)
        )
        with urllib.request.urlopen(req, context=target.tls, timeout=10) as r:
            assert r.status == 200 and r.read().decode().startswith("web ")
        # The process-crash fault: the real kubelet sees the container die and restarts it.
        before = kb.workload("web")
        kb.kill_main_process("web")
        poll_until(lambda: kb.workload("web").restarts == before.restarts + 1, 60, "a restart")
        assert kb.workload("web").instance != before.instance
        # Healthy nodes are not silent: their Lease, renewed every 0.25 s, is the heartbeat.
        ages = [n.heartbeat_age for n in kb.nodes()]
        assert all(a is not None and a < 2.0 for a in ages), ages
        kb.delete_workload("web")
    finally:
        kb.close()


def test_power_off_is_seen_by_the_real_node_controller(api: k8s.ApiClient) -> None:
    node = LAB.node(2)
    driver = LabPowerDriver()
    driver.power_off(node)
    try:
        # fast: node-monitor-grace-period 2 s, so NotReady/Unknown within seconds.
        poll_until(lambda: not _ready(api).get(node, True), 30, f"{node} NotReady", interval=0.5)
    finally:
        driver.power_on(node)
    poll_until(lambda: _ready(api).get(node, False), 60, f"{node} Ready again", interval=0.5)


def test_rto_run_on_the_real_cluster(lab: None, tmp_path: Path) -> None:
    """``rto run`` of an unchanged experiment file, through the kube backend."""
    env = {**os.environ, "RTO_KUBE_CONFIG": str(paths.kube_dir() / "rto-kube.yaml")}
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [*RTO, "run", str(ROOT / "experiments/pods/process-crash.yaml"), "--backend", "kube",
         "--runs-dir", str(runs)],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = json.loads((runs / "results.jsonl").read_text().splitlines()[-1])
    assert (row["backend"], row["profile"], row["status"]) == ("kube", "fast", "recovered")
    assert row["platform"] == f"Kubernetes {paths.KUBE_VERSION}"
    assert 0 < row["rto_s"] < 60
    # The real kubelet restarted the container: the workload's instance changed.
    assert row["same_instance"] is False


def test_teardown_after_sigkill_of_every_cluster_process(lab: None) -> None:
    """Last in the module: SIGKILL everything, then lab_down must leave nothing."""
    pids = lifecycle.lab_processes({LAB.node(1), LAB.node(2), hub.HUB_CGROUP})
    assert len(pids) > 8  # 4 hub components, 2 x (containerd + kubelet), agents, shims
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    lifecycle.lab_down()
    assert lifecycle.leftovers({LAB.node(1), LAB.node(2)}) == {}
    # The module fixture's own lab_down then runs on an empty machine.
