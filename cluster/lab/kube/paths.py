"""Where the lab's real cluster keeps its files, and its addresses.

Read by every module of ``cluster.lab.kube`` and by ``lifecycle``. Files live
under the lab's state and run directories (``cluster.lab.state``), so a test lab
with its own ``RTO_LAB_STATE_DIR``/``RTO_LAB_RUN_DIR`` never shares them, and
``rto lab down`` removes them with the rest of the lab. Every address is in the
lab's 198.18.0.0/15.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cluster.lab import net, state

__all__ = [
    "API_PORT",
    "KUBE_VERSION",
    "SERVICE_CIDR",
    "bin_dir",
    "host_link",
    "kube_dir",
    "kube_run_dir",
    "node_dir",
    "pod_cidr",
]

KUBE_VERSION = "v1.34.4"  # the pin of scripts/build-kube.sh
API_PORT = 6443
# Service ClusterIPs: disjoint from node, pod, VMI and host-link addresses.
SERVICE_CIDR = "198.19.0.0/20"


def bin_dir() -> Path:
    """The binaries scripts/build-kube.sh built (``$RTO_KUBE_BIN`` overrides)."""
    default = f"/var/cache/rto-harness/kube/{KUBE_VERSION}/bin"
    return Path(os.environ.get("RTO_KUBE_BIN", default))


def kube_dir() -> Path:
    """Certificates, kubeconfigs, etcd data, per-node directories."""
    return Path(state.STATE_DIR) / "kube"


def kube_run_dir() -> Path:
    """Pid files and sockets of the cluster's processes."""
    return Path(state.RUN_DIR) / "kube"


def node_dir(node: str) -> Path:
    """One lab node's kubelet and containerd files."""
    return kube_dir() / "nodes" / node


def pod_cidr(index: int) -> str:
    """Pods the real kubelet of node ``index`` runs: 198.18.(50+i).0/24.

    Disjoint from the node's ``cbr0`` subnet (198.18.(10+i).0/24, the VMIs'
    gateway) and from the VMI subnet.
    """
    return f"198.18.{50 + index}.0/24"


def host_link() -> tuple[str, str, str]:
    """(host interface, host address, hub address) of the veth host <-> hub.

    The user's kubeconfig and the harness on the host reach the API server on
    the hub's end of this /30; nothing is routed on the host. The /30 is derived
    from the namespace prefix so a test lab and the default lab never collide.
    """
    if net.NS_PREFIX == "rto":
        third = 254
    else:
        third = 200 + int(hashlib.sha256(net.NS_PREFIX.encode()).hexdigest(), 16) % 50
    return f"{net.NS_PREFIX}-api"[:15], f"198.19.{third}.2", f"198.19.{third}.1"
