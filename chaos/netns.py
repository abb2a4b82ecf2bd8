"""Enter a named network namespace from one thread, without third-party code.

Used by the recorder's prober (``chaos.prober``), which must send its probes from
the namespace a ``ProbeTarget`` names (the lab's hub namespace). ``setns(2)`` on a
network namespace changes only the calling thread, so a prober thread can live in
the lab while the rest of the harness stays in the host namespace. ``chaos`` must
not import pyroute2 (it lives in ``cluster`` only), hence plain ctypes on libc.

Namespaces are the ones ``ip netns add`` creates: bind mounts under /run/netns.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from core.errors import LabError

__all__ = ["NETNS_DIR", "current_netns_fd", "enter_netns", "enter_netns_fd"]

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000

_libc: ctypes.CDLL | None = None


def _setns(fd: int, nstype: int) -> int:
    # libc is loaded lazily so importing the module never fails on odd systems.
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc.setns.restype = ctypes.c_int
    return int(_libc.setns(fd, nstype))


def enter_netns_fd(fd: int, what: str = "") -> None:
    """Move the calling thread into the network namespace open as ``fd``."""
    if _setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        hint = " (needs root / CAP_SYS_ADMIN)" if err == 1 else ""
        raise LabError(
            f"setns into network namespace {what or fd} failed: {os.strerror(err)}{hint}"
        )


def enter_netns(name: str) -> None:
    """Move the calling thread (only) into the network namespace ``name``.

    Sockets the thread creates afterwards live in that namespace; other threads
    are unaffected. Raises ``LabError`` if the namespace does not exist (is the
    lab up? ``ip netns list``) or setns is refused.
    """
    path = NETNS_DIR / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LabError(
            f"network namespace {name!r} not found at {path}: is the lab up? ({exc.strerror})"
        ) from exc
    try:
        enter_netns_fd(fd, name)
    finally:
        os.close(fd)


def current_netns_fd() -> int:
    """An fd on the calling thread's current network namespace (caller closes it).

    Lets a thread that entered another namespace come back later.
    """
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
