"""Game days (``rto gameday``) on the FakeBackend, a FakeClock and the fake recorder.

Runbooks load and fail like experiments (one paragraph naming file and field,
nothing built); the session runs the steps in order into one record, written
as gameday.json; checkpoints wait for a person unless ``--yes``; notes are
stamped; an abort mid-fault (the abort key, Ctrl-C, ``a`` at a checkpoint)
reverts the run's fault and everything else pending through the journal; a
SIGKILLed game day leaves what ``rto revert`` clears; ``--dry-run`` touches
nothing. The live view and the abort key are tested on their own (a real
pseudo-terminal for the key).
"""

from __future__ import annotations

import io
import os
import pty
import signal
import subprocess
import sys
import termios
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from fakes import FakeBackend, FakeHealer, fake_recorder_factory
from rich.console import Console

from chaos import cli, gameday_cli
from chaos.faults import NodePowerOff
from chaos.gameday.live import (
    REHEARSAL_NOTE,
    AbortKeys,
    NullView,
    PlainView,
    RehearsalRoom,
    RichView,
    StepWatch,
    TerminalRoom,
    view_state,
)
from chaos.gameday.record import (
    GAMEDAY_FILE,
    GameDayEventKind,
    GameDayOutcome,
    GameDayRecord,
    StepStatus,
)
from chaos.gameday.runbook import Runbook, load_runbook, plan_lines
from chaos.gameday.session import GameDay
from chaos.journal import Journal
from chaos.results import ResultsStore, RunStatus
from chaos.runner import RunOptions
from cluster.api import WorkloadKind
from core.clock import FakeClock
from core.errors import SpecError
from core.timeline import EventKind, Timeline

ROOT = Path(__file__).resolve().parents[1]
GAMEDAYS = ROOT / "experiments" / "gamedays"
STORAGE = GAMEDAYS / "storage-outage.yaml"
NODE_LOST = GAMEDAYS / "node-lost-business-hours.yaml"
PODS = ROOT / "experiments" / "pods"


# --- helpers -------------------------------------------------------------------------


def _options(clock: FakeClock, journal: Journal) -> RunOptions:
    return RunOptions(
        clock=clock,
        journal=journal,
        recorder_factory=fake_recorder_factory,  # type: ignore[arg-type]
        healer_factory=lambda names, profile: [FakeHealer(n) for n in names],  # type: ignore[arg-type,misc]
        metrics_period_s=None,
    )


def _write(tmp_path: Path, doc: object, name: str = "book.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return p


def _book(tmp_path: Path, steps: list[object], **top: object) -> Path:
    doc = {"name": "test-day", "backend": "lab", "profile": "fast", "nodes": 3, **top}
    doc["steps"] = steps
    return _write(tmp_path, doc)


def _run_step(name: str, **overrides: object) -> dict[str, object]:
    return {"run": {"path": str(PODS / f"{name}.yaml"), **overrides}}


class World:
    """One FakeBackend (in a state file), its clock, journal and store."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.clock = FakeClock(100.0)
        self.backend = FakeBackend(self.clock, state_file=tmp_path / "fake.json")
        self.journal = Journal(tmp_path / "journal.jsonl")
        self.store = ResultsStore(tmp_path / "runs")
        self.out = tmp_path / "out"
        self.built: list[str] = []

    def factory(self, name: str) -> FakeBackend:
        self.built.append(name)
        return self.backend

    def gameday(self, runbook: Runbook, room: object | None = None, **kw: object) -> GameDay:
        return GameDay(
            runbook,
            self.backend,
            self.store,
            self.out,
            room=room or RehearsalRoom(Console(file=io.StringIO())),  # type: ignore[arg-type]
            backend_factory=self.factory,
            options=_options(self.clock, self.journal),
            **kw,  # type: ignore[arg-type]
        )


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


class AbortingView(NullView):
    """A view that aborts (as the abort key would) at the first stage matching ``at``."""

    def __init__(self, watch: StepWatch, at: str, keys: FakeKeys | None = None) -> None:
        super().__init__(watch)
        self.at = at
        self.keys = keys

    def status(self, message: str) -> None:
        super().status(message)
        if self.at in message:
            if self.keys is not None:
                self.keys.pressed = True
            raise KeyboardInterrupt


class FakeKeys:
    """AbortKeys' surface: armed around run/observe steps, ``pressed`` after a key."""

    available = True

    def __init__(self) -> None:
        self.pressed = False
        self.armed_count = 0

    @contextmanager
    def armed(self) -> Iterator[None]:
        self.armed_count += 1
        yield


def _kinds(record: GameDayRecord) -> list[str]:
    return [e.kind for e in record.events]


# --- runbooks: the examples, and every kind of bad one ------------------------------


def test_example_runbooks_load_with_every_experiment() -> None:
    storage = load_runbook(STORAGE)
    assert [s.kind for s in storage.spec.steps].count("run") == len(storage.experiments) == 2
    for exp in storage.experiments.values():
        # Cheap: short faults, so the e2e test can afford the whole runbook.
        assert exp.rto.target.kind == "pod"
        assert (exp.rto.fault.held_for() or 0) <= 5 and exp.rto.recovery.deadline_s <= 30
    node = load_runbook(NODE_LOST)
    assert node.spec.vms
    kinds = {e.rto.target.kind for e in node.experiments.values()}
    assert kinds == {"pod", "vmi"}
    assert {e.rto.fault.type for e in node.experiments.values()} >= {"node-power-off"}
    assert all("eviction" in e.rto.healers for e in node.experiments.values())
    assert any("migration" in e.rto.healers for e in node.experiments.values())
    assert {s.kind for s in node.spec.steps} == {"say", "run", "checkpoint", "observe", "note"}


def test_overrides_are_applied_at_load(tmp_path: Path) -> None:
    book = load_runbook(
        _book(tmp_path, [_run_step("storage-eio", healers=["watchdog"], duration_s=3)])
    )
    exp = book.experiments[0]
    assert exp.rto.healers == ["watchdog"]
    assert exp.rto.fault.held_for() == 3
    assert exp.rto.profile == "fast"  # the runbook's profile


BAD_RUNBOOKS: list[tuple[str, object, str]] = [
    ("not-yaml", "name: x\nsteps: [\n", "not valid YAML"),
    ("a-list", "- say: hi\n", "must be a mapping"),
    ("no-name", {"steps": [{"say": "hi"}]}, "name: Field required"),
    ("name-with-slash", {"name": "a/b", "steps": [{"say": "hi"}]}, "name:"),
    ("no-steps", {"name": "x", "steps": []}, "steps:"),
    ("steps-not-a-list", {"name": "x", "steps": "say hi"}, "steps:"),
    ("two-keys", {"name": "x", "steps": [{"say": "hi", "note": "n"}]}, "steps[0]: a step has"),
    ("no-key", {"name": "x", "steps": [{}]}, "steps[0]: a step has exactly one"),
    ("unknown-key", {"name": "x", "steps": [{"shout": "hi"}]}, "steps[0].shout: unknown field"),
    ("step-a-string", {"name": "x", "steps": [{"say": "hi"}, "run"]}, "steps[1]: a step is"),
    ("empty-say", {"name": "x", "steps": [{"say": ""}]}, "steps[0].say"),
    ("say-a-number", {"name": "x", "steps": [{"say": 3}]}, "steps[0].say"),
    ("backend", {"name": "x", "backend": "moon", "steps": [{"say": "hi"}]}, "backend: got 'moon'"),
    ("profile", {"name": "x", "profile": "slowest", "steps": [{"say": "hi"}]}, "profile"),
    ("nodes", {"name": "x", "nodes": 1, "steps": [{"say": "hi"}]}, "nodes"),
    ("extra-top", {"name": "x", "stepz": [], "steps": [{"say": "a"}]}, "stepz: unknown field"),
    (
        "run-healers",
        {"name": "x", "steps": [{"say": "a"}, {"run": {"path": "p.yaml", "healers": ["magic"]}}]},
        "steps[1].run.healers",
    ),
    (
        "run-duration",
        {"name": "x", "steps": [{"run": {"path": "p.yaml", "duration_s": -1}}]},
        "steps[0].run.duration_s",
    ),
    ("run-no-path", {"name": "x", "steps": [{"run": {"healers": []}}]}, "steps[0].run.path"),
    (
        "run-missing-file",
        {"name": "x", "steps": [{"run": {"path": "nope.yaml"}}]},
        "steps[0].run.path: nope.yaml does not exist",
    ),
    (
        "observe-seconds",
        {"name": "x", "steps": [{"observe": {"workload": "web", "seconds": 0}}]},
        "steps[0].observe.seconds",
    ),
    (
        "observe-workload",
        {"name": "x", "steps": [{"observe": {"workload": "Web_1", "seconds": 2}}]},
        "steps[0].observe.workload",
    ),
    (
        "duration-on-a-crash",
        {"name": "x", "steps": [_run_step("process-crash", duration_s=5)]},
        "steps[0].run:",
    ),
    (
        "duration-past-deadline",
        {"name": "x", "steps": [_run_step("storage-eio", duration_s=30, deadline_s=10)]},
        "steps[0].run:",
    ),
    (
        "vmi-without-vms",
        {"name": "x", "steps": [{"run": {"path": str(ROOT / "experiments/vmis/node-drain.yaml")}}]},
        "vms: true",
    ),
]


@pytest.mark.parametrize(("case", "doc", "needle"), BAD_RUNBOOKS, ids=[c[0] for c in BAD_RUNBOOKS])
def test_bad_runbooks_get_one_paragraph_naming_the_field(
    tmp_path: Path, case: str, doc: object, needle: str
) -> None:
    path = _write(tmp_path, doc, f"{case}.yaml")
    with pytest.raises(SpecError) as err:
        load_runbook(path)
    msg = str(err.value)
    assert "\n" not in msg.strip(), msg
    assert f"{case}.yaml" in msg and needle in msg, msg


def test_undecodable_and_odd_files_are_one_paragraph(tmp_path: Path) -> None:
    cases = {
        "binary.yaml": b"\xff\xfe\x00name",
        "deep.yaml": b"[" * 100_000,
        "empty.yaml": b"",
        "null.json": b"null",
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(SpecError) as err:
            load_runbook(p)
        assert "\n" not in str(err.value).strip() and name in str(err.value), err.value
    with pytest.raises(SpecError, match="cannot read"):
        load_runbook(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="cannot read"):
        load_runbook(tmp_path)  # a directory


def test_a_bad_experiment_behind_a_run_step_names_the_experiment(tmp_path: Path) -> None:
    exp = tmp_path / "broken.yaml"
    exp.write_text((PODS / "storage-hang.yaml").read_text().replace("mode: hang", "mode: melt"))
    with pytest.raises(SpecError) as err:
        load_runbook(_book(tmp_path, [{"say": "hi"}, {"run": {"path": "broken.yaml"}}]))
    assert "broken.yaml" in str(err.value) and "fault.mode" in str(err.value)


# --- the session ---------------------------------------------------------------------


def test_storage_game_day_runs_every_step_into_one_record(world: World) -> None:
    book = load_runbook(STORAGE)
    record = world.gameday(book).run()
    steps = book.spec.steps
    assert record.outcome is GameDayOutcome.COMPLETED and record.rehearsal
    assert [s.kind for s in record.steps] == [s.kind for s in steps]
    assert [s.index for s in record.steps] == list(range(len(steps)))
    assert all(s.status is StepStatus.DONE for s in record.steps)
    # Steps follow one another on the game day's clock.
    for a, b in zip(record.steps, record.steps[1:], strict=False):
        assert a.started_t is not None and a.ended_t is not None and b.started_t is not None
        assert a.started_t <= a.ended_t <= b.started_t
    # Every run step stored its row in the results store, the same row in the record.
    rows = world.store.load()
    runs = [s for s in record.steps if s.kind == "run"]
    assert [s.result.run_id for s in runs if s.result] == [r.run_id for r in rows]
    assert all(r.status is RunStatus.RECOVERED for r in rows), [r.error for r in rows]
    assert {r.campaign for r in rows} == {"gameday:storage-outage"}
    assert len({r.campaign_id for r in rows}) == 1  # one invocation for the game day
    # The run events sit inside their step, shifted onto the game day's clock.
    for s in runs:
        assert s.result is not None and s.started_t is not None and s.ended_t is not None
        injected = [
            e for e in record.events if e.step == s.index and e.kind == EventKind.FAULT_INJECTED
        ]
        assert len(injected) == 1
        assert s.started_t <= injected[0].t <= s.ended_t
        run_inj = next(e for e in s.result.timeline if e.kind is EventKind.FAULT_INJECTED)
        # The shift keeps the gap between injection and the first failure.
        run_fail = next(
            e for e in s.result.timeline if e.kind is EventKind.PROBE_FAIL and e.t >= run_inj.t
        )
        gd_fail = next(
            e
            for e in record.events
            if e.step == s.index and e.kind == EventKind.PROBE_FAIL and e.t >= injected[0].t
        )
        assert gd_fail.t - injected[0].t == pytest.approx(run_fail.t - run_inj.t, abs=1e-5)
    assert [r.by for r in record.reverts] == ["run", "run"]
    assert [r.fault for r in record.reverts] == ["storage-lost", "storage-lost"]
    assert {r.target for r in record.reverts} == {"web-eio", "web-hang"}
    kinds = _kinds(record)
    assert kinds.count(GameDayEventKind.STEP_STARTED) == len(steps)
    assert kinds.count(GameDayEventKind.STEP_ENDED) == len(steps)
    assert GameDayEventKind.ABORT not in kinds
    notes = [e for e in record.events if e.kind == GameDayEventKind.NOTE]
    assert [n.message for n in notes] == [REHEARSAL_NOTE, REHEARSAL_NOTE]
    checks = [e for e in record.events if e.kind == GameDayEventKind.CHECKPOINT]
    assert [c.data["by"] for c in checks] == ["rehearsal"]
    assert [e.t for e in record.events] == sorted(e.t for e in record.events)
    # The observe step recorded its own probes (its workload is up: no failure).
    observed = [e for e in record.events if e.step == 2]
    assert any(e.kind == EventKind.PROBE_OK for e in observed)
    assert not any(e.kind == EventKind.PROBE_FAIL for e in observed)
    # The file is the record; nothing is left pending.
    on_disk = GameDayRecord.model_validate_json((world.out / GAMEDAY_FILE).read_text())
    assert on_disk == record
    assert world.journal.pending() == []
    assert world.built == []  # no journal replay was needed, no backend built


def test_the_node_lost_example_runs_on_the_fake_with_pods_and_vmis(world: World) -> None:
    book = load_runbook(NODE_LOST)
    keys = FakeKeys()
    record = world.gameday(book, keys=keys).run()
    assert record.outcome is GameDayOutcome.COMPLETED
    rows = world.store.load()
    assert [r.kind for r in rows] == ["pod", "vmi", "vmi"]
    assert [r.fault for r in rows] == ["node-power-off", "node-power-off", "node-drain"]
    assert all(r.status in (RunStatus.RECOVERED, RunStatus.NO_OUTAGE) for r in rows), [
        (r.status, r.error) for r in rows
    ]
    # The abort key is armed around each run and observe step, never at prompts.
    assert keys.armed_count == sum(s.kind in ("run", "observe") for s in book.spec.steps)
    assert world.journal.pending() == []
    for n in ("node1", "node2", "node3"):
        assert world.backend.node_state(n)["powered"]


def test_notes_and_checkpoints_from_a_person(world: World) -> None:
    book = load_runbook(
        _book(
            world.tmp,
            [
                {"say": "welcome"},
                {"checkpoint": "dashboards open"},
                {"note": "what did you see?"},
                {"checkpoint": "ready to end"},
            ],
        )
    )
    out = io.StringIO()
    room = TerminalRoom(Console(file=out), io.StringIO("\n  the pager rang at once  \n\n"))
    world.clock.advance(0)
    record = world.gameday(book, room=room).run()
    assert record.outcome is GameDayOutcome.COMPLETED and not record.rehearsal
    note = next(e for e in record.events if e.kind == GameDayEventKind.NOTE)
    assert note.message == "the pager rang at once" and note.step == 2
    assert note.data["prompt"] == "what did you see?"
    checks = [e for e in record.events if e.kind == GameDayEventKind.CHECKPOINT]
    assert [(c.step, c.data["by"]) for c in checks] == [(1, "person"), (3, "person")]
    assert "dashboards open" in out.getvalue() and "Enter to go on" in out.getvalue()


def test_a_at_a_checkpoint_aborts_and_skips_the_rest(world: World) -> None:
    book = load_runbook(
        _book(world.tmp, [{"say": "hi"}, {"checkpoint": "go?"}, _run_step("storage-eio")])
    )
    room = TerminalRoom(Console(file=io.StringIO()), io.StringIO("a\n"))
    record = world.gameday(book, room=room).run()
    assert record.outcome is GameDayOutcome.ABORTED
    assert [s.status for s in record.steps] == [
        StepStatus.DONE,
        StepStatus.ABORTED,
        StepStatus.SKIPPED,
    ]
    abort = next(e for e in record.events if e.kind == GameDayEventKind.ABORT)
    assert abort.step == 1 and "checkpoint" in abort.message
    assert world.store.load() == [] and world.backend.calls == []


def test_closed_stdin_at_a_checkpoint_aborts(world: World) -> None:
    book = load_runbook(_book(world.tmp, [{"checkpoint": "go?"}, {"say": "never"}]))
    room = TerminalRoom(Console(file=io.StringIO()), io.StringIO(""))
    record = world.gameday(book, room=room).run()
    assert record.outcome is GameDayOutcome.ABORTED
    abort = next(e for e in record.events if e.kind == GameDayEventKind.ABORT)
    assert "stdin closed" in abort.message and "--yes" in abort.message


def test_abort_mid_fault_reverts_the_run_and_everything_pending(world: World) -> None:
    # A fault left pending by an earlier, crashed harness on the same journal:
    # the abort's journal replay must revert it too ("every fault at once").
    NodePowerOff(world.backend, "node3", world.journal).inject()
    book = load_runbook(
        _book(
            world.tmp,
            [
                {"say": "node1 goes dark"},
                _run_step("node-power-off", duration_s=30, deadline_s=60),
                {"say": "never said"},
            ],
        )
    )
    keys = FakeKeys()
    gd = world.gameday(
        book, keys=keys, view_factory=lambda w: AbortingView(w, "holding the fault", keys)
    )
    record = gd.run()
    assert record.outcome is GameDayOutcome.ABORTED
    assert [s.status for s in record.steps] == [
        StepStatus.DONE,
        StepStatus.ABORTED,
        StepStatus.SKIPPED,
    ]
    aborted = record.steps[1]
    assert aborted.result is not None and aborted.result.status is RunStatus.ABORTED
    assert [r.status for r in world.store.load()] == [RunStatus.ABORTED]
    abort = [e for e in record.events if e.kind == GameDayEventKind.ABORT]
    assert len(abort) == 1 and abort[0].message == "aborted: abort key" and abort[0].step == 1
    # Both faults reverted, both recorded as the abort's: the run's by its
    # finish, the leftover by the journal replay (after the abort).
    assert sorted((r.fault, r.target, r.by) for r in record.reverts) == [
        ("node-power-off", "node1", "abort"),
        ("node-power-off", "node3", "abort"),
    ]
    assert all(r.t >= abort[0].t for r in record.reverts)
    assert world.journal.pending() == [] and record.pending_after == []
    for n in ("node1", "node2", "node3"):
        assert world.backend.node_state(n)["powered"], n
    assert gd.problems == []
    assert not any(e.kind == GameDayEventKind.SAY and e.step == 2 for e in record.events)


def test_ctrl_c_during_an_observe_step_stops_its_recorder(world: World) -> None:
    world.backend.create_workload("web", WorkloadKind.POD)
    book = load_runbook(
        _book(world.tmp, [{"observe": {"workload": "web", "seconds": 30}}, {"say": "no"}])
    )
    views: list[AbortingView] = []

    def view(w: StepWatch) -> AbortingView:
        views.append(AbortingView(w, "watching"))
        return views[-1]

    record = world.gameday(book, view_factory=view).run()
    assert record.outcome is GameDayOutcome.ABORTED
    abort = next(e for e in record.events if e.kind == GameDayEventKind.ABORT)
    assert abort.message == "aborted: Ctrl-C"
    assert world.backend.observers == []  # the fake recorder was stopped
    assert [s.status for s in record.steps] == [StepStatus.ABORTED, StepStatus.SKIPPED]


def test_a_failed_run_fails_the_game_day_and_reverts(world: World) -> None:
    book = load_runbook(
        _book(world.tmp, [_run_step("node-power-off", duration_s=5), {"say": "never"}])
    )
    world.backend.fail_on["power_on"] = "the BMC does not answer"
    gd = world.gameday(book)
    record = gd.run()
    assert record.outcome is GameDayOutcome.FAILED
    assert record.steps[0].status is StepStatus.FAILED
    assert "BMC" in (record.steps[0].error or "")
    assert record.steps[1].status is StepStatus.SKIPPED
    # The replay tried too, and says what it could not do.
    assert gd.problems and "BMC" in gd.problems[0]
    # The record says which fault is left for `rto revert`.
    assert record.pending_after == [r.id for r in world.journal.pending()] != []


def test_gameday_json_is_written_after_every_step(world: World) -> None:
    book = load_runbook(_book(world.tmp, [{"say": "one"}, {"say": "two"}, {"say": "three"}]))
    seen: list[int] = []

    class Watching(RehearsalRoom):
        def say(self, text: str) -> None:
            on_disk = GameDayRecord.model_validate_json((world.out / GAMEDAY_FILE).read_text())
            assert on_disk.outcome is None  # still running
            seen.append(len(on_disk.steps))

    world.gameday(book, room=Watching(Console(file=io.StringIO()))).run()
    assert seen == [0, 1, 2]


# --- the CLI ---------------------------------------------------------------------------


@pytest.fixture
def fake_cli(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("RTO_JOURNAL", str(world.journal.path))
    monkeypatch.setattr(gameday_cli, "BACKEND_FACTORY", world.factory)
    monkeypatch.setattr(
        gameday_cli, "OPTIONS_FACTORY", lambda: _options(world.clock, world.journal)
    )
    return world


def _invoke(args: list[str], input: str | None = None) -> tuple[int, str]:
    res = CliRunner().invoke(cli.cli, ["gameday", *args], input=input)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def test_cli_rehearsal_writes_record_and_report(fake_cli: World) -> None:
    w = fake_cli
    code, out = _invoke(
        [str(STORAGE), "--yes", "--out", str(w.out), "--runs-dir", str(w.tmp / "runs")]
    )
    assert code == 0, out
    assert (w.out / GAMEDAY_FILE).is_file()
    assert (w.out / "gameday.html").is_file() and (w.out / "gameday.md").is_file()
    assert str(w.out / GAMEDAY_FILE) in out.replace("\n", "")
    record = GameDayRecord.model_validate_json((w.out / GAMEDAY_FILE).read_text())
    assert record.rehearsal and record.outcome is GameDayOutcome.COMPLETED
    assert "live: step 2" in out  # the plain view (not a terminal)


def test_cli_checkpoint_waits_for_enter_and_a_aborts_with_130(fake_cli: World) -> None:
    w = fake_cli
    book = _book(w.tmp, [{"checkpoint": "go?"}, {"note": "say something"}, {"checkpoint": "end?"}])
    code, out = _invoke([str(book), "--out", str(w.out)], input="\nwe are ready\na\n")
    assert code == gameday_cli.ABORT_EXIT, out
    record = GameDayRecord.model_validate_json((w.out / GAMEDAY_FILE).read_text())
    assert not record.rehearsal
    assert [s.status for s in record.steps] == [
        StepStatus.DONE,
        StepStatus.DONE,
        StepStatus.ABORTED,
    ]
    assert next(e for e in record.events if e.kind == GameDayEventKind.NOTE).message == (
        "we are ready"
    )
    assert (w.out / "gameday.md").is_file()  # the report is written after an abort too


def test_cli_dry_run_prints_the_plan_and_touches_nothing(fake_cli: World) -> None:
    w = fake_cli
    runs = w.tmp / "runs"
    code, out = _invoke([str(NODE_LOST), "--dry-run", "--out", str(w.out), "--runs-dir", str(runs)])
    assert code == 0, out
    book = load_runbook(NODE_LOST)
    assert out.splitlines()[: len(plan_lines(book))] == plan_lines(book)
    for i, step in enumerate(book.spec.steps):
        assert f"step {i + 1}/{len(book.spec.steps)} {step.kind}" in out
    assert (
        "fault node-power-off on pod web-power (placed on node1), healers watchdog,eviction, "
        "held 20 s, deadline 90 s" in out
    )
    assert "fault node-drain on vmi vm-drain" in out and "held until recovery" in out
    assert w.built == []  # no backend built
    assert not w.journal.path.exists() and not runs.exists() and not w.out.exists()
    assert w.backend.calls == []


def test_cli_bad_runbook_exits_2_building_nothing(fake_cli: World) -> None:
    w = fake_cli
    bad = _book(w.tmp, [{"say": "hi"}, {"run": {"path": "x.yaml", "healers": ["magic"]}}])
    code, out = _invoke([str(bad), "--yes", "--out", str(w.out)])
    assert code == 2
    assert "book.yaml" in out and "steps[1].run.healers" in out and "magic" in out
    assert w.built == [] and not w.out.exists() and not w.journal.path.exists()


def test_cli_with_lab_brings_the_lab_up_and_always_down(
    fake_cli: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = fake_cli
    calls: list[str] = []

    class Provider:
        name = "lab"

        def backend(self) -> FakeBackend:
            return w.backend

        def up(self, profile: str, nodes: int, vms: bool) -> str | None:
            calls.append(f"up {profile} {nodes} {vms}")
            return "lab up (fake)"

        def down(self) -> None:
            calls.append("down")

    monkeypatch.setattr(gameday_cli, "PROVIDER_FACTORY", lambda name: Provider())
    book = _book(w.tmp, [{"checkpoint": "go?"}], nodes=2)
    code, out = _invoke([str(book), "--with-lab", "--out", str(w.out)], input="a\n")
    assert code == gameday_cli.ABORT_EXIT
    assert calls == ["up fast 2 False", "down"]
    assert "lab up (fake)" in out


# --- a SIGKILLed game day leaves what `rto revert` clears ------------------------------

_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from fakes import FakeBackend, FakeHealer, fake_recorder_factory
    from chaos import cli, gameday_cli
    from chaos.runner import RunOptions
    from core.clock import RealClock
    clock = RealClock()
    backend = FakeBackend(clock, state_file=Path({state!r}))
    gameday_cli.BACKEND_FACTORY = lambda name: backend
    gameday_cli.OPTIONS_FACTORY = lambda: RunOptions(
        clock=clock, recorder_factory=fake_recorder_factory, metrics_period_s=None,
        healer_factory=lambda names, profile: [FakeHealer(n) for n in names])
    cli.cli(["gameday", {book!r}, "--yes", "--out", {out!r}, "--runs-dir", {runs!r}])
    """
)


def test_sigkilled_game_day_leaves_what_rto_revert_clears(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    book = _book(
        world.tmp,
        [{"say": "node1 goes dark"}, _run_step("node-power-off", duration_s=60, deadline_s=90)],
    )
    state = world.tmp / "fake.json"
    code = _CHILD.format(
        tests=str(ROOT / "tests"),
        state=str(state),
        book=str(book),
        out=str(world.out),
        runs=str(world.tmp / "runs"),
    )
    env = {**os.environ, "RTO_JOURNAL": str(world.journal.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env
    )
    lines: list[str] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line)
            # The runner says so once inject() returned: the fault acted.
            if "holding the fault" in line:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL, "".join(lines)
    assert any("holding the fault" in line for line in lines), "".join(lines)
    backend = FakeBackend(state_file=state)
    assert backend.node_state("node1")["powered"] is False
    assert [r.fault for r in world.journal.pending()] == ["node-power-off"]
    # The record of the steps done so far is on disk, unfinished.
    left = GameDayRecord.model_validate_json((world.out / GAMEDAY_FILE).read_text())
    assert (
        left.outcome is None
        and left.pending_after is None
        and [s.kind for s in left.steps] == ["say"]
    )
    assert left.journal == str(world.journal.path)
    monkeypatch.setenv("RTO_JOURNAL", str(world.journal.path))
    monkeypatch.setattr(cli, "BACKEND_FACTORY", lambda name: FakeBackend(state_file=state))
    res = CliRunner().invoke(cli.cli, ["revert"])
    assert res.exit_code == 0, res.output
    assert "reverted node-power-off on node1" in res.output
    assert FakeBackend(state_file=state).node_state("node1")["powered"] is True
    assert world.journal.pending() == []


# --- the live view and the abort key -----------------------------------------------------


def _timeline(clock: FakeClock) -> Timeline:
    tl = Timeline(origin=clock.now())
    tl.add(clock.now() + 0.1, EventKind.PROBE_OK, "prober", "", {"instance": "i1"})
    tl.add(clock.now() + 1.0, EventKind.FAULT_INJECTED, "storage-lost", "storage-lost on web")
    tl.add(clock.now() + 1.2, EventKind.PROBE_FAIL, "prober", "", {"reason": "http 503"})
    tl.add(clock.now() + 1.5, EventKind.CONTROL, "pod", "web Unhealthy")
    tl.add(clock.now() + 1.6, EventKind.LOG, "web", "a log line")
    tl.add(clock.now() + 2.0, EventKind.HEALER_ACTION, "watchdog", "restart web")
    return tl


def test_view_state_reads_probe_and_injection_from_the_timeline() -> None:
    clock = FakeClock(50.0)
    tl = _timeline(clock)
    st = view_state(tl.events(), now_t=4.0, injected_t=1.0)
    assert st.up is False and st.reason == "http 503"
    assert st.since_s == pytest.approx(2.8) and st.since_injection_s == pytest.approx(3.0)
    assert st.fails == 1
    assert [e.kind for e in st.recent][-2:] == [EventKind.CONTROL, EventKind.HEALER_ACTION]
    assert all(e.kind is not EventKind.LOG for e in st.recent)
    tl.add(clock.now() + 4.5, EventKind.PROBE_OK, "prober", "", {"instance": "i2"})
    st = view_state(tl.events(), now_t=5.0, injected_t=1.0)
    assert st.up is True and st.since_s == pytest.approx(0.5)
    assert view_state([], 1.0, None) == view_state([], 1.0, None)
    assert view_state([], 1.0, None).up is None


def test_plain_view_prints_each_event_once_relative_to_injection() -> None:
    clock = FakeClock(50.0)
    tl = _timeline(clock)
    out = io.StringIO()
    watch = StepWatch("step 2: storage", tl, clock, injected_at=lambda: 51.0)
    with PlainView(watch, out, period_s=None) as view:
        view.tick()
        view.tick()
        view.status("holding the fault 2 s")
    lines = out.getvalue().splitlines()
    assert lines[0] == "live: step 2: storage (Ctrl-C aborts)"
    assert sum("probe: DOWN (http 503)" in line for line in lines) == 1
    assert any("T+0.20 s" in line and "DOWN" in line for line in lines)
    assert any("T-0.90 s" in line and "UP (instance i1)" in line for line in lines)
    assert any("healer: watchdog restart web" in line for line in lines)
    assert any("T+0.00 s  fault: injected storage-lost on web" in line for line in lines)
    assert not any("a log line" in line for line in lines)
    assert lines[-1] == "  holding the fault 2 s"


def test_rich_view_renders_probe_clock_events_and_keys() -> None:
    clock = FakeClock(50.0)
    tl = _timeline(clock)
    clock.advance(4.0)
    out = io.StringIO()
    console = Console(file=out, width=100, color_system=None)
    watch = StepWatch("step 2: storage", tl, clock, injected_at=lambda: 51.0, keys=True)
    view = RichView(watch, console)
    console.print(view.render())
    text = out.getvalue()
    assert "probe: DOWN for 2.8 s (http 503)" in text
    assert "time since injection: 3.0 s" in text
    assert "healer: watchdog restart web" in text and "control: pod web Unhealthy" in text
    assert "[a] abort" in text
    for observing, says in ((False, "fault not injected yet"), (True, "no fault (observing)")):
        out.truncate(0)
        out.seek(0)
        before = StepWatch("s", tl, clock, injected_at=lambda: None, observing=observing)
        console.print(RichView(before, console).render())
        assert says in out.getvalue() and "Ctrl-C abort" in out.getvalue()
        assert "[a]" not in out.getvalue()  # the abort key is not armed


def test_abort_key_interrupts_the_main_thread_and_restores_the_terminal() -> None:
    master, slave = pty.openpty()
    stdin = os.fdopen(slave, "r", closefd=False)
    try:
        keys = AbortKeys(stdin)
        assert keys.available
        before = termios.tcgetattr(slave)
        woke = threading.Event()
        with pytest.raises(KeyboardInterrupt), keys.armed():
            assert not termios.tcgetattr(slave)[3] & termios.ICANON  # cbreak
            os.write(master, b"xa")
            # Interrupted at once by the key's SIGINT; the timeout only bounds a failure.
            woke.wait(timeout=30)
        assert keys.pressed
        assert termios.tcgetattr(slave) == before
        # Not a terminal: nothing to arm, nothing read.
        plain = AbortKeys(io.StringIO())
        assert not plain.available
        with plain.armed():
            pass
    finally:
        stdin.close()
        os.close(slave)
        os.close(master)


def test_abort_keys_restore_the_terminal_when_the_step_ends_normally() -> None:
    master, slave = pty.openpty()
    stdin = os.fdopen(slave, "r", closefd=False)
    try:
        keys = AbortKeys(stdin)
        before = termios.tcgetattr(slave)
        with keys.armed():
            os.write(master, b"xyz")  # other keys do nothing
        assert not keys.pressed
        assert termios.tcgetattr(slave) == before
    finally:
        stdin.close()
        os.close(slave)
        os.close(master)
