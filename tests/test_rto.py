"""chaos.rto on hand-built timelines: every definition of the module doc."""

from __future__ import annotations

import pytest

from chaos.results import RunStatus
from chaos.rto import measure
from core.timeline import EventKind, TimelineEvent

OK, FAIL = EventKind.PROBE_OK, EventKind.PROBE_FAIL


def ev(t: float, kind: EventKind, **data: str) -> TimelineEvent:
    return TimelineEvent(t=t, kind=kind, source="prober", data=data)


def base(instance: str = "a") -> list[TimelineEvent]:
    return [ev(0.1, OK, instance=instance)]


def test_simple_outage_and_recovery() -> None:
    tl = [
        *base(),
        TimelineEvent(t=1.0, kind=EventKind.FAULT_INJECTED),
        ev(1.02, FAIL, reason="refused"),
        TimelineEvent(t=1.5, kind=EventKind.CONTROL, source="pod", message="BackOff"),
        TimelineEvent(t=1.7, kind=EventKind.HEALER_ACTION, source="watchdog"),
        ev(3.52, OK, instance="b"),
    ]
    m = measure(tl, 1.0)
    assert m.status is RunStatus.RECOVERED and m.recovered
    assert m.rto_s == pytest.approx(2.5)
    assert m.outage_start_s == pytest.approx(0.02)
    assert m.detection_s == pytest.approx(0.5)
    assert m.healer_action_s == pytest.approx(0.7)
    assert m.same_instance is False
    assert (m.instance_before, m.instance_after) == ("a", "b")
    assert m.up_at_injection and m.flaps == 0


def test_flapping_counts_to_the_last_ok_not_followed_by_a_failure() -> None:
    tl = [
        *base(),
        ev(2.0, FAIL),
        ev(2.5, OK, instance="a"),
        ev(2.8, FAIL),
        ev(4.0, OK, instance="a"),
    ]
    m = measure(tl, 1.9)
    assert m.recovered
    assert m.rto_s == pytest.approx(2.0)
    assert m.flaps == 1
    assert m.same_instance is True


def test_never_recovers() -> None:
    tl = [*base(), ev(2.0, FAIL), ev(2.5, OK, instance="a"), ev(2.8, FAIL)]
    m = measure(tl, 1.9)
    assert m.status is RunStatus.NOT_RECOVERED and not m.recovered
    assert m.rto_s is None
    assert m.outage_start_s == pytest.approx(0.1)
    assert m.flaps == 1
    assert m.same_instance is None


def test_no_outage() -> None:
    tl = [*base(), TimelineEvent(t=1.2, kind=EventKind.CONTROL, source="node")]
    m = measure(tl, 1.0)
    assert m.status is RunStatus.NO_OUTAGE and m.recovered
    assert m.rto_s == 0.0 and m.outage_start_s is None
    assert m.detection_s == pytest.approx(0.2)
    assert m.healer_action_s is None


def test_failure_before_injection_is_not_this_fault() -> None:
    # An earlier outage that recovered before the injection does not count.
    tl = [ev(0.1, FAIL), ev(0.3, OK, instance="a"), ev(2.0, FAIL), ev(2.4, OK, instance="a")]
    m = measure(tl, 1.0)
    assert m.outage_start_s == pytest.approx(1.0)
    assert m.rto_s == pytest.approx(0.4)
    assert m.up_at_injection


def test_down_at_injection_counts_from_injection_and_is_flagged() -> None:
    tl = [*base(), ev(0.99, FAIL, reason="timeout"), ev(1.8, OK, instance="a")]
    m = measure(tl, 1.0)
    assert not m.up_at_injection
    assert m.outage_start_s == 0.0
    assert m.rto_s == pytest.approx(0.8)


def test_never_up_and_never_recovers() -> None:
    m = measure([ev(0.0, FAIL)], 1.0)
    assert not m.recovered and not m.up_at_injection and m.rto_s is None
    assert m.instance_before is None


def test_instance_change_with_silent_restart_after_recovery() -> None:
    tl = [
        *base("a"),
        ev(2.0, FAIL),
        ev(3.0, OK, instance="a"),
        TimelineEvent(
            t=4.0,
            kind=EventKind.MARK,
            source="prober",
            data={"event": "instance_changed", "instance": "c"},
        ),
    ]
    m = measure(tl, 1.5)
    assert m.rto_s == pytest.approx(1.0)
    assert m.instance_after == "c" and m.same_instance is False


def test_unsorted_input_is_sorted() -> None:
    tl = [ev(3.0, OK, instance="a"), ev(2.0, FAIL), *base()]
    assert measure(tl, 1.0).rto_s == pytest.approx(1.0)


def test_events_before_injection_are_not_detection() -> None:
    tl = [*base(), TimelineEvent(t=0.5, kind=EventKind.CONTROL), ev(2.0, FAIL), ev(3.0, OK)]
    assert measure(tl, 1.0).detection_s is None


def test_down_at_injection_a_later_flap_does_not_restart_the_outage() -> None:
    tl = [*base(), ev(0.99, FAIL), ev(1.3, OK, instance="a"), ev(1.31, FAIL)]
    tl.append(ev(1.35, OK, instance="a"))
    m = measure(tl, 1.0)
    assert not m.up_at_injection
    assert m.outage_start_s == 0.0
    assert m.rto_s == pytest.approx(0.35)
    assert m.flaps == 1


# --- resolution -----------------------------------------------------------------


def started_mark(interval_ms: str = "20", edge_ms: str = "2") -> TimelineEvent:
    return TimelineEvent(
        t=0.0,
        kind=EventKind.MARK,
        source="recorder",
        data={"event": "recorder_started", "interval_ms": interval_ms, "edge_interval_ms": edge_ms},
    )


def test_brackets_and_intervals_come_from_the_timeline() -> None:
    tl = [
        started_mark(),
        *base(),
        TimelineEvent(t=1.0, kind=EventKind.FAULT_INJECTED),
        ev(1.002, FAIL, reason="refused", bracket_ms="2.40"),
        ev(1.5, OK, instance="a", bracket_ms="30.00"),  # a flap: not the recovery
        ev(1.6, FAIL, reason="refused", bracket_ms="1.00"),
        ev(2.0, OK, instance="a", bracket_ms="1.60"),
    ]
    m = measure(tl, 1.0)
    assert (m.probe_interval_s, m.edge_interval_s) == (0.02, 0.002)
    # The outage's first failure and the final recovery, not the flap's.
    assert (m.start_bracket_s, m.end_bracket_s) == (0.0024, 0.0016)
    assert m.rto_uncertainty_s == pytest.approx(0.004)


def test_down_at_injection_has_an_exact_start() -> None:
    tl = [
        *base(),
        ev(0.9, FAIL, reason="refused", bracket_ms="20.00"),
        TimelineEvent(t=1.0, kind=EventKind.FAULT_INJECTED),
        ev(2.0, OK, instance="a", bracket_ms="3.00"),
    ]
    m = measure(tl, 1.0)
    assert m.start_bracket_s == 0.0 and m.rto_uncertainty_s == pytest.approx(0.003)


def test_unknown_resolution_is_none_not_zero() -> None:
    # An old timeline: no brackets, no start mark; edge probes off; a bad value.
    tl = [*base(), TimelineEvent(t=1.0, kind=EventKind.FAULT_INJECTED)]
    old = measure([*tl, ev(1.02, FAIL), ev(2.0, OK, instance="a")], 1.0)
    assert old.probe_interval_s is None and old.rto_uncertainty_s is None
    grid = measure(
        [started_mark(edge_ms=""), *tl, ev(1.02, FAIL, bracket_ms="x"), ev(2.0, OK, instance="a")],
        1.0,
    )
    assert (grid.probe_interval_s, grid.edge_interval_s) == (0.02, None)
    assert grid.start_bracket_s is None and grid.rto_uncertainty_s is None
    down = measure([*tl, ev(1.02, FAIL, bracket_ms="1")], 1.0)
    assert down.end_bracket_s is None and down.rto_uncertainty_s is None
