"""Run a game day: the runbook's steps in order, on one clock, into one record.

Called by ``rto gameday`` (``chaos.gameday_cli``) with a loaded ``Runbook``,
the backend, the results store and the terminal's parts (a ``Room`` for the
people, a view factory, the abort key); writes ``gameday.json``
(``chaos.gameday.record.GameDayRecord``) into the output directory after
every step, so a game day that dies still leaves what it did, and returns the
record for the report (``reports.gameday``).

A ``run`` step goes through ``chaos.runner.Run``'s stages, so it stores the
same result row in the results store as ``rto run``; its timeline is copied
into the game day's, shifted by the run's origin. An abort (Ctrl-C, the abort
key, ``a`` at a checkpoint) at any moment ends the current run through
``Run.finish`` (which reverts its fault), then replays the journal
(``chaos.faults.revert_pending``) so every fault still pending is reverted at
once; each revert is recorded as ``by="abort"``, the outcome is ``aborted``.
A step that fails (a ``HarnessError``: no steady state, a revert that failed)
ends the game day the same way with outcome ``failed``. Faults are journaled
before they act, so a game day killed outright leaves what ``rto revert``
clears.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from chaos.faults import revert_pending
from chaos.gameday.live import AbortKeys, NullView, Room, StepWatch, ViewFactory
from chaos.gameday.record import (
    GAMEDAY_FILE,
    GameDayEvent,
    GameDayEventKind,
    GameDayOutcome,
    GameDayRecord,
    RevertRecord,
    StepRecord,
    StepStatus,
)
from chaos.gameday.runbook import ObserveStep, Runbook, Step
from chaos.journal import Journal
from chaos.provenance import new_invocation
from chaos.results import ResultsStore, RunResult
from chaos.runner import Run, RunOptions
from chaos.spec import ExperimentSpec, RecoverySpec
from cluster.api import Backend
from core.errors import HarnessError
from core.timeline import EventKind, Timeline

__all__ = ["GameDay"]


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Ctrl-C ignored while faults are being reverted: a second Ctrl-C must not
    cut the cleanup of the first short. Only the main thread owns signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _abort_reason(exc: KeyboardInterrupt, keys: AbortKeys | None) -> str:
    if exc.args and isinstance(exc.args[0], str):
        return exc.args[0]
    return "abort key" if keys is not None and keys.pressed else "Ctrl-C"


class GameDay:
    """One game day. ``run()`` once; ``problems`` lists what its cleanup could not do."""

    def __init__(
        self,
        runbook: Runbook,
        backend: Backend,
        store: ResultsStore,
        out_dir: Path,
        *,
        room: Room,
        backend_factory: Callable[[str], Backend],
        options: RunOptions | None = None,
        view_factory: ViewFactory = NullView,
        keys: AbortKeys | None = None,
    ) -> None:
        self.runbook = runbook
        self.backend = backend
        self.store = store
        self.out_dir = out_dir
        self.path = out_dir / GAMEDAY_FILE
        self.room = room
        self.backend_factory = backend_factory
        self.opts = options or RunOptions()
        self.clock = self.opts.clock
        # One journal for the runs and the abort's replay: the one `rto revert` reads.
        self.journal = self.opts.journal or Journal()
        self.opts.journal = self.journal
        self.view_factory = view_factory
        self.keys = keys
        self.problems: list[str] = []
        self.origin = self.clock.now()
        self._wall0 = datetime.now(UTC)
        self._steps: list[StepRecord] = []
        self._events: list[GameDayEvent] = []
        self._reverts: list[RevertRecord] = []
        self._outcome: GameDayOutcome | None = None
        self._ended_at: str | None = None
        self._aborted = False
        self._profile: str | None = None  # the profile last applied to the backend
        self._result: RunResult | None = None  # the current run step's row
        self._pending_after: list[str] | None = None
        self._campaign = f"gameday:{runbook.name}"
        # One invocation for every run of the game day: its rows share one id.
        self._invocation = new_invocation(self._campaign)

    # --- time and the timeline --------------------------------------------------------
    def _t(self, at: float | None = None) -> float:
        return round((self.clock.now() if at is None else at) - self.origin, 6)

    def _at(self, t: float) -> str:
        return (self._wall0 + timedelta(seconds=t)).isoformat(timespec="milliseconds")

    def _event(
        self,
        kind: str,
        step: int | None,
        message: str = "",
        source: str = "gameday",
        data: dict[str, str] | None = None,
        t: float | None = None,
    ) -> None:
        tt = self._t() if t is None else t
        self._events.append(
            GameDayEvent(
                t=tt,
                at=self._at(tt),
                kind=kind,
                source=source,
                message=message,
                step=step,
                data=data or {},
            )
        )

    def _copy(self, timeline: Timeline, step: int, by: str) -> None:
        """A step's timeline into the game day's; its fault reverts as RevertRecords."""
        shift = timeline.origin - self.origin
        for ev in timeline.events():
            t = round(ev.t + shift, 6)
            self._event(ev.kind.value, step, ev.message, ev.source, dict(ev.data), t=t)
            if ev.kind is EventKind.FAULT_REVERTED:
                fid = ev.data.get("fault_id", "")
                rec = self.journal.get(fid) if fid else None
                self._reverts.append(
                    RevertRecord(
                        t=t,
                        at=self._at(t),
                        fault=ev.source,
                        target=rec.target if rec is not None else ev.message,
                        fault_id=fid,
                        by=by,
                    )
                )

    def record(self) -> GameDayRecord:
        """The record as it stands (steps done so far while it runs)."""
        spec = self.runbook.spec
        return GameDayRecord(
            name=spec.name,
            runbook=str(self.runbook.path),
            started_at=self._at(0.0),
            ended_at=self._ended_at,
            backend=self.backend.name,
            profile=spec.profile,
            rehearsal=self.room.rehearsal,
            outcome=self._outcome,
            steps=list(self._steps),
            # Stable: a step's own events keep their order at equal times.
            events=sorted(self._events, key=lambda e: e.t),
            reverts=sorted(self._reverts, key=lambda r: r.t),
            journal=str(self.journal.path),
            pending_after=self._pending_after,
        )

    def _write(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.partial")
        tmp.write_text(self.record().model_dump_json(indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)  # a reader (or a kill) never sees half a record

    # --- the game day -------------------------------------------------------------------
    def run(self) -> GameDayRecord:
        """Every step in order; the record, also written to ``gameday.json``."""
        steps = self.runbook.spec.steps
        self.origin = self.clock.now()
        self._wall0 = datetime.now(UTC)
        self._write()
        current: int | None = None
        try:
            for i, step in enumerate(steps):
                current = i
                self._step(i, step)
            current = None
            self._outcome = GameDayOutcome.COMPLETED
        except KeyboardInterrupt as exc:
            self._abort_event(exc, current)
            self._outcome = GameDayOutcome.ABORTED
            self._clear_journal()
        except HarnessError:
            self._outcome = GameDayOutcome.FAILED
            self._clear_journal()
        done = {s.index for s in self._steps}
        for i, step in enumerate(steps):
            if i not in done:
                self._steps.append(
                    StepRecord(index=i, kind=step.kind, title=step.title, status=StepStatus.SKIPPED)
                )
        self._steps.sort(key=lambda s: s.index)
        self._ended_at = self._at(self._t())
        try:
            self._pending_after = [r.id for r in self.journal.pending()]
        except HarnessError as exc:  # an unreadable journal: say so, keep the record
            self.problems.append(str(exc))
            self._pending_after = None
        self._write()
        return self.record()

    def _abort_event(self, exc: KeyboardInterrupt, step: int | None) -> None:
        if self._aborted:
            return
        self._aborted = True
        reason = _abort_reason(exc, self.keys)
        self._event(GameDayEventKind.ABORT.value, step, f"aborted: {reason}")
        self.room.show(f"ABORT ({reason}): reverting every fault through the journal")

    def _clear_journal(self) -> None:
        """Every fault still pending, reverted at once (the end of an abort or a failure)."""
        backends: dict[str, Backend] = {self.backend.name: self.backend}

        def factory(name: str) -> Backend:
            if name not in backends:
                backends[name] = self.backend_factory(name)
            return backends[name]

        try:
            with _sigint_deferred():
                done = revert_pending(self.journal, factory)
        except HarnessError as exc:
            self.problems.append(str(exc))
            self._event(GameDayEventKind.ABORT.value, None, f"journal replay failed: {exc}")
            done = []
        t = self._t()
        for rec in done:
            self._reverts.append(
                RevertRecord(
                    t=t, at=self._at(t), fault=rec.fault, target=rec.target, fault_id=rec.id,
                    by="abort",
                )
            )  # fmt: skip
            self.room.show(f"reverted {rec.fault} on {rec.target} ({rec.id})")

    def _step(self, i: int, step: Step) -> None:
        n = len(self.runbook.spec.steps)
        started = self._t()
        self._event(GameDayEventKind.STEP_STARTED.value, i, step.title, data={"kind": step.kind})
        self.room.show(f"step {i + 1}/{n} {step.kind}: {step.title}")
        self._result = None
        status, error = StepStatus.DONE, None
        try:
            self._act(i, step)
        except KeyboardInterrupt as exc:
            self._abort_event(exc, i)
            status = StepStatus.ABORTED
            raise
        except HarnessError as exc:
            status, error = StepStatus.FAILED, str(exc)
            self.room.show(f"step {i + 1} failed: {exc}")
            raise
        finally:
            ended = self._t()
            result = self._result
            data = {"kind": step.kind, "status": status.value}
            if result is not None:
                data["run_status"] = result.status.value
                if result.rto_s is not None:
                    data["rto_s"] = f"{result.rto_s:.3f}"
            self._event(GameDayEventKind.STEP_ENDED.value, i, step.title, data=data, t=ended)
            self._steps.append(
                StepRecord(
                    index=i,
                    kind=step.kind,
                    title=step.title,
                    status=status,
                    started_t=started,
                    ended_t=ended,
                    result=result,
                    error=error,
                )
            )
            self._write()

    def _act(self, i: int, step: Step) -> None:
        if step.say is not None:
            self.room.say(step.say)
            self._event(GameDayEventKind.SAY.value, i, step.say, source="room")
        elif step.checkpoint is not None:
            by = self.room.confirm(step.checkpoint)
            self._event(GameDayEventKind.CHECKPOINT.value, i, step.checkpoint, "room", {"by": by})
        elif step.note is not None:
            text = self.room.note(step.note)
            self._event(GameDayEventKind.NOTE.value, i, text, "room", {"prompt": step.note})
        elif step.observe is not None:
            self._observe(i, step.observe)
        else:
            self._run(i, self.runbook.experiments[i])

    def _armed(self) -> contextlib.AbstractContextManager[None]:
        return self.keys.armed() if self.keys is not None else contextlib.nullcontext()

    def _run(self, i: int, spec: ExperimentSpec) -> None:
        rto = spec.rto
        if rto.profile and rto.profile != self._profile:
            # Switching profile restarts the lab's timers; only on change.
            self.backend.set_profile(rto.profile)
            self._profile = rto.profile
        run = Run(
            spec,
            self.backend,
            self.store,
            self.opts,
            campaign=self._campaign,
            profile=rto.profile,
            invocation=self._invocation,
        )
        watch = StepWatch(
            title=f"step {i + 1}: {spec.title} ({rto.fault.type} on {rto.target.kind} "
            f"{rto.target.workload})",
            timeline=run.timeline,
            clock=self.clock,
            injected_at=lambda: run.injected_at,
            keys=self.keys is not None and self.keys.available,
        )
        status = self.opts.status
        try:
            with self._armed(), self.view_factory(watch) as view:
                self.opts.status = view.status
                run.prepare()
                run.inject()
                run.hold()
                run.revert()
                run.wait_recovery()
            self.opts.status = status
            self._result = run.finish(None)
        except KeyboardInterrupt as exc:
            self.opts.status = status
            self._abort_event(exc, i)
            with _sigint_deferred():
                self._result = run.finish(exc)
            self._copy(run.timeline, i, by="abort")
            raise
        except BaseException as exc:
            self.opts.status = status
            # finish is idempotent: after a finish that raised it returns its row.
            self._result = run.finish(exc)
            self._copy(run.timeline, i, by="run")
            raise
        self._copy(run.timeline, i, by="run")
        r = self._result
        rto_s = "-" if r.rto_s is None else f"{r.rto_s:.3f} s"
        self.room.show(f"  {r.status.value}: RTO {rto_s}" + (f" - {r.error}" if r.error else ""))

    def _observe(self, i: int, obs: ObserveStep) -> None:
        timeline = Timeline(origin=self.clock.now())
        recorder = self.opts.recorder_factory(
            self.backend, obs.workload, timeline, self.clock, RecoverySpec()
        )
        watch = StepWatch(
            title=f"step {i + 1}: observing {obs.workload} for {obs.seconds:g} s",
            timeline=timeline,
            clock=self.clock,
            injected_at=lambda: None,
            keys=self.keys is not None and self.keys.available,
            observing=True,
        )
        started = False
        try:
            with self._armed(), self.view_factory(watch) as view:
                recorder.start()
                started = True
                view.status(f"watching {obs.workload}, no fault injected")
                self.clock.sleep(obs.seconds)
        finally:
            try:
                if started:
                    recorder.stop()
            finally:
                self._copy(timeline, i, by="run")
