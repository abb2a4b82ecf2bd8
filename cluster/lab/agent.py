"""The lab's node agent: a tiny kubelet, one per node.

Started by ``lifecycle.lab_up`` as ``python -m cluster.lab.agent --node NODE``
inside the node's netns and cgroup. It reads its assignments (``workloads WHERE
node=? AND kind='pod'``) from the lab state DB, runs each pod as a runc
container (``runc run`` in the foreground, as a child, so an exit is seen at
once), removes containers no longer assigned to it, restarts crashed ones
with the kubelet back-off (``backoff.RestartBackoff``, timings from the
profile named by settings ``profile``) unless settings ``restart_healing`` is
JSON false (then the pod is Failed), and sends a heartbeat datagram to the hub
(``HUB_IP:HEARTBEAT_PORT``) every ``heartbeat_interval``. Heartbeats go from
their own thread, as the kubelet renews its node lease apart from pod syncs: a
slow libvirt or runc call (seconds under TCG load) must not make a healthy node
look dead; they carry the statuses of the last finished pass. VMIs (``kind='vmi'``) are
run through the node's libvirtd by ``cluster.lab.vmis.VmiHandler`` and
reported in the same heartbeat map. The control plane
reads those heartbeats; the agent never writes the DB. SIGTERM stops its
containers and exits cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from cluster.lab import net, runtime, state, volumes
from cluster.lab.backoff import RestartBackoff
from cluster.lab.vmis import VmiHandler
from cluster.profiles import TimingProfile, get_profile
from core.clock import Clock, RealClock
from core.errors import HarnessError, LabError

__all__ = ["Agent", "PodRun", "enter_host_mount_ns", "enter_node_netns", "main"]

log = logging.getLogger("rto.lab.agent")

_SETTINGS_PERIOD = 1.0  # how often settings (profile, restart_healing) are re-read
_MAX_TICK = 0.1  # assignments are re-read at least this often


@dataclass
class PodRun:
    """What the agent knows about one pod it runs (one generation of it)."""

    name: str
    generation: int
    slot: int | None
    ip: str | None
    backoff: RestartBackoff
    phase: str = "Pending"
    instance: str | None = None
    restarts: int = 0
    starts: int = 0
    proc: subprocess.Popen[bytes] | None = None
    ns_inode: int | None = None
    reason: str = ""
    last_exit: int | None = None
    history: list[str] = field(default_factory=list)

    def status(self) -> dict[str, object]:
        running = self.proc is not None and self.proc.poll() is None
        return {
            "phase": self.phase,
            "instance": self.instance,
            "restarts": self.restarts,
            "generation": self.generation,
            "ip": self.ip,
            # Extras beyond the contract, for humans and the recorder.
            "running": running,
            "reason": self.reason,
            "last_exit": self.last_exit,
        }


class Agent:
    """The node agent's state and main loop."""

    def __init__(self, node: str, *, db: Path | None = None, clock: Clock | None = None) -> None:
        self.node = node
        self.clock: Clock = clock or RealClock()
        self.conn = state.connect(db)
        row = self.conn.execute("SELECT idx FROM nodes WHERE name=?", (node,)).fetchone()
        if row is None:
            raise LabError(f"node {node} is not in the lab database; run `rto lab up` first")
        self.index = int(row["idx"])
        self.profile: TimingProfile = get_profile("fast")
        self.restart_healing = True
        self._beat_now = threading.Event()  # wakes the heartbeat thread (profile change)
        self._read_settings()
        self.pods: dict[str, PodRun] = {}
        # VMIs (kind='vmi') go through the node's libvirtd: the virt-handler half.
        self.vmis = VmiHandler(node, self.index, self.clock, self.profile)
        self.seq = 0
        self._next_heartbeat = self.clock.now()
        self._next_settings = self.clock.now() + _SETTINGS_PERIOD
        self._stopping = False
        self._statuses: dict[str, object] = {}  # of the last pass, for the heartbeats
        self._beats: threading.Thread | None = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    # --- settings and assignments ------------------------------------------------

    def _setting(self, key: str) -> object:
        row = self.conn.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row["value"])

    def _read_settings(self) -> None:
        name = self._setting("profile")
        if isinstance(name, str) and name != self.profile.name:
            self.profile = get_profile(name)
            log.info("timing profile %s", name)
            # Beat now: under the old profile the next beat may be 10 s away,
            # longer than the new grace period (set_profile waits for this beat).
            self._next_heartbeat = self.clock.now()
            self._beat_now.set()
        self.restart_healing = self._setting("restart_healing") is not False

    def _assignments(self, kind: str = "pod") -> dict[str, sqlite3.Row]:
        rows = self.conn.execute(
            "SELECT name, generation, slot, ip, migrating_to FROM workloads "
            "WHERE node=? AND kind=?",
            (self.node, kind),
        ).fetchall()
        return {str(r["name"]): r for r in rows}

    # --- pods ----------------------------------------------------------------------

    def _pod_log(self, pod: str) -> Path:
        return state.STATE_DIR / "logs" / "pods" / f"{pod}.log"

    def _start(self, pod: PodRun) -> None:
        if pod.slot is None:
            pod.reason = "NoAddress"  # the scheduler has not given it a slot yet
            return
        try:
            if pod.ns_inode is None or net.netns_inode(net.pod_ns(pod.name)) != pod.ns_inode:
                pod.ip = net.create_pod_net(self.node, self.index, pod.name, pod.slot)
                pod.ns_inode = net.netns_inode(net.pod_ns(pod.name))
            volumes.ensure_volume(pod.name)
            instance = uuid.uuid4().hex[:8]
            assert pod.ip is not None
            runtime.prepare_bundle(self.node, self.index, pod.name, pod.ip, instance)
            pod.proc = runtime.run_foreground(self.node, pod.name, self._pod_log(pod.name))
        except HarnessError as exc:
            # Counts as a failed start: back off like a crash, try again later.
            log.error("pod %s: start failed: %s", pod.name, exc)
            pod.reason = "StartError"
            pod.backoff.started()
            pod.backoff.exited()
            return
        if pod.starts > 0:
            pod.restarts += 1
        pod.starts += 1
        pod.instance = instance
        pod.phase = "Running"
        pod.reason = ""
        pod.backoff.started()
        log.info("pod %s: started instance %s (restarts %d)", pod.name, instance, pod.restarts)

    def _reap(self) -> None:
        for pod in self.pods.values():
            if pod.proc is None or pod.proc.poll() is None:
                continue
            pod.last_exit = pod.proc.returncode
            pod.proc = None
            delay = pod.backoff.exited()
            if self.restart_healing:
                pod.reason = "CrashLoopBackOff" if delay > 0 else "Restarting"
            else:
                pod.phase = "Failed"
                pod.reason = "Error"
            log.info(
                "pod %s: instance %s exited %s; next start in %.2f s",
                pod.name,
                pod.instance,
                pod.last_exit,
                delay,
            )

    def _stop(self, pod: PodRun) -> None:
        """Kill and forget a pod's container and network (its volume stays)."""
        with contextlib.suppress(HarnessError):
            runtime.kill(self.node, pod.name)
        if pod.proc is not None:
            try:
                pod.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pod.proc.kill()  # runc itself is stuck: it goes, the container follows
                pod.proc.wait(timeout=10)
            pod.proc = None
        try:
            runtime.delete(self.node, pod.name)
        except HarnessError as exc:
            log.error("pod %s: %s", pod.name, exc)
        net.delete_pod_net(pod.name, only_inode=pod.ns_inode)
        shutil.rmtree(runtime.bundle_dir(self.node, pod.name), ignore_errors=True)
        log.info("pod %s: stopped", pod.name)

    def _vmis_elsewhere(self) -> bool:
        """VMIs are kubevirt.io/v1 objects run by the node's virt-handler
        (``cluster.lab.kube.virt_handler``): their domains are not this agent's."""
        return self._setting("vmi_api") == "kubevirt"

    def _sync_vmis(self) -> None:
        if self._vmis_elsewhere():
            return
        rows = self._assignments("vmi")
        wanted = {name: (int(r["generation"]), r["ip"]) for name, r in rows.items()}
        # Live migrations off this node in flight: libvirt moves those domains.
        leaving = {name for name, r in rows.items() if r["migrating_to"] is not None}
        if wanted or self.vmis.vmis:
            self.vmis.profile = self.profile
            self.vmis.sync(wanted, self.restart_healing, leaving)
        # Also on a node without VMIs: a migrated-in domain whose row is gone.
        # A migration INTO this node is no orphan: after QEMU's switch-over the
        # domain runs here while its row still names the source until the
        # migrate call returns (libvirt's finish phase, 1-2 s).
        arriving = {
            str(r["name"])
            for r in self.conn.execute(
                "SELECT name FROM workloads WHERE kind='vmi' AND migrating_to=?", (self.node,)
            ).fetchall()
        }
        self.vmis.sweep_orphans(set(wanted) | arriving)

    def _sync(self) -> None:
        self._sync_vmis()
        wanted = self._assignments()
        for name in [n for n in self.pods if n not in wanted]:
            self._stop(self.pods.pop(name))
        for name, row in wanted.items():
            gen = int(row["generation"])
            pod = self.pods.get(name)
            if pod is not None and pod.generation != gen:
                # Rescheduled (back) onto this node: a new pod, fresh network.
                self._stop(self.pods.pop(name))
                pod = None
            if pod is None:
                pod = PodRun(
                    name=name,
                    generation=gen,
                    slot=row["slot"],
                    ip=row["ip"],
                    backoff=RestartBackoff.from_profile(self.profile, self.clock),
                )
                self.pods[name] = pod
            elif pod.slot is None and row["slot"] is not None:
                pod.slot, pod.ip = row["slot"], row["ip"]
            if pod.proc is None and pod.phase != "Failed" and pod.backoff.may_start():
                if pod.starts > 0 and not self.restart_healing:
                    pod.phase = "Failed"
                    continue
                self._start(pod)

    # --- heartbeats ----------------------------------------------------------------

    def heartbeat(self) -> dict[str, object]:
        self.seq += 1
        msg: dict[str, object] = {
            "node": self.node,
            "seq": self.seq,
            "sent": self.clock.now(),
            "pods": self._statuses,
        }
        try:
            self.sock.sendto(json.dumps(msg).encode(), (state.HUB_IP, state.HEARTBEAT_PORT))
        except OSError as exc:
            # Partitioned (nft drop -> EPERM), no route, buffer full: the control
            # plane will notice the silence, which is the point.
            log.debug("heartbeat %d not sent: %s", self.seq, exc)
        return msg

    # --- main loop -----------------------------------------------------------------

    def tick(self) -> None:
        """One round: reap exits, re-read settings, converge pods, heartbeat if due."""
        try:
            # Every pass, not every second: a run switches node-side restarts off
            # moments before it injects a crash, and that exit must be judged by
            # the new setting (as a kubelet applies the pod's restartPolicy).
            self.restart_healing = self._setting("restart_healing") is not False
        except sqlite3.Error as exc:
            log.warning("state DB unreadable this round: %s", exc)
        self._reap()
        now = self.clock.now()
        try:
            if now >= self._next_settings:
                self._read_settings()
                self._next_settings = now + _SETTINGS_PERIOD
            self._sync()
        except sqlite3.Error as exc:
            log.warning("state DB unreadable this round: %s", exc)
        took = self.clock.now() - now
        if took > self.profile.grace_period / 2:
            log.warning("a sync pass took %.2f s (grace period %.1f s)", took,
                        self.profile.grace_period)  # fmt: skip
        # One new dict per pass: the heartbeat thread reads the reference only.
        self._statuses = {
            **{name: pod.status() for name, pod in self.pods.items()},
            **self.vmis.statuses(),
        }
        if self._beats is None and self.clock.now() >= self._next_heartbeat:
            self.heartbeat()  # no heartbeat thread (a single-threaded caller)
            self._next_heartbeat = self.clock.now() + self.profile.heartbeat_interval

    def _beat_loop(self) -> None:
        """The heartbeat thread: beat every ``heartbeat_interval`` until stopped."""
        while not self._stopping:
            now = self.clock.now()
            if now >= self._next_heartbeat:
                try:
                    self.heartbeat()
                except Exception:
                    log.exception("heartbeat failed")
                self._next_heartbeat = now + self.profile.heartbeat_interval
            self._beat_now.wait(max(0.0, self._next_heartbeat - self.clock.now()))
            self._beat_now.clear()

    def _timeout(self) -> float:
        wake = [self.clock.now() + _MAX_TICK]
        if self._beats is None:
            wake.append(self._next_heartbeat)
        wake += [p.backoff.not_before for p in self.pods.values() if p.proc is None]
        wake += self.vmis.wake_times()
        return max(0.0, min(wake) - self.clock.now())

    def stop(self) -> None:
        self._stopping = True
        self._beat_now.set()

    def run(self) -> None:
        """Loop until SIGTERM/SIGINT; SIGCHLD wakes it at once when a container dies."""
        for name in runtime.list_containers(self.node):
            # Left by an agent that was killed: start from a clean slate.
            runtime.delete(self.node, name)
        if not self._vmis_elsewhere():
            self.vmis.clean_slate()
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        old_fd = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)

        def on_term(signum: int, frame: FrameType | None) -> None:
            self.stop()

        handlers = {
            s: signal.signal(s, h)
            for s, h in (
                (signal.SIGTERM, on_term),
                (signal.SIGINT, on_term),
                (signal.SIGCHLD, lambda s, f: None),
            )
        }
        sel = selectors.DefaultSelector()
        sel.register(rfd, selectors.EVENT_READ)
        log.info(
            "agent for node %s (index %d) up, profile %s", self.node, self.index, self.profile.name
        )
        self.tick()  # a first pass, so the first heartbeat carries statuses
        self._beats = threading.Thread(target=self._beat_loop, name="heartbeats", daemon=True)
        self._beats.start()
        try:
            while not self._stopping:
                self.tick()
                if sel.select(self._timeout()):
                    with contextlib.suppress(BlockingIOError):
                        os.read(rfd, 4096)
        finally:
            self.shutdown()
            sel.close()
            signal.set_wakeup_fd(old_fd)
            for s, h in handlers.items():
                signal.signal(s, h)
            os.close(rfd)
            os.close(wfd)

    def shutdown(self) -> None:
        """Stop every container this agent runs (on SIGTERM)."""
        for name in list(self.pods):
            try:
                self._stop(self.pods.pop(name))
            except HarnessError as exc:
                log.error("pod %s: not stopped cleanly: %s", name, exc)
        self.vmis.shutdown()
        if self._beats is not None:
            self._beats.join(5)  # stop() woke it; then the socket can go
        self.sock.close()
        self.conn.close()
        log.info("agent for node %s stopped", self.node)


_CLONE_NEWNS = 0x00020000


def enter_host_mount_ns() -> None:
    """Join the machine's mount namespace if ``ip netns exec`` took us out of it.

    ``ip netns exec`` gives the agent a private (slave) mount namespace: the
    volumes it mounts and the pod netns it creates would be invisible to the
    rest of the machine (the harness, lab_down, other nodes). pid 1's namespace
    may be unreadable (sandboxes), so the launcher's (our parent's: ``ip netns
    exec`` execs in place) is the fallback. Must run while single-threaded.
    """
    mine = os.readlink("/proc/self/ns/mnt")
    for cand in ("/proc/1/ns/mnt", f"/proc/{os.getppid()}/ns/mnt"):
        try:
            if os.readlink(cand) == mine:
                return
            fd = os.open(cand, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # not allowed to look at it: try the next candidate
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, _CLONE_NEWNS) != 0:
                err = os.strerror(ctypes.get_errno())
                raise LabError(f"cannot join the mount namespace of {cand}: {err}")
        finally:
            os.close(fd)
        os.chdir("/")
        log.info("joined the mount namespace of %s", cand)
        return


def enter_node_netns(node: str) -> None:
    """Move the whole (still single-threaded) agent into its node's netns.

    Lets the launcher start the agent without ``ip netns exec``; threads and
    children created afterwards inherit the namespace.
    """
    want = net.netns_inode(net.node_ns(node))
    if want is None:
        raise LabError(f"node {node} has no network namespace {net.node_ns(node)}; run lab up")
    if os.stat("/proc/self/ns/net").st_ino != want:
        net.enter_netns(net.node_ns(node))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cluster.lab.agent", description=__doc__)
    parser.add_argument("--node", required=True)
    parser.add_argument("--db", type=Path, default=None, help="lab state DB (default: STATE_DIR)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        enter_host_mount_ns()
        enter_node_netns(args.node)
        Agent(args.node, db=args.db).run()
    except HarnessError as exc:
        raise SystemExit(f"agent {args.node}: {exc}") from exc


if __name__ == "__main__":
    main()
