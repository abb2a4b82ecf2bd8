"""Lab volumes on their own: made, mounted, faulted and removed (loop device, ext4).

What a real pod sees of these faults (freeze = hang, shutdown = 503, repair =
back after a restart) is tests/test_lab_pod_volumes.py, on the real kubelets."""

from __future__ import annotations

import subprocess

import pytest
from lab_node_kit import IsolatedLab, isolated_lab

from cluster.lab import volumes

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
