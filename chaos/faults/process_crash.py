"""Process crash: SIGKILL the workload's main process (container pid 1 / QEMU).

Built by ``chaos.faults.build_fault`` for ``type: process-crash``; injected by the
runner. There is nothing to undo (the platform or the watchdog healer restarts the
process), but the revert is still journaled so the record is closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

from chaos.faults.base import Fault
from chaos.journal import Journal, JsonScalar
from cluster.api import Backend

__all__ = ["ProcessCrash"]


class ProcessCrash(Fault):
    type = "process-crash"

    def __init__(self, backend: Backend, workload: str, journal: Journal | None = None) -> None:
        super().__init__(backend, journal)
        self.workload = workload

    @property
    def target(self) -> str:
        return self.workload

    def params(self) -> dict[str, JsonScalar]:
        return {"workload": self.workload}

    @classmethod
    def from_params(cls, backend: Backend, params: Mapping[str, JsonScalar]) -> Self:
        return cls(backend, str(params["workload"]))

    def _act(self) -> None:
        self.backend.kill_main_process(self.workload)

    def _undo(self) -> None:
        # A killed process cannot be un-killed; recovery is the healers' job.
        return None
