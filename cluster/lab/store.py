"""Typed access to the lab's SQLite state (schema in ``cluster.lab.state``).

Filled and read by the control plane daemon (``cluster.lab.controlplane``:
heartbeats, readiness, evictions, scheduling), by ``LabBackend`` (what the
harness wants: workloads, cordon, fence, settings) and by ``lifecycle`` (nodes
at ``lab_up``). Every reader gets frozen dataclasses, never ``sqlite3.Row``
or dicts, so a column rename breaks at one place. Writes that read-then-write
(scheduling, status from a heartbeat) run in ``BEGIN IMMEDIATE`` transactions
because several processes share the file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cluster.api import Condition, Phase, WorkloadKind
from cluster.lab import state
from cluster.lab.scheduling import choose_node
from core.clock import Clock, RealClock
from core.errors import BackendError

__all__ = [
    "FIRST_SLOT",
    "LAST_SLOT",
    "EventRow",
    "NodeRow",
    "PodReport",
    "Store",
    "WorkloadRow",
    "db_path",
    "pod_ip",
]

# Host numbers a node hands out in its pod subnet (.1 is the node's cbr0).
FIRST_SLOT = 2
LAST_SLOT = 250


def db_path() -> Path:
    """Where the lab database lives (follows ``state.STATE_DIR`` overrides)."""
    return Path(state.STATE_DIR) / "state.db"


def pod_ip(node_index: int, slot: int) -> str:
    """Address of host ``slot`` in node ``node_index``'s pod subnet."""
    return f"198.18.{10 + node_index}.{slot}"


@dataclass(frozen=True)
class NodeRow:
    name: str
    idx: int
    schedulable: bool
    ready: bool
    fenced: bool
    powered: bool
    last_heartbeat: float | None
    ready_changed: float | None
    agent_pid: int | None


@dataclass(frozen=True)
class WorkloadRow:
    name: str
    kind: WorkloadKind
    node: str | None
    phase: Phase
    instance: str | None
    restarts: int
    ip: str | None
    slot: int | None
    port: int
    min_available: int
    conditions: tuple[Condition, ...]
    generation: int
    created: float
    updated: float
    # VMIs: what a drain does (LiveMigrate | None) and a live migration in flight.
    eviction_strategy: str = "LiveMigrate"
    migrating_to: str | None = None


@dataclass(frozen=True)
class EventRow:
    id: int
    at: float
    source: str
    name: str
    reason: str
    message: str
    data: dict[str, str]


@dataclass(frozen=True)
class PodReport:
    """One pod's status as a node agent reported it in a heartbeat."""

    name: str
    phase: Phase
    instance: str | None
    restarts: int
    generation: int
    ip: str | None
    # Conditions the node observed beyond Ready (VMIs: Paused with reason IOError).
    conditions: tuple[Condition, ...] = ()


def _conditions_from_json(text: str) -> tuple[Condition, ...]:
    raw = json.loads(text)
    return tuple(
        Condition(type=str(c["type"]), status=bool(c["status"]), reason=str(c.get("reason", "")))
        for c in raw
    )


def _conditions_to_json(conditions: tuple[Condition, ...]) -> str:
    return json.dumps(
        [{"type": c.type, "status": c.status, "reason": c.reason} for c in conditions]
    )


def _with_condition(
    conditions: tuple[Condition, ...], type_: str, status: bool, reason: str
) -> tuple[Condition, ...]:
    """Replace (or add) the condition of ``type_``, keeping the others in order."""
    new = Condition(type=type_, status=status, reason=reason)
    out = [new if c.type == type_ else c for c in conditions]
    if not any(c.type == type_ for c in conditions):
        out.append(new)
    return tuple(out)


def _node(row: sqlite3.Row) -> NodeRow:
    return NodeRow(
        name=row["name"],
        idx=int(row["idx"]),
        schedulable=bool(row["schedulable"]),
        ready=bool(row["ready"]),
        fenced=bool(row["fenced"]),
        powered=bool(row["powered"]),
        last_heartbeat=row["last_heartbeat"],
        ready_changed=row["ready_changed"],
        agent_pid=row["agent_pid"],
    )


def _workload(row: sqlite3.Row) -> WorkloadRow:
    return WorkloadRow(
        name=row["name"],
        kind=WorkloadKind(row["kind"]),
        node=row["node"],
        phase=Phase(row["phase"]),
        instance=row["instance"],
        restarts=int(row["restarts"]),
        ip=row["ip"],
        slot=row["slot"],
        port=int(row["port"]),
        min_available=int(row["min_available"]),
        conditions=_conditions_from_json(row["conditions"]),
        generation=int(row["generation"]),
        created=float(row["created"]),
        updated=float(row["updated"]),
        eviction_strategy=str(row["eviction_strategy"]),
        migrating_to=row["migrating_to"],
    )


def _event(row: sqlite3.Row) -> EventRow:
    data = json.loads(row["data"])
    return EventRow(
        id=int(row["id"]),
        at=float(row["at"]),
        source=row["source"],
        name=row["name"],
        reason=row["reason"],
        message=row["message"],
        data={str(k): str(v) for k, v in data.items()},
    )


class Store:
    """One connection to the lab database with typed reads and writes.

    Thread-safe within a process (one lock around the connection); several
    processes coordinate through SQLite's own locking.
    """

    def __init__(self, path: Path | None = None, clock: Clock | None = None) -> None:
        self.path = path or db_path()
        self.clock: Clock = clock or RealClock()
        try:
            self._conn = state.connect(self.path)
            # WAL + NORMAL: a commit does not fsync; heartbeats write many times a
            # second and a lost last write after a host crash does not matter.
            self._conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise BackendError(f"cannot open the lab database {self.path}: {exc}") from exc
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locked) transaction: read-then-write is atomic."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._conn.execute(sql, args).fetchall())

    # --- events -------------------------------------------------------------
    def _add_event(
        self,
        conn: sqlite3.Connection,
        source: str,
        name: str,
        reason: str,
        message: str = "",
        data: dict[str, str] | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO events (at, source, name, reason, message, data) VALUES (?,?,?,?,?,?)",
            (self.clock.now(), source, name, reason, message, json.dumps(data or {})),
        )

    def add_event(
        self,
        source: str,
        name: str,
        reason: str,
        message: str = "",
        data: dict[str, str] | None = None,
    ) -> None:
        with self._tx() as conn:
            self._add_event(conn, source, name, reason, message, data)

    def events_since(self, since: float) -> list[EventRow]:
        rows = self._query("SELECT * FROM events WHERE at > ? ORDER BY at, id", (since,))
        return [_event(r) for r in rows]

    # --- settings -----------------------------------------------------------
    def get_setting(self, key: str, default: object = None) -> object:
        rows = self._query("SELECT value FROM settings WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    def put_setting(self, key: str, value: object) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    # --- nodes --------------------------------------------------------------
    def add_node(self, name: str, idx: int) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO nodes (name, idx, ready_changed) VALUES (?, ?, ?)",
                (name, idx, self.clock.now()),
            )

    def nodes(self) -> list[NodeRow]:
        return [_node(r) for r in self._query("SELECT * FROM nodes ORDER BY idx")]

    def find_node(self, name: str) -> NodeRow | None:
        rows = self._query("SELECT * FROM nodes WHERE name = ?", (name,))
        return _node(rows[0]) if rows else None

    def node(self, name: str) -> NodeRow:
        row = self.find_node(name)
        if row is None:
            known = ", ".join(n.name for n in self.nodes()) or "none (is the lab up?)"
            raise BackendError(f"no lab node {name!r}; known nodes: {known}")
        return row

    def set_node_flag(self, name: str, column: str, value: bool, reason: str = "") -> bool:
        """Set schedulable/fenced/powered; True (and an event) if it changed."""
        if column not in ("schedulable", "fenced", "powered"):
            raise ValueError(f"not a node flag: {column}")
        self.node(name)
        with self._tx() as conn:
            cur = conn.execute(
                f"UPDATE nodes SET {column} = ? WHERE name = ? AND {column} != ?",
                (int(value), name, int(value)),
            )
            changed = cur.rowcount > 0
            if changed and reason:
                self._add_event(conn, "node", name, reason)
        return changed

    def set_agent_pid(self, name: str, pid: int | None) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE nodes SET agent_pid = ? WHERE name = ?", (pid, name))

    def record_heartbeat(self, name: str) -> bool:
        """Note a heartbeat from ``name`` now; True if the node became Ready."""
        now = self.clock.now()
        with self._tx() as conn:
            conn.execute("UPDATE nodes SET last_heartbeat = ? WHERE name = ?", (now, name))
            cur = conn.execute(
                "UPDATE nodes SET ready = 1, ready_changed = ? WHERE name = ? AND ready = 0",
                (now, name),
            )
            became_ready = cur.rowcount > 0
            if became_ready:
                self._add_event(conn, "node", name, "NodeReady", "heartbeats received")
        return became_ready

    def mark_not_ready(self, name: str, message: str) -> bool:
        """Node lost: ready=0 and Ready=false on its pods. True if it changed."""
        now = self.clock.now()
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE nodes SET ready = 0, ready_changed = ? WHERE name = ? AND ready = 1",
                (now, name),
            )
            if cur.rowcount == 0:
                return False
            self._add_event(conn, "node", name, "NodeNotReady", message)
            for row in conn.execute("SELECT * FROM workloads WHERE node = ?", (name,)).fetchall():
                w = _workload(row)
                conds = _with_condition(w.conditions, "Ready", False, "NodeNotReady")
                conn.execute(
                    "UPDATE workloads SET conditions = ?, updated = ? WHERE name = ?",
                    (_conditions_to_json(conds), now, w.name),
                )
                self._add_event(
                    conn, w.kind.value, w.name, "NodeNotReady", f"node {name} is not ready"
                )
        return True

    # --- workloads ----------------------------------------------------------
    def workloads(self) -> list[WorkloadRow]:
        return [_workload(r) for r in self._query("SELECT * FROM workloads ORDER BY created")]

    def workloads_on(self, node: str) -> list[WorkloadRow]:
        rows = self._query("SELECT * FROM workloads WHERE node = ? ORDER BY created", (node,))
        return [_workload(r) for r in rows]

    def find_workload(self, name: str) -> WorkloadRow | None:
        rows = self._query("SELECT * FROM workloads WHERE name = ?", (name,))
        return _workload(rows[0]) if rows else None

    def workload(self, name: str) -> WorkloadRow:
        row = self.find_workload(name)
        if row is None:
            raise BackendError(f"no lab workload {name!r}; create it first (create_workload)")
        return row

    def insert_workload(
        self,
        name: str,
        kind: WorkloadKind,
        node: str | None = None,
        min_available: int = 0,
        eviction_strategy: str = "LiveMigrate",
    ) -> WorkloadRow:
        """A new Pending workload; with ``node`` it is bound there at once
        (like ``spec.nodeName``: the scheduler is bypassed)."""
        now = self.clock.now()
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM workloads WHERE name = ?", (name,)).fetchone():
                raise BackendError(f"workload {name!r} already exists; delete it first")
            conn.execute(
                "INSERT INTO workloads (name, kind, phase, min_available, created, updated, "
                "eviction_strategy) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, kind.value, Phase.PENDING.value, min_available, now, now, eviction_strategy),
            )
            self._add_event(conn, kind.value, name, "Created")
            if node is not None:
                row = conn.execute("SELECT * FROM nodes WHERE name = ?", (node,)).fetchone()
                if row is None:
                    raise BackendError(f"no lab node {node!r} to bind workload {name!r} to")
                self._bind(conn, name, _node(row))
        return self.workload(name)

    def delete_workload(self, name: str) -> WorkloadRow:
        with self._tx() as conn:
            row = conn.execute("SELECT * FROM workloads WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise BackendError(f"no lab workload {name!r} to delete")
            w = _workload(row)
            conn.execute("DELETE FROM workloads WHERE name = ?", (name,))
            self._add_event(conn, w.kind.value, name, "Deleted", f"was on {w.node}")
        return w

    def set_min_available(self, name: str, value: int) -> None:
        self.workload(name)
        with self._tx() as conn:
            conn.execute("UPDATE workloads SET min_available = ? WHERE name = ?", (value, name))

    def unbind(self, name: str, reason: str, message: str) -> bool:
        """Take a workload off its node: Pending, no address, generation+1.

        Deployment semantics: the same name comes back as a replacement the
        scheduler places at once. False if it was not bound.
        """
        now = self.clock.now()
        with self._tx() as conn:
            row = conn.execute("SELECT * FROM workloads WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise BackendError(f"no lab workload {name!r}")
            w = _workload(row)
            if w.node is None:
                return False
            conn.execute(
                "UPDATE workloads SET node = NULL, phase = ?, instance = NULL, ip = NULL, "
                "slot = NULL, conditions = '[]', generation = generation + 1, updated = ?, "
                "migrating_to = NULL "
                "WHERE name = ?",
                (Phase.PENDING.value, now, name),
            )
            self._add_event(conn, w.kind.value, name, reason, message, {"node": w.node})
        return True

    def begin_migration(self, name: str, src: str, dst: str) -> WorkloadRow:
        """Mark VMI ``name`` (on ``src``) as live-migrating to ``dst``.

        While the mark is set the source agent neither restarts nor destroys
        the domain (it leaves under libvirt's control). Raises if the VMI moved,
        is not on ``src`` or is already migrating.
        """
        with self._tx() as conn:
            row = conn.execute("SELECT * FROM workloads WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise BackendError(f"no lab workload {name!r} to migrate")
            w = _workload(row)
            if w.kind is not WorkloadKind.VMI:
                raise BackendError(f"workload {name} is a {w.kind.value}: only VMIs migrate")
            if w.node != src:
                raise BackendError(f"VMI {name} is on {w.node}, not {src}: not migrated")
            if w.migrating_to is not None:
                raise BackendError(
                    f"VMI {name} is already migrating to {w.migrating_to}; wait for it to end"
                )
            conn.execute("UPDATE workloads SET migrating_to = ? WHERE name = ?", (dst, name))
            self._add_event(
                conn,
                "migration",
                name,
                "MigrationScheduled",
                f"{src} -> {dst}",
                {"source": src, "target": dst},
            )
            return w

    def finish_migration(
        self, name: str, dst: str, ok: bool, message: str, data: dict[str, str]
    ) -> None:
        """End a migration: on success the VMI is bound to ``dst`` (generation+1,
        same address, instance and conditions, so ``dst``'s agent adopts the
        running domain); either way the in-flight mark goes."""
        with self._tx() as conn:
            if ok:
                conn.execute(
                    "UPDATE workloads SET node = ?, generation = generation + 1, "
                    "migrating_to = NULL, updated = ? WHERE name = ?",
                    (dst, self.clock.now(), name),
                )
            else:
                conn.execute("UPDATE workloads SET migrating_to = NULL WHERE name = ?", (name,))
            reason = "MigrationSucceeded" if ok else "MigrationFailed"
            self._add_event(conn, "migration", name, reason, message, data)

    def _bind(self, conn: sqlite3.Connection, name: str, node: NodeRow) -> str:
        """Bind ``name`` to ``node`` with the lowest free slot; returns its IP."""
        kind = conn.execute("SELECT kind FROM workloads WHERE name = ?", (name,)).fetchone()
        vmi = kind is not None and kind["kind"] == WorkloadKind.VMI.value
        if vmi:
            # VMIs number lab-wide in the VMI subnet (their address follows
            # them across nodes, see net.VMI_SUBNET).
            sql = "SELECT slot FROM workloads WHERE kind = 'vmi' AND slot IS NOT NULL"
            args: tuple[str, ...] = ()
        else:
            sql = "SELECT slot FROM workloads WHERE node = ? AND slot IS NOT NULL AND kind = 'pod'"
            args = (node.name,)
        used = {int(r["slot"]) for r in conn.execute(sql, args).fetchall()}
        slot = next((s for s in range(FIRST_SLOT, LAST_SLOT + 1) if s not in used), None)
        if slot is None:
            what = "VMI" if vmi else f"node {node.name}'s pod"
            raise BackendError(f"no free {what} address left (slots {FIRST_SLOT}..{LAST_SLOT})")
        ip = f"198.18.100.{slot}" if vmi else pod_ip(node.idx, slot)
        conds = _conditions_to_json((Condition("PodScheduled", True, "Scheduled"),))
        conn.execute(
            "UPDATE workloads SET node = ?, slot = ?, ip = ?, phase = ?, instance = NULL, "
            "conditions = ?, generation = generation + 1, updated = ? WHERE name = ?",
            (node.name, slot, ip, Phase.PENDING.value, conds, self.clock.now(), name),
        )
        row = conn.execute("SELECT kind FROM workloads WHERE name = ?", (name,)).fetchone()
        self._add_event(
            conn, row["kind"], name, "Scheduled", f"assigned to {node.name}", {"node": node.name}
        )
        return ip

    def schedule_pending(self) -> list[tuple[str, str]]:
        """Place every unbound Pending workload; returns (workload, node) pairs.

        The choice is ``scheduling.choose_node``: the policy lives there.
        """

        placed: list[tuple[str, str]] = []
        with self._tx() as conn:
            pending = conn.execute(
                "SELECT name FROM workloads WHERE node IS NULL AND phase = ? ORDER BY created",
                (Phase.PENDING.value,),
            ).fetchall()
            if not pending:
                return placed
            nodes = [_node(r) for r in conn.execute("SELECT * FROM nodes").fetchall()]
            for p in pending:
                counts = {
                    r["node"]: int(r["n"])
                    for r in conn.execute(
                        "SELECT node, COUNT(*) AS n FROM workloads "
                        "WHERE node IS NOT NULL GROUP BY node"
                    ).fetchall()
                }
                target = choose_node(nodes, counts)
                if target is None:
                    break  # nothing schedulable now; retried next period
                self._bind(conn, p["name"], target)
                placed.append((p["name"], target.name))
        return placed

    def apply_report(self, node: str, report: PodReport) -> bool:
        """Status a node reported for one pod; applied only if the pod is bound
        to that node at that generation (a stale node cannot overwrite the
        replacement). True if anything changed."""
        now = self.clock.now()
        with self._tx() as conn:
            row = conn.execute("SELECT * FROM workloads WHERE name = ?", (report.name,)).fetchone()
            if row is None:
                return False
            w = _workload(row)
            if w.node != node or w.generation != report.generation:
                return False
            paused = any(c.type == "Paused" and c.status for c in report.conditions)
            ready = report.phase is Phase.RUNNING and report.instance is not None and not paused
            reason = "ContainersReady" if ready else ("Paused" if paused else report.phase.value)
            conds = _with_condition(w.conditions, "Ready", ready, reason)
            for c in report.conditions:
                conds = _with_condition(conds, c.type, c.status, c.reason)
            if (
                w.phase is report.phase
                and w.instance == report.instance
                and w.restarts == report.restarts
                and w.conditions == conds
            ):
                return False
            conn.execute(
                "UPDATE workloads SET phase = ?, instance = ?, restarts = ?, conditions = ?, "
                "updated = ? WHERE name = ?",
                (
                    report.phase.value,
                    report.instance,
                    report.restarts,
                    _conditions_to_json(conds),
                    now,
                    w.name,
                ),
            )
            kind = w.kind.value
            if report.restarts > w.restarts:
                self._add_event(
                    conn, kind, w.name, "ContainerRestarted", f"restart #{report.restarts}"
                )
            if report.instance is not None and report.instance != w.instance:
                self._add_event(
                    conn, kind, w.name, "Started", f"on {node}", {"instance": report.instance}
                )
            if report.phase is not w.phase:
                self._add_event(
                    conn,
                    kind,
                    w.name,
                    "PhaseChanged",
                    f"{w.phase.value} -> {report.phase.value}",
                    {"from": w.phase.value, "to": report.phase.value},
                )
        return True
