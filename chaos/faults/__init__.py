"""The faults: small journaled objects with ``inject()`` / ``revert()``.

``build_fault`` turns a validated spec into a fault on the target's current node
(read by the runner and the Chaos Toolkit functions); ``from_record`` rebuilds a
fault from its journal record (read by ``Journal.revert_pending``). ``FAULT_TYPES``
is the one registry of fault types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chaos.faults.base import Compose, Fault, FaultLike
from chaos.faults.harness_state import NodeFence, RestartHealingOff
from chaos.faults.network_partition import NetworkPartition
from chaos.faults.node_drain import NodeDrain
from chaos.faults.node_power import NodePowerOff
from chaos.faults.process_crash import ProcessCrash
from chaos.faults.storage import StorageLost
from chaos.journal import FaultRecord, Journal
from cluster.api import Backend, VolumeFailure
from core.errors import FaultError

if TYPE_CHECKING:
    from chaos.spec import FaultSpec, TargetSpec

__all__ = [
    "FAULT_TYPES",
    "Compose",
    "Fault",
    "FaultLike",
    "NetworkPartition",
    "NodeDrain",
    "NodePowerOff",
    "ProcessCrash",
    "StorageLost",
    "build_fault",
    "from_record",
]

FAULT_TYPES: dict[str, type[Fault]] = {
    cls.type: cls
    for cls in (
        ProcessCrash,
        NodeDrain,
        NodePowerOff,
        NetworkPartition,
        StorageLost,
        RestartHealingOff,
        NodeFence,
    )
}


def from_record(record: FaultRecord, backend: Backend, journal: Journal | None = None) -> Fault:
    try:
        cls = FAULT_TYPES[record.fault]
    except KeyError:
        raise FaultError(
            f"journal record {record.id} has unknown fault type {record.fault!r}; "
            f"known: {', '.join(sorted(FAULT_TYPES))}"
        ) from None
    try:
        return cls.rebuild(record, backend, journal)
    except KeyError as exc:
        raise FaultError(f"journal record {record.id} lacks parameter {exc}") from None


def _node_of(backend: Backend, workload: str) -> str:
    node = backend.workload(workload).node
    if node is None:
        raise FaultError(f"workload {workload} is not on any node (Pending): nothing to hit")
    return node


def build_fault(
    spec: FaultSpec, target: TargetSpec, backend: Backend, journal: Journal | None
) -> Fault:
    """The fault for ``spec``, aimed at the target's node as it is *now*."""
    from chaos.spec import (
        NetworkPartitionSpec,
        NodeDrainSpec,
        NodePowerOffSpec,
        ProcessCrashSpec,
        StorageLostSpec,
    )

    wl = target.workload
    if isinstance(spec, ProcessCrashSpec):
        return ProcessCrash(backend, wl, journal, mode=spec.mode)
    if isinstance(spec, NodeDrainSpec):
        return NodeDrain(backend, _node_of(backend, wl), spec.respect_pdb, journal)
    if isinstance(spec, NodePowerOffSpec):
        return NodePowerOff(backend, _node_of(backend, wl), journal)
    if isinstance(spec, NetworkPartitionSpec):
        name = _node_of(backend, wl) if spec.scope == "node" else wl
        return NetworkPartition(backend, spec.scope, name, journal)
    if isinstance(spec, StorageLostSpec):
        return StorageLost(backend, wl, VolumeFailure(spec.mode), journal)
    raise FaultError(f"no fault implements {spec!r}")
