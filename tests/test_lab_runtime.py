"""Pod containers with real runc: bundle, healthz from the hub, kill, cleanup."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from lab_node_kit import (
    IsolatedLab,
    http_get,
    isolated_lab,
    start_pod,
    wait_healthy,
)

from cluster.lab import cgroups, net, rootfs, runtime

__all__ = ["isolated_lab"]

pytestmark = pytest.mark.lab


def test_rootfs_cached_and_rebuilt_on_change(
    isolated_lab: IsolatedLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = rootfs.ensure_rootfs()
    assert (root / "bin" / "busybox").is_file()
    assert os.access(root / "srv/www/cgi-bin/healthz", os.X_OK)
    ino = root.stat().st_ino
    assert rootfs.ensure_rootfs().stat().st_ino == ino  # cached
    monkeypatch.setattr(rootfs, "_VERSION", "test-bump")
    assert rootfs.ensure_rootfs().stat().st_ino != ino  # inputs changed: rebuilt


def test_bundle_config(isolated_lab: IsolatedLab) -> None:
    lab = isolated_lab
    b = runtime.prepare_bundle(lab.node, lab.index, "web", "198.18.19.5", "abc")
    cfg = json.loads((b / "config.json").read_text())
    assert cfg["process"]["terminal"] is False
    assert "POD_NAME=web" in cfg["process"]["env"]
    assert "INSTANCE=abc" in cfg["process"]["env"]
    assert cfg["root"]["readonly"] is True
    assert cfg["linux"]["cgroupsPath"] == cgroups.pod_cgroups_path(lab.node, "web")
    netns = [n for n in cfg["linux"]["namespaces"] if n["type"] == "network"]
    assert netns == [{"type": "network", "path": f"/run/netns/{net.pod_ns('web')}"}]
    mounts = {m["destination"]: m for m in cfg["mounts"]}
    assert mounts["/tmp"]["type"] == mounts["/www"]["type"] == "tmpfs"
    assert mounts["/data"]["type"] == "bind"


def test_container_serves_healthz_and_dies_with_its_main_process(isolated_lab: IsolatedLab) -> None:
    lab = isolated_lab
    lab.up_node()
    pod = lab.pod_name()
    t0 = time.monotonic()
    ip, proc = start_pod(lab, pod, 5, "inst1")
    t_good = wait_healthy(lab, ip, f"{pod} inst1")
    print(f"\nrunc start -> first good healthz: {(t_good - t0) * 1000:.0f} ms")
    assert runtime.list_containers(lab.node) == [pod]
    assert runtime.container_status(lab.node, pod) == "running"
    pid = runtime.main_pid(lab.node, pod)
    assert pid is not None
    assert pid in cgroups.cgroup_pids(lab.node, pod)
    # pid 1 of the container is httpd itself, not a shell around it.
    assert os.readlink(f"/proc/{pid}/exe").endswith("busybox")
    assert Path(f"/proc/{pid}/cmdline").read_text().split("\0")[0] == "httpd"

    os.kill(pid, signal.SIGKILL)
    assert proc.wait(5) != 0
    with pytest.raises(OSError):
        http_get(net.HUB_NS, ip, timeout=0.3)
    assert runtime.main_pid(lab.node, pod) is None
    runtime.delete(lab.node, pod)
    runtime.delete(lab.node, pod)  # idempotent
    runtime.kill(lab.node, pod)
    assert runtime.list_containers(lab.node) == []


def test_freeze_pod_makes_it_hang(isolated_lab: IsolatedLab) -> None:
    lab = isolated_lab
    lab.up_node()
    pod = lab.pod_name()
    ip, _ = start_pod(lab, pod, 6, "i")
    wait_healthy(lab, ip, f"{pod} i")
    cgroups.freeze_pod(lab.node, pod)
    try:
        with pytest.raises(TimeoutError):
            http_get(net.HUB_NS, ip, timeout=0.5)
    finally:
        cgroups.thaw_pod(lab.node, pod)
    wait_healthy(lab, ip, f"{pod} i", timeout=3)


def test_kill_node_also_kills_a_frozen_pod(isolated_lab: IsolatedLab) -> None:
    lab = isolated_lab
    lab.up_node()
    pod = lab.pod_name()
    ip, proc = start_pod(lab, pod, 8, "f")
    wait_healthy(lab, ip, f"{pod} f")
    cgroups.freeze_pod(lab.node, pod)
    # httpd (+ a CGI child maybe); runc is the test's child here, outside the node.
    assert cgroups.kill_node(lab.node) >= 1
    assert proc.wait(5) != 0
    assert cgroups.cgroup_pids(lab.node) == []
