"""Real kubelets and containerds on lab nodes (cluster.lab.kube.node) against a real API server.

Two nodes of a private lab (tests/kube_node_fixture.py: etcd + kube-apiserver
in the hub netns) start, register and turn Ready; a pod of the lab image on
each answers HTTP from the hub; a power-off (``cgroups.kill_node``) leaves no
process of that node, and cleanup + start bring it and its pod back; stopping
both leaves nothing of them on the machine and the host's sysctls unchanged.
The tests run in order on one module fixture (each builds on the last).
"""

from __future__ import annotations

import datetime
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from kube_node_fixture import NS, KubeNodeLab, kube_node_lab
from kubernetes import client as k8s
from lab_node_kit import http_get

from cluster.lab import cgroups, net
from cluster.lab.kube import images, paths
from cluster.lab.kube import node as kube_node
from core.errors import LabError
from core.wait import poll_until

__all__ = ["kube_node_lab"]  # the fixture, re-exported for pytest

pytestmark = [pytest.mark.lab, pytest.mark.slow]

# The fast profile's kubelet knobs, as the hub half passes them.
_PROFILE: dict[str, Any] = {
    "nodeStatusUpdateFrequency": "1s",
    "nodeLeaseDurationSeconds": 4,
    "crashLoopBackOff": {"maxContainerRestartPeriod": "8s"},
}
_GATES = {"KubeletCrashLoopBackOffMax": True}


def _host_sysctls() -> dict[str, str]:
    return {k: Path("/proc/sys", *k.split(".")).read_text().strip() for k in kube_node.HOST_SYSCTLS}


_SYSCTLS_BEFORE = _host_sysctls()  # at import, before any kubelet of this module ran


def _node_ready(lab: KubeNodeLab, node: str, since: float = 0.0) -> bool:
    """Ready=True with a heartbeat at or after ``since`` (epoch seconds)."""

    def read(core: k8s.CoreV1Api) -> bool:
        try:
            n = core.read_node(node)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        for c in n.status.conditions or []:
            if c.type == "Ready" and c.status == "True":
                return bool(c.last_heartbeat_time.timestamp() >= since - 1.0)
        return False

    return lab.api(read)


def _wait_ready(lab: KubeNodeLab, node: str, since: float = 0.0) -> float:
    def check() -> bool:
        if kube_node.node_processes(node) == []:
            raise AssertionError(
                f"node {node} has no processes:\n{kube_node.node_log(node, 'kubelet')}"
            )
        return _node_ready(lab, node, since)

    poll_until(check, 60, f"Node {node} Ready", interval=0.25)
    return time.monotonic()


def _pod(node: str) -> dict[str, Any]:
    name = f"web-{node}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,  # no scheduler in this test's control plane
            "automountServiceAccountToken": False,  # no controller publishes kube-root-ca.crt
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"operator": "Exists"}],
            "containers": [
                {
                    "name": "web",
                    "image": images.pod_image(),
                    "imagePullPolicy": "Never",
                    "env": [{"name": "POD_NAME", "value": name}],
                    "ports": [{"containerPort": 80}],
                    "readinessProbe": {
                        "httpGet": {"path": "/cgi-bin/healthz", "port": 80},
                        "periodSeconds": 1,
                    },
                }
            ],
        },
    }


def _ready_pod(lab: KubeNodeLab, node: str, not_container: str = "") -> tuple[str, str]:
    """(pod IP, container id) once the pod is Ready in a container other than ``not_container``."""

    def read(core: k8s.CoreV1Api) -> tuple[str, str] | None:
        p = core.read_namespaced_pod(f"web-{node}", NS)
        statuses = p.status.container_statuses or []
        if not statuses or not statuses[0].ready or statuses[0].container_id == not_container:
            return None
        return str(p.status.pod_ip), str(statuses[0].container_id)

    def check() -> tuple[str, str] | None:
        return lab.api(read)

    return poll_until(check, 60, f"pod web-{node} Ready", interval=0.25)


def _answers(ip: str, node: str) -> None:
    def get() -> tuple[int, str] | None:
        try:
            return http_get(net.HUB_NS, ip, "/cgi-bin/healthz", timeout=1.0)
        except OSError:
            return None

    status, body = poll_until(get, 10, f"HTTP from web-{node}", interval=0.1)
    assert status == 200 and body.startswith(f"web-{node}"), (status, body)


def test_two_nodes_register_and_turn_ready(kube_node_lab: KubeNodeLab) -> None:
    lab = kube_node_lab
    # A kubelet that refuses its config: the error carries its log, nothing stays.
    with pytest.raises(
        LabError, match=r"kubelet of node kn3 exited while starting(.|\n)*nodeLeaseDurationSeconds"
    ):
        kube_node.start_node(lab.spec("kn3", config={"nodeLeaseDurationSeconds": -1}))
    assert kube_node.node_processes("kn3") == []
    for node in lab.nodes:
        t0 = time.monotonic()
        kube_node.start_node(lab.spec(node, config=_PROFILE, feature_gates=_GATES))
        started = time.monotonic()
        ready = _wait_ready(lab, node)
        print(
            f"\nFIGURE start_node({node}) returned {started - t0:.2f} s,"
            f" Node Ready {ready - t0:.2f} s"
        )
        print(kube_node.node_log(node, "start", lines=5))
    kube_node.start_node(lab.spec("kn1", config=_PROFILE, feature_gates=_GATES))  # idempotent

    # Inside a node's mount namespace the kubelet found its sysctl values in
    # files of its own; the host kept its own (checked again after the stop).
    holder = kube_node.holder_pid("kn1")
    inside = subprocess.run(
        ["nsenter", f"--mount=/proc/{holder}/ns/mnt", "cat", "/proc/sys/kernel/panic"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert (inside, _host_sysctls()["kernel.panic"]) == ("10", _SYSCTLS_BEFORE["kernel.panic"])

    def info(core: k8s.CoreV1Api) -> dict[str, tuple[str, str, str]]:
        return {
            n.metadata.name: (
                n.status.node_info.kubelet_version,
                n.status.node_info.container_runtime_version,
                next(a.address for a in n.status.addresses if a.type == "InternalIP"),
            )
            for n in core.list_node().items
        }

    got = lab.api(info)
    assert got == {
        node: ("v1.34.4", "containerd://2.2.9", f"198.18.0.{10 + i}")
        for node, i in lab.nodes.items()
    }


def test_a_pod_on_each_node_answers_from_the_hub(kube_node_lab: KubeNodeLab) -> None:
    lab = kube_node_lab
    for node in lab.nodes:
        lab.api(lambda core, n=node: core.create_namespaced_pod(NS, _pod(n)))  # type: ignore[misc]
    for node, index in lab.nodes.items():
        ip, _ = _ready_pod(lab, node)
        assert ip.startswith(paths.pod_cidr(index).rsplit(".", 1)[0] + "."), ip
        _answers(ip, node)


def test_power_off_kills_every_process_and_the_node_comes_back(
    kube_node_lab: KubeNodeLab,
) -> None:
    lab = kube_node_lab
    node, others = "kn1", ("kn2", "kn3")
    _, old_container = _ready_pod(lab, node)
    before_others = [p for o in others for p in kube_node.node_processes(o)]
    assert (
        len(kube_node.node_processes(node)) >= 5
    )  # holder, containerd, kubelet, shim, pause, httpd
    killed = cgroups.kill_node(node)
    assert killed >= 5
    assert kube_node.node_processes(node) == []
    after_others = [p for o in others for p in kube_node.node_processes(o)]
    assert set(before_others) <= set(after_others)  # the other nodes untouched

    # Someone reading the node's log names its dirs too: not the node's to kill.
    reader = subprocess.Popen(
        ["tail", "-f", str(paths.node_dir(node) / "logs" / "kubelet.log")],
        stdout=subprocess.DEVNULL,
    )
    try:
        kube_node.cleanup_node(node)
        assert reader.poll() is None
    finally:
        reader.kill()
        reader.wait()
    t0 = time.monotonic()
    since = datetime.datetime.now(datetime.UTC).timestamp()
    kube_node.start_node(lab.spec(node, config=_PROFILE, feature_gates=_GATES))
    started = time.monotonic()
    ready = _wait_ready(lab, node, since=since)
    ip, _ = _ready_pod(lab, node, not_container=old_container)
    back = time.monotonic()
    print(
        f"\nFIGURE restart of {node}: start_node {started - t0:.2f} s, Ready {ready - t0:.2f} s,"
        f" its pod Ready again {back - t0:.2f} s"
    )
    _answers(ip, node)


def test_stop_leaves_nothing_and_host_sysctls_unchanged(kube_node_lab: KubeNodeLab) -> None:
    lab = kube_node_lab
    for node in lab.nodes:
        t0 = time.monotonic()
        kube_node.stop_node(node)
        print(f"\nFIGURE stop_node({node}): {time.monotonic() - t0:.2f} s")
        assert kube_node.node_processes(node) == []
    assert kube_node.leftovers() == []
    assert _host_sysctls() == _SYSCTLS_BEFORE
