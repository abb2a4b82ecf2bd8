"""The lab's real pods keep their data on the lab's volume, and its storage faults fail it.

A private 2-node lab with its real cluster (as ``rto lab up`` brings it up).
A pod made through ``LabClusterProvider().backend()`` is a Deployment whose
``/data`` is a hostPath on the pod's lab volume (``cluster.lab.volumes``: a
loop-mounted ext4 on the host, seen by every node's mount namespace); its
health endpoint writes and reads back a file there. Checked for real: the
mount the host makes reaches the node and the container (the same device),
a node started after the volume sees it too, a freeze makes the probe fail
until the thaw, a shutdown answers 503, the repair's fresh mount reaches the
restarted container (a new instance), and the delete leaves no image, mount
or loop device. Then ``rto campaign`` measures the pod storage-hang and
storage-eio cells on the real kubelets.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from private_lab import PrivateLab, run_rto_campaign

from chaos.netns import enter_netns
from cluster.api import Backend, ProbeTarget, VolumeFailure, WorkloadKind
from cluster.lab import volumes
from cluster.lab.kube import node as kube_node
from cluster.lab.kube import paths
from cluster.lab_cluster import LabClusterBackend
from core.wait import poll_until

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(600)]

LAB = PrivateLab("lpvol", "rtolv", "node")  # node names as the experiment files place them
ROOT = Path(__file__).resolve().parent.parent
POD = "vweb"


@pytest.fixture(scope="module")
def backend() -> Iterator[LabClusterBackend]:
    with LAB.up(2, profile="fast") as b:
        yield b


def _probe(b: Backend, timeout: float = 2.0) -> tuple[bool, str | None, str]:
    """What the recorder's probe sees, from the namespace it probes from (the
    lab's hub): (answered 200 with the pod's name, instance, why not)."""
    target = b.probe_target(POD)
    if target is None:
        return False, None, "no probe target yet"
    if target.netns is not None:
        netns = target.netns
        # In a thread of its own: setns changes only the calling thread.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(_get_in, netns, target, timeout).result()
    return _get(target, timeout)


def _get_in(netns: str, target: ProbeTarget, timeout: float) -> tuple[bool, str | None, str]:
    enter_netns(netns)
    return _get(target, timeout)


def _get(target: ProbeTarget, timeout: float) -> tuple[bool, str | None, str]:
    scheme = "http" if target.tls is None else "https"
    req = urllib.request.Request(
        f"{scheme}://{target.host}:{target.port}{target.path}", headers=dict(target.headers)
    )
    try:
        with urllib.request.urlopen(req, context=target.tls, timeout=timeout) as r:
            body = r.read().decode()
    except urllib.error.HTTPError as exc:
        exc.close()
        return False, None, f"http {exc.code}"
    except OSError as exc:  # a timeout, a refused connection
        return False, None, f"no answer: {exc}"
    name, _, inst = body.strip().partition(" ")
    return name == POD, inst or None, "ok" if name == POD else f"answer {body!r}"


def _until(b: Backend, good: bool, timeout: float, what: str) -> tuple[bool, str | None, str]:
    """Probe until the answer is ``good`` (or not); that answer."""

    def check() -> tuple[bool, str | None, str] | None:
        r = _probe(b)
        return r if r[0] is good else None

    return poll_until(check, timeout, what, interval=0.2)


def _device_at(mountinfo: str, target: str) -> str | None:
    """major:minor of the top mount at ``target`` in a mountinfo text."""
    found = [row.split()[2] for row in mountinfo.splitlines() if row.split()[4] == target]
    return found[-1] if found else None


def _host_device() -> str:
    dev = _device_at(Path("/proc/self/mountinfo").read_text(), str(volumes.mountpoint(POD)))
    assert dev is not None, "the volume is not mounted on the host"
    return dev


def _node_device(node: str) -> str | None:
    holder = kube_node.holder_pid(node)
    assert holder is not None, f"{node} has no mount namespace"
    return _device_at(Path(f"/proc/{holder}/mountinfo").read_text(), str(volumes.mountpoint(POD)))


def _container_device() -> str | None:
    """What the pod's httpd (its container's main process) has at /data."""
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if f"WORKLOAD={POD}".encode() in env and b"httpd" in cmd:
                return _device_at(Path(f"/proc/{pid}/mountinfo").read_text(), "/data")
        except OSError:
            continue
    return None


def test_a_real_pod_on_the_labs_volume_through_its_faults(backend: LabClusterBackend) -> None:
    b = backend
    t0 = time.monotonic()
    b.create_workload(POD, WorkloadKind.POD, LAB.node(1))
    _, inst, _ = _until(b, True, 120, f"{POD} answering")
    print(f"\nFIGURE pod with volume answering after create: {time.monotonic() - t0:.2f} s")
    assert b.workload(POD).node == LAB.node(1)
    # The host's mount reached the node and the container: the same device.
    dev = _host_device()
    assert _node_device(LAB.node(1)) == dev
    assert _node_device(LAB.node(2)) == dev  # the volume follows the pod
    assert poll_until(_container_device, 10, "the pod's httpd") == dev

    # A node whose namespace is made after the volume was mounted sees it too.
    b.power_off(LAB.node(2))
    b.power_on(LAB.node(2))
    assert _node_device(LAB.node(2)) == dev

    # Hang: the write blocks, the probe fails until the thaw; same process after.
    b.fail_volume(POD, VolumeFailure.HANG)
    t0 = time.monotonic()
    _, _, why = _until(b, False, 30, f"{POD} failing on its frozen volume")
    print(f"FIGURE frozen volume seen failing: {time.monotonic() - t0:.2f} s ({why})")
    time.sleep(3)
    assert not _probe(b)[0]
    b.repair_volume(POD, VolumeFailure.HANG)
    b.repair_volume(POD, VolumeFailure.HANG)  # a replayed revert is a no-op
    t0 = time.monotonic()
    _, inst2, _ = _until(b, True, 60, f"{POD} answering after the thaw")
    print(f"FIGURE answering after thaw: {time.monotonic() - t0:.2f} s")
    assert inst2 == inst

    # EIO: 503 at once (the pod's own answer, then the proxy's when the pod is
    # not Ready any more), until the repair and the container's restart.
    restarts = b.workload(POD).restarts
    b.fail_volume(POD, VolumeFailure.EIO)
    t0 = time.monotonic()
    _, _, why = _until(b, False, 30, f"{POD} failing on its shut-down volume")
    print(f"FIGURE shut-down volume seen failing: {time.monotonic() - t0:.2f} s ({why})")
    assert "503" in why, why
    b.repair_volume(POD, VolumeFailure.EIO)
    b.repair_volume(POD, VolumeFailure.EIO)  # a replayed revert: no second restart
    t0 = time.monotonic()
    _, inst3, _ = _until(b, True, 90, f"{POD} answering after the repair")
    print(f"FIGURE answering after repair + restart: {time.monotonic() - t0:.2f} s")
    assert inst3 not in (None, inst)
    assert b.workload(POD).restarts == restarts + 1
    # The repair's fresh mount (a new loop device) reached the node and the new container.
    fresh = _host_device()
    assert fresh != dev
    assert _node_device(LAB.node(1)) == fresh
    assert _container_device() == fresh

    t0 = time.monotonic()
    b.delete_workload(POD)
    print(f"FIGURE delete (pod gone, volume destroyed): {time.monotonic() - t0:.2f} s")
    assert not volumes.image_path(POD).exists()
    assert not volumes.is_mounted(POD)
    assert not volumes.mountpoint(POD).exists()
    assert _node_device(LAB.node(1)) is None and _node_device(LAB.node(2)) is None
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
    assert str(volumes.image_path(POD)) not in loops.stdout
    assert all(w.name != POD for w in b.workloads())


def test_a_campaign_measures_pod_storage_faults_on_real_kubelets(
    backend: LabClusterBackend, tmp_path: Path
) -> None:
    timing = {"profile": "fast", "duration_s": 5, "deadline_s": 40}
    campaign = {
        "name": "real-lab-pod-storage",
        "backend": "lab",
        "repetitions": 1,
        "delete_workloads": True,  # and with them their volumes
        "healers": ["watchdog", "eviction"],
        "experiments": [
            {"path": str(ROOT / "experiments/pods/storage-hang.yaml"), **timing},
            {"path": str(ROOT / "experiments/pods/storage-eio.yaml"), **timing},
        ],
    }
    rows = run_rto_campaign(campaign, tmp_path)
    assert [(r["fault"], r["variant"], r["status"]) for r in rows] == [
        ("storage-lost", "hang", "recovered"),
        ("storage-lost", "eio", "recovered"),
    ], rows
    for r in rows:
        assert (r["backend"], r["profile"]) == ("lab", "fast")
        assert r["platform"] == f"Kubernetes {paths.KUBE_VERSION}"
        assert 0 < r["rto_s"] < 40
        print(
            f"FIGURE campaign pod storage-{r['variant']}: rto {r['rto_s']:.2f} s, outage "
            f"from {r['outage_start_s']} s, same instance {r['same_instance']}, "
            f"{r['probes_failed']}/{r['probes_sent']} probes failed"
        )
    # The thaw brings the same process back; the repair restarts the container.
    assert [r["same_instance"] for r in rows] == [True, False], rows
    # The campaign deleted its workloads: their volumes went with them.
    assert [p for p in volumes.lab_volumes() if p.startswith("web-")] == []
