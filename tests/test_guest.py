"""Tests of the lab VM guest: image build (kernel extraction, modules, cpio,
cache) and, as a lab test, a real boot under QEMU TCG with a watchdog reset.
"""

from __future__ import annotations

import asyncio
import fcntl
import gzip
import lzma
import os
import shutil
import socket
import statistics
import struct
import subprocess
import time
from pathlib import Path

import pytest
from tenacity import (
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_delay,
    wait_fixed,
)

from chaos.prober import http_probe
from cluster.api import ProbeTarget
from cluster.lab.guest import build as guest_build
from cluster.lab.guest.build import (
    GuestImage,
    _Entry,
    build_guest,
    extract_vmlinux,
    module_load_order,
    write_newc,
)
from cluster.lab.guest.qemu import GuestOptions, QemuGuest, free_loopback_port
from cluster.lab.volumes import EXT4_GOING_FLAGS_NOLOGFLUSH, EXT4_IOC_SHUTDOWN
from core.errors import LabError

FAKE_ELF = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64
JUNK = b"MZ\x00\x00 setup code " * 100

needs_kernel = pytest.mark.skipif(
    not list(Path("/boot").glob("vmlinuz-*")) or not Path("/bin/busybox").is_file(),
    reason="needs linux-image-amd64 and busybox-static installed",
)


# --- kernel extraction ---------------------------------------------------------


def test_extract_vmlinux_from_xz_payload() -> None:
    image = JUNK + lzma.compress(FAKE_ELF, format=lzma.FORMAT_XZ) + b"trailing"
    assert extract_vmlinux(image) == FAKE_ELF


def test_extract_vmlinux_skips_a_false_magic_before_the_payload() -> None:
    # A gzip magic in the setup code that does not decode must not stop the scan.
    image = JUNK + b"\x1f\x8b\x08garbage" + gzip.compress(FAKE_ELF) + b"\0" * 64
    assert extract_vmlinux(image) == FAKE_ELF


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd CLI not installed")
def test_extract_vmlinux_from_zstd_payload() -> None:
    payload = subprocess.run(
        ["zstd", "-q", "-c"], input=FAKE_ELF, capture_output=True, check=True
    ).stdout
    assert extract_vmlinux(JUNK + payload + b"\xff" * 32) == FAKE_ELF


def test_extract_vmlinux_rejects_an_image_without_payload() -> None:
    with pytest.raises(LabError, match="no ELF vmlinux"):
        extract_vmlinux(JUNK)


def test_extract_vmlinux_rejects_a_payload_that_is_not_elf() -> None:
    with pytest.raises(LabError, match="xz@"):
        extract_vmlinux(JUNK + lzma.compress(b"not an elf", format=lzma.FORMAT_XZ))


# --- modules ---------------------------------------------------------------------

MODULES_DEP = """\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko \
kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/watchdog/watchdog.ko:
kernel/drivers/watchdog/i6300esb.ko.xz: kernel/drivers/watchdog/watchdog.ko
"""


def test_module_load_order_puts_dependencies_first_once() -> None:
    order = module_load_order(MODULES_DEP, ["virtio_pci", "virtio_net", "i6300esb"])
    names = [p.rsplit("/", 1)[1] for p in order]
    assert names == [
        "virtio_ring.ko",
        "virtio.ko",
        "virtio_pci_legacy_dev.ko",
        "virtio_pci.ko",
        "failover.ko",
        "net_failover.ko",
        "virtio_net.ko",
        "watchdog.ko",
        "i6300esb.ko.xz",
    ]


def test_module_load_order_names_a_missing_module() -> None:
    with pytest.raises(LabError, match=r"'virtio_blk' is not in modules\.dep"):
        module_load_order(MODULES_DEP, ["virtio_blk"])


def test_strip_signature_removes_the_appended_signature() -> None:
    body = b"\x7fELF module body"
    sig = b"S" * 20
    info = bytes(8) + len(sig).to_bytes(4, "big")  # struct module_signature
    signed = body + sig + info + b"~Module signature appended~\n"
    assert guest_build._strip_signature(signed) == body
    assert guest_build._strip_signature(body) == body


# --- cpio ------------------------------------------------------------------------


def test_write_newc_is_read_back_by_cpio(tmp_path: Path) -> None:
    archive = write_newc(
        [
            _Entry("bin", 0o040755),
            _Entry("bin/busybox", 0o100755, b"#!fake\n" * 3),
            _Entry("bin/sh", 0o120777, b"busybox"),
            _Entry("odd", 0o100644, b"x"),  # exercises padding
        ]
    )
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(
        ["cpio", "-i", "-d", "--quiet"], input=archive, cwd=out, check=True, capture_output=True
    )
    assert (out / "bin/busybox").read_bytes() == b"#!fake\n" * 3
    assert (out / "bin/busybox").stat().st_mode & 0o777 == 0o755
    assert (out / "bin/sh").readlink() == Path("busybox")
    assert (out / "odd").read_bytes() == b"x"


# --- command line ----------------------------------------------------------------

IMAGE = GuestImage(Path("/k"), Path("/i"), guest_build.CMDLINE_TEMPLATE, "0" * 64)


def test_cmdline_defaults_and_driver_default_timeout() -> None:
    line = IMAGE.cmdline("vm-a")
    assert "console=ttyS0" in line.split()
    assert {"rto.name=vm-a", "rto.wdt=2", "rto.feed=1", "panic=0"} <= set(line.split())
    assert "rto.wdt=default" in IMAGE.cmdline("vm-a", wdt_timeout=None, feed_interval=10).split()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad Name"}, "DNS-1123"),
        ({"name": "vm", "wdt_timeout": 1}, "outside"),
        ({"name": "vm", "wdt_timeout": 4, "feed_interval": 4}, "below the 4 s timeout"),
        ({"name": "vm", "wdt_timeout": None, "feed_interval": 30}, "below the 30 s"),
        ({"name": "vm", "ip": "1.2.3.4 x"}, "one non-empty word"),
    ],
)
def test_cmdline_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(LabError, match=message):
        IMAGE.cmdline(**kwargs)  # type: ignore[arg-type]


# --- build and cache -------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> GuestImage:
    return build_guest(tmp_path_factory.mktemp("images"))


@needs_kernel
@pytest.mark.slow
def test_build_guest_image_contents(built: GuestImage, tmp_path: Path) -> None:
    assert built.kernel.read_bytes()[:4] == b"\x7fELF"
    assert built.kernel.parent.name == f"guest-{built.inputs_hash[:16]}"
    initrd = built.initrd.read_bytes()
    listing = subprocess.run(
        ["cpio", "-t", "--quiet"], input=initrd, capture_output=True, check=True
    ).stdout.decode()
    files = set(listing.split())
    for name in ("init", "bin/busybox", "bin/sh", "bin/rto-healthz", "bin/rto-control"):
        assert name in files
    # The health server is the static binary compiled from healthz.c, not a script.
    subprocess.run(
        ["cpio", "-i", "-d", "--quiet", "bin/rto-healthz"], input=initrd, cwd=tmp_path, check=True
    )
    server = (tmp_path / "bin/rto-healthz").read_bytes()
    assert server[:4] == b"\x7fELF"
    assert 3 not in elf_segment_types(server)  # no PT_INTERP: static, the guest has no ld.so
    for mod in ("i6300esb.ko", "watchdog.ko", "virtio_net.ko", "virtio_blk.ko", "virtio_pci.ko"):
        assert f"lib/modules/{mod}" in files
    subprocess.run(
        ["cpio", "-i", "-d", "--quiet", "etc/rto/modules"], input=initrd, cwd=tmp_path, check=True
    )
    order = [line.split()[0] for line in (tmp_path / "etc/rto/modules").read_text().splitlines()]
    assert order.index("watchdog") < order.index("i6300esb")
    assert order.index("virtio") < order.index("virtio_net")


def elf_segment_types(elf: bytes) -> list[int]:
    """p_type of every program header of a 64-bit little-endian ELF file."""
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    return [struct.unpack_from("<I", elf, phoff + i * phentsize)[0] for i in range(phnum)]


@needs_kernel
@pytest.mark.slow
def test_build_guest_reuses_cache_and_rebuilds_on_change(
    built: GuestImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A copy of the fixture's cache: the new builds below prune older images,
    # and later tests still boot ``built``.
    root = tmp_path / "images"
    shutil.copytree(built.kernel.parent.parent, root)
    built = build_guest(root)
    repo_assets = guest_build.ASSETS
    mtime = built.initrd.stat().st_mtime_ns
    again = build_guest(root)
    assert again == built
    assert built.initrd.stat().st_mtime_ns == mtime  # not rewritten

    # An edited guest script is a new input: a new image next to the old one.
    assets = tmp_path / "assets"
    shutil.copytree(guest_build.ASSETS, assets, ignore=shutil.ignore_patterns("__pycache__"))
    with (assets / "init.sh").open("a") as f:
        f.write("# edited\n")
    monkeypatch.setattr(guest_build, "ASSETS", assets)
    changed = build_guest(root)
    assert changed.inputs_hash != built.inputs_hash
    assert changed.initrd != built.initrd and changed.initrd.is_file()
    assert built.initrd.is_file()

    # So is the compiler: a gcc or libc.a upgrade gives a new image too.
    monkeypatch.setattr(guest_build, "ASSETS", repo_assets)
    monkeypatch.setattr(guest_build, "_compiler_identity", lambda: "gcc (Other) 99.1")
    third = build_guest(root)
    assert third.inputs_hash not in (built.inputs_hash, changed.inputs_hash)
    # The new build pruned the oldest image and kept one spare.
    assert third.initrd.is_file() and changed.initrd.is_file()
    assert not built.initrd.exists()


def test_compile_healthz_reports_the_compiler_error(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    with pytest.raises(LabError, match="gcc could not build"):
        guest_build._compile_healthz(b"int main(void) { return oops; }\n", tmp_path)


# --- the health server, on the host ------------------------------------------------


@pytest.fixture(scope="module")
def healthz_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    out = tmp_path_factory.mktemp("healthz") / "rto-healthz"
    source = (guest_build.ASSETS / "healthz.c").read_bytes()
    out.write_bytes(guest_build._compile_healthz(source, out.parent))
    out.chmod(0o755)
    return out


def test_healthz_server_answers_and_checks_itself(healthz_binary: Path) -> None:
    # Without /run/rto (the host), it serves the defaults and no disk: 200, no write.
    port = free_loopback_port()
    server = subprocess.Popen([str(healthz_binary), "serve", str(port)])
    try:
        check = [str(healthz_binary), "check", str(port), "2000"]
        # The listener is up within ms; retry a refused connect meanwhile.
        retrying = Retrying(
            stop=stop_after_delay(5),
            wait=wait_fixed(0.02),
            retry=retry_if_result(bool),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else -1,
        )
        rc = retrying(lambda: subprocess.run(check, check=False).returncode)
        assert rc == 0, "rto-healthz check never saw a 200"
        target = ProbeTarget("127.0.0.1", port)
        good, _, reason = asyncio.run(http_probe(target, 1.0))
        assert good, reason
        lost = ProbeTarget("127.0.0.1", port, path="/nothing")
        good, _, reason = asyncio.run(http_probe(lost, 1.0))
        assert not good and "404" in reason
        # A client that never sends its request does not block the next one.
        with socket.create_connection(("127.0.0.1", port)):
            stats = asyncio.run(hammer(target, rate=50, seconds=1.0, timeout=0.25))
        assert stats.good == stats.sent
    finally:
        server.kill()
        server.wait()
    assert subprocess.run(check, check=False).returncode == 1  # nobody listening


def _serve(binary: Path, rundir: Path, disk: str) -> tuple[subprocess.Popen[bytes], ProbeTarget]:
    """The server on a free loopback port with ``disk`` as its data disk, answering."""
    for key, value in (("name", "vm-h"), ("instance", "abc123"), ("boot", "7"), ("disk", disk)):
        (rundir / key).write_text(value + "\n")
    port = free_loopback_port()
    server = subprocess.Popen([str(binary), "serve", str(port), str(rundir)])
    check = [str(binary), "check", str(port), "2000"]
    # The listener is up within ms; retry a refused connect meanwhile.
    Retrying(
        stop=stop_after_delay(5),
        wait=wait_fixed(0.02),
        retry=retry_if_exception_type(subprocess.CalledProcessError),
        reraise=True,
    )(lambda: subprocess.run([*check[:3], "500"], check=True, capture_output=True))
    return server, ProbeTarget("127.0.0.1", port)


async def _get(target: ProbeTarget) -> bytes:
    reader, writer = await asyncio.open_connection(target.host, target.port)
    writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


@pytest.mark.lab
def test_healthz_server_writes_sector_1_and_answers_500_on_eio_or_missing_disk(
    healthz_binary: Path, tmp_path: Path
) -> None:
    # Real block devices: a loop device takes the record; a second loop device
    # on a file in an ext4 that is then shut down (EXT4_IOC_SHUTDOWN, as the
    # lab's pod volumes do) fails every write with EIO, as a dead disk does.
    image = tmp_path / "disk.img"
    image.write_bytes(b"RTOGUEST boot=7\n".ljust(512, b"\0") + bytes(8 * 1024 * 1024 - 512))
    outer = tmp_path / "outer.ext4"
    outer.write_bytes(bytes(16 * 1024 * 1024))
    subprocess.run(["mkfs.ext4", "-q", "-F", str(outer)], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    loops: list[str] = []
    mounted = False
    procs: list[subprocess.Popen[bytes]] = []

    def attach(path: Path) -> str:
        dev = subprocess.run(
            ["losetup", "--find", "--show", str(path)], capture_output=True, text=True, check=True
        ).stdout.strip()
        loops.append(dev)
        return dev

    try:
        loop = attach(image)
        subprocess.run(["mount", attach(outer), str(mnt)], check=True, capture_output=True)
        mounted = True
        (mnt / "dead.img").write_bytes(bytes(1024 * 1024))
        dead = attach(mnt / "dead.img")
        fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)
        cases = ((loop, "200 OK", ""), (dead, "500 ", " disk-write-failed"),
                 (str(tmp_path / "vdz"), "500 ", " disk-missing"))  # fmt: skip
        for disk, status, suffix in cases:
            rundir = tmp_path / f"run-{len(procs)}"
            rundir.mkdir()
            if status.startswith("500"):
                # check fails on a 500: start by hand and wait for the port.
                for key, value in (("name", "vm-h"), ("instance", "abc123"), ("boot", "7")):
                    (rundir / key).write_text(value + "\n")
                (rundir / "disk").write_text(disk + "\n")
                port = free_loopback_port()
                procs.append(
                    subprocess.Popen([str(healthz_binary), "serve", str(port), str(rundir)])
                )
                target = ProbeTarget("127.0.0.1", port)
                answer = Retrying(stop=stop_after_delay(5), wait=wait_fixed(0.02), reraise=True)(
                    lambda t=target: asyncio.run(_get(t))
                )
            else:
                server, target = _serve(healthz_binary, rundir, disk)
                procs.append(server)
                answer = asyncio.run(_get(target))
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(f"HTTP/1.0 {status}".encode()), answer
            assert body == f"vm-h abc123 boot=7{suffix}\n".encode(), answer
        data = image.read_bytes()
        assert data[:512] == b"RTOGUEST boot=7\n".ljust(512, b"\0")  # sector 0 is /init's
        assert data[512:1024].startswith(b"healthz abc123 "), data[512:560]
        assert data[512:1024].rstrip(b"\0").endswith(b"\n")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for dev in reversed(loops[1:]):  # the dead disk before the fs it lives on
            subprocess.run(["losetup", "-d", dev], check=False, capture_output=True)
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)
        if loops:
            subprocess.run(["losetup", "-d", loops[0]], check=False, capture_output=True)


class HammerStats:
    """Outcomes of a fixed-rate probe run: good answers and their latencies."""

    def __init__(self, outcomes: list[tuple[bool, float, str]]) -> None:
        self.sent = len(outcomes)
        self.good = sum(1 for ok, _, _ in outcomes if ok)
        lat = sorted(ms for ok, ms, _ in outcomes if ok)
        self.p50 = statistics.median(lat) if lat else float("nan")
        self.p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else float("nan")
        self.reasons = sorted({r for ok, _, r in outcomes if not ok})

    def __str__(self) -> str:
        return (
            f"{self.good}/{self.sent} good, latency p50 {self.p50:.1f} ms "
            f"p95 {self.p95:.1f} ms, failures: {', '.join(self.reasons) or 'none'}"
        )


async def hammer(
    target: ProbeTarget, *, rate: float, seconds: float, timeout: float
) -> HammerStats:
    """Probes ``target`` ``rate`` times a second on a fixed schedule, as the recorder does.

    Every probe is its own task with its own timeout, so slow answers do not
    slow the sending down (the load the guest sees is the recorder's).
    """

    async def one() -> tuple[bool, float, str]:
        t0 = time.monotonic()
        good, _, reason = await http_probe(target, timeout)
        return good, (time.monotonic() - t0) * 1000, reason

    tasks = []
    start = time.monotonic()
    for i in range(round(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(one()))
    return HammerStats(list(await asyncio.gather(*tasks)))


# --- boot under QEMU -------------------------------------------------------------


@needs_kernel
@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86")
def test_guest_boots_serves_healthz_and_watchdog_resets_a_hang_and_a_panic(
    built: GuestImage, tmp_path: Path
) -> None:
    guest = QemuGuest(built, tmp_path, GuestOptions(name="vm-test", wdt_timeout=2), disk_mib=8)
    try:
        guest.start()
        first = guest.wait_ready(40)
        assert first.boot == 1
        assert guest.probe(timeout=5) == f"vm-test {first.instance} boot=1"
        assert guest.command("ping") == "pong"

        # The recorder's load: 50 probes a second, 250 ms timeout each, every
        # one a synced write to the data disk. The guest must keep up.
        target = ProbeTarget("127.0.0.1", guest.http_port)
        stats = asyncio.run(hammer(target, rate=50, seconds=3.0, timeout=0.25))
        print(f"guest /healthz at 50 req/s: {stats}")
        assert stats.good >= 0.95 * stats.sent, str(stats)
        record = guest.disk.read_bytes()[512:1024] if guest.disk is not None else b""
        assert record.startswith(f"healthz {first.instance} ".encode()), record[:80]

        assert guest.command("hang") == "hung"
        # Stopped userland: the probe must fail, then the i6300esb resets.
        assert guest.probe(timeout=1) is None
        second = guest.wait_ready(40, count=2)
        assert second.instance != first.instance
        assert second.boot == 2  # counted on the data disk, which survives a reset
        assert guest.wait_healthy(10) == f"vm-test {second.instance} boot=2"

        # A kernel panic (panic=0: no reboot by itself) is also the watchdog's.
        assert guest.command("crash") == "crashing"
        third = guest.wait_ready(40, count=3)
        assert third.boot == 3
        assert "Kernel panic" in guest.console_log.read_text(errors="replace")
    finally:
        guest.stop()
    # The boot count really lives on the disk, in sector 0.
    assert guest.disk is not None
    assert guest.disk.read_bytes()[:512].rstrip(b"\0") == b"RTOGUEST boot=3\n"


def test_prune_keeps_the_new_image_and_one_spare(tmp_path: Path) -> None:
    dirs = []
    for i, name in enumerate(["guest-a", "guest-b", "guest-c", "guest-new"]):
        d = tmp_path / name
        d.mkdir()
        (d / "manifest.json").write_text("{}")
        os.utime(d, (1000 + i, 1000 + i))
        dirs.append(d)
    half_built = tmp_path / "guest-partial"  # no manifest: another builder's, not ours
    half_built.mkdir()
    (tmp_path / "busybox-rootfs").mkdir()
    guest_build._prune(tmp_path, keep=dirs[3])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["busybox-rootfs", "guest-c", "guest-new", "guest-partial"]
