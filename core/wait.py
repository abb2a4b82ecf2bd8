"""One wait for the whole harness: poll a check until it answers, on an injected clock.

Called wherever the harness waits for something to become true (a node Ready,
a daemon answering, a guest's marker, a cgroup frozen); read by nobody else.
``poll_until`` runs ``check`` every ``interval`` seconds until it returns
something other than ``None``/``False`` and returns that; once ``timeout``
seconds *of the given clock* have passed it raises ``WaitTimeout`` ("timed out
after N s waiting for <what>"). tenacity does the retrying, but its sleep and
its stop both use the injected clock: with a ``FakeClock`` a wait gives up
after its fake timeout at once, never spinning real seconds (tenacity's own
``stop_after_delay`` reads ``time.monotonic`` whatever sleep it is given).

Retry loops that are not "poll until true" (a back-off on a refused request)
keep their own ``tenacity.Retrying`` and stop with ``stop_after(clock, s)``,
the same clock-bound stop ``poll_until`` uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import tenacity
from tenacity.retry import retry_base
from tenacity.stop import stop_base

from core.clock import Clock, RealClock
from core.errors import HarnessError

if TYPE_CHECKING:
    from tenacity import RetryCallState

__all__ = ["WaitTimeout", "poll_until", "stop_after"]

T = TypeVar("T")


class WaitTimeout(HarnessError):
    """A ``poll_until`` ran out of time; the message says what was awaited.

    When the last check raised one of ``retry_on``, that exception is the
    ``__cause__``.
    """


class stop_after(stop_base):  # lower case, like tenacity's own strategies
    """Stop once ``seconds`` of ``clock`` have passed since this strategy was made.

    The deadline is fixed at construction, so make one per wait (a
    ``Retrying`` reused for several calls would share it). Composes with
    tenacity's other stops through ``|`` and ``&``.
    """

    def __init__(self, clock: Clock, seconds: float) -> None:
        self.clock = clock
        self.deadline = clock.now() + seconds

    def remaining(self) -> float:
        """Seconds of the clock left before the deadline (never negative)."""
        return max(0.0, self.deadline - self.clock.now())

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock.now() >= self.deadline


def _not_yet(result: object) -> bool:
    return result is None or result is False


def poll_until(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    clock: Clock | None = None,
    *,
    interval: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """``check()``'s first answer other than ``None``/``False``; ``WaitTimeout`` after ``timeout``.

    - ``False`` and ``None`` both mean "not yet", so a boolean check works as
      is (and returns ``True``).
    - The check always runs at least once, and once more at the deadline: the
      last sleep is cut to what is left, so a wait never overshoots its
      timeout by up to an ``interval``.
    - An exception of a type in ``retry_on`` also means "not yet"; if the
      last check raised one, it is chained to the ``WaitTimeout``. Any other
      exception propagates at once.
    - ``clock`` (default: the real one) is both slept on and read for the
      timeout; ``what`` completes "waiting for ...".
    """
    clk: Clock = clock or RealClock()
    stop = stop_after(clk, timeout)
    retry: retry_base = tenacity.retry_if_result(_not_yet)
    if retry_on:
        retry = retry | tenacity.retry_if_exception_type(retry_on)
    retrying = tenacity.Retrying(
        stop=stop,
        wait=lambda _state: min(interval, stop.remaining()),
        sleep=clk.sleep,
        retry=retry,
    )
    try:
        result = retrying(check)
    except tenacity.RetryError as exc:
        last = exc.last_attempt
        cause = last.exception() if last.failed else None
        raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}") from cause
    assert result is not None  # the retry condition lets only answers through
    return result
