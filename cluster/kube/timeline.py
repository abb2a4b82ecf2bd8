"""Turn raw watch events into the harness's control-plane ``Event`` records.

Filled by the ``WatchFollower`` callbacks of ``KubeBackend``; read by the
recorder through ``Backend.events``. It keeps the last summary of every object
and emits an event only for a change that matters to recovery: pod phase,
node and container restarts; VMI phase, node (a migration) and conditions
(Paused/PausedIOError - the phase alone lies); node Ready, cordon and taints;
migration phases. Thread-safe: four followers call ``feed`` concurrently.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from cluster.api import Event

__all__ = ["KubeTimeline", "summarize"]

Summary = tuple[Any, ...]


def _conds(status: dict[str, Any]) -> tuple[tuple[str, str, str], ...]:
    return tuple(
        sorted(
            (c.get("type", ""), c.get("status", ""), c.get("reason", "") or "")
            for c in status.get("conditions") or ()
        )
    )


def summarize(source: str, obj: dict[str, Any]) -> Summary:
    """The part of an object whose change is worth an event."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if source == "pod":
        restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or ())
        deleting = bool(obj.get("metadata", {}).get("deletionTimestamp"))
        return (status.get("phase"), spec.get("nodeName"), restarts, deleting)
    if source == "vmi":
        return (status.get("phase"), status.get("nodeName"), _conds(status))
    if source == "node":
        ready = next(
            (c.get("status") for c in status.get("conditions") or () if c.get("type") == "Ready"),
            None,
        )
        taints = tuple(sorted(t.get("key", "") for t in spec.get("taints") or ()))
        return (ready, bool(spec.get("unschedulable")), taints)
    return (status.get("phase"),)


def _reason(source: str, old: Summary | None, new: Summary) -> tuple[str, dict[str, str]]:
    if old is None:
        return "Added", {}
    if source == "pod":
        if new[2] != old[2]:
            return "ContainerRestarted", {"restarts": str(new[2])}
        if new[3] and not old[3]:
            return "Terminating", {}
        if new[1] != old[1]:
            return "Scheduled", {"node": str(new[1])}
        return f"Phase{new[0]}", {"phase": str(new[0])}
    if source == "vmi":
        if new[1] != old[1] and old[1] is not None:
            return "Migrated", {"from": str(old[1]), "to": str(new[1])}
        if new[2] != old[2]:
            paused = next((c for c in new[2] if c[0] == "Paused" and c[1] == "True"), None)
            if paused:
                return paused[2] or "Paused", {}
            return "ConditionsChanged", {"conditions": ",".join(f"{c[0]}={c[1]}" for c in new[2])}
        return f"Phase{new[0]}", {"phase": str(new[0])}
    if source == "node":
        if new[0] != old[0]:
            return ("NodeReady" if new[0] == "True" else "NodeNotReady"), {}
        if new[1] != old[1]:
            return ("Cordoned" if new[1] else "Uncordoned"), {}
        return "TaintsChanged", {"taints": ",".join(new[2])}
    return f"Migration{new[0] or 'Pending'}", {"phase": str(new[0] or "")}


class KubeTimeline:
    """Summaries per object and a bounded queue of events, oldest first."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, keep: int = 100_000) -> None:
        self.clock = clock
        self._last: dict[tuple[str, str], Summary] = {}
        self._events: deque[Event] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self.processed = 0

    def feeder(self, source: str) -> Callable[[str, dict[str, Any]], None]:
        return lambda etype, obj: self.feed(source, etype, obj)

    def feed(self, source: str, etype: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name = meta.get("name", "")
        key = (source, f"{meta.get('namespace') or ''}/{name}")
        with self._lock:
            self.processed += 1
            if etype == "DELETED":
                self._last.pop(key, None)
                self._events.append(Event(self.clock(), source, name, "Deleted"))
                return
            new = summarize(source, obj)
            old = self._last.get(key)
            if old == new:
                return
            self._last[key] = new
            reason, data = _reason(source, old, new)
            labels = meta.get("labels") or {}
            if "rto.harness/workload" in labels:
                data["workload"] = labels["rto.harness/workload"]
            self._events.append(Event(self.clock(), source, name, reason, data=data))

    def since(self, since: float) -> Iterator[Event]:
        with self._lock:
            out = [e for e in self._events if e.at > since]
        yield from out
