"""Storage lost: the workload's volume hangs (freeze) or fails with EIO; revert repairs.

Declared as ``FAULT`` for ``type: storage-lost``; held for ``duration_s``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Self

from pydantic import Field

from chaos.faults.base import Fault, FaultSpecModel, FaultType, Target
from chaos.journal import Journal, JsonScalar
from cluster.api import Backend, VolumeFailure
from core.errors import FaultError

__all__ = ["FAULT", "StorageLost", "StorageLostSpec"]


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


class StorageLostSpec(FaultSpecModel):
    type: Literal["storage-lost"]
    # unplug (VMI only): hot-unplug the data disk; the revert plugs it back.
    mode: Literal["hang", "eio", "unplug"] = "hang"
    duration_s: float = Field(default=30.0, gt=0, le=3600)


def _check(spec: StorageLostSpec, kind: str) -> str | None:
    if kind != "vmi" and spec.mode == "unplug":
        return (
            f"fault.mode: unplug applies to kind vmi only (disk hot-unplug); "
            f"for a {kind} use hang or eio"
        )
    return None


def _build(
    spec: StorageLostSpec, target: Target, backend: Backend, journal: Journal | None
) -> StorageLost:
    return StorageLost(backend, target.workload, VolumeFailure(spec.mode), journal)


FAULT = FaultType(
    spec=StorageLostSpec,
    build=_build,
    summary="the workload's volume hangs (freeze) or fails (EIO), or a VMI's disk is unplugged",
    variant=lambda spec, target: spec.mode,
    variants=("hang", "eio", "unplug"),
    check=_check,
)
