"""The lab's real cluster as one thing: bring it up, power nodes, tear it down, report it.

Called by ``cluster.lab.lifecycle`` (``lab_up(kube=True)``, ``lab_down``,
``lab_status``) and by the lab's node power driver. ``start_cluster`` starts
the hub (``hub``), then one containerd + kubelet per node (``node``), and
returns when every Node is Ready in the API server: readiness is what the real
node lifecycle controller says, read through the official client.
``teardown`` works from what exists (cgroups, pid files, mounts), never from
what a previous process claimed, so it also cleans up after a SIGKILL of
everything.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from cluster.lab import state
from cluster.lab.kube import hub, images, node, paths
from cluster.lab.kube.flags import component_flags
from cluster.lab.kube.kubevirt_crds import install_crds
from cluster.lab.kube.pki import Pki
from core.errors import HarnessError, LabError
from core.wait import WaitTimeout, poll_until

__all__ = [
    "NAMESPACE",
    "api_client",
    "cluster_status",
    "cluster_up",
    "kube_config_path",
    "kubelet_spec",
    "ready_nodes",
    "start_cluster",
    "start_kubelet",
    "teardown",
]


def api_client() -> k8s.ApiClient:
    """An admin client of the lab's API server (the kubeconfig ``rto lab kubeconfig`` gives)."""
    api: k8s.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(hub.admin_kubeconfig())
    )
    return api


def ready_nodes(api: k8s.ApiClient) -> dict[str, bool]:
    """Node name -> its Ready condition is True."""
    out: dict[str, bool] = {}
    for n in k8s.CoreV1Api(api).list_node(_request_timeout=5).items:
        conds = {c.type: c.status for c in ((n.status and n.status.conditions) or [])}
        if n.metadata and n.metadata.name:
            out[n.metadata.name] = conds.get("Ready") == "True"
    return out


def kubelet_spec(name: str, index: int, profile: str) -> node.KubeletSpec:
    flags = component_flags(profile)
    pki = Pki.default()
    return node.KubeletSpec(
        node=name,
        index=index,
        kubeconfig=hub.node_kubeconfig(name),
        ca_file=pki.ca,
        serving_cert=pki.crt(f"{name}-serving"),
        serving_key=pki.key(f"{name}-serving"),
        config=flags.kubelet_config,
        feature_gates=flags.kubelet_feature_gates,
    )


def start_kubelet(name: str, index: int) -> None:
    """(Re)start one node's containerd and kubelet (power-on after a power-off)."""
    node.start_node(kubelet_spec(name, index, _profile()))


def cluster_up() -> bool:
    """Was the real cluster started for this lab (and not torn down)?"""
    return (paths.kube_dir() / "cluster.json").exists()


def _profile() -> str:
    try:
        doc = json.loads((paths.kube_dir() / "cluster.json").read_text())
        return str(doc["profile"])
    except (OSError, ValueError, KeyError):
        raise LabError("the lab's real cluster is not up (no cluster.json)") from None


def start_cluster(profile: str, nodes: list[tuple[str, int]], timeout: float = 120) -> None:
    """Hub, then every node; returns when all ``nodes`` are Ready (else ``LabError``)."""
    flags = component_flags(profile)
    hub.start_hub(flags, [(n, state.node_ip(i)) for n, i in nodes])
    (paths.kube_dir() / "cluster.json").write_text(
        json.dumps({"profile": profile, "version": paths.KUBE_VERSION, "nodes": dict(nodes)}) + "\n"
    )
    for name, index in nodes:
        node.start_node(kubelet_spec(name, index, profile))
    api = api_client()
    want = {n for n, _ in nodes}

    def all_ready() -> bool:
        try:
            ready = ready_nodes(api)
        except (OSError, k8s.ApiException):
            return False
        return all(ready.get(n, False) for n in want)

    try:
        _prepare(api, [n for n, _ in nodes])
        poll_until(all_ready, timeout, "lab Nodes Ready", interval=0.5)
    except WaitTimeout:
        with contextlib.suppress(OSError, k8s.ApiException):
            late = sorted(n for n in want if not ready_nodes(api).get(n, False))
            raise LabError(
                f"lab Nodes {', '.join(late)} not Ready after {timeout:.0f} s "
                f"(their kubelet and containerd logs: {paths.node_dir(late[0]).parent}/*/)"
            ) from None
        raise LabError(f"lab Nodes not Ready after {timeout:.0f} s") from None
    finally:
        api.close()  # type: ignore[no-untyped-call]


NAMESPACE = "rto"  # where the harness's workloads go (the kube config's namespaces)


def kube_config_path() -> Path:
    """The kube backend's config for this cluster: ``RTO_KUBE_CONFIG=<this> rto run ...``."""
    return paths.kube_dir() / "rto-kube.yaml"


def _prepare(api: k8s.ApiClient, nodes: list[str]) -> None:
    """What the harness needs in the new cluster, and the kube config that points at it.

    KubeVirt's CRDs make ``kubevirt.io/v1`` objects storable and watchable
    (nothing reconciles them yet); the namespace is the kube config's.
    """
    install_crds(api)
    with contextlib.suppress(k8s.ApiException):  # exists after a restart of the hub
        k8s.CoreV1Api(api).create_namespace(
            k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE))
        )
    doc = {
        "contexts": ["rto-lab"],
        "kubeconfig": str(hub.admin_kubeconfig()),
        "namespaces": [NAMESPACE],
        "nodes": nodes,
        "power_driver": "lab",
        "pod_image": images.busybox_image(),
        # Node pods (the kill of a container's main process) run busybox; the
        # lab's nodes share the machine's PID 1, so they must not enter its
        # namespaces: their host network is the node's network namespace.
        "node_pod_image": images.busybox_image(),
        "node_pod_enter": [],
        "probe": "service-proxy",
        "profile": _profile(),
    }
    kube_config_path().write_text(
        "# Written by `rto lab up --kube`: the kube backend on the lab's real cluster.\n"
        + yaml.safe_dump(doc, sort_keys=False)
    )


def teardown(nodes: set[str]) -> list[str]:
    """Kill and clean every node's runtime and the hub; the problems met (empty: clean)."""
    errors: list[str] = []
    for name in sorted(nodes):
        try:
            node.cleanup_node(name)
        except (HarnessError, OSError) as exc:
            errors.append(f"kube node {name}: {exc}")
    try:
        hub.kill_hub()
    except (HarnessError, OSError) as exc:
        errors.append(f"kube hub: {exc}")
    shutil.rmtree(paths.kube_dir(), ignore_errors=True)
    shutil.rmtree(paths.kube_run_dir(), ignore_errors=True)
    return errors


def cluster_status() -> dict[str, Any] | None:
    """For ``rto lab status``: components, Nodes Ready, kubeconfig; None if not up."""
    if not cluster_up():
        return None
    out: dict[str, Any] = {
        "version": paths.KUBE_VERSION,
        "profile": _profile(),
        "components": hub.hub_alive(),
        "kubeconfig": str(hub.admin_kubeconfig()),
        "server": hub.api_server_url(),
    }
    try:
        api = api_client()
        try:
            out["nodes"] = ready_nodes(api)
        finally:
            api.close()  # type: ignore[no-untyped-call]
    except (OSError, k8s.ApiException, HarnessError) as exc:
        out["nodes"] = f"unreachable: {exc}"
    return out
