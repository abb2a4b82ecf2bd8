"""Boot the lab guest under plain QEMU (TCG), for tests and benchmarks.

Filled by callers with a built :class:`~cluster.lab.guest.build.GuestImage`;
read by tests/test_guest.py and benchmarks/guest_boot.py. It is the reference
for the devices and options a libvirt domain of the guest needs (see
:func:`qemu_argv`), not the lab's VM backend (libvirt, a later issue).

TCG unless ``GuestOptions.accel`` says otherwise: /dev/kvm can exist and
still not run this guest, so KVM is only used once a boot proved it
(``cluster.lab.accel`` boots this guest under KVM to decide). Every
address is loopback (the HTTP port forward) or inside the guest's own
user-mode network (198.18.200.0/24, isolated with ``restrict=on``).
"""

from __future__ import annotations

import re
import socket
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from cluster.lab.guest.build import DEFAULT_GUEST_GW, DEFAULT_GUEST_IP, READY_MARKER, GuestImage
from core.clock import Clock, RealClock
from core.errors import LabError
from core.wait import WaitTimeout, poll_until

__all__ = ["GuestOptions", "QemuGuest", "Ready", "free_loopback_port", "qemu_argv"]

QEMU = "qemu-system-x86_64"
_READY_RE = re.compile(rf"{READY_MARKER} (\S+) boot=(\d+)")


@dataclass(frozen=True)
class GuestOptions:
    """How one guest is booted (kernel command line and devices)."""

    name: str = "guest"
    memory_mib: int = 256
    wdt_timeout: int | None = 2  # None: the i6300esb driver default (30 s)
    feed_interval: float = 1.0
    panic: int = 0
    machine: str = "q35"
    accel: str = "tcg"  # "kvm" only where cluster.lab.accel saw a guest boot on it
    extra_cmdline: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Ready:
    """One ``RTO-GUEST-READY`` line: the guest booted and /healthz answers."""

    instance: str
    boot: int


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (QEMU binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def qemu_argv(
    image: GuestImage,
    options: GuestOptions,
    *,
    console_log: Path,
    control_socket: Path,
    http_port: int,
    disk: Path | None,
) -> list[str]:
    """The QEMU command line; each device is what the guest expects to find."""
    cmdline = image.cmdline(
        options.name,
        ip=DEFAULT_GUEST_IP,
        gw=DEFAULT_GUEST_GW,
        wdt_timeout=options.wdt_timeout,
        feed_interval=options.feed_interval,
        panic=options.panic,
    )
    if options.extra_cmdline:
        cmdline += " " + " ".join(options.extra_cmdline)
    guest_ip = DEFAULT_GUEST_IP.split("/", 1)[0]
    argv = [
        QEMU,
        "-accel", options.accel,
        "-machine", options.machine,
        "-m", str(options.memory_mib),
        "-smp", "1",
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-monitor", "none",
        # ELF vmlinux -> PVH entry: no bzImage decompression under TCG.
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", cmdline,
        # ttyS0: console and READY marker; ttyS1: the control channel.
        "-serial", f"file:{console_log}",
        "-chardev", f"socket,id=ctl,path={control_socket},server=on,wait=off",
        "-serial", "chardev:ctl",
        "-device", "i6300esb",
        "-action", "watchdog=reset",
        # User-mode net inside 198.18.200.0/24, no route out (restrict=on);
        # only the loopback port forward reaches the guest.
        "-netdev",
        f"user,id=net0,net=198.18.200.0/24,host={DEFAULT_GUEST_GW},restrict=on,"
        f"hostfwd=tcp:127.0.0.1:{http_port}-{guest_ip}:80",
        "-device", "virtio-net-pci,netdev=net0",
    ]  # fmt: skip
    if disk is not None:
        argv += [
            "-drive", f"file={disk},format=raw,if=none,id=data0",
            "-device", "virtio-blk-pci,drive=data0",
        ]  # fmt: skip
    return argv


class QemuGuest:
    """One QEMU process running the guest; a context manager that always kills it.

    ``workdir`` receives the console log, the control socket, QEMU's stderr
    and (with ``disk_mib``) a blank raw data disk.
    """

    def __init__(
        self,
        image: GuestImage,
        workdir: Path,
        options: GuestOptions | None = None,
        *,
        disk_mib: int | None = 16,
        clock: Clock | None = None,
    ) -> None:
        self.image = image
        self.workdir = workdir
        self.options = options or GuestOptions()
        self.disk_mib = disk_mib
        self.clock: Clock = clock or RealClock()
        self.console_log = workdir / "console.log"
        self.control_socket = workdir / "control.sock"
        self.disk = workdir / "data.img" if disk_mib else None
        self.http_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._control_buf = b""

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.console_log.write_bytes(b"")
        self.control_socket.unlink(missing_ok=True)
        if self.disk is not None and self.disk_mib:
            with self.disk.open("wb") as f:
                f.truncate(self.disk_mib * 1024 * 1024)
        self.http_port = free_loopback_port()
        argv = qemu_argv(
            self.image,
            self.options,
            console_log=self.console_log,
            control_socket=self.control_socket,
            http_port=self.http_port,
            disk=self.disk,
        )
        with (self.workdir / "qemu.stderr").open("wb") as err:
            try:
                self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=err)
            except OSError as exc:
                raise LabError(
                    f"cannot start {QEMU}: {exc}; apt-get install qemu-system-x86"
                ) from exc

    def stop(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def __enter__(self) -> QemuGuest:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _check_alive(self) -> None:
        if self._proc is None:
            raise LabError("the guest is not started")
        if self._proc.poll() is not None:
            err = (self.workdir / "qemu.stderr").read_text(errors="replace").strip()
            raise LabError(f"QEMU exited with {self._proc.returncode}: {err[-500:]}")

    # -- console ----------------------------------------------------------------

    def ready_lines(self) -> list[Ready]:
        text = self.console_log.read_text(errors="replace")
        return [Ready(m.group(1), int(m.group(2))) for m in _READY_RE.finditer(text)]

    def wait_ready(self, timeout: float, *, count: int = 1) -> Ready:
        """Wait for the ``count``-th READY marker since start (2: after one reset)."""

        def attempt() -> Ready | None:
            self._check_alive()
            lines = self.ready_lines()
            return lines[count - 1] if len(lines) >= count else None

        try:
            return poll_until(attempt, timeout, f"READY marker #{count}", self.clock)
        except WaitTimeout:
            tail = self.console_log.read_text(errors="replace")[-800:]
            raise LabError(
                f"guest {self.options.name} printed no READY marker #{count} within "
                f"{timeout} s; console tail:\n{tail}"
            ) from None

    # -- HTTP -------------------------------------------------------------------

    def probe(self, timeout: float = 1.0) -> str | None:
        """GET /healthz over the loopback forward: the body on 200, else None.

        A refused, reset or timed-out request is a failed probe, not an error:
        that is what the caller measures.
        """
        url = f"http://127.0.0.1:{self.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                body: bytes = resp.read()
                return body.decode().strip() if resp.status == 200 else None
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_healthy(
        self, timeout: float, *, not_instance: str | None = None, interval: float = 0.1
    ) -> str:
        """Probe until /healthz answers 200 (from an instance other than ``not_instance``)."""

        def attempt() -> str | None:
            self._check_alive()
            body = self.probe(timeout=0.5)
            if body is None or (not_instance is not None and not_instance in body.split()):
                return None
            return body

        try:
            return poll_until(attempt, timeout, "/healthz", self.clock, interval=interval)
        except WaitTimeout:
            raise LabError(
                f"guest {self.options.name} /healthz not good within {timeout} s "
                f"(port {self.http_port})"
            ) from None

    # -- control channel --------------------------------------------------------

    def _connect_control(self) -> socket.socket:
        if self._control is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(self.control_socket))
            except OSError as exc:
                s.close()
                raise LabError(f"cannot connect to {self.control_socket}: {exc}") from exc
            self._control = s
        return self._control

    def _read_line(self, timeout: float) -> str | None:
        s = self._connect_control()
        s.settimeout(timeout)
        while b"\n" not in self._control_buf:
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                return None
            if not chunk:
                raise LabError("the guest control socket was closed by QEMU")
            self._control_buf += chunk
        line, self._control_buf = self._control_buf.split(b"\n", 1)
        return line.decode(errors="replace").strip()

    def command(self, cmd: str, timeout: float = 10.0) -> str:
        """Send ``ping``/``hang``/``crash`` on ttyS1 and return the reply line.

        Bytes that reach the UART before the guest opens ttyS1 are dropped, so
        a ``ping`` is repeated until ``pong`` comes back before the command.
        """
        if cmd not in ("ping", "hang", "crash"):
            raise LabError(f"unknown guest command {cmd!r}; use ping, hang or crash")
        self._check_alive()

        def ping() -> bool:
            self._connect_control().sendall(b"ping\n")
            return self._read_line(0.5) == "pong"

        try:
            # No pause between pings: each one already waits 0.5 s for its pong.
            poll_until(ping, timeout, "pong", self.clock, interval=0.0)
        except WaitTimeout:
            raise LabError(
                f"guest {self.options.name} does not answer ping on its control channel "
                f"within {timeout} s"
            ) from None
        if cmd == "ping":
            return "pong"
        self._connect_control().sendall(cmd.encode() + b"\n")
        reply = self._read_line(timeout)
        if reply is None:
            raise LabError(f"guest {self.options.name} did not acknowledge {cmd!r}")
        return reply
