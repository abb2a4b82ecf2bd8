"""Recovery figures of one run, computed from its timeline and nothing else.

Filled by nobody (pure functions); called by the runner at the end of a run with
the recorder's timeline and the injection time, read back into ``RunResult``.
Keeping it pure means a report can recompute every figure from a stored
timeline, and the definitions below are tested on hand-built timelines.

Definitions (all times are timeline ``t``, seconds since the run started;
``injected_t`` is when the fault was injected):

- *baseline instance*: the instance of the last ``PROBE_OK`` (or
  ``instance_changed`` mark of the prober) before ``injected_t``.
- *up at injection*: the prober's last transition before ``injected_t`` is a
  ``PROBE_OK``. If it is not, the run did not start from a healthy workload
  (or a probe in flight at the injection already failed); the outage is then
  counted from ``injected_t`` itself (any ``PROBE_FAIL`` after it is a flap of
  that outage) and ``up_at_injection`` is False so the run can be flagged.
- *outage start* (``outage_start_s``): ``injected_t`` .. the first ``PROBE_FAIL``
  at or after ``injected_t`` (the send time of the first failed probe).
- *recovery*: the last ``PROBE_OK`` of the run that is not followed by another
  ``PROBE_FAIL``, and that comes after the outage started: the workload is back
  for good. A run whose last prober transition is a ``PROBE_FAIL`` (or that has
  no ``PROBE_OK`` after the outage) did not recover.
- *RTO* (``rto_s``): outage start .. recovery. Earlier ``PROBE_OK`` in between
  (flapping) do not end the outage; they are counted in ``flaps``.
- *detection* (``detection_s``): ``injected_t`` .. the first ``CONTROL`` event at
  or after ``injected_t`` (the control plane noticed something).
- *healer action* (``healer_action_s``): ``injected_t`` .. the first
  ``HEALER_ACTION`` at or after ``injected_t``.
- *same instance*: the instance at recovery equals the baseline instance (the
  same process/guest came back, e.g. after a thaw or a migration) rather than a
  new one (restart, reschedule). None if either is unknown.
- *no outage*: up at injection and no ``PROBE_FAIL`` after it: recovered, RTO 0.0,
  status ``no_outage``.

Resolution (how precise the figures are), from the same timeline:

- *probe interval* and *edge interval*: the recorder's ``recorder_started``
  mark (``interval_ms``, ``edge_interval_ms``; the latter empty when edge
  probes were off).
- *start bracket* (``start_bracket_s``): the ``bracket_ms`` of the outage-start
  ``PROBE_FAIL``, the width of the interval the outage's start is known to lie
  in (``chaos.prober``). 0.0 when the outage is counted from the injection
  (not up at injection: the start is the injection by definition).
- *end bracket* (``end_bracket_s``): the ``bracket_ms`` of the recovering
  ``PROBE_OK``.
- *RTO uncertainty* (``rto_uncertainty_s``): the sum of the two, the width of
  the interval the true RTO lies in. None when either bracket is unknown
  (timelines written before brackets existed, or the very first probe failed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chaos.results import RunStatus
from core.timeline import EventKind, TimelineEvent

__all__ = ["Measures", "measure"]

_PROBE_KINDS = (EventKind.PROBE_FAIL, EventKind.PROBE_OK)


@dataclass(frozen=True)
class Measures:
    status: RunStatus  # RECOVERED, NO_OUTAGE or NOT_RECOVERED
    recovered: bool
    rto_s: float | None  # None when not recovered
    outage_start_s: float | None  # None when there was no outage
    detection_s: float | None
    healer_action_s: float | None
    same_instance: bool | None
    instance_before: str | None
    instance_after: str | None
    up_at_injection: bool
    flaps: int  # interim PROBE_OK between outage start and the final recovery
    probe_interval_s: float | None = None
    edge_interval_s: float | None = None  # None: edge probes off (or unknown)
    start_bracket_s: float | None = None
    end_bracket_s: float | None = None

    @property
    def rto_uncertainty_s(self) -> float | None:
        if self.start_bracket_s is None or self.end_bracket_s is None:
            return None
        return round(self.start_bracket_s + self.end_bracket_s, 6)


def _bracket(e: TimelineEvent | None) -> float | None:
    raw = e.data.get("bracket_ms") if e is not None else None
    try:
        return None if raw is None else round(float(raw) / 1000, 6)
    except ValueError:
        return None


def _intervals(events: Sequence[TimelineEvent]) -> tuple[float | None, float | None]:
    """(probe interval, edge interval) in seconds, from the recorder's start mark."""
    mark = next(
        (
            e
            for e in events
            if e.kind is EventKind.MARK and e.data.get("event") == "recorder_started"
        ),
        None,
    )
    if mark is None:
        return None, None

    def seconds(key: str) -> float | None:
        try:
            return float(mark.data[key]) / 1000 if mark.data.get(key) else None
        except ValueError:
            return None

    return seconds("interval_ms"), seconds("edge_interval_ms")


def _instance_of(e: TimelineEvent) -> str | None:
    if e.kind is EventKind.PROBE_OK or (
        e.kind is EventKind.MARK and e.data.get("event") == "instance_changed"
    ):
        return e.data.get("instance") or None
    return None


def _first_after(events: Sequence[TimelineEvent], kind: EventKind, t: float) -> float | None:
    return next((round(e.t - t, 6) for e in events if e.kind is kind and e.t >= t), None)


def measure(events: Sequence[TimelineEvent], injected_t: float) -> Measures:
    """Compute the figures of one run (see the module doc for the definitions)."""
    evs = sorted(events, key=lambda e: e.t)
    before = [e for e in evs if e.t < injected_t]
    after = [e for e in evs if e.t >= injected_t]

    probes_before = [e for e in before if e.kind in _PROBE_KINDS]
    up_at_injection = bool(probes_before) and probes_before[-1].kind is EventKind.PROBE_OK
    instance_before = next(
        (i for i in (_instance_of(e) for e in reversed(before)) if i is not None), None
    )
    detection_s = _first_after(after, EventKind.CONTROL, injected_t)
    healer_action_s = _first_after(after, EventKind.HEALER_ACTION, injected_t)

    interval_s, edge_s = _intervals(evs)
    first_fail = next((e for e in after if e.kind is EventKind.PROBE_FAIL), None)
    if not up_at_injection:
        # Already down (or never up) when the fault hit: a later PROBE_FAIL is
        # only a flap of this same outage, so the outage runs from the injection.
        outage_t = injected_t
        start_bracket: float | None = 0.0
    elif first_fail is not None:
        outage_t = first_fail.t
        start_bracket = _bracket(first_fail)
    else:
        return Measures(
            status=RunStatus.NO_OUTAGE,
            recovered=True,
            rto_s=0.0,
            outage_start_s=None,
            detection_s=detection_s,
            healer_action_s=healer_action_s,
            same_instance=None,
            instance_before=instance_before,
            instance_after=instance_before,
            up_at_injection=True,
            flaps=0,
            probe_interval_s=interval_s,
            edge_interval_s=edge_s,
        )

    in_outage = [e for e in after if e.kind in _PROBE_KINDS and e.t >= outage_t]
    oks = [e for e in in_outage if e.kind is EventKind.PROBE_OK]
    recovered = bool(in_outage) and in_outage[-1].kind is EventKind.PROBE_OK
    instance_after: str | None = None
    if recovered:
        final_ok = in_outage[-1]
        # A silent restart after the recovery still changes who is serving.
        instance_after = next(
            (
                i
                for i in (_instance_of(e) for e in reversed(after) if e.t >= final_ok.t)
                if i is not None
            ),
            None,
        )
    same = (
        None
        if instance_before is None or instance_after is None
        else instance_before == instance_after
    )
    return Measures(
        status=RunStatus.RECOVERED if recovered else RunStatus.NOT_RECOVERED,
        recovered=recovered,
        rto_s=round(in_outage[-1].t - outage_t, 6) if recovered else None,
        outage_start_s=round(outage_t - injected_t, 6),
        detection_s=detection_s,
        healer_action_s=healer_action_s,
        same_instance=same,
        instance_before=instance_before,
        instance_after=instance_after,
        up_at_injection=up_at_injection,
        flaps=max(0, len(oks) - 1) if recovered else len(oks),
        probe_interval_s=interval_s,
        edge_interval_s=edge_s,
        start_bracket_s=start_bracket,
        end_bracket_s=_bracket(in_outage[-1]) if recovered else None,
    )
