"""The lab's network: namespaces, veths and bridges for the hub and the nodes.

Called by ``lifecycle.lab_up``/``lab_down`` (hub and node networks), by the
virt-handlers (VMI routes) and by the network-partition faults. Layout: hub
netns with bridge ``br0`` 198.18.0.1/24; node netns with ``eth0``
198.18.0.(10+i)/24 plugged into ``br0`` and a bridge ``cbr0``
198.18.(10+i).1/24, the gateway of the node's VMIs (the kubelet's pods are on
CNI's own bridge beside it, ``cluster.lab.kube.node``). Netlink goes through
pyroute2; partitions are nft tables run with the ``nft`` CLI inside the
namespace: a whole node's eth0 (``partition_node``), or one address a node
routes (a pod, a VMI: ``partition_ip``, used by the lab power driver
``cluster.lab.power_driver``).

Namespace names start with ``NS_PREFIX`` ("rto"). Tests set another prefix with
``set_prefix`` (and ``RTO_LAB_NS_PREFIX`` for child processes) so that they can
never touch a lab that is running on the same machine.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute, NetNS, netns

from cluster.lab.state import HUB_IP, node_ip, node_pod_subnet
from core.errors import LabError

T = TypeVar("T")

__all__ = [
    "HUB_NS",
    "NETNS_DIR",
    "NS_PREFIX",
    "VMI_GW",
    "VMI_GW_MAC",
    "VMI_SUBNET",
    "HubRoutes",
    "add_vmi_gateway",
    "can_connect",
    "create_host_link",
    "create_hub",
    "create_node_net",
    "delete_host_link",
    "delete_hub",
    "delete_node_net",
    "enter_netns",
    "heal_ip_partition",
    "heal_node_partition",
    "host_link_exists",
    "in_netns",
    "is_ip_partitioned",
    "is_partitioned",
    "is_partitioned_ns",
    "lab_netns",
    "netns_inode",
    "node_ns",
    "partition_ip",
    "partition_node",
    "partitioned_ips",
    "pod_ip",
    "route_to_node",
    "route_vmi",
    "seed_vmi_neighbour",
    "set_prefix",
    "unroute_vmi",
    "vmi_ip",
]

NETNS_DIR = Path("/run/netns")  # where `ip netns` and pyroute2 keep named namespaces
NS_PREFIX: str = os.environ.get("RTO_LAB_NS_PREFIX", "rto")
HUB_NS: str = f"{NS_PREFIX}-hub"

_BRIDGE = "br0"
_POD_BRIDGE = "cbr0"
_CHAOS_TABLE = "rto_chaos"
_CLONE_NEWNET = 0x40000000
_NUD_STALE = 0x04  # linux/neighbour.h

# VMIs keep their address wherever they run (live migration), so they get a
# lab-wide subnet instead of the node's pod subnet. Every node's cbr0 carries
# the same gateway address AND MAC (an "anycast" gateway, as Calico/OVN do):
# a migrated guest keeps talking to its gateway without an ARP refresh. The hub
# routes each VMI's /32 to the node that hosts it (``route_vmi``).
VMI_SUBNET = "198.18.100.0/24"
VMI_GW = "198.18.100.1"
VMI_GW_MAC = "02:c6:12:64:00:01"


def set_prefix(prefix: str) -> None:
    """Change the namespace prefix of this process (tests; children use the env)."""
    global NS_PREFIX, HUB_NS
    NS_PREFIX = prefix
    HUB_NS = f"{prefix}-hub"


def node_ns(node: str) -> str:
    return f"{NS_PREFIX}-{node}"


def vmi_ip(host: int) -> str:
    """VMI number ``host`` (2..250) in the lab-wide VMI subnet."""
    if not 2 <= host <= 250:
        raise LabError(f"VMI host number {host} is outside 2..250")
    return f"198.18.100.{host}"


def pod_ip(index: int, slot: int) -> str:
    """Address of the pod in ``slot`` (2..250) of node ``index``."""
    if not 2 <= slot <= 250:
        raise LabError(f"pod slot {slot} is outside 2..250")
    net = ipaddress.ip_network(node_pod_subnet(index))
    return str(net.network_address + slot)


def _node_gw(index: int) -> str:
    return str(ipaddress.ip_network(node_pod_subnet(index)).network_address + 1)


def _exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def netns_inode(name: str) -> int | None:
    """Identity of a named netns (the nsfs inode), None if it does not exist.

    The agent remembers it for the pod namespaces it creates, so it never
    deletes a namespace of the same name that another node made since.
    """
    try:
        return (NETNS_DIR / name).stat().st_ino
    except FileNotFoundError:
        return None


def _create_ns(name: str) -> None:
    if not _exists(name):
        try:
            netns.create(name)
        except OSError as exc:
            raise LabError(f"cannot create network namespace {name}: {exc}") from exc


def _remove_ns(name: str) -> None:
    if _exists(name):
        try:
            netns.remove(name)
        except FileNotFoundError:
            pass  # removed concurrently: the goal is reached
        except OSError as exc:
            raise LabError(
                f"cannot remove network namespace {name}: {exc}; try `ip netns del {name}`"
            ) from exc


def _link_index(ns: NetNS, ifname: str) -> int | None:
    found = ns.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _ensure_bridge(ns: NetNS, name: str, cidr: str) -> None:
    idx = _link_index(ns, name)
    if idx is None:
        ns.link("add", ifname=name, kind="bridge")
        idx = _link_index(ns, name)
        assert idx is not None
    addr, plen = cidr.split("/")
    have = {a.get_attr("IFA_ADDRESS") for a in ns.get_addr(index=idx)}
    if addr not in have:
        ns.addr("add", index=idx, address=addr, prefixlen=int(plen))
    ns.link("set", index=idx, state="up")


def _lo_up(ns: NetNS) -> None:
    ns.link("set", index=_link_index(ns, "lo"), state="up")


def _sysctl(nsname: str, key: str, value: str) -> None:
    # /proc/sys/net is per netns: write it from a thread that entered the netns.
    _in_netns(nsname, lambda: Path("/proc/sys", *key.split(".")).write_text(value))


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """``fn()`` in a short-lived thread that entered netns ``name`` (the
    caller's own namespace never changes); its result, or its exception."""
    out: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            enter_netns(name)
            out.append(fn())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, name=f"netns-{name}")
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]


def _in_netns(name: str, fn: Callable[[], object]) -> None:
    try:
        in_netns(name, fn)
    except Exception as exc:
        raise LabError(f"in network namespace {name}: {exc}") from exc


def can_connect(ns: str, host: str, port: int, timeout: float) -> bool:
    """Can a TCP client in netns ``ns`` reach ``host:port`` within ``timeout``?

    Runs in a short-lived thread so the caller's own namespace is untouched.
    """
    import socket

    ok: list[bool] = []

    def attempt() -> None:
        enter_netns(ns)
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=attempt, name=f"connect-check-{ns}", daemon=True)
    t.start()
    t.join(timeout + 1.0)
    return bool(ok and ok[0])


def enter_netns(name: str) -> None:
    """Move the CALLING THREAD into netns ``name`` (other threads stay put).

    Sockets opened afterwards by this thread live in that namespace, which is
    how probers in the harness reach pod addresses from the hub.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LabError(f"network namespace {name} does not exist (is the lab up?)") from None
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise LabError(f"setns({name}) failed: {os.strerror(err)}")
    finally:
        os.close(fd)


# --- hub ---------------------------------------------------------------------


def create_hub() -> None:
    """The hub netns with bridge br0 = HUB_IP/24 (idempotent)."""
    _create_ns(HUB_NS)
    with NetNS(HUB_NS) as ns:
        _lo_up(ns)
        _ensure_bridge(ns, _BRIDGE, f"{HUB_IP}/24")


def delete_hub() -> None:
    _remove_ns(HUB_NS)


# --- nodes -------------------------------------------------------------------


def _hub_port(node: str) -> str:
    # Linux interface names are at most 15 characters; node names are short.
    name = f"vh-{node}"
    if len(name) > 15:
        raise LabError(f"node name {node!r} is too long (at most 12 characters)")
    return name


def create_node_net(node: str, index: int) -> None:
    """Node netns: eth0 on br0, default route via the hub, cbr0 for pods (idempotent)."""
    if not 1 <= index <= 200:
        raise LabError(f"node index {index} is outside 1..200")
    name = node_ns(node)
    port = _hub_port(node)
    if not _exists(HUB_NS):
        raise LabError(f"hub namespace {HUB_NS} does not exist; run create_hub first")
    _create_ns(name)
    with NetNS(HUB_NS) as hub, NetNS(name) as ns:
        _lo_up(ns)
        if _link_index(ns, "eth0") is None:
            stale = _link_index(hub, port)
            if stale is not None:
                hub.link("del", index=stale)
            hub.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": name})
        port_idx = _link_index(hub, port)
        br_idx = _link_index(hub, _BRIDGE)
        if port_idx is None or br_idx is None:
            raise LabError(f"hub {HUB_NS} has no bridge or no port {port}; run create_hub first")
        hub.link("set", index=port_idx, master=br_idx, state="up")
        eth = _link_index(ns, "eth0")
        assert eth is not None
        have = {a.get_attr("IFA_ADDRESS") for a in ns.get_addr(index=eth)}
        if node_ip(index) not in have:
            ns.addr("add", index=eth, address=node_ip(index), prefixlen=24)
        ns.link("set", index=eth, state="up")
        ns.route("replace", dst="0.0.0.0/0", gateway=HUB_IP)
        _ensure_bridge(ns, _POD_BRIDGE, f"{_node_gw(index)}/24")
        # The hub routes each node's pod subnet to that node.
        hub.route("replace", dst=node_pod_subnet(index), gateway=node_ip(index))
    _sysctl(name, "net.ipv4.ip_forward", "1")
    _sysctl(HUB_NS, "net.ipv4.ip_forward", "1")


def add_vmi_gateway(node: str) -> None:
    """Give the node's cbr0 the anycast VMI gateway (address and MAC; idempotent).

    The MAC is the bridge's own: pods of the node see the same (now fixed)
    MAC for their gateway, which is harmless because nodes are routed, not
    bridged, to each other.
    """
    with NetNS(node_ns(node)) as ns:
        idx = _link_index(ns, _POD_BRIDGE)
        if idx is None:
            raise LabError(f"node {node} has no {_POD_BRIDGE}; create its network first")
        ns.link("set", index=idx, address=VMI_GW_MAC)
        have = {a.get_attr("IFA_ADDRESS") for a in ns.get_addr(index=idx)}
        if VMI_GW not in have:
            ns.addr("add", index=idx, address=VMI_GW, prefixlen=24)


def route_vmi(ip: str, index: int) -> None:
    """Hub: send VMI ``ip`` to node ``index`` (placement, restart, migration)."""
    with NetNS(HUB_NS) as hub:
        hub.route("replace", dst=f"{ip}/32", gateway=node_ip(index))


class HubRoutes:
    """A netlink socket to the hub kept open, for a route switch that must be quick.

    Every ``NetNS(...)`` forks a helper process to open its socket in the
    namespace (9 ms on an idle 2-core host, tens of ms while a migration
    copies memory). A live migration opens this before the copy, so the
    switch-over costs one netlink round trip. pyroute2 sets up an event loop
    per thread on a socket's first use: the thread that opens it (a request is
    made here) is the one that should use it.
    """

    def __init__(self) -> None:
        # groups=0: no multicast subscription, nothing queues up on a socket kept open.
        self._hub = IPRoute(netns=HUB_NS, groups=0)
        try:
            self._hub.link_lookup(ifname="lo")  # opens it now, not at the switch
        except BaseException:
            self._hub.close()
            raise

    def route_vmi(self, ip: str, index: int) -> None:
        """``route_vmi`` on the open socket."""
        self._hub.route("replace", dst=f"{ip}/32", gateway=node_ip(index))

    def close(self) -> None:
        self._hub.close()

    def __enter__(self) -> HubRoutes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def seed_vmi_neighbour(node: str, ip: str, mac: str) -> None:
    """Node ``node`` knows VMI ``ip``'s MAC on its cbr0 before the VMI arrives.

    Without it, the first packet after a migration's switch-over waits for an
    ARP round trip to a guest that has just resumed (tens of ms under TCG; a
    request sent while the guest is still paused waits for the resume). STALE,
    not PERMANENT: the kernel uses it at once and confirms it with a unicast
    probe later, and forgets it if another guest takes the address.
    """
    with NetNS(node_ns(node)) as ns:
        idx = _link_index(ns, _POD_BRIDGE)
        if idx is None:
            raise LabError(f"node {node} has no {_POD_BRIDGE}; create its network first")
        ns.neigh("replace", dst=ip, lladdr=mac, ifindex=idx, state=_NUD_STALE)


def unroute_vmi(ip: str, index: int | None = None) -> None:
    """Hub: drop VMI ``ip``'s route (only if it still points to node ``index``)."""
    if not _exists(HUB_NS):
        return
    with NetNS(HUB_NS) as hub:
        for r in hub.get_routes(family=2):  # AF_INET; filtered here, not by a lookup
            if r.get_attr("RTA_DST") != ip or r["dst_len"] != 32:
                continue
            if index is not None and r.get_attr("RTA_GATEWAY") != node_ip(index):
                continue
            hub.route("del", dst=f"{ip}/32", gateway=r.get_attr("RTA_GATEWAY"))


def route_to_node(cidr: str, index: int) -> None:
    """The hub routes ``cidr`` (a real kubelet's pod range) to node ``index`` (idempotent)."""
    with NetNS(HUB_NS) as hub:
        hub.route("replace", dst=cidr, gateway=node_ip(index))


# --- host link (the API server's door to the host) ---------------------------


def create_host_link(ifname: str, host_addr: str, hub_addr: str) -> None:
    """A veth ``ifname`` (host) <-> ``host0`` (hub), one /30 between them (idempotent).

    The only object the lab puts in the host's namespace: the user's kubeconfig
    reaches the API server at ``hub_addr``. No route is added on the host; the
    /30 is directly connected on both ends.
    """
    with IPRoute() as host:
        if not host.link_lookup(ifname=ifname):
            host.link(
                "add", ifname=ifname, kind="veth", peer={"ifname": "host0", "net_ns_fd": HUB_NS}
            )
        idx = host.link_lookup(ifname=ifname)[0]
        if host_addr not in {a.get_attr("IFA_ADDRESS") for a in host.get_addr(index=idx)}:
            host.addr("add", index=idx, address=host_addr, prefixlen=30)
        host.link("set", index=idx, state="up")
    with NetNS(HUB_NS) as hub:
        peer = _link_index(hub, "host0")
        if peer is None:
            raise LabError(f"host link {ifname}: no host0 in {HUB_NS}")
        if hub_addr not in {a.get_attr("IFA_ADDRESS") for a in hub.get_addr(index=peer)}:
            hub.addr("add", index=peer, address=hub_addr, prefixlen=30)
        hub.link("set", index=peer, state="up")


def host_link_exists(ifname: str) -> bool:
    with IPRoute() as host:
        return bool(host.link_lookup(ifname=ifname))


def delete_host_link(ifname: str) -> None:
    """Remove the host end (its hub peer goes with it; idempotent)."""
    with IPRoute() as host:
        found = host.link_lookup(ifname=ifname)
        if found:
            host.link("del", index=found[0])


def delete_node_net(node: str) -> None:
    """Remove the node netns (its veth and the hub route go with it; idempotent)."""
    _remove_ns(node_ns(node))


# --- partitions ----------------------------------------------------------------

_RULES = f"""
table inet {_CHAOS_TABLE} {{
    chain input {{ type filter hook input priority -300; policy accept; iifname "eth0" drop; }}
    chain output {{ type filter hook output priority -300; policy accept; oifname "eth0" drop; }}
    chain forward {{ type filter hook forward priority -300; policy accept;
        iifname "eth0" drop; oifname "eth0" drop; }}
}}
"""


def _nft(
    nsname: str, args: list[str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    if not _exists(nsname):
        raise LabError(f"network namespace {nsname} does not exist")
    return subprocess.run(
        ["ip", "netns", "exec", nsname, "nft", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


def _partition(nsname: str) -> None:
    if is_partitioned_ns(nsname):
        return
    res = _nft(nsname, ["-f", "-"], stdin=_RULES)
    if res.returncode != 0:
        raise LabError(f"nft could not partition {nsname}: {res.stderr.strip()}")


def _heal(nsname: str) -> None:
    if not _exists(nsname):
        return  # nothing left to heal: the namespace (and its rules) are gone
    if not is_partitioned_ns(nsname):
        return
    res = _nft(nsname, ["delete", "table", "inet", _CHAOS_TABLE])
    if res.returncode != 0:
        raise LabError(f"nft could not heal {nsname}: {res.stderr.strip()}")


def is_partitioned_ns(nsname: str) -> bool:
    if not _exists(nsname):
        return False
    return _nft(nsname, ["list", "table", "inet", _CHAOS_TABLE]).returncode == 0


def is_partitioned(node: str) -> bool:
    """Whether the chaos table is present in the node's netns."""
    return is_partitioned_ns(node_ns(node))


def partition_node(node: str) -> None:
    """Drop everything in/out/through the node's eth0 (idempotent)."""
    _partition(node_ns(node))


def heal_node_partition(node: str) -> None:
    _heal(node_ns(node))


_LAB_NET = ipaddress.ip_network("198.18.0.0/15")
_IP_TABLE_PREFIX = "rto_ip_"


def _ip_table(ip: str) -> str:
    """The nft table that cuts ``ip`` (LabError unless it is an IPv4 address of the lab)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise LabError(f"{ip!r} is not an IP address") from None
    if not isinstance(addr, ipaddress.IPv4Address) or addr not in _LAB_NET:
        raise LabError(f"{ip} is not a lab address ({_LAB_NET}): the lab cuts only its own")
    return _IP_TABLE_PREFIX + str(addr).replace(".", "_")


def is_ip_partitioned(node: str, ip: str) -> bool:
    """Whether ``node``'s netns holds the drop table of ``ip``."""
    table = _ip_table(ip)
    if not _exists(node_ns(node)):
        return False
    return _nft(node_ns(node), ["list", "table", "ip", table]).returncode == 0


def partition_ip(node: str, ip: str) -> None:
    """Drop every packet ``node`` forwards to or from ``ip`` (idempotent).

    For an address behind the node (a pod on its bridge): everything reaching
    it from the lab, and everything it sends out, is routed by the node, so the
    forward hook of the node's netns sees all of it. The node's own traffic
    (its kubelet's probes of the pod, its API server connection) is untouched,
    as a NetworkPolicy would leave it. Pods on the same node's bridge are
    bridged, not routed: they may still reach each other.
    """
    table = _ip_table(ip)
    if not _exists(node_ns(node)):
        raise LabError(f"node {node} has no network namespace {node_ns(node)}; is the lab up?")
    if is_ip_partitioned(node, ip):
        return
    rules = f"""
table ip {table} {{
    chain forward {{ type filter hook forward priority -300; policy accept;
        ip saddr {ip} drop; ip daddr {ip} drop; }}
}}
"""
    res = _nft(node_ns(node), ["-f", "-"], stdin=rules)
    if res.returncode != 0:
        raise LabError(f"nft could not cut {ip} off on {node}: {res.stderr.strip()}")


def heal_ip_partition(node: str, ip: str) -> None:
    """Remove the drop table of ``ip`` from ``node`` (idempotent; no netns: nothing to do)."""
    table = _ip_table(ip)
    if not is_ip_partitioned(node, ip):
        return
    res = _nft(node_ns(node), ["delete", "table", "ip", table])
    if res.returncode != 0:
        raise LabError(f"nft could not heal {ip} on {node}: {res.stderr.strip()}")


def partitioned_ips(node: str) -> list[str]:
    """The addresses ``partition_ip`` cut on ``node`` now (none if it has no netns)."""
    if not _exists(node_ns(node)):
        return []
    res = _nft(node_ns(node), ["list", "tables", "ip"])
    if res.returncode != 0:
        raise LabError(f"nft could not list the tables of {node}: {res.stderr.strip()}")
    names = [line.split()[-1] for line in res.stdout.splitlines() if line.startswith("table ip ")]
    return sorted(
        n.removeprefix(_IP_TABLE_PREFIX).replace("_", ".")
        for n in names
        if n.startswith(_IP_TABLE_PREFIX)
    )


def lab_netns() -> list[str]:
    """Every netns of this lab (by prefix) that exists now."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(f"{NS_PREFIX}-"))
