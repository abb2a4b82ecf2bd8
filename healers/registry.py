"""The one place healers are declared.

Read by the runner (``build_healers`` for the names an experiment or the CLI
selects) and by ``rto`` help (``HEALERS``: name -> description). To add a
healer, add one ``HealerSpec`` to ``HEALERS``: its ``build`` gets the run's
timing profile, so periods and thresholds scale with ``fast`` vs
``kubernetes-defaults``.

Test-only: ``$RTO_TEST_HEALER_DELAY`` (e.g. ``watchdog=2.0`` or
``eviction=3,rerun=1.5``) makes the named healers wait that many seconds of the
run's clock before each action they take on the cluster (fence, reschedule,
restart, resume, migrate, ...; :data:`DELAYED_ACTIONS`). It exists so the
nightly-history tests can plant a real regression (a slowed healer) and check
that ``rto history --fail-on regression`` finds it; it is ignored unless set,
never set it for real measurements. Each slowed healer puts a HEALER_ACTION
"test-only delay" on the run's timeline before the fault, so a slowed row says so.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from cluster.api import Backend
from cluster.profiles import TimingProfile, get_profile
from core.clock import Clock
from core.errors import SpecError
from healers.base import Healer, HealerContext
from healers.eviction import EvictionHealer
from healers.migration import MigrationHealer
from healers.rerun import RerunHealer
from healers.watchdog import Watchdog

__all__ = [
    "DELAYED_ACTIONS",
    "HEALERS",
    "TEST_DELAY_ENV",
    "HealerSpec",
    "SlowedHealer",
    "build_healers",
    "known_healers",
    "read_test_delays",
]

TEST_DELAY_ENV = "RTO_TEST_HEALER_DELAY"
# The Backend calls that change the cluster, i.e. a healer's actions; reads
# (nodes, workloads, restart_healing) are not delayed, so a slowed healer still
# sees the fault as early as before and only acts late.
DELAYED_ACTIONS = frozenset(
    {
        "fence",
        "unfence",
        "reschedule",
        "set_restart_healing",
        "resume_workload",
        "kill_main_process",
        "migrate",
        "start_migration",
        "create_workload",
        "delete_workload",
    }
)
_MAX_TEST_DELAY_S = 600.0


@dataclass(frozen=True)
class HealerSpec:
    name: str
    description: str  # one line for `rto` help and reports
    build: Callable[[TimingProfile], Healer]


def _watchdog(profile: TimingProfile) -> Healer:
    # Restarts happen node-side; watching twice per heartbeat is enough to put
    # each one on the timeline close to when the node reported it.
    return Watchdog(period=profile.heartbeat_interval / 2)


def _eviction(profile: TimingProfile) -> Healer:
    return EvictionHealer.for_profile(profile)


def _migration(profile: TimingProfile) -> Healer:
    return MigrationHealer.for_profile(profile)


def _rerun(profile: TimingProfile) -> Healer:
    # Failed for two heartbeats: the node had its chance to report otherwise.
    return RerunHealer(period=profile.heartbeat_interval / 2, grace=2 * profile.heartbeat_interval)


HEALERS: dict[str, HealerSpec] = {
    spec.name: spec
    for spec in (
        HealerSpec(
            "watchdog",
            "restart what crashed: node-side container restart with back-off switched on "
            "for the run, each restart recorded (VM watchdog reset/resume: issue 3)",
            _watchdog,
        ),
        HealerSpec(
            "eviction",
            "fence a node silent for 3 heartbeats and reschedule the targets on it at "
            "once, instead of waiting for the platform's toleration; unfence on return",
            _eviction,
        ),
        HealerSpec(
            "migration",
            "live-migrate target VMIs off a node that is cordoned or late (heartbeat older "
            "than half the eviction threshold but not lost), each with QEMU's downtime",
            _migration,
        ),
        HealerSpec(
            "rerun",
            "start anew a target left Failed for two heartbeats (KubeVirt runStrategy "
            "RerunOnFailure), once per failure",
            _rerun,
        ),
    )
}


def known_healers() -> list[str]:
    return sorted(HEALERS)


def read_test_delays(environ: Mapping[str, str] | None = None) -> dict[str, float]:
    """``$RTO_TEST_HEALER_DELAY`` parsed: healer name -> seconds ({} when unset).

    Raises ``SpecError`` (one paragraph naming the variable and the bad item) on
    anything but ``name=seconds`` items, separated by commas, with a known
    healer name and 0 < seconds <= 600.
    """
    env = os.environ if environ is None else environ
    raw = env.get(TEST_DELAY_ENV, "").strip()
    if not raw:
        return {}
    usage = (
        f"expected NAME=SECONDS[,NAME=SECONDS...] with a healer of {', '.join(known_healers())} "
        f"and 0 < SECONDS <= {_MAX_TEST_DELAY_S:g}, e.g. {TEST_DELAY_ENV}=watchdog=2.0; "
        "it is a test-only setting (it slows a healer on purpose): unset it for real runs"
    )
    delays: dict[str, float] = {}
    for item in (i.strip() for i in raw.split(",")):
        name, sep, seconds = item.partition("=")
        name = name.strip()
        try:
            value = float(seconds) if sep else float("nan")
        except ValueError:
            value = float("nan")
        if name not in HEALERS:
            why = f"{name!r} is no healer" if name else "a healer name is missing"
        elif not 0 < value <= _MAX_TEST_DELAY_S:  # NaN fails both comparisons
            why = f"{seconds.strip()!r} is no delay in seconds"
        elif name in delays:
            why = f"{name!r} is given twice"
        else:
            delays[name] = value
            continue
        raise SpecError(f"${TEST_DELAY_ENV}={raw!r}: item {item!r}: {why}; {usage}")
    return delays


class _DelayedBackend:
    """The run's backend as one slowed healer sees it: each action waits first."""

    def __init__(self, inner: Backend, delay_s: float, clock: Clock) -> None:
        self._inner = inner
        self._delay_s = delay_s
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in DELAYED_ACTIONS or not callable(attr):
            return attr

        def delayed(*args: Any, **kwargs: Any) -> Any:
            self._clock.sleep(self._delay_s)  # the injected clock: FakeClock in tests
            return attr(*args, **kwargs)

        return delayed


class SlowedHealer:
    """Test-only (``$RTO_TEST_HEALER_DELAY``): ``inner`` acting ``delay_s`` late.

    ``inner`` gets the run's context with a backend whose actions
    (:data:`DELAYED_ACTIONS`) wait ``delay_s`` on the run's clock first.
    """

    def __init__(self, inner: Healer, delay_s: float) -> None:
        self.inner = inner
        self.name = inner.name
        self.delay_s = delay_s

    def start(self, ctx: HealerContext) -> None:
        backend = cast(Backend, _DelayedBackend(ctx.backend, self.delay_s, ctx.clock))
        ctx.record(
            self.name,
            f"test-only delay: {self.name} waits {self.delay_s:g} s before each action "
            f"(${TEST_DELAY_ENV})",
            {"test_delay_s": f"{self.delay_s:g}"},
        )
        self.inner.start(dataclasses.replace(ctx, backend=backend))

    def stop(self) -> None:
        self.inner.stop()


def build_healers(names: list[str], profile_name: str) -> list[Healer]:
    """Fresh healers for one run, in the order given. Raises ``SpecError``.

    A healer named in ``$RTO_TEST_HEALER_DELAY`` comes wrapped in a
    :class:`SlowedHealer` (test-only).
    """
    profile = get_profile(profile_name)
    unknown = [n for n in names if n not in HEALERS]
    if unknown:
        raise SpecError(
            f"unknown healer(s) {', '.join(repr(n) for n in unknown)}; "
            f"known healers: {', '.join(known_healers())}"
        )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"healer(s) {', '.join(repr(n) for n in dupes)} selected more than once")
    delays = read_test_delays()
    healers = [HEALERS[n].build(profile) for n in names]
    return [SlowedHealer(h, delays[h.name]) if h.name in delays else h for h in healers]
