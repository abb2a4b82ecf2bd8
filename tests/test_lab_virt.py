"""The lab's VM layer for real: two node libvirtds, a VMI booted, live-migrated.

Runs on a throw-away network (``virtd.ScratchNet``: rtovt-hub, rtovt-vt1,
rtovt-vt2 on 198.18.200.0/24, VMI subnet 198.18.201.0/24) with a private
runtime directory, so it can never touch a lab that is up on the machine and a
lab clean-up can never take it. Boots the guest of ``cluster.lab.guest.build``
under TCG (about 5-20 s on 2 busy cores). Leaves nothing behind: the module
fixture stops the daemons, deletes the namespaces and checks for survivors.
"""

from __future__ import annotations

import os
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.netns import enter_netns
from cluster.lab import state
from core.errors import LabError

libvirt = pytest.importorskip("libvirt", reason="libvirt-python (extra 'vm') is not installed")

from cluster.lab import virt, virtd  # noqa: E402  (needs libvirt)

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(240)]

NET = virtd.ScratchNet()
VMI = "vt-test-vmi"
VMI_IP = NET.vmi_ip(10)


class Lab:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.uris: dict[str, str] = {}
        self.pids: dict[str, int] = {}


def _start(node: str, index: int) -> str:
    return virtd.start_node_libvirtd(
        node, index, listen_ip=NET.node_ip(index), netns=NET.node_ns(node), cgroup=False
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    run_dir = tmp_path_factory.mktemp("rtovt-run")
    saved = state.RUN_DIR
    state.RUN_DIR = run_dir  # read at call time by virtd/virt: nothing under /run/rto-lab
    lab = Lab(run_dir)
    try:
        NET.create()
        for i, node in enumerate(NET.nodes, start=1):
            lab.uris[node] = _start(node, i)
            pid = virtd.libvirtd_pid(node)
            assert pid is not None
            lab.pids[node] = pid
        yield lab
    finally:
        try:
            for node in NET.nodes:
                virtd.purge_node_libvirtd(node)
            NET.delete()
            virt.console_log(VMI).unlink(missing_ok=True)
        finally:
            state.RUN_DIR = saved
    # Nothing may survive: daemons, guests, namespaces (taps go with them).
    for node, pid in lab.pids.items():
        assert not Path(f"/proc/{pid}").exists() or "Z" in _proc_state(pid), node
    assert not [ns for ns in os.listdir("/run/netns") if ns.startswith(NET.prefix)]
    assert str(run_dir) not in Path("/proc/self/mountinfo").read_text()
    qemu = subprocess.run(["pgrep", "-f", f"guest={VMI},"], capture_output=True)
    assert qemu.returncode == 1, qemu.stdout


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def _in_netns(ns: str, fn: object) -> object:
    """Run ``fn`` in a thread that entered ``ns``; return its result or raise."""
    out: list[object] = []

    def run() -> None:
        try:
            enter_netns(ns)
            out.append(fn())  # type: ignore[operator]
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def _healthz() -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://{VMI_IP}/healthz", timeout=5) as r:
            return str(r.read().decode())

    return str(_in_netns(NET.hub_ns, get))


def test_daemons_look_like_two_hosts(lab: Lab) -> None:
    uuids = set()
    for i, node in enumerate(NET.nodes, start=1):
        conn = libvirt.open(lab.uris[node])
        try:
            caps = conn.getCapabilities()
        finally:
            conn.close()
        assert f"<uuid>{virtd.host_uuid(node)}</uuid>" in caps
        uuids.add(virtd.host_uuid(node))
        pid = lab.pids[node]
        # In the node's netns, in a mount namespace of its own.
        ns_inode = os.stat(f"/run/netns/{NET.node_ns(node)}").st_ino
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == ns_inode
        assert os.stat(f"/proc/{pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
        # Its private /run/libvirt is the node's directory on the host.
        assert virtd.node_socket(node).is_socket()
        ss = subprocess.run(
            ["ip", "netns", "exec", NET.node_ns(node), "ss", "-ltnH"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert f"{NET.node_ip(i)}:{virtd.LIBVIRT_TCP_PORT}" in ss.stdout
        # Idempotent: a second start finds the same daemon.
        assert _start(node, i) == lab.uris[node]
        assert virtd.libvirtd_pid(node) == pid
    assert len(uuids) == 2


def test_daemon_that_cannot_start_names_its_log(lab: Lab) -> None:
    with pytest.raises(LabError, match="does not exist"):
        virtd.start_node_libvirtd("vt9", 9, netns="rtovt-nosuchns")
    # An address the node does not have: libvirtd cannot bind and exits.
    bad = "vtbad"
    try:
        with pytest.raises(LabError, match=r"libvirtd\.stderr"):
            virtd.start_node_libvirtd(
                bad, 1, listen_ip="198.18.250.1", netns=NET.node_ns("vt1"), cgroup=False
            )
    finally:
        virtd.purge_node_libvirtd(bad)


def test_vmi_boots_migrates_live_and_is_destroyed(lab: Lab, tmp_path: Path) -> None:
    from cluster.lab.guest.build import READY_MARKER, build_guest

    guest = build_guest()
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (4 << 20))
    c1, c2 = virt.connect(lab.uris["vt1"]), virt.connect(lab.uris["vt2"])
    ev1, ev2 = virt.VirtEvents(c1, "vt1"), virt.VirtEvents(c2, "vt2")
    try:
        dom = virt.define_vmi(c1, VMI, "vt1", f"{VMI_IP}/24", NET.vmi_gw, guest, disk)
        xml = dom.XMLDesc()
        assert "<acpi/>" in xml and "i6300esb" in xml and "error_policy='stop'" in xml
        log = virt.console_log(VMI)
        after = log.stat().st_size if log.exists() else 0
        dom.create()
        ready = virt.wait_console(VMI, READY_MARKER, after=after, timeout=90)
        instance = ready.split()[1]
        # The tap is libvirtd's, so it is in the node's netns on cbr0.
        links = subprocess.run(
            ["ip", "-n", NET.node_ns("vt1"), "-o", "link", "show", "master", "cbr0"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert "vnet" in links
        NET.route_vmi(VMI_IP, 1)
        assert _healthz().split()[:2] == [VMI, instance]
        stats = virt.domain_stats(dom)
        assert int(stats["vcpu.0.time"]) > 0 and int(stats["cpu.time"]) >= int(stats["vcpu.0.time"])
        assert "net.0.rx.bytes" in stats and "block.0.wr.bytes" in stats

        result = virt.migrate_vmi(c1, virtd.node_tcp_uri(NET.node_ip(2)), NET.node_ip(2), VMI)
        print(f"\nmigration vt1->vt2: {result}")
        assert result.downtime_ms is not None and 0 < result.downtime_ms < 5000
        assert result.wall_s * 1000 > result.downtime_ms
        assert c2.lookupByName(VMI).isActive()
        with pytest.raises(libvirt.libvirtError):
            c1.lookupByName(VMI)  # moved, definition included
        NET.route_vmi(VMI_IP, 2)
        # Same instance answers from node 2: a live migration, not a reboot.
        assert _healthz().split()[:2] == [VMI, instance]
        src = [(e.reason, e.detail) for e in ev1.events() if e.domain == VMI]
        dst = [(e.reason, e.detail) for e in ev2.events() if e.domain == VMI]
        assert ("Suspended", "Migrated") in src and ("Stopped", "Migrated") in src
        assert ("Started", "Migrated") in dst and ("Resumed", "Migrated") in dst

        virt.destroy_vmi(c2, VMI)
        virt.destroy_vmi(c2, VMI)  # idempotent
        assert VMI not in c2.listDefinedDomains()
    finally:
        ev1.close()
        ev2.close()
        for conn in (c1, c2):
            virt.destroy_vmi(conn, VMI)
            conn.close()
