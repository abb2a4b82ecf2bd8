"""``rto lab doctor``: what this machine can do for the lab, found by doing it.

Read by the CLI (``rto lab doctor``) and by the test suite's session header, so
a failed run on a new machine starts with the answer to "what is different
here?". Every check does the real thing in a throw-away form and undoes it: a
network namespace is made, given an nft table and removed; a loop device is
attached to a scratch file and detached; a cgroup is made and removed in the
freezer hierarchy; libvirt's test driver is opened; the accelerator is the
lab's own choice (``cluster.lab.accel``: a guest boot under KVM, cached).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cluster.lab import accel, cgroups, state
from cluster.lab.kube.paths import bin_dir
from core.errors import HarnessError

__all__ = ["Check", "format_checks", "run_checks"]

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    """One line of the doctor's answer."""

    name: str
    level: Level
    detail: str


def _run(argv: list[str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


# --- the checks --------------------------------------------------------------------


def check_accelerator() -> Check:
    choice = accel.accelerator()
    # TCG is a working answer (every VM figure is then a TCG figure), not a fault.
    level: Level = "ok" if choice.accel == "kvm" else "warn"
    return Check("accelerator", level, choice.describe())


def check_cgroups() -> Check:
    root = cgroups.CGROUP_ROOT
    if cgroups.is_v2():
        controllers = (root / "cgroup.controllers").read_text().split()
        layout = f"v2 unified at {root} ({', '.join(controllers)})"
        scratch = root / f"rto-doctor-{os.getpid()}"
    else:
        names = sorted(p.name for p in root.iterdir() if (p / "cgroup.procs").exists())
        unified = root / "unified"
        layout = f"v1 ({', '.join(n for n in names if n != 'unified')})"
        if (unified / "cgroup.procs").exists():
            layout += f" + cgroup2 at {unified}"
        scratch = root / "freezer" / f"rto-doctor-{os.getpid()}"
    try:
        scratch.mkdir()
        scratch.rmdir()
    except OSError as exc:
        return Check("cgroups", "fail", f"{layout}; cannot make a cgroup at {scratch}: {exc}")
    return Check("cgroups", "ok", f"{layout}; made and removed a cgroup")


def check_netns() -> Check:
    from pyroute2 import netns

    name = f"rto-doctor-{os.getpid()}"
    t0 = time.monotonic()
    try:
        netns.create(name)
    except OSError as exc:
        return Check("netns", "fail", f"cannot create a network namespace: {exc}")
    try:
        nft = _run(["ip", "netns", "exec", name, "nft", "add", "table", "inet", "rto_doctor"])
        took = (time.monotonic() - t0) * 1000
    finally:
        with contextlib.suppress(OSError):
            netns.remove(name)
    if nft.returncode != 0:
        return Check("netns", "fail", f"netns ok, but nft in it failed: {_first_line(nft.stderr)}")
    return Check(
        "netns", "ok", f"made a network namespace with an nft table and removed it ({took:.0f} ms)"
    )


def check_loop() -> Check:
    with tempfile.NamedTemporaryFile(prefix="rto-doctor-", suffix=".img") as f:
        f.truncate(1024 * 1024)
        f.flush()
        attach = _run(["losetup", "--find", "--show", f.name])
        if attach.returncode != 0:
            return Check("loop", "fail", f"losetup failed: {_first_line(attach.stderr)}")
        dev = attach.stdout.strip()
        detach = _run(["losetup", "-d", dev])
    if detach.returncode != 0:
        return Check(
            "loop", "fail", f"attached {dev} but cannot detach it: {detach.stderr.strip()}"
        )
    return Check("loop", "ok", f"attached and detached a loop device ({dev})")


def check_libvirt() -> Check:
    daemon = shutil.which("libvirtd")
    if daemon is None:
        return Check("libvirt", "fail", "no libvirtd: apt-get install libvirt-daemon-system")
    try:
        import libvirt
    except ImportError:
        return Check("libvirt", "fail", "libvirt-python missing: pip install '.[vm]'")
    version = _first_line(_run([daemon, "--version"]).stdout)
    try:
        conn = libvirt.open("test:///default")
        conn.close()
    except libvirt.libvirtError as exc:
        return Check("libvirt", "fail", f"{version}; the test driver does not open: {exc}")
    binding = libvirt.getVersion()
    return Check(
        "libvirt",
        "ok",
        f"{version}, python binding {binding // 1000000}.{binding // 1000 % 1000}; "
        "test driver opened (node daemons start at `lab up --vms`)",
    )


def check_runtimes() -> Check:
    found = []
    for tool in ("runc", "qemu-system-x86_64"):
        path = shutil.which(tool)
        if path is None:
            return Check("runtimes", "fail", f"{tool} missing: run scripts/install.sh")
        found.append(_first_line(_run([path, "--version"]).stdout))
    return Check("runtimes", "ok", "; ".join(found))


def check_images() -> Check:
    images = Path(state.STATE_DIR) / "images"
    rootfs = (images / "busybox-rootfs").is_dir()
    guests = sorted(images.glob("guest-*"))
    if rootfs and guests:
        return Check("images", "ok", f"pod rootfs and VM guest {guests[-1].name} in {images}")
    return Check("images", "warn", f"not built yet in {images}: `rto lab images` builds them")


KUBE_BIN = bin_dir()
KUBE_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet",
                 "containerd")  # fmt: skip


def check_kubernetes() -> Check:
    # What scripts/build-kube.sh built, each asked for its version; and, so a
    # reader of a failing run knows which control plane ran, what the lab uses.
    model = (
        "`rto lab up` runs them as the lab's cluster (pods on its kubelets; with --vms, "
        "VMIs as KubeVirt objects reconciled by the lab's virt-controller and "
        "virt-handlers, cluster/lab/kube/virt_*.py); no part of the lab imitates "
        "a Kubernetes component any more"
    )
    missing = [b for b in KUBE_BINARIES if not (KUBE_BIN / b).is_file()]
    if missing:
        return Check(
            "kubernetes",
            "warn",
            f"not built in {KUBE_BIN}: {', '.join(missing)} (bash scripts/build-kube.sh); {model}",
        )
    versions = []
    for name in ("kube-apiserver", "etcd", "containerd"):
        line = _first_line(_run([str(KUBE_BIN / name), "--version"]).stdout)
        versions.append(line.replace("github.com/containerd/containerd/v2 ", "").strip())
    return Check(
        "kubernetes",
        "ok",
        f"{'; '.join(versions)} built in {KUBE_BIN} (kube tests run a real apiserver); {model}",
    )


CHECKS: tuple[Callable[[], Check], ...] = (
    check_accelerator,
    check_cgroups,
    check_netns,
    check_loop,
    check_libvirt,
    check_runtimes,
    check_images,
    check_kubernetes,
)


def run_checks(checks: tuple[Callable[[], Check], ...] = CHECKS) -> list[Check]:
    """Every check, in order; one that raises becomes a ``fail`` line."""
    out: list[Check] = []
    for check in checks:
        name = check.__name__.removeprefix("check_")
        try:
            out.append(check())
        except (HarnessError, OSError, subprocess.SubprocessError) as exc:
            out.append(Check(name, "fail", f"{type(exc).__name__}: {exc}".splitlines()[0]))
    return out


def format_checks(checks: list[Check]) -> list[str]:
    """The lines ``rto lab doctor`` prints (plain text, no markup)."""
    head = f"lab doctor: kernel {platform.release()}, {os.cpu_count()} cores"
    width = max(len(c.name) for c in checks)
    return [head] + [f"  {c.level:<4} {c.name:<{width}}  {c.detail}" for c in checks]
