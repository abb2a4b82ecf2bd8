"""Progress without a terminal: a line per run start and end, and a heartbeat.

The heartbeat is driven by ``tick`` on a fake clock (no thread, no sleeping);
the campaign test runs the real CLI on the FakeBackend, whose output is not a
terminal under CliRunner, as under CI and cron.
"""

from __future__ import annotations

import io
from pathlib import Path

from click.testing import CliRunner
from fakes import FakeBackend
from rich.console import Console
from test_cli import ROOT, fake  # noqa: F401  (the CLI fixture)

from chaos import cli
from chaos.progress import NullProgress, PlainProgress, RichProgress, make_progress
from core.clock import FakeClock


def _plain(clock: FakeClock) -> tuple[PlainProgress, io.StringIO]:
    buf = io.StringIO()
    return PlainProgress(buf, "nightly", 2, clock=clock, heartbeat_s=30, thread=False), buf


def test_a_line_per_start_and_end_and_a_heartbeat_only_when_quiet() -> None:
    clock = FakeClock(100.0)
    progress, buf = _plain(clock)
    with progress:
        progress.start_run("pods/node-drain.yaml #0")
        progress.status("injecting node-drain")
        clock.advance(29)
        progress.tick()  # 29 s of silence: not yet
        clock.advance(2)
        progress.tick()
        progress.tick()  # a heartbeat was just written: no second one
        clock.advance(10)
        progress.end_run("recovered, RTO 1.250 s")
        clock.advance(31)
        progress.tick()
    assert buf.getvalue().splitlines() == [
        "nightly: run 1/2 start: pods/node-drain.yaml #0",
        "nightly: run 1/2 still running after 31 s: injecting node-drain",
        "nightly: run 1/2 end: recovered, RTO 1.250 s (41 s)",
        "nightly: run 1/2 done, between runs",
    ]


def test_the_heartbeat_thread_stops_with_the_context() -> None:
    progress = PlainProgress(io.StringIO(), "t", 1, heartbeat_s=0.01)
    with progress:
        assert progress._thread is not None and progress._thread.is_alive()
    assert not progress._thread.is_alive()


def test_rich_on_a_terminal_plain_without_one_nothing_without_a_console() -> None:
    tty = Console(file=io.StringIO(), force_terminal=True)
    pipe = Console(file=io.StringIO(), force_terminal=False)
    assert isinstance(make_progress(tty, "c", 3), RichProgress)
    assert isinstance(make_progress(pipe, "c", 3), PlainProgress)
    assert isinstance(make_progress(None, "c", 3), NullProgress)


def test_campaign_without_a_terminal_prints_each_run(
    fake: FakeBackend,  # noqa: F811
    tmp_path: Path,
) -> None:
    res = CliRunner().invoke(
        cli.cli,
        ["campaign", str(ROOT / "experiments/campaigns/smoke.yaml"), "--runs-dir", str(tmp_path)],
    )
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("smoke: run ")]
    starts = [line for line in lines if " start: " in line]
    ends = [line for line in lines if " end: " in line]
    assert [s.split(" start: ")[0] for s in starts] == [f"smoke: run {i}/3" for i in (1, 2, 3)]
    assert starts[0].endswith(
        "process-crash.yaml #0 (process-crash on pod web-crash, profile fast, "
        "healers watchdog,eviction)"
    )
    assert all(" end: recovered, RTO " in e for e in ends) and len(ends) == 3
