"""core.wait on a fake clock: a wait gives up after its fake timeout without real time.

The waits of the harness sleep on an injected clock; they must also *stop* on
it. With ``FakeClock`` (whose sleep advances fake time at once) a check that
never answers times out after its fake timeout in a few milliseconds of real
time, never spinning for the timeout in real seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import tenacity

from cluster.lab import state, virt
from core.clock import FakeClock
from core.errors import LabError
from core.wait import WaitTimeout, poll_until, stop_after


class Counter:
    """A check that answers ``answer`` from its ``n``-th call on (never if n is 0)."""

    def __init__(self, n: int = 0, answer: object = "done", not_yet: object = None) -> None:
        self.n, self.answer, self.not_yet = n, answer, not_yet
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        return self.answer if self.n and self.calls >= self.n else self.not_yet


def test_never_true_gives_up_after_its_fake_timeout_without_real_time() -> None:
    clock = FakeClock(1000.0)
    check = Counter()
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"timed out after 30 s waiting for the moon"):
        poll_until(check, 30.0, "the moon", clock, interval=0.1)
    real = time.monotonic() - t0
    print(f"\nFIGURE fake 30 s wait, 0.1 s interval: {real * 1000:.1f} ms real")
    assert real < 1.0
    assert clock.now() == pytest.approx(1030.0)  # stopped at the deadline, not past it
    assert abs(check.calls - 301) <= 2  # every 0.1 s from 0 to 30 s inclusive


def test_last_sleep_is_cut_to_the_deadline() -> None:
    clock = FakeClock()
    check = Counter()
    with pytest.raises(WaitTimeout):
        poll_until(check, 6.0, "x", clock, interval=5.0)
    assert check.calls == 3  # at 0, 5 and 6 s
    assert clock.now() == pytest.approx(6.0)


def test_zero_timeout_checks_once() -> None:
    check = Counter()
    with pytest.raises(WaitTimeout, match="after 0 s"):
        poll_until(check, 0.0, "x", FakeClock())
    assert check.calls == 1


def test_answer_on_the_nth_call_is_returned() -> None:
    clock = FakeClock()
    check = Counter(n=5, answer={"node": "n1"})
    assert poll_until(check, 10.0, "x", clock, interval=0.5) == {"node": "n1"}
    assert check.calls == 5
    assert clock.now() == pytest.approx(2.0)


@pytest.mark.parametrize("not_yet", [None, False])
def test_false_and_none_mean_not_yet(not_yet: object) -> None:
    check = Counter(n=3, answer=True, not_yet=not_yet)
    assert poll_until(check, 10.0, "x", FakeClock()) is True
    assert check.calls == 3


def test_falsy_answers_other_than_false_and_none_count() -> None:
    for answer in (0, "", []):
        assert poll_until(lambda a=answer: a, 1.0, "x", FakeClock()) == answer  # type: ignore[misc]


def test_retry_on_exceptions_are_not_yet_and_chained() -> None:
    calls = 0

    def check() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise ConnectionRefusedError(f"refused #{calls}")
        return "up"

    assert poll_until(check, 10.0, "x", FakeClock(), retry_on=(OSError,)) == "up"

    def never() -> str:
        raise ConnectionRefusedError("still refused")

    with pytest.raises(WaitTimeout, match="waiting for the daemon") as info:
        poll_until(never, 1.0, "the daemon", FakeClock(), retry_on=(OSError,))
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert str(info.value.__cause__) == "still refused"


def test_a_not_yet_answer_after_an_exception_is_not_chained() -> None:
    calls = 0

    def check() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("first")

    with pytest.raises(WaitTimeout) as info:
        poll_until(check, 1.0, "x", FakeClock(), retry_on=(OSError,))
    assert info.value.__cause__ is None


def test_other_exceptions_propagate_at_once() -> None:
    calls = 0

    def check() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("broken")

    clock = FakeClock()
    with pytest.raises(ValueError, match="broken"):
        poll_until(check, 10.0, "x", clock, retry_on=(OSError,))
    assert calls == 1
    assert clock.now() == 0.0


def test_stop_after_stops_a_backoff_on_the_injected_clock() -> None:
    clock = FakeClock()
    attempts = 0

    def refused() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("429")

    t0 = time.monotonic()
    with pytest.raises(ConnectionError):
        tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(ConnectionError),
            stop=stop_after(clock, 60.0),
            wait=tenacity.wait_exponential(multiplier=0.5, max=5),
            sleep=clock.sleep,
            reraise=True,
        )(refused)
    assert time.monotonic() - t0 < 1.0
    assert 60.0 <= clock.now() < 65.0
    assert attempts > 10


def test_stop_after_composes_like_tenacity_stops() -> None:
    clock = FakeClock()
    stop = stop_after(clock, 100.0) | tenacity.stop_after_attempt(3)
    attempts = 0

    def fail() -> None:
        nonlocal attempts
        attempts += 1
        raise OSError

    with pytest.raises(OSError):
        tenacity.Retrying(stop=stop, sleep=clock.sleep, reraise=True)(fail)
    assert attempts == 3


def test_wait_console_gives_up_on_the_fake_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A converted site: the console wait of a VMI that never prints its marker.
    monkeypatch.setattr(state, "STATE_DIR", tmp_path)
    clock = FakeClock()
    t0 = time.monotonic()
    with pytest.raises(LabError, match=r"did not print 'READY' within 90 s"):
        virt.wait_console("vm-quiet", "READY", timeout=90.0, clock=clock)
    assert time.monotonic() - t0 < 1.0
    assert clock.now() == pytest.approx(90.0)

    log = virt.console_log("vm-loud")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("booting\nRTO READY i-1\n")
    assert virt.wait_console("vm-loud", "READY", timeout=90.0, clock=clock) == "RTO READY i-1"
