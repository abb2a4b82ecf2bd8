"""Network partition: cut a node (scope node) or one workload (scope workload) off.

Built for ``type: network-partition``; held for ``duration_s``; revert heals the cut.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Self

from chaos.faults.base import Fault
from chaos.journal import Journal, JsonScalar
from cluster.api import Backend
from core.errors import FaultError

__all__ = ["NetworkPartition"]

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
