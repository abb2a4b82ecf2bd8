"""The eviction healer: the harness's own node monitor, far faster than the platform's.

Built by ``healers.registry``; started/stopped by the runner. Kubernetes evicts
the pods of a lost node only after node-monitor-grace-period + the 300 s
toleration, and a pod on a dead node stays Terminating until the node is
fenced (out-of-service taint). This healer does what NodeHealthCheck + fencing
does, sooner: every ``period`` it reads ``backend.nodes()``; a node not heard
for more than ``confirm_after`` seconds is lost, so it fences it
(``backend.fence``) and reschedules every target workload on it
(``backend.reschedule``). When the node is heard again (fresh heartbeat and
Ready) it unfences it. Every act is a HEALER_ACTION on the timeline.

Blast radius: a healer acts only on the run's targets (``ctx.workloads``).
Fencing is a node-level act that stops scheduling on the node for everybody,
so the healer fences only a lost node that hosts at least one target, and it
reschedules only targets; other workloads on that node are left to the
platform. It never unfences a node it did not fence itself, and at stop it
unfences the nodes it still holds (a fence must not outlive the run, like a
fault must not outlive its revert).

``confirm_after`` defaults to 3 heartbeat intervals of the timing profile plus
half an interval of margin (one late datagram must not fence a node; three
missed in a row do): 0.7 s with ``fast``, 35 s with ``kubernetes-defaults``.
Where the platform says how long a heartbeat holds (a Kubernetes node Lease's
leaseDurationSeconds: 1 s on the lab's ``fast`` kubelets, 40 s by default), a
node is not lost while its Lease is still valid: on the real cluster a kubelet
renewing every 0.25 s was once 0.75 s late under probe load, and the healer
fenced a healthy node.
"""

from __future__ import annotations

from chaos.faults.harness_state import NodeFence
from cluster.api import NodeStatus, WorkloadStatus
from cluster.profiles import TimingProfile
from core.errors import HarnessError
from healers.base import LoopHealer

__all__ = ["EvictionHealer", "default_confirm_after"]

_MISSED_HEARTBEATS = 3
_MARGIN_INTERVALS = 0.5


def default_confirm_after(profile: TimingProfile) -> float:
    """Silence after which a node counts as lost: 3 heartbeats + half a heartbeat."""
    return (_MISSED_HEARTBEATS + _MARGIN_INTERVALS) * profile.heartbeat_interval


class EvictionHealer(LoopHealer):
    """Fence lost nodes that host targets, reschedule those targets, unfence on return.

    ``period``: how often nodes are read. ``confirm_after``: heartbeat age (s)
    beyond which a node is lost. ``fresh_within``: heartbeat age (s) at or
    below which a fenced node (that is also Ready) counts as back; smaller than
    ``confirm_after`` so a node hovering at the threshold does not flap.
    """

    name = "eviction"

    def __init__(self, period: float, confirm_after: float, fresh_within: float) -> None:
        super().__init__(period)
        if confirm_after <= 0 or fresh_within <= 0:
            raise HarnessError(
                f"eviction healer: confirm_after ({confirm_after}) and fresh_within "
                f"({fresh_within}) must be > 0 s"
            )
        if fresh_within >= confirm_after:
            raise HarnessError(
                f"eviction healer: fresh_within ({fresh_within} s) must be below "
                f"confirm_after ({confirm_after} s), or a node would flap fenced/unfenced"
            )
        self.confirm_after = confirm_after
        self.fresh_within = fresh_within
        # node -> targets already rescheduled off it while we held its fence
        self._fenced: dict[str, set[str]] = {}
        self._fences: dict[str, NodeFence] = {}

    @classmethod
    def for_profile(
        cls,
        profile: TimingProfile,
        confirm_after: float | None = None,
        period: float | None = None,
    ) -> EvictionHealer:
        """Defaults scaled to a timing profile; both may be overridden."""
        hb = profile.heartbeat_interval
        confirm = default_confirm_after(profile) if confirm_after is None else confirm_after
        # Read nodes twice per heartbeat: detection lags the threshold by <= hb/2.
        return cls(
            period=hb / 2 if period is None else period,
            confirm_after=confirm,
            fresh_within=min(2 * hb, confirm / 2),
        )

    @property
    def fenced_nodes(self) -> frozenset[str]:
        """Nodes this healer fenced and still holds."""
        return frozenset(self._fenced)

    def threshold(self, node: NodeStatus) -> float:
        """Silence (s) after which this node is lost: never while its lease holds."""
        return max(self.confirm_after, node.heartbeat_valid_s or 0.0)

    def _lost(self, node: NodeStatus) -> bool:
        # Never heard (None) is not "lost": a node that is still joining has no age.
        return node.heartbeat_age is not None and node.heartbeat_age > self.threshold(node)

    def _back(self, node: NodeStatus) -> bool:
        return (
            node.ready
            and node.heartbeat_age is not None
            and node.heartbeat_age <= self.fresh_within
        )

    def step(self) -> None:
        backend = self.ctx.backend
        targets = set(self.ctx.workloads)
        nodes = backend.nodes()
        on_node: dict[str, list[WorkloadStatus]] = {}
        for w in backend.workloads():
            if w.name in targets and w.node is not None:
                on_node.setdefault(w.node, []).append(w)

        for node in nodes:
            held = node.name in self._fenced
            if held and self._back(node):
                self._unfence(node.name, reason="node is back")
            elif held:
                # Still lost: a target may show up here late (status lag); move it too.
                self._reschedule_all(node, on_node.get(node.name, []))
            elif self._lost(node) and not node.fenced and on_node.get(node.name):
                self._fence(node, on_node[node.name])

    def _fence(self, node: NodeStatus, workloads: list[WorkloadStatus]) -> None:
        fence = NodeFence(self.ctx.backend, node.name, self.ctx.journal)
        fence.inject()  # journaled first: `rto revert` unfences after a crash
        self._fences[node.name] = fence
        self._fenced[node.name] = set()
        age = node.heartbeat_age if node.heartbeat_age is not None else float("nan")
        self.record(
            f"fenced node {node.name} (silent {age:.2f} s > {self.threshold(node):g} s)",
            action="fence",
            node=node.name,
            heartbeat_age=f"{age:.3f}",
        )
        self._reschedule_all(node, workloads)

    def _reschedule_all(self, node: NodeStatus, workloads: list[WorkloadStatus]) -> None:
        done = self._fenced[node.name]
        for w in sorted(workloads, key=lambda w: w.name):
            if w.name in done:
                continue
            self.ctx.backend.reschedule(w.name)
            done.add(w.name)
            self.record(
                f"rescheduled {w.name} off node {node.name}",
                action="reschedule",
                workload=w.name,
                kind=w.kind.value,
                node=node.name,
            )

    def _unfence(self, node: str, reason: str) -> None:
        self._fences.pop(node).revert()
        del self._fenced[node]
        self.record(f"unfenced node {node} ({reason})", action="unfence", node=node)

    def on_stop(self) -> None:
        for node in sorted(self._fenced):
            self._unfence(node, reason="healer stopped")
