"""The one place healers are declared.

Read by the runner (``build_healers`` for the names an experiment or the CLI
selects) and by ``rto`` help (``HEALERS``: name -> description). To add a
healer, add one ``HealerSpec`` to ``HEALERS``: its ``build`` gets the run's
timing profile, so periods and thresholds scale with ``fast`` vs
``kubernetes-defaults``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cluster.profiles import TimingProfile, get_profile
from core.errors import SpecError
from healers.base import Healer
from healers.eviction import EvictionHealer
from healers.migration import MigrationHealer
from healers.rerun import RerunHealer
from healers.watchdog import Watchdog

__all__ = ["HEALERS", "HealerSpec", "build_healers", "known_healers"]


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


def build_healers(names: list[str], profile_name: str) -> list[Healer]:
    """Fresh healers for one run, in the order given. Raises ``SpecError``."""
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
    return [HEALERS[n].build(profile) for n in names]
