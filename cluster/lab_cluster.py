"""The lab's backend: its real cluster through ``cluster.kube``, its machines beside it.

Made by ``LabClusterProvider`` (the ``lab`` entry of ``rto.backends``) once
``rto lab up`` started the real Kubernetes components (``cluster.lab.kube``);
read by the runner, faults, healers and recorder like any ``cluster.api.Backend``.

Pods are Deployments in the lab's API server, run by its kubelets, and every
pod call goes to a ``KubeBackend`` on the config the lab wrote
(``/var/lib/rto-lab/kube/rto-kube.yaml``), the same code a user points at their
own cluster. VMIs (a lab brought up with VMs) are VirtualMachines of the same
API server, reconciled by the lab's virt-controller and virt-handlers
(``cluster.lab.kube.virt_controller``); every VMI call goes to the kube backend
too (a paused guest is unpaused through virt-api's subresource), except what
only the lab can do to a guest (SIGKILL its QEMU, hang it, cut it off, unplug
its disk: KubeVirt's launcher is not here), done on the node its VMI status
names. What only the lab can do to a node (power, network cut) is
``cluster.lab.nodes.LabNodes``. Nodes are read from the real API server: its
Nodes and Leases are what the platform decides on. The lab and the kube backend
do not know each other (an import-linter contract); this module, above both,
joins them.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from cluster.api import (
    Backend,
    Event,
    NodeStatus,
    ProbeTarget,
    VolumeFailure,
    WorkloadKind,
    WorkloadStatus,
)
from cluster.kube.backend import KubeBackend
from cluster.kube.config import load_kube_config
from cluster.kube.workloads import data_claim
from cluster.lab import vmi_faults, vmis, volumes
from cluster.lab.kube import cluster as kube_cluster
from cluster.lab.kube import node as kube_node
from cluster.lab.kube.kubevirt_crds import KUBEVIRT_VERSION
from cluster.lab.kube.paths import KUBE_VERSION
from cluster.lab.lifecycle import lab_down, lab_up
from cluster.lab.nodes import LabNodes
from core.errors import BackendError, LabError
from core.samples import MetricSample
from core.wait import WaitTimeout, poll_until

__all__ = ["LabClusterBackend", "LabClusterProvider"]


def _kube_backend() -> KubeBackend:
    """The kube backend on the lab's kube config, with the lab's volumes.

    Each pod's /data is a hostPath on its lab volume (cluster.lab.volumes),
    which the storage faults freeze and shut down; every node sees the host's
    mounts there (cluster.lab.kube.node), so it follows the pod like network
    storage. Each VMI gets a hotpluggable data disk, a claim of the storage
    class ``DATA_CLASS`` that binds to the PersistentVolume this backend makes
    on the VMI's lab volume (where its disk file is). Only this backend makes
    those volumes (``create_workload``), so only it asks for them; the file
    itself leaves them out.
    """
    cfg = load_kube_config(kube_cluster.kube_config_path())
    update = {
        "pod_volume_host_path": str(volumes.mountpoint("{workload}")),
        "vmi_data_volume_size": DATA_SIZE,
        "vmi_data_storage_class": DATA_CLASS,
    }
    return KubeBackend(cfg.model_copy(update=update))


# The VMI data disks' PersistentVolumes: statically provisioned by the lab's
# backend on each VMI's lab volume, bound to its claim by the real PV controller.
DATA_CLASS = "rto-lab-volumes"
DATA_SIZE = "16Mi"


def _data_volume(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"rto-lab-{name}-data", "labels": {"rto.harness/workload": name}},
        "spec": {
            "capacity": {"storage": DATA_SIZE},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": DATA_CLASS,
            "claimRef": {"namespace": kube_cluster.NAMESPACE, "name": data_claim(name)},
            "hostPath": {"path": str(volumes.mountpoint(name)), "type": "Directory"},
        },
    }


def _pv_call(name: str, verb: str, ok: int) -> None:
    """``verb`` ("create" or "delete") VMI ``name``'s data-disk PersistentVolume;
    an answer of ``ok`` (409: it exists, 404: it is gone) is success."""
    api = kube_cluster.api_client()
    core = k8s.CoreV1Api(api)
    try:
        if verb == "create":
            # The client sends a plain dict as it is (its typed models are optional).
            core.create_persistent_volume(_data_volume(name))  # type: ignore[arg-type]
        else:
            core.delete_persistent_volume(f"rto-lab-{name}-data")
    except ApiException as exc:
        if exc.status != ok:
            raise BackendError(f"{verb} PersistentVolume of {name}'s data disk: {exc}") from exc
    finally:
        api.close()  # type: ignore[no-untyped-call]


def _ensure_data_volume(name: str) -> None:
    """The PersistentVolume of VMI ``name``'s data disk (kept if it exists)."""
    _pv_call(name, "create", 409)


def _remove_data_volume(name: str) -> None:
    _pv_call(name, "delete", 404)


def _switch_real_cluster(profile: str) -> None:
    kube_cluster.set_profile(profile)


class LabClusterBackend:
    """The lab's real cluster (kube backend) and its machines (``LabNodes``)."""

    name = "lab"
    dry_run = False

    def __init__(
        self,
        lab: LabNodes,
        kube: KubeBackend,
        reload_kube: Callable[[], KubeBackend] = _kube_backend,
        switch_cluster: Callable[[str], None] | None = None,
    ) -> None:
        self.lab, self.kube = lab, kube
        self._reload_kube = reload_kube
        # Restarts the real components with the profile's flags.
        self._switch_cluster = switch_cluster or _switch_real_cluster
        self.clock = lab.clock

    def close(self) -> None:
        try:
            self.kube.close()
        finally:
            self.lab.close()

    # --- routing -------------------------------------------------------------------
    def _kube_vmi(self, workload: str) -> tuple[str, str | None] | None:
        """(node, guest address) of a kubevirt.io VMI of the cluster; None if a pod."""
        w = self.kube.workload(workload)
        if w.kind is not WorkloadKind.VMI:
            return None
        if w.node is None:
            raise BackendError(f"VMI {workload} is on no node yet ({w.phase.value})")
        target = self.kube.probe_target(workload)
        return w.node, None if target is None else target.host

    # --- reading -------------------------------------------------------------------
    def nodes(self) -> list[NodeStatus]:
        powered = {m.name: m.powered for m in self.lab.nodes()}
        return [self._with_power(n, powered) for n in self.kube.nodes()]

    def node(self, name: str) -> NodeStatus:
        return self._with_power(self.kube.node(name), {name: self.lab.node(name).powered})

    @staticmethod
    def _with_power(n: NodeStatus, powered: dict[str, bool]) -> NodeStatus:
        # Only the lab knows whether it cut a node's power; the API server sees
        # a silent kubelet either way.
        return n if n.name not in powered else dataclasses.replace(n, powered=powered[n.name])

    def workloads(self) -> list[WorkloadStatus]:
        return self.kube.workloads()

    def workload(self, name: str) -> WorkloadStatus:
        return self.kube.workload(name)

    def probe_target(self, workload: str) -> ProbeTarget | None:
        return self.kube.probe_target(workload)

    def events(self, since: float) -> Iterator[Event]:
        # Both stamp with the monotonic clock (core.clock.RealClock, KubeTimeline).
        yield from heapq.merge(
            list(self.lab.events(since)), list(self.kube.events(since)), key=lambda e: e.at
        )

    def metrics(self, workload: str) -> MetricSample | None:
        w = self.kube.workload(workload)
        if w.kind is not WorkloadKind.VMI:
            return self.kube.metrics(workload)  # metrics-server, when the cluster serves it
        if w.node is None:
            return None  # no QEMU to read
        # The VMI's QEMU, read on its node (cluster.lab.metrics): guest CPU and
        # memory apart from QEMU's own, which a metrics-server cannot split.
        from cluster.lab import metrics  # libvirt-python: the 'vm' extra

        try:
            return metrics.vmi_sample(w.node, workload, self.clock.now())
        except LabError as exc:
            raise BackendError(f"metrics of {workload} on {w.node}: {exc}") from exc

    def log_path(self, workload: str) -> Path | None:
        if self.kube.workload(workload).kind is not WorkloadKind.VMI:
            return self.kube.log_path(workload)  # the container's log, streamed
        # The guest's serial console, which the lab's libvirtds append to across
        # restarts and migrations (KubeVirt's guest-console-log container would
        # stream the same; the lab's virt-launcher pods run no such container).
        from cluster.lab import virt  # libvirt-python: the 'vm' extra

        return virt.console_log(workload)

    def vm_accelerator(self) -> str | None:
        return self.lab.vm_accelerator()

    def platform_version(self, kind: WorkloadKind | None = None) -> str | None:
        if kind is WorkloadKind.VMI:
            base = self.kube.platform_version(kind) or "Kubernetes"
            return f"{base}, KubeVirt {KUBEVIRT_VERSION} API, the lab's virt-controller"
        return self.kube.platform_version(kind)

    # --- workloads -------------------------------------------------------------------
    def create_workload(
        self,
        name: str,
        kind: WorkloadKind,
        node: str | None = None,
        *,
        watchdog_heartbeat_s: int | None = 2,
        eviction_strategy: str = "LiveMigrate",
    ) -> None:
        if kind is WorkloadKind.VMI and not self.lab.vms():
            raise BackendError(
                f"cannot create VMI {name}: the lab came up without VMs; "
                "`rto lab down` and `rto lab up --vms`"
            )
        # Before the Deployment: its hostPath (type Directory, the kube
        # config's pod_volume_host_path) is this volume's mountpoint, which
        # every node sees (cluster.lab.kube.node follows the host's mounts).
        # A VMI's disk file lives there too, and its PersistentVolume names it.
        volumes.ensure_volume(name)
        if kind is WorkloadKind.VMI:
            _ensure_data_volume(name)
        self.kube.create_workload(
            name,
            kind,
            node,
            watchdog_heartbeat_s=watchdog_heartbeat_s,
            eviction_strategy=eviction_strategy,
        )

    def delete_workload(self, name: str) -> None:
        # A frozen volume would keep the container from ever stopping (its
        # writers hang uninterruptibly): thaw it first (no-op when not frozen).
        volumes.thaw(name)
        vmi = any(w.name == name and w.kind is WorkloadKind.VMI for w in self.kube.workloads())
        self.kube.delete_workload(name)

        def gone() -> bool:
            # A pod on a powered-off node never confirms its end; its node's
            # mount namespace died with the power, and the volume with it there.
            # A VMI's QEMU holds its disk file on the volume until its handler stops it.
            powered = {m.name for m in self.lab.nodes() if m.powered}
            if any(vmis.qemu_pid(n, name) is not None for n in powered):
                return False
            return not any(w.name == name and w.node in powered for w in self.kube.workloads())

        # The volume can only go once nothing holds it: the pod object goes
        # when its kubelet has stopped the containers (after their grace period).
        try:
            poll_until(gone, 120.0, f"the pods of deleted {name} to stop", self.clock, interval=0.5)
        except WaitTimeout as exc:
            raise BackendError(f"{exc}; its volume is kept (lab down removes it)") from None
        (volumes.mountpoint(name).parent / "restart-pending").unlink(missing_ok=True)
        if vmi:
            _remove_data_volume(name)
        volumes.destroy_volume(name)

    def wait_ready(self, name: str, timeout: float) -> WorkloadStatus | None:
        return self.kube.wait_ready(name, timeout)

    # --- faults ----------------------------------------------------------------------
    def kill_main_process(self, workload: str) -> None:
        at = self._kube_vmi(workload)
        if at is None:
            self.kube.kill_main_process(workload)
            return
        # The QEMU of the VMI runs under its node's libvirtd, not in the
        # launcher pod: killed there, as KubeVirt's compute container's would be.
        pid = vmis.qemu_pid(at[0], workload)
        if pid is None:
            raise BackendError(f"VMI {workload} has no running QEMU on {at[0]}; nothing to kill")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            raise BackendError(
                f"QEMU {pid} of {workload} exited before it could be killed"
            ) from None

    def hang_workload(self, workload: str) -> None:
        if self._kube_vmi(workload) is None:
            self.kube.hang_workload(workload)
            return
        reply = vmis.guest_command(workload, "hang")  # the guest's control channel
        if reply != "hung":
            raise BackendError(f"VMI {workload} answered {reply!r} to hang, not 'hung'")

    def cordon(self, node: str) -> None:
        self.kube.cordon(node)

    def uncordon(self, node: str) -> None:
        self.kube.uncordon(node)

    def evict(self, workload: str) -> None:
        self.kube.evict(workload)

    def power_off(self, node: str) -> None:
        # The lab's power-off kills everything in the node's cgroup: kubelet,
        # containerd, containers, libvirtd and QEMUs alike.
        self.lab.power_off(node)

    def power_on(self, node: str) -> None:
        self.lab.power_on(node)  # reboots the node: libvirtd, containerd, kubelet, virt-handler

    def partition_node(self, node: str) -> None:
        self.lab.partition_node(node)  # the node's netns: the kubelet loses the API too

    def heal_node_partition(self, node: str) -> None:
        self.lab.heal_node_partition(node)

    def partition_workload(self, workload: str) -> None:
        at = self._kube_vmi(workload)
        if at is None:
            self.kube.partition_workload(workload)
            return
        if at[1] is None:
            raise BackendError(f"VMI {workload} has no address yet: nothing to cut off")
        vmi_faults.partition_vmi(at[0], workload, at[1])

    def heal_workload_partition(self, workload: str) -> None:
        if not self._is_pod(workload):
            # Every node: the VMI may have moved (or be gone) since it was cut off.
            vmi_faults.heal_vmi([m.name for m in self.lab.nodes()], workload)
            return
        self.kube.heal_workload_partition(workload)

    def _is_pod(self, workload: str) -> bool:
        return any(w.name == workload and w.kind is WorkloadKind.POD for w in self.kube.workloads())

    def fail_volume(self, workload: str, mode: VolumeFailure) -> None:
        at = self._kube_vmi(workload)
        if at is not None:
            if mode is VolumeFailure.UNPLUG:
                # virt-api's removevolume (cluster.lab.kube.virt_subresources).
                self.kube.fail_volume(workload, mode)
            elif mode is VolumeFailure.HANG:
                volumes.freeze(workload)
            else:
                volumes.shutdown(workload)
            return
        # The pod's volume is the lab's (cluster.lab.volumes), mounted on the
        # host and seen by every node; failing it there fails it in the pod.
        if mode is VolumeFailure.UNPLUG:
            raise BackendError(
                f"cannot unplug the volume of pod {workload}: hot-unplug is a VMI disk "
                "fault; use hang or eio for pods"
            )
        node = self.kube.workload(workload).node
        holder = None if node is None else kube_node.holder_pid(node)
        if holder is not None:
            # A node whose mount namespace predates pod volumes (a lab brought
            # up again over older nodes) shows the pod a bare directory: the
            # fault would hit nothing and the run "recover" from nothing.
            seen = Path(f"/proc/{holder}/mountinfo").read_text().splitlines()
            if not any(row.split()[4] == str(volumes.mountpoint(workload)) for row in seen):
                raise BackendError(
                    f"node {node} does not see the volume of pod {workload}: "
                    "take the lab down and up again (rto lab down; rto lab up)"
                )
        if mode is VolumeFailure.HANG:
            volumes.freeze(workload)
        else:
            volumes.shutdown(workload)

    def repair_volume(self, workload: str, mode: VolumeFailure) -> None:
        """Idempotent (a journal revert replays it after a harness crash)."""
        if not self._is_pod(workload):
            self._repair_kube_vmi_volume(workload, mode)
            return
        if mode is VolumeFailure.UNPLUG:
            return  # fail_volume refuses it for pods: nothing to repair
        if mode is VolumeFailure.HANG:
            volumes.thaw(workload)
            return
        # Beside the volume: it was repaired, its container not restarted yet
        # (the marker outlives a harness crash between the two).
        pending = volumes.mountpoint(workload).parent / "restart-pending"
        if volumes.is_shut_down(workload):
            pending.parent.mkdir(parents=True, exist_ok=True)
            pending.touch()
            volumes.repair(workload)
        if not pending.exists():
            return  # healthy volume, container restarted: nothing to do
        # The running container still binds the dead superblock (its mount
        # namespace keeps it): killing its main process makes the kubelet
        # restart it, and the new container binds the fresh mount.
        self.kube.kill_main_process(workload)
        pending.unlink()

    def _repair_kube_vmi_volume(self, workload: str, mode: VolumeFailure) -> None:
        """Idempotent; the VMI may be gone or elsewhere by now (a journal replay)."""
        if mode is VolumeFailure.HANG:
            volumes.thaw(workload)
        elif mode is VolumeFailure.EIO:
            if volumes.is_shut_down(workload):
                # QEMU stays paused on the dead filesystem (PausedIOError), as
                # KubeVirt's does: resuming or replacing it is the healer's job.
                volumes.repair(workload)
        else:
            # virt-api's addvolume of what the VM's template has and the VMI
            # lacks (nothing once a new VMI took the unplugged one's place).
            self.kube.repair_volume(workload, mode)

    # --- healer actions ----------------------------------------------------------------
    def restart_healing(self) -> bool:
        return self.lab.restart_healing()

    def set_restart_healing(self, enabled: bool) -> None:
        # The kubelet always restarts containers and the VM controller always
        # makes a new VMI (run strategy Always): the flag tells the watchdog healer.
        self.lab.set_restart_healing(enabled)
        self.kube.set_restart_healing(enabled)

    def fence(self, node: str) -> None:
        # The real out-of-service taint: the pod-GC deletes the dead node's pods
        # (virt-launchers too, which is what releases its VMIs).
        self.kube.fence(node)

    def unfence(self, node: str) -> None:
        self.kube.unfence(node)

    def resume_workload(self, workload: str) -> None:
        at = self._kube_vmi(workload)
        if at is None:
            self.kube.resume_workload(workload)
            return
        paused = self.kube.workload(workload).condition("Paused")
        if paused is not None and paused.status:
            # KubeVirt's way: PUT .../virtualmachineinstances/NAME/unpause, through
            # the aggregator to the lab's virt-api (cluster.lab.kube.virt_subresources).
            self.kube.resume_workload(workload)
            return
        vmi_faults.resume(at[0], workload)  # not paused (yet): a no-op unless libvirt says so

    def reschedule(self, workload: str) -> None:
        self.kube.reschedule(workload)

    def migrate(self, workload: str, node: str | None = None) -> dict[str, str]:
        return self.kube.migrate(workload, node)  # a VirtualMachineInstanceMigration

    # --- around a run --------------------------------------------------------------------
    @property
    def profile(self) -> str | None:
        return self.lab.profile

    def set_profile(self, name: str) -> None:
        """The real components' flags, restarted with the profile's
        (``cluster.lab.kube.cluster.set_profile``)."""
        if self.kube.profile != name:
            self._switch_cluster(name)
            old, self.kube = self.kube, self._reload_kube()  # it read the old profile
            old.close()
        self.lab.record_profile(name)


class LabClusterProvider:
    """``cluster.api.BackendProvider`` for the lab on this machine."""

    name = "lab"

    def backend(self) -> Backend:
        if not kube_cluster.cluster_up():
            raise BackendError("the lab is not up: `rto lab up` (add --vms for VMIs) first")
        return LabClusterBackend(LabNodes(), _kube_backend())

    def up(self, profile: str, nodes: int, vms: bool) -> str | None:
        choice = lab_up(profile=profile, nodes=nodes, vms=vms)
        what = f"Kubernetes {KUBE_VERSION} on {nodes} nodes"
        if vms:
            what += f"; VMIs as KubeVirt {KUBEVIRT_VERSION} objects (the lab's virt-controller)"
        return what if choice is None else f"{what}; VM accelerator: {choice.describe()}"

    def down(self) -> None:
        lab_down()
