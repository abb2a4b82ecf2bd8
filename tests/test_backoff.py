"""The kubelet-style restart back-off of the lab agent, on a fake clock."""

from __future__ import annotations

import pytest

from cluster.lab.backoff import RestartBackoff
from cluster.profiles import get_profile
from core.clock import FakeClock


def _crash_loop(b: RestartBackoff, clock: FakeClock, n: int, run_for: float) -> list[float]:
    """Start, run ``run_for``, crash, wait out the back-off; ``n`` times."""
    delays = []
    for _ in range(n):
        assert b.may_start()
        b.started()
        clock.advance(run_for)
        delays.append(b.exited())
        clock.advance(b.wait_left())
    return delays


def test_first_restart_immediate_then_doubling_to_max() -> None:
    clock = FakeClock(100.0)
    b = RestartBackoff(10.0, 300.0, 600.0, clock)
    assert _crash_loop(b, clock, 8, run_for=1.0) == [0, 10, 20, 40, 80, 160, 300, 300]


def test_start_blocked_until_delay_passed() -> None:
    clock = FakeClock()
    b = RestartBackoff(1.0, 8.0, 30.0, clock)
    b.started()
    assert b.exited() == 0.0
    assert b.may_start()
    b.started()
    clock.advance(0.5)
    assert b.exited() == 1.0
    assert not b.may_start()
    assert b.wait_left() == pytest.approx(1.0)
    clock.advance(0.99)
    assert not b.may_start()
    clock.advance(0.01)
    assert b.may_start()
    assert b.not_before == pytest.approx(1.5)


def test_reset_after_running_long_enough() -> None:
    clock = FakeClock()
    b = RestartBackoff.from_profile(get_profile("fast"), clock)  # 1 -> 8, reset 30
    assert _crash_loop(b, clock, 4, run_for=1.0) == [0, 1, 2, 4]
    # Ran just under the reset: still backing off.
    assert _crash_loop(b, clock, 1, run_for=29.9) == [8]
    # Ran for the reset period: the next crash is a first crash again.
    assert _crash_loop(b, clock, 3, run_for=30.0) == [0, 0, 0]
    assert _crash_loop(b, clock, 2, run_for=0.1) == [1, 2]


def test_kubernetes_defaults_profile() -> None:
    clock = FakeClock()
    b = RestartBackoff.from_profile(get_profile("kubernetes-defaults"), clock)
    assert _crash_loop(b, clock, 3, run_for=5.0) == [0, 10, 20]


@pytest.mark.parametrize(("initial", "maximum", "reset"), [(-1, 5, 5), (5, 1, 5), (1, 5, 0)])
def test_rejects_nonsense(initial: float, maximum: float, reset: float) -> None:
    with pytest.raises(ValueError):
        RestartBackoff(initial, maximum, reset, FakeClock())
