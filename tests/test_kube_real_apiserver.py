"""KubeBackend against a real etcd + kube-apiserver + kube-controller-manager.

The kube backend's API paths answered by the real v1.34.4 control plane of
tests/real_apiserver.py, not by the emulator (tests/kube_emulator.py):
RBAC refusals come from the RBAC authorizer, 429 from the Eviction subresource
with a PodDisruptionBudget whose status the disruption controller computed,
410 Gone from an etcd compaction, watches from the apiserver's watch cache.

There is no kubelet and no scheduler. Nodes and Pods are created through the
API (pods with ``spec.nodeName`` set) and stood up by the admin patching their
status subresource (Node Ready, Pod Running with a ready container), which is
what a kubelet's status updates are to the API server: a legitimate way to make
the objects the backend reads. The node pods the backend makes (partition,
fsfreeze, kill) are checked as the API validates and stores them, a test
writing the phase a kubelet would; what their scripts do on a node is the lab's
to test. An evicted or deleted pod stays Terminating (no kubelet confirms), and
nothing recreates or places it elsewhere (no ReplicaSet controller, no
scheduler). The service-proxy test points an Endpoints object at a stand-in
HTTP server on a 198.19.x address added to lo (root); the outage test puts a
relay it can cut between the follower and the apiserver.

What this control plane cannot serve stays on the emulator, in
tests/test_kube_backend.py: ``pods/exec`` (the API server hands it to the
node's kubelet) and virt-api's subresources.kubevirt.io (``unpause``,
``removevolume``/``addvolume``). VMIs, VMs and migrations on KubeVirt's CRDs
are in tests/test_kube_real_kubevirt.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from real_apiserver import (  # noqa: F401
    NOBODY,
    NS,
    Cluster,
    RealApiserver,
    cluster,
    endpoint_address,
    real_apiserver,
)

from chaos.prober import http_probe
from cluster.api import Phase, VolumeFailure, WorkloadKind
from cluster.kube.backend import OUT_OF_SERVICE, KubeBackend
from cluster.kube.watch import ResourceRef, WatchFollower
from core.errors import BackendError
from core.wait import poll_until


def test_reads_nodes_and_pods_with_conditions(
    real_apiserver: RealApiserver,  # noqa: F811
    cluster: Cluster,  # noqa: F811
) -> None:
    w1, w2 = cluster.node("w1"), cluster.node("w2", ready=False)
    cp = cluster.node("cp", labels={"node-role.kubernetes.io/control-plane": ""})
    cluster.pod("web-a1", w1, f"web-{cluster.suffix}")
    b = real_apiserver.backend()
    names = {n.name for n in b.nodes()}
    assert {w1, w2} <= names and cp not in names  # cp is not a target
    assert b.node(w1).ready and b.node(w1).schedulable
    assert not b.node(w2).ready
    beat = b.node(w1).heartbeat_age
    assert beat is not None and beat < 60
    pod = b.workload(f"web-{cluster.suffix}")
    assert (pod.kind, pod.node, pod.phase) == (WorkloadKind.POD, w1, Phase.RUNNING)
    assert pod.condition("Ready") is not None and pod.condition("Ready").status  # type: ignore[union-attr]
    assert pod.instance == f"containerd://web-a1-{cluster.suffix}-0"


def test_context_allowlist_refuses_unlisted(real_apiserver: RealApiserver) -> None:  # noqa: F811
    cfg = real_apiserver.config()
    with pytest.raises(BackendError, match=f"'{NOBODY}' is not in the allowlist"):
        KubeBackend(cfg, context=NOBODY)


def test_untargeted_node_refused(real_apiserver: RealApiserver, cluster: Cluster) -> None:  # noqa: F811
    cp = cluster.node("cp", labels={"node-role.kubernetes.io/control-plane": ""})
    b = real_apiserver.backend()
    with pytest.raises(BackendError, match="not a target"):
        b.cordon(cp)
    assert not cluster.raw_node(cp).spec.unschedulable


class FakePower:
    """A power driver that records what it is asked (the lab's drivers have tests of their own)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def power_off(self, node: str) -> None:
        self.calls.append(("off", node))

    def power_on(self, node: str) -> None:
        self.calls.append(("on", node))


def test_power_goes_to_the_driver_for_target_nodes_only(
    real_apiserver: RealApiserver,  # noqa: F811
    cluster: Cluster,  # noqa: F811
) -> None:
    w2 = cluster.node("w2")
    cp = cluster.node("cp", labels={"node-role.kubernetes.io/control-plane": ""})
    power = FakePower()
    b = real_apiserver.backend(power=power)
    b.power_off(w2)
    b.power_on(w2)
    with pytest.raises(BackendError, match="not a target"):
        b.power_off(cp)
    assert power.calls == [("off", w2), ("on", w2)]


def test_rbac_denial_names_verb_and_resource(
    real_apiserver: RealApiserver,  # noqa: F811
    cluster: Cluster,  # noqa: F811
) -> None:
    """rto-nobody may read pods and nodes (a Role and ClusterRole made here) but not
    create pods/eviction: the real authorizer's refusal is named and passed on."""
    w1 = cluster.node("w1")
    cluster.pod("web-a1", w1, f"web-{cluster.suffix}")
    role = f"rto-reader-{cluster.suffix}"
    rules = [
        {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list"]},
        # Listing workloads lists VMIs too; RBAC takes a rule for an unserved group.
        {"apiGroups": ["kubevirt.io"], "resources": ["virtualmachineinstances"], "verbs": ["list"]},
    ]
    subject = [{"kind": "User", "name": NOBODY, "apiGroup": "rbac.authorization.k8s.io"}]
    ref = {"kind": "ClusterRole", "name": role, "apiGroup": "rbac.authorization.k8s.io"}
    cluster.rbac.create_cluster_role({"metadata": {"name": role}, "rules": rules})
    cluster.rbac.create_cluster_role_binding(
        {"metadata": {"name": role}, "subjects": subject, "roleRef": ref}
    )
    try:
        nobody = real_apiserver.backend(NOBODY)
        # The RBAC authorizer reads bindings from an informer: a moment to land.
        poll_until(
            lambda: bool(nobody.workloads()),
            10,
            "rto-nobody can list workloads",
            retry_on=(BackendError,),
        )
        with pytest.raises(
            BackendError,
            match=r"RBAC: the harness may not 'create' 'pods/eviction'.*"
            rf'User "{NOBODY}" cannot create resource "pods/eviction"',
        ):
            nobody.evict(f"web-{cluster.suffix}", patience=0)
        with pytest.raises(BackendError, match=r"RBAC: the harness may not 'patch' 'nodes'"):
            nobody.cordon(w1)
        assert not cluster.raw_node(w1).spec.unschedulable
        assert cluster.pod_or_none(f"web-a1-{cluster.suffix}") is not None
    finally:
        cluster.rbac.delete_cluster_role_binding(role)
        cluster.rbac.delete_cluster_role(role)


def test_an_admission_refusal_is_not_called_rbac(
    real_apiserver: RealApiserver,  # noqa: F811
    cluster: Cluster,  # noqa: F811
) -> None:
    """A ResourceQuota allowing no Deployment makes the real quota admission refuse
    one with 403; the error passes on what admission said and does not send the
    user to grant RBAC verbs."""
    quota = f"rto-quota-{cluster.suffix}"
    zero = {"count/deployments.apps": "0"}
    cluster.core.create_namespaced_resource_quota(
        NS, {"metadata": {"name": quota}, "spec": {"hard": zero}}
    )
    # What the resourcequota controller (not run here) would write.
    cluster.core.patch_namespaced_resource_quota_status(
        quota, NS, {"status": {"hard": zero, "used": zero}}
    )
    b = real_apiserver.backend()
    name = f"quota-{cluster.suffix}"

    def refused() -> BackendError | None:
        try:
            b.create_workload(name, WorkloadKind.POD)
        except BackendError as exc:
            return exc
        b.delete_workload(name)  # admission had not seen the quota yet
        return None

    try:
        err = poll_until(refused, 15, "quota admission refuses the Deployment", interval=0.5)
    finally:
        cluster.core.delete_namespaced_resource_quota(quota, NS)
        b.delete_workload(name)
    text = str(err)
    assert "refused by the cluster's admission (403" in text and "quota" in text
    assert "RBAC" not in text


def test_missing_kubevirt(real_apiserver: RealApiserver, cluster: Cluster) -> None:  # noqa: F811
    cluster.node("w1")
    b = real_apiserver.backend()
    with pytest.raises(BackendError, match="KubeVirt is not installed"):
        b.create_workload("vmx", WorkloadKind.VMI)
    assert [w.kind for w in b.workloads()] == [WorkloadKind.POD] * len(b.workloads())
    with pytest.raises(BackendError, match="KubeVirt is not installed"):
        b.start_migration("vmx")


def test_cordon_and_eviction_with_pdb(real_apiserver: RealApiserver, cluster: Cluster) -> None:  # noqa: F811
    """A PDB (minAvailable 1) over one ready pod: the disruption controller computes
    disruptionsAllowed 0 and the Eviction subresource answers 429; without the PDB
    the eviction deletes the pod (gracefully: it stays Terminating, no kubelet)."""
    w1 = cluster.node("w1")
    web = f"web-{cluster.suffix}"
    pod = cluster.pod("web-a1", w1, web)
    pdb = f"pdb-{cluster.suffix}"
    cluster.policy.create_namespaced_pod_disruption_budget(
        NS,
        {
            "metadata": {"name": pdb},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"rto.harness/workload": web}}},
        },
    )

    def computed() -> bool:
        st = cluster.policy.read_namespaced_pod_disruption_budget(pdb, NS).status
        return bool(st and st.observed_generation and st.current_healthy == 1)

    poll_until(computed, 20, "the disruption controller to compute the PDB's status")
    b = real_apiserver.backend()
    with pytest.raises(
        BackendError, match=r"blocked by a PodDisruptionBudget.*\(429\).*disruption budget"
    ):
        b._evict_pod(NS, pod, patience=0.2)
    assert cluster.pod_or_none(pod).metadata.deletion_timestamp is None
    cluster.policy.delete_namespaced_pod_disruption_budget(pdb, NS)
    # A drain as the node-drain fault does it: cordon, then evict each workload.
    b.cordon(w1)
    assert cluster.raw_node(w1).spec.unschedulable is True
    assert not b.node(w1).schedulable
    b.evict(web)
    evicted = cluster.pod_or_none(pod)
    assert evicted.metadata.deletion_timestamp is not None
    # The Eviction subresource, not a plain delete, took it: the API server marks
    # the pods it evicts before deleting them.
    marks = {(c.type, c.reason) for c in evicted.status.conditions or ()}
    assert ("DisruptionTarget", "EvictionByEvictionAPI") in marks
    assert b.workload(web).phase is Phase.TERMINATING
    b.uncordon(w1)
    assert not cluster.raw_node(w1).spec.unschedulable
    assert b.node(w1).schedulable


def test_fence_evicts_and_unfence(real_apiserver: RealApiserver, cluster: Cluster) -> None:  # noqa: F811
    """The out-of-service taint is NoExecute: the real taint-eviction controller
    deletes the untolerating pod on the fenced node; reschedule force-deletes."""
    w1, w2 = cluster.node("w1"), cluster.node("w2")
    web, other = f"web-{cluster.suffix}", f"db-{cluster.suffix}"
    pod = cluster.pod("web-a1", w1, web)
    db = cluster.pod("db-a1", w2, other)
    cluster.set_node_ready(w1, False)
    # A taint a user owns: fence and unfence must keep it. (The not-ready taints are
    # the node lifecycle controller's: it adds and removes them as it reconciles this
    # kubelet-less Node, so they cannot be the reference.)
    mine = {"key": "team.example/owned", "value": "yes", "effect": "NoSchedule"}
    cluster.core.patch_node(w1, {"spec": {"taints": [mine]}})
    b = real_apiserver.backend()
    b.fence(w1)
    b.fence(w1)  # idempotent

    def taints() -> list[dict[str, str | None]]:
        return [
            {k: t.to_dict()[k] for k in OUT_OF_SERVICE}
            for t in cluster.raw_node(w1).spec.taints or ()
        ]

    assert [t for t in taints() if t["key"] == OUT_OF_SERVICE["key"]] == [OUT_OF_SERVICE]
    assert mine in taints()
    assert b.node(w1).fenced and not b.node(w1).ready
    poll_until(
        lambda: (p := cluster.pod_or_none(pod)) is None or p.metadata.deletion_timestamp,
        20,
        "the taint-eviction controller to delete the pod on the fenced node",
    )
    b.reschedule(other)  # force delete (grace 0): gone at once, no kubelet needed
    assert cluster.pod_or_none(db) is None
    b.unfence(w1)
    left = taints()
    assert OUT_OF_SERVICE not in left and mine in left  # only its own taint removed
    assert not b.node(w1).fenced


def test_fence_keeps_a_taint_written_during_its_read_modify_write(
    real_apiserver: RealApiserver,  # noqa: F811
    cluster: Cluster,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Someone taints the Node between fence's read and its write: the API refuses
    the stale write (409 on the resourceVersion), fence reads again, both taints stay."""
    w1 = cluster.node("w1")
    theirs = {"key": "team.example/late", "value": "yes", "effect": "NoSchedule"}
    b = real_apiserver.backend()
    write, raced = b.client.core.patch_node, []

    def racing_write(name: str, body: object, **kw: object) -> object:
        if not raced:  # the first write only: fence has read, now someone else writes
            raced.append(name)
            write(name, {"spec": {"taints": [theirs]}})
        return write(name, body, **kw)

    monkeypatch.setattr(b.client.core, "patch_node", racing_write)
    b.fence(w1)
    taints = [{k: t.to_dict()[k] for k in OUT_OF_SERVICE} for t in cluster.raw_node(w1).spec.taints]
    assert raced and theirs in taints and OUT_OF_SERVICE in taints


def test_network_partition_policy(real_apiserver: RealApiserver, cluster: Cluster) -> None:  # noqa: F811
    w1 = cluster.node("w1")
    web = f"web-{cluster.suffix}"
    cluster.pod("web-a1", w1, web)
    b = real_apiserver.backend()
    net = k8s.NetworkingV1Api(cluster.core.api_client)
    b.partition_workload(web)
    pol = net.read_namespaced_network_policy(f"rto-partition-{web}", NS)
    assert pol.spec.pod_selector.match_labels == {"rto.harness/workload": web}
    assert pol.spec.policy_types == ["Ingress", "Egress"] and pol.spec.ingress is None
    with pytest.raises(BackendError, match=r"\(409\)"):
        b.partition_workload(web)  # the API refuses a second one: the first holds
    b.heal_workload_partition(web)
    b.heal_workload_partition(web)  # idempotent (journal replay)
    names = [p.metadata.name for p in net.list_namespaced_network_policy(NS).items]
    assert f"rto-partition-{web}" not in names


def test_node_partition_and_pod_freeze_use_node_pods(
    real_apiserver: RealApiserver,  # noqa: F811
    cluster: Cluster,  # noqa: F811
) -> None:
    """The node pods (privileged, host network and PID, bound by nodeName) pass the
    real API's validation and admission. No kubelet runs them here: what their
    scripts do is the lab's to test; heal's graceful delete leaves the cut's pod
    Terminating until a kubelet confirms."""
    w1 = cluster.node("w1")
    web = f"web-{cluster.suffix}"
    pod = cluster.pod("web-a1", w1, web)
    cut, freeze, thaw = (f"rto-node-{p}-{w1}" for p in ("partition", "freeze", "thaw"))
    cluster.pods += [cut, freeze, thaw]
    b = real_apiserver.backend()
    b.partition_node(w1)
    spec = cluster.pod_or_none(cut).spec
    assert spec.node_name == w1 and spec.host_network and spec.host_pid
    assert spec.containers[0].security_context.privileged
    assert "iptables" in spec.containers[0].command[-1]
    b.heal_node_partition(w1)
    assert cluster.pod_or_none(cut).metadata.deletion_timestamp is not None
    b.fail_volume(web, VolumeFailure.HANG)
    uid = cluster.pod_or_none(pod).metadata.uid
    script = cluster.pod_or_none(freeze).spec.containers[0].command[-1]
    assert f"/var/lib/kubelet/pods/{uid}/volumes/" in script and "fsfreeze -f" in script
    b.repair_volume(web, VolumeFailure.HANG)
    assert "fsfreeze -u" in cluster.pod_or_none(thaw).spec.containers[0].command[-1]


def test_a_node_pod_refused_by_pod_security_says_so_and_injects_nothing(
    real_apiserver: RealApiserver,  # noqa: F811
    cluster: Cluster,  # noqa: F811
) -> None:
    """A namespace under Pod Security "baseline" refuses the privileged node pod
    with 403; the error names Pod Security and what to change, not RBAC."""
    w1 = cluster.node("w1")
    level = "pod-security.kubernetes.io/enforce"
    cluster.core.patch_namespace(NS, {"metadata": {"labels": {level: "baseline"}}})
    try:
        with pytest.raises(BackendError) as err:
            real_apiserver.backend().partition_node(w1)
    finally:
        cluster.core.patch_namespace(NS, {"metadata": {"labels": {level: None}}})
    text = str(err.value)
    assert "Pod Security admission (403)" in text and "violates PodSecurity" in text
    assert f"{level}=privileged" in text and "RBAC" not in text
    assert cluster.pod_or_none(f"rto-node-partition-{w1}") is None


def test_a_second_node_cut_waits_for_the_first_cuts_pod_to_end(
    real_apiserver: RealApiserver,  # noqa: F811
    cluster: Cluster,  # noqa: F811
) -> None:
    """Heal deletes the cut's pod gracefully (its SIGTERM lifts the cut); a new cut
    of the node made before that pod has ended waits for it instead of a 409."""
    w1 = cluster.node("w1")
    cut = f"rto-node-partition-{w1}"
    cluster.pods.append(cut)
    b = real_apiserver.backend()
    b.partition_node(w1)
    b.heal_node_partition(w1)
    first = cluster.pod_or_none(cut)
    assert first is not None and first.metadata.deletion_timestamp is not None

    def kubelet_confirms() -> None:  # what the node's kubelet does when the pod has ended
        time.sleep(1.0)
        cluster.core.delete_namespaced_pod(cut, NS, grace_period_seconds=0)

    confirm = threading.Thread(target=kubelet_confirms)
    confirm.start()
    try:
        b.partition_node(w1)
    finally:
        confirm.join()
    second = cluster.pod_or_none(cut)
    assert second is not None and second.metadata.uid != first.metadata.uid
    assert second.metadata.deletion_timestamp is None


def test_pod_kill_is_a_node_pod_that_is_removed_when_done(
    real_apiserver: RealApiserver,  # noqa: F811
    cluster: Cluster,  # noqa: F811
) -> None:
    """A pod's pid 1 is killed from the node's PID namespace (not by exec: the
    kernel drops a SIGKILL to a namespace's init sent from inside it). The test
    stands in for the kubelet by writing the node pod's phase; a finished pod is
    deleted at once (no grace for a pod in a terminal phase), a failed one is
    reported."""
    w1 = cluster.node("w1")
    web = f"web-{cluster.suffix}"
    pod = cluster.pod("web-a1", w1, web)
    kill = f"rto-node-kill-{w1}"
    cluster.pods.append(kill)
    b = real_apiserver.backend()

    def kill_reported_as(phase: str) -> list[BaseException]:
        """kill_main_process, the node pod's ``phase`` written as its kubelet would."""
        errors: list[BaseException] = []

        def run() -> None:
            try:
                b.kill_main_process(web)
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        try:
            poll_until(
                lambda: errors or cluster.pod_or_none(kill) is not None, 10, "the kill node pod"
            )
            assert errors == []
            spec = cluster.pod_or_none(kill).spec
            assert spec.host_pid and spec.node_name == w1
            script = spec.containers[0].command[-1]
            assert f"{pod}-0" in script and "NSpid" in script and "kill -9" in script
            cluster.core.patch_namespaced_pod_status(kill, NS, {"status": {"phase": phase}})
        finally:
            t.join(10)
        assert not t.is_alive() and cluster.pod_or_none(kill) is None
        return errors

    assert kill_reported_as("Succeeded") == []
    errors = kill_reported_as("Failed")
    assert len(errors) == 1 and isinstance(errors[0], BackendError)
    msg = str(errors[0])
    assert f"node pod {NS}/{kill} did not kill container" in msg and "phase Failed" in msg


def test_dry_run_touches_nothing(real_apiserver: RealApiserver, cluster: Cluster) -> None:  # noqa: F811
    w1 = cluster.node("w1")
    web = f"web-{cluster.suffix}"
    pod = cluster.pod("web-a1", w1, web)
    before = cluster.raw_node(w1).metadata.resource_version
    pod_before = cluster.pod_or_none(pod).metadata.resource_version
    b = real_apiserver.backend(dry_run=True)
    b.cordon(w1)
    b.fence(w1)
    b.partition_workload(web)
    b.reschedule(web)
    assert cluster.raw_node(w1).metadata.resource_version == before
    assert cluster.pod_or_none(pod).metadata.resource_version == pod_before
    net = k8s.NetworkingV1Api(cluster.core.api_client)
    assert f"rto-partition-{web}" not in {
        p.metadata.name for p in net.list_namespaced_network_policy(NS).items
    }
    assert b.plan[0] == f"cordon node {w1}" and len(b.plan) == 4


def _delete_config_maps(core: k8s.CoreV1Api, *names: str) -> None:
    """A test's ConfigMaps gone (one already deleted is fine)."""
    for c in names:
        try:
            core.delete_namespaced_config_map(c, NS)
        except ApiException as exc:
            if exc.status != 404:
                raise


def test_events_from_watches(real_apiserver: RealApiserver, cluster: Cluster) -> None:  # noqa: F811
    """List + watch followers on the real watch cache: node and pod changes arrive
    as timeline events over the stream (one list each), resourceVersion carried."""
    w1, w2 = cluster.node("w1"), cluster.node("w2")
    web = f"web-{cluster.suffix}"
    pod = cluster.pod("web-a1", w1, web)
    b = real_apiserver.backend()
    try:
        poll_until(
            lambda: any(e.source == "pod" and e.name == pod for e in b.events(0.0)),
            10,
            "the pod's Added event",
        )
        t0 = max(e.at for e in b.events(0.0))
        cluster.set_node_ready(w2, False)
        b.cordon(w1)
        cluster.run_pod(pod, restarts=1)

        def seen() -> set[tuple[str, str, str]]:
            return {(e.source, e.name, e.reason) for e in b.events(t0)}

        want = {
            ("node", w2, "NodeNotReady"),
            ("node", w1, "Cordoned"),
            ("pod", pod, "ContainerRestarted"),
        }
        poll_until(lambda: seen() >= want, 10, f"events {sorted(want)}")
        by_plural = {f.ref.plural: f for f in b.followers}
        nodes, pods = by_plural["nodes"], by_plural["pods"]
        assert nodes.stats["lists"] == 1 and pods.stats["lists"] == 1  # changes came by watch
        assert nodes.error is None and pods.error is None

        # The follower carries the version of the last change it saw (or a later
        # bookmark): it reaches the node's current one (a controller may still write).
        def caught_up() -> bool:
            rv = cluster.raw_node(w1).metadata.resource_version
            held = nodes.resource_version
            return nodes.known.get(f"/{w1}") == rv and held is not None and int(held) >= int(rv)

        poll_until(caught_up, 10, "the node follower to hold the node's resourceVersion")
        # No KubeVirt (API discovery says so): no VMI or migration follower at all.
        assert set(by_plural) == {"nodes", "pods"}
    finally:
        b.close()


def test_watch_relists_on_410_and_resumes(
    real_apiserver: RealApiserver,  # noqa: F811
    cluster: Cluster,  # noqa: F811
) -> None:
    """410 Gone for real: configmaps are watched straight from etcd (no watch cache
    for them, see tests/real_apiserver.py), and etcd is compacted past the version
    the follower holds. Then the server ends each stream after timeoutSeconds and
    the follower resumes from its version without re-listing."""
    b = real_apiserver.backend()
    seen: list[tuple[str, str]] = []
    label = f"rto-test={cluster.suffix}"
    f = WatchFollower(
        b.api,
        ResourceRef("", "v1", "configmaps", NS),
        lambda t, o: seen.append((t, o["metadata"]["name"])),
        label_selector=label,
        timeout_seconds=1,
    )
    labels = {"rto-test": cluster.suffix}
    c1, c2, c3 = (f"{n}-{cluster.suffix}" for n in ("c1", "c2", "c3"))
    core = cluster.core
    core.create_namespaced_config_map(NS, {"metadata": {"name": c1, "labels": labels}})
    try:
        f.relist()
        assert seen == [("ADDED", c1)]
        old = f.resource_version
        core.create_namespaced_config_map(NS, {"metadata": {"name": c2, "labels": labels}})
        core.delete_namespaced_config_map(c1, NS)
        rev = real_apiserver.compact_etcd()
        assert old is not None and int(old) < rev
        f.step()  # watch from the compacted version answers 410 -> forget it
        assert f.stats["relists_410"] == 1 and f.resource_version is None
        seen.clear()
        f.relist()  # a re-list reports the gap: c2 added, c1 gone
        assert sorted(seen) == [("ADDED", c2), ("DELETED", c1)]
        f.start()
        poll_until(lambda: f.stats["streams"] >= 3, 15, "the server to end two 1 s streams")
        core.create_namespaced_config_map(NS, {"metadata": {"name": c3, "labels": labels}})
        poll_until(lambda: ("ADDED", c3) in seen, 10, "c3 over the resumed watch")
        assert f.stats["relists_410"] == 1 and f.stats["lists"] == 2 and f.error is None
    finally:
        f.stop()
        _delete_config_maps(core, c2, c3)


class Relay:
    """A TCP relay in front of the apiserver that a test takes down and up again.

    Down, its port refuses connections and every relayed connection is cut: an
    apiserver that died, as its clients see it. Up again on the same port: the
    same apiserver (its watch history intact) is back.
    """

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("https://").partition(":")
        self.upstream = (host, int(port))
        self.port = 0
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.threads: list[threading.Thread] = []
        self.up()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"  # the apiserver's certificate names 127.0.0.1

    def up(self) -> None:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen()
        self.port, self.listener = lst.getsockname()[1], lst
        self._spawn(self._accept, lst)

    def down(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
            self.listener.close()
            self.listener = None
        with self.lock:
            conns, self.conns = self.conns, []
            threads, self.threads = self.threads, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        for t in threads:
            t.join(timeout=5)

    def _spawn(self, target: Any, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        with self.lock:
            self.threads.append(t)
        t.start()

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return  # down()
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.conns += [client, server]
            self._spawn(self._pipe, client, server)
            self._spawn(self._pipe, server, client)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def test_watch_backs_off_while_the_apiserver_is_gone_and_resumes(
    real_apiserver: RealApiserver,  # noqa: F811
    cluster: Cluster,  # noqa: F811
) -> None:
    """The apiserver goes away under an open watch (the relay the follower talks
    through cuts it and refuses new connections): the follower reconnects with
    growing back-off; once the server is back it resumes from the version it
    held, without a re-list, and gets the change made while it was gone."""
    relay = Relay(real_apiserver.server)
    api = real_apiserver.api()
    api.configuration.host = relay.url
    seen: list[tuple[str, str]] = []
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # the real back-off, recorded
        sleeps.append(seconds)
        time.sleep(seconds)

    label = f"rto-test={cluster.suffix}"
    f = WatchFollower(
        api,
        ResourceRef("", "v1", "configmaps", NS),
        lambda t, o: seen.append((t, o["metadata"]["name"])),
        label_selector=label,
        sleep=sleep,
    )
    labels = {"rto-test": cluster.suffix}
    c1, c2 = (f"{n}-{cluster.suffix}" for n in ("c1", "c2"))
    core = cluster.core
    core.create_namespaced_config_map(NS, {"metadata": {"name": c1, "labels": labels}})
    try:
        f.start()
        poll_until(lambda: f.stats["streams"] == 1, 10, "the follower's watch stream")
        assert seen == [("ADDED", c1)]
        relay.down()
        poll_until(lambda: f.stats["reconnects"] >= 3, 20, "three reconnect attempts")
        core.create_namespaced_config_map(NS, {"metadata": {"name": c2, "labels": labels}})
        relay.up()
        poll_until(lambda: ("ADDED", c2) in seen, 20, "c2 over the resumed watch")
        assert seen == [("ADDED", c1), ("ADDED", c2)]
        assert f.stats["lists"] == 1 and f.stats["relists_410"] == 0 and f.error is None
        assert f.stats["reconnects"] == len(sleeps) >= 3
        assert all(a < b for a, b in itertools.pairwise(sleeps))  # growing
    finally:
        f.stop()
        relay.down()
        _delete_config_maps(core, c1, c2)


def test_pod_only_account_lists_pods_without_kubevirt(
    real_apiserver: RealApiserver,  # noqa: F811
    cluster: Cluster,  # noqa: F811
) -> None:
    """An account granted pods and nodes only, on a cluster without KubeVirt, can read
    its pod workloads. On a real apiserver the authorizer runs before the router, so
    listing VMIs of the unserved kubevirt.io group answers 403, not the 404 the
    backend takes for "no KubeVirt" (the emulator answers 404 whoever asks)."""
    w1 = cluster.node("w1")
    web = f"web-{cluster.suffix}"
    cluster.pod("web-a1", w1, web)
    role = f"rto-pods-only-{cluster.suffix}"
    rules = [{"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}]
    subject = [{"kind": "User", "name": NOBODY, "apiGroup": "rbac.authorization.k8s.io"}]
    ref = {"kind": "ClusterRole", "name": role, "apiGroup": "rbac.authorization.k8s.io"}
    cluster.rbac.create_cluster_role({"metadata": {"name": role}, "rules": rules})
    cluster.rbac.create_cluster_role_binding(
        {"metadata": {"name": role}, "subjects": subject, "roleRef": ref}
    )
    nobody = real_apiserver.backend(NOBODY)
    core = k8s.CoreV1Api(nobody.api)
    try:
        poll_until(
            lambda: bool(core.list_namespaced_pod(NS).items),
            10,
            "rto-nobody can list pods",
            retry_on=(ApiException,),
        )
        assert web in {w.name for w in nobody.workloads()}
        with pytest.raises(BackendError, match="KubeVirt is not installed"):
            nobody.create_workload("vmx", WorkloadKind.VMI)
    finally:
        nobody.close()
        cluster.rbac.delete_cluster_role_binding(role)
        cluster.rbac.delete_cluster_role(role)


class _Health(BaseHTTPRequestHandler):
    """What the harness's workload answers on its health path: "<name> <instance>"."""

    answer = b""

    def do_GET(self) -> None:
        body = self.answer if self.path == "/cgi-bin/healthz" else b"not here"
        self.send_response(200 if self.path == "/cgi-bin/healthz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_service_proxy_probe(
    real_apiserver: RealApiserver,  # noqa: F811
    cluster: Cluster,  # noqa: F811
    endpoint_address: str,  # noqa: F811
) -> None:
    """probe_target through the real apiserver's service proxy, probed by the
    harness's own prober: 503 with no endpoint, 200 with the workload's answer
    once the Service has a ready endpoint, a failure again when it stops. The
    Endpoints object is written here (what the endpoints controller would do for
    a running pod), pointing at a stand-in HTTP server on ``endpoint_address``:
    no kubelet runs the pod's container."""
    web = f"web-{cluster.suffix}"
    pod = cluster.pod("web-a1", cluster.node("w1"), web)
    with socket.socket() as sock:
        sock.bind((endpoint_address, 0))
        port = sock.getsockname()[1]
    b = KubeBackend(real_apiserver.config(probe_port=port), echo=lambda m: None)
    server = ThreadingHTTPServer((endpoint_address, port), _Health)
    _Health.answer = f"{web} inst-1 ok".encode()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        b.create_workload(web, WorkloadKind.POD)  # the Service (and a Deployment nothing runs)
        target = b.probe_target(web)
        assert target is not None and target.tls is not None
        assert target.path == f"/api/v1/namespaces/{NS}/services/{web}:{port}/proxy/cgi-bin/healthz"

        def probe() -> tuple[bool, str | None, str]:
            return asyncio.run(http_probe(target, 5, expect_name=web))

        # No Endpoints object yet (no pod ever ran): the proxy answers 404.
        assert probe() == (False, None, "http 404")
        ports = [{"name": "probe", "port": port, "protocol": "TCP"}]
        # The proxy takes an address only with a targetRef naming a pod that has
        # that IP: the pod "runs" there.
        cluster.run_pod(pod, ip=endpoint_address)
        addr = {"ip": endpoint_address, "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}}
        not_ready = {"notReadyAddresses": [addr], "ports": ports}
        cluster.core.create_namespaced_endpoints(
            NS, {"metadata": {"name": web}, "subsets": [not_ready]}
        )
        assert probe() == (False, None, "http 503")  # an endpoint, none ready
        ready = {"addresses": [addr], "ports": ports}
        cluster.core.patch_namespaced_endpoints(web, NS, {"subsets": [ready]})
        answer = poll_until(lambda: (r := probe())[0] and r, 10, "a good probe through the proxy")
        assert answer == (True, "inst-1", "")
        server.shutdown()
        server.server_close()
        assert probe() == (False, None, "http 503")  # the endpoint refuses: proxy error
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        b.delete_workload(web)
        try:
            cluster.core.delete_namespaced_endpoints(web, NS)
        except ApiException as exc:
            if exc.status != 404:
                raise
    assert not [s for s in cluster.core.list_namespaced_service(NS).items if s.metadata.name == web]
