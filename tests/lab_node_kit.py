"""Helpers for the node-side lab tests: an isolated mini-lab and an HTTP/UDP client.

Used by tests/test_lab_*.py. ``isolated_lab`` gives every test its own netns
prefix, state dir, run dir and node/volume names, so the tests never touch a lab
that is up on the machine, and removes every netns, cgroup, process, mount
and loop device it made, whatever happened in the test.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

from cluster.lab import cgroups, net, state, volumes

__all__ = [
    "ROOT",
    "IsolatedLab",
    "NotYet",
    "http_get",
    "in_netns",
    "isolated_lab",
    "udp_listener",
    "wait_for",
]

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
NODE_INDEX = 9  # 198.18.0.19, pods in 198.18.19.0/24: far from a real lab's 1..3


class NotYet(Exception):
    """Condition not met yet; ``wait_for`` retries on it."""


def wait_for(check: Callable[[], T], timeout: float, step: float = 0.01) -> T:
    """Call ``check`` until it stops raising NotYet (tenacity; no hand loops)."""

    @retry(
        retry=retry_if_exception_type(NotYet),
        stop=stop_after_delay(timeout),
        wait=wait_fixed(step),
        reraise=True,
    )
    def run() -> T:
        return check()

    return run()


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that entered netns ``ns`` (``net.in_netns``)."""
    return net.in_netns(ns, fn)


def http_get(
    ns: str, ip: str, path: str = "/cgi-bin/healthz", timeout: float = 1.0
) -> tuple[int, str]:
    """GET from inside netns ``ns``; raises OSError/TimeoutError when unreachable."""

    def get() -> tuple[int, str]:
        c = http.client.HTTPConnection(ip, 80, timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode()
        finally:
            c.close()

    return in_netns(ns, get)


def udp_listener(ns: str, port: int) -> socket.socket:
    """A UDP socket bound to HUB_IP:port inside netns ``ns``."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((state.HUB_IP, port))
        return s

    return in_netns(ns, make)


@dataclass
class IsolatedLab:
    prefix: str
    node: str
    index: int
    state_dir: Path
    run_dir: Path
    pods: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RTO_LAB_STATE_DIR": str(self.state_dir),
            "RTO_LAB_RUN_DIR": str(self.run_dir),
            "RTO_LAB_NS_PREFIX": self.prefix,
            "PYTHONPATH": str(ROOT),
        }

    def pod_name(self) -> str:
        name = f"p{uuid.uuid4().hex[:6]}"
        self.pods.append(name)
        return name

    def up_node(self) -> None:
        net.create_hub()
        net.create_node_net(self.node, self.index)
        cgroups.create_node_cgroup(self.node)
        self.nodes.append(self.node)

    def cleanup(self) -> None:
        errors: list[str] = []

        def attempt(fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as exc:
                errors.append(f"{fn}: {exc}")

        for p in self.procs:
            if p.poll() is None:
                p.kill()
            attempt(lambda p=p: p.wait(10))  # type: ignore[misc]
        for node in self.nodes:
            attempt(lambda node=node: cgroups.delete_node_cgroup(node))  # type: ignore[misc]
        for pod in self.pods:
            attempt(lambda pod=pod: volumes.destroy_volume(pod))  # type: ignore[misc]
        for ns in net.lab_netns():
            attempt(lambda ns=ns: net._remove_ns(ns))  # type: ignore[misc]
        if errors:
            raise AssertionError("cleanup failed: " + "; ".join(errors))


@pytest.fixture
def isolated_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[IsolatedLab]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    tag = uuid.uuid4().hex[:5]
    lab = IsolatedLab(
        prefix=f"rtt{tag}",
        node=f"t{tag}",
        index=NODE_INDEX,
        state_dir=tmp_path / "state",
        run_dir=tmp_path / "run",
    )
    monkeypatch.setattr(state, "STATE_DIR", lab.state_dir)
    monkeypatch.setattr(state, "RUN_DIR", lab.run_dir)
    old_prefix = net.NS_PREFIX
    net.set_prefix(lab.prefix)
    try:
        yield lab
    finally:
        try:
            lab.cleanup()
        finally:
            net.set_prefix(old_prefix)
