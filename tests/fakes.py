"""Stateful in-memory fakes for unit tests: a Backend and a Recorder on a Clock.

Used by the runner, fault, journal, CLI and Chaos Toolkit tests, where the real
lab cannot be used (no root, or timing logic that must run on a FakeClock). The
FakeBackend carries real state (nodes, workloads, partitions, volumes, restart
back-off) and can persist it to a JSON file so a SIGKILLed subprocess leaves the
same trace a crashed harness would. The FakeRecorder probes the FakeBackend on
the clock and writes the same timeline transitions as ``chaos.recorder``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chaos.spec import RecoverySpec
from cluster.api import (
    Condition,
    Event,
    NodeStatus,
    Phase,
    ProbeTarget,
    VolumeFailure,
    WorkloadKind,
    WorkloadStatus,
)
from core.clock import Clock, FakeClock
from core.errors import BackendError
from core.samples import MetricSample
from core.timeline import EventKind, Timeline

__all__ = ["FakeBackend", "FakeHealer", "FakeRecorder", "fake_recorder_factory"]


def _empty_state(nodes: list[str]) -> dict[str, Any]:
    return {
        "nodes": {
            n: {"schedulable": True, "fenced": False, "powered": True, "partitioned": False}
            for n in nodes
        },
        "workloads": {},
        "restart_healing": True,
        "events": [],
        "calls": [],
    }


class FakeBackend:
    """cluster.api.Backend (every role) in memory (or in ``state_file``), timed by ``clock``.

    Behaviour: a killed process restarts after ``restart_delay`` if restart
    healing is on, else the workload is Failed; an evicted/rescheduled workload
    comes back on another node after ``restart_delay``; a workload answers only if
    its node is powered and not partitioned, it is not partitioned, its volume
    works and its process runs. ``fail_on`` maps a method name to an error
    message that method raises (BackendError), to test failure paths.
    """

    name = "fake"
    dry_run = False

    def __init__(
        self,
        clock: Clock | None = None,
        nodes: tuple[str, ...] = ("node1", "node2", "node3"),
        restart_delay: float = 1.0,
        state_file: Path | None = None,
    ) -> None:
        self.clock = clock or FakeClock(1000.0)
        self.restart_delay = restart_delay
        self.state_file = state_file
        self.fail_on: dict[str, str] = {}
        self.accelerator: str | None = "tcg"  # what vm_accelerator() answers
        self.observers: list[Callable[[], None]] = []  # called before every action
        self.profile: str | None = "fast"  # what RunHooks.profile reads; set_profile sets it
        # Workload name -> a file the test appends to (log_path); absent: no log.
        self.log_files: dict[str, Path] = {}
        self._mem = _empty_state(list(nodes))
        if state_file is not None and not state_file.exists():
            state_file.write_text(json.dumps(self._mem))

    def close(self) -> None:
        """Nothing held (the real backends close clients and connections)."""

    # --- state plumbing ------------------------------------------------------------
    @contextmanager
    def _state(self, call: str | None = None) -> Iterator[dict[str, Any]]:
        if call is not None:
            # Observers (the FakeRecorder) catch up on the old state first.
            for observe in list(self.observers):
                observe()
        if call is not None and call.split("(")[0] in self.fail_on:
            raise BackendError(self.fail_on[call.split("(")[0]])
        st = json.loads(self.state_file.read_text()) if self.state_file else self._mem
        if call is not None:
            st["calls"].append(call)
        yield st
        if self.state_file is not None:
            self.state_file.write_text(json.dumps(st))

    @property
    def calls(self) -> list[str]:
        with self._state() as st:
            return list(st["calls"])

    def _event(self, st: dict[str, Any], source: str, name: str, reason: str) -> None:
        st["events"].append(
            {"at": self.clock.now(), "source": source, "name": name, "reason": reason}
        )

    @staticmethod
    def _wl(st: dict[str, Any], name: str) -> dict[str, Any]:
        try:
            wl: dict[str, Any] = st["workloads"][name]
        except KeyError:
            raise BackendError(f"no workload {name}") from None
        return wl

    def _pick_node(self, st: dict[str, Any], avoid: str | None) -> str:
        for n, ns in st["nodes"].items():
            if n != avoid and ns["schedulable"] and ns["powered"] and not ns["fenced"]:
                return str(n)
        raise BackendError("no schedulable node")

    def _restart(self, wl: dict[str, Any], delay: float) -> None:
        wl["instance"] = uuid.uuid4().hex[:8]
        wl["down_until"] = self.clock.now() + delay
        wl["failed"] = False
        # A new QEMU: not paused, opens its disk afresh, guest not hung.
        wl["paused"] = None
        wl["disk_dead"] = False
        wl["reset_at"] = None

    def _settle(self, wl: dict[str, Any], now: float) -> None:
        """VMIs: a hung guest's watchdog fires ``wdt`` s after the hang and
        reboots it in the same QEMU (new instance, boot+1, no restart)."""
        reset_at = wl.get("reset_at")
        if reset_at is not None and now >= reset_at:
            wl["reset_at"] = None
            wl["instance"] = uuid.uuid4().hex[:8]
            wl["boot"] = wl.get("boot", 1) + 1
            wl["down_until"] = reset_at + self.restart_delay

    # --- the probe the FakeRecorder uses ----------------------------------------------
    def answers(self, workload: str, at: float | None = None) -> tuple[bool, str | None]:
        t = self.clock.now() if at is None else at
        with self._state() as st:
            wl = st["workloads"].get(workload)
            if wl is None or wl["node"] is None:
                return False, None
            self._settle(wl, t)
            node = st["nodes"][wl["node"]]
            ok = (
                node["powered"]
                and not node["partitioned"]
                and not wl["partitioned"]
                and wl["volume"] is None
                and not wl["failed"]
                and t >= wl["down_until"]
                and not wl.get("paused")
                and wl.get("reset_at") is None
            )
            return bool(ok), wl["instance"]

    def restart_healing(self) -> bool:
        with self._state() as st:
            return bool(st["restart_healing"])

    def node_state(self, node: str) -> dict[str, Any]:
        with self._state() as st:
            return dict(st["nodes"][node])

    def workload_state(self, name: str) -> dict[str, Any]:
        with self._state() as st:
            return dict(self._wl(st, name))

    # --- reading --------------------------------------------------------------------
    def nodes(self) -> list[NodeStatus]:
        with self._state() as st:
            return [self._node_status(n, ns) for n, ns in st["nodes"].items()]

    @staticmethod
    def _node_status(n: str, ns: dict[str, Any]) -> NodeStatus:
        return NodeStatus(
            name=n,
            ready=ns["powered"] and not ns["partitioned"],
            schedulable=ns["schedulable"],
            fenced=ns["fenced"],
            powered=ns["powered"],
            # Set by a test (set_heartbeat_age) to show a node that answers late.
            heartbeat_age=ns.get("heartbeat_age"),
        )

    def node(self, name: str) -> NodeStatus:
        with self._state() as st:
            if name not in st["nodes"]:
                raise BackendError(f"no node {name}")
            return self._node_status(name, st["nodes"][name])

    def workloads(self) -> list[WorkloadStatus]:
        with self._state() as st:
            names = list(st["workloads"])
        return [self.workload(n) for n in names]

    def workload(self, name: str) -> WorkloadStatus:
        ok, instance = self.answers(name)
        with self._state() as st:
            wl = self._wl(st, name)
            phase = Phase.FAILED if wl["failed"] else Phase.RUNNING if ok else Phase.UNKNOWN
            conditions: tuple[Condition, ...] = ()
            if wl["kind"] == WorkloadKind.VMI.value:
                paused = wl.get("paused")
                conditions = (
                    Condition("Paused", bool(paused), paused or ""),
                    Condition("StorageReady", wl["volume"] in (None, "unplug")),
                )
            return WorkloadStatus(
                name=name,
                kind=WorkloadKind(wl["kind"]),
                phase=phase,
                node=wl["node"],
                instance=instance,
                restarts=wl["restarts"],
                conditions=conditions,
            )

    def probe_target(self, workload: str) -> ProbeTarget | None:
        return ProbeTarget(host="127.0.0.1", port=9)

    def events(self, since: float) -> Iterator[Event]:
        with self._state() as st:
            evs = [e for e in st["events"] if e["at"] > since]
        for e in evs:
            yield Event(at=e["at"], source=e["source"], name=e["name"], reason=e["reason"])

    def log_path(self, workload: str) -> Path | None:
        return self.log_files.get(workload)

    def platform_version(self, kind: WorkloadKind | None = None) -> str | None:
        return "fake cluster"

    def vm_accelerator(self) -> str | None:
        return self.accelerator

    def metrics(self, workload: str) -> MetricSample | None:
        """Synthetic but stateful: counters grow with the instance's uptime on the
        clock and restart from zero with a new instance; None while it is down."""
        if "metrics" in self.fail_on:
            raise BackendError(self.fail_on["metrics"])
        # Read-only (never through _state, which writes the file back): the
        # sampler thread reads while the test's thread acts.
        try:
            st = json.loads(self.state_file.read_text()) if self.state_file else self._mem
        except json.JSONDecodeError as exc:  # a writer is mid-write of state_file
            raise BackendError(f"fake state file being written: {exc}") from exc
        wl = dict(self._wl(st, workload))
        node = st["nodes"].get(wl["node"]) if wl["node"] else None
        now = self.clock.now()
        if node is None or not node["powered"] or wl["failed"] or now < wl["down_until"]:
            return None
        up = max(0.0, now - float(wl["down_until"]))
        vmi = wl["kind"] == "vmi"
        cpu = 0.1 * up
        return MetricSample(
            t=now,
            workload=workload,
            kind=wl["kind"],
            cpu_s=cpu,
            host_cpu_s=cpu * 1.5 if vmi else cpu,
            mem_bytes=(256 << 20) if vmi else (8 << 20) + int(up * 1024),
            overhead_bytes=(40 << 20) if vmi else 0,
            disk_wr_bytes=int(up * 4096),
            disk_wr_ops=int(up),
            net_rx_bytes=int(up * 1000),
            net_tx_bytes=int(up * 2000),
            net_rx_packets=int(up * 10),
            net_tx_packets=int(up * 10),
        )

    # --- workloads --------------------------------------------------------------------
    def create_workload(
        self,
        name: str,
        kind: WorkloadKind,
        node: str | None = None,
        *,
        watchdog_heartbeat_s: int | None = 2,
        eviction_strategy: str = "LiveMigrate",
    ) -> None:
        with self._state(f"create_workload({name})") as st:
            wl = {
                "eviction_strategy": eviction_strategy,
                "kind": kind.value,
                "node": node or self._pick_node(st, None),
                "instance": None,
                "restarts": 0,
                "down_until": 0.0,
                "failed": False,
                "partitioned": False,
                "volume": None,
                # VMIs: the guest's i6300esb timeout (driver default 30 s).
                "wdt": 30 if watchdog_heartbeat_s is None else watchdog_heartbeat_s,
                "boot": 1,
            }
            self._restart(wl, 0.0)
            st["workloads"][name] = wl

    def delete_workload(self, name: str) -> None:
        with self._state(f"delete_workload({name})") as st:
            st["workloads"].pop(name, None)

    # --- faults -------------------------------------------------------------------------
    def kill_main_process(self, workload: str) -> None:
        with self._state(f"kill_main_process({workload})") as st:
            wl = self._wl(st, workload)
            wl["restarts"] += 1
            if st["restart_healing"]:
                self._restart(wl, self.restart_delay)
                self._event(st, "pod", workload, "ContainerRestarted")
            else:
                wl["failed"] = True

    def hang_workload(self, workload: str) -> None:
        with self._state(f"hang_workload({workload})") as st:
            wl = self._wl(st, workload)
            if wl["kind"] != WorkloadKind.VMI.value:
                raise BackendError(f"cannot hang pod {workload}: only a VMI's guest can hang")
            now = self.clock.now()
            self._settle(wl, now)
            if wl.get("reset_at") is None:
                wl["reset_at"] = now + float(wl.get("wdt", 30))
            self._event(st, "vmi", workload, "GuestHung")

    def resume_workload(self, workload: str) -> None:
        with self._state(f"resume_workload({workload})") as st:
            wl = self._wl(st, workload)
            if wl["kind"] != WorkloadKind.VMI.value:
                raise BackendError(f"cannot resume pod {workload}: only a VMI can be paused")
            if not wl.get("paused"):
                return
            # The failed I/O is retried at once: it fails again while the volume
            # is broken or QEMU's fd died with it (EIO repaired underneath).
            if wl["volume"] is None and not wl.get("disk_dead"):
                wl["paused"] = None
                self._event(st, "vmi", workload, "Resumed")

    def cordon(self, node: str) -> None:
        with self._state(f"cordon({node})") as st:
            st["nodes"][node]["schedulable"] = False

    def uncordon(self, node: str) -> None:
        with self._state(f"uncordon({node})") as st:
            st["nodes"][node]["schedulable"] = True

    def evict(self, workload: str) -> None:
        with self._state() as st:
            wl = self._wl(st, workload)
            live = wl["kind"] == "vmi" and wl.get("eviction_strategy") == "LiveMigrate"
        if live:
            self.migrate(workload)
            return
        with self._state(f"evict({workload})") as st:
            wl = self._wl(st, workload)
            wl["node"] = self._pick_node(st, wl["node"])
            self._restart(wl, self.restart_delay)
            self._event(st, "pod", workload, "Evicted")

    def power_off(self, node: str) -> None:
        with self._state(f"power_off({node})") as st:
            st["nodes"][node]["powered"] = False
            self._event(st, "node", node, "NodeNotReady")

    def power_on(self, node: str) -> None:
        with self._state(f"power_on({node})") as st:
            if st["nodes"][node]["powered"]:
                return
            st["nodes"][node]["powered"] = True
            for wl in st["workloads"].values():
                if wl["node"] == node:
                    self._restart(wl, self.restart_delay)

    def partition_node(self, node: str) -> None:
        with self._state(f"partition_node({node})") as st:
            st["nodes"][node]["partitioned"] = True

    def heal_node_partition(self, node: str) -> None:
        with self._state(f"heal_node_partition({node})") as st:
            st["nodes"][node]["partitioned"] = False

    def partition_workload(self, workload: str) -> None:
        with self._state(f"partition_workload({workload})") as st:
            self._wl(st, workload)["partitioned"] = True

    def heal_workload_partition(self, workload: str) -> None:
        with self._state(f"heal_workload_partition({workload})") as st:
            self._wl(st, workload)["partitioned"] = False

    def fail_volume(self, workload: str, mode: VolumeFailure) -> None:
        with self._state(f"fail_volume({workload},{mode.value})") as st:
            wl = self._wl(st, workload)
            vmi = wl["kind"] == WorkloadKind.VMI.value
            if mode is VolumeFailure.UNPLUG and not vmi:
                raise BackendError(f"cannot unplug the volume of pod {workload}")
            wl["volume"] = mode.value
            if vmi and mode is VolumeFailure.EIO:
                # error_policy='stop': QEMU pauses the guest (PausedIOError).
                wl["paused"] = "IOError"

    def repair_volume(self, workload: str, mode: VolumeFailure) -> None:
        with self._state(f"repair_volume({workload},{mode.value})") as st:
            wl = self._wl(st, workload)
            if (
                wl["kind"] == WorkloadKind.VMI.value
                and mode is VolumeFailure.EIO
                and wl["volume"] == "eio"
            ):
                wl["disk_dead"] = True  # QEMU's fd stays on the dead filesystem
            wl["volume"] = None

    # --- healer actions -------------------------------------------------------------------
    def set_restart_healing(self, enabled: bool) -> None:
        with self._state(f"set_restart_healing({enabled})") as st:
            st["restart_healing"] = enabled

    def fence(self, node: str) -> None:
        with self._state(f"fence({node})") as st:
            st["nodes"][node]["fenced"] = True

    def unfence(self, node: str) -> None:
        with self._state(f"unfence({node})") as st:
            st["nodes"][node]["fenced"] = False

    def reschedule(self, workload: str) -> None:
        with self._state(f"reschedule({workload})") as st:
            wl = self._wl(st, workload)
            wl["node"] = self._pick_node(st, wl["node"])
            self._restart(wl, self.restart_delay)

    def migrate(self, workload: str, node: str | None = None) -> dict[str, str]:
        """A live migration: same instance on another node, ``migration_downtime``
        seconds without answers (0 by default)."""
        with self._state(f"migrate({workload})") as st:
            wl = self._wl(st, workload)
            if wl["kind"] != "vmi":
                raise BackendError(f"{workload} is a pod: only VMIs live-migrate")
            src = wl["node"]
            dst = node or self._pick_node(st, src)
            wl["node"] = dst
            down = float(st.get("migration_downtime", 0.0))
            wl["down_until"] = max(float(wl["down_until"]), self.clock.now() + down)
            self._event(st, "migration", workload, "MigrationSucceeded")
        return {"source": str(src), "target": dst, "downtime_ms": f"{down * 1000:.1f}",
                "total_ms": "1000.0"}  # fmt: skip

    # --- around a run (cluster.api.RunHooks) ---------------------------------------------
    def set_profile(self, name: str) -> None:
        self.profile = name

    def wait_ready(self, name: str, timeout: float) -> WorkloadStatus | None:
        # The FakeRecorder's steady-state wait is the readiness check here.
        return None

    def set_heartbeat_age(self, node: str, age: float | None) -> None:
        """Test knob: what ``NodeStatus.heartbeat_age`` of ``node`` reads."""
        with self._state() as st:
            st["nodes"][node]["heartbeat_age"] = age


class FakeRecorder:
    """Probes a FakeBackend every ``interval`` of the clock, lazily catching up.

    It is an observer of the backend (called before every action), so between two
    catch-ups nothing but time changes the fake's state: probing the past
    (``answers(at=t)``) gives the transitions a threaded prober would have seen.
    """

    def __init__(
        self,
        backend: FakeBackend,
        workload: str,
        timeline: Timeline,
        clock: Clock,
        interval: float = 0.02,
        good_needed: int = 5,
    ) -> None:
        self.backend = backend
        self.workload = workload
        self.timeline = timeline
        self.clock = clock
        self.interval = interval
        self.good_needed = good_needed
        self.probes_sent = 0
        self.probes_failed = 0
        self.probes_edge = 0  # it sends grid probes only
        self.up: bool | None = None
        self.good_run = 0
        self.good_since = float("-inf")
        self._next: float | None = None
        self.started = False
        self.stopped = False
        self.edge_hints: list[float] = []  # timeline t of expect_edge calls

    def expect_edge(self, window_s: float = 1.0) -> None:
        # It probes on its grid only: the hint is recorded, so that runner tests
        # can check it comes before the inject and the revert.
        self.edge_hints.append(self.clock.now() - self.timeline.origin)

    def start(self) -> None:
        self.started = True
        self._next = self.clock.now()
        self.backend.observers.append(self._catch_up)

    def stop(self) -> None:
        self._catch_up()
        self.stopped = True
        if self._catch_up in self.backend.observers:
            self.backend.observers.remove(self._catch_up)

    def _catch_up(self) -> None:
        if self._next is None or self.stopped:
            return
        now = self.clock.now()
        while self._next <= now:
            self._probe(self._next)
            self._next += self.interval

    def _probe(self, t: float) -> None:
        ok, instance = self.backend.answers(self.workload, at=t)
        self.probes_sent += 1
        if not ok:
            self.probes_failed += 1
            self.good_run = 0
        else:
            if self.good_run == 0:
                self.good_since = t
            self.good_run += 1
        if ok != self.up:
            kind = EventKind.PROBE_OK if ok else EventKind.PROBE_FAIL
            data = {"instance": instance} if ok and instance else {}
            self.timeline.add(t, kind, "prober", "", data)
        self.up = ok

    def is_up(self) -> bool:
        self._catch_up()
        return self.up is True

    def _wait(self, timeout_s: float, done: Any) -> bool:
        end = self.clock.now() + timeout_s
        while True:
            self._catch_up()
            if done():
                return True
            if self.clock.now() >= end:
                return False
            self.clock.sleep(self.interval)

    def wait_until_up(self, timeout_s: float) -> bool:
        return self._wait(timeout_s, lambda: self.up is True)

    def wait_until_recovered(self, since_t: float, timeout_s: float) -> bool:
        # Only probes sent after ``since_t`` count, as in chaos.recorder.
        return self._wait(
            timeout_s, lambda: self.good_run >= self.good_needed and self.good_since > since_t
        )


def fake_recorder_factory(
    backend: Any, workload: str, timeline: Timeline, clock: Clock, recovery: RecoverySpec
) -> FakeRecorder:
    return FakeRecorder(
        backend, workload, timeline, clock, recovery.probe_interval_ms / 1000, recovery.good_probes
    )


class FakeHealer:
    """A healer that records start/stop and may fail at stop; moves nothing."""

    def __init__(self, name: str, fail_stop: str | None = None) -> None:
        self.name = name
        self.fail_stop = fail_stop
        self.started = False
        self.stopped = False

    def start(self, ctx: object) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True
        if self.fail_stop:
            raise BackendError(self.fail_stop)
