"""VMIs as lab workloads: libvirtd per node, the agent as virt-handler, real guests.

Brings up its own two-node lab with VMs under private names (state/run dirs,
netns prefix ``rtovm``, nodes ``vmn1``/``vmn2``) so it never touches a lab that
is up on the machine, and takes it down in finally. Guests boot under TCG
(about 4-8 s each). Measured figures are printed (``-s``): create -> first good
probe, QEMU kill -> good probe, watchdog hang -> good probe.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from private_lab import PrivateLab

from cluster.api import Phase, WorkloadKind, WorkloadStatus
from cluster.lab import cgroups, net
from core.errors import BackendError

pytest.importorskip("libvirt", reason="libvirt-python (extra 'vm') is not installed")

from cluster.lab import virtd, vmis  # needs libvirt (importorskip above)
from cluster.lab.backend import LabBackend

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(240)]

LAB = PrivateLab("vmtest", "rtovm", "vmn")
NODES = (LAB.node(1), LAB.node(2))
VMI = "vm1"


@pytest.fixture(scope="module")
def lab() -> Iterator[LabBackend]:
    pids: list[int] = []
    with LAB.up(len(NODES), vms=True) as backend:
        for node in NODES:
            pid = virtd.libvirtd_pid(node)
            assert pid is not None, f"no libvirtd on {node}"
            pids.append(pid)
        yield backend
    survivors = {p: _proc(p) for p in pids if _proc(p)[1] not in ("gone", "Z")}
    assert not survivors, f"libvirtd survived lab_down: {survivors}"


def _proc(pid: int) -> tuple[str, str]:
    """(comm, state) of ``pid``; state "gone" once it no longer exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return ("", "gone")
    return (stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1].split()[0])


def _ready_new(lab: LabBackend, old: str | None, timeout: float) -> WorkloadStatus:
    """Wait until the VMI answers /healthz with an instance other than ``old``."""

    def check() -> WorkloadStatus | None:
        w = lab.workload(VMI)
        if w.instance is None or w.instance == old:
            return None
        try:
            code, body = lab.probe(VMI, timeout=0.5)
        except BackendError:
            return None
        return w if code == 200 and body.split()[:2] == [VMI, w.instance] else None

    return lab.wait_until(check, timeout, f"VMI {VMI} to answer with a new instance", 0.05)


def _boot(body: str) -> int:
    return int(next(p for p in body.split() if p.startswith("boot="))[5:])


def test_vmi_lab_without_vms_refuses(lab: LabBackend) -> None:
    lab.store.put_setting("vms", False)
    try:
        with pytest.raises(BackendError, match="vms=True"):
            lab.create_workload("novm", WorkloadKind.VMI, NODES[0])
    finally:
        lab.store.put_setting("vms", True)


def test_vmi_runs_restarts_after_qemu_kill_and_watchdog_reset(lab: LabBackend) -> None:
    t0 = time.monotonic()
    lab.create_workload(VMI, WorkloadKind.VMI, NODES[0])
    target = lab.probe_target(VMI)
    assert target is not None
    assert target.host.startswith("198.18.100.") and target.path == "/healthz"
    assert target.netns == net.HUB_NS and target.port == 80
    first = _ready_new(lab, None, 90)
    print(f"\nFIGURE VMI create -> first good probe: {time.monotonic() - t0:.2f} s")
    assert first.phase is Phase.RUNNING and first.node == NODES[0]
    ready = first.condition("Ready")
    assert ready is not None and ready.status
    paused = first.condition("Paused")
    assert paused is not None and not paused.status
    code, body = lab.probe(VMI)
    assert code == 200
    boot0 = _boot(body)
    # The disk lives on the VMI's lab volume, which storage faults act on.
    assert vmis.disk_path(VMI).is_file()
    qpid = vmis.qemu_pid(NODES[0], VMI)
    assert qpid is not None
    # QEMU runs in the node's cgroup (a power-off must take it down too).
    assert f"/rto-lab/{cgroups.node_dir(NODES[0])}" in Path(f"/proc/{qpid}/cgroup").read_text()

    # QEMU killed: run strategy Always -> the agent starts the domain again.
    t1 = time.monotonic()
    lab.kill_main_process(VMI)
    second = _ready_new(lab, first.instance, 90)
    print(f"FIGURE QEMU kill -> good probe (new instance): {time.monotonic() - t1:.2f} s")
    assert second.restarts == first.restarts + 1
    assert vmis.qemu_pid(NODES[0], VMI) not in (None, qpid)
    _, body = lab.probe(VMI)
    assert _boot(body) == boot0 + 1  # the boot count lives on the data disk

    # Guest hang: the i6300esb fires and resets the guest inside the same QEMU.
    qpid2 = vmis.qemu_pid(NODES[0], VMI)
    t2 = time.monotonic()
    assert vmis.guest_command(VMI, "hang") == "hung"
    third = _ready_new(lab, second.instance, 90)
    print(f"FIGURE watchdog hang -> good probe (new instance): {time.monotonic() - t2:.2f} s")
    _, body = lab.probe(VMI)
    assert _boot(body) == boot0 + 2
    assert third.restarts == second.restarts  # a guest reset is not a QEMU restart
    assert vmis.qemu_pid(NODES[0], VMI) == qpid2

    lab.delete_workload(VMI)
    assert vmis.qemu_pid(NODES[0], VMI) is None


def test_vmi_moves_when_its_node_powers_off(lab: LabBackend) -> None:
    """Power-off kills libvirtd and QEMU with the node; after the toleration
    the VMI is evicted, boots on the other node and the hub route follows."""
    name = "vm2"
    lab.create_workload(name, WorkloadKind.VMI, NODES[0])
    try:

        def booted() -> WorkloadStatus | None:
            x = lab.workload(name)
            return x if x.instance is not None else None

        w = lab.wait_until(booted, 90, f"{name} to boot", 0.1)
        qpid = vmis.qemu_pid(NODES[0], name)
        assert qpid is not None
        t0 = time.monotonic()
        lab.power_off(NODES[0])
        assert _proc(qpid)[1] in ("gone", "Z")  # QEMU died with its node
        assert virtd.libvirtd_pid(NODES[0]) is None

        def moved() -> bool:
            x = lab.workload(name)
            if x.node != NODES[1] or x.instance is None or x.instance == w.instance:
                return False
            try:
                code, body = lab.probe(name, timeout=0.5)
            except BackendError:
                return False
            return code == 200 and body.split()[:2] == [name, x.instance]

        lab.wait_until(moved, 90, f"{name} to answer from {NODES[1]}", 0.05)
        print(f"\nFIGURE VMI node power-off -> good probe on other node: "
              f"{time.monotonic() - t0:.2f} s")  # fmt: skip
        lab.power_on(NODES[0])
        assert virtd.libvirtd_pid(NODES[0]) is not None  # the node comes back with its hypervisor
    finally:
        lab.power_on(NODES[0])
        lab.delete_workload(name)
