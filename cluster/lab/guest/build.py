"""Build the lab's tiny VM guest (kernel + busybox initramfs) from Debian packages.

Filled from the host's installed packages: ``linux-image-amd64`` (the bzImage in
/boot and its modules in /lib/modules) and ``busybox-static``, plus the guest's
HTTP server (healthz.c) compiled here with the machine's gcc (``gcc`` and
``libc6-dev``: a static binary, so the initramfs needs no shared libraries). Read by whoever
boots a lab VM (the plain-QEMU runner in :mod:`cluster.lab.guest.qemu`, the
libvirt domains of a later issue): they take a :class:`GuestImage` and pass
``kernel``, ``initrd`` and ``cmdline(...)`` to the hypervisor.

Why this shape: under TCG (KVM cannot run guests here) the ELF ``vmlinux``
boots through the PVH entry in about half the time of the bzImage, so it is
extracted from the bzImage in Python. The initramfs is a newc cpio written in
Python (deterministic, no root needed for device nodes), uncompressed because
decompressing under TCG costs more than reading a few MB. Results are cached
per hash of every input (kernel, modules, busybox, guest scripts and C source,
the compiler's version and libc.a, this file)
so a package upgrade or a script edit rebuilds, and nothing else does.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cluster.lab.state import STATE_DIR
from core.errors import LabError

__all__ = [
    "DEFAULT_GUEST_GW",
    "DEFAULT_GUEST_IP",
    "GUEST_MODULES",
    "IMAGES_DIR",
    "READY_MARKER",
    "GuestImage",
    "build_guest",
    "extract_vmlinux",
    "module_load_order",
    "write_newc",
]

IMAGES_DIR = STATE_DIR / "images"
BOOT_DIR = Path("/boot")
MODULES_ROOT = Path("/lib/modules")
BUSYBOX = Path("/bin/busybox")
ASSETS = Path(__file__).resolve().parent

# Bump when the image layout changes in a way the inputs hash cannot see.
FORMAT_VERSION = 1

# Modules the guest needs (the Debian kernel builds all of them as modules);
# dependencies are added from modules.dep. virtio_pci binds the PCI devices,
# virtio_net/virtio_blk give eth0 and /dev/vda, i6300esb (+ watchdog core)
# gives /dev/watchdog. virtio_balloon answers a libvirt <memballoon> with
# memory statistics (harmless without one).
GUEST_MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "virtio_balloon", "i6300esb")

# The guest's own address when nothing else is asked for. QEMU user-mode
# networking (tests, benchmark) is configured for this /24, inside the
# benchmarking range the project may use.
DEFAULT_GUEST_IP = "198.18.200.15/24"
DEFAULT_GUEST_GW = "198.18.200.2"

# Printed on ttyS0 once /healthz answers inside the guest.
READY_MARKER = "RTO-GUEST-READY"

# Boot-time savers under TCG (each measured here): no crypto self-tests
# (~1 s), no W+X page-table walk (rodata=off, ~0.5 s), no TSC refinement or
# timer check, no PS/2 probing, two UARTs only. quiet: console output is slow.
CMDLINE_TEMPLATE = (
    "console=ttyS0 quiet panic={panic} "
    "cryptomgr.notests rodata=off tsc=reliable no_timer_check "
    "i8042.noaux i8042.nokbd 8250.nr_uarts=2 "
    "rto.name={name} rto.ip={ip} rto.gw={gw} rto.wdt={wdt} rto.feed={feed}"
)

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class GuestImage:
    """A built guest: boot ``kernel`` (ELF vmlinux, PVH) with ``initrd``.

    ``cmdline_template`` has ``{name} {ip} {gw} {wdt} {feed} {panic}`` fields;
    use :meth:`cmdline` rather than formatting it by hand (it validates).
    """

    kernel: Path
    initrd: Path
    cmdline_template: str
    inputs_hash: str

    def cmdline(
        self,
        name: str,
        *,
        ip: str = DEFAULT_GUEST_IP,
        gw: str = DEFAULT_GUEST_GW,
        wdt_timeout: int | None = 2,
        feed_interval: float = 1.0,
        panic: int = 0,
    ) -> str:
        """The kernel command line for guest ``name``.

        ``wdt_timeout`` is the i6300esb timeout in seconds (the driver calls it
        "heartbeat"); ``None`` keeps the driver default of 30 s, the value a
        guest gets unless someone sets it. The feeder writes every
        ``feed_interval`` seconds. ``panic``: seconds before the kernel reboots
        after a panic; 0 (Debian's default) hangs, so the watchdog must act.
        """
        if not _NAME_RE.match(name):
            raise LabError(
                f"guest name {name!r} is not a DNS-1123 name (lower-case letters, digits, '-', '.')"
            )
        if wdt_timeout is not None and not 1 < wdt_timeout < 2046:
            raise LabError(f"i6300esb timeout {wdt_timeout} s is outside the driver's 2..2045 s")
        limit = 30 if wdt_timeout is None else wdt_timeout
        if not 0 < feed_interval < limit:
            raise LabError(
                f"watchdog feed interval {feed_interval} s must be above 0 and below the "
                f"{limit} s timeout, or the watchdog fires on a healthy guest"
            )
        for label, value in (("ip", ip), ("gw", gw)):
            if not value or any(c.isspace() for c in value):
                raise LabError(f"guest {label} {value!r} must be one non-empty word")
        return self.cmdline_template.format(
            name=name,
            ip=ip,
            gw=gw,
            wdt="default" if wdt_timeout is None else wdt_timeout,
            feed=f"{feed_interval:g}",
            panic=panic,
        )


# --- kernel ----------------------------------------------------------------------


def _xz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _lzma(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)


def _gzip(data: bytes) -> bytes:
    return zlib.decompressobj(wbits=31).decompress(data)


def _bzip2(data: bytes) -> bytes:
    return bz2.BZ2Decompressor().decompress(data)


def _cli(*argv: str) -> Callable[[bytes], bytes]:
    # zstd and lz4 have no decoder in Python 3.11's standard library; the
    # CLIs (Debian packages zstd, lz4) write the first frame and then complain
    # about the bytes after it, which is expected here: the ELF check decides.
    def run(data: bytes) -> bytes:
        if shutil.which(argv[0]) is None:
            raise LabError(
                f"the kernel payload needs {argv[0]!r} to decompress; apt-get install {argv[0]}"
            )
        proc = subprocess.run(argv, input=data, capture_output=True, check=False)
        return proc.stdout

    return run


# Magic bytes of each compressed payload the kernel supports (as in the
# kernel's scripts/extract-vmlinux), with its decoder.
_PAYLOADS: tuple[tuple[str, bytes, Callable[[bytes], bytes]], ...] = (
    ("gzip", b"\x1f\x8b\x08", _gzip),
    ("xz", b"\xfd7zXZ\x00", _xz),
    ("bzip2", b"BZh", _bzip2),
    ("lzma", b"\x5d\x00\x00\x00", _lzma),
    ("lzo", b"\x89LZO", _cli("lzop", "-dc")),
    ("lz4", b"\x02\x21\x4c\x18", _cli("lz4", "-dc")),
    ("zstd", b"\x28\xb5\x2f\xfd", _cli("zstd", "-dcq")),
)


def _candidates(image: bytes) -> Iterator[tuple[int, str, Callable[[bytes], bytes]]]:
    found = []
    for kind, magic, decode in _PAYLOADS:
        start = image.find(magic)
        while start != -1:
            found.append((start, kind, decode))
            start = image.find(magic, start + 1)
    yield from sorted(found, key=lambda item: item[0])


def extract_vmlinux(image: bytes) -> bytes:
    """The ELF ``vmlinux`` inside a bzImage (or ``image`` itself if already ELF).

    Tries every compressed payload magic in file order and keeps the first
    that decodes to an ELF file, like the kernel's scripts/extract-vmlinux.
    """
    if image.startswith(b"\x7fELF"):
        return image
    tried: list[str] = []
    for offset, kind, decode in _candidates(image):
        try:
            out = decode(image[offset:])
        except (lzma.LZMAError, zlib.error, OSError, EOFError, ValueError):
            # A magic inside unrelated bytes: not a payload, try the next.
            continue
        if out.startswith(b"\x7fELF"):
            return out
        tried.append(f"{kind}@{offset}")
    raise LabError(
        "no ELF vmlinux found inside the kernel image (tried "
        f"{', '.join(tried) or 'no compressed payload found'}); is it a bzImage?"
    )


# --- modules ---------------------------------------------------------------------


def _parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """modules.dep -> {module name: (relative path, [dependency paths])}."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[_module_name(path)] = (path, rest.split())
    return deps


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base)
    return base.replace("-", "_")


def module_load_order(modules_dep: str, wanted: Iterable[str]) -> list[str]:
    """Relative paths of ``wanted`` modules and their deps, dependencies first.

    modules.dep lists each module's full dependency closure, deepest last, so
    loading the list reversed before the module itself is a valid order.
    """
    deps = _parse_modules_dep(modules_dep)
    by_path = {path: name for name, (path, _) in deps.items()}
    order: list[str] = []
    for name in wanted:
        key = name.replace("-", "_")
        if key not in deps:
            raise LabError(
                f"kernel module {name!r} is not in modules.dep; is it built in, or is "
                "the matching linux-image package installed?"
            )
        path, closure = deps[key]
        for dep in [*reversed(closure), path]:
            if dep not in by_path:
                raise LabError(f"modules.dep names {dep!r} but has no entry for it")
            if dep not in order:
                order.append(dep)
    return order


_SIG_MAGIC = b"~Module signature appended~\n"


def _strip_signature(data: bytes) -> bytes:
    """A module without its appended signature (struct module_signature + magic).

    Without it the kernel skips the SHA/RSA check that costs tens of ms per
    module under TCG; it logs "module verification failed" and taints itself,
    which is fine for a lab guest (signatures are not enforced there).
    """
    if not data.endswith(_SIG_MAGIC):
        return data
    info_end = len(data) - len(_SIG_MAGIC)
    sig_len = int.from_bytes(data[info_end - 4 : info_end], "big")
    end = info_end - 12 - sig_len  # struct module_signature is 12 bytes
    if end <= 0:
        raise LabError("malformed module signature trailer")
    return data[:end]


def _read_module(path: Path) -> bytes:
    # Debian 12 ships them uncompressed; newer kernels compress them and the
    # guest's busybox insmod cannot, so decompress here.
    data = path.read_bytes()
    if path.suffix == ".xz":
        data = _xz(data)
    elif path.suffix == ".gz":
        data = _gzip(data)
    elif path.suffix == ".zst":
        data = _cli("zstd", "-dcq")(data)
    return _strip_signature(data)


# --- cpio ------------------------------------------------------------------------

_S_IFDIR = 0o040000
_S_IFREG = 0o100000
_S_IFLNK = 0o120000
_S_IFCHR = 0o020000


@dataclass(frozen=True)
class _Entry:
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def write_newc(entries: Iterable[_Entry]) -> bytes:
    """A newc ("070701") cpio archive, as the kernel unpacks for initramfs.

    Owners root, mtimes 0: the same inputs give the same bytes.
    """
    out = bytearray()
    ino = 1
    for entry in [*entries, _Entry("TRAILER!!!", 0)]:
        name = entry.name.encode() + b"\0"
        fields = (
            ino, entry.mode, 0, 0, 2 if entry.mode & _S_IFDIR else 1, 0,
            len(entry.data), 0, 0, entry.rdev[0], entry.rdev[1], len(name), 0,
        )  # fmt: skip
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out += header + name + _pad4(len(header) + len(name))
        out += entry.data + _pad4(len(entry.data))
        ino += 1
    return bytes(out)


def _busybox_applets(busybox: Path) -> list[str]:
    proc = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=False)
    applets = proc.stdout.split()
    if proc.returncode != 0 or "sh" not in applets:
        raise LabError(f"{busybox} --list failed or has no sh; apt-get install busybox-static")
    return applets


# --- build -----------------------------------------------------------------------


def _kernel_versions() -> list[str]:
    versions = [
        p.name.removeprefix("vmlinuz-")
        for p in BOOT_DIR.glob("vmlinuz-*")
        if (MODULES_ROOT / p.name.removeprefix("vmlinuz-") / "modules.dep").is_file()
    ]

    def key(version: str) -> list[int | str]:
        return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", version)]

    return sorted(versions, key=key)


def _assets() -> dict[str, bytes]:
    return {
        name: (ASSETS / name).read_bytes()
        for name in ("init.sh", "healthz.c", "control.sh", "build.py")
    }


# How healthz.c is built. Static: the initramfs has no ld.so or libc.so. -Os
# and -s: the binary is read from an uncompressed initramfs under TCG.
GCC = "gcc"
GCC_FLAGS = ("-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror")


def _gcc() -> str:
    gcc = shutil.which(GCC)
    if gcc is None:
        raise LabError(
            f"{GCC!r} not found: the guest's HTTP server is compiled from healthz.c; "
            "apt-get install gcc libc6-dev"
        )
    return gcc


def _compiler_identity() -> str:
    """What decides the compiled server besides its source: gcc and libc.a.

    A gcc or glibc upgrade changes the binary, so it is part of the image hash.
    """
    gcc = _gcc()
    try:
        version = subprocess.run(
            [gcc, "--version"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0]
        machine = subprocess.run(
            [gcc, "-dumpmachine"], capture_output=True, text=True, check=True
        ).stdout.strip()
        libc = subprocess.run(
            [gcc, "-print-file-name=libc.a"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError, IndexError) as exc:
        raise LabError(f"cannot ask {gcc} for its version: {exc}") from exc
    if not Path(libc).is_absolute() or not Path(libc).is_file():
        # gcc echoes the bare name back when it has no such file.
        raise LabError("no static libc (libc.a) for gcc -static: apt-get install libc6-dev")
    digest = hashlib.sha256(Path(libc).read_bytes()).hexdigest()
    return f"{version}\0{machine}\0{' '.join(GCC_FLAGS)}\0libc.a {digest}"


def _compile_healthz(source: bytes, workdir: Path) -> bytes:
    """healthz.c compiled to a static binary (bytes), in ``workdir``."""
    src = workdir / "healthz.c"
    out = workdir / "rto-healthz"
    src.write_bytes(source)
    proc = subprocess.run(
        [_gcc(), *GCC_FLAGS, "-o", str(out), str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise LabError(f"gcc could not build the guest's healthz server:\n{proc.stderr.strip()}")
    data = out.read_bytes()
    src.unlink()
    out.unlink()
    return data


@dataclass(frozen=True)
class _Inputs:
    version: str
    bzimage: bytes
    busybox: bytes
    modules: list[tuple[str, bytes]]  # (file name in the guest, contents)
    assets: dict[str, bytes]
    compiler: str  # see _compiler_identity

    def digest(self) -> str:
        h = hashlib.sha256(f"rto-guest format {FORMAT_VERSION}\0{self.version}\0".encode())
        h.update(f"compiler\0{self.compiler}\0".encode())
        parts = [
            ("bzimage", self.bzimage),
            ("busybox", self.busybox),
            *self.modules,
            *sorted(self.assets.items()),
        ]
        for label, data in parts:
            h.update(f"{label}\0{len(data)}\0".encode())
            h.update(data)
        return h.hexdigest()


def _gather(kernel_version: str | None) -> _Inputs:
    versions = _kernel_versions()
    if not versions:
        raise LabError(
            "no /boot/vmlinuz-* with matching /lib/modules/*/modules.dep; "
            "apt-get install linux-image-amd64"
        )
    version = kernel_version or versions[-1]
    if version not in versions:
        raise LabError(f"kernel {version!r} not installed; installed: {', '.join(versions)}")
    if not BUSYBOX.is_file():
        raise LabError(f"{BUSYBOX} is missing; apt-get install busybox-static")
    moddir = MODULES_ROOT / version
    order = module_load_order((moddir / "modules.dep").read_text(), GUEST_MODULES)
    modules = [(_module_name(rel) + ".ko", _read_module(moddir / rel)) for rel in order]
    return _Inputs(
        version=version,
        bzimage=(BOOT_DIR / f"vmlinuz-{version}").read_bytes(),
        busybox=BUSYBOX.read_bytes(),
        modules=modules,
        assets=_assets(),
        compiler=_compiler_identity(),
    )


def _initramfs(inputs: _Inputs, healthz: bytes) -> bytes:
    entries = [
        _Entry(d, _S_IFDIR | 0o755)
        for d in ("bin", "dev", "etc", "etc/rto", "lib", "lib/modules", "proc", "run", "sys")
    ]
    entries.append(_Entry("tmp", _S_IFDIR | 0o1777))
    # The kernel opens /dev/console for init before /init mounts devtmpfs.
    entries.append(_Entry("dev/console", _S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(_Entry("bin/busybox", _S_IFREG | 0o755, inputs.busybox))
    entries += [
        _Entry(f"bin/{applet}", _S_IFLNK | 0o777, b"busybox")
        for applet in _busybox_applets(BUSYBOX)
        if applet != "busybox"
    ]
    entries.append(_Entry("init", _S_IFREG | 0o755, inputs.assets["init.sh"]))
    entries.append(_Entry("bin/rto-healthz", _S_IFREG | 0o755, healthz))
    entries.append(_Entry("bin/rto-control", _S_IFREG | 0o755, inputs.assets["control.sh"]))
    listing = "".join(f"{name.removesuffix('.ko')} {name}\n" for name, _ in inputs.modules)
    entries.append(_Entry("etc/rto/modules", _S_IFREG | 0o644, listing.encode()))
    entries += [
        _Entry(f"lib/modules/{name}", _S_IFREG | 0o644, data) for name, data in inputs.modules
    ]
    return write_newc(entries)


def _image(directory: Path, digest: str) -> GuestImage:
    return GuestImage(
        kernel=directory / "vmlinux",
        initrd=directory / "initrd.cpio",
        cmdline_template=CMDLINE_TEMPLATE,
        inputs_hash=digest,
    )


def build_guest(out_dir: Path | None = None, *, kernel_version: str | None = None) -> GuestImage:
    """Build (or reuse) the guest for the newest installed kernel.

    Images live in ``<out_dir>/guest-<hash>/`` (``out_dir`` defaults to
    /var/lib/rto-lab/images); an existing directory for the same inputs hash
    is reused as is. Safe against concurrent builders: each builds in a temp
    directory and renames it into place.
    """
    root = out_dir if out_dir is not None else IMAGES_DIR
    inputs = _gather(kernel_version)
    digest = inputs.digest()
    final = root / f"guest-{digest[:16]}"
    if (final / "manifest.json").is_file():
        return _image(final, digest)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".guest-build-", dir=root))
        # mkdtemp makes it 0700; a hypervisor running as its own user must read it.
        tmp.chmod(0o755)
    except OSError as exc:
        raise LabError(f"cannot create the guest image directory under {root}: {exc}") from exc
    try:
        (tmp / "vmlinux").write_bytes(extract_vmlinux(inputs.bzimage))
        healthz = _compile_healthz(inputs.assets["healthz.c"], tmp)
        (tmp / "initrd.cpio").write_bytes(_initramfs(inputs, healthz))
        manifest = {
            "inputs_hash": digest,
            "kernel_version": inputs.version,
            "modules": [name for name, _ in inputs.modules],
            "cmdline_template": CMDLINE_TEMPLATE,
            "format": FORMAT_VERSION,
            "compiler": inputs.compiler.split("\0")[0],
        }
        # Written last: its presence marks a complete image.
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            # Another builder won the race (or a stale half-built dir exists
            # without a manifest): keep theirs if complete, else replace it.
            if not (final / "manifest.json").is_file():
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    except OSError as exc:
        raise LabError(f"cannot write the guest image in {root}: {exc}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _prune(root, keep=final)
    return _image(final, digest)


def _prune(root: Path, keep: Path, spare: int = 1) -> None:
    """Remove images of older inputs (~60 MB each) but the ``spare`` newest.

    One spare: a lab that is up may still start guests from the image it
    resolved before this build (an agent caches it), and a rebuild happens
    only when an input changed, so older ones are never used again.
    """
    old = sorted(
        (d for d in root.glob("guest-*") if d != keep and (d / "manifest.json").is_file()),
        key=lambda d: d.stat().st_mtime,
        reverse=True,
    )
    for d in old[spare:]:
        shutil.rmtree(d, ignore_errors=True)
