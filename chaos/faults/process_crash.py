"""Process crash: SIGKILL the workload's main process (container pid 1 / QEMU), or
(mode ``hang``, VMIs only) hang the guest so that its i6300esb watchdog fires.

Declared as ``FAULT`` for ``type: process-crash``; injected by the
runner. There is nothing to undo (the platform or the watchdog healer restarts the
process; a watchdog reset reboots a hung guest), but the revert is still
journaled so the record is closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Self

from chaos.faults.base import Fault, FaultSpecModel, FaultType, Target
from chaos.journal import Journal, JsonScalar
from cluster.api import Backend
from core.errors import FaultError

__all__ = ["FAULT", "CrashMode", "ProcessCrash", "ProcessCrashSpec"]

CrashMode = Literal["kill", "hang"]


class ProcessCrash(Fault):
    type = "process-crash"

    def __init__(
        self,
        backend: Backend,
        workload: str,
        journal: Journal | None = None,
        mode: CrashMode = "kill",
    ) -> None:
        super().__init__(backend, journal)
        self.workload = workload
        self.mode: CrashMode = mode

    @property
    def target(self) -> str:
        return self.workload

    def describe(self) -> str:
        return f"{self.type} ({self.mode}) on {self.workload}"

    def params(self) -> dict[str, JsonScalar]:
        return {"workload": self.workload, "mode": self.mode}

    @classmethod
    def from_params(cls, backend: Backend, params: Mapping[str, JsonScalar]) -> Self:
        # Records written before modes existed have none: they were kills.
        mode = params.get("mode", "kill")
        if mode not in ("kill", "hang"):
            raise FaultError(f"process-crash record has mode {mode!r}; need kill|hang")
        return cls(backend, str(params["workload"]), mode="hang" if mode == "hang" else "kill")

    def _act(self) -> None:
        if self.mode == "hang":
            self.backend.hang_workload(self.workload)
        else:
            self.backend.kill_main_process(self.workload)

    def _undo(self) -> None:
        # A killed process cannot be un-killed, a hung guest is reset by its
        # watchdog; recovery is the healers' job.
        return None


class ProcessCrashSpec(FaultSpecModel):
    type: Literal["process-crash"]
    # kill: SIGKILL the main process (container pid 1 / QEMU). hang (VMI only):
    # the guest's userland stops through its control channel, so nothing feeds
    # the i6300esb any more and the watchdog fires.
    mode: CrashMode = "kill"


def _check(spec: ProcessCrashSpec, kind: str) -> str | None:
    if kind != "vmi" and spec.mode == "hang":
        return (
            f"fault.mode: hang applies to kind vmi only (it hangs the guest so its "
            f"watchdog fires); a {kind} has no watchdog: use mode: kill"
        )
    return None


def _build(
    spec: ProcessCrashSpec, target: Target, backend: Backend, journal: Journal | None
) -> ProcessCrash:
    return ProcessCrash(backend, target.workload, journal, mode=spec.mode)


FAULT = FaultType(
    spec=ProcessCrashSpec,
    build=_build,
    summary="kill the main process (container pid 1 / QEMU), or hang a VMI's guest",
    # "" for kill keeps older result rows comparable.
    variant=lambda spec, target: "" if spec.mode == "kill" else spec.mode,
    variants=("", "hang"),
    check=_check,
)
