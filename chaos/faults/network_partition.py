"""Network partition: cut a node (scope node) or one workload (scope workload) off.

Built for ``type: network-partition``; held for ``duration_s``; revert heals the cut.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Self

from pydantic import Field

from chaos.faults.base import Fault, FaultSpecModel, FaultType, Target, node_of
from chaos.journal import Journal, JsonScalar
from cluster.api import Backend
from core.errors import FaultError

__all__ = ["FAULT", "NetworkPartition", "NetworkPartitionSpec"]

Scope = Literal["node", "workload"]


class NetworkPartition(Fault):
    type = "network-partition"

    def __init__(
        self, backend: Backend, scope: Scope, name: str, journal: Journal | None = None
    ) -> None:
        super().__init__(backend, journal)
        self.scope: Scope = scope
        self.name = name

    @property
    def target(self) -> str:
        return self.name

    def describe(self) -> str:
        return f"{self.type} ({self.scope}) on {self.name}"

    def params(self) -> dict[str, JsonScalar]:
        return {"scope": self.scope, "name": self.name}

    @classmethod
    def from_params(cls, backend: Backend, params: Mapping[str, JsonScalar]) -> Self:
        scope = params.get("scope")
        if scope not in ("node", "workload"):
            raise FaultError(f"network-partition record has scope {scope!r}; need node|workload")
        return cls(backend, "node" if scope == "node" else "workload", str(params["name"]))

    def _act(self) -> None:
        if self.scope == "node":
            self.backend.partition_node(self.name)
        else:
            self.backend.partition_workload(self.name)

    def _undo(self) -> None:
        if self.scope == "node":
            self.backend.heal_node_partition(self.name)
        else:
            self.backend.heal_workload_partition(self.name)


class NetworkPartitionSpec(FaultSpecModel):
    type: Literal["network-partition"]
    scope: Scope = "node"
    duration_s: float = Field(default=30.0, gt=0, le=3600)


def _build(
    spec: NetworkPartitionSpec, target: Target, backend: Backend, journal: Journal | None
) -> NetworkPartition:
    name = node_of(backend, target.workload) if spec.scope == "node" else target.workload
    return NetworkPartition(backend, spec.scope, name, journal)


FAULT = FaultType(
    spec=NetworkPartitionSpec,
    build=_build,
    summary="cut the target's node (or the workload alone) off the network for duration_s",
    variant=lambda spec, target: spec.scope,
    variants=("node", "workload"),
)
