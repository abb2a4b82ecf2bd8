"""The live-migration healer: move target VMIs off a node before it fails them.

Built by ``healers.registry`` (name ``migration``); started/stopped by the
runner. What KubeVirt does on a drain (evictionStrategy LiveMigrate) and what
an operator does on an early warning, done by the harness: every ``period``
it reads ``backend.nodes()`` and the targets; a target VMI that is Running on
a node that is

* cordoned (``schedulable`` false) while still Ready, or
* late but not lost: ``warn_after < heartbeat_age <= confirm_after`` (the
  node still answers, just slowly: a node going bad, an overloaded link),

is live-migrated with ``backend.migrate`` (the backend picks the target node).
``confirm_after`` is the eviction healer's threshold (3.5 heartbeats), and
``warn_after`` is half of it by default: a node that missed more than ~1.75
heartbeats in a row gets its VMIs moved while a migration can still reach it.
Beyond ``confirm_after`` the node counts as lost: migration needs a running
source, so that case is the eviction healer's (fence + restart elsewhere).

Each migration is one HEALER_ACTION with QEMU's ``downtime_ms``/``total_ms``.
A failed migration (BackendError) is recorded too and retried after
``retry_after`` seconds; it does not end the healer (a drain that migrates the
same VMI at the same moment makes one of the two fail harmlessly). Pods and
VMIs whose phase is not Running are left alone: there is nothing to keep.
"""

from __future__ import annotations

from cluster.api import NodeStatus, Phase, WorkloadKind, WorkloadStatus
from cluster.profiles import TimingProfile
from core.errors import BackendError, HarnessError
from healers.base import LoopHealer
from healers.eviction import default_confirm_after

__all__ = ["MigrationHealer", "default_warn_after"]

_WARN_FRACTION = 0.5


def default_warn_after(profile: TimingProfile) -> float:
    """Heartbeat age that counts as an early warning: half the eviction threshold."""
    return _WARN_FRACTION * default_confirm_after(profile)


class MigrationHealer(LoopHealer):
    """Live-migrate target VMIs off cordoned or late (not lost) nodes."""

    name = "migration"

    def __init__(
        self, period: float, warn_after: float, confirm_after: float, retry_after: float
    ) -> None:
        super().__init__(period)
        if not 0 < warn_after < confirm_after:
            raise HarnessError(
                f"migration healer: need 0 < warn_after ({warn_after} s) < confirm_after "
                f"({confirm_after} s); a late node must be seen before it counts as lost"
            )
        if retry_after < 0:
            raise HarnessError(f"migration healer: retry_after must be >= 0, not {retry_after}")
        self.warn_after = warn_after
        self.confirm_after = confirm_after
        self.retry_after = retry_after
        self._failed_at: dict[str, float] = {}  # workload -> clock time of its last failure
        self.migrations = 0

    @classmethod
    def for_profile(cls, profile: TimingProfile, period: float | None = None) -> MigrationHealer:
        hb = profile.heartbeat_interval
        return cls(
            period=hb / 2 if period is None else period,
            warn_after=default_warn_after(profile),
            confirm_after=default_confirm_after(profile),
            retry_after=5 * hb,
        )

    def trigger(self, node: NodeStatus) -> str | None:
        """Why VMIs should leave ``node`` now ("cordoned", "early-warning"), or None."""
        if not node.powered or node.fenced:
            return None  # nothing to migrate from: that is the eviction healer's case
        age = node.heartbeat_age
        if age is not None and age > self.confirm_after:
            return None  # lost: a migration needs a running source
        if not node.schedulable and node.ready:
            return "cordoned"
        if age is not None and age > self.warn_after:
            return "early-warning"
        return None

    def step(self) -> None:
        backend = self.ctx.backend
        targets = set(self.ctx.workloads)
        why = {n.name: (n, self.trigger(n)) for n in backend.nodes()}
        now = self.ctx.clock.now()
        for w in sorted(backend.workloads(), key=lambda w: w.name):
            if w.name not in targets or w.kind is not WorkloadKind.VMI or w.node is None:
                continue
            node, reason = why.get(w.node, (None, None))
            if node is None or reason is None or w.phase is not Phase.RUNNING:
                continue
            failed = self._failed_at.get(w.name)
            if failed is not None and now - failed < self.retry_after:
                continue
            self._migrate(w, node, reason)

    def _migrate(self, w: WorkloadStatus, node: NodeStatus, reason: str) -> None:
        age = "" if node.heartbeat_age is None else f"{node.heartbeat_age:.3f}"
        try:
            out = self.ctx.backend.migrate(w.name)
        except BackendError as exc:
            self._failed_at[w.name] = self.ctx.clock.now()
            self.record(
                f"live migration of {w.name} off {node.name} failed ({reason}): {exc}",
                action="migrate-failed",
                workload=w.name,
                node=node.name,
                trigger=reason,
                heartbeat_age=age,
                error=str(exc),
            )
            return
        self._failed_at.pop(w.name, None)
        self.migrations += 1
        # KubeVirt does not publish QEMU's downtime: then the probes measure it.
        downtime = out.get("downtime_ms") or ""
        said = f"QEMU downtime {downtime} ms" if downtime else "downtime not reported"
        self.record(
            f"live-migrated {w.name} {node.name} -> {out.get('target', '?')} ({reason}), {said}",
            action="migrate",
            workload=w.name,
            node=node.name,
            target=out.get("target", ""),
            trigger=reason,
            heartbeat_age=age,
            downtime_ms=out.get("downtime_ms", ""),
            total_ms=out.get("total_ms", ""),
        )
