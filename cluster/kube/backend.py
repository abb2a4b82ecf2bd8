"""``KubeBackend``: the backend interface on a real Kubernetes (+ KubeVirt) cluster.

Filled from a ``KubeConfig`` (cluster/kube/config.py) and a kubeconfig context;
read by the runner, faults, healers and recorder through ``cluster.api.Backend``.
A facade: it builds the context's API client and hands it, as a ``KubeClient``
(client.py: error translation, dry-run, target checks), to its collaborators,
one per concern: ``KubeReader`` (reading.py: nodes, workloads, probe targets),
``KubeFaults`` (faults.py), ``KubeHealing`` (healing.py) and ``KubeProvisioner``
(provisioning.py: the workloads and their Services), whose methods it
delegates to. It keeps the watches (watch.py, timeline.py) and the metrics and
log followers (observe.py). Only these cluster/kube modules talk to the
``kubernetes`` client. Every target is checked against the config: workloads
only in its namespaces with its label, nodes only with its label or by name.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from cluster.api import (
    Event,
    NodeStatus,
    Phase,
    ProbeTarget,
    VolumeFailure,
    WorkloadKind,
    WorkloadStatus,
)
from cluster.kube.client import KV, OUT_OF_SERVICE, Executor, KubeClient, Obj, kube_exec
from cluster.kube.config import KubeConfig
from cluster.kube.faults import KubeFaults
from cluster.kube.healing import KubeHealing
from cluster.kube.observe import LogSource, PodLogFollower, PodMetricsReader
from cluster.kube.power import PowerDriver
from cluster.kube.provisioning import KubeProvisioner
from cluster.kube.reading import KubeReader
from cluster.kube.timeline import KubeTimeline
from cluster.kube.watch import ResourceRef, WatchFollower
from core.clock import Clock, RealClock
from core.errors import BackendError, SpecError
from core.samples import MetricSample

__all__ = ["OUT_OF_SERVICE", "Executor", "KubeBackend", "kube_exec"]


class KubeBackend:
    name = "kube"

    def __init__(
        self,
        config: KubeConfig,
        context: str | None = None,
        dry_run: bool = False,
        api_client: k8s.ApiClient | None = None,
        executor: Executor = kube_exec,
        power: PowerDriver | None = None,
        sleep: Callable[[float], None] | None = None,
        echo: Callable[[str], None] = print,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or RealClock()  # stamps metric samples
        self.context = context or config.contexts[0]
        if self.context not in config.contexts:
            raise BackendError(
                f"kube context {self.context!r} is not in the allowlist "
                f"({', '.join(config.contexts)}); add it to 'contexts' in the kube config "
                "if the harness may inject faults there"
            )
        # One clock for waits: sleeping on it is what moves a fake clock's time,
        # so a wait stopping on the clock can never spin.
        self.sleep: Callable[[float], None] = sleep or self.clock.sleep
        self.dry_run, self.echo = dry_run, echo
        self.executor = executor
        if api_client is None:
            try:
                api_client = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
                    config_file=config.kubeconfig, context=self.context
                )
            except (ConfigException, OSError) as exc:
                raise BackendError(f"kubeconfig context {self.context!r}: {exc}") from exc
        self.client = KubeClient(
            config,
            self.context,
            api_client,
            dry_run=dry_run,
            echo=echo,
            executor=executor,
            clock=self.clock,
            sleep=self.sleep,
        )
        self.reader = KubeReader(self.client)
        self.faults = KubeFaults(self.client, self.reader, power)
        self.healing = KubeHealing(self.client, self.reader, self.faults)
        self.provisioner = KubeProvisioner(self.client, self.reader)
        # The same objects as the client's: callers read them off the backend.
        self.plan = self.client.plan
        self.api = api_client
        self.core, self.apps = self.client.core, self.client.apps
        self.net, self.custom = self.client.net, self.client.custom
        self.timeline = KubeTimeline()
        self.followers: list[WatchFollower] = []
        # metrics-server reader (caches "not installed") and per-workload log
        # followers writing under a directory of this backend instance.
        self._metrics = PodMetricsReader(self.api, self._explain)
        self._log_followers: dict[str, PodLogFollower] = {}
        self._log_dir: Path | None = None
        self._log_lock = threading.Lock()  # log_path from the recorder and the runner
        self._platform: str | None = None  # platform_version(), asked once

    # --- plumbing (client.py) ------------------------------------------------------
    def _explain(self, exc: ApiException, verb: str, resource: str) -> BackendError:
        return self.client.explain(exc, verb, resource)

    def has_kubevirt(self) -> bool:
        return self.client.has_kubevirt()

    def require_kubevirt(self) -> None:
        self.client.require_kubevirt()

    # --- reading (reading.py: cluster.api.Observed) --------------------------------
    def nodes(self) -> list[NodeStatus]:
        return self.reader.nodes()

    def node(self, name: str) -> NodeStatus:
        return self.reader.node(name)

    def workloads(self) -> list[WorkloadStatus]:
        return self.reader.workloads()

    def workload(self, name: str) -> WorkloadStatus:
        return self.reader.workload(name)

    def probe_target(self, workload: str) -> ProbeTarget | None:
        return self.reader.probe_target(workload)

    def _current_pods(self) -> dict[str, Obj]:
        return self.reader.current_pods()

    @property
    def _proxy_targets(self) -> dict[str, tuple[str | None, str, ProbeTarget]]:
        return self.reader.proxy_targets

    # --- faults (faults.py: cluster.api.FaultActions) ------------------------------
    def kill_main_process(self, workload: str) -> None:
        self.faults.kill_main_process(workload)

    def hang_guest(self, workload: str, resume: bool = False) -> None:
        self.faults.hang_guest(workload, resume)

    def cordon(self, node: str) -> None:
        self.faults.cordon(node)

    def uncordon(self, node: str) -> None:
        self.faults.uncordon(node)

    def evict(self, workload: str, patience: float = 60.0) -> None:
        self.faults.evict(workload, patience)

    def _evict_pod(self, ns: str, pod: str, patience: float = 60.0) -> None:
        self.faults.evict_pod(ns, pod, patience)

    def power_off(self, node: str) -> None:
        self.faults.power_off(node)

    def power_on(self, node: str) -> None:
        self.faults.power_on(node)

    def partition_workload(self, workload: str) -> None:
        self.faults.partition_workload(workload)

    def heal_workload_partition(self, workload: str) -> None:
        self.faults.heal_workload_partition(workload)

    def partition_node(self, node: str, max_seconds: int = 600) -> None:
        self.faults.partition_node(node, max_seconds)

    def heal_node_partition(self, node: str) -> None:
        self.faults.heal_node_partition(node)

    def fail_volume(self, workload: str, mode: VolumeFailure) -> None:
        self.faults.fail_volume(workload, mode)

    def repair_volume(self, workload: str, mode: VolumeFailure) -> None:
        self.faults.repair_volume(workload, mode)

    # --- healer actions (healing.py: cluster.api.HealerActions) --------------------
    def restart_healing(self) -> bool:
        return self.healing.restart_healing()

    def set_restart_healing(self, enabled: bool) -> None:
        self.healing.set_restart_healing(enabled)

    def fence(self, node: str) -> None:
        self.healing.fence(node)

    def unfence(self, node: str) -> None:
        self.healing.unfence(node)

    def reschedule(self, workload: str) -> None:
        self.healing.reschedule(workload)

    def start_migration(self, workload: str, node: str | None = None) -> str | None:
        """Start a live migration of the workload's VMI; the migration's name."""
        return self.healing.start_migration(workload, node)

    def wait_migration(self, name: str, timeout: int = 300) -> str:
        """Follow one migration through a watch until Succeeded/Failed; its last phase."""
        return self.healing.wait_migration(name, timeout)

    def migrate(self, workload: str, node: str | None = None) -> dict[str, str]:
        """Live-migrate and wait for the end (the Backend contract); figures as strings."""
        return self.healing.migrate(workload, node)

    def hang_workload(self, workload: str) -> None:
        self.healing.hang_workload(workload)

    def resume_workload(self, workload: str) -> None:
        self.healing.resume_workload(workload)

    # --- watches -----------------------------------------------------------------
    def start_watches(self) -> None:
        if self.followers:
            return
        refs: list[tuple[str, ResourceRef, str | None]] = [
            ("node", ResourceRef("", "v1", "nodes"), None)
        ]
        for ns in self.config.namespaces:
            refs.append(("pod", ResourceRef("", "v1", "pods", ns), self.config.target_label))
            if self.has_kubevirt():
                refs.append(("vmi", ResourceRef(*KV, "virtualmachineinstances", ns), None))
                refs.append(
                    ("migration", ResourceRef(*KV, "virtualmachineinstancemigrations", ns), None)
                )
        for source, ref, sel in refs:
            f = WatchFollower(
                self.api, ref, self.timeline.feeder(source), label_selector=sel, sleep=self.sleep
            )
            f.start()
            self.followers.append(f)

    def stop_watches(self) -> None:
        for f in self.followers:
            f.stop()
        self.followers.clear()

    def close(self) -> None:
        self.stop_watches()
        with self._log_lock:
            for f in self._log_followers.values():
                f.stop()
            self._log_followers.clear()
            if self._log_dir is not None:
                shutil.rmtree(self._log_dir, ignore_errors=True)
                self._log_dir = None

    def events(self, since: float) -> Iterator[Event]:
        self.start_watches()
        for f in self.followers:
            if f.error is not None:
                err = f.error
                if isinstance(err, ApiException):
                    if err.status == 404 and "virtualmachine" in f.ref.plural:
                        continue  # no KubeVirt: pods only
                    raise self._explain(err, "watch", f.ref.plural) from err
                raise BackendError(f"watch of {f.ref.plural} failed: {err}") from err
        return self.timeline.since(since)

    # --- workloads (provisioning.py: cluster.api.WorkloadActions) ----------------
    def create_workload(
        self,
        name: str,
        kind: WorkloadKind,
        node: str | None = None,
        *,
        watchdog_heartbeat_s: int | None = 2,
        eviction_strategy: str = "LiveMigrate",
    ) -> None:
        self.provisioner.create_workload(
            name,
            kind,
            node,
            watchdog_heartbeat_s=watchdog_heartbeat_s,
            eviction_strategy=eviction_strategy,
        )

    def _create_service(self, ns: str, name: str, labels: dict[str, str]) -> None:
        self.provisioner.create_service(ns, name, labels)

    def delete_workload(self, name: str) -> None:
        self.provisioner.delete_workload(name)

    # --- around a run (cluster.api.RunHooks) -----------------------------------------
    @property
    def profile(self) -> str | None:
        """The config's ``profile``: a real cluster's timings are its own, unless
        its config says which profile its components were started with."""
        return self.config.profile

    def set_profile(self, name: str) -> None:
        """Nothing to switch: the cluster's controllers keep their configured timings.

        A config that names its cluster's profile refuses another one: the
        run would be recorded under timings the cluster does not have.
        """
        if self.config.profile is not None and name != self.config.profile:
            raise SpecError(
                f"this cluster runs profile {self.config.profile!r} (its kube config says so), "
                f"not {name!r}: bring it up with that profile (rto lab up --profile {name})"
            )

    def wait_ready(self, name: str, timeout: float) -> WorkloadStatus | None:
        """Wait until the workload is Running with its Ready condition True (what
        ``kubectl wait --for=condition=Ready`` waits for); its status then.

        A guest's HTTP server may answer before its VMI is Ready, while the
        guest still boots and answers slowly: a steady state read off the
        probes alone would then start a run on a workload that is not up.
        None in dry-run mode (nothing was created) or when it is not Ready in
        ``timeout``; the run's steady-state probe then decides.
        """
        if self.dry_run:
            return None
        deadline = self.clock.now() + timeout
        while True:
            try:
                st: WorkloadStatus | None = self.workload(name)
            except BackendError:
                st = None  # not made yet (a VM between two VMIs)
            ready = None if st is None else st.condition("Ready")
            if st is not None and st.phase is Phase.RUNNING and ready is not None and ready.status:
                return st
            if self.clock.now() >= deadline:
                return None
            self.sleep(0.25)

    def metrics(self, workload: str) -> MetricSample | None:
        """A metrics-server reading of the workload's pod (``cluster.kube.observe``).

        None when metrics.k8s.io is not served (asked once), when the pod has no
        reading yet or the workload has no pod now (down: the sampler counts it
        missing). metrics-server publishes a CPU rate and a working set only, so:
        ``cpu_s`` is the rate integrated between samples (an estimate, from 0 for
        each new pod); for a VMI it is the whole virt-launcher pod (vCPUs, QEMU's
        own threads and virt-launcher cannot be told apart), so ``host_cpu_s`` =
        ``cpu_s``; ``mem_bytes`` is the pod's working set (for a VMI the guest
        memory QEMU touched plus its overhead, hence ``overhead_bytes`` 0); disk
        and network stay 0. An RBAC denial raises (the sampler keeps the message).
        """
        if not self._metrics.available():
            return None
        found = self.reader.observed_pod(workload)
        if found is None:
            return None  # no pod now: nothing running to read
        pod, kind = found
        meta = pod["metadata"]
        usage = self._metrics.usage(meta["namespace"], meta["name"])
        if usage is None:
            return None
        t = self.clock.now()
        cpu_s = self._metrics.cpu_seconds(workload, meta.get("uid", meta["name"]), t, usage.cores)
        return MetricSample(
            t=t,
            workload=workload,
            kind=kind.value,
            cpu_s=cpu_s,
            host_cpu_s=cpu_s,
            mem_bytes=usage.mem_bytes,
        )

    def _log_source(self, workload: str) -> LogSource:
        found = self.reader.observed_pod(workload)
        if found is None:
            # The follower backs off and asks again: a new pod is on its way.
            raise BackendError(f"workload {workload!r} has no pod to read the log of now")
        pod, kind = found
        names = [c["name"] for c in (pod.get("spec") or {}).get("containers") or ()]
        if kind is WorkloadKind.POD:
            container = "main" if "main" in names else (names[0] if names else "main")
        else:
            # The serial console (KubeVirt's guest-console-log sidecar) if enabled,
            # else virt-launcher's own output.
            container = "guest-console-log" if "guest-console-log" in names else "compute"
        meta = pod["metadata"]
        return LogSource(meta["namespace"], meta["name"], container, meta.get("uid", ""))

    def platform_version(self, kind: WorkloadKind | None = None) -> str | None:
        """ "Kubernetes <gitVersion>" of the API server, asked once; None if it does not say."""
        if self._platform is None:
            try:
                info = self.client.call("get", "version", k8s.VersionApi(self.client.api).get_code)
                self._platform = f"Kubernetes {info.git_version}"
            except BackendError:
                self._platform = ""
        return self._platform or None

    def vm_accelerator(self) -> str | None:
        """Unknown on a real cluster: whether KubeVirt emulates (useEmulation) or
        uses /dev/kvm is per node and not in the API the harness is granted."""
        return None

    def log_path(self, workload: str) -> Path | None:
        """A local file the workload's container log (a VMI: its serial console) is
        streamed into by a ``PodLogFollower`` started on the first call and stopped
        by ``close``; the file holds this backend instance's output only."""
        with self._log_lock:
            follower = self._log_followers.get(workload)
            if follower is None:
                if self._log_dir is None:
                    root = Path(tempfile.gettempdir()) / "rto-kube-logs"
                    root.mkdir(parents=True, exist_ok=True)
                    self._log_dir = Path(tempfile.mkdtemp(prefix=f"{self.context}-", dir=root))
                follower = PodLogFollower(
                    self.api,
                    partial(self._log_source, workload),
                    self._log_dir / f"{workload}.log",
                    explain=self._explain,
                )
                follower.start()
                self._log_followers[workload] = follower
            return follower.path
