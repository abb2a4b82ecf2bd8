"""Node power-off: every process of the node dies at once; revert powers it on.

Declared as ``FAULT`` for ``type: node-power-off``; held for ``duration_s`` by
the runner.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from chaos.faults.base import FaultSpecModel, FaultType, NodeFault, Target, node_of
from chaos.journal import Journal
from cluster.api import Backend

__all__ = ["FAULT", "NodePowerOff", "NodePowerOffSpec"]


class NodePowerOff(NodeFault):
    type = "node-power-off"

    def _act(self) -> None:
        self.backend.power_off(self.node)

    def _undo(self) -> None:
        self.backend.power_on(self.node)


class NodePowerOffSpec(FaultSpecModel):
    type: Literal["node-power-off"]
    duration_s: float = Field(default=30.0, gt=0, le=3600)


def _build(
    spec: NodePowerOffSpec, target: Target, backend: Backend, journal: Journal | None
) -> NodePowerOff:
    return NodePowerOff(backend, node_of(backend, target.workload), journal)


FAULT = FaultType(
    spec=NodePowerOffSpec,
    build=_build,
    summary="everything of the target's node dies at once; powered on after duration_s",
)
