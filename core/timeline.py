"""One timeline per run: what happened, when, seen from where.

Filled by the recorder (probe transitions, control-plane events), the runner
(fault injected/reverted) and the healers (their actions); read by ``chaos.rto``
to compute RTO and by ``reports`` to plot runs. Times are seconds since the run
started (monotonic), so timelines of different runs line up.

Probes are stored as transitions only (first failure, first success after
failures) plus counters, so a five-minute run at 20 ms stays small.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["EventKind", "Timeline", "TimelineEvent"]


class EventKind(StrEnum):
    PROBE_FAIL = "probe_fail"  # first failed probe after a good one (or the start)
    PROBE_OK = "probe_ok"  # first good probe after failures
    FAULT_INJECTED = "fault_injected"
    FAULT_REVERTED = "fault_reverted"
    HEALER_ACTION = "healer_action"
    CONTROL = "control"  # a control-plane event (node/pod/vmi state change)
    LOG = "log"  # a line a workload printed
    MARK = "mark"  # anything else the runner wants on record


class TimelineEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    t: float = Field(description="seconds since the run started")
    kind: EventKind
    source: str = ""
    message: str = ""
    data: dict[str, str] = Field(default_factory=dict)


class Timeline:
    """Thread-safe, append-only list of events for one run."""

    def __init__(self, origin: float) -> None:
        self.origin = origin  # monotonic time of t == 0
        self._events: list[TimelineEvent] = []
        self._lock = threading.Lock()

    def add(
        self,
        at: float,
        kind: EventKind,
        source: str = "",
        message: str = "",
        data: dict[str, str] | None = None,
    ) -> TimelineEvent:
        """Record an event at monotonic time ``at``."""
        ev = TimelineEvent(
            t=round(at - self.origin, 6), kind=kind, source=source, message=message, data=data or {}
        )
        with self._lock:
            self._events.append(ev)
        return ev

    def extend(self, events: Iterable[TimelineEvent]) -> None:
        with self._lock:
            self._events.extend(events)

    def events(self) -> list[TimelineEvent]:
        with self._lock:
            return sorted(self._events, key=lambda e: e.t)

    def first(self, kind: EventKind, after: float = float("-inf")) -> TimelineEvent | None:
        return next((e for e in self.events() if e.kind is kind and e.t >= after), None)
