"""The log follower: a workload's output into LOG timeline events, capped per run.

Real files in tmp_path appended by the test (as the agent and QEMU append the
container log and the serial console), a FakeClock for the rate limit; plus the
wiring: the recorder tails ``backend.log_path`` and the report shows LOG rows
apart from the harness's events.
"""

from __future__ import annotations

import os
from pathlib import Path

from fakes import FakeBackend

from chaos.logs import LogFollower
from chaos.recorder import Recorder
from chaos.results import ResultsStore, RunResult, RunStatus
from cluster.api import WorkloadKind
from core.clock import FakeClock
from core.timeline import EventKind, Timeline
from reports.build import build_report


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


def _logs(tl: Timeline) -> list[str]:
    return [e.message for e in tl.events() if e.kind is EventKind.LOG]


def _marks(tl: Timeline) -> list[str]:
    return [e.data.get("event", "") for e in tl.events() if e.kind is EventKind.MARK]


def _rig(
    path: Path | None, **kw: object
) -> tuple[FakeClock, Timeline, LogFollower, dict[str, Path | None]]:
    clock = FakeClock(50.0)
    tl = Timeline(origin=clock.now())
    where: dict[str, Path | None] = {"path": path}
    follower = LogFollower(lambda: where["path"], tl, workload="vm1", clock=clock, **kw)  # type: ignore[arg-type]
    return clock, tl, follower, where


def test_only_lines_appended_after_start_complete_lines_timed_and_trimmed(tmp_path: Path) -> None:
    log = tmp_path / "vm1.console.log"
    _append(log, "RTO-GUEST-READY old boot=1\n")  # an earlier run's output
    clock, tl, follower, _ = _rig(log, max_chars=20)
    follower.start()
    assert follower.poll() == 0
    clock.advance(1.5)
    _append(log, "rto-guest: hang\x1b[0m\r\nRTO-GUEST-READY abc")  # marker not finished
    assert follower.poll() == 1
    clock.advance(0.5)
    _append(log, " boot=2\n\n   \n" + "x" * 50 + "\n")
    assert follower.poll() == 2
    events = [e for e in tl.events() if e.kind is EventKind.LOG]
    assert [e.message for e in events] == [
        "rto-guest: hang",
        "RTO-GUEST-READY abc\u2026",  # trimmed to 20 characters
        "x" * 19 + "\u2026",
    ]
    assert [e.t for e in events] == [1.5, 2.0, 2.0]
    assert all(e.source == "workload" and e.data == {"workload": "vm1"} for e in events)
    follower.finish()
    assert follower.dropped == 0 and _marks(tl) == []


def test_chatty_workload_is_rate_limited_and_capped_but_markers_survive(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    log.touch()
    clock, tl, follower, _ = _rig(log, max_lines=30, rate_per_s=10.0, burst=5)
    follower.start()
    _append(log, "".join(f"noise {i}\n" for i in range(100)) + "RTO-GUEST-READY i1 boot=2\n")
    follower.poll()
    # The burst of 5, then only the marker; the drop is announced once.
    assert _logs(tl) == [f"noise {i}" for i in range(5)] + ["RTO-GUEST-READY i1 boot=2"]
    assert follower.dropped == 95 and _marks(tl) == ["log_throttled"]
    # Tokens come back with time (10/s) up to the burst: 0.35 s later 3 lines pass,
    # 1 s later 5 (the burst).
    clock.advance(0.35)
    _append(log, "".join(f"soon {i}\n" for i in range(20)))
    follower.poll()
    assert _logs(tl)[-3:] == [f"soon {i}" for i in range(3)]
    clock.advance(1.0)
    _append(log, "".join(f"later {i}\n" for i in range(20)))
    follower.poll()
    assert _logs(tl)[-6:] == ["soon 2"] + [f"later {i}" for i in range(5)]
    # The per-run cap: past 30 lines only markers, up to 2 x 30 in all.
    for _ in range(5):
        clock.advance(10.0)
        _append(log, "".join(f"more {i}\n" for i in range(5)) + "rto-guest: healthz up\n")
        follower.poll()
    # 14 lines so far + 5 rounds of (5 plain + 1 marker): plain ones stop at 30 lines.
    assert follower.lines == 33
    assert len([m for m in _logs(tl) if m.startswith("more")]) == 14
    assert _logs(tl)[-1] == "rto-guest: healthz up"
    clock.advance(1000.0)
    _append(log, "".join("RTO-x\n" for _ in range(100)))
    follower.finish()
    assert follower.lines == 60
    assert _marks(tl) == ["log_throttled", "log_dropped"]
    last = tl.events()[-1]
    assert last.data["kept"] == "60" and int(last.data["dropped"]) == follower.dropped > 100


def test_late_file_truncation_replacement_and_missing_path(tmp_path: Path) -> None:
    log = tmp_path / "later.log"
    _, tl, follower, where = _rig(log)
    follower.start()  # the file does not exist yet
    assert follower.poll() == 0
    _append(log, "first\n")
    assert follower.poll() == 1  # a new file is read from its start
    log.write_text("new\n")  # truncated and rewritten (shorter than the offset)
    assert follower.poll() == 1
    os.unlink(log)
    _append(log, "replaced but longer than before\n")  # a new inode
    assert follower.poll() == 1
    where["path"] = None  # the backend has no file any more: nothing, no error
    assert follower.poll() == 0
    other = tmp_path / "moved.log"
    _append(other, "on the other node\n")
    where["path"] = other
    follower.poll()
    _append(other, "tail without newline")
    follower.finish()  # flushes the unterminated last line
    assert _logs(tl) == [
        "first",
        "new",
        "replaced but longer than before",
        "on the other node",
        "tail without newline",
    ]


def test_recorder_tails_backend_log_path(tmp_path: Path) -> None:
    clock = FakeClock(10.0)
    backend = FakeBackend(clock)
    backend.create_workload("vm-crash", WorkloadKind.VMI, "node1")
    log = tmp_path / "vm-crash.console.log"
    _append(log, "before the run\n")
    backend.log_files["vm-crash"] = log
    tl = Timeline(origin=clock.now())
    rec = Recorder(backend, "vm-crash", tl, clock=clock)
    assert rec.logs is not None
    rec.logs.start()  # what Recorder.start does before its first tick
    clock.advance(2.0)
    _append(log, "RTO-GUEST-READY 1234 boot=2\n")
    rec.poll_control()
    rec.logs.finish()
    assert _logs(tl) == ["RTO-GUEST-READY 1234 boot=2"]
    # No file for a workload: no follower output, no error.
    backend.create_workload("web", WorkloadKind.POD, "node1")
    tl2 = Timeline(origin=clock.now())
    rec2 = Recorder(backend, "web", tl2, clock=clock)
    assert rec2.logs is not None
    rec2.logs.start()
    rec2.poll_control()
    assert _logs(tl2) == [] and rec2.control_errors == 0


def test_report_shows_log_lines_apart(tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    tl = Timeline(origin=0.0)
    tl.add(1.0, EventKind.FAULT_INJECTED, "process-crash", "kill qemu of vm-crash")
    tl.add(1.2, EventKind.PROBE_FAIL, "prober", "connection refused")
    tl.add(4.0, EventKind.LOG, "workload", "RTO-GUEST-READY <b>abc</b> boot=2")
    tl.add(4.1, EventKind.PROBE_OK, "prober", "200")
    del clock
    store = ResultsStore(tmp_path / "runs")
    store.append(
        RunResult(
            run_id="run-log1",
            experiment="VMI process crash",
            fault="process-crash",
            kind="vmi",
            backend="lab",
            profile="fast",
            healers=["watchdog"],
            started_at="2025-01-01T00:00:00+00:00",
            status=RunStatus.RECOVERED,
            rto_s=2.9,
            timeline=tl.events(),
        )
    )
    build_report(store.path, tmp_path / "report")
    page = (tmp_path / "report" / "index.html").read_text()
    assert '<tr class="log">' in page and page.count('<tr class="log">') == 1
    assert "&gt; RTO-GUEST-READY &lt;b&gt;abc&lt;/b&gt; boot=2" in page
    assert "<b>abc</b>" not in page
