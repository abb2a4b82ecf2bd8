"""Which accelerator runs the lab's VMs: KVM only after the lab's guest booted on it.

Read by ``rto lab up`` (which prints the choice and records it for the
virt-handlers, ``cluster.lab.machines``), by ``cluster.lab.virt.domain_xml``
(libvirt domain type), by ``rto lab doctor`` and by the lab backend, whose VMI
result rows carry the answer.

``/dev/kvm`` existing, or QEMU's BIOS still running after a moment under KVM,
proves nothing: on some machines of this kind KVM runs the BIOS, QEMU warns
``host doesn't support requested feature: CPUID.01H:ECX.pni``, and the Linux
guest then never prints a line (docs/LAB-NOTES.md). So the test is the real
thing: boot the lab's own guest under KVM and wait, within a bound, for its
``RTO-GUEST-READY`` marker (its health server is up). Seen: KVM is used;
not seen: TCG, with the reason. The verdict is cached per machine, keyed by
kernel release, CPU model and QEMU version (a change of any of them can change
the answer), in ``STATE_DIR/accel.json``.

``RTO_LAB_ACCEL=tcg`` forces TCG without a boot; ``RTO_LAB_ACCEL=kvm`` insists
on KVM: the guest must still boot under it (cached or now), otherwise the lab
refuses with one line instead of starting guests that hang.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cluster.lab import state
from cluster.lab.guest.build import READY_MARKER, build_guest
from cluster.lab.guest.qemu import GuestOptions, QemuGuest
from core.errors import HarnessError, LabError

__all__ = [
    "ACCEL_ENV",
    "PROBE_TIMEOUT_S",
    "AccelChoice",
    "KvmProbe",
    "accelerator",
    "cache_path",
    "choose_accelerator",
    "machine_key",
    "probe_kvm",
]

ACCEL_ENV = "RTO_LAB_ACCEL"
# Under TCG this guest prints its marker at ~2-5 s of wall time on 2 cores;
# under a working KVM it is faster. A KVM that has not booted it in 15 s is of
# no use to the lab, whatever the reason.
PROBE_TIMEOUT_S = 15.0

Accel = Literal["kvm", "tcg"]


@dataclass(frozen=True)
class KvmProbe:
    """The outcome of one boot of the lab guest under KVM."""

    booted: bool
    reason: str  # why not, or how long the boot took
    boot_s: float | None = None  # start .. READY marker, when it booted


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator the lab uses, and how it was chosen."""

    accel: Accel
    source: Literal["forced", "cached", "probed"]
    reason: str

    @property
    def libvirt_type(self) -> str:
        """The ``<domain type=...>`` for this choice ("qemu" is libvirt's TCG)."""
        return "kvm" if self.accel == "kvm" else "qemu"

    def describe(self) -> str:
        """One line for `rto lab up`, `rto lab doctor` and the logs."""
        return f"{self.accel} ({self.source}: {self.reason})"


# --- the machine key and its cache -------------------------------------------------


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return "unknown"
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else "unknown"


def _qemu_version(qemu: str = "qemu-system-x86_64") -> str:
    try:
        proc = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "none"
    return proc.stdout.splitlines()[0].strip() if proc.stdout else "none"


def machine_key() -> str:
    """What the verdict depends on: kernel release, CPU model, QEMU version."""
    return f"{platform.release()} | {_cpu_model()} | {_qemu_version()}"


def cache_path() -> Path:
    return Path(state.STATE_DIR) / "accel.json"


def _read_cache(path: Path, key: str) -> KvmProbe | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entry = doc[hashlib.sha256(key.encode()).hexdigest()[:16]]
        return KvmProbe(
            booted=bool(entry["booted"]), reason=str(entry["reason"]), boot_s=entry.get("boot_s")
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no cache, or one this code cannot read: probe again


def _write_cache(path: Path, key: str, probe: KvmProbe) -> None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            doc = {}
    except (OSError, ValueError):
        doc = {}
    doc[hashlib.sha256(key.encode()).hexdigest()[:16]] = {
        **asdict(probe),
        "key": key,
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


# --- the probe -----------------------------------------------------------------------


def _kvm_device_opens() -> str | None:
    """None if /dev/kvm opens read-write, else why not."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/kvm: {exc.strerror or exc}"
    os.close(fd)
    return None


def probe_kvm(timeout: float = PROBE_TIMEOUT_S, *, extra_cmdline: tuple[str, ...] = ()) -> KvmProbe:
    """Boot the lab's guest under KVM; booted only if its READY marker came in time.

    ``extra_cmdline`` is for tests (a guest that never reaches its marker).
    Builds (or reuses) the guest image; the QEMU process is always killed.
    """
    missing = _kvm_device_opens()
    if missing is not None:
        return KvmProbe(False, missing)
    image = build_guest()
    options = GuestOptions(name="kvm-probe", accel="kvm", extra_cmdline=extra_cmdline)
    with tempfile.TemporaryDirectory(prefix="rto-kvm-probe-") as tmp:
        guest = QemuGuest(image, Path(tmp), options, disk_mib=None)
        t0 = time.monotonic()
        try:
            with guest:
                guest.wait_ready(timeout)
        except HarnessError as exc:
            return KvmProbe(False, _why_not(Path(tmp), str(exc), timeout))
        return KvmProbe(True, "the lab's guest booted under KVM", round(time.monotonic() - t0, 2))


def _lines(path: Path) -> list[str]:
    with contextlib.suppress(OSError):
        return [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return []


def _why_not(workdir: Path, error: str, timeout: float) -> str:
    """One sentence: what the guest did under KVM instead of booting."""
    if error.startswith("QEMU exited"):
        what = error.splitlines()[0]
    else:
        console = _lines(workdir / "console.log")
        what = f"the lab's guest printed no {READY_MARKER} within {timeout:g} s under KVM" + (
            f" (last console line: {console[-1][:120]!r})" if console else ", nor anything else"
        )
    warnings = "; ".join(dict.fromkeys(_lines(workdir / "qemu.stderr")))[:300]
    return what + (f"; QEMU said: {warnings}" if warnings else "")


# --- the choice ----------------------------------------------------------------------


def choose_accelerator(
    *,
    env: Mapping[str, str] | None = None,
    cache: Path | None = None,
    probe: Callable[[], KvmProbe] = probe_kvm,
    key: Callable[[], str] = machine_key,
) -> AccelChoice:
    """Decide KVM or TCG (see the module docstring); LabError on a bad override."""
    environ = os.environ if env is None else env
    forced = environ.get(ACCEL_ENV, "").strip().lower()
    if forced not in ("", "kvm", "tcg"):
        raise LabError(
            f"{ACCEL_ENV}={environ[ACCEL_ENV]!r} is not an accelerator: use kvm or tcg, "
            "or unset it to let the lab boot a guest under KVM and decide"
        )
    if forced == "tcg":
        return AccelChoice("tcg", "forced", f"{ACCEL_ENV}=tcg")
    path = cache or cache_path()
    machine = key()
    result = _read_cache(path, machine)
    source: Literal["cached", "probed"] = "cached"
    if result is None:
        result = probe()
        source = "probed"
        _write_cache(path, machine, result)
    if result.booted:
        took = f" in {result.boot_s} s" if result.boot_s is not None else ""
        return AccelChoice("kvm", "forced" if forced else source, f"{result.reason}{took}")
    if forced == "kvm":
        raise LabError(
            f"{ACCEL_ENV}=kvm, but KVM cannot run the lab's guest on this machine: "
            f"{result.reason}; unset {ACCEL_ENV} (the lab then uses TCG) or set it to tcg"
        )
    return AccelChoice("tcg", source, f"KVM not usable, {result.reason}")


@functools.cache
def accelerator() -> AccelChoice:
    """The process-wide choice (probes at most once per machine, then the cache)."""
    return choose_accelerator()
