"""The recorder: one timeline per run, from the data plane and the control plane.

Started by the runner before a fault is injected and stopped after recovery (or
the deadline); it writes into the run's ``Timeline``, which ``chaos.rto`` reads
to compute the RTO and ``reports`` plots. Two threads:

- the *prober* (``chaos.prober.Prober``): can a client reach the workload? It
  re-reads ``backend.probe_target(workload)`` all the time, because the
  workload moves when it is rescheduled, and writes ``PROBE_FAIL``/``PROBE_OK``.
- the *control-plane follower*: every ``control_interval`` it reads
  ``backend.events(since)`` and keeps every node event and the events of this
  workload, and it notes every status change of ``backend.workload(workload)``
  (phase, node, instance, restarts, conditions). Both land as ``CONTROL`` events.
  The recorder never trusts the phase alone (a partitioned VMI stays a stale
  Running, a paused one too): the phase sits in the timeline beside the probes.
- on the same tick, the workload's own output: ``backend.log_path(workload)``
  (container log, VM serial console) is tailed by ``chaos.logs.LogFollower``
  into ``LOG`` events, trimmed and capped per run.

Backend errors in the follower are written to the timeline as ``MARK`` events
(once per distinct error, and again when reads work again), counted, and retried
on the next tick: a flaky API server must not end the run, nor vanish unseen.
The backend is called from two threads at once (the follower and the prober's
target lookups): backends must allow that.

The runner calls ``expect_edge`` just before it injects and reverts, so the
prober's edge probes are already going when those edges come.

Waits (``wait_until_up`` ...) block on a condition variable the prober thread
signals, so they cost nothing and wake at once; their timeouts are real seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from chaos.logs import LogFollower
from chaos.prober import Prober, ProbeState, Transition
from cluster.api import Event, Observed, WorkloadStatus
from core.clock import Clock, RealClock
from core.errors import HarnessError
from core.timeline import EventKind, Timeline

__all__ = ["Recorder"]

log = logging.getLogger(__name__)

# Events may be written a little after the time they carry (another process
# stamps, then commits): re-read this far back and drop what was already seen.
_EVENT_SLACK_S = 1.0


def _status_key(st: WorkloadStatus) -> tuple[object, ...]:
    return (st.phase, st.node, st.instance, st.restarts, st.conditions)


def _describe(st: WorkloadStatus) -> dict[str, str]:
    conds = ",".join(
        f"{c.type}={c.status}" + (f":{c.reason}" if c.reason else "") for c in st.conditions
    )
    return {
        "name": st.name,
        "kind": st.kind.value,
        "phase": st.phase.value,
        "node": st.node or "",
        "instance": st.instance or "",
        "restarts": str(st.restarts),
        "conditions": conds,
    }


class Recorder:
    """Records one workload's run into ``timeline`` until ``stop()``."""

    def __init__(
        self,
        backend: Observed,
        workload: str,
        timeline: Timeline,
        clock: Clock | None = None,
        interval: float = 0.02,
        timeout: float = 0.25,
        good_needed: int = 5,
        control_interval: float = 0.1,
        check_name: bool = True,
        edge_interval: float | None = 0.002,
    ) -> None:
        self.backend = backend
        self.workload = workload
        self.timeline = timeline
        self.clock: Clock = clock or RealClock()
        self.control_interval = control_interval
        self.control_errors = 0
        self.control_events = 0
        self._cond = threading.Condition()
        self._last_ok_at: float | None = None
        self._last_fail_at: float | None = None
        self._since = timeline.origin
        self._seen: dict[tuple[float, str, str, str, str], None] = {}
        self._last_status: tuple[object, ...] | None = None
        self._errors: dict[str, str] = {}  # what -> last error message, while failing
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        self.prober = Prober(
            lambda: backend.probe_target(workload),
            self._on_transition,
            interval=interval,
            timeout=timeout,
            good_needed=good_needed,
            # The lab's endpoint answers "<workload> <instance>": a stranger that
            # got the workload's old IP must not count as the workload.
            expect_name=workload if check_name else None,
            clock=self.clock,
            name=f"prober-{workload}",
            edge_interval=edge_interval,
        )
        # A backend without a log file for the workload answers None: no LOG events.
        self.logs = LogFollower(
            lambda: backend.log_path(workload), timeline, workload=workload, clock=self.clock
        )

    # --- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        if self._follower is not None:
            raise HarnessError(f"recorder for {self.workload} already started")
        edge = self.prober.edge_interval
        self.timeline.add(
            self.clock.now(),
            EventKind.MARK,
            "recorder",
            f"recording {self.workload}",
            {
                "event": "recorder_started",
                "interval_ms": f"{self.prober.interval * 1000:g}",
                "timeout_ms": f"{self.prober.timeout * 1000:g}",
                "good_needed": str(self.prober.machine.good_needed),
                # "" when edge refinement is off: the edges are on the grid.
                "edge_interval_ms": "" if edge is None else f"{edge * 1000:g}",
            },
        )
        self._read("log", self.logs.start)
        self.poll_control()  # the status before anything happens
        self._follower = threading.Thread(
            target=self._follow, name=f"follower-{self.workload}", daemon=True
        )
        self._follower.start()
        try:
            self.prober.start()
        except HarnessError:
            self._stop.set()
            self._follower.join()
            raise

    def stop(self) -> None:
        """Stop both threads, take a last control-plane reading.

        Raises ``HarnessError`` if the prober thread had died.
        """
        self._stop.set()
        try:
            self.prober.stop()
        finally:
            if self._follower is not None:
                self._follower.join()
            self.poll_control()
            self._read("log", self.logs.finish)
            self.timeline.add(
                self.clock.now(),
                EventKind.MARK,
                "recorder",
                f"stopped: {self.probes_sent} probes, {self.probes_failed} failed",
                {
                    "event": "recorder_stopped",
                    "probes_sent": str(self.probes_sent),
                    "probes_failed": str(self.probes_failed),
                    "probes_edge": str(self.probes_edge),
                    "edge_hints": str(self.prober.hints),
                    "control_errors": str(self.control_errors),
                },
            )

    def __enter__(self) -> Recorder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- counters and state -----------------------------------------------------------
    @property
    def probes_sent(self) -> int:
        return self.prober.sent

    @property
    def probes_failed(self) -> int:
        return self.prober.failed

    @property
    def probes_edge(self) -> int:
        """Edge probes among ``probes_sent`` (``chaos.prober``: sent near edges only)."""
        return self.prober.edge_sent

    def expect_edge(self, window_s: float = 1.0) -> None:
        """The harness is about to act (inject, revert): probe densely until the edge.

        The edge a fault makes comes after this call; the prober's edge probes
        are already going when it does, so the edge is placed to within the edge
        interval rather than the grid's (``chaos.prober``, "Edge refinement").
        """
        self.prober.expect_edge(window_s)

    def is_up(self) -> bool:
        return self.prober.state is ProbeState.UP

    def wait_until_up(self, timeout_s: float) -> bool:
        """True once N consecutive good probes were seen (now or within timeout)."""
        with self._cond:
            return self._cond.wait_for(self.is_up, timeout_s)

    def wait_until_down(self, timeout_s: float) -> bool:
        """True once a failed probe was seen (the prober is down)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.prober.state is ProbeState.DOWN, timeout_s)

    def wait_until_recovered(self, since_t: float, timeout_s: float) -> bool:
        """True once the workload is up again after an outage that ended at/after ``since_t``.

        ``since_t`` is a monotonic time from the recorder's clock (the injection).
        A run where nothing ever failed gives False at the timeout: the caller
        tells "no outage" from "not recovered" with ``chaos.rto.measure``.
        """
        with self._cond:
            return self._cond.wait_for(
                lambda: (
                    self.is_up() and self._last_ok_at is not None and self._last_ok_at >= since_t
                ),
                timeout_s,
            )

    # --- data plane -------------------------------------------------------------------
    def _on_transition(self, tr: Transition) -> None:
        self.timeline.add(tr.at, tr.kind, "prober", tr.message, tr.data)
        with self._cond:
            if tr.kind is EventKind.PROBE_OK:
                self._last_ok_at = tr.at
            elif tr.kind is EventKind.PROBE_FAIL:
                self._last_fail_at = tr.at
            self._cond.notify_all()

    # --- control plane ------------------------------------------------------------------
    def _follow(self) -> None:
        # A daemon loop on an Event: wakes every control_interval or at stop().
        while not self._stop.wait(self.control_interval):
            self.poll_control()

    def poll_control(self) -> None:
        """One follower tick: new events, then the workload's status (public for tests)."""
        self._read("events", self._read_events)
        self._read("status", self._read_status)
        self._read("log", self._poll_logs)

    def _poll_logs(self) -> None:
        self.logs.poll()

    def _read(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # recorded in the timeline and retried next tick
            self.control_errors += 1
            msg = f"{type(exc).__name__}: {exc}"
            if self._errors.get(what) != msg:
                self._errors[what] = msg
                log.warning("recorder %s: reading %s failed: %s", self.workload, what, msg)
                self.timeline.add(
                    self.clock.now(),
                    EventKind.MARK,
                    "recorder",
                    f"control-plane read of {what} failed (retrying every "
                    f"{self.control_interval:g} s): {msg}",
                    {"event": "backend_error", "what": what, "error": msg},
                )
        else:
            if self._errors.pop(what, None) is not None:
                self.timeline.add(
                    self.clock.now(),
                    EventKind.MARK,
                    "recorder",
                    f"control-plane read of {what} works again",
                    {"event": "backend_recovered", "what": what},
                )

    def _relevant(self, ev: Event) -> bool:
        # All node events (the workload's node may change mid-run and a node
        # event often is the detection); other objects only when about us.
        return (
            ev.source == "node"
            or ev.name == self.workload
            or self.workload in (ev.data.get("workload"), ev.data.get("vmi"), ev.data.get("pod"))
        )

    def _read_events(self) -> None:
        horizon = self._since - _EVENT_SLACK_S
        for ev in self.backend.events(horizon):
            key = (ev.at, ev.source, ev.name, ev.reason, ev.message)
            if key in self._seen:
                continue
            self._seen[key] = None
            self._since = max(self._since, ev.at)
            if not self._relevant(ev):
                continue
            self.control_events += 1
            msg = f"{ev.source}/{ev.name} {ev.reason}" + (f": {ev.message}" if ev.message else "")
            data = {**ev.data, "name": ev.name, "reason": ev.reason}
            self.timeline.add(ev.at, EventKind.CONTROL, ev.source, msg, data)
        # Forget keys older than the re-read window so the set stays small.
        for key in [k for k in self._seen if k[0] < self._since - 2 * _EVENT_SLACK_S]:
            del self._seen[key]

    def _read_status(self) -> None:
        st = self.backend.workload(self.workload)
        key = _status_key(st)
        if key == self._last_status:
            return
        self._last_status = key
        data = _describe(st)
        self.control_events += 1
        self.timeline.add(
            self.clock.now(),
            EventKind.CONTROL,
            "status",
            f"{st.kind.value}/{st.name} {st.phase.value} on {st.node or '-'}"
            f" instance {st.instance or '-'} restarts {st.restarts}"
            + (f" [{data['conditions']}]" if data["conditions"] else ""),
            data,
        )
