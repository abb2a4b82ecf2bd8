"""The fault journal: an append-only, fsync'd record of every fault the harness acts on.

Filled by the faults (``chaos.faults``): a record is written and fsync'd in state
``injecting`` BEFORE the fault touches the cluster, then ``injected``, then
``reverted`` or ``revert_failed``. Read by ``rto revert`` / ``rto lab down`` and the
Chaos Toolkit rollback, which rebuild each pending fault from its record and revert
it (``chaos.faults.revert_pending``: the journal stores, the faults replay), so
a harness killed mid-fault (SIGKILL, power cut) never leaves a fault behind.

One JSON line per state change; the last line of an id is its state. Writers take
an exclusive ``flock`` so concurrent harness processes never interleave lines.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import JournalError

__all__ = [
    "DEFAULT_JOURNAL",
    "FaultRecord",
    "FaultState",
    "Journal",
    "JsonScalar",
    "new_fault_id",
]

DEFAULT_JOURNAL = Path("/var/lib/rto-harness/journal.jsonl")

JsonScalar = str | int | float | bool | None
FaultState = Literal["injecting", "injected", "reverted", "revert_failed"]
_PENDING: frozenset[str] = frozenset({"injecting", "injected", "revert_failed"})


def new_fault_id() -> str:
    return uuid.uuid4().hex[:12]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class FaultRecord(BaseModel):
    """Everything needed to rebuild a fault and revert it in another process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    fault: str  # chaos.faults type name, e.g. "node-power-off"
    params: dict[str, JsonScalar] = Field(default_factory=dict)
    backend: str  # backend name the fault acted on ("lab", "kube", "fake")
    target: str  # node or workload name, for humans reading the journal
    state: FaultState
    at: str = Field(default_factory=_now_iso)  # wall clock of this state change
    error: str | None = None


class Journal:
    """The on-disk journal. ``path`` defaults to $RTO_JOURNAL, else DEFAULT_JOURNAL."""

    def __init__(self, path: Path | None = None) -> None:
        env = os.environ.get("RTO_JOURNAL")
        self.path = path or (Path(env) if env else DEFAULT_JOURNAL)

    # --- writing ---------------------------------------------------------------
    @contextmanager
    def _locked(self, mode: str, lock: int) -> Iterator[IO[str]]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # errors="replace": a damaged byte makes a line fail to parse (an
            # error naming it, or a torn last line), never a UnicodeDecodeError.
            fh = self.path.open(mode, encoding="utf-8", errors="replace")
        except OSError as exc:
            raise JournalError(
                f"cannot open the fault journal {self.path}: {exc.strerror or exc}; "
                "set RTO_JOURNAL to a writable path"
            ) from None
        with fh:
            fcntl.flock(fh, lock)
            try:
                yield fh
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _append(self, record: FaultRecord) -> None:
        line = record.model_dump_json() + "\n"
        with self._locked("a", fcntl.LOCK_EX) as fh:
            fh.write(line)
            fh.flush()
            # The record must be on disk before the fault acts: after a crash the
            # journal is the only way to know a fault is out there.
            os.fsync(fh.fileno())

    def injecting(self, record: FaultRecord) -> None:
        """Record a fault about to act (state forced to ``injecting``)."""
        self._append(record.model_copy(update={"state": "injecting", "at": _now_iso()}))

    def _transition(self, fault_id: str, state: FaultState, error: str | None = None) -> None:
        current = self.get(fault_id)
        if current is None:
            raise JournalError(f"{self.path}: no fault {fault_id} to mark {state}")
        self._append(current.model_copy(update={"state": state, "at": _now_iso(), "error": error}))

    def injected(self, fault_id: str) -> None:
        self._transition(fault_id, "injected")

    def reverted(self, fault_id: str) -> None:
        self._transition(fault_id, "reverted")

    def revert_failed(self, fault_id: str, error: str) -> None:
        self._transition(fault_id, "revert_failed", error)

    # --- reading ---------------------------------------------------------------
    def records(self) -> list[FaultRecord]:
        """The latest state of every fault, in the order they were first journaled."""
        if not self.path.exists():
            return []
        latest: dict[str, FaultRecord] = {}
        with self._locked("r", fcntl.LOCK_SH) as fh:
            lines = fh.read().splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = FaultRecord.model_validate(json.loads(line))
            except (ValueError, ValidationError) as exc:
                # A torn last line (killed mid-write) cannot hold a fault that
                # acted: the fsync happens before acting. Earlier lines must parse.
                if n == len(lines):
                    continue
                raise JournalError(f"{self.path}: line {n} is not a fault record: {exc}") from None
            latest[rec.id] = rec
        return list(latest.values())

    def get(self, fault_id: str) -> FaultRecord | None:
        return next((r for r in self.records() if r.id == fault_id), None)

    def pending(self) -> list[FaultRecord]:
        """Faults that may still be acting: injecting, injected or revert_failed."""
        return [r for r in self.records() if r.state in _PENDING]
