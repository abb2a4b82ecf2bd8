"""KubeBackend's VMI paths against KubeVirt's own CRDs in a real kube-apiserver.

The control plane of tests/real_apiserver.py with the ``kubevirt_crds`` fixture:
the VirtualMachine, VirtualMachineInstance and VirtualMachineInstanceMigration
CRDs that kubevirt.io/kubevirt (``cluster.lab.kube.kubevirt_crds``) generates,
with KubeVirt's OpenAPI schemas. So every VMI, VM and migration the backend
writes is validated (and pruned) by KubeVirt's schema, stored in etcd, listed
and watched through the real apiserver.

CRDs only: no virt-api, virt-controller or virt-handler. Where a test needs what
those would write (a VMI's status, a migration's phases, the virt-launcher pod),
the admin writes it through the API, and the comment at that spot says which
component it stands in for. The VMI CRD has no status subresource (virt-handler
updates the whole object), the VM and migration CRDs do.

Paths that work against CRDs alone (tested here): discovery (``has_kubevirt``),
VMI list/read with phase, node, conditions, migrationState and interface IP,
the VMI and migration watches feeding the timeline, ``start_migration``
(creating a VirtualMachineInstanceMigration), ``wait_migration`` and
``migrate``, ``reschedule`` (force-deleting the virt-launcher pod and the VMI),
``evict`` (the Eviction of the virt-launcher pod), ``create_workload`` and
``delete_workload`` of a VirtualMachine, and the VMI's NetworkPolicy partition.
Paths that need virt-api's subresources.kubevirt.io group, which CRDs do not
serve (the last test shows the 404 each gets): ``resume_workload`` of a paused
VMI (``unpause``), ``fail_volume``/``repair_volume`` of a VMI
(``removevolume``/``addvolume``). ``kill_main_process``, ``hang_guest`` and a
resume of a hung guest exec into the virt-launcher pod and need a kubelet
running it; metrics and logs need metrics-server and a kubelet: those stay in
the emulator tests (tests/test_kube_backend.py, tests/test_kube_observe.py).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from real_apiserver import NS, RealApiserver, kubevirt_crds, real_apiserver  # noqa: F401

from cluster.api import Phase, VolumeFailure, WorkloadKind
from cluster.kube import workloads
from cluster.kube.backend import OUT_OF_SERVICE, KubeBackend
from cluster.kube.watch import ResourceRef, WatchFollower
from cluster.lab.kube.kubevirt_crds import KUBEVIRT_VERSION, crds_path, install_crds, load_crds
from core.errors import BackendError, LabError
from core.wait import poll_until

KV = ("kubevirt.io", "v1")
TARGET = {"rto.harness/target": "true"}
CRDS = [
    "virtualmachines.kubevirt.io",
    "virtualmachineinstances.kubevirt.io",
    "virtualmachineinstancemigrations.kubevirt.io",
]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def wl(name: str) -> dict[str, str]:
    return {**TARGET, "rto.harness/workload": name}


class KubeVirtCluster:
    """Admin-side helpers: Nodes, VMIs and the stand-ins for KubeVirt's components.

    The API handles are ``Any``: bodies here are plain mappings, which the
    client's typed signatures (they want its models) do not describe.
    """

    def __init__(self, rs: RealApiserver) -> None:
        api = rs.api()
        self.core: Any = k8s.CoreV1Api(api)
        self.custom: Any = k8s.CustomObjectsApi(api)
        self.net: Any = k8s.NetworkingV1Api(api)
        self.suffix = uuid.uuid4().hex[:6]  # tests share one apiserver: own names each
        self.nodes: list[str] = []
        self.pods: list[str] = []
        self.vmis: list[str] = []
        self.vms: list[str] = []
        self.migrations: list[str] = []

    def name(self, base: str) -> str:
        return f"{base}-{self.suffix}"

    def node(self, base: str) -> str:
        name = self.name(base)
        self.core.create_node({"metadata": {"name": name, "labels": dict(TARGET)}})
        self.nodes.append(name)
        cond = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "lastHeartbeatTime": now(),
            "lastTransitionTime": now(),
        }
        self.core.patch_node_status(name, {"status": {"conditions": [cond]}})
        return name

    def vmi_spec(self, name: str, node: str | None = None) -> dict[str, Any]:
        """The spec virt-controller copies from the harness's own VM template."""
        sel = {"kubernetes.io/hostname": node} if node else None
        vm = workloads.virtual_machine(
            name, wl(name), "quay.io/kubevirt/cirros-container-disk-demo:v1.4.0", sel, "LiveMigrate"
        )
        spec: dict[str, Any] = vm["spec"]["template"]["spec"]
        return spec

    def vmi(self, name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "labels": wl(name)},
            "spec": spec or self.vmi_spec(name),
        }
        made: dict[str, Any] = self.custom.create_namespaced_custom_object(
            *KV, NS, "virtualmachineinstances", body
        )
        self.vmis.append(name)
        return made

    def run_vmi(self, name: str, node: str, ip: str = "198.18.60.1") -> None:
        """What virt-handler reports of a running guest (a patch of the whole object:
        the VMI CRD has no status subresource)."""
        self.patch_vmi(
            name,
            {
                "phase": "Running",
                "nodeName": node,
                "interfaces": [{"name": "default", "ipAddress": ip, "ipAddresses": [ip]}],
                "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": now()},
                    {"type": "LiveMigratable", "status": "True", "lastTransitionTime": now()},
                ],
            },
        )

    def patch_vmi(self, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            *KV, NS, "virtualmachineinstances", name, {"status": status}
        )

    def launcher(self, vmi: str, node: str) -> str:
        """virt-controller's virt-launcher pod for ``vmi`` (labels copied from the
        VMI), Running as its kubelet would report it."""
        name = f"virt-launcher-{vmi}-{uuid.uuid4().hex[:5]}"
        labels = {**wl(vmi), "kubevirt.io": "virt-launcher", "vm.kubevirt.io/name": vmi}
        self.core.create_namespaced_pod(
            NS,
            {
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "nodeName": node,
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "compute", "image": "virt-launcher"}],
                },
            },
        )
        self.pods.append(name)
        self.core.patch_namespaced_pod_status(
            name, NS, {"status": {"phase": "Running", "podIP": "198.18.50.9"}}
        )
        return name

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            got: dict[str, Any] = self.custom.get_namespaced_custom_object(*KV, NS, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return got

    def pod_or_none(self, name: str) -> Any:
        try:
            return self.core.read_namespaced_pod(name, NS)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def cleanup(self) -> None:
        def quietly(fn: Any, *a: Any, **kw: Any) -> None:
            try:
                fn(*a, **kw)
            except ApiException as exc:
                if exc.status != 404:
                    raise

        for plural, names in (
            ("virtualmachineinstancemigrations", self.migrations),
            ("virtualmachineinstances", self.vmis),
            ("virtualmachines", self.vms),
        ):
            for n in names:
                quietly(self.custom.delete_namespaced_custom_object, *KV, NS, plural, n)
        for p in self.pods:
            quietly(self.core.delete_namespaced_pod, p, NS, grace_period_seconds=0)
        for n in self.nodes:
            quietly(self.core.delete_node, n)


@pytest.fixture
def kv(real_apiserver: RealApiserver, kubevirt_crds: list[str]) -> Iterator[KubeVirtCluster]:  # noqa: F811
    c = KubeVirtCluster(real_apiserver)
    try:
        yield c
    finally:
        c.cleanup()


class MigrationController:
    """Stands in for virt-controller and virt-handler in a live migration: follows
    VirtualMachineInstanceMigrations by watch and, for each new one, walks its
    phases through the status subresource, then moves the VMI (status.nodeName,
    status.migrationState) and marks the migration Succeeded."""

    PHASES = ("Scheduling", "Scheduled", "PreparingTarget", "TargetReady", "Running")

    def __init__(self, rs: RealApiserver, kv: KubeVirtCluster, nodes: list[str]) -> None:
        self.kv, self.nodes = kv, nodes
        self.done: list[str] = []
        self.lock = threading.Lock()
        self.follower = WatchFollower(
            rs.api(), ResourceRef(*KV, "virtualmachineinstancemigrations", NS), self.on_event
        )

    def on_event(self, etype: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        with self.lock:
            if etype != "ADDED" or (obj.get("status") or {}).get("phase") or name in self.done:
                return
            self.done.append(name)
        vmi = self.kv.get("virtualmachineinstances", obj["spec"]["vmiName"])
        assert vmi is not None
        source = vmi["status"]["nodeName"]
        wanted = (obj["spec"].get("addedNodeSelector") or {}).get("kubernetes.io/hostname")
        target = wanted or next(n for n in self.nodes if n != source)
        started = now()
        for phase in self.PHASES:
            self.set_phase(name, phase)
        state = {
            "migrationUid": obj["metadata"]["uid"],
            "sourceNode": source,
            "targetNode": target,
            "startTimestamp": started,
            "endTimestamp": now(),
            "completed": True,
            "mode": "PreCopy",
        }
        self.kv.patch_vmi(obj["spec"]["vmiName"], {"nodeName": target, "migrationState": state})
        self.set_phase(name, "Succeeded")

    def set_phase(self, name: str, phase: str) -> None:
        self.kv.custom.patch_namespaced_custom_object_status(
            *KV, NS, "virtualmachineinstancemigrations", name, {"status": {"phase": phase}}
        )

    def __enter__(self) -> MigrationController:
        self.follower.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.follower.stop()
        assert self.follower.error is None, self.follower.error


def test_discovery_finds_kubevirts_crds(
    real_apiserver: RealApiserver,  # noqa: F811
    kubevirt_crds: list[str],  # noqa: F811
) -> None:
    assert kubevirt_crds == CRDS
    assert crds_path().read_text().startswith(f"# KubeVirt {KUBEVIRT_VERSION} CRDs")
    b = real_apiserver.backend()
    assert b.has_kubevirt()
    b.require_kubevirt()
    # The served versions are KubeVirt's (v1 stored, v1alpha3 deprecated but served).
    ext: Any = k8s.ApiextensionsV1Api(real_apiserver.api())
    raw = json.loads(ext.read_custom_resource_definition(CRDS[1], _preload_content=False).data)
    versions = {v["name"]: (v["served"], v["storage"]) for v in raw["spec"]["versions"]}
    assert versions == {"v1": (True, True), "v1alpha3": (True, False)}
    assert raw["metadata"]["labels"] == {"kubevirt.io": ""}  # as virt-operator installs it
    # A second install (lab up again) replaces them in place.
    rv = raw["metadata"]["resourceVersion"]
    assert install_crds(real_apiserver.api()) == CRDS
    again = json.loads(ext.read_custom_resource_definition(CRDS[1], _preload_content=False).data)
    assert again["metadata"]["uid"] == raw["metadata"]["uid"]
    assert int(again["metadata"]["resourceVersion"]) >= int(rv)


def test_missing_or_foreign_crd_file_names_the_build_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTO_KUBEVIRT_CRDS", str(tmp_path / "kubevirt-crds.yaml"))
    with pytest.raises(LabError, match=r"no KubeVirt CRDs at .*: run bash scripts/build-kube.sh"):
        load_crds()
    (tmp_path / "kubevirt-crds.yaml").write_text("# KubeVirt v1.0.0 CRDs, generated by crdgen\n")
    with pytest.raises(LabError, match=rf"not KubeVirt {KUBEVIRT_VERSION}'s.*build-kube.sh"):
        load_crds()


def test_kubevirt_schema_accepts_a_vmi_and_rejects_a_bad_one(kv: KubeVirtCluster) -> None:
    """The harness's VMI spec is accepted; a wrong type, a missing required field
    and an unknown field meet KubeVirt's schema (422 naming the field; pruned)."""
    name = kv.name("vm1")
    spec = kv.vmi_spec(name)
    spec["domain"]["devices"]["notAKubeVirtField"] = True
    made = kv.vmi(name, spec)
    devices = made["spec"]["domain"]["devices"]
    assert devices["watchdog"] == {"name": "wd", "i6300esb": {"action": "reset"}}
    assert "notAKubeVirtField" not in devices  # pruned: structural schema, no unknown fields
    assert "nodeSelector" not in made["spec"]  # null pruned before validation

    bad = kv.vmi_spec(kv.name("bad"))
    bad["terminationGracePeriodSeconds"] = "thirty"
    with pytest.raises(ApiException) as err:
        kv.vmi(kv.name("bad"), bad)
    assert err.value.status == 422
    msg = json.loads(str(err.value.body))["message"]
    assert "spec.terminationGracePeriodSeconds" in msg and "must be of type integer" in msg

    nodomain = {k: v for k, v in kv.vmi_spec(kv.name("nodomain")).items() if k != "domain"}
    with pytest.raises(ApiException) as err:
        kv.vmi(kv.name("nodomain"), nodomain)
    assert err.value.status == 422
    assert "spec.domain: Required value" in json.loads(str(err.value.body))["message"]


def test_reads_vmi_phase_node_conditions(
    real_apiserver: RealApiserver,  # noqa: F811
    kv: KubeVirtCluster,
) -> None:
    """Port of the emulator's VMI part of test_reads_nodes_pods_vmis_with_conditions."""
    w1 = kv.node("w1")
    name = kv.name("vm1")
    made = kv.vmi(name)
    b = real_apiserver.backend()
    # Just created: no status yet (virt-controller has not seen it).
    assert b.workload(name).phase is Phase.PENDING and b.workload(name).node is None
    kv.run_vmi(name, w1)  # virt-handler: the guest runs on w1
    vmi = b.workload(name)
    assert (vmi.kind, vmi.phase, vmi.node) == (WorkloadKind.VMI, Phase.RUNNING, w1)
    assert vmi.instance == made["metadata"]["uid"]
    ready = vmi.condition("Ready")
    assert ready is not None and ready.status
    assert name in {w.name for w in b.workloads()}
    # Disk error with errorPolicy stop: QEMU pauses, the phase stays Running.
    paused = {"type": "Paused", "status": "True", "reason": "PausedIOError"}
    conds = kv.get("virtualmachineinstances", name)["status"]["conditions"]  # type: ignore[index]
    kv.patch_vmi(name, {"conditions": [*conds, paused]})
    cond = b.workload(name).condition("Paused")
    assert cond is not None and cond.status and cond.reason == "PausedIOError"
    assert b.workload(name).phase is Phase.RUNNING
    # probe: pod-ip (a harness inside the cluster network): the guest's own address.
    direct = KubeBackend(real_apiserver.config(probe="pod-ip"), echo=lambda m: None)
    target = direct.probe_target(name)
    assert target is not None and (target.host, target.port) == ("198.18.60.1", 8080)
    assert target.serial  # our guests answer from an nc loop: no edge probes


def test_vmi_and_migration_watches(real_apiserver: RealApiserver, kv: KubeVirtCluster) -> None:  # noqa: F811
    """Port of the emulator's test_events_from_watches for VMIs, plus migrations:
    the followers of both KubeVirt resources, on the real watch cache."""
    w1, w2 = kv.node("w1"), kv.node("w2")
    name = kv.name("vm1")
    kv.vmi(name)
    kv.run_vmi(name, w1)
    b = real_apiserver.backend()
    try:

        def seen(t: float = 0.0) -> set[tuple[str, str, str]]:
            return {(e.source, e.name, e.reason) for e in b.events(t)}

        poll_until(lambda: ("vmi", name, "Added") in seen(), 10, "the VMI's Added event")
        by_plural = {f.ref.plural: f for f in b.followers}
        assert set(by_plural) == {
            "nodes",
            "pods",
            "virtualmachineinstances",
            "virtualmachineinstancemigrations",
        }
        t0 = max(e.at for e in b.events(0.0))
        conds = kv.get("virtualmachineinstances", name)["status"]["conditions"]  # type: ignore[index]
        kv.patch_vmi(
            name,
            {
                "conditions": [
                    *conds,
                    {"type": "Paused", "status": "True", "reason": "PausedIOError"},
                ]
            },
        )
        poll_until(lambda: ("vmi", name, "PausedIOError") in seen(t0), 10, "PausedIOError")
        t1 = max(e.at for e in b.events(0.0))
        kv.patch_vmi(name, {"nodeName": w2})  # virt-handler: the guest now runs on w2
        poll_until(lambda: ("vmi", name, "Migrated") in seen(t1), 10, "the VMI's Migrated event")
        moved = next(e for e in b.events(t1) if e.reason == "Migrated")
        assert moved.data == {"from": w1, "to": w2, "workload": name}
        mig = b.start_migration(name)
        assert mig is not None
        kv.migrations.append(mig)
        poll_until(lambda: ("migration", mig, "Added") in seen(t1), 10, "the migration's Added")
        kv.custom.patch_namespaced_custom_object_status(
            *KV, NS, "virtualmachineinstancemigrations", mig, {"status": {"phase": "Running"}}
        )
        poll_until(
            lambda: ("migration", mig, "MigrationRunning") in seen(t1), 10, "MigrationRunning"
        )
        for f in b.followers:
            assert f.error is None and f.stats["lists"] == 1, f.ref.plural  # all by watch
    finally:
        b.close()


def test_live_migration_through_vmim(real_apiserver: RealApiserver, kv: KubeVirtCluster) -> None:  # noqa: F811
    """Port of the emulator's test_live_migration_follows_phases: the migration
    object the migration healer creates is accepted by KubeVirt's schema (with
    addedNodeSelector), and its phases, written by a stand-in controller, are
    followed by the backend's own watch to Succeeded."""
    w1, w2, w3 = kv.node("w1"), kv.node("w2"), kv.node("w3")
    name = kv.name("vm1")
    kv.vmi(name)
    kv.run_vmi(name, w1)
    b = real_apiserver.backend()
    with MigrationController(real_apiserver, kv, [w1, w2, w3]) as ctl:
        mig = b.start_migration(name, node=w2)  # as migrate() starts it
        assert mig is not None and mig.startswith(f"rto-{name}-")
        kv.migrations.append(mig)
        stored = kv.get("virtualmachineinstancemigrations", mig)
        assert stored is not None
        assert stored["spec"] == {
            "vmiName": name,
            "addedNodeSelector": {"kubernetes.io/hostname": w2},
        }
        assert stored["metadata"]["labels"] == wl(name)
        assert b.wait_migration(mig, timeout=20) == "Succeeded"
        assert b.workload(name).node == w2
        migrated = b.workload(name).condition("Migrated")
        assert migrated is not None and migrated.status and migrated.reason == w2
        figures = b.migrate(name)  # the Backend contract: start and wait
        kv.migrations.extend(m for m in ctl.done if m not in kv.migrations)
    assert figures["source"] == w2 and figures["target"] == w1  # the stand-in picks w1
    assert figures["downtime_ms"] == "" and figures["total_ms"].isdigit()
    assert b.workload(name).node == w1


def test_evict_reschedule_partition_vmi(real_apiserver: RealApiserver, kv: KubeVirtCluster) -> None:  # noqa: F811
    """Port of the VMI part of the emulator's test_fence_reschedule_unfence, plus
    evict and partition: the pod-level paths through the virt-launcher pod."""
    w1 = kv.node("w1")
    name = kv.name("vm1")
    kv.vmi(name)
    kv.run_vmi(name, w1)
    launcher = kv.launcher(name, w1)
    b = real_apiserver.backend()
    # No virt-api here: its webhook would turn this eviction of a LiveMigrate
    # VMI's launcher into a migration; the plain Eviction API deletes the pod
    # (gracefully: no kubelet confirms, it stays Terminating).
    b.evict(name)
    assert kv.pod_or_none(launcher).metadata.deletion_timestamp is not None
    b.partition_workload(name)
    pol = kv.net.read_namespaced_network_policy(f"rto-partition-{name}", NS)
    assert pol.spec.pod_selector.match_labels == {"rto.harness/workload": name}
    b.heal_workload_partition(name)
    b.fence(w1)
    assert b.node(w1).fenced
    b.reschedule(name)  # force-deletes the launcher pod and the VMI
    assert kv.pod_or_none(launcher) is None
    # No finalizer without virt-controller: the VMI is gone at once (a real
    # virt-controller would then start a new VMI of its VM on another node).
    assert kv.get("virtualmachineinstances", name) is None
    assert name not in {w.name for w in b.workloads()}
    b.unfence(w1)
    taints = kv.core.read_node(w1).spec.taints or []
    assert OUT_OF_SERVICE["key"] not in {t.key for t in taints}


def test_vm_workload_fits_kubevirts_schema(
    real_apiserver: RealApiserver,  # noqa: F811
    kv: KubeVirtCluster,
) -> None:
    """Port of the emulator's create_workload check: the VirtualMachine the harness
    creates (watchdog, cloud-init, containerDisk, masquerade) is accepted and
    kept whole by KubeVirt's VM schema; delete_workload removes it and its Service."""
    w1 = kv.node("w1")
    name = kv.name("wd")
    b = real_apiserver.backend()
    b.create_workload(name, WorkloadKind.VMI, node=w1)
    kv.vms.append(name)
    vm = kv.get("virtualmachines", name)
    assert vm is not None
    want = workloads.virtual_machine(
        name,
        wl(name),
        b.config.vmi_image,
        {"kubernetes.io/hostname": w1},
        "LiveMigrate",
    )
    assert vm["spec"] == want["spec"]  # nothing pruned: every field is KubeVirt's
    assert kv.core.read_namespaced_service(name, NS).spec.selector == wl(name)
    b.delete_workload(name)
    assert kv.get("virtualmachines", name) is None
    with pytest.raises(ApiException) as err:
        kv.core.read_namespaced_service(name, NS)
    assert err.value.status == 404


def test_a_vm_s_hotpluggable_data_claim_is_kept_by_the_schema_and_removed_with_it(
    real_apiserver: RealApiserver,  # noqa: F811
    kv: KubeVirtCluster,
) -> None:
    """``vmi_data_volume_size``: the harness makes the claim before the VM, and
    the VM's data volume (``hotpluggable: true``, a scsi disk) is KubeVirt's own
    schema, kept whole; delete_workload removes the claim too."""
    w1 = kv.node("w1")
    name = kv.name("dd")
    cfg = real_apiserver.config(vmi_data_volume_size="16Mi", vmi_data_storage_class="lab")
    b = KubeBackend(cfg, echo=lambda m: None)
    b.create_workload(name, WorkloadKind.VMI, node=w1)
    kv.vms.append(name)
    pvc = kv.core.read_namespaced_persistent_volume_claim(workloads.data_claim(name), NS)
    assert pvc.spec.resources.requests == {"storage": "16Mi"}
    assert pvc.spec.storage_class_name == "lab"
    vm = kv.get("virtualmachines", name)
    assert vm is not None
    tpl = vm["spec"]["template"]["spec"]
    data = next(v for v in tpl["volumes"] if v["name"] == "data")
    assert data == {
        "name": "data",
        "persistentVolumeClaim": {"claimName": workloads.data_claim(name), "hotpluggable": True},
    }
    assert {"name": "data", "disk": {"bus": "scsi"}} in tpl["domain"]["devices"]["disks"]
    b.delete_workload(name)
    assert kv.get("virtualmachines", name) is None
    # Deleted: gone, or Terminating until the pvc-protection controller (not
    # run by this control plane) lifts its finalizer.
    try:
        pvc = kv.core.read_namespaced_persistent_volume_claim(workloads.data_claim(name), NS)
    except ApiException as exc:
        assert exc.status == 404
    else:
        assert pvc.metadata.deletion_timestamp is not None
        kv.core.patch_namespaced_persistent_volume_claim(
            workloads.data_claim(name), NS, {"metadata": {"finalizers": None}}
        )


def test_virt_api_subresources_are_not_served_by_crds(
    real_apiserver: RealApiserver,  # noqa: F811
    kv: KubeVirtCluster,
) -> None:
    """unpause and add/removevolume are subresources.kubevirt.io, an aggregated API
    that virt-api serves: with CRDs alone the API server answers 404. These
    paths stay in the emulator tests (test_power_driver_and_watchdog_checks,
    test_vmi_volume_unplug_and_replug)."""
    w1 = kv.node("w1")
    name = kv.name("vm1")
    spec = kv.vmi_spec(name)
    spec["volumes"].append({"name": "data", "persistentVolumeClaim": {"claimName": "data"}})
    spec["domain"]["devices"]["disks"].append({"name": "data", "disk": {"bus": "virtio"}})
    kv.vmi(name, spec)
    conds = [
        {"type": "Ready", "status": "False"},
        {"type": "Paused", "status": "True", "reason": "PausedIOError"},
    ]
    kv.patch_vmi(name, {"phase": "Running", "nodeName": w1, "conditions": conds})
    b = real_apiserver.backend()
    cases: list[tuple[Callable[[], None], str]] = [
        (lambda: b.resume_workload(name), "unpause"),
        (lambda: b.fail_volume(name, VolumeFailure.EIO), "removevolume"),
    ]
    for call, sub in cases:
        with pytest.raises(
            BackendError,
            match=rf"update virtualmachineinstances/{sub}: virt-api does not serve "
            r"subresources.kubevirt.io/v1 .*\(404\), though kubevirt.io/v1 is served",
        ):
            call()
    # repair_volume reads the VM's template through the CRD, then needs addvolume.
    vm = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": wl(name)},
        "spec": {
            "runStrategy": "Always",
            "template": {"metadata": {"labels": wl(name)}, "spec": spec},
        },
    }
    kv.custom.create_namespaced_custom_object(*KV, NS, "virtualmachines", vm)
    kv.vms.append(name)
    # The VMI as an unplug leaves it (a merge patch replaces the lists whole).
    unplugged = {
        "volumes": spec["volumes"][:2],
        "domain": {"devices": {"disks": spec["domain"]["devices"]["disks"][:2]}},
    }
    kv.custom.patch_namespaced_custom_object(
        *KV, NS, "virtualmachineinstances", name, {"spec": unplugged}
    )
    with pytest.raises(BackendError, match=r"virtualmachineinstances/addvolume: virt-api does not"):
        b.repair_volume(name, VolumeFailure.EIO)
