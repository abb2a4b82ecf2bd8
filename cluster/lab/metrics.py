"""Resource readings of lab VMIs, as ``core.samples.MetricSample``.

Called by ``LabClusterBackend.metrics`` for a VMI (and so by the runner's
metrics sampler and ``benchmarks/net_compare.py``); reads the real counters of
the QEMU that runs it, which the lab has and a metrics-server would not split:
libvirt's bulk statistics of the domain on the node's libvirtd
(``virt.domain_stats``: ``vcpu.N.time`` = guest CPU, ``cpu.time`` = QEMU's
whole process, ``balloon.*``, ``block.N.*``, ``net.N.*``) plus QEMU's memory
from ``/proc/<qemu pid>/smaps_rollup``/``smaps``: the guest RAM mapping's
resident size is what the guest occupies; QEMU's RSS beyond it is overhead
(emulation, TCG translation cache, device state, libraries).

Returns None when the VMI has no QEMU to read; raises ``LabError`` when a
running one's counters cannot be read.
"""

from __future__ import annotations

from pathlib import Path

from cluster.lab import vmis
from core.errors import LabError
from core.samples import MetricSample

__all__ = ["guest_ram_split", "vmi_sample"]


def guest_ram_split(pid: int, guest_bytes: int) -> tuple[int, int]:
    """(QEMU's total RSS, resident part of the guest RAM mapping), bytes.

    The guest RAM is the smallest mapping at least ``guest_bytes`` long (the
    TCG translation buffer may be larger, so "the largest" would be wrong).
    """
    path = Path(f"/proc/{pid}/smaps")
    try:
        text = path.read_text()
    except OSError as exc:
        raise LabError(f"cannot read {path} of QEMU: {exc}") from exc
    total = 0
    best: tuple[int, int] | None = None  # (size, rss) of the guest RAM candidate
    size = 0
    for line in text.splitlines():
        if line.startswith("Size:"):
            size = int(line.split()[1]) * 1024
        elif line.startswith("Rss:"):
            rss = int(line.split()[1]) * 1024
            total += rss
            if size >= guest_bytes and (best is None or size < best[0]):
                best = (size, rss)
    return total, (best[1] if best else 0)


def vmi_sample(node: str, name: str, t: float) -> MetricSample | None:
    """One reading of VMI ``name`` on ``node`` (None if no QEMU runs for it)."""
    import libvirt

    # libvirt: the optional 'vm' extra
    from cluster.lab import virt, virtd

    pid = vmis.qemu_pid(node, name)
    if pid is None:
        return None
    conn = virt.connect(virtd.node_uri(node))
    try:
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError:
            return None  # QEMU is going away (destroyed, migrated)
        st = virt.domain_stats(dom)
    finally:
        conn.close()

    def num(key: str) -> int:
        v = st.get(key, 0)
        return int(v) if isinstance(v, int | float) else 0

    def total(prefix: str, count_key: str, leaf: str) -> int:
        return sum(num(f"{prefix}.{i}.{leaf}") for i in range(num(count_key)))

    vcpu_ns = total("vcpu", "vcpu.current", "time")
    guest_kib = num("balloon.current") or num("balloon.maximum")
    # Balloon statistics (virtio-balloon driver in the guest) tell what the
    # guest uses; without them the guest's memory is its configured size.
    if "balloon.available" in st and "balloon.unused" in st:
        mem = (num("balloon.available") - num("balloon.unused")) * 1024
    else:
        mem = guest_kib * 1024
    rss, guest_resident = guest_ram_split(pid, guest_kib * 1024)
    return MetricSample(
        t=t,
        workload=name,
        kind="vmi",
        cpu_s=vcpu_ns / 1e9,
        host_cpu_s=num("cpu.time") / 1e9,
        mem_bytes=mem,
        overhead_bytes=max(0, rss - guest_resident),
        disk_rd_bytes=total("block", "block.count", "rd.bytes"),
        disk_wr_bytes=total("block", "block.count", "wr.bytes"),
        disk_rd_ops=total("block", "block.count", "rd.reqs"),
        disk_wr_ops=total("block", "block.count", "wr.reqs"),
        # libvirt reports interface counters as the guest sees them.
        net_rx_bytes=total("net", "net.count", "rx.bytes"),
        net_tx_bytes=total("net", "net.count", "tx.bytes"),
        net_rx_packets=total("net", "net.count", "rx.pkts"),
        net_tx_packets=total("net", "net.count", "tx.pkts"),
    )
