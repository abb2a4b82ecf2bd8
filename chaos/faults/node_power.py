"""Node power-off: every process of the node dies at once; revert powers it on.

Built for ``type: node-power-off``; held for ``duration_s`` by the runner.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

from chaos.faults.base import Fault
from chaos.journal import Journal, JsonScalar
from cluster.api import Backend

__all__ = ["NodePowerOff"]


class NodePowerOff(Fault):
    type = "node-power-off"

    def __init__(self, backend: Backend, node: str, journal: Journal | None = None) -> None:
        super().__init__(backend, journal)
        self.node = node

    @property
    def target(self) -> str:
        return self.node

    def params(self) -> dict[str, JsonScalar]:
        return {"node": self.node}

    @classmethod
    def from_params(cls, backend: Backend, params: Mapping[str, JsonScalar]) -> Self:
        return cls(backend, str(params["node"]))

    def _act(self) -> None:
        self.backend.power_off(self.node)

    def _undo(self) -> None:
        self.backend.power_on(self.node)
