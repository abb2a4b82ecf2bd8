"""Storage lost: the workload's volume hangs (freeze) or fails with EIO; revert repairs.

Built for ``type: storage-lost``; held for ``duration_s``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

from chaos.faults.base import Fault
from chaos.journal import Journal, JsonScalar
from cluster.api import Backend, VolumeFailure
from core.errors import FaultError

__all__ = ["StorageLost"]


class StorageLost(Fault):
    type = "storage-lost"

    def __init__(
        self,
        backend: Backend,
        workload: str,
        mode: VolumeFailure,
        journal: Journal | None = None,
    ) -> None:
        super().__init__(backend, journal)
        self.workload = workload
        self.mode = mode

    @property
    def target(self) -> str:
        return self.workload

    def describe(self) -> str:
        return f"{self.type} ({self.mode.value}) on {self.workload}"

    def params(self) -> dict[str, JsonScalar]:
        return {"workload": self.workload, "mode": self.mode.value}

    @classmethod
    def from_params(cls, backend: Backend, params: Mapping[str, JsonScalar]) -> Self:
        try:
            mode = VolumeFailure(str(params.get("mode")))
        except ValueError:
            raise FaultError(f"storage-lost record has mode {params.get('mode')!r}") from None
        return cls(backend, str(params["workload"]), mode)

    def _act(self) -> None:
        self.backend.fail_volume(self.workload, self.mode)

    def _undo(self) -> None:
        self.backend.repair_volume(self.workload, self.mode)
