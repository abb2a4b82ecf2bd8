"""Node drain: cordon the node, then evict every workload on it.

Built for ``type: node-drain``. Eviction respects disruption budgets unless
``respect_pdb`` is false, in which case a workload whose eviction is refused is
force-rescheduled (what ``kubectl drain --disable-eviction`` does). Revert uncordons.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Self

from chaos.faults.base import Fault, FaultSpecModel, FaultType, Target, node_of
from chaos.journal import Journal, JsonScalar
from cluster.api import Backend
from core.errors import BackendError

__all__ = ["FAULT", "NodeDrain", "NodeDrainSpec"]


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


class NodeDrainSpec(FaultSpecModel):
    type: Literal["node-drain"]
    respect_pdb: bool = True


def _build(
    spec: NodeDrainSpec, target: Target, backend: Backend, journal: Journal | None
) -> NodeDrain:
    return NodeDrain(backend, node_of(backend, target.workload), spec.respect_pdb, journal)


def _variant(spec: NodeDrainSpec, target: Target) -> str:
    # A VMI drained without live migration is shut down and booted elsewhere:
    # another mechanism than the claim's, so its own cell.
    if target.kind == "vmi" and target.eviction_strategy == "None":
        return "evictionStrategy=None"
    return ""


FAULT = FaultType(
    spec=NodeDrainSpec,
    build=_build,
    summary="cordon the node and evict what runs on it (Eviction API, PDB-aware)",
    variant=_variant,
    variants=("", "evictionStrategy=None"),
)
