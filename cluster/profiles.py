"""Timing profiles: the platform timings a profile runs the cluster with, as data.

Backend-neutral: read by the healers (periods and thresholds scale with the
node heartbeat of the profile a run names), by ``chaos.spec`` (a profile name is
checked at load) and by the lab, which sets these values on its real components
(``cluster.lab.kube.flags``: kubelet lease, node-monitor grace period, default
tolerations). Nothing imitates them: ``kubernetes-defaults`` is what the
components do untouched (FACTS.md), ``fast`` what the lab sets so tests and
demos finish quickly. The harness's own healers are measured against both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from core.errors import SpecError

__all__ = ["PROFILES", "TimingProfile", "get_profile"]


@dataclass(frozen=True)
class TimingProfile:
    name: str
    heartbeat_interval: float  # the kubelet renews its node Lease this often
    grace_period: float  # node-monitor-grace-period: silent this long -> NotReady
    toleration: float  # default not-ready/unreachable tolerationSeconds -> evicted

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


PROFILES: dict[str, TimingProfile] = {
    # The components' own defaults: the kubelet renews its 40 s Lease every 10 s;
    # node-monitor-grace-period 50 s (v1.32+); DefaultTolerationSeconds 300 s.
    "kubernetes-defaults": TimingProfile(
        name="kubernetes-defaults", heartbeat_interval=10.0, grace_period=50.0, toleration=300.0
    ),
    # What the lab sets: a 1 s Lease renewed every quarter of it, grace 2 s (a
    # renewal delayed on a busy 2-core machine must not flap a node NotReady),
    # tolerations 6 s (whole seconds in the API).
    "fast": TimingProfile(name="fast", heartbeat_interval=0.25, grace_period=2.0, toleration=6.0),
}


def get_profile(name: str) -> TimingProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise SpecError(
            f"unknown timing profile {name!r}; choose one of {', '.join(sorted(PROFILES))}"
        ) from None
