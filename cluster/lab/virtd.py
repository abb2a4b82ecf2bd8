"""One libvirtd per lab node, each in its node's netns and its own mount namespace.

Started by the lab lifecycle (``lab_up``) and by VM tests/benchmarks; read by
``cluster.lab.virt`` (which connects with the URI returned here) and by the
VMI backend. A node's libvirtd must look like a separate host to libvirt:

* its own network namespace (``ip netns exec rto-<node>``), so QEMU, its taps
  and the migration listeners live on the node's network and a partition of the
  node cuts them off too;
* its own mount namespace in which /run/libvirt, /var/lib/libvirt, /etc/libvirt,
  /var/log/libvirt and /var/cache/libvirt are bind mounts of directories under
  ``/run/rto-lab/<node>/libvirt`` (two daemons sharing /run/libvirt would fight
  over pid files, sockets and domain status);
* its own ``host_uuid`` (this machine has no SMBIOS; the same UUID on both ends
  makes libvirt refuse a migration as "to the same host"), derived from the node
  name so it is stable across restarts;
* a TCP listener on the node's lab address (``auth_tcp="none"``) for
  peer-to-peer migrations, plus a unix socket the harness reaches from the host
  at ``/run/rto-lab/<node>/libvirt/run/libvirt-sock``.

The daemon runs in the foreground as the child of the exec chain
``ip netns exec`` -> ``unshare`` -> ``sh`` -> ``libvirtd``, so the pid we spawn
IS libvirtd and it is put in the node's cgroup before it can start any QEMU: a
node power-off (cgroup kill) takes the daemon and its guests down together.
``stdio_handler="file"`` lets QEMU write its own log files, so no virtlogd.

``ScratchNet`` is a throw-away two-node network for VM tests and benchmarks
that must never touch a running lab (names rtovt-hub/rtovt-vt1/rtovt-vt2,
addresses 198.18.200.0/24, VMI subnet 198.18.201.0/24).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

from cluster.lab import net, state
from cluster.lab.state import node_ip
from core.clock import Clock
from core.errors import LabError
from core.wait import WaitTimeout, poll_until

__all__ = [
    "LIBVIRT_TCP_PORT",
    "ScratchNet",
    "daemon_dir",
    "host_uuid",
    "libvirtd_log",
    "libvirtd_pid",
    "node_netns",
    "node_socket",
    "node_tcp_uri",
    "node_uri",
    "purge_node_libvirtd",
    "start_node_libvirtd",
    "stop_node_libvirtd",
]

LIBVIRT_TCP_PORT = 16509
# Shared QEMU capabilities cache: probing QEMU costs seconds per fresh daemon;
# the cache is keyed by binary and libvirt version, so copying it is safe.
# Daemons this process started, kept so they are reaped (and Popen does not
# warn that they still run when the object is collected).
_children: dict[str, subprocess.Popen[bytes]] = {}
_UUID_NS = uuid.UUID("5b1f3c0e-7a52-4d8e-9d0f-2f6a1e0c7d11")
# (mount point inside the daemon's namespace, subdirectory of daemon_dir)
_PRIVATE_DIRS = (
    ("/run/libvirt", "run"),
    ("/var/lib/libvirt", "lib"),
    ("/etc/libvirt", "etc"),
    ("/var/log/libvirt", "log"),
    ("/var/cache/libvirt", "cache"),
)


def node_netns(node: str) -> str:
    """The node's network namespace."""
    return net.node_ns(node)


def daemon_dir(node: str) -> Path:
    # Read at call time: tests point state.RUN_DIR at a private directory.
    return Path(state.RUN_DIR) / node / "libvirt"


def node_socket(node: str) -> Path:
    """The daemon's read-write unix socket, as seen from the host."""
    return daemon_dir(node) / "run" / "libvirt-sock"


def node_uri(node: str) -> str:
    """URI the harness (host mount and net namespace) connects to."""
    return f"qemu+unix:///system?socket={node_socket(node)}"


def node_tcp_uri(ip: str) -> str:
    """URI another node's libvirtd uses to reach this one (peer-to-peer migration)."""
    return f"qemu+tcp://{ip}:{LIBVIRT_TCP_PORT}/system"


def libvirtd_log(node: str) -> Path:
    return daemon_dir(node) / "log" / "libvirtd.log"


def _stderr_log(node: str) -> Path:
    return daemon_dir(node) / "log" / "libvirtd.stderr"


def _pid_file(node: str) -> Path:
    return Path(state.RUN_DIR) / node / "libvirtd.pid"


def host_uuid(node: str) -> str:
    """Stable per node, different between nodes (see module docstring)."""
    return str(uuid.uuid5(_UUID_NS, f"rto-lab:{node}"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child still "exists"; look at its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _is_libvirtd(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "libvirtd"
    except FileNotFoundError:
        return False


def libvirtd_pid(node: str) -> int | None:
    """Pid of the node's running libvirtd, None if it is not running."""
    try:
        pid = int(_pid_file(node).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) and _is_libvirtd(pid) else None


def _netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except FileNotFoundError:
        return None


def _write_config(node: str, listen_ip: str) -> None:
    base = daemon_dir(node)
    for _, sub in _PRIVATE_DIRS:
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "etc" / "qemu").mkdir(exist_ok=True)
    # Paths below are as seen INSIDE the daemon's mount namespace.
    (base / "etc" / "libvirtd.conf").write_text(
        textwrap.dedent(f"""\
        # rto-lab node {node}: written by cluster/lab/virtd.py
        listen_tls = 0
        listen_tcp = 1
        listen_addr = "{listen_ip}"
        tcp_port = "{LIBVIRT_TCP_PORT}"
        auth_tcp = "none"
        auth_unix_rw = "none"
        auth_unix_ro = "none"
        unix_sock_rw_perms = "0700"
        host_uuid = "{host_uuid(node)}"
        log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
        """)
    )
    (base / "etc" / "qemu.conf").write_text(
        textwrap.dedent("""\
        # rto-lab: QEMU as root, no security driver (lab files live anywhere on
        # the host), no virtlogd (QEMU writes its own logs), QEMU shares the
        # daemon's (already private) mount namespace so mounts made there by
        # the lab are visible to it.
        user = "root"
        group = "root"
        dynamic_ownership = 0
        remember_owner = 0
        security_driver = "none"
        stdio_handler = "file"
        namespaces = [ ]
        """)
    )
    # libvirt.conf (client side inside the daemon, used for p2p migration): none.
    (base / "etc" / "libvirt.conf").write_text("")


def _launch_script(node: str) -> str:
    base = daemon_dir(node)
    # mkdir: a mount point must exist (an empty directory on the host is harmless).
    binds = "\n".join(
        f"mkdir -p {target} && mount --bind {base / sub} {target}" for target, sub in _PRIVATE_DIRS
    )
    return textwrap.dedent("""\
        set -e
        {binds}
        exec libvirtd --listen --config /etc/libvirt/libvirtd.conf \\
            --pid-file /run/libvirt/libvirtd.pid
        """).format(binds=binds)


def _attach_cgroup(pid: int, node: str) -> None:
    """Put the daemon in the node's cgroup when the lab has cgroups (A1's module)."""
    try:
        from cluster.lab import cgroups  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        return  # no cgroup module yet: the daemon stays where the harness is
    cgroups.create_node_cgroup(node)
    cgroups.attach(pid, node)


def _caps_cache() -> Path:
    return Path(state.STATE_DIR) / "libvirt-caps-cache"


def _seed_caps_cache(node: str) -> None:
    dst = daemon_dir(node) / "cache" / "qemu" / "capabilities"
    if _caps_cache().is_dir() and not dst.exists():
        shutil.copytree(_caps_cache(), dst)


def _save_caps_cache(node: str) -> None:
    src = daemon_dir(node) / "cache" / "qemu" / "capabilities"
    cache = _caps_cache()
    if src.is_dir() and any(src.iterdir()) and not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        try:
            tmp.rename(cache)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another node saved it first


def start_node_libvirtd(
    node: str,
    index: int,
    *,
    listen_ip: str | None = None,
    netns: str | None = None,
    cgroup: bool = True,
    timeout: float = 30.0,
    clock: Clock | None = None,
) -> str:
    """Start (or find running) the node's libvirtd; return the harness URI.

    ``listen_ip`` defaults to the node's lab address 198.18.0.(10+index),
    ``netns`` to the node's lab netns; ``cgroup=False`` leaves the daemon out of
    the lab's node cgroups (scratch nodes that a lab power-off must not touch).
    Raises LabError naming the log files if the daemon does not answer within
    ``timeout`` s of ``clock`` (default: the real one).
    """
    uri = node_uri(node)
    ns = netns or node_netns(node)
    ns_path = Path("/run/netns", ns)
    if not ns_path.exists():
        raise LabError(f"network namespace {ns} of node {node} does not exist; create it first")
    running = libvirtd_pid(node)
    if running is not None:
        if _netns_inode(running) == ns_path.stat().st_ino:
            _wait_answering(node, None, timeout, clock)
            return uri
        # The node's netns was re-created under a live daemon: it listens on
        # a dead network, so replace it.
        stop_node_libvirtd(node, timeout=timeout, clock=clock)
    old = _children.pop(node, None)
    if old is not None:
        # A daemon killed with its node (power-off): collect its exit status
        # so it does not stay a zombie (and Popen does not warn).
        old.poll()
    ip = listen_ip or node_ip(index)
    _write_config(node, ip)
    _seed_caps_cache(node)
    node_socket(node).unlink(missing_ok=True)
    stderr = _stderr_log(node).open("ab")
    try:
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "unshare",
                "--mount",
                "--propagation",
                "slave",
                "sh",
                "-c",
                _launch_script(node),
            ],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,  # Ctrl-C of the harness must not kill the node
        )
    finally:
        stderr.close()
    _children[node] = proc
    _pid_file(node).write_text(f"{proc.pid}\n")
    if cgroup:
        _attach_cgroup(proc.pid, node)
    _wait_answering(node, proc, timeout, clock)
    _save_caps_cache(node)
    return uri


def _wait_answering(
    node: str,
    proc: subprocess.Popen[bytes] | None,
    timeout: float,
    clock: Clock | None,
) -> None:
    import libvirt

    from cluster.lab import virt  # noqa: F401  (silences libvirt's stderr printing)

    def check() -> bool:
        if proc is not None and proc.poll() is not None:
            raise _Died(proc.returncode)
        conn = libvirt.open(node_uri(node))
        try:
            conn.getVersion()
        finally:
            conn.close()
        return True

    try:
        poll_until(
            check,
            timeout,
            f"libvirtd of node {node} to answer",
            clock,
            interval=0.1,
            retry_on=(libvirt.libvirtError,),
        )
    except _Died as exc:
        raise LabError(
            f"libvirtd of node {node} exited with status {exc.status} while starting; "
            f"see {_stderr_log(node)} and {libvirtd_log(node)}"
        ) from None
    except WaitTimeout as exc:
        last = exc.__cause__  # the libvirtError of the last try
        raise LabError(
            f"libvirtd of node {node} does not answer on {node_socket(node)} after "
            f"{timeout:.0f} s ({last}); see {_stderr_log(node)} and {libvirtd_log(node)}"
        ) from last


class _Died(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _qemu_pids(node: str) -> list[int]:
    """QEMU processes of the node, from the pid files libvirt keeps."""
    pids = []
    for f in (daemon_dir(node) / "run" / "qemu").glob("*.pid"):
        try:
            pid = int(f.read_text().strip())
        except (ValueError, FileNotFoundError):
            continue
        if _alive(pid):
            pids.append(pid)
    return pids


def stop_node_libvirtd(node: str, *, timeout: float = 10.0, clock: Clock | None = None) -> None:
    """Stop the node's guests and its libvirtd (idempotent).

    QEMU outlives libvirtd by design, so guests are killed first from libvirt's
    pid files; the daemon's mount namespace disappears with its last process.
    """
    for qpid in _qemu_pids(node):
        _kill(qpid, signal.SIGKILL)
    pid = libvirtd_pid(node)
    if pid is not None:
        _kill(pid, signal.SIGTERM)
        try:
            poll_until(lambda: not _alive(pid), timeout, f"libvirtd {pid} to exit", clock)
        except WaitTimeout:
            _kill(pid, signal.SIGKILL)
    # Also when the daemon was already dead (killed with its node at a
    # power-off): its Popen must collect the exit status, or the process stays
    # a zombie and Popen warns at exit that it "is still running".
    _reap(node, pid)
    _pid_file(node).unlink(missing_ok=True)
    # The guests' leftover pid files would make the next start look busy.
    # SIGKILL is asynchronous: give the guests a moment to be gone.
    with contextlib.suppress(WaitTimeout):  # who survived is said just below
        poll_until(lambda: not _qemu_pids(node), timeout, f"QEMUs of {node} to exit", clock)
    survivors = _qemu_pids(node)
    if survivors:
        raise LabError(f"QEMU pids {survivors} of node {node} survived SIGKILL; kill them by hand")


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone: the goal is reached
        os.kill(pid, sig)


def _reap(node: str, pid: int | None) -> None:
    proc = _children.pop(node, None)
    if proc is not None:
        if proc.poll() is None:
            # The daemon this Popen started is gone or being killed; a wrapper
            # still standing goes with it.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait(timeout=5)  # dead by now: collects the exit status
        if pid is None or proc.pid == pid:
            return
    if pid is not None:
        with contextlib.suppress(ChildProcessError):  # not our child (another harness)
            os.waitpid(pid, os.WNOHANG)


def purge_node_libvirtd(node: str) -> None:
    """Stop the daemon and remove its directories (logs included)."""
    stop_node_libvirtd(node)
    shutil.rmtree(daemon_dir(node), ignore_errors=True)


# --- a throw-away network for VM tests and benchmarks ------------------------


@dataclass(frozen=True)
class ScratchNet:
    """Hub + two nodes, separate from any lab, with an anycast VMI gateway.

    Every node's ``cbr0`` carries the same VMI gateway address and MAC (as
    Calico/OVN do) so a live-migrated guest keeps talking to "its" gateway
    without an ARP refresh; the hub routes each guest's /32 to the node that
    hosts it (``route_vmi``), which a migration must update.
    """

    prefix: str = "rtovt"  # not "rto-": a lab's clean-up must not take it
    hub_ip: str = "198.18.200.1"
    vmi_gw: str = "198.18.201.1"
    gw_mac: str = "02:c6:12:c9:00:01"
    nodes: tuple[str, ...] = ("vt1", "vt2")

    @property
    def hub_ns(self) -> str:
        return f"{self.prefix}-hub"

    def node_ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def node_ip(self, index: int) -> str:
        return f"198.18.200.{10 + index}"

    def vmi_ip(self, host: int) -> str:
        return f"198.18.201.{host}"

    def create(self) -> None:
        self.delete()
        hub = self.hub_ns
        node_nss = [self.node_ns(n) for n in self.nodes]
        for ns in (hub, *node_nss):
            _run(["ip", "netns", "add", ns])
        hub_cmds = [
            "link set lo up",
            "link add vtbr0 type bridge",
            f"addr add {self.hub_ip}/24 dev vtbr0",
            "link set vtbr0 up",
        ]
        for node, ns in zip(self.nodes, node_nss, strict=True):
            hub_cmds += [
                f"link add vh-{node} type veth peer name eth0 netns {ns}",
                f"link set vh-{node} master vtbr0 up",
            ]
        _ip_batch(hub, hub_cmds)
        for i, ns in enumerate(node_nss, start=1):
            _ip_batch(
                ns,
                [
                    "link set lo up",
                    f"addr add {self.node_ip(i)}/24 dev eth0",
                    "link set eth0 up",
                    f"route add default via {self.hub_ip}",
                    f"link add cbr0 address {self.gw_mac} type bridge",
                    f"addr add {self.vmi_gw}/24 dev cbr0",
                    "link set cbr0 up",
                ],
            )
        for ns in (hub, *node_nss):
            _run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])

    def route_vmi(self, ip: str, node_index: int) -> None:
        _run(["ip", "-n", self.hub_ns, "route", "replace", f"{ip}/32", "via",
              self.node_ip(node_index)])  # fmt: skip

    def delete(self) -> None:
        for ns in (*(self.node_ns(n) for n in self.nodes), self.hub_ns):
            if Path("/run/netns", ns).exists():
                _run(["ip", "netns", "del", ns])


def _ip_batch(ns: str, cmds: list[str]) -> None:
    res = subprocess.run(
        ["ip", "-n", ns, "-batch", "-"],
        input="\n".join(cmds) + "\n",
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise LabError(f"ip -batch failed: {res.stderr.strip()}")


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
