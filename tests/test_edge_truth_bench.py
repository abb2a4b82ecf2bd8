"""The pure parts of benchmarks/edge_truth.py, and its separate-process server.

The summary and coverage maths run on synthetic rows (no prober); the server
test starts ``benchmarks/truth_server.py`` in its child process, switches it
through every mode and checks its stamps and what a probe gets in each.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import edge_truth as et
from truth_server import Stamp, TruthServer

from chaos.prober import http_probe
from cluster.api import ProbeTarget


def _row(arm: str, err: float, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "arm": arm,
        "mode": "m",
        "visible": True,
        "recovered": True,
        "up_at_injection": True,
        "flaps": 0,
        "error_s": err,
        "start_error_s": err / 2,
        "end_error_s": -err / 2,
        "start_bracket_s": 0.002,
        "end_bracket_s": 0.004,
        "start_covered": True,
        "end_covered": True,
        "sent": 100,
        "edge_sent": 0,
        "duration_s": 2.0,
    }
    row.update(kw)
    return row


def test_covered_allows_the_truths_half_width_and_rounding() -> None:
    # Bracket [0.98, 1.0]: the edge claimed to lie in it.
    assert et.covered(1.0, 0.02, 0.99, 0.0)
    assert et.covered(1.0, 0.02, 0.98, 0.0)
    assert not et.covered(1.0, 0.02, 1.001, 0.0)
    assert et.covered(1.0, 0.02, 1.001, 0.0011)  # inside once its own half-width counts
    assert not et.covered(1.0, 0.02, 0.979, 0.0)
    assert et.covered(1.0, 0.02, 1.0 + et.ROUNDING_S / 2, 0.0)
    assert et.covered(1.0, None, 0.5, 0.0) is None


def test_outside_is_signed_distance_beyond_the_bracket() -> None:
    assert et.outside(1.0, 0.02, 0.99, 0.0) == 0.0
    assert et.outside(1.0, 0.02, 1.003, 0.0) == pytest.approx(0.003)
    assert et.outside(1.0, 0.02, 0.975, 0.0) == pytest.approx(-0.005)
    assert et.outside(1.0, 0.02, 1.003, 0.004) == 0.0
    assert et.outside(1.0, None, 2.0, 0.0) is None


def test_summary_quantiles_signed_mean_and_counts() -> None:
    errs = [i / 1000 for i in range(-10, 11)]  # -10..+10 ms
    rows = [_row("new", e) for e in errs]
    rows.append(_row("new", 0.5, visible=False))  # no outage seen: counted, not scored
    rows.append(_row("new", 0.5, recovered=False))
    rows.append(_row("new", 0.001, start_covered=False, start_outside_s=0.0007))
    s = et.summary(rows)
    assert s["n"] == 22
    assert s["no_outage"] == 1 and s["not_recovered"] == 1
    assert s["max_abs_ms"] == 10.0
    assert s["p50_abs_ms"] == 5.0
    assert 9.0 <= s["p95_abs_ms"] <= 10.0
    assert s["mean_signed_ms"] == pytest.approx(1 / 22, abs=0.01)
    assert s["start_coverage"] == round(21 / 22, 3)
    assert s["end_coverage"] == 1.0
    assert s["start_miss_max_abs_ms"] == 0.7 and "end_miss_max_abs_ms" not in s
    assert s["start_bracket_p50_ms"] == 2.0 and s["end_bracket_p95_ms"] == 4.0
    # 24 rows of 100 probes over 2 s each.
    assert s["probes_per_s"] == 50.0


def test_start_edge_of_an_outage_counted_from_the_injection_is_not_scored() -> None:
    rows = [_row("new", 0.001), _row("new", 0.001, up_at_injection=False, start_error_s=-0.5)]
    s = et.summary(rows)
    assert s["n"] == 2 and s["not_up_at_injection"] == 1
    assert s["start_max_abs_ms"] == 0.5


def test_summarise_gives_rate_ratio_to_old_per_mode() -> None:
    rows = [_row("old", 0.01, mode="a"), _row("new", 0.001, mode="a", sent=130, edge_sent=30)]
    rows += [_row("old", 0.01, mode="b"), _row("new", 0.001, mode="b", sent=100)]
    out = et.summarise(rows)
    assert out["a"]["new"]["rate_ratio_to_old"] == 1.3
    assert out["b"]["new"]["rate_ratio_to_old"] == 1.0
    assert out["all"]["new"]["rate_ratio_to_old"] == 1.15
    assert out["all"]["new"]["edge_per_s"] == 7.5
    assert "new-nohint" not in out["a"]


def test_schedule_spans_the_range_for_each_mode() -> None:
    plan = et.schedule({"refused": 5, "http500": 5}, seed=1)
    assert len(plan) == 10
    for mode in ("refused", "http500"):
        xs = sorted(x for m, x in plan if m == mode)
        assert xs[0] == 0.3 and xs[-1] == 5.0
        step = xs[1] / xs[0]
        assert all(b / a == pytest.approx(step, rel=0.01) for a, b in itertools.pairwise(xs))
    assert plan != sorted(plan)


def test_stamp_midpoint_and_half_width() -> None:
    s = Stamp("x", 1.0, 1.004)
    assert s.mid == pytest.approx(1.002) and s.half == pytest.approx(0.002)


def test_server_in_its_own_process_switches_modes_with_ordered_stamps() -> None:
    import os
    import time

    expected = {"ok": (True, ""), "500": (False, "http 500"), "refuse": (False, "refused")}
    with TruthServer(name="bench", instance="i7") as srv:
        assert srv.pid != os.getpid()
        target = ProbeTarget(host="127.0.0.1", port=srv.port, path="/healthz")

        def probe() -> tuple[bool, str | None, str]:
            return asyncio.run(http_probe(target, 1.0, expect_name="bench"))

        assert probe() == (True, "i7", "")
        last = time.monotonic()
        for mode in ("500", "ok", "refuse", "500", "refuse", "ok"):
            stamp = srv.switch(mode)
            now = time.monotonic()
            # Same clock as ours, in order, and taken by the act itself.
            assert last <= stamp.before <= stamp.after <= now
            last = now
            ok, _, reason = probe()
            assert (ok, reason) == expected[mode], mode


def test_process_arm_sees_an_outage_of_the_server_from_its_own_process() -> None:
    import time

    from prober_arm import ProcessArm

    from core.timeline import EventKind

    with TruthServer(name="bench", instance="i3") as srv:
        target = ProbeTarget(host="127.0.0.1", port=srv.port, path="/healthz")
        arm = ProcessArm("new", target, time.monotonic(), expect_name="bench", edge_interval=0.002)
        arm.start()
        try:
            assert arm.wait_up(10)
            arm.expect_edge()
            time.sleep(0.05)
            off = srv.switch("refuse")
            time.sleep(0.3)
            arm.expect_edge()
            time.sleep(0.005)
            on = srv.switch("ok")
            assert arm.wait_recovered(on.before, 10)
            sent, edge = arm.counts()
        finally:
            arm.stop()
    events = arm.timeline.events()
    fail = next(e for e in events if e.kind is EventKind.PROBE_FAIL)
    ok = next(e for e in events if e.kind is EventKind.PROBE_OK and e.t > fail.t)
    origin = arm.timeline.origin
    # Stamped on the shared monotonic clock, after the switches that caused them
    # and inside the brackets they report (generous: a loaded CI machine).
    assert off.before - origin <= fail.t <= off.after - origin + 0.5
    assert on.before - origin <= ok.t <= on.after - origin + 0.5
    assert fail.t - float(fail.data["bracket_ms"]) / 1000 <= off.after - origin
    assert ok.t - float(ok.data["bracket_ms"]) / 1000 <= on.after - origin
    assert fail.data["reason"] == "refused"
    assert sent > edge > 0
