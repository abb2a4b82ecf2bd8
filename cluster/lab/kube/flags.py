"""What a timing profile means for the real components: their own flags and fields.

Read by ``cluster.lab.kube.hub`` (API server and controller-manager flags) and
by the per-node start (``KubeletConfiguration`` fields and feature gates), and
recorded in the lab's ``kube-profile.json`` so the report can say which values
a run was measured with. ``kubernetes-defaults`` sets nothing: every component
runs on its own compiled-in defaults. ``fast`` turns the real knobs to the
values of ``cluster.profiles.PROFILES["fast"]`` (the healers scale by the same
numbers), plus the kubelet's CrashLoopBackOff maximum.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cluster.profiles import PROFILES

__all__ = ["ComponentFlags", "component_flags"]


@dataclass(frozen=True)
class ComponentFlags:
    apiserver: dict[str, str] = field(default_factory=dict)
    controller_manager: dict[str, str] = field(default_factory=dict)
    kubelet_config: dict[str, Any] = field(default_factory=dict)
    kubelet_feature_gates: dict[str, bool] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def argv(self, component: str) -> list[str]:
        flags: dict[str, str] = getattr(self, component)
        return [f"--{k}={v}" for k, v in sorted(flags.items())]


def _fast() -> ComponentFlags:
    prof = PROFILES["fast"]
    toleration = str(round(prof.toleration))
    return ComponentFlags(
        apiserver={
            # DefaultTolerationSeconds admission: the 300 s of every pod's
            # not-ready/unreachable NoExecute tolerations.
            "default-not-ready-toleration-seconds": toleration,
            "default-unreachable-toleration-seconds": toleration,
        },
        controller_manager={
            "node-monitor-period": "1s",
            "node-monitor-grace-period": f"{prof.grace_period:g}s",
        },
        kubelet_config={
            "nodeStatusUpdateFrequency": "1s",
            # The kubelet renews its Lease every quarter of this (a whole number
            # of seconds): the profile's heartbeat.
            "nodeLeaseDurationSeconds": round(4 * prof.heartbeat_interval),
            # Alpha in 1.34: needs the gate below. The back-off starts at
            # min(10 s, this) and never grows past it.
            "crashLoopBackOff": {"maxContainerRestartPeriod": "8s"},
        },
        kubelet_feature_gates={"KubeletCrashLoopBackOffMax": True},
    )


_PROFILES: dict[str, ComponentFlags] = {
    "kubernetes-defaults": ComponentFlags(),
    "fast": _fast(),
}


def component_flags(profile: str) -> ComponentFlags:
    """The real knobs of ``profile`` (a name of ``cluster.profiles.PROFILES``)."""
    try:
        return _PROFILES[profile]
    except KeyError:
        raise ValueError(f"no component flags for profile {profile!r}") from None
