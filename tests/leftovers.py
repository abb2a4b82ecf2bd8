"""The machine check: what lab objects exist on this machine right now.

Filled by nobody: it reads the kernel's view (``/proc``, ``/sys``, ``/run/netns``,
``nft``, ``iptables-save``). Read by the session fixture in ``tests/conftest.py``
(snapshot before the session, snapshot after, fail the run with ``diff``) and by
``tests/test_leftovers.py``, which proves the check can fail. Users of Chaos Mesh
report network rules left behind after crashes; this is how the suite shows it
leaves nothing behind: netns, nft tables, iptables rules, mounts, frozen
filesystems, cgroups, loop devices, processes.

``snapshot`` returns ``{category: {item, ...}}``; items are plain strings that
name the object (and the netns it lives in), so a diff is a set difference.
What could not be checked (a tool missing, not root) goes under ``unchecked``
rather than being skipped silently; ``diff`` ignores that category.

Frozen filesystems: the kernel exposes no freeze flag, so the check asks the
filesystem itself with FIFREEZE on each lab mount: EBUSY means it is frozen;
success means it was not, and it is thawed again at once (FITHAW). This is a
real freeze of an idle lab volume for microseconds; ``probe_frozen=False``
skips it and only lists the mounts.
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "CATEGORIES",
    "CGROUPS",
    "FROZEN",
    "IPTABLES",
    "LAB_DIRS",
    "LOOP_DEVICES",
    "MOUNTS",
    "NETNS",
    "NFT_TABLES",
    "PROCESSES",
    "UNCHECKED",
    "diff",
    "format_leftovers",
    "snapshot",
]

NETNS = "netns"
NFT_TABLES = "nft_tables"
IPTABLES = "iptables"
MOUNTS = "mounts"
FROZEN = "frozen"
CGROUPS = "cgroups"
LOOP_DEVICES = "loop_devices"
PROCESSES = "processes"
UNCHECKED = "unchecked"
CATEGORIES = (NETNS, NFT_TABLES, IPTABLES, MOUNTS, FROZEN, CGROUPS, LOOP_DEVICES, PROCESSES)

# cluster.lab.state.STATE_DIR and RUN_DIR, spelled out so the check does not
# depend on the code it checks.
LAB_DIRS: tuple[Path, ...] = (Path("/var/lib/rto-lab"), Path("/run/rto-lab"))
LAB_ADDRESS = "198.18."  # the lab's range 198.18.0.0/15 as it prints in rules
LAB_MODULES = ("cluster.lab.kube.virt_controller", "cluster.lab.kube.virt_handler")

_FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
_FITHAW = 0xC0045878  # _IOWR('X', 120, int)
_TOOL_TIMEOUT = 15.0
_PROBE_TIMEOUT = 5.0


def snapshot(
    lab_dirs: Sequence[Path] = LAB_DIRS,
    netns_prefix: str = "rto-",
    nft_prefix: str = "rto",
    cgroup_prefix: str = "rto-lab",
    probe_frozen: bool = True,
) -> dict[str, set[str]]:
    """Every lab object on the machine now, by category (see module docstring).

    ``lab_dirs``: where lab mounts, loop backing files and runtime roots live
    (tests pass a temporary directory); the prefixes name netns, nft tables
    and cgroups of the lab.
    """
    dirs = [str(Path(d)) for d in lab_dirs]
    out: dict[str, set[str]] = {c: set() for c in (*CATEGORIES, UNCHECKED)}
    namespaces = _netns(netns_prefix)
    out[NETNS] = set(namespaces)
    for ns in (None, *namespaces):
        _nft_tables(ns, nft_prefix, out)
        _iptables(ns, out)
    mounts = _lab_mounts(dirs)
    out[MOUNTS] = {f"{target} ({fstype} from {source})" for target, fstype, source in mounts}
    if probe_frozen:
        for target, _fstype, _source in mounts:
            _probe_frozen(target, out)
    out[CGROUPS] = _cgroups(cgroup_prefix)
    out[LOOP_DEVICES] = _loop_devices(dirs)
    out[PROCESSES] = _processes(dirs, cgroup_prefix)
    return out


def diff(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, set[str]]:
    """What ``after`` has that ``before`` had not: the objects left behind.

    Only non-empty categories are returned, so ``if diff(...)`` means "leftovers".
    ``unchecked`` is not a leftover and is ignored.
    """
    left = {c: after.get(c, set()) - before.get(c, set()) for c in after if c != UNCHECKED}
    return {c: items for c, items in left.items() if items}


def format_leftovers(left: dict[str, set[str]], unchecked: Iterable[str] = ()) -> str:
    """A message a user can act on: every object, and how to clean up."""
    lines = [f"{c}:\n" + "\n".join(f"  {i}" for i in sorted(items)) for c, items in left.items()]
    skipped = sorted(unchecked)
    if skipped:
        lines.append("not checked:\n" + "\n".join(f"  {i}" for i in skipped))
    lines.append("clean up with `rto lab down` (or see tests/leftovers.py for what is checked)")
    return "\n".join(lines)


# --- the checks ------------------------------------------------------------------


def _run(argv: list[str], netns: str | None) -> subprocess.CompletedProcess[str]:
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=_TOOL_TIMEOUT, check=False)


def _where(netns: str | None) -> str:
    return "root" if netns is None else netns


def _tool(argv: list[str], netns: str | None, out: dict[str, set[str]]) -> str | None:
    """stdout of a tool, or None with the reason under ``unchecked``."""
    try:
        proc = _run(argv, netns)
    except FileNotFoundError:
        out[UNCHECKED].add(f"{argv[0]}: not installed")
        return None
    except subprocess.TimeoutExpired:
        out[UNCHECKED].add(f"{argv[0]} in {_where(netns)}: timed out")
        return None
    if proc.returncode != 0:
        if netns is not None and not Path("/run/netns", netns).exists():
            return None  # the namespace went away while we looked: nothing left there
        first = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[0]
        out[UNCHECKED].add(f"{argv[0]} in {_where(netns)}: {first}")
        return None
    return proc.stdout


def _netns(prefix: str) -> list[str]:
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def _nft_tables(netns: str | None, prefix: str, out: dict[str, set[str]]) -> None:
    text = _tool(["nft", "list", "tables"], netns, out)
    for line in (text or "").splitlines():
        parts = line.split()  # "table inet rto_chaos"
        if len(parts) == 3 and parts[0] == "table" and parts[2].startswith(prefix):
            out[NFT_TABLES].add(f"{_where(netns)}: {parts[1]} {parts[2]}")


def _iptables(netns: str | None, out: dict[str, set[str]]) -> None:
    text = _tool(["iptables-save"], netns, out)
    for line in (text or "").splitlines():
        if LAB_ADDRESS in line and not line.startswith("#"):
            out[IPTABLES].add(f"{_where(netns)}: {line.strip()}")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return field.encode().decode("unicode_escape")


def _under(path: str, dirs: Sequence[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def _lab_mounts(dirs: Sequence[str]) -> list[tuple[str, str, str]]:
    """(mount point, fs type, source) of every mount under a lab dir."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        target = _unescape(left.split()[4])
        fstype, source = [*right.split(), "", ""][:2]
        if _under(target, dirs):
            found.append((target, fstype, _unescape(source)))
    return found


def _probe_frozen(target: str, out: dict[str, set[str]]) -> None:
    # In a thread with a deadline: FIFREEZE first syncs the filesystem, which can
    # take long under a leftover blkio throttle; the check must not hang on it.
    result: list[tuple[str, str]] = []
    probe = threading.Thread(
        target=_freeze_probe, args=(target, result), name="leftovers-freeze-probe", daemon=True
    )
    probe.start()
    probe.join(_PROBE_TIMEOUT)
    if probe.is_alive():
        out[UNCHECKED].add(f"frozen? {target}: no answer in {_PROBE_TIMEOUT:g} s (slow sync?)")
        return
    for category, item in result:
        out[category].add(item)


def _freeze_probe(target: str, result: list[tuple[str, str]]) -> None:
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        result.append((UNCHECKED, f"frozen? {target}: {exc.strerror}"))
        return
    try:
        try:
            fcntl.ioctl(fd, _FIFREEZE, 0)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                result.append((FROZEN, target))
            else:  # not freezable (tmpfs, a shut-down ext4, not root): say so
                result.append((UNCHECKED, f"frozen? {target}: {exc.strerror}"))
            return
        fcntl.ioctl(fd, _FITHAW, 0)  # it was not frozen: undo our probe at once
    finally:
        os.close(fd)


def _cgroup_mounts() -> list[Path]:
    roots = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] in (["cgroup"], ["cgroup2"]):
            roots.append(Path(_unescape(left.split()[4])))
    return roots


def _cgroups(prefix: str) -> set[str]:
    found: set[str] = set()
    for root in _cgroup_mounts():
        try:
            tops = [e for e in os.scandir(root) if e.is_dir() and e.name.startswith(prefix)]
        except OSError:
            continue
        for top in tops:
            for dirpath, _dirs, _files in os.walk(top.path):
                found.add(dirpath)
    return found


def _loop_devices(dirs: Sequence[str]) -> set[str]:
    found = set()
    for dev in Path("/sys/block").glob("loop*"):
        try:
            backing = (dev / "loop" / "backing_file").read_text().strip()
        except OSError:  # no "loop" dir: the device is not attached
            continue
        path = backing.removesuffix(" (deleted)")
        if _under(path, dirs):
            found.add(f"/dev/{dev.name} -> {backing}")
    return found


def _processes(dirs: Sequence[str], cgroup_prefix: str) -> set[str]:
    found = set()
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            groups = (entry / "cgroup").read_text()
            comm = (entry / "comm").read_text().strip()
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        if stat[stat.rfind(")") + 2 :].startswith("Z"):
            # Dead already: a killed pod's process reparented to pid 1, which
            # reaps when it gets to it. Nothing of it is left to clean up.
            continue
        cmd = " ".join(a.decode(errors="replace") for a in argv if a)
        why = _process_reason(cmd, groups, dirs, cgroup_prefix)
        if not why and comm == "libvirtd":
            why = _libvirtd_reason(entry, dirs)
        if why:
            found.add(f"pid {entry.name} [{why}] {cmd[:160] or comm}")
    return found


def _libvirtd_reason(entry: Path, dirs: Sequence[str]) -> str:
    """A node libvirtd's command line names no lab path (its config lives at
    /etc/libvirt inside its own mount namespace), but its private directories
    are bind mounts of lab directories: look there."""
    try:
        mounts = (entry / "mountinfo").read_text()
    except OSError:
        return ""
    return "lab libvirtd" if any(d in mounts for d in dirs) else ""


def _process_reason(cmd: str, groups: str, dirs: Sequence[str], cgroup_prefix: str) -> str:
    if any(m in cmd for m in LAB_MODULES):
        return "lab daemon"
    # runc --root /run/rto-lab/..., a lab libvirtd/QEMU with its sockets and
    # disks there, anything else started on lab paths
    if any(d in cmd for d in dirs):
        return "lab path"
    for line in groups.splitlines():  # "4:pids:/rto-lab/node1/web"
        path = line.split(":", 2)[-1]
        if path.lstrip("/").startswith(cgroup_prefix):
            return "lab cgroup"
    return ""
