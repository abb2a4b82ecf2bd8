"""The lab's control plane: node lifecycle controller, taint eviction, scheduler.

Run by ``lifecycle.lab_up`` as ``python -m cluster.lab.controlplane`` inside the
hub network namespace (pid file ``RUN_DIR/controlplane.pid``). It plays the
parts of kube-controller-manager and kube-scheduler that decide recovery
times: it hears node agents' UDP heartbeats over the lab bridge (so a network
partition silences a node exactly as it would a kubelet), marks a node
NotReady after the profile's grace period, evicts its pods after the
toleration, and binds Pending pods to the least loaded usable node. Its
decisions are pure functions below (tested on a FakeClock); ``Controller``
applies them to the state database, which ``LabBackend`` and the agents read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import selectors
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster.api import Condition, Phase
from cluster.lab import state
from cluster.lab.scheduling import choose_node
from cluster.lab.store import NodeRow, PodReport, Store
from cluster.profiles import TimingProfile, get_profile
from core.clock import Clock, RealClock
from core.errors import HarnessError, SpecError

__all__ = [
    "SCHEDULE_PERIOD",
    "Controller",
    "Heartbeat",
    "choose_node",
    "is_lost",
    "main",
    "parse_heartbeat",
    "pid_file",
    "should_evict",
]

log = logging.getLogger("rto.lab.controlplane")

# kube-scheduler reacts to a new Pending pod within milliseconds, whatever the
# node-monitor period; so scheduling has its own short period.
SCHEDULE_PERIOD = 0.05


def pid_file() -> Path:
    return Path(state.RUN_DIR) / "controlplane.pid"


# --- decisions (pure) --------------------------------------------------------
def is_lost(
    node: NodeRow, now: float, profile: TimingProfile, profile_since: float | None = None
) -> bool:
    """A Ready node silent for longer than the grace period becomes NotReady.

    Silence is counted from the later of its last heartbeat and the moment the
    profile last changed: a node that beat on the old (slower) schedule is not
    lost because the new grace period is shorter than the old interval.
    """
    if not node.ready or node.last_heartbeat is None:
        return False
    heard = max(node.last_heartbeat, profile_since or node.last_heartbeat)
    return now - heard > profile.grace_period


def should_evict(node: NodeRow, now: float, profile: TimingProfile) -> bool:
    """Pods leave a node NotReady for longer than the toleration (taint manager,
    DefaultTolerationSeconds). Counted from the NotReady transition."""
    if node.ready or node.ready_changed is None:
        return False
    return now - node.ready_changed > profile.toleration


@dataclass(frozen=True)
class Heartbeat:
    node: str
    seq: int
    sent: float
    pods: tuple[PodReport, ...]


def parse_heartbeat(data: bytes) -> Heartbeat:
    """Decode one agent datagram; ValueError (with what is wrong) if malformed."""
    try:
        msg = json.loads(data)
        pods = tuple(
            PodReport(
                name=str(name),
                phase=Phase(p["phase"]),
                instance=None if p.get("instance") is None else str(p["instance"]),
                restarts=int(p.get("restarts", 0)),
                generation=int(p["generation"]),
                ip=None if p.get("ip") is None else str(p["ip"]),
                conditions=tuple(
                    Condition(str(c["type"]), bool(c["status"]), str(c.get("reason", "")))
                    for c in p.get("conditions", ())
                ),
            )
            for name, p in dict(msg.get("pods", {})).items()
        )
        return Heartbeat(
            node=str(msg["node"]), seq=int(msg["seq"]), sent=float(msg["sent"]), pods=pods
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"malformed heartbeat {data[:200]!r}: {exc}") from exc


# --- the controller ----------------------------------------------------------
class Controller:
    """Applies the decisions above to the store. Single-threaded by design."""

    def __init__(self, store: Store, clock: Clock | None = None) -> None:
        self.store = store
        self.clock: Clock = clock or store.clock
        self.profile = self._read_profile()
        self.profile_since: float | None = None
        self._last_sent: dict[str, float] = {}

    def _read_profile(self) -> TimingProfile:
        name = self.store.get_setting("profile", "fast")
        return get_profile(str(name))

    def reload_profile(self) -> None:
        """Pick up ``lifecycle.set_profile`` (a bad name keeps the old profile)."""
        try:
            new = self._read_profile()
        except SpecError as exc:
            log.error("keeping profile %s: %s", self.profile.name, exc)
            return
        if new != self.profile:
            log.info("profile %s -> %s", self.profile.name, new.name)
            self.profile = new
            self.profile_since = self.clock.now()

    def handle_heartbeat(self, hb: Heartbeat) -> None:
        if self.store.find_node(hb.node) is None:
            log.warning("heartbeat from unknown node %r ignored", hb.node)
            return
        # Order by the send time, not seq: a rebooted agent starts at seq 0 again,
        # while CLOCK_MONOTONIC is machine-wide and only moves forward, so a
        # replayed or reordered datagram is older and a new boot's is newer.
        last = self._last_sent.get(hb.node)
        if last is not None and hb.sent <= last:
            return
        self._last_sent[hb.node] = hb.sent
        self.store.record_heartbeat(hb.node)
        for report in hb.pods:
            self.store.apply_report(hb.node, report)

    def monitor(self) -> None:
        """One node-monitor pass: NotReady after grace, evictions after toleration."""
        now = self.clock.now()
        for node in self.store.nodes():
            if is_lost(node, now, self.profile, self.profile_since):
                silent = now - (node.last_heartbeat or now)
                self.store.mark_not_ready(
                    node.name,
                    f"no heartbeat for {silent:.2f}s (grace {self.profile.grace_period}s)",
                )
            elif should_evict(node, now, self.profile):
                for w in self.store.workloads_on(node.name):
                    self.store.unbind(
                        w.name,
                        "TaintManagerEviction",
                        f"node {node.name} NotReady longer than {self.profile.toleration}s",
                    )

    def schedule(self) -> None:
        for name, node in self.store.schedule_pending():
            log.info("scheduled %s on %s", name, node)


# --- daemon ------------------------------------------------------------------
def serve(controller: Controller, sock: socket.socket, clock: Clock, stop: list[bool]) -> None:
    """Main loop: heartbeats as they come, monitor and scheduler on their periods."""
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    next_monitor = clock.now()
    next_schedule = clock.now()
    while not stop:
        timeout = max(0.0, min(next_monitor, next_schedule) - clock.now())
        for _key, _ in sel.select(timeout):
            # Drain everything queued so a burst cannot delay the monitor.
            while True:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    break
                try:
                    controller.handle_heartbeat(parse_heartbeat(data))
                except ValueError as exc:
                    log.warning("%s", exc)
        now = clock.now()
        if now >= next_schedule:
            controller.schedule()
            next_schedule = now + SCHEDULE_PERIOD
        if now >= next_monitor:
            controller.reload_profile()
            controller.monitor()
            next_monitor = now + controller.profile.monitor_period


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default=state.HUB_IP, help="address to hear heartbeats on")
    parser.add_argument("--port", type=int, default=state.HEARTBEAT_PORT)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s controlplane %(levelname)s %(message)s"
    )
    stop: list[bool] = []

    def _stop(_sig: int, _frame: object) -> None:
        stop.append(True)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    clock = RealClock()
    try:
        store = Store(args.db, clock)
        controller = Controller(store, clock)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((args.bind, args.port))
        sock.setblocking(False)
    except (OSError, HarnessError) as exc:
        log.error("cannot start the control plane: %s", exc)
        return 1
    pid_file().parent.mkdir(parents=True, exist_ok=True)
    pid_file().write_text(f"{os.getpid()}\n")
    log.info("listening on %s:%d, profile %s", args.bind, args.port, controller.profile.name)
    try:
        serve(controller, sock, clock, stop)
    finally:
        sock.close()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
