"""The metric sample type: one reading of one workload's resources.

The vocabulary between the backends, which fill a ``MetricSample`` per
``Backend.metrics(workload)`` call, and ``chaos.metrics``, which summarises
samples into a run's row. See ``chaos.metrics`` for what each field means for
a pod and for a VMI.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["COUNTERS", "MetricSample", "sample_fields"]

# Monotonic counters of a sample (summarised as deltas); the rest are gauges.
COUNTERS: tuple[str, ...] = (
    "cpu_s",
    "host_cpu_s",
    "disk_rd_bytes",
    "disk_wr_bytes",
    "disk_rd_ops",
    "disk_wr_ops",
    "net_rx_bytes",
    "net_tx_bytes",
    "net_rx_packets",
    "net_tx_packets",
)


@dataclass(frozen=True)
class MetricSample:
    """One reading of one workload's resources at ``t`` (monotonic seconds)."""

    t: float
    workload: str
    kind: str  # "pod" | "vmi"
    cpu_s: float  # container CPU / sum of guest vCPU time, seconds
    host_cpu_s: float  # QEMU's host CPU incl. overhead (VMI); = cpu_s (pod)
    mem_bytes: int  # cgroup usage (pod) / guest memory per the balloon (VMI)
    overhead_bytes: int = 0  # QEMU RSS minus guest memory (VMI); 0 for pods
    disk_rd_bytes: int = 0
    disk_wr_bytes: int = 0
    disk_rd_ops: int = 0
    disk_wr_ops: int = 0
    net_rx_bytes: int = 0
    net_tx_bytes: int = 0
    net_rx_packets: int = 0
    net_tx_packets: int = 0


def sample_fields() -> tuple[str, ...]:
    """Field names of :class:`MetricSample`, in order (for tables and CSV)."""
    return tuple(f.name for f in fields(MetricSample))
