"""Node power-off: every process of the node dies at once; revert powers it on.

Built for ``type: node-power-off``; held for ``duration_s`` by the runner.
"""

from __future__ import annotations

from chaos.faults.base import NodeFault

__all__ = ["NodePowerOff"]


class NodePowerOff(NodeFault):
    type = "node-power-off"

    def _act(self) -> None:
        self.backend.power_off(self.node)

    def _undo(self) -> None:
        self.backend.power_on(self.node)
