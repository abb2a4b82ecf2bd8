"""What a timing profile means for the real components: their own flags and fields.

Read by ``cluster.lab.kube.hub`` (API server and controller-manager flags) and
by the per-node start (``KubeletConfiguration`` fields and feature gates), and
recorded in the lab's ``kube-profile.json`` so the report can say which values
a run was measured with. ``kubernetes-defaults`` sets nothing: every component
runs on its own compiled-in defaults. ``fast`` turns the real knobs.

``fast`` is not exactly the model's 1/50 scale: the Lease is renewed every
0.25 s (a quarter of ``nodeLeaseDurationSeconds``, a whole number of seconds)
against the model's 0.2 s heartbeat, and the node-monitor grace period is 2 s,
not 1 s, so that a renewal delayed by a busy 2-core machine (QEMU guests
beside it) does not flap a node NotReady. Tolerations are whole seconds in the
API.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

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


_FAST = ComponentFlags(
    apiserver={
        # DefaultTolerationSeconds admission: the 300 s of every pod's
        # not-ready/unreachable NoExecute tolerations.
        "default-not-ready-toleration-seconds": "6",
        "default-unreachable-toleration-seconds": "6",
    },
    controller_manager={
        "node-monitor-period": "1s",
        "node-monitor-grace-period": "2s",
    },
    kubelet_config={
        "nodeStatusUpdateFrequency": "1s",
        # Renewed every quarter of this: 0.25 s, the model's 0.2 s heartbeat as
        # closely as a whole number of seconds allows (the eviction healer
        # confirms a silent node after 3.5 heartbeats of the profile).
        "nodeLeaseDurationSeconds": 1,
        # Alpha in 1.34: needs the gate below. The back-off starts at
        # min(10 s, this) and never grows past it.
        "crashLoopBackOff": {"maxContainerRestartPeriod": "8s"},
    },
    kubelet_feature_gates={"KubeletCrashLoopBackOffMax": True},
)

_PROFILES: dict[str, ComponentFlags] = {
    "kubernetes-defaults": ComponentFlags(),
    "fast": _FAST,
}


def component_flags(profile: str) -> ComponentFlags:
    """The real knobs of ``profile`` (a name of ``cluster.profiles.PROFILES``)."""
    try:
        return _PROFILES[profile]
    except KeyError:
        raise ValueError(f"no component flags for profile {profile!r}") from None
