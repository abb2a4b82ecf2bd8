"""The game day's terminal: the live view, the abort key, and the room's prompts.

Made by ``rto gameday`` (``chaos.gameday_cli``) and handed to
``chaos.gameday.session``, which opens a view around every ``run`` and
``observe`` step, arms the abort key for as long, and asks the room through a
``Room`` at ``say``, ``checkpoint`` and ``note`` steps. Read by the people in
the room, or by a CI log:

- on a terminal, ``RichView`` is a rich ``Live`` panel refreshed four times a
  second from the step's ``Timeline``: the probe up or down (from the
  prober's transitions) and for how long, the time since injection, the
  runner's stage, the latest control-plane events, healer actions and fault
  events as they arrive, and the keys; each stage is also printed above it,
  so the scroll-back keeps the story;
- without one, ``PlainView`` prints one line per new event instead (a
  daemon thread ticks it; tests tick it by hand on a fake clock);
- ``AbortKeys`` puts the terminal in cbreak mode while armed and reads keys
  on a thread; the abort key (``a``) sends SIGINT to the main thread, which
  then aborts exactly as Ctrl-C does. The terminal's mode is always restored.

Everything here only reads the timeline: the view never changes a run.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from core.clock import Clock
from core.timeline import EventKind, Timeline, TimelineEvent

__all__ = [
    "ABORT_KEY",
    "AbortKeys",
    "NullView",
    "PlainView",
    "RehearsalRoom",
    "RichView",
    "Room",
    "StepView",
    "StepWatch",
    "TerminalRoom",
    "ViewFactory",
    "ViewState",
    "describe_event",
    "make_view_factory",
    "view_state",
]

ABORT_KEY = "a"
REHEARSAL_NOTE = "(rehearsal: no note typed)"

# What the view lists as it arrives; probe transitions have their own line,
# LOG lines and the runner's MARKs would drown the control plane.
_SHOWN = frozenset(
    {
        EventKind.CONTROL,
        EventKind.HEALER_ACTION,
        EventKind.FAULT_INJECTED,
        EventKind.FAULT_REVERTED,
        EventKind.PROBE_FAIL,
        EventKind.PROBE_OK,
    }
)
_LABEL = {
    EventKind.CONTROL: "control",
    EventKind.HEALER_ACTION: "healer",
    EventKind.FAULT_INJECTED: "fault",
    EventKind.FAULT_REVERTED: "revert",
    EventKind.PROBE_FAIL: "probe",
    EventKind.PROBE_OK: "probe",
}


# --- what a view shows ---------------------------------------------------------------


@dataclass(frozen=True)
class StepWatch:
    """What a view watches: one step's timeline on the game day's clock.

    ``injected_at`` answers the monotonic time of the injection (None before,
    and always for an observe step).
    """

    title: str
    timeline: Timeline
    clock: Clock
    injected_at: Callable[[], float | None]
    keys: bool = False  # the abort key is armed (else only Ctrl-C is shown)
    observing: bool = False  # an observe step: no fault will be injected


@dataclass(frozen=True)
class ViewState:
    """One frame of the live view, computed from the timeline alone."""

    up: bool | None  # None: no probe answered or failed yet
    since_s: float | None  # how long the probe has been in that state
    reason: str  # the last failed probe's reason ("timeout", "http 503")
    since_injection_s: float | None
    recent: tuple[TimelineEvent, ...]  # newest last
    fails: int  # probe failures seen (transitions to down) in this step


def view_state(
    events: Sequence[TimelineEvent], now_t: float, injected_t: float | None, last: int = 8
) -> ViewState:
    """The frame at ``now_t`` (seconds of the timeline); ``last`` recent events."""
    up: bool | None = None
    since: float | None = None
    reason = ""
    fails = 0
    for ev in events:
        if ev.kind is EventKind.PROBE_OK:
            up, since = True, ev.t
        elif ev.kind is EventKind.PROBE_FAIL:
            up, since = False, ev.t
            reason = ev.data.get("reason", "") or ev.message
            fails += 1
    shown = tuple(ev for ev in events if ev.kind in _SHOWN)[-last:]
    return ViewState(
        up=up,
        since_s=None if since is None else max(0.0, now_t - since),
        reason=reason,
        since_injection_s=None if injected_t is None else max(0.0, now_t - injected_t),
        recent=shown,
        fails=fails,
    )


def _rel(t: float, injected_t: float | None) -> str:
    """T+3.20 s after injection, T-1.00 s before; +t since the step began without one."""
    if injected_t is None:
        return f"{t:+.2f} s"
    d = t - injected_t
    return f"T{'+' if d >= 0 else '-'}{abs(d):.2f} s"


def describe_event(ev: TimelineEvent) -> str:
    """One line for an event: what, from where."""
    label = _LABEL.get(ev.kind, ev.kind.value)
    if ev.kind is EventKind.PROBE_FAIL:
        why = ev.data.get("reason", "") or ev.message
        return f"{label}: DOWN" + (f" ({why})" if why else "")
    if ev.kind is EventKind.PROBE_OK:
        instance = ev.data.get("instance", "")
        return f"{label}: UP" + (f" (instance {instance})" if instance else "")
    if ev.kind is EventKind.FAULT_INJECTED:
        return f"{label}: injected {ev.message or ev.source}"
    if ev.kind is EventKind.FAULT_REVERTED:
        took = ev.data.get("revert_s")
        return f"{label}: reverted {ev.message or ev.source}" + (f" ({took} s)" if took else "")
    text = ev.message or ", ".join(f"{k}={v}" for k, v in sorted(ev.data.items()))
    return f"{label}: {ev.source + ' ' if ev.source else ''}{text}".rstrip()


def _injected_t(watch: StepWatch) -> float | None:
    at = watch.injected_at()
    return None if at is None else at - watch.timeline.origin


# --- views -----------------------------------------------------------------------------


class StepView(Protocol):
    """A view open around one run or observe step (a context manager)."""

    def __enter__(self) -> StepView: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def status(self, message: str) -> None:
        """The runner's stage ("injected storage-lost on web-eio", ...)."""
        ...


ViewFactory = Callable[[StepWatch], StepView]


class NullView:
    """Shows nothing (library callers, tests that look at the record only)."""

    def __init__(self, watch: StepWatch | None = None) -> None:
        self.messages: list[str] = []

    def __enter__(self) -> NullView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def status(self, message: str) -> None:
        self.messages.append(message)


class PlainView:
    """Plain lines for CI logs: every stage, and every new event at each ``tick``.

    A daemon thread ticks every ``period_s`` real seconds while open (unless
    ``period_s`` is None: then only ``tick()`` and the close print events).
    """

    def __init__(self, watch: StepWatch, out: IO[str], period_s: float | None = 0.5) -> None:
        self.watch = watch
        self.out = out
        self.period_s = period_s
        self._printed: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def tick(self) -> None:
        """Print the events that arrived since the last tick."""
        with self._lock:
            events = self.watch.timeline.events()
            injected_t = _injected_t(self.watch)
            # The timeline is sorted by t and a late-stamped event can land
            # before ones already printed: remember each by identity (the
            # timeline keeps its event objects), so none is printed twice.
            for ev in events:
                if ev.kind in _SHOWN and id(ev) not in self._printed:
                    self._printed.add(id(ev))
                    self._write(f"  {_rel(ev.t, injected_t):>10}  {describe_event(ev)}")

    def status(self, message: str) -> None:
        self.tick()
        self._write(f"  {message}")

    def _loop(self) -> None:
        assert self.period_s is not None
        while not self._stop.wait(self.period_s):
            self.tick()

    def __enter__(self) -> PlainView:
        keys = f"{ABORT_KEY} or Ctrl-C aborts" if self.watch.keys else "Ctrl-C aborts"
        self._write(f"live: {self.watch.title} ({keys})")
        if self.period_s is not None:
            self._thread = threading.Thread(target=self._loop, name="gameday-view", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.tick()


class RichView:
    """The rich ``Live`` panel on a terminal (see the module docstring)."""

    def __init__(self, watch: StepWatch, console: Console, refresh_per_second: float = 4) -> None:
        self.watch = watch
        self.console = console
        self._status = "starting"
        self._live = Live(
            get_renderable=self.render,
            console=console,
            refresh_per_second=refresh_per_second,
            transient=False,
        )

    def status(self, message: str) -> None:
        self._status = message
        # Above the panel, so the scroll-back keeps each stage.
        self.console.print(Text(f"  {message}"), highlight=False)

    def render(self) -> RenderableType:
        w = self.watch
        now_t = w.clock.now() - w.timeline.origin
        injected_t = _injected_t(w)
        st = view_state(w.timeline.events(), now_t, injected_t)
        if st.up is None:
            probe = Text("probe: waiting for the first answer", style="yellow")
        else:
            word, style = ("UP", "bold green") if st.up else ("DOWN", "bold red")
            probe = Text.assemble("probe: ", (word, style))
            if st.since_s is not None:
                probe.append(f" for {st.since_s:.1f} s")
            if not st.up and st.reason:
                probe.append(f" ({st.reason})")
        if st.since_injection_s is not None:
            clock = Text(f"time since injection: {st.since_injection_s:.1f} s", style="bold")
        else:
            clock = Text("no fault (observing)" if w.observing else "fault not injected yet")
        table = Table(show_header=False, box=None, pad_edge=False, expand=True)
        table.add_column("t", justify="right", no_wrap=True, style="dim", width=11)
        table.add_column("event", overflow="fold")
        for ev in st.recent:
            style = {
                EventKind.HEALER_ACTION: "cyan",
                EventKind.FAULT_INJECTED: "magenta",
                EventKind.FAULT_REVERTED: "magenta",
                EventKind.PROBE_FAIL: "red",
                EventKind.PROBE_OK: "green",
            }.get(ev.kind, "")
            table.add_row(_rel(ev.t, injected_t), Text(describe_event(ev), style=style))
        if not st.recent:
            table.add_row("", Text("no events yet", style="dim"))
        keys = f"[{ABORT_KEY}] abort · Ctrl-C abort" if w.keys else "Ctrl-C abort"
        return Panel(
            Group(Text.assemble(probe, "   ", clock), Text(self._status, style="dim"), table),
            # Text, not str: rich would read "[a]" (or brackets in a title) as markup.
            title=Text(w.title),
            subtitle=Text(keys),
            border_style="red" if st.up is False else "blue",
        )

    def __enter__(self) -> RichView:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()


def make_view_factory(console: Console) -> ViewFactory:
    """A rich panel when ``console`` is a terminal, plain lines otherwise."""
    if console.is_terminal:
        return lambda watch: RichView(watch, console)
    return lambda watch: PlainView(watch, console.file)


# --- the abort key ---------------------------------------------------------------------


class AbortKeys:
    """Reads keys from a terminal while armed; the abort key interrupts the main thread.

    ``armed()`` sets cbreak mode (keys arrive one by one, unechoed; Ctrl-C still
    raises SIGINT), starts a reader thread, and on leaving stops it and
    restores the terminal's mode whatever happened. ``pressed`` tells an abort
    by key from a Ctrl-C. Not a terminal: ``armed()`` does nothing.
    """

    def __init__(self, stdin: IO[str] | None = None, key: str = ABORT_KEY) -> None:
        stream = stdin if stdin is not None else sys.stdin
        try:
            self.fd: int | None = stream.fileno() if stream.isatty() else None
        except (OSError, ValueError):  # a closed or fake stream: no keys
            self.fd = None
        self.key = key
        self.pressed = False
        self._main = threading.main_thread().ident

    @property
    def available(self) -> bool:
        return self.fd is not None

    def _interrupt(self) -> None:
        self.pressed = True
        # A real SIGINT to the main thread, not _thread.interrupt_main(): the
        # simulated one waits until the main thread runs Python again, and a
        # run holding a fault sits in one long sleep or lock wait; a delivered
        # signal ends those at once (EINTR) and raises KeyboardInterrupt.
        assert self._main is not None
        signal.pthread_kill(self._main, signal.SIGINT)

    def _read(self, fd: int, wake: int) -> None:
        while True:
            ready, _, _ = select.select([fd, wake], [], [])
            if wake in ready:
                return
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data:
                return  # the terminal went away
            if self.key.encode() in data.lower():
                self._interrupt()
                return  # one abort; the cleanup must not be interrupted twice

    @contextmanager
    def armed(self) -> Iterator[None]:
        if self.fd is None:
            yield
            return
        fd = self.fd
        saved = termios.tcgetattr(fd)
        wake_r, wake_w = os.pipe()
        reader = threading.Thread(
            target=self._read, args=(fd, wake_r), name="gameday-keys", daemon=True
        )
        try:
            tty.setcbreak(fd, termios.TCSANOW)
            reader.start()
            yield
        finally:
            os.write(wake_w, b"x")
            reader.join(timeout=5)
            os.close(wake_w)
            os.close(wake_r)
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


# --- the room --------------------------------------------------------------------------


class Room(Protocol):
    """The people running the game day: what they are told and what they answer."""

    rehearsal: bool

    def show(self, line: str) -> None:
        """A line of the game day itself (step headers, results)."""
        ...

    def say(self, text: str) -> None:
        """Text to read out to the room."""
        ...

    def confirm(self, prompt: str) -> str:
        """Return once confirmed ("person" or "rehearsal"); an abort raises KeyboardInterrupt."""
        ...

    def note(self, prompt: str) -> str:
        """The text typed in answer to ``prompt``."""
        ...


class RehearsalRoom:
    """``--yes``: nobody is asked; checkpoints pass, notes get a fixed text."""

    rehearsal = True

    def __init__(self, console: Console) -> None:
        self.console = console

    def _print(self, text: Text) -> None:
        # Soft-wrapped: a terminal wraps it, a CI log keeps each line whole.
        self.console.print(text, highlight=False, soft_wrap=True)

    def show(self, line: str) -> None:
        self._print(Text(line))

    def say(self, text: str) -> None:
        self._print(Text.assemble(("SAY ", "bold"), text))

    def confirm(self, prompt: str) -> str:
        self._print(
            Text.assemble(("CHECKPOINT ", "bold"), prompt, (" (rehearsal: skipped)", "dim"))
        )
        return "rehearsal"

    def note(self, prompt: str) -> str:
        self._print(Text.assemble(("NOTE ", "bold"), prompt, (f" {REHEARSAL_NOTE}", "dim")))
        return REHEARSAL_NOTE


class TerminalRoom(RehearsalRoom):
    """A person at the terminal: Enter confirms, ``a`` then Enter aborts."""

    rehearsal = False

    def __init__(self, console: Console, stdin: IO[str] | None = None) -> None:
        super().__init__(console)
        self.stdin = stdin if stdin is not None else sys.stdin

    def _line(self, prompt: str, closed: str) -> str:
        self.console.print(Text(prompt), end="", highlight=False)
        self.console.file.flush()
        line = self.stdin.readline()
        if not line:
            # Nobody can answer (stdin closed, a pipe ran dry): stop, revert.
            raise KeyboardInterrupt(f"stdin closed at {closed} (use --yes to rehearse)")
        return line.rstrip("\r\n")

    def confirm(self, prompt: str) -> str:
        self._print(Text.assemble(("CHECKPOINT ", "bold"), prompt))
        answer = self._line(f"  Enter to go on, {ABORT_KEY} then Enter to abort: ", "a checkpoint")
        if answer.strip().lower() == ABORT_KEY:
            raise KeyboardInterrupt("aborted at the checkpoint")
        return "person"

    def note(self, prompt: str) -> str:
        self._print(Text.assemble(("NOTE ", "bold"), prompt))
        return self._line("  > ", "a note").strip()
