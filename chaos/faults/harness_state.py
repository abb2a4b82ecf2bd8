"""Changes the harness itself makes to the cluster, journaled like faults.

Not faults users ask for, but state that must not outlive a run either: the
runner switches node-side restarts off for a baseline without the watchdog
healer, and the eviction healer fences lost nodes. Both go through the journal
before they act, so if the harness is SIGKILLed ``rto revert`` (and ``rto lab
down``) switch restarts back on and unfence the node, as for any fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

from chaos.faults.base import Fault, NodeFault
from chaos.journal import JsonScalar
from cluster.api import Backend

__all__ = ["NodeFence", "RestartHealingOff"]


class RestartHealingOff(Fault):
    """Node-side restarts of crashed workloads off (a baseline without the watchdog)."""

    type = "restart-healing-off"

    @property
    def target(self) -> str:
        return "restart healing"

    def params(self) -> dict[str, JsonScalar]:
        return {}

    @classmethod
    def from_params(cls, backend: Backend, params: Mapping[str, JsonScalar]) -> Self:
        return cls(backend)

    def _act(self) -> None:
        self.backend.set_restart_healing(False)

    def _undo(self) -> None:
        # Kubernetes' own default is restartPolicy Always: restarts on.
        self.backend.set_restart_healing(True)


class NodeFence(NodeFault):
    """A node fenced (out-of-service) by a healer so its workloads may move."""

    type = "node-fence"

    def _act(self) -> None:
        self.backend.fence(self.node)

    def _undo(self) -> None:
        self.backend.unfence(self.node)
