"""The watchdog healer: restart what crashed or hung, and put every restart on the timeline.

Built by ``healers.registry``; started/stopped by the runner. For pods the
restart itself is the platform's, the kubelet's (restartPolicy Always with
back-off): this healer watches the targets so that every restart appears on
the timeline as a HEALER_ACTION "restarted <name> (restart N)". It also turns
the backend's restart-healing flag on for the run and puts it back at stop
(the runner turns it off for runs without the watchdog); the real kubelet
restarts whatever the flag says, so on Kubernetes a run without the watchdog
measures what the platform does alone.

The per-kind behaviour lives in ``KindWatcher`` objects, one per
``WorkloadKind`` in ``Watchdog.watchers``. VMIs (``VmiWatcher``): a restart
after QEMU died is the platform's (a backend that restarts in place counts
restarts; KubeVirt's VM makes a new VMI) and is recorded; a watchdog reset (new
guest instance, same QEMU, no restart) is recorded where the backend's
instance names the guest's boot; a VMI paused on an I/O error is resumed once
its storage is back (condition ``StorageReady`` not False), and restarted
(``kill_main_process``: a fresh QEMU, on KubeVirt a new VMI) if it pauses again
because QEMU's disk fd died with the failed storage. Each action and its
reason goes on the timeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cluster.api import WorkloadKind, WorkloadStatus
from core.errors import BackendError
from healers.base import HealerContext, LoopHealer

__all__ = ["KindWatcher", "PodWatcher", "VmiWatcher", "Watchdog"]


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
    """Pods: the kubelet restarts them (back-off); report each restart."""

    def observe(
        self, healer: Watchdog, previous: WorkloadStatus | None, current: WorkloadStatus
    ) -> None:
        _report_restarts(healer, previous, current)


@dataclass
class _VmiState:
    """What the VMI watcher remembers of one VMI across rounds."""

    instance: str | None = None  # last guest instance seen (None while booting)
    restarts: int = 0  # restart count when that instance was seen
    node: str | None = None  # node it ran on then
    paused_since: float | None = None  # current I/O-error pause seen since
    resumed_at: float | None = None  # our resume during this pause
    restarted_at: float | None = None  # our restart during this pause


def _paused_on_io_error(status: WorkloadStatus) -> bool:
    cond = status.condition("Paused")
    return cond is not None and cond.status and cond.reason in ("IOError", "PausedIOError")


def _storage_ready(status: WorkloadStatus) -> bool:
    # Backends that cannot tell report no condition: then a resume is tried,
    # and a re-pause says the storage was not back after all.
    cond = status.condition("StorageReady")
    return cond is None or cond.status


class VmiWatcher:
    """VMIs: record restarts and watchdog resets; resume after an I/O-error pause
    once storage is back; restart the VMI if the resume does not hold.

    ``confirm_s``: how long a resumed VMI may still show the pause before the
    watcher decides it paused again (status reaches the backend with a lag).
    """

    def __init__(self, confirm_s: float = 1.0) -> None:
        self.confirm_s = confirm_s
        self._state: dict[str, _VmiState] = {}

    def observe(
        self, healer: Watchdog, previous: WorkloadStatus | None, current: WorkloadStatus
    ) -> None:
        st = self._state.setdefault(current.name, _VmiState())
        if previous is not None and current.restarts > previous.restarts:
            # Ours (a resume that did not hold) or QEMU died by itself.
            why = "qemu-killed-by-healer" if st.restarted_at is not None else "qemu-died"
            healer.record(
                f"restarted {current.name} ({why}, restart {current.restarts})",
                workload=current.name,
                kind=current.kind.value,
                action="restarted",
                reason=why,
                restarts=str(current.restarts),
                node=current.node or "",
            )
        self._note_instance(healer, previous, current, st)
        self._heal_pause(healer, current, st)

    def _note_instance(
        self,
        healer: Watchdog,
        previous: WorkloadStatus | None,
        current: WorkloadStatus,
        st: _VmiState,
    ) -> None:
        if current.instance is None:
            return
        if previous is None or st.instance is None:
            st.instance, st.restarts, st.node = current.instance, current.restarts, current.node
            return  # the baseline
        if current.instance == st.instance:
            return
        if current.restarts == st.restarts and current.node == st.node:
            # A new guest in the same QEMU: the guest rebooted, which for a hung
            # guest is the i6300esb watchdog's reset.
            healer.record(
                f"watchdog reset {current.name}: guest rebooted in place "
                f"(instance {st.instance} -> {current.instance})",
                workload=current.name,
                kind=current.kind.value,
                action="watchdog-reset",
                instance=current.instance,
                old_instance=st.instance,
                node=current.node or "",
            )
        st.instance, st.restarts, st.node = current.instance, current.restarts, current.node

    def _heal_pause(self, healer: Watchdog, current: WorkloadStatus, st: _VmiState) -> None:
        now = healer.ctx.clock.now()
        if not _paused_on_io_error(current):
            resumed = st.resumed_at is not None and st.restarted_at is None
            if st.paused_since is not None and resumed:
                healer.record(
                    f"resume of {current.name} held: running again",
                    workload=current.name,
                    kind=current.kind.value,
                    action="resume-held",
                )
            st.paused_since = st.resumed_at = st.restarted_at = None
            return
        if st.paused_since is None:
            st.paused_since = now
        if st.restarted_at is not None or not _storage_ready(current):
            return  # wait for the restart to show, or for the storage to come back
        if st.resumed_at is None:
            self._act(
                healer, current, "resume", "resumed {name}: paused on I/O error, storage back"
            )
            st.resumed_at = now
            return
        if now - st.resumed_at < self.confirm_s:
            return
        # Resumed, and still (again) paused with storage back: QEMU's disk fd
        # is on the dead storage, only a new QEMU opens the repaired one.
        self._act(
            healer, current, "restart", "restarted {name}: paused again after resume (dead disk)"
        )
        st.restarted_at = now

    @staticmethod
    def _act(healer: Watchdog, current: WorkloadStatus, action: str, message: str) -> None:
        backend = healer.ctx.backend
        try:
            if action == "resume":
                backend.resume_workload(current.name)
            else:
                backend.kill_main_process(current.name)
        except BackendError as exc:
            # The VMI changed under us (QEMU gone, moved): the next rounds see
            # its new state and decide again. Kept on the timeline, not hidden.
            healer.record(
                f"{action} of {current.name} failed: {exc}",
                workload=current.name,
                kind=current.kind.value,
                action=f"{action}-failed",
            )
            return
        healer.record(
            message.format(name=current.name),
            workload=current.name,
            kind=current.kind.value,
            action=action,
            reason="io-error",
            node=current.node or "",
        )


class Watchdog(LoopHealer):
    """Switch node-side restarts on for the run; report each restart of a target."""

    name = "watchdog"

    def __init__(self, period: float) -> None:
        super().__init__(period)
        self.watchers: dict[WorkloadKind, KindWatcher] = {
            WorkloadKind.POD: PodWatcher(),
            # Status reaches the backend a heartbeat or two late: give a
            # resumed VMI two rounds (at least 1 s) to show it runs again.
            WorkloadKind.VMI: VmiWatcher(confirm_s=max(1.0, 2 * period)),
        }
        self._seen: dict[str, WorkloadStatus] = {}
        self._restore: bool | None = None

    def on_start(self, ctx: HealerContext) -> None:
        self._restore = ctx.backend.restart_healing()
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
