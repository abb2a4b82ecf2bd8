"""Node drain: cordon the node, then evict every workload on it.

Built for ``type: node-drain``. Eviction respects disruption budgets unless
``respect_pdb`` is false, in which case a workload whose eviction is refused is
force-rescheduled (what ``kubectl drain --disable-eviction`` does). Revert uncordons.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

from chaos.faults.base import Fault
from chaos.journal import Journal, JsonScalar
from cluster.api import Backend
from core.errors import BackendError

__all__ = ["NodeDrain"]


class NodeDrain(Fault):
    type = "node-drain"

    def __init__(
        self, backend: Backend, node: str, respect_pdb: bool = True, journal: Journal | None = None
    ) -> None:
        super().__init__(backend, journal)
        self.node = node
        self.respect_pdb = respect_pdb
        self.evicted: list[str] = []

    @property
    def target(self) -> str:
        return self.node

    def params(self) -> dict[str, JsonScalar]:
        return {"node": self.node, "respect_pdb": self.respect_pdb}

    @classmethod
    def from_params(cls, backend: Backend, params: Mapping[str, JsonScalar]) -> Self:
        return cls(backend, str(params["node"]), bool(params.get("respect_pdb", True)))

    def _act(self) -> None:
        self.backend.cordon(self.node)
        for wl in self.backend.workloads():
            if wl.node != self.node:
                continue
            try:
                self.backend.evict(wl.name)
            except BackendError:
                if self.respect_pdb:
                    raise
                self.backend.reschedule(wl.name)
            self.evicted.append(wl.name)

    def _undo(self) -> None:
        # Evicted workloads stay where they were rescheduled, as after a real drain.
        self.backend.uncordon(self.node)
