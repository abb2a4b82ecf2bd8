"""The node agent as a real daemon: runs pods, restarts them, heartbeats, stops.

The agent runs as lifecycle starts it (``ip netns exec`` + node cgroup) against
a private state DB whose rows the test writes itself, standing in for the
control plane; heartbeats are received on UDP in the hub netns.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time
from typing import Any

import pytest
from lab_node_kit import (
    IsolatedLab,
    NotYet,
    http_get,
    isolated_lab,
    udp_listener,
    wait_for,
    wait_healthy,
)

from cluster.lab import cgroups, net, runtime, state, volumes

__all__ = ["isolated_lab"]

pytestmark = pytest.mark.lab


class Heartbeats:
    """The newest heartbeat of the node, read from a UDP socket in the hub."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(0.05)
        self.last: dict[str, Any] | None = None
        self.count = 0

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return
            self.last = json.loads(data)
            self.count += 1

    def pod(self, name: str) -> dict[str, Any]:
        self.drain()
        if self.last is None or name not in self.last["pods"]:
            raise NotYet
        pod: dict[str, Any] = self.last["pods"][name]
        return pod

    def wait_pod(self, name: str, timeout: float = 10.0, **want: Any) -> dict[str, Any]:
        def check() -> dict[str, Any]:
            pod = self.pod(name)
            if any(pod.get(k) != v for k, v in want.items()):
                raise NotYet
            return pod

        return wait_for(check, timeout)


def _db(lab: IsolatedLab) -> sqlite3.Connection:
    conn = state.connect(lab.state_dir / "state.db")
    conn.execute("INSERT INTO nodes(name, idx, ready) VALUES (?, ?, 1)", (lab.node, lab.index))
    conn.execute("INSERT INTO settings VALUES ('profile', ?)", (json.dumps("fast"),))
    return conn


def _assign(conn: sqlite3.Connection, lab: IsolatedLab, pod: str, slot: int) -> str:
    ip = net.pod_ip(lab.index, slot)
    now = time.monotonic()
    conn.execute(
        "INSERT INTO workloads(name, kind, node, phase, ip, slot, generation, created, updated)"
        " VALUES (?, 'pod', ?, 'Pending', ?, ?, 1, ?, ?)",
        (pod, lab.node, ip, slot, now, now),
    )
    return ip


def _body(pod: str, instance: str) -> str:
    return f"{pod} {instance}"


def test_agent_runs_restarts_heartbeats_and_stops(isolated_lab: IsolatedLab) -> None:
    lab = isolated_lab
    lab.up_node()
    conn = _db(lab)
    hb = Heartbeats(udp_listener(net.HUB_NS, state.HEARTBEAT_PORT))
    try:
        pod = lab.pod_name()
        ip = _assign(conn, lab, pod, 5)
        agent = lab.start_agent()

        first = hb.wait_pod(pod, phase="Running", restarts=0, ip=ip)
        assert hb.last is not None
        assert hb.last["node"] == lab.node
        wait_healthy(lab, ip, _body(pod, first["instance"]))
        # What the agent made (started via `ip netns exec`) is visible machine-wide.
        assert volumes.is_mounted(pod)
        assert net.pod_ns(pod) in net.lab_netns()

        # Crash 1: the kubelet restarts at once, as a new instance.
        pid = runtime.main_pid(lab.node, pod)
        assert pid is not None
        t_kill = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        second = hb.wait_pod(pod, restarts=1, phase="Running")
        assert second["instance"] != first["instance"]
        t_back = wait_healthy(lab, ip, _body(pod, second["instance"]))
        print(f"\nagent: SIGKILL -> restarted + healthy: {(t_back - t_kill) * 1000:.0f} ms")
        assert t_back - t_kill < 3.0

        # Crash 2: back-off (fast profile: 1 s) before the next start.
        pid = runtime.main_pid(lab.node, pod)
        assert pid is not None
        t_kill = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        third = hb.wait_pod(pod, restarts=2, phase="Running")
        t_back = wait_healthy(lab, ip, _body(pod, third["instance"]))
        print(f"agent: second SIGKILL -> healthy after back-off: {(t_back - t_kill) * 1000:.0f} ms")
        assert t_back - t_kill >= 0.9

        # Heartbeats are periodic (fast profile: every 0.2 s) and numbered.
        seq0 = hb.last["seq"] if hb.last else 0
        time.sleep(0.65)  # real time must pass for periodic datagrams to arrive
        hb.drain()
        assert hb.last is not None
        assert hb.last["seq"] - seq0 >= 2

        # restart_healing off: the next crash leaves the pod Failed.
        conn.execute("INSERT INTO settings VALUES ('restart_healing', 'false')")
        time.sleep(1.1)  # the agent re-reads settings every second
        pid = runtime.main_pid(lab.node, pod)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        failed = hb.wait_pod(pod, phase="Failed")
        assert failed["restarts"] == 2
        assert runtime.main_pid(lab.node, pod) is None

        # Unassigned: the agent removes the container and the pod network.
        conn.execute("UPDATE settings SET value='true' WHERE key='restart_healing'")
        conn.execute("UPDATE workloads SET node=NULL WHERE name=?", (pod,))

        def pod_gone() -> None:
            hb.drain()
            if hb.last is None or pod in hb.last["pods"] or net.pod_ns(pod) in net.lab_netns():
                raise NotYet

        wait_for(pod_gone, 5.0)

        # A new pod, then SIGTERM: the agent stops it and exits cleanly.
        pod2 = lab.pod_name()
        ip2 = _assign(conn, lab, pod2, 6)
        run = hb.wait_pod(pod2, phase="Running")
        wait_healthy(lab, ip2, _body(pod2, run["instance"]))
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(10) == 0, lab.agent_log()
        assert runtime.list_containers(lab.node) == []
        assert cgroups.cgroup_pids(lab.node) == []
        assert net.pod_ns(pod2) not in net.lab_netns()
    finally:
        hb.sock.close()
        conn.close()


def test_kill_node_takes_agent_and_containers(isolated_lab: IsolatedLab) -> None:
    lab = isolated_lab
    lab.up_node()
    conn = _db(lab)
    hb = Heartbeats(udp_listener(net.HUB_NS, state.HEARTBEAT_PORT))
    try:
        pod = lab.pod_name()
        ip = _assign(conn, lab, pod, 5)
        agent = lab.start_agent()
        run = hb.wait_pod(pod, phase="Running")
        wait_healthy(lab, ip, _body(pod, run["instance"]))
        t0 = time.monotonic()
        killed = cgroups.kill_node(lab.node)
        took = time.monotonic() - t0
        print(f"\nkill_node with agent + 1 pod: {killed} processes in {took * 1000:.1f} ms")
        assert killed >= 3  # agent, runc, httpd (at least)
        assert agent.wait(5) == -signal.SIGKILL
        assert cgroups.cgroup_pids(lab.node) == []
        with pytest.raises(OSError):
            http_get(net.HUB_NS, ip, timeout=0.3)
        # Heartbeats stop.
        hb.drain()
        seq = hb.last["seq"] if hb.last else 0
        time.sleep(0.5)
        hb.drain()
        assert hb.last is not None
        assert hb.last["seq"] == seq

        # Power on: a new agent cleans the stale runc state and runs the pod again.
        cgroups.create_node_cgroup(lab.node)
        hb.last = None  # only the new agent's heartbeats count from here
        lab.start_agent()
        back = hb.wait_pod(pod, phase="Running", restarts=0)
        assert back["instance"] != run["instance"]
        wait_healthy(lab, ip, _body(pod, back["instance"]))
    finally:
        hb.sock.close()
        conn.close()
