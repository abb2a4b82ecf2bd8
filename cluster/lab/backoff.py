"""Container restart back-off, as the kubelet does it, for the lab's node agent.

Filled by the node agent (``started`` when it launches a container, ``exited``
when the container dies); read by the agent's main loop (``may_start``,
``wait_left``) to decide when the next start may happen. Pure: time comes
from a ``core.clock.Clock``, so tests drive it on a ``FakeClock``.

Rule (LAB-CONTRACT.md): the first restart is immediate; after that the delay
is ``initial``, doubling up to ``maximum``; once a container has run for
``reset`` seconds, the next crash counts as a first one again.
"""

from __future__ import annotations

from cluster.profiles import TimingProfile
from core.clock import Clock

__all__ = ["RestartBackoff"]


class RestartBackoff:
    """Back-off state of one container (one pod on one node)."""

    def __init__(self, initial: float, maximum: float, reset: float, clock: Clock) -> None:
        if initial < 0 or maximum < initial or reset <= 0:
            raise ValueError(f"bad back-off: initial={initial} max={maximum} reset={reset}")
        self.initial = initial
        self.maximum = maximum
        self.reset = reset
        self._clock = clock
        self._next_delay = 0.0  # applied at the next exit
        self._last_start: float | None = None
        self._not_before = float("-inf")

    @classmethod
    def from_profile(cls, profile: TimingProfile, clock: Clock) -> RestartBackoff:
        return cls(profile.backoff_initial, profile.backoff_max, profile.backoff_reset, clock)

    def started(self) -> None:
        """A container was started now."""
        self._last_start = self._clock.now()

    def exited(self) -> float:
        """The container died now; returns the delay before it may start again."""
        now = self._clock.now()
        if self._last_start is not None and now - self._last_start >= self.reset:
            self._next_delay = 0.0  # it ran long enough: forgive the past crashes
        delay = self._next_delay
        self._not_before = now + delay
        self._next_delay = self.initial if delay == 0 else min(delay * 2, self.maximum)
        return delay

    @property
    def not_before(self) -> float:
        """Clock time from which the next start is allowed."""
        return self._not_before

    def wait_left(self) -> float:
        return max(0.0, self._not_before - self._clock.now())

    def may_start(self) -> bool:
        return self._clock.now() >= self._not_before
