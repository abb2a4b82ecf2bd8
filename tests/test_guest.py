"""Tests of the lab VM guest: image build (kernel extraction, modules, cpio,
cache) and, as a lab test, a real boot under QEMU TCG with a watchdog reset.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from chaos.errors import LabError
from cluster.lab.guest import build as guest_build
from cluster.lab.guest.build import (
    GuestImage,
    _Entry,
    build_guest,
    extract_vmlinux,
    module_load_order,
    write_newc,
)
from cluster.lab.guest.qemu import GuestOptions, QemuGuest

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
    for mod in ("i6300esb.ko", "watchdog.ko", "virtio_net.ko", "virtio_blk.ko", "virtio_pci.ko"):
        assert f"lib/modules/{mod}" in files
    subprocess.run(
        ["cpio", "-i", "-d", "--quiet", "etc/rto/modules"], input=initrd, cwd=tmp_path, check=True
    )
    order = [line.split()[0] for line in (tmp_path / "etc/rto/modules").read_text().splitlines()]
    assert order.index("watchdog") < order.index("i6300esb")
    assert order.index("virtio") < order.index("virtio_net")


@needs_kernel
@pytest.mark.slow
def test_build_guest_reuses_cache_and_rebuilds_on_change(
    built: GuestImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = built.kernel.parent.parent
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
