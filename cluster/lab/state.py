"""The lab's on-disk state: one SQLite database shared by every lab process.

Written by the harness (``LabBackend``: workloads wanted, cordon, fence), the
control plane daemon (scheduling, node readiness, evictions, pod status it
hears in heartbeats) and read by node agents (which pods to run). It lives on
disk so ``rto lab down`` can remove everything even after the harness was
killed. Times are CLOCK_MONOTONIC seconds (``time.monotonic()``), which is
system-wide, so every process on the machine agrees on them.

Node <-> control plane traffic does NOT go through this file: heartbeats and
pod status travel over the lab bridge (UDP, ``HEARTBEAT_PORT``), so a network
partition looks like one. Agents only *read* their assignments here (as a
kubelet watches the API), which is why a partitioned node keeps its pods.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

__all__ = [
    "HEARTBEAT_PORT",
    "HUB_IP",
    "LAB_NET",
    "RUN_DIR",
    "SCHEMA",
    "STATE_DIR",
    "connect",
    "node_ip",
    "node_pod_subnet",
]

# Overridable (RTO_LAB_STATE_DIR / RTO_LAB_RUN_DIR) so tests can run a node agent
# against a private database without touching a lab that is up on the machine.
STATE_DIR = Path(os.environ.get("RTO_LAB_STATE_DIR", "/var/lib/rto-lab"))  # db, images, volumes
RUN_DIR = Path(os.environ.get("RTO_LAB_RUN_DIR", "/run/rto-lab"))  # runc roots, pid files

# Addresses: only the benchmarking range 198.18.0.0/15.
LAB_NET = "198.18.0.0/15"
HUB_IP = "198.18.0.1"  # the hub namespace: bridge, control plane, probers
HEARTBEAT_PORT = 7946


def node_ip(index: int) -> str:
    """Node ``index`` (1-based) on the lab bridge: 198.18.0.(10+i)/24."""
    return f"198.18.0.{10 + index}"


def node_pod_subnet(index: int) -> str:
    """Pods of node ``index`` live in 198.18.(10+i).0/24; .1 is the node."""
    return f"198.18.{10 + index}.0/24"


SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    idx INTEGER NOT NULL UNIQUE,       -- 1-based, fixes its addresses
    schedulable INTEGER NOT NULL DEFAULT 1,
    ready INTEGER NOT NULL DEFAULT 0,
    fenced INTEGER NOT NULL DEFAULT 0,  -- out-of-service taint
    powered INTEGER NOT NULL DEFAULT 1,
    last_heartbeat REAL,                -- monotonic, set by the control plane
    ready_changed REAL,
    agent_pid INTEGER
);
CREATE TABLE IF NOT EXISTS workloads (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,                 -- pod | vmi
    node TEXT,                          -- NULL while Pending
    phase TEXT NOT NULL,                -- cluster.api.Phase values
    instance TEXT,                      -- identity of the running instance
    restarts INTEGER NOT NULL DEFAULT 0,
    ip TEXT,                            -- address in the node's pod subnet
    slot INTEGER,                       -- host number within the node subnet
    port INTEGER NOT NULL DEFAULT 80,
    min_available INTEGER NOT NULL DEFAULT 0,  -- disruption budget (0: none)
    conditions TEXT NOT NULL DEFAULT '[]',     -- JSON list of {type,status,reason}
    generation INTEGER NOT NULL DEFAULT 0,     -- bumped on every (re)schedule
    created REAL NOT NULL,
    updated REAL NOT NULL,
    eviction_strategy TEXT NOT NULL DEFAULT 'LiveMigrate',  -- VMIs: LiveMigrate | None
    migrating_to TEXT                   -- VMIs: live migration in flight to this node
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    source TEXT NOT NULL,
    name TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL                 -- JSON
);
"""


def connect(db: Path | None = None) -> sqlite3.Connection:
    """Open the lab database (WAL, so readers never block the writer)."""
    path = db or STATE_DIR / "state.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.executescript(SCHEMA)
    _add_missing_columns(conn)
    return conn


# Columns added after the first schema: a database made by an older lab_up
# (still up while the harness is upgraded) gets them on its next connect.
_LATER_COLUMNS = {
    "eviction_strategy": "TEXT NOT NULL DEFAULT 'LiveMigrate'",
    "migrating_to": "TEXT",
}


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    have = {r[1] for r in conn.execute("PRAGMA table_info(workloads)").fetchall()}
    for column, decl in _LATER_COLUMNS.items():
        if column not in have:
            try:
                conn.execute(f"ALTER TABLE workloads ADD COLUMN {column} {decl}")
            except sqlite3.OperationalError as exc:
                # Another process added it between our check and ours.
                if "duplicate column" not in str(exc):
                    raise
