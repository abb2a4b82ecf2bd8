"""The rerun healer: a target left Failed is started anew, as KubeVirt's
``runStrategy: RerunOnFailure`` does for a VMI whose VM failed.

Built by ``healers.registry`` (``rerun``); started/stopped by the runner. It
watches the run's targets only. A workload seen in phase Failed for ``grace``
seconds of the run's clock (a VMI whose QEMU died while node-side restarts are
off, a pod its node gave up on) is rescheduled through the backend
(``reschedule``: the platform starts a new instance, on any node), once per
failure; the action and how long the workload had been Failed go on the
timeline. A workload that recovers on its own within ``grace`` is left alone.
"""

from __future__ import annotations

from cluster.api import Phase
from healers.base import LoopHealer

__all__ = ["RerunHealer"]


class RerunHealer(LoopHealer):
    name = "rerun"

    def __init__(self, period: float, grace: float) -> None:
        super().__init__(period)
        self.grace = grace
        self._failed_since: dict[str, float] = {}

    def step(self) -> None:
        now = self.ctx.clock.now()
        for name in self.ctx.workloads:
            phase = self.ctx.backend.workload(name).phase
            if phase is not Phase.FAILED:
                self._failed_since.pop(name, None)  # recovered (or never failed)
                continue
            since = self._failed_since.setdefault(name, now)
            if now - since < self.grace:
                continue
            self.ctx.backend.reschedule(name)
            self.record(
                f"rerun {name}: Failed for {now - since:.1f} s",
                workload=name,
                failed_s=f"{now - since:.3f}",
            )
            # A rescheduled workload is Pending or Running next round; should it
            # fail again, its grace starts over.
            del self._failed_since[name]
