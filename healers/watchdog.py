"""The watchdog healer: restart what crashed or hung.

Built by ``healers.registry``; started/stopped by the runner. For pods the
restart itself is the node agent's job, as the kubelet's is in Kubernetes
(restartPolicy Always with back-off): this healer switches that node-side
restart on for the run (``backend.set_restart_healing(True)``), puts the state
back at stop, and watches the targets so that every restart appears on the
timeline as a HEALER_ACTION "restarted <name> (restart N)". The runner switches
node-side restarts off for runs where the watchdog is not selected, which is
what makes "no healer" a real baseline.

Extension point (issue 3, VMIs): the per-kind behaviour lives in ``KindWatcher``
objects, one per ``WorkloadKind`` in ``Watchdog.watchers``. The VMI watcher
today only reports restarts; the VM side (watchdog reset seen as a new guest
instance, ``resume`` after a PausedIOError pause once storage is back, restart
when QEMU died) goes into ``VmiWatcher.observe`` and may act through the
backend there.
"""

from __future__ import annotations

from typing import Protocol

from cluster.api import Backend, WorkloadKind, WorkloadStatus
from healers.base import HealerContext, LoopHealer

__all__ = ["KindWatcher", "PodWatcher", "VmiWatcher", "Watchdog", "restart_healing_state"]


class _ReportsRestartHealing(Protocol):
    def restart_healing(self) -> bool: ...


def restart_healing_state(backend: Backend) -> bool:
    """The backend's current node-side restart switch, if it can tell.

    ``cluster.api.Backend`` has only the setter; a backend that also offers
    ``restart_healing() -> bool`` gets its exact state restored at stop. Others
    are restored to True, the platform's own default (a kubelet always restarts
    containers of restartPolicy Always pods).
    """
    getter = getattr(backend, "restart_healing", None)
    if callable(getter):
        state = getter()
        if isinstance(state, bool):
            return state
    return True


class KindWatcher(Protocol):
    """What the watchdog does for one kind of workload, each round.

    ``previous`` is the status seen the round before (None the first time the
    workload is seen); ``current`` the status now. Act through ``ctx.backend``,
    record through ``healer.record``.
    """

    def observe(
        self,
        healer: Watchdog,
        previous: WorkloadStatus | None,
        current: WorkloadStatus,
    ) -> None: ...


def _report_restarts(
    healer: Watchdog, previous: WorkloadStatus | None, current: WorkloadStatus
) -> None:
    # The first sighting is the baseline: restarts before the run are not ours.
    if previous is None or current.restarts <= previous.restarts:
        # Fewer restarts than before: the workload was rescheduled (a new pod
        # starts counting at 0); that is the eviction healer's story, not ours.
        return
    healer.record(
        f"restarted {current.name} (restart {current.restarts})",
        workload=current.name,
        kind=current.kind.value,
        restarts=str(current.restarts),
        instance=current.instance or "",
        node=current.node or "",
    )


class PodWatcher:
    """Pods: the node agent restarts them (back-off); report each restart."""

    def observe(
        self, healer: Watchdog, previous: WorkloadStatus | None, current: WorkloadStatus
    ) -> None:
        _report_restarts(healer, previous, current)


class VmiWatcher:
    """VMIs: report restarts. Issue 3 adds watchdog reset, resume and restart here."""

    def observe(
        self, healer: Watchdog, previous: WorkloadStatus | None, current: WorkloadStatus
    ) -> None:
        _report_restarts(healer, previous, current)


class Watchdog(LoopHealer):
    """Switch node-side restarts on for the run; report each restart of a target."""

    name = "watchdog"

    def __init__(self, period: float) -> None:
        super().__init__(period)
        self.watchers: dict[WorkloadKind, KindWatcher] = {
            WorkloadKind.POD: PodWatcher(),
            WorkloadKind.VMI: VmiWatcher(),
        }
        self._seen: dict[str, WorkloadStatus] = {}
        self._restore: bool | None = None

    def on_start(self, ctx: HealerContext) -> None:
        self._restore = restart_healing_state(ctx.backend)
        ctx.backend.set_restart_healing(True)
        # Baseline before the fault: restarts counted so far are not this run's.
        self._observe_all(baseline=True)

    def on_stop(self) -> None:
        if self._restore is not None:
            self.ctx.backend.set_restart_healing(self._restore)
            self._restore = None

    def step(self) -> None:
        self._observe_all(baseline=False)

    def _observe_all(self, baseline: bool) -> None:
        targets = set(self.ctx.workloads)
        # One list call per round rather than one call per target; a target
        # missing from it (being recreated) is simply not judged this round.
        for status in self.ctx.backend.workloads():
            if status.name not in targets:
                continue
            previous = self._seen.get(status.name)
            self._seen[status.name] = status
            if not baseline:
                self.watchers[status.kind].observe(self, previous, status)
