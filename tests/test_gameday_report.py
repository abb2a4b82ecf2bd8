"""The game-day report (reports.gameday) from records built by hand and from real runner rows."""

from __future__ import annotations

import base64
import html
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fakes import FakeBackend, FakeHealer, fake_recorder_factory

from chaos.gameday.record import (
    GameDayEvent,
    GameDayEventKind,
    GameDayOutcome,
    GameDayRecord,
    RevertRecord,
    StepRecord,
    StepStatus,
)
from chaos.journal import Journal
from chaos.results import ResultsStore, RunResult
from chaos.runner import RunOptions, run_experiment
from chaos.spec import ExperimentSpec, RtoSpec
from core.clock import FakeClock
from core.errors import HarnessError, SpecError
from core.timeline import EventKind
from reports.analysis import Verdict
from reports.build import build_report
from reports.expectations import load_expectations
from reports.gameday import (
    fault_spans,
    gameday_figure,
    judge_steps,
    outages,
    write_gameday_report,
)
from reports.plots import overlapping_tick_labels

START = datetime(2026, 12, 4, 9, 0, 0, tzinfo=UTC)
# Markup for HTML, Markdown and matplotlib's mathtext ("$...$" that does not parse).
HOSTILE = '<script>alert("x")</script> | **bold** [link](javascript:alert(1)) & `code` $\\frac{$'


def at(t: float) -> str:
    """The wall clock of game-day second ``t``, as the record writes it."""
    return (START + timedelta(seconds=t)).isoformat(timespec="milliseconds")


def ev(
    t: float, kind: str, step: int | None, message: str = "", source: str = "", **data: str
) -> GameDayEvent:
    return GameDayEvent(
        t=t, at=at(t), kind=kind, step=step, message=message, source=source, data=data
    )


def step(
    index: int,
    kind: str,
    title: str,
    start: float | None,
    end: float | None,
    status: StepStatus = StepStatus.DONE,
    result: RunResult | None = None,
) -> StepRecord:
    return StepRecord(
        index=index,
        kind=kind,
        title=title,
        status=status,
        started_t=start,
        ended_t=end,
        result=result,
    )


def record(**kw: object) -> GameDayRecord:
    base: dict[str, object] = {
        "name": "node lost at lunch",
        "runbook": "experiments/gamedays/node-lost.yaml",
        "started_at": at(0),
        "backend": "lab",
        "profile": "fast",
        "journal": "/tmp/gameday-journal.jsonl",
    }
    return GameDayRecord.model_validate({**base, **kw})


def write(tmp_path: Path, rec: GameDayRecord) -> tuple[str, str]:
    paths = write_gameday_report(rec, tmp_path / "out")
    assert [p.name for p in paths[:2]] == ["gameday.html", "gameday.md"]
    assert all(p.exists() for p in paths)
    return paths[0].read_text(encoding="utf-8"), paths[1].read_text(encoding="utf-8")


def md_section(md: str, title: str) -> str:
    """The Markdown between ``## title`` and the next heading."""
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


# ---------------------------------------------------------------- from real runner rows


def crash_spec(kind: str) -> ExperimentSpec:
    rto = RtoSpec.model_validate(
        {
            "name": "rto",
            "target": {"workload": "web", "kind": kind, "node": "node1"},
            "fault": {"type": "process-crash"},
            "healers": ["watchdog"],
            "recovery": {"good_probes": 5, "deadline_s": 60, "probe_interval_ms": 20},
            # Real platform timings: the cells get holds/contradicted, not "scaled".
            "profile": "kubernetes-defaults",
        }
    )
    return ExperimentSpec(path=Path(f"crash-{kind}.yaml"), title=f"crash {kind}", rto=rto)


def shifted(row: RunResult, index: int, offset: float) -> list[GameDayEvent]:
    """The run's timeline on the game day's clock, as the session stores it."""
    return [
        ev(offset + e.t, e.kind.value, index, e.message, e.source, **e.data) for e in row.timeline
    ]


@pytest.fixture
def runner_rows(tmp_path: Path) -> tuple[list[RunResult], Path]:
    """A pod and a VMI process crash run by the real runner on the fake backend."""
    clock = FakeClock(1000.0)
    backend = FakeBackend(clock, restart_delay=2.0)
    store = ResultsStore(tmp_path / "runs")
    opts = RunOptions(
        clock=clock,
        journal=Journal(tmp_path / "journal.jsonl"),
        recorder_factory=fake_recorder_factory,  # type: ignore[arg-type]
        healer_factory=lambda names, profile: [FakeHealer(n) for n in names],  # type: ignore[arg-type,misc]
    )
    rows = [run_experiment(crash_spec(k), backend, store, options=opts) for k in ("pod", "vmi")]
    return rows, store.path


def runner_record(rows: list[RunResult]) -> GameDayRecord:
    pod, vmi = rows
    pod_len, vmi_len = (max(e.t for e in r.timeline) for r in rows)
    t_vmi = 1 + pod_len + 1
    reverts = [
        RevertRecord(
            t=off + e.t,
            at=at(off + e.t),
            fault=e.source,
            target="web",
            fault_id=e.data["fault_id"],
            by="run",
        )
        for r, off in ((pod, 1.0), (vmi, t_vmi))
        for e in r.timeline
        if e.kind is EventKind.FAULT_REVERTED
    ]
    return record(
        profile="kubernetes-defaults",
        ended_at=at(t_vmi + vmi_len),
        outcome=GameDayOutcome.COMPLETED,
        steps=[
            step(0, "say", "We crash the web pod now.", 0.0, 0.5),
            step(1, "run", "crash-pod.yaml", 1.0, 1 + pod_len, result=pod),
            step(2, "run", "crash-vmi.yaml", t_vmi, t_vmi + vmi_len, result=vmi),
        ],
        events=[
            ev(0, GameDayEventKind.STEP_STARTED, 0),
            ev(0, GameDayEventKind.SAY, 0, "We crash the web pod now."),
            *shifted(pod, 1, 1.0),
            ev(1.5, GameDayEventKind.NOTE, 1, "pager went off"),
            *shifted(vmi, 2, t_vmi),
        ],
        reverts=reverts,
    )


def test_run_steps_show_the_claim_and_verdict_rto_report_gives(
    tmp_path: Path, runner_rows: tuple[list[RunResult], Path]
) -> None:
    rows, results = runner_rows
    page, md = write(tmp_path, runner_record(rows))
    exp = load_expectations()
    report = build_report(results, tmp_path / "rto-report")
    for row, verdict in zip(rows, (Verdict.HOLDS, Verdict.CONTRADICTED), strict=True):
        cell = report.cell(row.fault, row.kind)
        # The fake restarts in 2 s: within "seconds" for a pod, far under "30 s+" for a VMI.
        assert cell.verdict is verdict
        claim = exp.get(row.fault, row.kind)
        assert claim is not None
        assert html.escape(f"{claim.mechanism}: {claim.claim_text}") in page
        assert html.escape(f"{cell.verdict.label}: {cell.detail}") in page
    steps_md = md_section(md, "Steps")
    run_lines = [line for line in steps_md.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert "holds" in run_lines[0] and "contradicted" in run_lines[1]
    assert all(
        r.rto_s is not None and f"{r.rto_s:.1f} s" in line
        for r, line in zip(rows, run_lines, strict=True)
    )
    assert "pager went off" in md_section(md, "Every event")
    assert "Every fault injected has a revert on record." in md


def test_each_step_is_judged_on_its_own_row(runner_rows: tuple[list[RunResult], Path]) -> None:
    rows, _ = runner_rows
    slow = rows[0].model_copy(update={"rto_s": 60.0, "run_id": "slow"})
    rec = record(
        steps=[
            step(0, "run", "a", 0, 10, result=rows[0]),
            step(1, "run", "b", 10, 80, result=slow),
        ]
    )
    cells = judge_steps(rec, load_expectations())
    # Pooled, the median of 2 s and 60 s would be judged; one row each keeps both verdicts.
    assert (cells[0].verdict, cells[1].verdict) == (Verdict.HOLDS, Verdict.CONTRADICTED)
    assert cells[0].n == cells[1].n == 1


# -------------------------------------------------------------------- hand-built records


def completed_record() -> GameDayRecord:
    return record(
        ended_at=at(40),
        outcome=GameDayOutcome.COMPLETED,
        rehearsal=True,
        steps=[
            step(0, "say", "Drain node2 while we watch", 0, 0.01),
            step(1, "checkpoint", "Everyone ready?", 0.01, 0.02),
            step(2, "run", "experiments/pods/node-drain.yaml", 0.02, 30),
            step(3, "note", "What did the pager say?", 30, 35),
        ],
        events=[
            ev(0, GameDayEventKind.SAY, 0, "Drain node2 while we watch"),
            ev(0.01, GameDayEventKind.CHECKPOINT, 1, "skipped (--yes)"),
            ev(5, EventKind.FAULT_INJECTED, 2, "drain node2", "node-drain", fault_id="f-1"),
            ev(5.5, EventKind.PROBE_FAIL, 2, source="prober"),
            ev(6, EventKind.CONTROL, 2, "node2 cordoned", "node"),
            ev(7, EventKind.HEALER_ACTION, 2, "evicted web", "eviction"),
            ev(12, EventKind.PROBE_OK, 2, source="prober"),
            ev(20, EventKind.FAULT_REVERTED, 2, "drain node2", "node-drain", fault_id="f-1"),
            ev(33, GameDayEventKind.NOTE, 3, "pager fired after 40 s"),
        ],
        reverts=[
            RevertRecord(
                t=20, at=at(20), fault="node-drain", target="node2", fault_id="f-1", by="run"
            )
        ],
    )


def test_header_notes_and_reverts_are_shown(tmp_path: Path) -> None:
    page, md = write(tmp_path, completed_record())
    for text in ("node lost at lunch", "experiments/gamedays/node-lost.yaml", "completed"):
        assert text in page and text in md
    assert "rehearsal" in md and "/tmp/gameday-journal.jsonl" in md
    assert "pager fired after 40 s" in md_section(md, "Every event")
    reverts = md_section(md, "What was reverted when")
    line = next(line for line in reverts.splitlines() if "f-1" in line)
    assert "node-drain" in line and "node2" in line and "the run" in line
    assert "09:00:20.000" in line  # the revert's wall clock
    assert "Every fault injected has a revert on record." in reverts
    assert "aborted" not in reverts.lower()


def test_outages_and_faults_pair_by_step_and_fault_id() -> None:
    rec = completed_record()
    assert outages(rec) == [(5.5, 12, True)]
    [span] = fault_spans(rec)
    assert (span.fault_id, span.start, span.end, span.by) == ("f-1", 5, 20, "run")
    # An outage still open when its step ended did not recover: it stops there.
    open_rec = rec.model_copy(update={"events": [e for e in rec.events if e.kind != "probe_ok"]})
    assert outages(open_rec) == [(5.5, 30, False)]


def aborted_record(reverted: bool = True) -> GameDayRecord:
    reverts = [
        RevertRecord(
            t=9, at=at(9), fault="node-power-off", target="node1", fault_id="p-7", by="abort"
        )
    ]
    return record(
        ended_at=at(10),
        outcome=GameDayOutcome.ABORTED,
        steps=[
            step(0, "say", "Power node1 off", 0, 0.1),
            step(1, "run", "experiments/vmis/node-power-off.yaml", 0.1, 9.5, StepStatus.ABORTED),
            step(2, "note", "Lessons?", None, None, StepStatus.SKIPPED),
        ],
        events=[
            ev(2, EventKind.FAULT_INJECTED, 1, "power off node1", "node-power-off", fault_id="p-7"),
            ev(2.2, EventKind.PROBE_FAIL, 1, source="prober"),
            ev(8.5, GameDayEventKind.ABORT, 1, "Ctrl-C"),
        ],
        reverts=reverts if reverted else [],
    )


def test_abort_section_says_what_the_abort_reverted(tmp_path: Path) -> None:
    page, md = write(tmp_path, aborted_record())
    reverts = md_section(md, "What was reverted when")
    assert "Abort at 0:08.50 (09:00:08.500) during step #1" in reverts
    assert "The abort reverted 1 fault(s): node-power-off on node1 (id p-7)" in reverts
    assert "the abort" in next(line for line in reverts.splitlines() if "| p-7 |" in line)
    # Not read back (pending_after None): the report does not claim a clean journal.
    assert "does not say whether the journal had anything pending" in reverts
    steps = md_section(md, "Steps")
    assert "| 1 | run |" in steps and "aborted" in steps and "skipped" in steps
    assert 'class="abort"' in page


def test_abort_section_reports_the_journal_read_back(tmp_path: Path) -> None:
    clean = aborted_record().model_copy(update={"pending_after": []})
    reverts = md_section(write(tmp_path / "clean", clean)[1], "What was reverted when")
    assert "was read back at the end: nothing pending" in reverts
    left = aborted_record().model_copy(update={"pending_after": ["p-9"]})
    reverts = md_section(write(tmp_path / "left", left)[1], "What was reverted when")
    assert "still held 1 pending fault(s) at the end (p-9)" in reverts


def test_a_fault_without_revert_is_named(tmp_path: Path) -> None:
    _, md = write(tmp_path, aborted_record(reverted=False))
    reverts = md_section(md, "What was reverted when")
    assert "The abort reverted nothing" in reverts
    assert "Not reverted according to this record: node-power-off (id p-7)" in reverts
    assert "/tmp/gameday-journal.jsonl" in reverts


def test_a_failed_game_day_names_the_step_and_the_replay(tmp_path: Path) -> None:
    rec = aborted_record().model_copy(
        update={
            "outcome": GameDayOutcome.FAILED,
            "steps": [
                step(0, "say", "Power node1 off", 0, 0.1),
                StepRecord(
                    index=1,
                    kind="run",
                    title="experiments/vmis/node-power-off.yaml",
                    status=StepStatus.FAILED,
                    started_t=0.1,
                    ended_t=9.5,
                    error="web never answered before the fault",
                ),
            ],
            "events": [e for e in aborted_record().events if e.kind != "abort"]
            + [ev(9.6, GameDayEventKind.ABORT, None, "journal replay failed: node1 gone")],
        }
    )
    _, md = write(tmp_path, rec)
    reverts = md_section(md, "What was reverted when")
    assert (
        "Step #1 (run: experiments/vmis/node-power-off.yaml) failed: web never answered" in reverts
    )
    assert "journal replay failed: node1 gone" in reverts
    assert "reverted 1 fault(s): node-power-off on node1 (id p-7)" in reverts


def test_hostile_user_text_is_escaped_in_html_and_markdown(tmp_path: Path) -> None:
    rec = record(
        name=HOSTILE,
        steps=[step(0, "note", HOSTILE, 0, 1)],
        events=[ev(0.5, GameDayEventKind.NOTE, 0, HOSTILE, "room")],
    )
    page, md = write(tmp_path, rec)
    assert "<script>" not in page and html.escape(HOSTILE) in page
    assert "<script>" not in md and "[link](javascript:" not in md
    # Every row of the event table keeps the header's columns: the "|" is escaped.
    events = [ln for ln in md_section(md, "Every event").splitlines() if ln.startswith("|")]
    assert len(events) == 3
    assert {len(re.findall(r"(?<!\\)\|", ln)) for ln in events} == {7}
    assert "\\*\\*bold\\*\\*" in md and "&lt;script&gt;" in md


def long_record(minutes: float, steps: int, control_every_s: float) -> GameDayRecord:
    end = minutes * 60
    per = end / steps
    step_list = [
        step(i, ("say", "run", "observe", "note")[i % 4], f"step {i}", i * per, i * per + per * 0.9)
        for i in range(steps)
    ]
    events = [
        ev(t, EventKind.CONTROL, int(t // per), f"pod web event {n}", "pod")
        for n, t in enumerate(x * control_every_s for x in range(int(end / control_every_s)))
    ]
    events += [ev(i * per + 1, GameDayEventKind.NOTE, i, f"note {i}") for i in range(steps)]
    return record(
        ended_at=at(end), outcome=GameDayOutcome.COMPLETED, steps=step_list, events=events
    )


@pytest.mark.parametrize(
    ("minutes", "steps", "clock"),
    [(0.5, 6, "seconds since the game day started"), (20, 40, "game-day time (m:ss)")],
)
def test_the_timeline_is_readable_short_and_long(
    tmp_path: Path, minutes: float, steps: int, clock: str
) -> None:
    rec = long_record(minutes, steps, control_every_s=2)
    fig = gameday_figure(rec)
    ax = fig.axes[0]
    assert overlapping_tick_labels(fig) == []
    assert ax.get_xlabel() == clock
    assert ax.get_xlim()[1] >= minutes * 60
    lo, hi = ax.get_xlim()
    ticks = [t.get_text() for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]
    assert 3 <= len(ticks) <= 14
    if minutes >= 2:
        assert all(re.fullmatch(r"\d+:\d\d", t) for t in ticks)
    page, md = write(tmp_path, rec)
    event_rows = [ln for ln in md_section(md, "Every event").splitlines() if ln.startswith("| ")]
    assert len(event_rows) == len(rec.events) + 1  # the header row
    png = base64.b64decode(page.split("data:image/png;base64,", 1)[1].split('"', 1)[0])
    assert png.startswith(b"\x89PNG")
    assert 'src="http' not in page


def test_an_empty_game_day_still_leaves_a_report(tmp_path: Path) -> None:
    rec = record(
        outcome=GameDayOutcome.FAILED,
        steps=[step(0, "say", "hello", None, None, StepStatus.SKIPPED)],
    )
    _page, md = write(tmp_path, rec)
    assert "0 of 1 run" in md and "failed" in md
    assert "no event recorded" in md_section(md, "Every event")
    assert "no fault was reverted" in md_section(md, "What was reverted when")
    assert [t.get_text() for t in gameday_figure(rec).axes[0].texts] == [
        "no step was run: nothing to draw"
    ]
    _, md_none = write(tmp_path, record())
    assert "the runbook has no steps" in md_none and "in progress" in md_none


def test_bad_expectations_and_unwritable_dir_raise_the_projects_errors(tmp_path: Path) -> None:
    bad = tmp_path / "exp.yaml"
    bad.write_text("version: 1\nrto: []\n")
    with pytest.raises(SpecError, match=r"exp\.yaml"):
        write_gameday_report(completed_record(), tmp_path / "out", bad)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(HarnessError, match="cannot write the game-day report"):
        write_gameday_report(completed_record(), blocker / "out")
