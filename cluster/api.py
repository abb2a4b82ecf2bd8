"""The backend interface every fault, healer and the recorder is written against.

Filled by the backends (``cluster.lab`` for the embedded lab, ``cluster.kube`` for
real clusters); read by ``chaos`` (faults, recorder, runner) and ``healers``. It is
deliberately small: nodes, workloads of kind pod or vmi, their status, the events
the control plane emits, and the actions faults and healers need. Nothing here
imports a third-party SDK: those stay inside the backend packages.

Every action is idempotent (calling ``heal_node`` on a healthy node is a no-op),
because the journal may replay a revert after a crash of the harness.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "Backend",
    "Condition",
    "Event",
    "NodeStatus",
    "Phase",
    "ProbeTarget",
    "VolumeFailure",
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
    """How a volume is made to fail: writes hang, or writes get EIO."""

    HANG = "hang"
    EIO = "eio"


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
    """

    host: str
    port: int
    path: str = "/healthz"
    netns: str | None = None


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
class Backend(Protocol):
    """One cluster: the lab or a real one. Every method may raise ``BackendError``."""

    name: str

    # --- reading -------------------------------------------------------------
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

    # --- workloads -----------------------------------------------------------
    def create_workload(self, name: str, kind: WorkloadKind, node: str | None = None) -> None: ...

    def delete_workload(self, name: str) -> None: ...

    # --- fault actions -------------------------------------------------------
    def kill_main_process(self, workload: str) -> None:
        """SIGKILL the container's main process (pod) or QEMU (vmi)."""
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

    # --- healer actions ------------------------------------------------------
    def set_restart_healing(self, enabled: bool) -> None:
        """Switch the node-side restart of crashed workloads (the watchdog)."""
        ...

    def fence(self, node: str) -> None:
        """Declare a node dead (out-of-service taint): its workloads may move."""
        ...

    def unfence(self, node: str) -> None: ...

    def reschedule(self, workload: str) -> None:
        """Force-delete the workload on its (fenced) node and start it elsewhere."""
        ...
