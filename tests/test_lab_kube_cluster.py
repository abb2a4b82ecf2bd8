"""The lab as a real Kubernetes cluster: ``lab_up`` end to end.

A private 2-node lab on the ``fast`` profile with the real cluster: etcd,
kube-apiserver, kube-controller-manager, kube-scheduler in the hub, a containerd
and a kubelet per node (``cluster.lab.kube``). Checked through the official
client with the kubeconfig ``rto lab kubeconfig`` prints: Nodes Ready with the
pinned kubelet version, the profile's real flags in effect (the
DefaultTolerationSeconds admission writes 6 s into a pod), the kube backend
driving a workload on it through the kube config the lab writes, the ``lab``
power driver (a powered-off node turns NotReady by the real node lifecycle
controller), a switch of the running cluster to the other profile and back
(``set_profile``: objects and containers survive), and a teardown after a
SIGKILL of every cluster process.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from lab_node_kit import in_netns
from private_lab import PrivateLab

from cluster.api import WorkloadKind
from cluster.kube.backend import KubeBackend
from cluster.kube.config import load_kube_config
from cluster.lab import lifecycle, net
from cluster.lab.kube import cluster as kube_cluster
from cluster.lab.kube import hub, images, paths
from cluster.lab.kube import node as kube_node
from cluster.lab.power_driver import LabPowerDriver
from core.errors import BackendError
from core.wait import poll_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB = PrivateLab("kcluster", "rtokc", "kcn")
ROOT = Path(__file__).resolve().parent.parent
RTO = [str(Path(sys.executable).parent / "rto")]  # the console script of this venv


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    with LAB.up(2, profile="fast"):
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
        # The probe the recorder sends: straight to the pod IP, from the hub (the
        # lab's kube config: probe pod-ip, probe_netns its hub).
        target = kb.probe_target("web")
        assert target is not None and target.tls is None and target.netns == net.HUB_NS
        url = f"http://{target.host}:{target.port}{target.path}"

        def get() -> str:
            with urllib.request.urlopen(url, timeout=10) as r:
                return f"{r.status} {r.read().decode()}"

        assert in_netns(net.HUB_NS, get).startswith("200 web ")
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


def _pids() -> dict[str, int | None]:
    """Pid of every cluster process a profile switch may or may not restart."""
    out = {c: hub.component_pid(c) for c in hub.COMPONENTS}
    for n in (LAB.node(1), LAB.node(2)):
        for c in ("holder", "containerd", "kubelet"):
            out[f"{n}/{c}"] = kube_node.component_pid(n, c)
    return out


def _cmdline(pid: int | None) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _leases_are(api: k8s.ApiClient, nodes: list[str], want: tuple[int | None, int]) -> bool:
    """Does every node have ``want``: nodeLeaseDurationSeconds in its kubelet's config
    file, and in the Lease the running kubelet renews?

    Not the kubelet's /configz: the API server reaches a kubelet by its Node's
    hostname, which does not resolve in the lab.
    """
    out = []
    for node in nodes:
        cfg = json.loads((kube_node.node_run_dir(node) / "kubelet.yaml").read_text())
        lease = k8s.CoordinationV1Api(api).read_namespaced_lease(node, "kube-node-lease")
        out.append((cfg.get("nodeLeaseDurationSeconds"), lease.spec.lease_duration_seconds))
    return set(out) == {want}


def _sleeper(core: k8s.CoreV1Api) -> tuple[str, str, int]:
    """(uid, containerID, restartCount) of the one Running and Ready pod of ``keep``."""
    pods = core.list_namespaced_pod(kube_cluster.NAMESPACE, label_selector="app=keep").items
    assert len(pods) == 1, [p.metadata.name for p in pods]
    pod = pods[0]
    ready = {c.type: c.status for c in pod.status.conditions or []}.get("Ready")
    (cs,) = pod.status.container_statuses
    assert cs.state.running is not None and ready == "True", pod.status
    return pod.metadata.uid, cs.container_id, cs.restart_count


def test_set_profile_switches_the_running_cluster(api: k8s.ApiClient) -> None:
    """fast -> kubernetes-defaults -> fast without losing a Node, a Deployment or its pod.

    etcd, the scheduler, containerd and the pod's container keep running; the
    API server, controller-manager and kubelets restart with the new flags.
    """
    core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
    labels = {"app": "keep"}
    container = {"name": "c", "image": images.busybox_image(), "imagePullPolicy": "Never",
                 "command": ["sleep", "3600"]}  # fmt: skip
    apps.create_namespaced_deployment(kube_cluster.NAMESPACE, {
        "metadata": {"name": "keep"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [container],
                                       "terminationGracePeriodSeconds": 0}}},
    })  # fmt: skip
    try:
        poll_until(lambda: _sleeper(core), 60, "keep Running", interval=0.5,
                   retry_on=(AssertionError, TypeError))  # fmt: skip
        pod = _sleeper(core)
        nodes = {n.metadata.name: n.metadata.uid for n in core.list_node().items}
        pids = _pids()
        t0 = time.monotonic()
        kube_cluster.set_profile("fast")  # what it runs already
        took = {"fast (no-op)": time.monotonic() - t0}
        assert _pids() == pids
        for profile in ("kubernetes-defaults", "fast"):
            fast = profile == "fast"
            t0 = time.monotonic()
            kube_cluster.set_profile(profile)
            took[profile] = time.monotonic() - t0
            assert load_kube_config(kube_cluster.kube_config_path()).profile == profile
            assert kube_cluster.cluster_status()["profile"] == profile  # type: ignore[index]
            kcm = _cmdline(hub.component_pid("kube-controller-manager"))
            assert ("--node-monitor-grace-period=2s" in kcm) is fast
            apiserver = _cmdline(hub.component_pid("kube-apiserver"))
            assert ("--default-not-ready-toleration-seconds=6" in apiserver) is fast
            # The file has the field only on fast; the running kubelet's Lease always.
            want = (1, 1) if fast else (None, 40)
            check = functools.partial(_leases_are, api, sorted(nodes), want)
            poll_until(check, 10, f"kubelet config and Lease {want}")
            assert _ready(api) == dict.fromkeys(nodes, True)
            assert {n.metadata.name: n.metadata.uid for n in core.list_node().items} == nodes
            assert _sleeper(core) == pod  # same pod, same container, no restart
            now = _pids()
            kept = [k for k in now if k.endswith(("holder", "containerd"))]
            kept += ["etcd", "kube-scheduler"]
            assert {k: now[k] for k in kept} == {k: pids[k] for k in kept}
            assert all(now[k] not in (None, pids[k]) for k in now if k not in kept), (now, pids)
            pids = now
        print("set_profile wall clock:", {k: f"{v:.2f} s" for k, v in took.items()})
    finally:
        apps.delete_namespaced_deployment("keep", kube_cluster.NAMESPACE)


def test_teardown_after_sigkill_of_every_cluster_process(lab: None) -> None:
    """Last in the module: SIGKILL everything, then lab_down must leave nothing."""
    pids = lifecycle.lab_processes({LAB.node(1), LAB.node(2), hub.HUB_CGROUP})
    assert len(pids) > 8  # 4 hub components, 2 x (containerd + kubelet), agents, shims
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    lifecycle.lab_down()
    assert lifecycle.leftovers({LAB.node(1), LAB.node(2)}) == {}
    with pytest.raises(BackendError, match="real cluster is not up"):
        kube_cluster.set_profile("kubernetes-defaults")
    # The module fixture's own lab_down then runs on an empty machine.
