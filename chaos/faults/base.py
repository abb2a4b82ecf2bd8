"""The fault contract: a small object with ``inject()`` and ``revert()``, journaled,
and ``FaultType``, the one declaration each fault module makes of itself.

Subclassed by every fault module in this package; used by the runner, the Chaos
Toolkit functions and ``chaos.faults.revert_pending``. ``inject`` writes the
journal record (fsync'd) before it acts; ``revert`` is idempotent and safe to
call when ``inject`` never ran, so the runner can call it unconditionally in
``finally``. Faults are composable with ``Compose`` (reverted in reverse order).

A fault module users can name in an experiment ends with ``FAULT =
FaultType(...)``: its spec model (the ``fault:`` block of an experiment), how
to build the Fault for a target, its variants, which workload kinds a spec may
aim at, and whether it is held until recovery or for ``duration_s``.
``chaos.faults`` collects them; the experiment schema, the report's fault list
and the expectations' validation are derived from that collection. Every
``Fault`` subclass (those of the harness's own state too) is also listed by its
``type`` for journal replay.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, Protocol, Self, TypeVar

from pydantic import BaseModel, ConfigDict

from chaos.journal import FaultRecord, Journal, JsonScalar, new_fault_id
from cluster.api import Backend
from core.errors import FaultError, HarnessError

__all__ = [
    "KINDS",
    "Compose",
    "Fault",
    "FaultLike",
    "FaultSpecModel",
    "FaultType",
    "LocalState",
    "NodeFault",
    "Target",
    "node_of",
]

KINDS: tuple[str, ...] = ("pod", "vmi")


class FaultSpecModel(BaseModel):
    """Base of every fault's spec (the ``fault:`` block of an experiment).

    Subclasses narrow ``type`` to their ``Literal`` name; a fault held for a
    time declares ``duration_s``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str

    def held_for(self) -> float | None:
        """Seconds the runner keeps the fault in place; None: until recovery."""
        duration = getattr(self, "duration_s", None)  # declared by faults held for a time
        return None if duration is None else float(duration)


class Target(Protocol):
    """What a fault needs of the experiment's target (``chaos.spec.TargetSpec`` fits)."""

    @property
    def workload(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def eviction_strategy(self) -> str: ...


S = TypeVar("S", bound=FaultSpecModel)


def _no_variant(spec: Any, target: Target) -> str:
    return ""


def _every_kind(spec: Any, kind: str) -> str | None:
    return None


@dataclass(frozen=True)
class FaultType(Generic[S]):
    """One fault as users name it: declared once, at the end of its module.

    ``build`` aims the fault at the target as it is now (its node, say).
    ``check`` answers whether a spec fits a workload kind: None, or the error
    a user reads. ``variant`` is the sub-kind a report groups by ("" for
    none); ``variants`` lists them for documentation and reports. A fault
    held until recovery (a crash, a drain) is one whose spec declares no
    ``duration_s``: the runner keeps it in place until the workload recovered.
    """

    spec: type[S]
    build: Callable[[S, Target, Backend, Journal | None], Fault]
    summary: str
    variant: Callable[[S, Target], str] = _no_variant
    variants: tuple[str, ...] = ()
    check: Callable[[S, str], str | None] = _every_kind
    kinds: tuple[str, ...] = field(default=KINDS)

    @property
    def held_until_recovery(self) -> bool:
        return "duration_s" not in self.spec.model_fields

    @property
    def name(self) -> str:
        default = self.spec.model_fields["type"].annotation
        names: tuple[object, ...] = getattr(default, "__args__", ())
        if len(names) != 1 or not isinstance(names[0], str):
            raise FaultError(f"{self.spec.__name__}.type must be one Literal name")
        return names[0]

    def fits(self, spec: S, kind: str) -> str | None:
        """None if ``spec`` may target a ``kind`` workload, else why not."""
        if kind not in self.kinds:
            return f"fault {self.name} applies to kind {' or '.join(self.kinds)}, not {kind}"
        return self.check(spec, kind)


def node_of(backend: Backend, workload: str) -> str:
    """The node ``workload`` runs on now; a fault aimed at a Pending one has no target."""
    node = backend.workload(workload).node
    if node is None:
        raise FaultError(f"workload {workload} is not on any node (Pending): nothing to hit")
    return node


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
    # Every concrete subclass by its ``type``: what a journal record names.
    journaled: ClassVar[dict[str, builtins.type[Fault]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("type")
        if isinstance(name, str):
            Fault.journaled[name] = cls

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
