"""``rto gameday RUNBOOK``: a guided game day from a runbook, then its report.

An entry point like ``chaos.cli`` (which adds this command to ``rto``): it
loads and validates the runbook (``chaos.gameday.runbook``; a bad one exits 2
with one paragraph and nothing built), prints the plan with ``--dry-run``
(nothing built, changed, journaled or stored), or builds the backend (with
``--with-lab`` the lab is brought up before and always down after, as ``rto
campaign --with-lab`` does), runs the steps (``chaos.gameday.session``) with
the terminal's view, prompts and abort key (``chaos.gameday.live``), and
writes the report (``reports.gameday``: gameday.html and gameday.md beside
gameday.json). Exit 0 when every step ran, 130 after an abort (every fault
reverted), 2 when a step failed or a fault could not be reverted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console

from chaos.backends import get_backend, get_provider
from chaos.gameday.live import AbortKeys, RehearsalRoom, TerminalRoom, make_view_factory
from chaos.gameday.record import GAMEDAY_FILE, GameDayOutcome, GameDayRecord
from chaos.gameday.runbook import Runbook, load_runbook, plan_lines
from chaos.gameday.session import GameDay
from chaos.results import ResultsStore
from chaos.runner import RunOptions
from cluster.api import Backend, BackendProvider
from core.errors import HarnessError

__all__ = ["ABORT_EXIT", "default_out_dir", "gameday_cmd"]

ABORT_EXIT = 130  # what a shell reports for a command ended by Ctrl-C

# Injection points for tests (FakeBackend, fake recorder and clock, a fake lab
# provider); read at call time so a test can monkeypatch them.
BACKEND_FACTORY: Callable[[str], Backend] = get_backend
OPTIONS_FACTORY: Callable[[], RunOptions] = RunOptions
PROVIDER_FACTORY: Callable[[str], BackendProvider] = get_provider


def default_out_dir(runbook: Runbook, now: datetime | None = None) -> Path:
    """``reports/gameday-<name>-<UTC stamp>``: one directory per game day."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return Path("reports") / f"gameday-{runbook.name}-{stamp}"


def _first_profile(runbook: Runbook) -> str:
    """The profile the lab comes up with: the first run's, the runbook's, else fast."""
    for exp in runbook.experiments.values():
        if exp.rto.profile:
            return exp.rto.profile
    return runbook.spec.profile or "fast"


def _write_report(record: GameDayRecord, out_dir: Path) -> list[Path]:
    # The report's renderers (and their dependencies) load only when a game
    # day is over; reports sits above chaos, the entry point may import it.
    from reports.gameday import write_gameday_report

    return write_gameday_report(record, out_dir)


def _play(
    runbook: Runbook,
    out_dir: Path,
    runs_dir: Path,
    yes: bool,
    console: Console,
) -> tuple[GameDayRecord, list[str]]:
    backend = BACKEND_FACTORY(runbook.spec.backend)
    try:
        stdin = sys.stdin  # read at call time: click's test runner swaps it
        room = RehearsalRoom(console) if yes else TerminalRoom(console, stdin)
        keys = AbortKeys(stdin)
        gameday = GameDay(
            runbook,
            backend,
            ResultsStore(runs_dir),
            out_dir,
            room=room,
            backend_factory=BACKEND_FACTORY,
            options=OPTIONS_FACTORY(),
            view_factory=make_view_factory(console),
            keys=keys if keys.available else None,
        )
        return gameday.run(), gameday.problems
    finally:
        # Its watches and connections end before the cluster they talk to goes.
        close: Callable[[], None] | None = getattr(backend, "close", None)
        if close is not None:
            close()


@click.command("gameday", help="Run a game-day runbook (say, run, checkpoint, observe, note).")
@click.argument("runbook_path", metavar="RUNBOOK", type=click.Path(path_type=Path))
@click.option("--yes", is_flag=True, help="rehearsal: skip checkpoints, notes get a fixed text")
@click.option("--dry-run", is_flag=True, help="print the whole plan; build and change nothing")
@click.option("--with-lab", is_flag=True, help="bring the lab up before and down after")
@click.option(
    "--out",
    "out_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="where gameday.json and the report go (default reports/gameday-<name>-<UTC stamp>)",
)
@click.option(
    "--runs-dir",
    default=Path("runs"),
    show_default=True,
    type=click.Path(path_type=Path),
    help="the results store each run step appends its row to",
)
def gameday_cmd(
    runbook_path: Path,
    yes: bool,
    dry_run: bool,
    with_lab: bool,
    out_dir: Path | None,
    runs_dir: Path,
) -> None:
    runbook = load_runbook(runbook_path)  # SpecError -> exit 2, nothing built
    if dry_run:
        # Plain echo: rich would read "[...]" in the plan's text as markup.
        for line in plan_lines(runbook):
            click.echo(line)
        click.echo("dry run: nothing was built, changed, journaled or stored")
        return
    console = Console()
    target = out_dir or default_out_dir(runbook)
    spec = runbook.spec
    provider = PROVIDER_FACTORY(spec.backend) if with_lab else None
    if provider is not None:
        note = provider.up(_first_profile(runbook), spec.nodes, spec.vms)
        if note is not None:
            click.echo(note)
    try:
        record, problems = _play(runbook, target, runs_dir, yes, console)
    finally:
        if provider is not None:
            provider.down()
    written = _write_report(record, target)
    console.print(
        f"game day {record.name}: {record.outcome.value if record.outcome else 'unfinished'}; "
        f"record {target / GAMEDAY_FILE}, report " + ", ".join(str(p) for p in written),
        highlight=False,
        soft_wrap=True,
    )
    if problems:
        raise HarnessError(f"game day {record.name}: " + "; ".join(problems))
    if record.outcome is GameDayOutcome.FAILED:
        failed = next((s for s in record.steps if s.error), None)
        where = f"step {failed.index + 1} ({failed.kind}): {failed.error}" if failed else "a step"
        raise HarnessError(
            f"game day {record.name} failed at {where}; every fault was reverted (see the report)"
        )
    if record.outcome is GameDayOutcome.ABORTED:
        click.get_current_context().exit(ABORT_EXIT)
