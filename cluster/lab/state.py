"""Where the lab keeps its files, and its addresses.

Read by every lab module: ``STATE_DIR`` holds what outlives a boot (the lab's
record of its machines, ``cluster.lab.machines``; the real cluster's data and
certificates; images, volumes, logs), ``RUN_DIR`` what a boot makes (pid files,
sockets). Both live on disk so ``rto lab down`` can remove everything even after
the harness was killed. Addresses are all in 198.18.0.0/15.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["HUB_IP", "LAB_NET", "RUN_DIR", "STATE_DIR", "node_ip", "node_pod_subnet"]

# Overridable (RTO_LAB_STATE_DIR / RTO_LAB_RUN_DIR) so tests can run a private
# lab without touching a lab that is up on the machine.
STATE_DIR = Path(os.environ.get("RTO_LAB_STATE_DIR", "/var/lib/rto-lab"))  # record, images
RUN_DIR = Path(os.environ.get("RTO_LAB_RUN_DIR", "/run/rto-lab"))  # pid files, sockets

# Addresses: only the benchmarking range 198.18.0.0/15.
LAB_NET = "198.18.0.0/15"
HUB_IP = "198.18.0.1"  # the hub namespace: bridge, control plane, probers


def node_ip(index: int) -> str:
    """Node ``index`` (1-based) on the lab bridge: 198.18.0.(10+i)/24."""
    return f"198.18.0.{10 + index}"


def node_pod_subnet(index: int) -> str:
    """Pods of node ``index`` live in 198.18.(10+i).0/24; .1 is the node."""
    return f"198.18.{10 + index}.0/24"
