"""Timing profiles: the platform behaviour Kubernetes/KubeVirt supply, as data.

Backend-neutral: read by the healers (periods and thresholds scale with the
profile a run names), by ``chaos.spec`` (a profile name is checked at load) and
by the lab, whose control plane (node monitor, toleration eviction) and node
agents (heartbeat, restart back-off) run on it; chosen at ``rto lab up`` and per
run. ``kubernetes-defaults`` reproduces the real timings (docs/FACTS.md);
``fast`` scales them down so tests and demos finish quickly. The harness's own
healers are measured against both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from core.errors import SpecError

__all__ = ["PROFILES", "TimingProfile", "get_profile"]


@dataclass(frozen=True)
class TimingProfile:
    name: str
    heartbeat_interval: float  # node agent -> control plane (kubelet lease renew)
    monitor_period: float  # node lifecycle controller period
    grace_period: float  # node-monitor-grace-period: silent this long -> NotReady
    toleration: float  # not-ready/unreachable tolerationSeconds -> evict pods
    backoff_initial: float  # container restart back-off, after the immediate restart
    backoff_max: float
    backoff_reset: float  # running this long resets the back-off
    vmi_heartbeat_timeout: float  # virt-handler heartbeat timeout (VMIs, issue 3)

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


PROFILES: dict[str, TimingProfile] = {
    # kubelet lease renew 10 s; node-monitor-period 5 s; grace 50 s (v1.32+);
    # DefaultTolerationSeconds 300 s; back-off 10 s doubling to 300 s, reset 10 min;
    # virt-handler heartbeat timeout 5 min.
    "kubernetes-defaults": TimingProfile(
        name="kubernetes-defaults",
        heartbeat_interval=10.0,
        monitor_period=5.0,
        grace_period=50.0,
        toleration=300.0,
        backoff_initial=10.0,
        backoff_max=300.0,
        backoff_reset=600.0,
        vmi_heartbeat_timeout=300.0,
    ),
    # Everything about 1/50 (heartbeat 1/50 too so grace stays 5 heartbeats).
    "fast": TimingProfile(
        name="fast",
        heartbeat_interval=0.2,
        monitor_period=0.1,
        grace_period=1.0,
        toleration=6.0,
        backoff_initial=1.0,
        backoff_max=8.0,
        backoff_reset=30.0,
        vmi_heartbeat_timeout=6.0,
    ),
}


def get_profile(name: str) -> TimingProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise SpecError(
            f"unknown timing profile {name!r}; choose one of {', '.join(sorted(PROFILES))}"
        ) from None
