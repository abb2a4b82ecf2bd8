"""Network flap: the workload (or its node) is cut off and back, again and again.

Declared as ``FAULT`` for ``type: network-flap``; held for ``duration_s``.
Intermittent connectivity rather than one long partition: every ``period_s``
the target loses the network for ``down_s``, starting at the injection, until
the revert, which stops the flapping and heals for good. A control plane whose
detection needs a silence longer than ``down_s`` never reacts, so the outage a
client sees is the flapping itself; one with faster detection may move the
workload mid-flap: while it is being replaced it may have no address to cut,
and that cut is skipped (counted in ``skipped``), the next one tried at its
period. The cut and the heal are the partition actions every backend has
(``partition_*`` / ``heal_*``); only the first cut is journaled as an act, and
the revert (after a crash of the harness too) heals, which is idempotent. A
heal that fails ends the flapping and fails the revert.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Literal, Self

from pydantic import Field, model_validator

from chaos.faults.base import Fault, FaultSpecModel, FaultType, Target, node_of
from chaos.journal import Journal, JsonScalar
from cluster.api import Backend
from core.errors import BackendError, FaultError, HarnessError

__all__ = ["FAULT", "NetworkFlap", "NetworkFlapSpec"]

Scope = Literal["node", "workload"]


class NetworkFlap(Fault):
    type = "network-flap"

    def __init__(
        self,
        backend: Backend,
        scope: Scope,
        name: str,
        down_s: float,
        period_s: float,
        journal: Journal | None = None,
    ) -> None:
        super().__init__(backend, journal)
        self.scope: Scope = scope
        self.name = name
        self.down_s = down_s
        self.period_s = period_s
        self.flaps = 0  # cuts made so far
        self.skipped: list[str] = []  # why each later cut could not be made
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: HarnessError | None = None

    @property
    def target(self) -> str:
        return self.name

    def describe(self) -> str:
        every = f"{self.down_s:g} s down every {self.period_s:g} s"
        return f"{self.type} ({self.scope}, {every}) on {self.name}"

    def params(self) -> dict[str, JsonScalar]:
        return {
            "scope": self.scope,
            "name": self.name,
            "down_s": self.down_s,
            "period_s": self.period_s,
        }

    @classmethod
    def from_params(cls, backend: Backend, params: Mapping[str, JsonScalar]) -> Self:
        scope = params.get("scope")
        if scope not in ("node", "workload"):
            raise FaultError(f"network-flap record has scope {scope!r}; need node|workload")
        down, period = params.get("down_s"), params.get("period_s")
        if not isinstance(down, int | float) or not isinstance(period, int | float):
            raise FaultError(f"network-flap record has down_s {down!r}, period_s {period!r}")
        return cls(
            backend, "node" if scope == "node" else "workload", str(params["name"]), down, period
        )

    def _cut(self) -> None:
        if self.scope == "node":
            self.backend.partition_node(self.name)
        else:
            self.backend.partition_workload(self.name)
        self.flaps += 1

    def _heal(self) -> None:
        if self.scope == "node":
            self.backend.heal_node_partition(self.name)
        else:
            self.backend.heal_workload_partition(self.name)

    def _flap(self) -> None:
        # The first cut was made by _act; from here: heal after down_s, cut
        # again at the next period, until the revert sets _stop.
        try:
            while not self._stop.wait(self.down_s):
                self._heal()
                if self._stop.wait(self.period_s - self.down_s):
                    return
                try:
                    self._cut()
                except BackendError as exc:
                    # Moving (a new pod or VMI without its address yet): nothing
                    # to cut this period; the heal after down_s is a no-op.
                    self.skipped.append(str(exc))
        except HarnessError as exc:
            self._error = exc  # raised by the revert, which heals anyway

    def _act(self) -> None:
        self._cut()
        self._thread = threading.Thread(target=self._flap, name=f"flap-{self.name}", daemon=True)
        self._thread.start()

    def _undo(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.period_s + 30)
        self._heal()
        if self._error is not None:
            raise FaultError(f"flapping stopped after {self.flaps} cut(s): {self._error}")


class NetworkFlapSpec(FaultSpecModel):
    type: Literal["network-flap"]
    scope: Scope = "workload"
    down_s: float = Field(default=2.0, gt=0, le=600)
    period_s: float = Field(default=5.0, gt=0, le=3600)
    duration_s: float = Field(default=20.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _up_between_cuts(self) -> NetworkFlapSpec:
        if self.down_s >= self.period_s:
            raise ValueError(
                f"down_s ({self.down_s:g}) must be shorter than period_s ({self.period_s:g}): "
                "the target must be back between two cuts"
            )
        return self


def _build(
    spec: NetworkFlapSpec, target: Target, backend: Backend, journal: Journal | None
) -> NetworkFlap:
    name = node_of(backend, target.workload) if spec.scope == "node" else target.workload
    return NetworkFlap(backend, spec.scope, name, spec.down_s, spec.period_s, journal)


FAULT = FaultType(
    spec=NetworkFlapSpec,
    build=_build,
    summary="cut the workload (or its node) off the network for down_s every period_s",
    variant=lambda spec, target: spec.scope,
    variants=("node", "workload"),
)
