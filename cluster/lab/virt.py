"""VMI domains in the lab: libvirt domain XML, events, live migration, stats.

The libvirt layer of the lab's VMI backend (the only lab module besides
``virtd`` that imports ``libvirt``). Filled by the VMI backend and the
migration healer, which call ``define_vmi``/``migrate_vmi``/``destroy_vmi``;
read by the recorder (``VirtEvents`` -> timeline tuples) and the metrics
collectors (``domain_stats``). Daemons and their URIs come from
``cluster.lab.virtd``; the guest (kernel, initrd, command line) from
``cluster.lab.guest.build``.

A VMI is a persistent domain on its node's libvirtd: TCG unless KVM really
booted the lab's guest (``cluster.lab.accel``), 1 vCPU, 256 MiB, direct kernel boot, an
i6300esb watchdog, a raw virtio disk with ``error_policy='stop'`` (a failed
host storage pauses the guest, as KubeVirt's PausedIOError), virtio-net on the
node's ``cbr0`` (the tap is made by libvirtd, hence in the node's netns),
serial0 appended to one console log per VMI (the log survives migrations: the
destination QEMU appends to the same file) and serial1 on a unix socket, the
guest's control channel. Paths are per VMI, not per node, because a migrated
domain keeps its XML.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol
from xml.sax.saxutils import escape, quoteattr

import libvirt

from cluster.lab import accel, state
from core.clock import Clock, RealClock
from core.errors import LabError
from core.wait import WaitTimeout, poll_until

__all__ = [
    "BootableGuest",
    "MigrationStats",
    "VirtEvent",
    "VirtEvents",
    "connect",
    "console_log",
    "control_socket",
    "define_vmi",
    "destroy_vmi",
    "domain_stats",
    "domain_xml",
    "ensure_event_loop",
    "live_control_socket",
    "migrate_vmi",
    "vmi_mac",
    "wait_console",
]

MEMORY_MIB = 256
WATCHDOG_ACTIONS = ("reset", "shutdown", "poweroff", "pause", "none", "dump", "inject-nmi")


class BootableGuest(Protocol):
    """What a domain needs from a guest image (``GuestImage`` fits)."""

    @property
    def kernel(self) -> Path: ...

    @property
    def initrd(self) -> Path: ...

    def cmdline(self, name: str, *, ip: str, gw: str) -> str: ...


# libvirt prints every failed call on stderr by default; errors reach callers
# as exceptions, so the printing is noise (e.g. while waiting for a socket).
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


# --- the event loop ------------------------------------------------------------

_loop_lock = threading.Lock()
_loop_started = False


def ensure_event_loop() -> None:
    """Run libvirt's default event loop in a daemon thread (once per process).

    Must happen before a connection is opened, or that connection never
    delivers events nor keepalives; ``connect`` calls it.
    """
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:  # the daemon loop of this thread, for the process's life
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


def connect(uri: str) -> libvirt.virConnect:
    """Open a node's libvirtd with events and keepalive (5 s x 3 missed)."""
    ensure_event_loop()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise LabError(
            f"cannot connect to libvirt at {uri}: {exc}; is the node's libvirtd up?"
        ) from exc
    conn.setKeepAlive(5, 3)
    return conn


# --- paths -----------------------------------------------------------------------


def console_log(name: str) -> Path:
    """serial0 of VMI ``name``, appended across restarts and migrations."""
    return Path(state.STATE_DIR) / "logs" / "vmi" / f"{name}.console.log"


def control_socket(name: str) -> Path:
    """serial1 of VMI ``name``: QEMU listens, the harness connects (control channel)."""
    return Path(state.RUN_DIR) / "vmi" / name / "control.sock"


def live_control_socket(name: str) -> Path:
    """The control socket of VMI ``name``'s running QEMU: ``control.sock`` after a
    start, ``control-<node ip>.sock`` after a live migration (see ``migrate_vmi``)."""
    path = control_socket(name)
    if path.exists():
        return path
    found = sorted(path.parent.glob("control*.sock"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else path


def vmi_mac(name: str) -> str:
    """A stable locally administered MAC per VMI (kept across migrations)."""
    h = hashlib.sha256(name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in h[:3])


# --- domains ---------------------------------------------------------------------


def domain_xml(
    name: str,
    *,
    kernel: Path,
    initrd: Path,
    cmdline: str,
    disk_path: Path | None = None,
    bridge: str = "cbr0",
    watchdog_action: str = "reset",
    virt_type: str | None = None,
) -> str:
    """The libvirt domain XML of a lab VMI (see the module docstring)."""
    if watchdog_action not in WATCHDOG_ACTIONS:
        raise LabError(
            f"watchdog action {watchdog_action!r} is not one of {', '.join(WATCHDOG_ACTIONS)}"
        )
    # The lab's choice (RTO_LAB_ACCEL, the cached boot test, or a boot now).
    vtype = virt_type or accel.accelerator().libvirt_type
    disk = ""
    if disk_path is not None:
        # cache='none': errors reach QEMU at once (no page cache hiding a dead
        # device) and libvirt accepts a live migration of a disk it cannot
        # prove shared; error_policy='stop' pauses the guest on EIO/ENOSPC.
        disk = f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none' error_policy='stop' rerror_policy='stop'/>
      <source file={quoteattr(str(disk_path))}/>
      <target dev='vda' bus='virtio'/>
    </disk>"""
    # q35, not pc (i440fx): under TCG the guest reaches its health server in
    # ~4.9 s of uptime instead of ~7 s (same kernel and initramfs), and QEMU's
    # own benchmark (guest_boot) runs q35 too.
    return f"""<domain type='{vtype}'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{MEMORY_MIB}</memory>
  <currentMemory unit='MiB'>{MEMORY_MIB}</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{escape(str(kernel))}</kernel>
    <initrd>{escape(str(initrd))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>restart</on_crash>
  <devices>{disk}
    <interface type='bridge'>
      <mac address='{vmi_mac(name)}'/>
      <source bridge={quoteattr(bridge)}/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path={quoteattr(str(console_log(name)))} append='on'/>
      <target port='0'/>
    </serial>
    <serial type='unix'>
      <source mode='bind' path={quoteattr(str(control_socket(name)))}/>
      <target port='1'/>
    </serial>
    <watchdog model='i6300esb' action='{watchdog_action}'/>
    <controller type='usb' model='none'/>
    <memballoon model='virtio'><stats period='2'/></memballoon>
  </devices>
</domain>
"""


def define_vmi(
    conn: libvirt.virConnect,
    name: str,
    node: str,
    ip: str,
    gw: str,
    guest: BootableGuest,
    disk_path: Path | None = None,
    watchdog_action: str = "reset",
    *,
    bridge: str = "cbr0",
    virt_type: str | None = None,
) -> libvirt.virDomain:
    """Define (not start) VMI ``name`` on ``node``; ``ip`` is "addr/prefix".

    A stale definition of the same name on this daemon is replaced; start the
    domain with ``dom.create()``.
    """
    console_log(name).parent.mkdir(parents=True, exist_ok=True)
    control_socket(name).parent.mkdir(parents=True, exist_ok=True)
    xml = domain_xml(
        name,
        kernel=guest.kernel,
        initrd=guest.initrd,
        cmdline=guest.cmdline(name, ip=ip, gw=gw),
        disk_path=disk_path,
        bridge=bridge,
        watchdog_action=watchdog_action,
        virt_type=virt_type,
    )
    try:
        return conn.defineXML(xml)
    except libvirt.libvirtError as exc:
        raise LabError(f"cannot define VMI {name} on node {node}: {exc}") from exc


def destroy_vmi(conn: libvirt.virConnect, name: str) -> None:
    """Stop and undefine VMI ``name`` on this daemon (idempotent)."""
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return
        raise LabError(f"cannot look up VMI {name}: {exc}") from exc
    try:
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefine()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise LabError(f"cannot destroy VMI {name}: {exc}") from exc


def wait_console(
    name: str,
    marker: str,
    *,
    after: int = 0,
    timeout: float = 60.0,
    clock: Clock | None = None,
) -> str:
    """First console line containing ``marker`` past byte offset ``after``.

    Pass ``after=console_log(name).stat().st_size`` taken before a (re)start
    so an older boot's line does not count. ``clock`` is slept on and read for
    the timeout (a ``FakeClock`` in tests).
    """
    path = console_log(name)

    def find() -> str | None:
        try:
            with path.open("rb") as f:
                f.seek(after)
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return None
        return next((ln.strip() for ln in text.splitlines() if marker in ln), None)

    try:
        return poll_until(find, timeout, f"VMI {name} to print {marker!r}", clock, interval=0.1)
    except WaitTimeout:
        raise LabError(
            f"VMI {name} did not print {marker!r} within {timeout:.0f} s; see {path}"
        ) from None


# --- events ----------------------------------------------------------------------


class VirtEvent(NamedTuple):
    """One libvirt event as the recorder stores it (monotonic seconds)."""

    at: float
    domain: str
    reason: str  # Started, Suspended, Resumed, Stopped, Watchdog, Reboot, IOError, ...
    detail: str  # e.g. Migrated, Booted, IOError, reset, "vda /path pause eio"
    node: str = ""


def _names(prefix: str) -> dict[int, str]:
    """libvirt constants with ``prefix`` -> their CamelCase suffix."""
    out: dict[int, str] = {}
    for key in dir(libvirt):
        if key.startswith(prefix) and not key.endswith("_LAST"):
            value = getattr(libvirt, key)
            if isinstance(value, int):
                suffix = key[len(prefix) :]
                out.setdefault(value, "".join(p.capitalize() for p in suffix.split("_")))
    return out


_LIFECYCLE = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "Defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "Undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "Started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "Suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "Resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "Stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "Shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "PMSuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "Crashed",
}
_DETAILS = {
    event: _names(f"VIR_DOMAIN_EVENT_{label.upper()}_") for event, label in _LIFECYCLE.items()
}
_WATCHDOG = {k: v.lower() for k, v in _names("VIR_DOMAIN_EVENT_WATCHDOG_").items()}


class VirtEvents:
    """Collects the events of one libvirt connection as ``VirtEvent`` tuples.

    Callbacks run on the libvirt event thread; ``events()`` and ``drain()``
    are safe from any thread. ``listener`` (optional) is called with each
    event on the event thread, so it must be quick (e.g. put on a queue).
    """

    def __init__(
        self,
        conn: libvirt.virConnect,
        node: str = "",
        *,
        clock: Clock | None = None,
        listener: Callable[[VirtEvent], None] | None = None,
    ) -> None:
        ensure_event_loop()
        self._conn = conn
        self._node = node
        self._clock = clock or RealClock()
        self._listener = listener
        self._lock = threading.Lock()
        self._events: list[VirtEvent] = []
        self._ids: list[int] = []
        reg = conn.domainEventRegisterAny
        self._ids = [
            reg(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None),
            reg(None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, self._reboot, None),
            reg(None, libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG, self._watchdog, None),
            reg(None, libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON, self._io_error, None),
        ]

    def _add(self, dom: libvirt.virDomain, reason: str, detail: str) -> None:
        event = VirtEvent(self._clock.now(), dom.name(), reason, detail, self._node)
        with self._lock:
            self._events.append(event)
        if self._listener is not None:
            self._listener(event)

    def _lifecycle(
        self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, detail: int, _o: Any
    ) -> None:
        reason = _LIFECYCLE.get(event, f"Event{event}")
        self._add(dom, reason, _DETAILS.get(event, {}).get(detail, str(detail)))

    def _reboot(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, _o: Any) -> None:
        self._add(dom, "Reboot", "")

    def _watchdog(
        self, _conn: libvirt.virConnect, dom: libvirt.virDomain, action: int, _o: Any
    ) -> None:
        self._add(dom, "Watchdog", _WATCHDOG.get(action, str(action)))

    def _io_error(
        self,
        _conn: libvirt.virConnect,
        dom: libvirt.virDomain,
        src_path: str,
        dev_alias: str,
        action: int,
        reason: str,
        _o: Any,
    ) -> None:
        actions = {0: "none", 1: "pause", 2: "report"}
        self._add(dom, "IOError", f"{dev_alias} {src_path} {actions.get(action, action)} {reason}")

    def events(self) -> list[VirtEvent]:
        with self._lock:
            return list(self._events)

    def drain(self) -> list[VirtEvent]:
        with self._lock:
            out, self._events = self._events, []
        return out

    def close(self) -> None:
        """Deregister (idempotent; a dead connection has nothing to deregister)."""
        ids, self._ids = self._ids, []
        for cb in ids:
            # A closed connection took its callbacks with it: nothing to undo.
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.domainEventDeregisterAny(cb)


# --- migration -------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationStats:
    """One live migration, as QEMU reports it plus what the caller waited.

    ``downtime_ms``: QEMU's measured downtime (guest stopped on source until
    running on destination, VIR_DOMAIN_JOB_DOWNTIME); ``total_ms``: QEMU's job
    time; ``wall_s``: the migrate call as the harness saw it (libvirt's
    prepare/perform/finish phases included).
    """

    name: str
    dst_uri: str
    downtime_ms: float | None
    total_ms: float | None
    wall_s: float
    data_total: int | None
    memory_iterations: int | None


def migrate_vmi(
    src_conn: libvirt.virConnect,
    dst_uri: str,
    dst_node_ip: str,
    name: str,
    *,
    port: int | None = None,
    clock: Clock | None = None,
) -> MigrationStats:
    """Live-migrate VMI ``name`` peer-to-peer to ``dst_uri`` (qemu+tcp://...).

    The source libvirtd talks to the destination's (so the harness needs no
    route to it), and QEMU streams memory to ``tcp://dst_node_ip[:port]``:
    the address is given per migration because the destination cannot guess
    its own lab address (``migration_host=127.0.0.1`` is refused). The
    definition moves too (PERSIST_DEST); the source's is removed only after
    its completed-job statistics were read.
    """
    clk = clock or RealClock()
    try:
        dom = src_conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        raise LabError(f"VMI {name} is not on the source node: {exc}") from exc
    uri = f"tcp://{dst_node_ip}" + (f":{port}" if port is not None else "")
    # UNSAFE: both daemons see the same disk file (one machine = shared
    # storage), but libvirt cannot prove it and refuses "without shared storage".
    flags = (
        libvirt.VIR_MIGRATE_LIVE
        | libvirt.VIR_MIGRATE_PEER2PEER
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_UNSAFE
    )
    t0 = clk.now()
    try:
        # The destination QEMU binds its control socket under another name:
        # the source QEMU unlinks its own path when it exits after the
        # switch-over, which would take the destination's socket with it.
        src_sock = str(control_socket(name))
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)
        for old in re.findall(r"path='([^']*control[^']*\.sock)'", xml):
            src_sock = old
        dst_sock = str(control_socket(name).with_name(f"control-{dst_node_ip}.sock"))
        params = {libvirt.VIR_MIGRATE_PARAM_URI: uri}
        if src_sock != dst_sock and src_sock in xml:
            params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = xml.replace(src_sock, dst_sock)
        dom.migrateToURI3(dst_uri, params, flags)
    except libvirt.libvirtError as exc:
        raise LabError(
            f"live migration of VMI {name} to {dst_uri} via {uri} failed: {exc}"
        ) from exc
    wall = clk.now() - t0
    try:
        stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except libvirt.libvirtError:
        stats = {}  # statistics are a bonus; the migration itself succeeded
    try:
        if dom.isPersistent() and not dom.isActive():
            dom.undefine()
    except libvirt.libvirtError as exc:
        raise LabError(f"VMI {name} migrated but its source definition stayed: {exc}") from exc

    def num(key: str) -> Any:
        return stats.get(key)

    return MigrationStats(
        name=name,
        dst_uri=dst_uri,
        downtime_ms=_float(num(libvirt.VIR_DOMAIN_JOB_DOWNTIME)),
        total_ms=_float(num(libvirt.VIR_DOMAIN_JOB_TIME_ELAPSED)),
        wall_s=wall,
        data_total=_int(num(libvirt.VIR_DOMAIN_JOB_DATA_PROCESSED)),
        memory_iterations=_int(num(libvirt.VIR_DOMAIN_JOB_MEMORY_ITERATION)),
    )


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


# --- statistics ------------------------------------------------------------------

_STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
    | libvirt.VIR_DOMAIN_STATS_BLOCK
)


def domain_stats(dom: libvirt.virDomain) -> dict[str, int | float | str]:
    """libvirt's bulk statistics of one running domain, keys as libvirt names them.

    Useful keys: ``cpu.time`` (QEMU process, ns), ``vcpu.0.time`` (guest vCPU,
    ns: tells vCPU from pCPU), ``balloon.current``/``balloon.rss`` (KiB),
    ``block.0.rd.bytes``/``wr.bytes``, ``net.0.rx.bytes``/``tx.bytes``.
    """
    try:
        records = dom.connect().domainListGetStats([dom], _STATS)
    except libvirt.libvirtError as exc:
        raise LabError(f"cannot read statistics of VMI {dom.name()}: {exc}") from exc
    if not records:
        raise LabError(f"libvirt returned no statistics for VMI {dom.name()}")
    _, values = records[0]
    return {str(k): v for k, v in values.items() if isinstance(v, int | float | str)}
