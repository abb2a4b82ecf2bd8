"""``LabBackend.metrics`` on real parts: a busy pod's cgroup CPU, a VMI's vCPU
time and QEMU overhead.

Brings up its own one-node lab with VMs under private names (state/run dirs,
netns prefix ``rtomt``, node ``mtn1``) so it never touches a lab that is up on
the machine, and takes it down in finally. The guest boots under TCG.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from private_lab import PrivateLab

from cluster.api import WorkloadKind
from cluster.lab import runtime

pytest.importorskip("libvirt", reason="libvirt-python (extra 'vm') is not installed")

from cluster.lab.backend import LabBackend

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(300)]

LAB = PrivateLab("mttest", "rtomt", "mtn")
NODE = LAB.node(1)


@pytest.fixture(scope="module")
def lab() -> Iterator[LabBackend]:
    with LAB.up(1, vms=True) as backend:
        yield backend


def _busy(pod: str, loops: int) -> None:
    """A shell loop inside the pod's container (it joins the pod's cgroup)."""
    script = f"i=0; while [ $i -lt {loops} ]; do i=$((i+1)); done"
    runc = ["runc", "--root", str(runtime.RUNC_ROOT(NODE))]
    subprocess.run(
        [*runc, "exec", pod, "/bin/busybox", "sh", "-c", script],
        check=True,
        timeout=60,
        capture_output=True,
    )


def test_busy_pod_cpu_grows_and_counters_are_real(lab: LabBackend) -> None:
    lab.create_workload("mp1", WorkloadKind.POD, NODE)
    try:
        lab.wait_ready("mp1", 60)
        before = lab.metrics("mp1")
        assert before is not None and before.kind == "pod"
        _busy("mp1", 100_000)
        for _ in range(3):
            lab.probe("mp1")
        after = lab.metrics("mp1")
        assert after is not None
        grew = after.cpu_s - before.cpu_s
        print(f"\nFIGURE pod busy loop: +{grew:.3f} s CPU, mem {after.mem_bytes} B")
        assert grew > 0.05
        assert after.host_cpu_s == after.cpu_s and after.overhead_bytes == 0
        assert after.mem_bytes > 0
        assert after.net_rx_packets > before.net_rx_packets
        assert after.net_tx_bytes > before.net_tx_bytes
    finally:
        lab.delete_workload("mp1")


def test_vmi_reports_vcpu_time_and_qemu_overhead(lab: LabBackend) -> None:
    lab.create_workload("mv1", WorkloadKind.VMI, NODE)
    try:
        lab.wait_ready("mv1", 180)
        first = lab.metrics("mv1")
        assert first is not None and first.kind == "vmi"
        for _ in range(3):
            lab.probe("mv1", timeout=5)
        s = lab.metrics("mv1")
        assert s is not None
        print(
            f"\nFIGURE vmi: vCPU {s.cpu_s:.2f} s, QEMU {s.host_cpu_s:.2f} s, guest mem "
            f"{s.mem_bytes >> 20} MiB, QEMU overhead {s.overhead_bytes >> 20} MiB, "
            f"disk wr {s.disk_wr_bytes} B / {s.disk_wr_ops} ops, net rx {s.net_rx_packets} pkts"
        )
        assert s.cpu_s > 0
        # QEMU's process pays for the vCPU and for emulation besides.
        assert s.host_cpu_s > s.cpu_s
        assert s.overhead_bytes > 0 and s.mem_bytes > 0
        assert s.net_rx_packets > first.net_rx_packets
        # healthz writes a record to the data disk with fsync on every probe.
        assert s.disk_wr_ops > first.disk_wr_ops
    finally:
        lab.delete_workload("mv1")
