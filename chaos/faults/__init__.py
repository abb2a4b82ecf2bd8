"""The faults: small journaled objects with ``inject()`` / ``revert()``, one module each.

Every module of this package that declares ``FAULT = FaultType(...)`` is a
fault users can name in an experiment: this package finds them (so adding a
fault is adding its module) and ``FAULT_TYPES`` is the one registry, from which
``chaos.spec`` derives the experiment schema and ``reports.expectations`` the
report's fault list. ``build_fault`` turns a validated spec into a fault aimed
at the target as it is now (read by the runner and the Chaos Toolkit
functions); ``from_record`` rebuilds any journaled fault from its record and
``revert_pending`` replays what a journal still holds (``rto revert``, ``rto
lab down``, the Chaos Toolkit rollback).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from chaos.faults.base import (
    KINDS,
    Compose,
    Fault,
    FaultLike,
    FaultSpecModel,
    FaultType,
    Target,
)
from chaos.faults.harness_state import NodeFence, RestartHealingOff
from chaos.faults.network_partition import NetworkPartition
from chaos.faults.node_drain import NodeDrain
from chaos.faults.node_power import NodePowerOff
from chaos.faults.process_crash import ProcessCrash
from chaos.faults.storage import StorageLost
from chaos.journal import FaultRecord, Journal
from cluster.api import Backend
from core.errors import FaultError, HarnessError, JournalError

__all__ = [
    "FAULT_TYPES",
    "KINDS",
    "Compose",
    "Fault",
    "FaultLike",
    "FaultSpecModel",
    "FaultType",
    "NetworkPartition",
    "NodeDrain",
    "NodeFence",
    "NodePowerOff",
    "ProcessCrash",
    "RestartHealingOff",
    "StorageLost",
    "build_fault",
    "from_record",
    "revert_pending",
]


def _discover() -> dict[str, FaultType[Any]]:
    """Every ``FAULT`` declared by a module of this package, in module order."""
    found: dict[str, FaultType[Any]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        declared = getattr(module, "FAULT", None)
        if declared is None:
            continue  # the contract and the harness's own journaled state
        if not isinstance(declared, FaultType):
            raise FaultError(f"{module.__name__}.FAULT is not a FaultType")
        if declared.name in found:
            raise FaultError(f"fault {declared.name!r} is declared twice ({module.__name__})")
        found[declared.name] = declared
    return found


# The order the report lists faults in: the handbook's rows first, then any
# fault added since, by name.
_HANDBOOK = ("process-crash", "node-drain", "node-power-off", "network-partition", "storage-lost")
_found = _discover()
FAULT_TYPES: dict[str, FaultType[Any]] = {
    name: _found[name]
    for name in sorted(_found, key=lambda n: (_HANDBOOK.index(n) if n in _HANDBOOK else 99, n))
}


def build_fault(
    spec: FaultSpecModel, target: Target, backend: Backend, journal: Journal | None
) -> Fault:
    """The fault for ``spec``, aimed at the target's node as it is *now*."""
    try:
        declared = FAULT_TYPES[spec.type]
    except KeyError:
        raise FaultError(f"no fault implements {spec!r}") from None
    return declared.build(spec, target, backend, journal)


def from_record(record: FaultRecord, backend: Backend, journal: Journal | None = None) -> Fault:
    try:
        cls = Fault.journaled[record.fault]
    except KeyError:
        raise FaultError(
            f"journal record {record.id} has unknown fault type {record.fault!r}; "
            f"known: {', '.join(sorted(Fault.journaled))}"
        ) from None
    try:
        return cls.rebuild(record, backend, journal)
    except KeyError as exc:
        raise FaultError(f"journal record {record.id} lacks parameter {exc}") from None


def revert_pending(
    journal: Journal, backend_factory: Callable[[str], Backend]
) -> list[FaultRecord]:
    """Rebuild every pending fault of ``journal`` from its record and revert it, newest first.

    Idempotent: reverting an already healed node is a no-op on every backend.
    Tries every record; raises ``JournalError`` listing the ones that failed.
    """
    backends: dict[str, Backend] = {}
    done: list[FaultRecord] = []
    failures: list[str] = []
    for rec in reversed(journal.pending()):
        try:
            if rec.backend not in backends:
                backends[rec.backend] = backend_factory(rec.backend)
            from_record(rec, backends[rec.backend], journal).revert()
            done.append(rec)
        except HarnessError as exc:  # try the others; report every failure below
            failures.append(f"{rec.fault} on {rec.target} ({rec.id}): {exc}")
    if failures:
        raise JournalError(
            f"{len(failures)} fault(s) in {journal.path} could not be reverted: "
            + "; ".join(failures)
            + ". Fix the cause and run `rto revert` again."
        )
    return done
