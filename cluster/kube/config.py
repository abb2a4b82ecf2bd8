"""The kube backend's configuration: which cluster, which targets, which drivers.

Filled by the user (a YAML file: ``$RTO_KUBE_CONFIG`` or ``./rto-kube.yaml``);
read by ``KubeBackend`` and ``chaos.backends.get_backend("kube")``. It is the
safety boundary: the harness refuses any kubeconfig context not listed in
``contexts`` and acts only on workloads in ``namespaces`` carrying
``target_label``, and on nodes carrying ``target_label`` or named in ``nodes``.

Example::

    contexts: [kind-rto]              # the allowlist; the first is the default
    namespaces: [rto]
    target_label: rto.harness/target=true
    power_driver: kind                # or libvirt, or an entry point in rto.power_drivers
    power_options: {cluster: rto}
    probe: service-proxy              # or pod-ip (harness inside the cluster network)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.documents import read_document
from core.errors import SpecError

__all__ = ["DEFAULT_PATH", "KubeConfig", "load_kube_config"]

DEFAULT_PATH = Path("rto-kube.yaml")


class KubeConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    contexts: tuple[str, ...] = Field(min_length=1)
    kubeconfig: str | None = None
    namespaces: tuple[str, ...] = ("rto",)
    target_label: str = "rto.harness/target=true"
    # Label whose value names the workload (pods of a Deployment, a VM's VMI).
    workload_label: str = "rto.harness/workload"
    nodes: tuple[str, ...] = ()
    power_driver: str = "kind"
    power_options: dict[str, str] = Field(default_factory=dict)
    # The harness's own workloads (cluster/kube/workloads.py): busybox httpd
    # with a CGI health endpoint, and a CirrOS guest serving it from user data.
    pod_image: str = "docker.io/library/busybox:1.36"
    vmi_image: str = "quay.io/kubevirt/cirros-container-disk-demo:v1.4.0"
    # Command run in the virt-launcher compute container to hang the guest. The
    # default NMI panics the harness's own guest, which stays down until its
    # armed i6300esb resets it (cluster/kube/workloads.py); `virsh suspend`
    # would stop the watchdog's clock with the CPUs, and nothing would fire.
    guest_hang_command: tuple[str, ...] = ("virsh", "inject-nmi", "{domain}")
    # Resumes a guest paused on an I/O error when the VMI's Paused condition
    # lags (the watchdog healer; with the condition it uses `unpause`).
    guest_resume_command: tuple[str, ...] = ("virsh", "resume", "{domain}")
    # Where the harness's own pods keep their data: a hostPath template
    # ("{workload}" is replaced by the workload's name) naming a directory that
    # exists on every node and holds that workload's storage, like network
    # storage that follows the pod to whichever node runs it. When set, the
    # Deployment mounts it (type Directory) at /data and its health endpoint
    # writes and reads back a file there, answering 503 when that fails (a
    # frozen volume makes it hang). The lab sets it to its per-pod volumes,
    # which its storage faults fail; None: no volume, the health endpoint
    # touches no storage.
    pod_volume_host_path: str | None = Field(default=None, pattern="^/.*[{]workload[}]")
    node_pod_image: str = "registry.k8s.io/e2e-test-images/agnhost:2.52"
    # The timing profile (cluster.profiles) the cluster's components were started
    # with, when someone knows it (the lab writes it); recorded on every run.
    profile: str | None = None
    # How a node pod (privileged, host network and PID) reaches the node's own
    # namespaces before its script runs: pid 1's mount and network namespaces,
    # which on a real node are the node's. Where pid 1 is not the node's init
    # (the lab: nodes share the machine's PID namespace) this is empty: the
    # pod's host network already is the node's.
    node_pod_enter: tuple[str, ...] = ("nsenter", "-t", "1", "-m", "-n", "--")
    fence_after: float = 40.0
    # How the data-plane prober reaches a workload. "service-proxy": through the
    # API server's service proxy (HTTPS, the kubeconfig's credentials) to the
    # workload's Service, so the harness needs API access only (a laptop, a CI
    # runner). "pod-ip": straight to the pod IP / VMI interface IP, which only
    # works from inside the cluster network.
    probe: Literal["service-proxy", "pod-ip"] = "service-proxy"
    # pod-ip only: the network namespace the prober enters to reach the pod
    # network (the lab: its hub, which routes every node's pod range); None:
    # the harness's own.
    probe_netns: str | None = Field(default=None, min_length=1)
    # The Service probed for a workload ("{workload}" is replaced by its name).
    # The harness creates "<name>" for the workloads it creates; for your own
    # workloads name an existing Service selecting their pods (for a VMI: its
    # virt-launcher pod, which carries the VMI's labels).
    probe_service: str = "{workload}"
    probe_port: int = Field(default=8080, ge=1, le=65535)
    probe_path: str = Field(default="/cgi-bin/healthz", pattern="^/")
    # pod-ip only: where a VMI's guest answers, when not where pods do (the
    # lab's guest serves /healthz on 80); None: probe_port and probe_path.
    vmi_probe_port: int | None = Field(default=None, ge=1, le=65535)
    vmi_probe_path: str | None = Field(default=None, pattern="^/")
    # A data disk for each VMI the harness creates: a PVC "<workload>-data" of
    # this size (storage class vmi_data_storage_class; None: the cluster's
    # default), attached as a hotpluggable scsi disk, so the VMI storage faults
    # unplug it and plug it back through virt-api (removevolume, addvolume;
    # KubeVirt's HotplugVolumes feature gate). None: no data disk, and a VMI
    # disk unplug needs a VMI of yours that has a hotpluggable volume.
    vmi_data_volume_size: str | None = Field(default=None, pattern=r"^[1-9][0-9]*(Ki|Mi|Gi)$")
    vmi_data_storage_class: str | None = Field(default=None, min_length=1)

    @property
    def target_pair(self) -> tuple[str, str]:
        key, _, value = self.target_label.partition("=")
        return key, value


def load_kube_config(path: str | Path | None = None) -> KubeConfig:
    """Read the config; ``SpecError`` naming the file and field when it is wrong."""
    p = Path(path or os.environ.get("RTO_KUBE_CONFIG") or DEFAULT_PATH)
    if not p.exists():
        raise SpecError(
            f"kube backend: no config at {p}; write one (contexts: [your-context], "
            "namespaces: [...]) or point RTO_KUBE_CONFIG at it (see README, Real clusters)"
        )
    doc = read_document(p, "a kube config file")
    try:
        return KubeConfig.model_validate(doc or {})
    except ValidationError as exc:
        raise SpecError(f"{p}: {exc}") from exc
