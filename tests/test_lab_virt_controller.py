"""The lab's virt-controller against a real API server with KubeVirt's own CRDs.

``cluster.lab.kube.virt_controller.VirtController`` on the control plane of
tests/real_apiserver.py (``kubevirt_crds``): every VMI, virt-launcher pod,
status write and migration phase it makes is validated and stored by the real
kube-apiserver under KubeVirt's schemas. That control plane has no scheduler,
kubelet or garbage collector, so the test binds the launcher pods (as the
scheduler does), reports them Running (as a kubelet), writes what a
virt-handler writes, and deletes what the garbage collector would. The passes
are driven one by one (``reconcile``) after the caches saw the last write.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from real_apiserver import NS, RealApiserver, kubevirt_crds, real_apiserver  # noqa: F401

from cluster.kube import workloads
from cluster.lab.kube.virt_api import (
    ADDRESS_ANNOTATION,
    CREATED_BY,
    MIGRATION_UID,
    NODE_LABEL,
    VirtApi,
)
from cluster.lab.kube.virt_controller import VirtController

KV = ("kubevirt.io", "v1")


class World:
    """The test's hands: the scheduler, the kubelets, a virt-handler, the GC."""

    def __init__(self, rs: RealApiserver) -> None:
        self.client = rs.api()
        self.core: Any = k8s.CoreV1Api(self.client)
        self.custom: Any = k8s.CustomObjectsApi(self.client)
        self.suffix = uuid.uuid4().hex[:5]
        self.api = VirtApi(rs.api())
        self.ctl = VirtController(self.api, "registry.invalid/pause:lab")
        self.nodes: list[str] = []

    def name(self, base: str) -> str:
        return f"{base}-{self.suffix}"

    def node(self, base: str) -> str:
        name = self.name(base)
        self.core.create_node({"metadata": {"name": name}})
        self.nodes.append(name)
        return name

    def settle(self, what: str, done: Callable[[], bool], timeout: float = 15.0) -> None:
        """Passes of the controller until ``done`` (its caches lag the writes a little)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ctl.reconcile()
            if done():
                return
            time.sleep(0.1)
        raise AssertionError(f"not {what} after {timeout} s")

    def vm(self, name: str, strategy: str = "Always") -> dict[str, Any]:
        labels = {"rto.harness/workload": name}
        body = workloads.virtual_machine(name, labels, "lab-guest", None, "LiveMigrate")
        body["spec"]["runStrategy"] = strategy
        made: dict[str, Any] = self.custom.create_namespaced_custom_object(
            *KV, NS, "virtualmachines", body
        )
        return made

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            got: dict[str, Any] = self.custom.get_namespaced_custom_object(*KV, NS, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return got

    def launchers(self, vmi: dict[str, Any]) -> list[Any]:
        sel = f"{CREATED_BY}={vmi['metadata']['uid']}"
        return list(self.core.list_namespaced_pod(NS, label_selector=sel).items)

    def run_pod(self, pod: Any, node: str) -> None:
        """Bind it (the scheduler) and report it Running (its kubelet)."""
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": pod.metadata.name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        self.core.create_namespaced_pod_binding(
            pod.metadata.name, NS, binding, _preload_content=False
        )
        self.core.patch_namespaced_pod_status(
            pod.metadata.name, NS, {"status": {"phase": "Running", "podIP": "198.18.50.7"}}
        )

    def handler_writes(self, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            *KV, NS, "virtualmachineinstances", name, {"status": status}
        )

    def close(self) -> None:
        self.ctl.stop()
        for plural in ("virtualmachineinstancemigrations", "virtualmachineinstances",
                       "virtualmachines"):  # fmt: skip
            for o in self.custom.list_namespaced_custom_object(*KV, NS, plural)["items"]:
                if o["metadata"]["name"].endswith(self.suffix):
                    self.custom.delete_namespaced_custom_object(
                        *KV, NS, plural, o["metadata"]["name"]
                    )
        for p in self.core.list_namespaced_pod(NS).items:
            if p.metadata.name.startswith("virt-launcher-") and self.suffix in p.metadata.name:
                self.core.delete_namespaced_pod(p.metadata.name, NS, grace_period_seconds=0)
        for n in self.nodes:
            self.core.delete_node(n)
        self.api.close()
        self.client.close()


@pytest.fixture
def world(real_apiserver: RealApiserver, kubevirt_crds: list[str]) -> Iterator[World]:  # noqa: F811
    w = World(real_apiserver)
    w.ctl.start()
    try:
        yield w
    finally:
        w.close()


def _running_vmi(w: World, name: str, node: str) -> dict[str, Any]:
    """Take a new VM's VMI to Running on ``node``: controller, scheduler, kubelet, handler."""
    w.settle("a VMI made", lambda: w.get("virtualmachineinstances", name) is not None)
    vmi = w.get("virtualmachineinstances", name)
    assert vmi is not None
    w.settle("a launcher pod made", lambda: len(w.launchers(vmi)) == 1)
    w.run_pod(w.launchers(vmi)[0], node)

    def scheduled() -> bool:
        got = w.get("virtualmachineinstances", name) or {}
        return (got.get("status") or {}).get("phase") == "Scheduled"

    w.settle("the VMI Scheduled", scheduled)
    vmi = w.get("virtualmachineinstances", name)
    assert vmi is not None
    ip = vmi["metadata"]["annotations"][ADDRESS_ANNOTATION]
    w.handler_writes(name, {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
        "interfaces": [{"name": "default", "ipAddress": ip, "ipAddresses": [ip]}],
    })  # fmt: skip
    got = w.get("virtualmachineinstances", name)
    assert got is not None
    return got


def test_a_vm_gets_a_vmi_and_a_launcher_pod_the_scheduler_can_place(world: World) -> None:
    w = world
    node = w.node("kvn1")
    name = w.name("vm")
    vm = w.vm(name)
    vmi = _running_vmi(w, name, node)
    md = vmi["metadata"]
    assert md["ownerReferences"][0]["uid"] == vm["metadata"]["uid"]
    assert md["labels"]["rto.harness/workload"] == name
    assert md["labels"][NODE_LABEL] == node
    assert vmi["status"]["nodeName"] == node
    assert md["annotations"][ADDRESS_ANNOTATION].startswith("198.18.100.")
    # The pod carries what the kube backend finds launchers by, and the VMI's
    # labels (its Service selects them), and is owned by the VMI.
    pod = w.launchers(vmi)[0]
    assert pod.metadata.labels["kubevirt.io"] == "virt-launcher"
    assert pod.metadata.labels["vm.kubevirt.io/name"] == name
    assert pod.metadata.labels["rto.harness/workload"] == name
    assert pod.metadata.owner_references[0].uid == md["uid"]
    assert pod.spec.containers[0].name == "compute"
    # The VM's status follows its VMI.
    w.settle("the VM Running", lambda: ((w.get("virtualmachines", name) or {}).get("status") or {})
             .get("printableStatus") == "Running")  # fmt: skip
    vm_status = (w.get("virtualmachines", name) or {}).get("status") or {}
    assert vm_status["ready"] is True
    assert [(c["type"], c["status"]) for c in vm_status["conditions"]] == [("Ready", "True")]
    kube = w.ctl.vmis.get(NS, name)
    assert kube is not None


def test_a_failed_vmi_is_replaced_by_a_new_one(world: World) -> None:
    w = world
    node = w.node("kvn2")
    name = w.name("vm")
    w.vm(name)
    first = _running_vmi(w, name, node)
    # The handler saw QEMU die: Failed. The VM's run strategy makes a new VMI.
    w.handler_writes(name, {"phase": "Failed", "reason": "Stopped"})

    def replaced() -> bool:
        got = w.get("virtualmachineinstances", name)
        return got is not None and got["metadata"]["uid"] != first["metadata"]["uid"]

    w.settle("a new VMI", replaced)
    second = w.get("virtualmachineinstances", name)
    assert second is not None
    assert (second.get("status") or {}).get("phase") in (None, "Pending", "Scheduling")


def test_a_vmi_whose_launcher_pod_is_gone_fails_a_terminating_one_does_not(world: World) -> None:
    w = world
    node = w.node("kvn3")
    name = w.name("vm")
    w.vm(name, strategy="Manual")  # Manual: no new VMI after the failure, to look at it
    w.custom.create_namespaced_custom_object(*KV, NS, "virtualmachineinstances", {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "labels": {"rto.harness/workload": name}},
        "spec": w.get("virtualmachines", name)["spec"]["template"]["spec"],  # type: ignore[index]
    })  # fmt: skip
    vmi = _running_vmi(w, name, node)
    pod = w.launchers(vmi)[0]
    # Terminating on a dead node (nobody confirms the end): still alive.
    w.core.patch_namespaced_pod(pod.metadata.name, NS, {"metadata": {"finalizers": ["x/hold"]}})
    w.core.delete_namespaced_pod(pod.metadata.name, NS)
    for _ in range(10):
        w.ctl.reconcile()
        time.sleep(0.1)
    got = w.get("virtualmachineinstances", name)
    assert got is not None and got["status"]["phase"] == "Running"
    # The pod object goes (force-deleted on a fenced node): the VMI is Failed.
    w.core.patch_namespaced_pod(pod.metadata.name, NS, {"metadata": {"finalizers": None}})
    w.core.delete_namespaced_pod(pod.metadata.name, NS, grace_period_seconds=0)
    w.settle("the VMI Failed", lambda: ((w.get("virtualmachineinstances", name) or {})
             .get("status") or {}).get("phase") == "Failed")  # fmt: skip
    got = w.get("virtualmachineinstances", name)
    assert got is not None and got["status"]["reason"] == "NoLauncherPod"


def test_a_migration_gets_a_target_pod_off_the_source_then_ends(world: World) -> None:
    w = world
    src, dst = w.node("kvs"), w.node("kvd")
    name = w.name("vm")
    w.vm(name)
    vmi = _running_vmi(w, name, src)
    mig = w.custom.create_namespaced_custom_object(*KV, NS, "virtualmachineinstancemigrations", {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": w.name("mig")}, "spec": {"vmiName": name},
    })  # fmt: skip
    uid = mig["metadata"]["uid"]

    def target() -> Any:
        return next(
            (p for p in w.launchers(vmi) if (p.metadata.labels or {}).get(MIGRATION_UID) == uid),
            None,
        )

    w.settle("a target pod", lambda: target() is not None)
    terms = target().spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    expr = terms.node_selector_terms[0].match_expressions[0]
    assert (expr.key, expr.operator, expr.values) == ("kubernetes.io/hostname", "NotIn", [src])
    w.run_pod(target(), dst)

    def state() -> dict[str, Any]:
        got = w.get("virtualmachineinstances", name) or {}
        return dict((got.get("status") or {}).get("migrationState") or {})

    w.settle("the VMI's migrationState", lambda: state().get("targetNode") == dst)
    assert state()["sourceNode"] == src and state()["migrationUid"] == uid
    phase = lambda: ((w.get("virtualmachineinstancemigrations", w.name("mig")) or {})  # noqa: E731
                     .get("status") or {}).get("phase")  # fmt: skip
    w.settle("the migration TargetReady", lambda: phase() in ("TargetReady", "Running"))
    # The source handler migrated the domain and writes the outcome.
    w.handler_writes(name, {
        "nodeName": dst,
        "migrationState": {**state(), "completed": True, "endTimestamp": "2026-12-03T00:00:00Z"},
    })  # fmt: skip
    w.custom.patch_namespaced_custom_object(
        *KV, NS, "virtualmachineinstances", name, {"metadata": {"labels": {NODE_LABEL: dst}}}
    )
    w.settle("the migration Succeeded", lambda: phase() == "Succeeded")
    # The source's launcher pod lost; the target's stays.
    w.settle(
        "the source pod deleted",
        lambda: (
            [p.spec.node_name for p in w.launchers(vmi) if not p.metadata.deletion_timestamp]
            == [dst]
        ),
    )
    assert (w.get("virtualmachineinstances", name) or {})["status"]["phase"] == "Running"
    # A second migration back does not inherit the first one's outcome (the
    # status is merge-patched: what a write does not name stays).
    mig2 = w.custom.create_namespaced_custom_object(*KV, NS, "virtualmachineinstancemigrations", {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": w.name("mig2")}, "spec": {"vmiName": name},
    })  # fmt: skip
    uid = mig2["metadata"]["uid"]
    w.settle("a second target pod", lambda: target() is not None)
    w.run_pod(target(), src)
    w.settle("the second migrationState", lambda: state().get("migrationUid") == uid)
    for _ in range(5):
        w.ctl.reconcile()
        time.sleep(0.1)
    assert not state().get("completed") and not state().get("endTimestamp"), state()
    phase2 = ((w.get("virtualmachineinstancemigrations", w.name("mig2")) or {}).get("status")
              or {}).get("phase")  # fmt: skip
    assert phase2 in ("TargetReady", "Running"), phase2


def test_a_migration_of_a_vmi_that_does_not_run_fails(world: World) -> None:
    w = world
    w.custom.create_namespaced_custom_object(*KV, NS, "virtualmachineinstancemigrations", {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": w.name("mig")}, "spec": {"vmiName": w.name("nosuch")},
    })  # fmt: skip
    w.settle("the migration Failed", lambda: ((w.get("virtualmachineinstancemigrations",
             w.name("mig")) or {}).get("status") or {}).get("phase") == "Failed")  # fmt: skip
