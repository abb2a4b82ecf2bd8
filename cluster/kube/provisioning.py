"""``KubeProvisioner``: the harness's test workloads created and deleted on a real cluster.

Filled with the facade's ``KubeClient`` and ``KubeReader``; read by the facade,
whose ``cluster.api.WorkloadActions`` methods (``create_workload``,
``delete_workload``) delegate here. Creates the Deployment or VirtualMachine
from the templates in workloads.py and the Service the prober reaches it
through; deletes them again (and forgets the workload's cached probe target).
"""

from __future__ import annotations

from functools import partial

from cluster.api import WorkloadKind
from cluster.kube import workloads
from cluster.kube.client import KV, KubeClient, Obj
from cluster.kube.reading import KubeReader
from core.errors import BackendError

__all__ = ["KubeProvisioner"]


class KubeProvisioner:
    """Creates and deletes the workloads (and their Services) in the first namespace."""

    def __init__(self, k: KubeClient, r: KubeReader) -> None:
        self.k, self.r = k, r

    def create_workload(
        self,
        name: str,
        kind: WorkloadKind,
        node: str | None = None,
        *,
        watchdog_heartbeat_s: int | None = 2,
        eviction_strategy: str = "LiveMigrate",
    ) -> None:
        # watchdog_heartbeat_s is a guest setting (the i6300esb driver's timeout):
        # the guest image decides it on a real cluster, so it is not applied here.
        ns, labels = self.k.config.namespaces[0], self.k.labels(name)
        sel = {"kubernetes.io/hostname": node} if node else None
        if kind is WorkloadKind.VMI:
            self.k.require_kubevirt()
        self.create_service(ns, name, labels)
        if kind is WorkloadKind.POD:
            template = self.k.config.pod_volume_host_path
            volume = None if template is None else template.replace("{workload}", name)
            body = workloads.deployment(name, labels, self.k.config.pod_image, sel, volume)
            self.k.act(
                f"create Deployment {ns}/{name}",
                lambda: self.k.call(
                    "create", "deployments", self.k.apps.create_namespaced_deployment, ns, body
                ),
            )
            return
        size = self.k.config.vmi_data_volume_size
        if size is not None:
            claim = workloads.persistent_volume_claim(
                name, size, self.k.config.vmi_data_storage_class
            )
            self.k.act(
                f"create PersistentVolumeClaim {ns}/{workloads.data_claim(name)} ({size})",
                partial(self._create_claim, ns, claim),
            )
        vm = workloads.virtual_machine(
            name, labels, self.k.config.vmi_image, sel, eviction_strategy, size is not None
        )
        self.k.act(
            f"create VirtualMachine {ns}/{name}",
            lambda: self.k.call(
                "create",
                "virtualmachines",
                self.k.custom.create_namespaced_custom_object,
                *KV,
                ns,
                "virtualmachines",
                vm,
            ),
        )

    def _create_claim(self, ns: str, claim: Obj) -> None:
        try:
            self.k.call(
                "create",
                "persistentvolumeclaims",
                self.k.core.create_namespaced_persistent_volume_claim,
                ns,
                claim,
            )
        except BackendError as exc:
            if "(409)" not in str(exc):  # a rerun: the claim and its data are kept
                raise

    def create_service(self, ns: str, name: str, labels: dict[str, str]) -> None:
        """The Service the prober reaches the workload through (see probe_target).

        Selects the workload's labels: the Deployment's pods, or the VMI's
        virt-launcher pod (KubeVirt copies the VMI's labels onto it; the VM
        template carries them). An existing one (a rerun) is kept: same selector.
        """
        svc = self.r.service_name(name)
        port = self.k.config.probe_port
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": svc, "labels": labels},
            "spec": {
                "selector": labels,
                "ports": [{"name": "probe", "port": port, "targetPort": port, "protocol": "TCP"}],
            },
        }

        def create() -> None:
            try:
                self.k.call("create", "services", self.k.core.create_namespaced_service, ns, body)
            except BackendError as exc:
                if "(409)" not in str(exc):
                    raise

        self.k.act(f"create Service {ns}/{svc} (probe endpoint, port {port})", create)

    def delete_workload(self, name: str) -> None:
        ns = self.k.config.namespaces[0]
        self.r.proxy_targets.pop(name, None)
        svc = self.r.service_name(name)
        self.k.act(
            f"delete services {ns}/{svc}",
            partial(
                self.k.ignore_404,
                "delete",
                "services",
                self.k.core.delete_namespaced_service,
                svc,
                ns,
            ),
        )
        for resource, fn in (
            ("deployments", lambda: self.k.apps.delete_namespaced_deployment(name, ns)),
            (
                "virtualmachines",
                lambda: self.k.custom.delete_namespaced_custom_object(
                    *KV, ns, "virtualmachines", name
                ),
            ),
        ):
            try:
                self.k.act(
                    f"delete {resource} {ns}/{name}",
                    partial(self.k.call, "delete", resource, fn),
                )
            except BackendError as exc:
                if "(404)" not in str(exc) and "not installed" not in str(exc):
                    raise
        if self.k.config.vmi_data_volume_size is not None:
            claim = workloads.data_claim(name)
            self.k.act(
                f"delete persistentvolumeclaims {ns}/{claim}",
                partial(
                    self.k.ignore_404,
                    "delete",
                    "persistentvolumeclaims",
                    self.k.core.delete_namespaced_persistent_volume_claim,
                    claim,
                    ns,
                ),
            )
