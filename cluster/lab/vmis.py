"""One node's VMIs as libvirt domains: the domain half of the lab's virt-handler.

Used by ``cluster.lab.kube.virt_handler.VirtHandler`` (which watches the VMIs of
its node in the API server and writes their statuses): every pass it hands over
the node's VMIs and reads back one ``VmiRun`` per VMI. Each VMI is a libvirt
domain on the node's own libvirtd (``cluster.lab.virtd``, started by
``lifecycle.lab_up(vms=True)``) booting the lab guest of
``cluster.lab.guest.build``. Its data disk is a raw file on the VMI's lab
volume (``volumes.ensure_volume``), mounted BEFORE the domain starts so the
storage faults apply to it (QEMU opens the file once).

A domain that stopped (QEMU killed, crashed) or failed to start is Failed, as
KubeVirt's virt-handler reports it: nothing here starts it again (the VM
controller makes a new VMI, runStrategy Always). A watchdog reset is a guest
reboot inside the same QEMU: not a restart, but a new instance (the guest
picks a fresh one every boot and prints ``RTO-GUEST-READY <instance>
boot=<n>`` on its console, which is how readiness and instance are read).
The hub's route to the VMI's /32 is (re)announced by the node that starts it.

Live migration: while a VMI is ``leaving`` the source leaves the domain alone
(libvirt moves it); on the destination, the handler ADOPTS the running domain
(instance read back from the console log, no new boot) and the source forgets
its copy without touching the control socket, which now belongs to the
destination's QEMU.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import socket
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster.lab import net, virtd, volumes
from cluster.lab.guest.build import build_guest
from cluster.lab.machines import Machines
from core.clock import Clock
from core.errors import HarnessError, LabError
from core.wait import WaitTimeout, poll_until

if TYPE_CHECKING:
    from cluster.lab.guest.build import GuestImage

__all__ = [
    "DISK_BYTES",
    "VmiHandler",
    "VmiRun",
    "disk_path",
    "guest_command",
    "qemu_pid",
]

log = logging.getLogger("rto.lab.vmis")

DISK_BYTES = 4 << 20  # the guest only uses sectors 0-1 (boot count, healthz record)
_READY = "RTO-GUEST-READY"
# The guest arms its i6300esb with this timeout: a hung guest is reset after it.
WDT_TIMEOUT_S = 2


@dataclass(frozen=True)
class _GuestWithWatchdog:
    """The lab guest with one VMI's watchdog timeout on its command line
    (``virt.define_vmi`` formats the command line without one)."""

    image: GuestImage
    wdt_timeout: int | None

    @property
    def kernel(self) -> Path:
        return self.image.kernel

    @property
    def initrd(self) -> Path:
        return self.image.initrd

    def cmdline(self, name: str, *, ip: str, gw: str) -> str:
        return self.image.cmdline(name, ip=ip, gw=gw, wdt_timeout=self.wdt_timeout)


def disk_path(name: str) -> Path:
    """The VMI's raw data disk, on its lab volume (where storage faults act)."""
    return volumes.mountpoint(name) / "disk.img"


def qemu_pid(node: str, name: str) -> int | None:
    """QEMU's pid for VMI ``name`` on ``node``, from libvirt's pid file; None if not running."""

    try:
        pid = int((virtd.daemon_dir(node) / "run" / "qemu" / f"{name}.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return None
    return pid if comm.startswith("qemu") else None


def guest_command(name: str, cmd: str, timeout: float = 10.0) -> str:
    """Send ``ping``/``hang``/``crash`` on VMI ``name``'s control channel (ttyS1).

    The harness side of the channel is QEMU's unix socket; bytes sent before
    the guest opened ttyS1 are dropped, so ``ping`` is repeated until ``pong``
    before the command. Returns the guest's reply line.
    """
    # libvirt: the optional 'vm' extra
    from cluster.lab import virt

    # bench-*: the benchmark servers and disk timing of benchmarks/net_compare.py.
    if cmd not in ("ping", "hang", "crash", "bench-serve") and not re.fullmatch(
        r"bench-disk [1-9][0-9]{0,2}", cmd
    ):
        raise LabError(
            f"unknown guest command {cmd!r}; use ping, hang, crash, bench-serve or bench-disk N"
        )
    path = virt.live_control_socket(name)
    buf = b""

    def read_line(s: socket.socket, wait: float) -> str | None:
        nonlocal buf
        s.settimeout(wait)
        while b"\n" not in buf:
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                return None
            if not chunk:
                raise LabError(f"QEMU closed the control socket of VMI {name}")
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        return line.decode(errors="replace").strip()

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError as exc:
            raise LabError(f"VMI {name} has no control channel at {path}: {exc}") from exc

        def ping() -> bool:
            s.sendall(b"ping\n")
            return read_line(s, 0.5) == "pong"

        try:
            # No pause between pings: each one already waits 0.5 s for its pong.
            poll_until(ping, timeout, f"VMI {name} to answer ping", interval=0.0)
        except WaitTimeout:
            raise LabError(f"VMI {name} does not answer ping within {timeout} s") from None
        if cmd == "ping":
            return "pong"
        s.sendall(cmd.encode() + b"\n")
        reply = read_line(s, timeout)
    if reply is None:
        raise LabError(f"VMI {name} did not acknowledge {cmd!r}")
    return reply


@dataclass
class VmiRun:
    """What the handler knows about one VMI it runs (one generation of it)."""

    name: str
    generation: int
    ip: str | None
    phase: str = "Pending"
    instance: str | None = None
    boot: int | None = None
    starts: int = 0  # 0: not started yet (a VMI's domain starts once)
    active: bool = False
    offset: int = 0  # console bytes already read
    partial: str = ""  # console text after the last newline
    paused: tuple[bool, str] = (False, "")
    reason: str = ""
    left: bool = False  # a live migration off this node was seen: forget, do not stop
    vanished: bool = False  # the domain was gone in the last pass (see _observe)


class VmiHandler:
    """Converges the node's VMIs to its assignments through its libvirtd."""

    def __init__(self, node: str, index: int, clock: Clock) -> None:
        self.node = node
        self.index = index
        self.clock = clock
        self.vmis: dict[str, VmiRun] = {}
        self._conn: Any = None  # libvirt.virConnect, imported lazily (extra 'vm')
        self._guest: GuestImage | None = None
        self._orphans: set[str] = set()  # running domains nobody assigned (last sweep)
        self._next_sweep = 0.0

    # --- libvirt ---------------------------------------------------------------
    def _connection(self) -> Any:
        if self._conn is not None:
            try:
                if self._conn.isAlive():
                    return self._conn
            except Exception:
                pass
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        try:
            # libvirt: the optional 'vm' extra
            from cluster.lab import virt, virtd
        except ImportError as exc:
            raise LabError(
                f"node {self.node} cannot run VMIs: libvirt-python is missing ({exc}); "
                "install the 'vm' extra"
            ) from exc
        if virtd.libvirtd_pid(self.node) is None:
            raise LabError(
                f"node {self.node} has no libvirtd; bring the lab up with VMs (lab_up(vms=True))"
            )
        self._conn = virt.connect(virtd.node_uri(self.node))
        return self._conn

    def _guest_image(self) -> GuestImage:
        if self._guest is None:
            self._guest = build_guest()
        return self._guest

    def _virt_type(self) -> str | None:
        """The libvirt domain type `rto lab up` chose (cluster.lab.accel)."""
        chosen = Machines().get_setting("accelerator")
        return {"kvm": "kvm", "tcg": "qemu"}.get(chosen) if isinstance(chosen, str) else None

    def _domain(self, name: str) -> Any:
        import libvirt

        try:
            return self._connection().lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise LabError(f"libvirt of node {self.node}: {exc}") from exc

    # --- one VMI -----------------------------------------------------------------
    def _start(self, vmi: VmiRun) -> None:
        import libvirt

        # libvirt: the optional 'vm' extra
        from cluster.lab import virt

        if vmi.ip is None:
            vmi.reason = "NoAddress"
            return
        t0 = self.clock.now()
        try:
            conn = self._connection()
            volumes.ensure_volume(vmi.name)  # before QEMU opens the disk
            disk = disk_path(vmi.name)
            if not disk.exists():
                with disk.open("wb") as f:
                    f.truncate(DISK_BYTES)
            net.route_vmi(vmi.ip, self.index)
            # A definition left by the previous start (or a failed one) would
            # clash: libvirt refuses a second UUID for the same name.
            virt.destroy_vmi(conn, vmi.name)
            dom = virt.define_vmi(
                conn,
                vmi.name,
                self.node,
                f"{vmi.ip}/24",
                net.VMI_GW,
                _GuestWithWatchdog(self._guest_image(), WDT_TIMEOUT_S),
                disk,
                "reset",
                virt_type=self._virt_type(),
            )
            log_path = virt.console_log(vmi.name)
            vmi.offset = log_path.stat().st_size if log_path.exists() else 0
            vmi.partial = ""
            t_create = self.clock.now()
            dom.create()
        except (HarnessError, OSError, libvirt.libvirtError) as exc:
            log.error("vmi %s: start failed: %s", vmi.name, exc)
            vmi.phase, vmi.reason = "Failed", "StartError"
            return
        now = self.clock.now()
        vmi.starts += 1
        vmi.active = True
        vmi.instance = None
        vmi.phase = "Scheduled"  # QEMU runs; Running once the guest says it is ready
        vmi.reason = "Booting"
        log.info("vmi %s: domain started in %.2f s, %.2f s of it libvirt's create",
                 vmi.name, now - t0, now - t_create)  # fmt: skip

    def _read_console(self, vmi: VmiRun) -> None:
        # libvirt: the optional 'vm' extra
        from cluster.lab import virt

        try:
            with virt.console_log(vmi.name).open("rb") as f:
                f.seek(vmi.offset)
                data = f.read()
        except FileNotFoundError:
            return
        vmi.offset += len(data)
        text = vmi.partial + data.decode(errors="replace")
        lines = text.split("\n")
        vmi.partial = lines.pop()
        for line in lines:
            if _READY not in line:
                continue
            parts = line[line.index(_READY) :].split()
            if len(parts) < 2:
                continue
            boot = next((p.split("=", 1)[1] for p in parts[2:] if p.startswith("boot=")), None)
            vmi.instance = parts[1]
            vmi.boot = int(boot) if boot and boot.isdigit() else None
            vmi.phase = "Running"
            vmi.reason = ""
            log.info("vmi %s: guest ready, instance %s boot %s", vmi.name, parts[1], vmi.boot)

    def _observe(self, vmi: VmiRun) -> None:
        """Domain state -> phase/conditions; notice a QEMU that died."""
        import libvirt

        if not vmi.active:
            return
        try:
            dom = self._domain(vmi.name)
            st, why = dom.state() if dom is not None else (libvirt.VIR_DOMAIN_SHUTOFF, 0)
        except (HarnessError, libvirt.libvirtError) as exc:
            log.warning("vmi %s: state unknown: %s", vmi.name, exc)
            self._conn = None
            return
        migrated = st == libvirt.VIR_DOMAIN_SHUTOFF and why == libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED
        if (dom is None or migrated) and not vmi.vanished:
            # Gone, not stopped: a live migration off this node may have ended
            # after this pass read its rows (no ``migrating_to`` yet). A restart
            # here would take the hub route from the destination, and the stop
            # that follows would drop it. Decide in the next pass, on fresh rows.
            vmi.vanished = True
            log.info("vmi %s: domain gone from this node; deciding on fresh rows", vmi.name)
            return
        vmi.vanished = False
        if st in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED):
            vmi.active = False
            vmi.paused = (False, "")
            vmi.phase, vmi.reason = "Failed", "Stopped"
            log.info("vmi %s: domain stopped (state %d/%d)", vmi.name, st, why)
            return
        if st == libvirt.VIR_DOMAIN_PAUSED:
            reason = "IOError" if why == libvirt.VIR_DOMAIN_PAUSED_IOERROR else "Paused"
            vmi.paused = (True, reason)
        else:
            vmi.paused = (False, "")
        self._read_console(vmi)

    def _stop(self, vmi: VmiRun) -> None:
        """Destroy and undefine the domain; drop the hub route if it is ours."""
        # libvirt: the optional 'vm' extra
        from cluster.lab import virt

        here = True
        with contextlib.suppress(HarnessError):
            here = self._domain(vmi.name) is not None
            virt.destroy_vmi(self._connection(), vmi.name)
        if vmi.ip is not None:
            with contextlib.suppress(HarnessError, OSError):
                net.unroute_vmi(vmi.ip, self.index)
        if vmi.left or not here:
            # Migrated away: the control socket path is the destination QEMU's now.
            log.info("vmi %s: forgotten (it migrated off this node)", vmi.name)
            return
        shutil.rmtree(virt.control_socket(vmi.name).parent, ignore_errors=True)
        log.info("vmi %s: stopped", vmi.name)

    def _adopt(self, vmi: VmiRun) -> bool:
        """Take over a domain that already runs here (it migrated in); True if so."""
        import libvirt

        # libvirt: the optional 'vm' extra
        from cluster.lab import virt

        try:
            dom = self._domain(vmi.name)
            if dom is None or not dom.isActive():
                return False
        except (HarnessError, libvirt.libvirtError) as exc:
            log.warning("vmi %s: cannot check for a migrated-in domain: %s", vmi.name, exc)
            return False
        # The console log is shared by every QEMU of this VMI: its last ready
        # line is the boot that is running now.
        path = virt.console_log(vmi.name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        vmi.offset = len(data)
        text = data.decode(errors="replace")
        last = text.rfind(_READY)
        if last >= 0:
            parts = text[last:].split("\n", 1)[0].split()
            if len(parts) >= 2:
                vmi.instance = parts[1]
                boot = next((p[5:] for p in parts[2:] if p.startswith("boot=")), None)
                vmi.boot = int(boot) if boot and boot.isdigit() else None
        vmi.active = True
        vmi.starts = 1
        vmi.phase = "Running" if vmi.instance is not None else "Scheduled"
        vmi.reason = "" if vmi.instance is not None else "Booting"
        if vmi.ip is not None:
            # The migration moved the route already; this is idempotent insurance.
            with contextlib.suppress(HarnessError, OSError):
                net.route_vmi(vmi.ip, self.index)
        log.info("vmi %s: adopted migrated-in domain (instance %s)", vmi.name, vmi.instance)
        return True

    # --- the virt-handler's hooks -----------------------------------------------------
    def sync(
        self,
        wanted: dict[str, tuple[int, str | None]],
        leaving: Collection[str] = frozenset(),
    ) -> None:
        """Converge to ``wanted`` (name -> (generation, ip)); poll what runs.

        ``leaving``: VMIs of ``wanted`` being live-migrated off this node; their
        domains are libvirt's to move, so they are neither observed nor started.
        """
        for name in [n for n in self.vmis if n not in wanted]:
            self._stop(self.vmis.pop(name))
        for name, (gen, ip) in wanted.items():
            vmi = self.vmis.get(name)
            if vmi is not None and vmi.generation != gen:
                self._stop(self.vmis.pop(name))
                vmi = None
            if vmi is None:
                vmi = VmiRun(name, gen, ip)
                self.vmis[name] = vmi
                self._adopt(vmi)
            elif vmi.ip is None and ip is not None:
                vmi.ip = ip
            if name in leaving:
                vmi.left = True
                continue
            vmi.left = False  # a failed migration leaves the domain here: ours again
            self._observe(vmi)
            if not vmi.active and vmi.phase != "Failed" and vmi.starts == 0:
                self._start(vmi)

    def sweep_orphans(self, wanted: Collection[str]) -> None:
        """Destroy running domains of this libvirtd that no assignment names,
        at most once a second.

        They appear when a VMI migrated in and its row was deleted before this
        agent saw it (nobody adopted the domain, and its address may be given
        to the next VMI). A domain must be found orphaned by two sweeps in a
        row, each after a fresh read of the assignments, and be RUNNING: an
        incoming migration is paused until its row names this node.
        """
        now = self.clock.now()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        if not self._libvirtd_up():
            return
        import libvirt

        # libvirt: the optional 'vm' extra
        from cluster.lab import virt

        try:
            conn = self._connection()
            doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            found = set()
            for dom in doms:
                name = dom.name()
                if name in wanted or name in self.vmis:
                    continue
                if dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                    found.add(name)
            for name in sorted(found & self._orphans):
                log.warning("vmi %s: running here but assigned nowhere: destroyed", name)
                virt.destroy_vmi(conn, name)
            self._orphans = found - self._orphans
        except (HarnessError, libvirt.libvirtError) as exc:
            log.warning("node %s: orphan sweep failed: %s", self.node, exc)

    def _libvirtd_up(self) -> bool:
        return virtd.libvirtd_pid(self.node) is not None

    def has_domain(self, name: str) -> bool:
        """Does a running domain of VMI ``name`` exist on this node's libvirtd?"""
        try:
            dom = self._domain(name)
            return dom is not None and bool(dom.isActive())
        except Exception as exc:  # libvirtd down: no domain either way
            log.warning("vmi %s: domain unknown: %s", name, exc)
            return False

    def shutdown(self) -> None:
        for name in list(self.vmis):
            try:
                self._stop(self.vmis.pop(name))
            except (HarnessError, OSError) as exc:
                log.error("vmi %s: not stopped cleanly: %s", name, exc)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
