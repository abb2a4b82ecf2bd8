"""What a healer is, what it gets, and the loop most healers run.

A healer recovers workloads while a fault is in place (the watchdog restarts
what crashed, the eviction healer moves workloads off a lost node, ...). The
runner builds the selected healers (``healers.registry.build_healers``), gives
each a ``HealerContext`` (the backend, the run's target workloads, a way to put
a HEALER_ACTION on the run's timeline, the run's clock), calls ``start`` before
the fault is injected and ``stop`` after it is reverted (in a ``finally``).

Healers read the backend and act through it only; they never write results:
what they did goes onto the timeline through ``ctx.record`` so RTO and reports
are computed from events, not from healer objects.

``LoopHealer`` is the base most healers use: one daemon thread that calls
``step()`` every ``period`` seconds of the context's clock until ``stop``. An
exception in ``step`` ends the loop, is recorded on the timeline at once and is
raised again from ``stop()``: a healer that died must fail the run, not leave
a run that silently measured "no healing".
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from chaos.journal import Journal
from cluster.api import Backend
from core.clock import Clock
from core.errors import HarnessError

__all__ = ["Healer", "HealerContext", "LoopHealer", "Recorder"]

# record(healer name, message, data): puts one HEALER_ACTION on the run's timeline.
Recorder = Callable[[str, str, dict[str, str]], None]

# Longest single clock.sleep of the loop: stop() is honoured within this time
# even when the healer's period is long (kubernetes-defaults periods are seconds).
_STOP_SLICE = 0.1


@dataclass(frozen=True)
class HealerContext:
    """Everything a healer gets from the runner for one run."""

    backend: Backend
    workloads: list[str]  # the run's targets: the only workloads a healer may act on
    record: Recorder
    clock: Clock
    # Where a healer journals cluster changes it must undo (a fence), so a
    # SIGKILLed harness leaves none behind: `rto revert` replays them.
    journal: Journal | None = None


@runtime_checkable
class Healer(Protocol):
    """The contract between the runner and a healer.

    ``start`` returns at once (work happens in the healer's own thread);
    ``stop`` undoes whatever ``start`` switched on, joins the thread, is
    idempotent, and raises the error that ended the healer's loop, if any.
    """

    name: str

    def start(self, ctx: HealerContext) -> None: ...

    def stop(self) -> None: ...


class LoopHealer:
    """Base class: ``step()`` every ``period`` seconds on the context's clock.

    Subclasses set ``name``, implement ``step`` and may override ``on_start``
    (runs in the caller's thread before the loop starts; may raise) and
    ``on_stop`` (runs in ``stop`` after the loop ended, also after a failure, to
    undo what ``on_start`` did). ``step`` is public so timing tests can drive it
    on a FakeClock without a thread.
    """

    name: str = "healer"

    def __init__(self, period: float) -> None:
        if period <= 0:
            raise HarnessError(f"healer {self.name!r}: period must be > 0 s, got {period}")
        self.period = period
        self._ctx: HealerContext | None = None
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stopped = False

    # --- what subclasses fill -----------------------------------------------
    def on_start(self, ctx: HealerContext) -> None:
        """Called once by ``start`` before the loop; the default does nothing."""

    def step(self) -> None:
        """One round of watching/acting; raise to end the healer (and fail the run)."""
        raise NotImplementedError

    def on_stop(self) -> None:
        """Called once by ``stop`` after the loop ended; the default does nothing."""

    # --- lifecycle ------------------------------------------------------------
    @property
    def ctx(self) -> HealerContext:
        if self._ctx is None:
            raise HarnessError(f"healer {self.name!r} used before start()")
        return self._ctx

    def prepare(self, ctx: HealerContext) -> None:
        """Bind the context and run ``on_start``, without a thread.

        ``start`` does this and then runs the loop; timing tests call it and
        drive ``step`` themselves on a FakeClock.
        """
        if self._ctx is not None:
            raise HarnessError(f"healer {self.name!r} started twice; build a new one per run")
        self._ctx = ctx
        self.on_start(ctx)

    def start(self, ctx: HealerContext) -> None:
        self.prepare(ctx)
        self._thread = threading.Thread(target=self._run, name=f"healer-{self.name}", daemon=True)
        self._thread.start()

    def record(self, message: str, **data: str) -> None:
        """Put one HEALER_ACTION of this healer on the run's timeline."""
        self.ctx.record(self.name, message, data)

    def _run(self) -> None:
        clock = self.ctx.clock
        try:
            while not self._stop_event.is_set():
                self.step()
                self._sleep(clock)
        except BaseException as exc:  # kept for stop(): the run must fail with it
            self._error = exc
            # Recorded at once too: the timeline shows when the healer died, which
            # explains an RTO measured without healing.
            try:
                self.record(f"healer failed: {exc!r}", error=type(exc).__name__)
            except BaseException as rec_exc:  # the recorder itself failed: keep both
                exc.__context__ = rec_exc

    def _sleep(self, clock: Clock) -> None:
        # Sliced so stop() does not wait a whole long period; each slice goes
        # through the injected clock (FakeClock in tests advances instantly).
        deadline = clock.now() + self.period
        while not self._stop_event.is_set():
            left = deadline - clock.now()
            if left <= 0:
                return
            clock.sleep(min(left, _STOP_SLICE))

    def stop(self, timeout: float = 10.0) -> None:
        """End the loop, undo ``on_start``, raise the loop's error if it died."""
        if self._stopped or self._ctx is None:
            self._stopped = True
            return
        self._stopped = True
        self._stop_event.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        try:
            self.on_stop()
        finally:
            if thread is not None and thread.is_alive():
                raise HarnessError(
                    f"healer {self.name!r} did not stop within {timeout:g} s "
                    "(a backend call is probably hanging)"
                ) from self._error
            if self._error is not None:
                raise self._error
