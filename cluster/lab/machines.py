"""The lab's record of its own machines: which nodes it made, which it powered off.

Written by ``lifecycle.lab_up`` (the node names and numbers, the settings the
lab came up with), by the power driver and ``LabNodes`` (a node's power) and by
``set_profile``; read by everything that acts on a lab node from outside
Kubernetes (power, partitions, VMI guest faults, ``lab down`` after a SIGKILL).
It is one small JSON file, ``STATE_DIR/machines.json``: what Kubernetes knows
about the nodes (Ready, taints, leases, pods) is the API server's, never this
file's. Only whether the lab cut a node's power is here, because the API server
sees a silent kubelet either way.

Several processes share it (the harness, ``rto revert``, the virt-handlers
reading settings), so every write is read-modify-write under an ``flock`` and
lands by ``rename``: a reader sees the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.lab import state
from core.errors import BackendError

__all__ = ["Machine", "Machines", "machines_path"]


def machines_path() -> Path:
    """Where the record lives (follows ``state.STATE_DIR`` overrides)."""
    return Path(state.STATE_DIR) / "machines.json"


@dataclass(frozen=True)
class Machine:
    """One lab node as the lab made it: its name, number (fixes its addresses), power."""

    name: str
    idx: int
    powered: bool = True


class Machines:
    """Typed access to ``machines.json``; every call reads the file afresh."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or machines_path()

    # --- file ----------------------------------------------------------------------
    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"nodes": [], "settings": {}}
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot read the lab's record {self.path}: {exc}") from exc
        if not isinstance(data, dict):
            raise BackendError(f"the lab's record {self.path} is not a JSON object")
        data.setdefault("nodes", [])
        data.setdefault("settings", {})
        return data

    @contextlib.contextmanager
    def _update(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            yield data
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
            tmp.replace(self.path)

    def create(self, nodes: list[tuple[str, int]], settings: dict[str, object]) -> None:
        """A fresh record for a lab coming up (replaces any old one)."""
        with self._update() as data:
            data["nodes"] = [{"name": n, "idx": i, "powered": True} for n, i in nodes]
            data["settings"] = dict(settings)

    def remove(self) -> None:
        for p in (self.path, self.path.with_suffix(".lock")):
            p.unlink(missing_ok=True)

    # --- nodes ---------------------------------------------------------------------
    def nodes(self) -> list[Machine]:
        return [
            Machine(str(n["name"]), int(n["idx"]), bool(n.get("powered", True)))
            for n in self._read()["nodes"]
        ]

    def find(self, name: str) -> Machine | None:
        return next((m for m in self.nodes() if m.name == name), None)

    def node(self, name: str) -> Machine:
        m = self.find(name)
        if m is None:
            known = ", ".join(n.name for n in self.nodes()) or "none (is the lab up?)"
            raise BackendError(f"no lab node {name!r}; known nodes: {known}")
        return m

    def set_powered(self, name: str, powered: bool) -> None:
        self.node(name)
        with self._update() as data:
            for n in data["nodes"]:
                if n["name"] == name:
                    n["powered"] = powered

    # --- settings ------------------------------------------------------------------
    def get_setting(self, key: str, default: object = None) -> object:
        return self._read()["settings"].get(key, default)

    def put_setting(self, key: str, value: object) -> None:
        with self._update() as data:
            data["settings"][key] = value
