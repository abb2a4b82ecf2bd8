"""Progress of long commands: rich on a terminal, plain lines without one.

Filled by ``chaos.campaign.run_campaign`` and ``rto run`` (one ``start_run`` /
``end_run`` pair per run, ``status`` as the runner moves through its stages);
read by a person at a terminal, or by CI and cron logs. Without a terminal a
rich live display prints nothing for minutes, so ``PlainProgress`` writes one
line when a run starts, one when it ends (status, RTO, how long it took) and a
heartbeat line with the latest stage whenever nothing was written for
``heartbeat_s``. ``tick`` does the heartbeat; a daemon thread calls it, and
tests call it on a fake clock.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import IO, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from core.clock import Clock, RealClock

__all__ = [
    "HEARTBEAT_S",
    "NullProgress",
    "PlainProgress",
    "RichProgress",
    "RunProgress",
    "make_progress",
]

HEARTBEAT_S = 30.0


class RunProgress(Protocol):
    """What a command reports while it runs experiments (a context manager)."""

    def __enter__(self) -> RunProgress: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def start_run(self, label: str) -> None:
        """Run ``label`` (experiment, repetition, cell) begins."""
        ...

    def status(self, message: str) -> None:
        """The current stage of the run ("injecting node-power-off", ...)."""
        ...

    def end_run(self, outcome: str) -> None:
        """The run ended: ``outcome`` is its status and RTO, or why it aborted."""
        ...


class NullProgress:
    """Reports nothing (library callers, tests)."""

    def __enter__(self) -> NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def start_run(self, label: str) -> None:
        return None

    def status(self, message: str) -> None:
        return None

    def end_run(self, outcome: str) -> None:
        return None


class RichProgress:
    """A bar with the current stage, as before, for a terminal."""

    def __init__(self, console: Console, title: str, total: int) -> None:
        self.title = title
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._task = self._progress.add_task(title, total=total)

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start_run(self, label: str) -> None:
        self.status(label)

    def status(self, message: str) -> None:
        self._progress.update(self._task, description=f"{self.title}: {message}")

    def end_run(self, outcome: str) -> None:
        self._progress.advance(self._task)


class PlainProgress:
    """One line per run start and end, and a heartbeat; for logs (no terminal)."""

    def __init__(
        self,
        out: IO[str],
        title: str,
        total: int,
        *,
        clock: Clock | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        thread: bool = True,
    ) -> None:
        self.out = out
        self.title = title
        self.total = total
        self.clock: Clock = clock or RealClock()
        self.heartbeat_s = heartbeat_s
        self._thread_wanted = thread
        self._lock = threading.Lock()
        self._index = 0
        self._label = ""
        self._stage = ""
        self._run_started: float | None = None
        self._last_line = self.clock.now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PlainProgress:
        if self._thread_wanted:
            self._thread = threading.Thread(
                target=self._beat, name="progress-heartbeat", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _beat(self) -> None:
        # Wakes often enough to place a heartbeat within a second of its due time.
        while not self._stop.wait(min(1.0, self.heartbeat_s)):
            self.tick()

    def _write(self, text: str) -> None:
        self.out.write(f"{self.title}: {text}\n")
        self.out.flush()
        self._last_line = self.clock.now()

    def _where(self) -> str:
        return f"run {self._index}/{self.total}"

    def start_run(self, label: str) -> None:
        with self._lock:
            self._index += 1
            self._label = label
            self._stage = "starting"
            self._run_started = self.clock.now()
            self._write(f"{self._where()} start: {label}")

    def status(self, message: str) -> None:
        with self._lock:
            self._stage = message

    def end_run(self, outcome: str) -> None:
        with self._lock:
            took = (
                ""
                if self._run_started is None
                else f" ({self.clock.now() - self._run_started:.0f} s)"
            )
            self._write(f"{self._where()} end: {outcome}{took}")
            self._run_started = None

    def tick(self) -> None:
        """Write a heartbeat if nothing was written for ``heartbeat_s``."""
        with self._lock:
            now = self.clock.now()
            if now - self._last_line < self.heartbeat_s:
                return
            if self._run_started is None:
                self._write(f"{self._where()} done, between runs")
            else:
                self._write(
                    f"{self._where()} still running after {now - self._run_started:.0f} s: "
                    f"{self._stage}"
                )


def make_progress(console: Console | None, title: str, total: int) -> RunProgress:
    """Rich on a terminal, plain lines on ``console``'s file without one, or nothing."""
    if console is None:
        return NullProgress()
    if console.is_terminal:
        return RichProgress(console, title, total)
    return PlainProgress(console.file, title, total)
