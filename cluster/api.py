"""The backend interface every fault, healer and the recorder is written against.

Filled by the backends (``cluster.lab`` for the embedded lab, ``cluster.kube`` for
real clusters); read by ``chaos`` (faults, recorder, runner) and ``healers``. It is
deliberately small: nodes, workloads of kind pod or vmi, their status, the events
the control plane emits, and the actions faults and healers need. Nothing here
imports a third-party SDK: those stay inside the backend packages.

The contract is split by who uses it, so each caller (and each test fake) needs
only its part: ``Observed`` (what the recorder and healers read),
``WorkloadActions`` (create/delete), ``FaultActions``, ``HealerActions`` and
``RunHooks`` (what the runner and campaign ask around a run: readiness, the
timing profile, dry-run). ``Backend`` is all of them. ``BackendProvider`` and
``CommandFactory`` are the shapes of the two entry-point groups backend packages
fill (``rto.backends``, ``rto.commands``).

Every action is idempotent (calling ``heal_node`` on a healthy node is a no-op),
because the journal may replay a revert after a crash of the harness.
"""

from __future__ import annotations

import enum
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from core.samples import MetricSample

__all__ = [
    "Backend",
    "BackendProvider",
    "CommandFactory",
    "Condition",
    "Event",
    "FaultActions",
    "HealerActions",
    "NodeStatus",
    "Observed",
    "Phase",
    "ProbeTarget",
    "RunHooks",
    "VolumeFailure",
    "WorkloadActions",
    "WorkloadKind",
    "WorkloadStatus",
]


class WorkloadKind(enum.StrEnum):
    POD = "pod"
    VMI = "vmi"


class Phase(enum.StrEnum):
    """The union of pod and VMI phases (KubeVirt's list is a superset)."""

    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNKNOWN = "Unknown"
    TERMINATING = "Terminating"


class VolumeFailure(enum.StrEnum):
    """How a volume is made to fail: writes hang, writes get EIO, or (VMIs only)
    the data disk is hot-unplugged from the guest."""

    HANG = "hang"
    EIO = "eio"
    UNPLUG = "unplug"


@dataclass(frozen=True)
class Condition:
    """A status condition, as in Kubernetes: type, status and a reason."""

    type: str
    status: bool
    reason: str = ""


@dataclass(frozen=True)
class NodeStatus:
    name: str
    ready: bool
    schedulable: bool
    fenced: bool = False
    powered: bool = True
    # Seconds since the control plane last heard the node, None if never.
    heartbeat_age: float | None = None
    # How long that heartbeat holds by the platform's own contract (a Kubernetes
    # Lease's leaseDurationSeconds), None where the platform states none.
    heartbeat_valid_s: float | None = None


@dataclass(frozen=True)
class WorkloadStatus:
    name: str
    kind: WorkloadKind
    phase: Phase
    node: str | None
    # Changes whenever a new process/guest starts: tells a restart from a recovery
    # of the same instance.
    instance: str | None = None
    restarts: int = 0
    conditions: tuple[Condition, ...] = ()

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


@dataclass(frozen=True)
class ProbeTarget:
    """Where a data-plane client reaches a workload.

    ``netns`` is the network namespace the client must run in (None: the
    harness's own), ``host``/``port``/``path`` the HTTP endpoint. The endpoint
    answers 200 with a body "<workload name> <instance> ..." (the instance changes
    on every restart).

    A harness outside the cluster network reaches the workload through the API
    server's service proxy: then ``tls`` is the context to speak HTTPS with
    (None: plain HTTP), ``server_hostname`` the name the server's certificate
    is checked against (and the Host header; None: ``host``), and ``headers``
    extra request headers (the bearer token). The lab leaves all three unset.
    """

    host: str
    port: int
    path: str = "/healthz"
    netns: str | None = None
    # Not compared: an SSLContext has no value equality, and two targets that
    # differ only by context object are the same endpoint.
    tls: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
    server_hostname: str | None = None
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # The endpoint serves one connection at a time and is not listening between
    # two answers (the harness's guests: an ``nc`` loop): overlapping probes
    # would be refused, so the prober sends it no edge probes (chaos.prober).
    serial: bool = False


@dataclass(frozen=True)
class Event:
    """A control-plane event: what changed, on which object, when (monotonic s)."""

    at: float
    source: str  # "node", "pod", "vmi", "migration", "healer", ...
    name: str  # object name
    reason: str  # e.g. NodeNotReady, ContainerRestarted, Evicted, Scheduled
    message: str = ""
    data: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Observed(Protocol):
    """What can be read of a cluster: the recorder, the metrics sampler and the
    healers' watching half are written against this role only."""

    name: str

    def nodes(self) -> list[NodeStatus]: ...

    def node(self, name: str) -> NodeStatus: ...

    def workloads(self) -> list[WorkloadStatus]: ...

    def workload(self, name: str) -> WorkloadStatus: ...

    def probe_target(self, workload: str) -> ProbeTarget | None:
        """Where to probe the workload now (it moves when rescheduled)."""
        ...

    def events(self, since: float) -> Iterator[Event]:
        """Control-plane events newer than ``since`` (monotonic), oldest first.

        Non-blocking: yields what is there and returns; the recorder calls it
        again on its own schedule.
        """
        ...

    def metrics(self, workload: str) -> MetricSample | None:
        """One resource reading of the workload now (``chaos.metrics``); None
        when it has nothing running to read (down, restarting, not scheduled)."""
        ...

    def log_path(self, workload: str) -> Path | None:
        """The file the workload's output is appended to, None if there is none.

        A pod's container log, a VMI's serial console log; the recorder tails it
        into LOG timeline events. The file may not exist yet.
        """
        ...

    def vm_accelerator(self) -> str | None:
        """What runs this cluster's VMs: "kvm", "tcg" (software emulation), or
        None when the backend cannot tell. Stored on every VMI result row, so a
        report never passes TCG figures off as KVM ones."""
        ...

    def platform_version(self, kind: WorkloadKind | None = None) -> str | None:
        """What a workload of ``kind`` is measured on, e.g. "Kubernetes v1.34.4"
        (the API server's version); None when the backend cannot tell (rows from
        before the lab ran real components say "lab model"). Stored on every result row."""
        ...


@runtime_checkable
class WorkloadActions(Protocol):
    """Creating and deleting the workloads a run targets (runner, campaign)."""

    def create_workload(
        self,
        name: str,
        kind: WorkloadKind,
        node: str | None = None,
        *,
        watchdog_heartbeat_s: int | None = 2,
        eviction_strategy: str = "LiveMigrate",
    ) -> None:
        """Create a workload. ``watchdog_heartbeat_s`` (VMIs only): the guest's
        i6300esb timeout in s, None for the driver's 30 s default.
        ``eviction_strategy`` (VMIs only): ``LiveMigrate`` (an eviction/drain
        live-migrates the VMI) or ``None`` (it is shut down and started elsewhere)."""
        ...

    def delete_workload(self, name: str) -> None: ...


@runtime_checkable
class FaultActions(Protocol):
    """What the faults users name do to a cluster (``chaos.faults``)."""

    def kill_main_process(self, workload: str) -> None:
        """SIGKILL the container's main process (pod) or QEMU (vmi)."""
        ...

    def hang_workload(self, workload: str) -> None:
        """VMIs: hang the guest (its userland stops, the watchdog is no longer
        fed). Pods have no such channel: ``BackendError``."""
        ...

    def cordon(self, node: str) -> None: ...

    def uncordon(self, node: str) -> None: ...

    def evict(self, workload: str) -> None:
        """Evict one workload off its node (respecting its disruption budget)."""
        ...

    def power_off(self, node: str) -> None:
        """Every process of the node dies at once; heartbeats stop."""
        ...

    def power_on(self, node: str) -> None: ...

    def partition_node(self, node: str) -> None: ...

    def heal_node_partition(self, node: str) -> None: ...

    def partition_workload(self, workload: str) -> None: ...

    def heal_workload_partition(self, workload: str) -> None: ...

    def fail_volume(self, workload: str, mode: VolumeFailure) -> None: ...

    def repair_volume(self, workload: str, mode: VolumeFailure) -> None: ...


@runtime_checkable
class HealerActions(Protocol):
    """What the healers (and the harness-state faults that journal their acts:
    restarts off, a fence) do to a cluster."""

    def restart_healing(self) -> bool:
        """Whether the node-side restart of crashed workloads is on now (the
        watchdog puts back what it found)."""
        ...

    def set_restart_healing(self, enabled: bool) -> None:
        """Switch the node-side restart of crashed workloads (the watchdog)."""
        ...

    def fence(self, node: str) -> None:
        """Declare a node dead (out-of-service taint): its workloads may move."""
        ...

    def unfence(self, node: str) -> None: ...

    def resume_workload(self, workload: str) -> None:
        """VMIs: resume a paused guest (e.g. PausedIOError once storage is back);
        a running one is left alone. Pods: ``BackendError``."""
        ...

    def kill_main_process(self, workload: str) -> None:
        """Also a fault action: the watchdog uses it to restart a VMI whose QEMU
        kept a disk that died with the failed storage."""
        ...

    def reschedule(self, workload: str) -> None:
        """Force-delete the workload on its (fenced) node and start it elsewhere."""
        ...

    def migrate(self, workload: str, node: str | None = None) -> dict[str, str]:
        """VMIs: live-migrate a running VMI to ``node`` (None: the backend picks
        a usable node) and wait for the end. Returns figures as strings, at least
        ``downtime_ms`` and ``total_ms`` (QEMU's; "" when unknown), ``source``
        and ``target``. A backend that cannot migrate raises ``BackendError``."""
        ...


@runtime_checkable
class RunHooks(Protocol):
    """What the runner and the campaign ask of a backend around a run.

    Every backend answers each one, if only with "nothing to do": callers call
    them directly, never probe for them.
    """

    # True when actions only print what they would change (``--dry-run``).
    dry_run: bool

    @property
    def profile(self) -> str | None:
        """The timing profile the platform runs now (``cluster.profiles``), None
        when the backend cannot tell (a real cluster has its own timings)."""
        ...

    def set_profile(self, name: str) -> None:
        """Switch the platform to timing profile ``name`` before a run; a backend
        whose timings are not the harness's to set leaves them alone."""
        ...

    def wait_ready(self, name: str, timeout: float) -> WorkloadStatus | None:
        """Wait until a just-created workload is Ready and answers; its status
        then. None: the backend leaves readiness to the run's steady-state
        probes, which come next anyway."""
        ...


@runtime_checkable
class Backend(Observed, WorkloadActions, FaultActions, HealerActions, RunHooks, Protocol):
    """One cluster: the lab or a real one, every role at once. Every method may
    raise ``BackendError``."""


class BackendProvider(Protocol):
    """How a backend is found by name: an ``rto.backends`` entry point names a
    class of this shape (``cluster.lab_cluster``, ``cluster.kube.provider``).

    Read by ``chaos.backends``; the provider is made with no arguments.
    """

    name: str

    def backend(self) -> Backend:
        """A fresh backend on this provider's cluster."""
        ...

    def up(self, profile: str, nodes: int, vms: bool) -> str | None:
        """Bring a cluster up for a campaign (``--with-lab``); a line for the user
        (the lab: its VM accelerator), or None. A provider that does not own its
        clusters raises ``SpecError`` saying so."""
        ...

    def down(self) -> None:
        """Take down what ``up`` brought up."""
        ...


# The shape of an ``rto.commands`` entry point: given what only the harness can
# do (revert every fault pending in the journal), the click command a package
# contributes to ``rto`` (the lab: ``rto lab ...``). Read by ``chaos.cli``.
CommandFactory = Callable[[Callable[[], None]], object]
