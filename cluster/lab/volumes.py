"""Pod volumes: a loop-mounted ext4 image per pod, and the storage faults on it.

Called by the lab's backend (``ensure_volume`` before a pod's Deployment, whose
hostPath it is), by the virt-handlers (a VMI's disk file lives on one), by the
storage-lost fault (``freeze``/``thaw`` = writes hang, ``shutdown`` = writes
get EIO at once), by healers (``repair``) and by ``lab_down``
(``destroy_volume``, ``lab_volumes``). A volume follows its pod like network
storage: the image ``<STATE_DIR>/volumes/<pod>.img`` is mounted once on the
host at ``<STATE_DIR>/volumes/<pod>/mnt`` and bind-mounted into whichever
container runs the pod.

Loop devices are attached explicitly (``losetup --find``) rather than with
``mount -o loop``: after a shutdown the dead superblock lives on in the
containers that still bind it, and mounting the *same* loop device again
would hand back that dead superblock. ``repair`` therefore always mounts a
new loop device. Frozen/shut-down state is kept in marker files beside the
image because the kernel does not expose it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import subprocess
from pathlib import Path

from cluster.lab import state
from core.errors import LabError

__all__ = [
    "EXT4_GOING_FLAGS_NOLOGFLUSH",
    "EXT4_IOC_SHUTDOWN",
    "SIZE_MIB",
    "destroy_volume",
    "ensure_volume",
    "freeze",
    "image_path",
    "is_frozen",
    "is_mounted",
    "is_shut_down",
    "lab_volumes",
    "mountpoint",
    "repair",
    "share_volumes_dir",
    "shutdown",
    "thaw",
]

SIZE_MIB = 32
# linux/fs/ext4/ext4.h: _IOR('X', 125, __u32); flag 2 = drop the journal, no flush.
EXT4_IOC_SHUTDOWN = 0x8004587D
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


def _vol_dir() -> Path:
    return state.STATE_DIR / "volumes"


def share_volumes_dir() -> Path:
    """Make the volumes directory a shared mount (idempotent); the directory.

    Other mount namespaces copy the host's mounts when they are made: the
    lab's libvirtd (and so QEMU) and each real node's namespace. Where the
    host's / is private (no systemd), a volume mounted later would reach none
    of them. A shared bind of the directory onto itself propagates every later
    (u)mount below it into their (slave) copies, and nothing made there back.
    ``lab_down`` unmounts it with everything else under the state dir.
    """
    d = _vol_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open("/proc/self/mountinfo") as f:
        # field 5: the mount point; then optional fields ("shared:N") up to "-".
        rows = [line.split() for line in f]
    mine = [r for r in rows if r[4] == str(d)]
    if mine and any(o.startswith("shared:") for o in mine[-1][6 : mine[-1].index("-")]):
        return d
    if not mine:
        _run(["mount", "--bind", str(d), str(d)], f"bind {d} onto itself")
    _run(["mount", "--make-shared", str(d)], f"make {d} a shared mount")
    return d


def image_path(pod: str) -> Path:
    return _vol_dir() / f"{pod}.img"


def mountpoint(pod: str) -> Path:
    return _vol_dir() / pod / "mnt"


def _marker(pod: str, what: str) -> Path:
    return _vol_dir() / pod / what


def _run(cmd: list[str], what: str, ok: tuple[int, ...] = (0,)) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError:
        raise LabError(f"{cmd[0]} is missing: install util-linux and e2fsprogs") from None
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{what}: `{' '.join(cmd)}` hung for 60 s") from exc
    if res.returncode not in ok:
        raise LabError(f"{what}: `{' '.join(cmd)}` failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def is_mounted(pod: str) -> bool:
    target = str(mountpoint(pod))
    with open("/proc/self/mountinfo") as f:
        # field 5 is the mount point (octal escapes only for odd characters).
        return any(line.split()[4] == target for line in f)


def _mount_fresh(pod: str) -> None:
    mnt = mountpoint(pod)
    mnt.mkdir(parents=True, exist_ok=True)
    dev = _run(["losetup", "--find", "--show", str(image_path(pod))], f"volume {pod}").strip()
    try:
        _run(["mount", "-t", "ext4", dev, str(mnt)], f"mount volume {pod}")
    except LabError:
        _run(["losetup", "-d", dev], f"volume {pod}", ok=(0, 1))
        raise
    # Detach as soon as it is unmounted (lazily, after the last user is gone).
    _run(["losetup", "-d", dev], f"volume {pod}", ok=(0, 1))


def ensure_volume(pod: str) -> Path:
    """Create (first time) and mount the pod's volume; returns the mountpoint."""
    img = image_path(pod)
    img.parent.mkdir(parents=True, exist_ok=True)
    if not img.exists():
        tmp = img.with_suffix(".img.tmp")
        with open(tmp, "wb") as f:
            f.truncate(SIZE_MIB * 1024 * 1024)
        _run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(tmp)], f"volume {pod}")
        tmp.rename(img)
    if not is_mounted(pod):
        _mount_fresh(pod)
    return mountpoint(pod)


def freeze(pod: str) -> None:
    """Writes to the volume hang until ``thaw`` (fsfreeze; idempotent)."""
    if is_frozen(pod):
        return
    _need_mounted(pod)
    _run(["fsfreeze", "-f", str(mountpoint(pod))], f"freeze volume {pod}")
    _marker(pod, "frozen").touch()


def thaw(pod: str) -> None:
    if not is_frozen(pod):
        return
    if is_mounted(pod):
        # "Invalid argument" = not frozen any more (e.g. repaired meanwhile).
        with contextlib.suppress(LabError):
            _run(["fsfreeze", "-u", str(mountpoint(pod))], f"thaw volume {pod}")
    _marker(pod, "frozen").unlink(missing_ok=True)


def is_frozen(pod: str) -> bool:
    return _marker(pod, "frozen").exists()


def is_shut_down(pod: str) -> bool:
    return _marker(pod, "shutdown").exists()


def _need_mounted(pod: str) -> None:
    if not is_mounted(pod):
        raise LabError(f"volume of pod {pod} is not mounted (ensure_volume first)")


def shutdown(pod: str) -> None:
    """Kill the filesystem (EXT4_IOC_SHUTDOWN): every I/O gets EIO at once."""
    if is_shut_down(pod):
        return
    _need_mounted(pod)
    fd = os.open(mountpoint(pod), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
    except OSError as exc:
        raise LabError(f"EXT4_IOC_SHUTDOWN on volume {pod} failed: {exc}") from exc
    finally:
        os.close(fd)
    _marker(pod, "shutdown").touch()


def _umount(pod: str) -> None:
    if is_mounted(pod):
        if is_frozen(pod):
            # A frozen fs would keep its writers hung forever: thaw first.
            with contextlib.suppress(LabError):
                _run(["fsfreeze", "-u", str(mountpoint(pod))], f"thaw volume {pod}")
        _run(["umount", "-l", str(mountpoint(pod))], f"unmount volume {pod}")
    _marker(pod, "frozen").unlink(missing_ok=True)


def repair(pod: str) -> None:
    """Bring a frozen or shut-down volume back: unmount, fsck, mount a new loop.

    Containers still bind the old mount: the caller restarts them afterwards.
    """
    if not image_path(pod).exists():
        raise LabError(f"pod {pod} has no volume image to repair")
    _umount(pod)
    # e2fsck: 0 clean, 1 fixed, 2 fixed + reboot advised; 4+ real trouble.
    _run(["e2fsck", "-fy", str(image_path(pod))], f"fsck volume {pod}", ok=(0, 1, 2))
    _mount_fresh(pod)
    _marker(pod, "shutdown").unlink(missing_ok=True)


def destroy_volume(pod: str) -> None:
    """Unmount and delete the volume (idempotent)."""
    _umount(pod)
    img = image_path(pod)
    if img.exists():
        # Loop devices still held by the dead mount detach when it goes away.
        out = _run(["losetup", "-j", str(img), "-O", "NAME", "-n"], f"volume {pod}", ok=(0, 1))
        for dev in out.split():
            _run(["losetup", "-d", dev], f"volume {pod}", ok=(0, 1))
        img.unlink()
    d = _vol_dir() / pod
    for what in ("frozen", "shutdown"):
        _marker(pod, what).unlink(missing_ok=True)
    for p in (d / "mnt", d):
        with contextlib.suppress(FileNotFoundError, OSError):
            p.rmdir()


def lab_volumes() -> list[str]:
    """Pods that have a volume image."""
    d = _vol_dir()
    if not d.is_dir():
        return []
    return sorted(p.name[: -len(".img")] for p in d.glob("*.img"))
