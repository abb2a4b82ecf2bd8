"""The harness's own hands on a running lab VMI: disk unplug/replug, resume, cut-off.

Called by ``cluster.lab_cluster.LabClusterBackend`` for what KubeVirt's
launcher would do to a guest and the lab does around the API
(``fail_volume(.., UNPLUG)``, ``repair_volume``, ``resume_workload`` of a guest
libvirt paused, ``partition_workload``); the faults and the watchdog healer
reach it only through the ``Backend`` methods. It talks to the node's own
libvirtd from the harness (a short-lived connection per action: the node's
virt-handler keeps its own) and to the node's netns through ``nft``.

Every action is idempotent, because a journal replay may run a revert twice or
after the VMI moved: ``replug_disk`` does nothing when the live domain already
has its data disk, ``heal_vmi`` looks for the VMI's table in every node.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cluster.lab import net
from core.errors import LabError
from core.wait import WaitTimeout, poll_until

__all__ = [
    "DATA_DISK",
    "domain_state",
    "has_data_disk",
    "heal_vmi",
    "is_vmi_partitioned",
    "partition_vmi",
    "replug_disk",
    "resume",
    "unplug_disk",
]

DATA_DISK = "vda"  # target dev of the data disk in cluster.lab.virt.domain_xml


@contextmanager
def _domain(node: str, name: str) -> Iterator[Any]:
    """The live domain of VMI ``name`` on ``node``'s libvirtd (LabError if none)."""
    import libvirt

    # libvirt: the optional 'vm' extra
    from cluster.lab import virt, virtd

    conn = virt.connect(virtd.node_uri(node))
    try:
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            raise LabError(f"VMI {name} has no domain on node {node}: {exc}") from exc
        yield dom
    finally:
        conn.close()


def domain_state(node: str, name: str) -> tuple[str, str]:
    """(state, reason) of the VMI's domain as libvirt says, e.g. ("paused", "ioerror")."""
    import libvirt

    states = {
        libvirt.VIR_DOMAIN_RUNNING: "running",
        libvirt.VIR_DOMAIN_PAUSED: "paused",
        libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
        libvirt.VIR_DOMAIN_CRASHED: "crashed",
    }
    with _domain(node, name) as dom:
        try:
            st, why = dom.state()
        except libvirt.libvirtError as exc:
            raise LabError(f"cannot read the state of VMI {name}: {exc}") from exc
    reason = ""
    if st == libvirt.VIR_DOMAIN_PAUSED:
        reason = "ioerror" if why == libvirt.VIR_DOMAIN_PAUSED_IOERROR else str(why)
    return states.get(st, str(st)), reason


def resume(node: str, name: str) -> bool:
    """Resume the VMI if it is paused; True if it was paused (and resumed)."""
    import libvirt

    with _domain(node, name) as dom:
        try:
            st, _ = dom.state()
            if st != libvirt.VIR_DOMAIN_PAUSED:
                return False
            dom.resume()
        except libvirt.libvirtError as exc:
            raise LabError(f"cannot resume VMI {name} on {node}: {exc}") from exc
    return True


def _disk_xml(dom: Any, flags: int) -> str | None:
    """The <disk> element of the data disk in the domain's XML (None if absent)."""
    root = ET.fromstring(dom.XMLDesc(flags))
    for disk in root.iter("disk"):
        target = disk.find("target")
        if target is not None and target.get("dev") == DATA_DISK:
            return ET.tostring(disk, encoding="unicode")
    return None


def has_data_disk(node: str, name: str) -> bool:
    """Whether the running guest has its data disk plugged in."""
    with _domain(node, name) as dom:
        return _disk_xml(dom, 0) is not None


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    try:
        poll_until(check, timeout, what, interval=0.1)
    except WaitTimeout as exc:
        raise LabError(str(exc)) from None  # callers handle LabError


def unplug_disk(node: str, name: str, timeout: float = 20.0) -> None:
    """Hot-unplug the data disk (ACPI PCI unplug; the guest must let go of it).

    Returns once the device is gone from the live domain. Idempotent.
    """
    import libvirt

    with _domain(node, name) as dom:
        xml = _disk_xml(dom, 0)
        if xml is None:
            return
        try:
            dom.detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            raise LabError(f"cannot unplug the data disk of VMI {name}: {exc}") from exc
        # libvirt may return while the guest still processes the ACPI request.
        _wait(lambda: _disk_xml(dom, 0) is None, timeout, f"VMI {name} to release its disk")


def replug_disk(node: str, name: str, timeout: float = 20.0) -> None:
    """Plug the data disk back (as the persistent definition has it). Idempotent."""
    import libvirt

    with _domain(node, name) as dom:
        if not dom.isActive():
            return  # a stopped domain gets the disk from its definition at start
        # An unplug still in flight must finish first: the alias is still taken.
        live = _disk_xml(dom, 0)
        if live is not None:
            return
        xml = _disk_xml(dom, libvirt.VIR_DOMAIN_XML_INACTIVE)
        if xml is None:
            raise LabError(f"VMI {name}'s definition has no data disk {DATA_DISK} to plug back")
        try:
            dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            raise LabError(f"cannot plug the data disk of VMI {name} back: {exc}") from exc
        _wait(lambda: _disk_xml(dom, 0) is not None, timeout, f"VMI {name} to get its disk")


# --- network ---------------------------------------------------------------------


def _table(name: str) -> str:
    # nft identifiers: letters, digits, underscore; VMI names carry '-'.
    return "rto_vmi_" + name.replace("-", "_")


def _nft(node: str, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", net.node_ns(node), "nft", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


def _ns_exists(node: str) -> bool:
    return (net.NETNS_DIR / net.node_ns(node)).exists()


def is_vmi_partitioned(node: str, name: str) -> bool:
    """Whether ``node``'s netns holds VMI ``name``'s drop table."""
    if not _ns_exists(node):
        return False
    return _nft(node, ["list", "table", "ip", _table(name)]).returncode == 0


def partition_vmi(node: str, name: str, ip: str) -> None:
    """Drop every packet to or from ``ip`` that the node routes (idempotent).

    The VMI's tap sits on the node's cbr0 and everything reaching it from the
    lab is routed by the node, so the forward hook of the node's netns sees
    all of it; the node itself (agent heartbeats, libvirtd) is untouched.
    """
    if not _ns_exists(node):
        raise LabError(f"node {node} has no network namespace; is the lab up?")
    if is_vmi_partitioned(node, name):
        return
    rules = f"""
table ip {_table(name)} {{
    chain forward {{ type filter hook forward priority -300; policy accept;
        ip saddr {ip} drop; ip daddr {ip} drop; }}
    chain output {{ type filter hook output priority -300; policy accept; ip daddr {ip} drop; }}
    chain input {{ type filter hook input priority -300; policy accept; ip saddr {ip} drop; }}
}}
"""
    res = _nft(node, ["-f", "-"], stdin=rules)
    if res.returncode != 0:
        raise LabError(f"nft could not cut VMI {name} ({ip}) off on {node}: {res.stderr.strip()}")


def heal_vmi(nodes: list[str], name: str) -> None:
    """Remove VMI ``name``'s drop table wherever it is (idempotent)."""
    for node in nodes:
        if not is_vmi_partitioned(node, name):
            continue
        res = _nft(node, ["delete", "table", "ip", _table(name)])
        if res.returncode != 0:
            raise LabError(f"nft could not heal VMI {name} on {node}: {res.stderr.strip()}")
