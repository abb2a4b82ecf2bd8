"""The fault contract: a small object with ``inject()`` and ``revert()``, journaled.

Subclassed by every fault module in this package; used by the runner, the Chaos
Toolkit functions and ``Journal.revert_pending``. ``inject`` writes the journal
record (fsync'd) before it acts; ``revert`` is idempotent and safe to call when
``inject`` never ran, so the runner can call it unconditionally in ``finally``.
Faults are composable with ``Compose`` (reverted in reverse order).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal, Protocol, Self

from chaos.journal import FaultRecord, Journal, JsonScalar, new_fault_id
from cluster.api import Backend
from core.errors import FaultError, HarnessError

__all__ = ["Compose", "Fault", "FaultLike", "LocalState", "NodeFault"]

# "new": never injected (revert is a no-op). The others mirror the journal.
LocalState = Literal["new", "injecting", "injected", "reverted", "revert_failed"]


class FaultLike(Protocol):
    """What the runner needs: a single fault or a composition."""

    def inject(self) -> None: ...

    def revert(self) -> None: ...

    def describe(self) -> str: ...


class Fault(ABC):
    """One fault on one target. Subclasses set ``type`` and implement the three hooks."""

    type: ClassVar[str]

    def __init__(self, backend: Backend, journal: Journal | None = None) -> None:
        self.backend = backend
        self.journal = journal
        self.id = new_fault_id()
        self.state: LocalState = "new"

    # --- what subclasses provide -------------------------------------------------
    @property
    @abstractmethod
    def target(self) -> str:
        """The node or workload acted on."""

    @abstractmethod
    def params(self) -> dict[str, JsonScalar]:
        """Constructor arguments (besides backend/journal), JSON scalars only."""

    @classmethod
    @abstractmethod
    def from_params(cls, backend: Backend, params: Mapping[str, JsonScalar]) -> Self: ...

    @abstractmethod
    def _act(self) -> None: ...

    @abstractmethod
    def _undo(self) -> None:
        """Undo the fault; must be idempotent (it may run after a crash, twice)."""

    # --- the contract ----------------------------------------------------------
    def describe(self) -> str:
        return f"{self.type} on {self.target}"

    def to_record(self, state: LocalState = "injecting") -> FaultRecord:
        return FaultRecord(
            id=self.id,
            fault=self.type,
            params=self.params(),
            backend=self.backend.name,
            target=self.target,
            state="injecting" if state == "new" else state,
        )

    def inject(self) -> None:
        if self.state != "new":
            raise FaultError(f"{self.describe()}: already injected (state {self.state})")
        if self.journal is not None:
            self.journal.injecting(self.to_record())
        self.state = "injecting"
        try:
            self._act()
        except HarnessError as exc:
            # Left in "injecting": the fault may have half-acted, so revert must run.
            raise FaultError(f"{self.describe()}: inject failed: {exc}") from exc
        self.state = "injected"
        if self.journal is not None:
            self.journal.injected(self.id)

    def revert(self) -> None:
        if self.state in ("new", "reverted"):
            return
        try:
            self._undo()
        except HarnessError as exc:
            self.state = "revert_failed"
            if self.journal is not None:
                self.journal.revert_failed(self.id, str(exc))
            raise FaultError(
                f"{self.describe()}: revert failed: {exc}; it stays in the journal, "
                "run `rto revert` once the cause is fixed"
            ) from exc
        self.state = "reverted"
        if self.journal is not None:
            # If this write fails the fault stays pending on disk; a later
            # `rto revert` replays an idempotent undo, which is harmless.
            self.journal.reverted(self.id)

    @classmethod
    def rebuild(cls, record: FaultRecord, backend: Backend, journal: Journal | None) -> Self:
        """The fault a record describes, in the record's state (for revert_pending)."""
        fault = cls.from_params(backend, record.params)
        fault.id = record.id
        fault.journal = journal
        fault.state = record.state
        return fault


class NodeFault(Fault):
    """A fault whose only parameter is the node it acts on (power, fence, ...)."""

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


class Compose:
    """Several faults acting together; injected in order, reverted in reverse."""

    def __init__(self, faults: Sequence[FaultLike]) -> None:
        if not faults:
            raise FaultError("Compose needs at least one fault")
        self.faults = list(faults)

    def describe(self) -> str:
        return " + ".join(f.describe() for f in self.faults)

    def inject(self) -> None:
        # Stops at the first failure; the caller reverts (revert of a "new"
        # fault is a no-op, so the not-yet-injected ones are skipped).
        for fault in self.faults:
            fault.inject()

    def revert(self) -> None:
        errors: list[str] = []
        for fault in reversed(self.faults):
            try:
                fault.revert()
            except FaultError as exc:  # revert the others anyway, report all
                errors.append(str(exc))
        if errors:
            raise FaultError("; ".join(errors))
