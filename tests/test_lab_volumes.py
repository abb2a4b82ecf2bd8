"""Pod volumes under a real container: freeze = hang, shutdown = 503, repair = back."""

from __future__ import annotations

import subprocess
import time

import pytest
from lab_node_kit import IsolatedLab, http_get, isolated_lab, start_pod, wait_healthy

from cluster.lab import net, runtime, volumes

__all__ = ["isolated_lab"]

pytestmark = pytest.mark.lab


def _loops_of(pod: str) -> list[str]:
    out = subprocess.run(
        ["losetup", "-j", str(volumes.image_path(pod)), "-O", "NAME", "-n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def test_volume_lifecycle_without_container(isolated_lab: IsolatedLab) -> None:
    pod = isolated_lab.pod_name()
    mnt = volumes.ensure_volume(pod)
    assert volumes.ensure_volume(pod) == mnt  # idempotent
    assert volumes.is_mounted(pod)
    assert volumes.lab_volumes() == [pod]
    (mnt / "f").write_text("x")
    volumes.freeze(pod)
    assert volumes.is_frozen(pod)
    volumes.thaw(pod)
    volumes.thaw(pod)
    assert not volumes.is_frozen(pod)
    volumes.shutdown(pod)
    with pytest.raises(OSError):
        (mnt / "g").write_text("y")
    volumes.repair(pod)
    (mnt / "g").write_text("y")
    assert (mnt / "f").read_text() == "x"  # data written before the fault survives
    volumes.destroy_volume(pod)
    volumes.destroy_volume(pod)
    assert not volumes.is_mounted(pod)
    assert volumes.lab_volumes() == []
    assert _loops_of(pod) == []


def test_storage_faults_seen_by_healthz(isolated_lab: IsolatedLab) -> None:
    lab = isolated_lab
    lab.up_node()
    pod = lab.pod_name()
    ip, proc = start_pod(lab, pod, 7, "a")
    wait_healthy(lab, ip, f"{pod} a")

    volumes.freeze(pod)
    try:
        with pytest.raises(TimeoutError):
            http_get(net.HUB_NS, ip, timeout=0.5)
    finally:
        volumes.thaw(pod)
    wait_healthy(lab, ip, f"{pod} a", timeout=3)  # the hung request resumes too

    volumes.shutdown(pod)
    status, body = http_get(net.HUB_NS, ip)
    assert status == 503
    assert "I/O error" in body

    t0 = time.monotonic()
    volumes.repair(pod)
    assert http_get(net.HUB_NS, ip)[0] == 503  # the old container still binds the dead fs
    runtime.kill(lab.node, pod)
    proc.wait(5)
    ip, _ = start_pod(lab, pod, 7, "b")
    t1 = wait_healthy(lab, ip, f"{pod} b")
    print(f"\nrepair + container restart -> healthy: {(t1 - t0) * 1000:.0f} ms")
