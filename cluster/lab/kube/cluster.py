"""The lab's real cluster as one thing: bring it up, power nodes, tear it down, report it.

Called by ``cluster.lab.lifecycle`` (``lab_up``, ``lab_down``,
``lab_status``) and by the lab's node power driver. ``start_cluster`` starts
the hub (``hub``), then one containerd + kubelet per node (``node``), and
returns when every Node is Ready in the API server: readiness is what the real
node lifecycle controller says, read through the official client.
``set_profile`` switches the running cluster to another timing profile (a
campaign's entries run on both): it restarts the API server,
controller-manager and kubelets with the new flags and keeps etcd, containerd
and the pods. ``teardown`` works from what exists (cgroups, pid files,
mounts), never from what a previous process claimed, so it also cleans up
after a SIGKILL of everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from cluster.lab import net, state
from cluster.lab.kube import hub, images, node, paths
from cluster.lab.kube.flags import ComponentFlags, component_flags
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
    "set_profile",
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


def _cluster_doc() -> dict[str, Any]:
    """``cluster.json``: the profile, version and nodes (name -> lab index) of the cluster."""
    try:
        doc: dict[str, Any] = json.loads((paths.kube_dir() / "cluster.json").read_text())
        return doc
    except (OSError, ValueError):
        raise LabError("the lab's real cluster is not up (no cluster.json)") from None


def _profile() -> str:
    try:
        return str(_cluster_doc()["profile"])
    except KeyError:
        raise LabError("the lab's cluster.json names no profile") from None


def _write_atomic(path: Path, text: str) -> None:
    """Readers (the kube backend, ``lab status``) never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def start_cluster(profile: str, nodes: list[tuple[str, int]], timeout: float = 120) -> None:
    """Hub, then every node; returns when all ``nodes`` are Ready (else ``LabError``)."""
    flags = component_flags(profile)
    hub.start_hub(flags, [(n, state.node_ip(i)) for n, i in nodes])
    doc = {"profile": profile, "version": paths.KUBE_VERSION, "nodes": dict(nodes)}
    _write_atomic(paths.kube_dir() / "cluster.json", json.dumps(doc) + "\n")
    for name, index in nodes:
        node.start_node(kubelet_spec(name, index, profile))
    api = api_client()
    try:
        _prepare(api, [n for n, _ in nodes])
        _wait_nodes_ready(api, {n for n, _ in nodes}, timeout)
    finally:
        api.close()  # type: ignore[no-untyped-call]


def _wait_nodes_ready(api: k8s.ApiClient, want: set[str], timeout: float) -> None:
    """Return once every Node of ``want`` is Ready (else ``LabError`` naming the late ones)."""

    def all_ready() -> bool:
        try:
            ready = ready_nodes(api)
        except (OSError, k8s.ApiException):
            return False
        return all(ready.get(n, False) for n in want)

    try:
        poll_until(all_ready, timeout, "lab Nodes Ready", interval=0.5)
    except WaitTimeout:
        with contextlib.suppress(OSError, k8s.ApiException):
            late = sorted(n for n in want if not ready_nodes(api).get(n, False))
            raise LabError(
                f"lab Nodes {', '.join(late)} not Ready after {timeout:.0f} s "
                f"(their kubelet and containerd logs: {paths.node_dir(late[0]).parent}/*/)"
            ) from None
        raise LabError(f"lab Nodes not Ready after {timeout:.0f} s") from None


def set_profile(profile: str, timeout: float = 120) -> None:
    """Switch the running cluster to ``profile``: restart what runs with other flags.

    A campaign runs entries on several profiles against one cluster, and a
    new cluster per profile would cost a ``lab up`` (and lose its objects).
    etcd (the Nodes, Deployments, Pods), containerd and the pods' containers
    keep running; the API server, controller-manager and kubelets whose
    running flags or config differ from ``profile``'s restart. Returns when
    the API server is ready and every Node Ready; then the kube config and
    ``cluster.json`` name the new profile. Nothing restarts (a no-op) when
    everything already runs ``profile``'s flags. ``LabError`` (a
    ``BackendError``) when the cluster is not up or a component does not
    come back (with its log's tail); ``timeout`` bounds each wait. What is
    outdated is read from the running processes, so after a failed switch
    the same call restarts what is still missing or wrong.
    """
    flags = component_flags(profile)
    if not cluster_up() or not hub.etcd_running():
        raise LabError("the lab's real cluster is not up: `rto lab up` first")
    specs = [kubelet_spec(n, i, profile) for n, i in sorted(_cluster_doc()["nodes"].items())]
    stale_hub = hub.outdated(flags)
    stale_kubelets = [s for s in specs if node.kubelet_outdated(s)]
    if stale_hub or stale_kubelets:
        # Checked before anything stops: a switch never starts on half a cluster.
        off = [s.node for s in specs if node.component_pid(s.node, "containerd") is None]
        if off:
            raise LabError(f"lab nodes {', '.join(off)} are powered off: power them on first")
        _restart(flags, stale_hub, stale_kubelets, timeout)
    if _profile() != profile:
        _record_profile(profile)


def _restart(
    flags: ComponentFlags,
    stale_hub: list[str],
    stale_kubelets: list[node.KubeletSpec],
    timeout: float,
) -> None:
    """Restart the given components with ``flags``; every Node Ready at the end.

    The controller-manager is stopped first and started last whenever
    anything restarts: its node monitor then never counts the API server's
    or a kubelet's restart against a Lease (on ``fast``, 2 s of silence would
    mark a Node NotReady and taint it), and it starts counting afresh.
    """
    stale = set(stale_hub) | {"kube-controller-manager"}
    for component in reversed(hub.CONTROL_PLANE):
        if component in stale:
            hub.stop_component(component)
    if "kube-apiserver" in stale:
        hub.start_components(["kube-apiserver"], flags, timeout)
    for spec in stale_kubelets:
        node.restart_kubelet(spec)
    hub.start_components([c for c in stale if c != "kube-apiserver"], flags, timeout)
    hub.record_flags(flags)
    api = api_client()
    try:
        _wait_nodes_ready(api, set(_cluster_doc()["nodes"]), timeout)
    finally:
        api.close()  # type: ignore[no-untyped-call]


def _record_profile(profile: str) -> None:
    """Name ``profile`` in ``cluster.json`` and the kube config (the backend checks it)."""
    doc = {**_cluster_doc(), "profile": profile}
    _write_atomic(paths.kube_dir() / "cluster.json", json.dumps(doc) + "\n")
    try:
        kube = yaml.safe_load(kube_config_path().read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LabError(f"cannot read the lab's kube config {kube_config_path()}: {exc}") from exc
    _write_kube_config({**kube, "profile": profile})


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
        # Straight to the pod from the hub, as a client in the cluster network.
        # Through the API server's service proxy every probe (50/s) was a TLS
        # handshake and a proxied request on the control plane under test: on
        # 2 cores its latency neared the 250 ms probe timeout while a node
        # rebooted, and false timeouts ended recovered runs as not recovered.
        "probe": "pod-ip",
        "probe_netns": net.HUB_NS,
        # The lab's guest (cluster.lab.guest) answers GET /healthz on port 80.
        "vmi_probe_port": 80,
        "vmi_probe_path": "/healthz",
        "profile": _profile(),
        # No pod_volume_host_path here: the lab's backend adds it (and makes the
        # volume before each pod, cluster.lab_cluster). A plain `--backend kube`
        # on this file makes pods without one, which it can run.
    }
    _write_kube_config(doc)


def _write_kube_config(doc: dict[str, Any]) -> None:
    _write_atomic(
        kube_config_path(),
        "# Written by `rto lab up`: the kube backend on the lab's real cluster.\n"
        + yaml.safe_dump(doc, sort_keys=False),
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
