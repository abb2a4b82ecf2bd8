"""One wait for the whole harness: poll a check until it answers, on an injected clock.

Called wherever the harness waits for something to become true (a node Ready,
a daemon answering, a guest's marker, a cgroup frozen). ``poll_until`` runs
``check`` every ``interval`` seconds until it returns something other than
``None``/``False`` and returns that; after ``timeout`` seconds *of the given
clock* it raises ``WaitTimeout`` ("<what> timed out after N s"). tenacity
does the retrying, but both its sleep and its stop use the injected clock: with
a ``FakeClock`` a wait gives up after its fake timeout at once, never spinning
real seconds (tenacity's own ``stop_after_delay`` reads ``time.monotonic``).

Exceptions of the types in ``retry_on`` count as "not yet" (the last one is
chained to the timeout); any other exception propagates at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import tenacity

from core.clock import Clock, RealClock
from core.errors import HarnessError

__all__ = ["WaitTimeout", "poll_until"]

T = TypeVar("T")


class WaitTimeout(HarnessError):
    """A ``poll_until`` ran out of time; the message says what was awaited."""


def poll_until(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    clock: Clock | None = None,
    *,
    interval: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """``check()``'s first truthy-or-non-None answer; ``WaitTimeout`` after ``timeout`` s.

    ``False`` and ``None`` both mean "not yet", so a boolean check works as is
    (and returns ``True``). The check always runs at least once.
    """
    clk: Clock = clock or RealClock()
    start = clk.now()

    def out_of_time(_state: tenacity.RetryCallState) -> bool:
        return clk.now() - start >= timeout

    def not_yet(result: object) -> bool:
        return result is None or result is False

    retrying = tenacity.Retrying(
        stop=out_of_time,
        wait=tenacity.wait_fixed(interval),
        sleep=clk.sleep,
        retry=(
            tenacity.retry_if_result(not_yet) | tenacity.retry_if_exception_type(retry_on)
            if retry_on
            else tenacity.retry_if_result(not_yet)
        ),
        reraise=False,
    )
    try:
        result = retrying(check)
    except tenacity.RetryError as exc:
        last = exc.last_attempt
        cause = last.exception() if last.failed else None
        raise WaitTimeout(f"{what} timed out after {timeout:g} s") from cause
    assert not not_yet(result)  # the retry condition lets only answers through
    return result  # type: ignore[return-value]  # narrowed by the assert above
