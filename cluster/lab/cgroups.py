"""Node cgroups: where every process of a lab node lives, and node power-off.

Called by ``lifecycle.lab_up`` (create, attach each node daemon before it
execs), by the node power-off fault (``kill_node``) and by ``lab_down``
(``delete_node_cgroup``). Every process of a node (containerd, kubelet, shims,
containers, libvirtd, QEMUs, virt-handler) lives under ``rto-lab/<node>`` in
each hierarchy: the kubelet's own pod cgroups are made below it.

cgroup v1 (this machine: one hierarchy per controller) and cgroup v2 (when
``/sys/fs/cgroup/cgroup.controllers`` exists) are both handled. Power-off is
freeze, SIGKILL every pid under the node, thaw, remove the child cgroups: a
frozen cgroup cannot fork, so no process escapes the kill.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
from pathlib import Path

from core.errors import LabError
from core.wait import WaitTimeout, poll_until

log = logging.getLogger(__name__)

__all__ = [
    "CGROUP_ROOT",
    "LAB_CGROUP",
    "attach",
    "cgroup_pids",
    "create_node_cgroup",
    "delete_node_cgroup",
    "is_v2",
    "kill_node",
    "lab_cgroups",
    "node_dir",
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
LAB_CGROUP = "rto-lab"
# v1 hierarchies a node's processes join; cpuset/devices are left to runc
# (cpuset needs cpus/mems copied in before a task may join).
_V1_ATTACH = ("freezer", "pids", "memory", "cpu", "cpuacct", "blkio")
# ...but runc creates the pod cgroups in every hierarchy, so cleanup visits all.
# "systemd" and "unified" (the hybrid layout's named and v2 mounts) included.
_V1_ALL = (
    *_V1_ATTACH,
    "cpuset",
    "devices",
    "net_cls",
    "net_prio",
    "perf_event",
    "hugetlb",
    "systemd",
    "unified",
)


def is_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def _hierarchies(names: tuple[str, ...]) -> list[Path]:
    """Mounted hierarchy roots, each once (cpu and cpuacct may be one mount)."""
    if is_v2():
        return [CGROUP_ROOT]
    seen: set[Path] = set()
    out: list[Path] = []
    for name in names:
        p = CGROUP_ROOT / name
        if p.is_dir() and (p / "cgroup.procs").exists():
            real = p.resolve()
            if real not in seen:
                seen.add(real)
                out.append(p)
    return out


def _freezer_root() -> Path:
    return CGROUP_ROOT if is_v2() else CGROUP_ROOT / "freezer"


def node_dir(node: str) -> str:
    """The node's directory under ``rto-lab`` in every hierarchy.

    The default lab keeps plain node names; a lab with another namespace prefix
    (tests, benchmarks) gets ``<prefix>-<node>``, so two labs whose nodes share
    names never share cgroups (and one's power-off or teardown cannot kill the
    other's processes).
    """
    from cluster.lab import net  # read at call time: tests switch the prefix

    return node if net.NS_PREFIX == "rto" else f"{net.NS_PREFIX}-{node}"


def create_node_cgroup(node: str) -> None:
    """``rto-lab/<node>`` in every hierarchy (idempotent)."""
    for root in _hierarchies(_V1_ATTACH):
        try:
            (root / LAB_CGROUP / node_dir(node)).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            where = root / LAB_CGROUP / node_dir(node)
            raise LabError(f"cannot create cgroup {where}: {exc}") from exc
    if is_v2():
        # Children need the controllers enabled on the way down.
        for path in (CGROUP_ROOT / LAB_CGROUP, CGROUP_ROOT / LAB_CGROUP / node_dir(node)):
            want = (path.parent / "cgroup.controllers").read_text().split()
            for ctrl in ("cpu", "memory", "pids", "io"):
                if ctrl in want:
                    # best effort: a controller busy elsewhere is not fatal
                    with contextlib.suppress(OSError):
                        (path.parent / "cgroup.subtree_control").write_text(f"+{ctrl}")


def attach(pid: int, node: str) -> None:
    """Move ``pid`` (a whole process) into the node's cgroups."""
    create_node_cgroup(node)
    for root in _hierarchies(_V1_ATTACH):
        try:
            (root / LAB_CGROUP / node_dir(node) / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            where = root / LAB_CGROUP / node_dir(node)
            raise LabError(f"cannot attach pid {pid} to {where}: {exc}") from exc


def _walk(top: Path) -> list[Path]:
    """``top`` and every cgroup below it, deepest last."""
    if not top.is_dir():
        return []
    out = [top]
    for dirpath, dirnames, _ in os.walk(top):
        out.extend(Path(dirpath) / d for d in sorted(dirnames))
    return out


def cgroup_pids(node: str, pod: str | None = None) -> list[int]:
    """Every pid in the node's (or the pod's) freezer cgroup, recursively."""
    top = _freezer_root() / LAB_CGROUP / node_dir(node)
    if pod is not None:
        top = top / pod
    pids: list[int] = []
    for cg in _walk(top):
        try:
            pids.extend(int(x) for x in (cg / "cgroup.procs").read_text().split())
        except OSError as exc:
            # Removed while walking: ENOENT, or ENODEV when the directory went
            # between open() and read() (seen while runc removed a pod cgroup).
            if exc.errno in (errno.ENOENT, errno.ENODEV):
                continue
            raise
    return pids


def _set_frozen(cg: Path, frozen: bool) -> None:
    if is_v2():
        (cg / "cgroup.freeze").write_text("1" if frozen else "0")
    else:
        (cg / "freezer.state").write_text("FROZEN" if frozen else "THAWED")


def _state(cg: Path) -> str:
    if is_v2():
        events = (cg / "cgroup.events").read_text()
        return "FROZEN" if "frozen 1" in events else "THAWED"
    return (cg / "freezer.state").read_text().strip()


def _task_states(cg: Path, limit: int = 6) -> str:
    """``pid comm state wchan`` of a few tasks under ``cg``: why a freeze stalls."""
    rows: list[str] = []
    for sub in _walk(cg):
        with contextlib.suppress(OSError):
            for pid in (sub / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
                    state = stat[stat.rindex(")") + 2]
                    wchan = Path(f"/proc/{pid}/wchan").read_text().strip() or "-"
                    rows.append(f"{pid} {comm} {state} {wchan}")
    # A frozen task sleeps in __refrigerator: the others are what the freeze waits on.
    busy = [r for r in rows if "refrigerator" not in r.rsplit(" ", 1)[-1]]
    return "; ".join((busy or rows)[:limit]) or "no tasks"


def _wait_frozen(cg: Path, timeout: float) -> None:
    try:
        poll_until(lambda: _state(cg) == "FROZEN", timeout, f"{cg} to freeze", interval=0.005)
    except WaitTimeout:
        raise LabError(
            f"cgroup {cg} did not freeze within {timeout} s (tasks: {_task_states(cg)})"
        ) from None


def kill_node(node: str) -> int:
    """Power the node off: SIGKILL every process under its cgroup; returns how many.

    The node cgroups are left empty (child cgroups removed) so that the node can
    be powered on again with ``attach``.
    """
    top = _freezer_root() / LAB_CGROUP / node_dir(node)
    if not top.is_dir():
        return 0
    if is_v2() and (top / "cgroup.kill").exists():
        pids = cgroup_pids(node)
        (top / "cgroup.kill").write_text("1")
    else:
        # Frozen first, so nothing forks while the SIGKILLs go out.
        _set_frozen(top, True)
        try:
            _wait_frozen(top, 5.0)
        except LabError as exc:
            # Seen on the 6.18 kernel's v1 freezer: the state stays FREEZING
            # although the tasks it lists sleep frozen. Kill them anyway: a
            # frozen task dies of its SIGKILL once thawed, and the passes
            # below take whatever forked in between.
            log.warning("node %s: %s; killing it unfrozen", node, exc)
        pids = cgroup_pids(node)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.kill(pid, signal.SIGKILL)
        # Thaw from the top down: a pod frozen on its own (freeze_pod) would
        # otherwise keep its killed processes frozen, and alive, forever.
        for cg in _walk(top):
            with contextlib.suppress(FileNotFoundError):
                _set_frozen(cg, False)
        _kill_stragglers(node, 5.0)
    _wait_empty(node, 5.0)
    _remove_children(node)
    return len(pids)


def _kill_stragglers(node: str, timeout: float) -> None:
    """SIGKILL what is left in the node's cgroup, pass after pass, until empty or ``timeout``."""

    def empty() -> bool:
        left = cgroup_pids(node)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return not left

    with contextlib.suppress(WaitTimeout):  # _wait_empty then names the survivors
        poll_until(empty, timeout, f"{node} to be empty", interval=0.01)


def _wait_empty(node: str, timeout: float) -> None:
    try:
        poll_until(lambda: not cgroup_pids(node), timeout, f"{node} to be empty", interval=0.005)
    except WaitTimeout:
        raise LabError(f"processes of node {node} survived SIGKILL: {cgroup_pids(node)}") from None


def _remove_children(node: str, *, include_top: bool = False) -> None:
    for root in _hierarchies(_V1_ALL):
        cgs = _walk(root / LAB_CGROUP / node_dir(node))
        if not include_top:
            cgs = cgs[1:]
        for cg in reversed(cgs):
            try:
                cg.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise LabError(f"cgroup {cg} still has processes; kill_node first") from exc
                raise LabError(f"cannot remove cgroup {cg}: {exc}") from exc


def delete_node_cgroup(node: str) -> None:
    """Kill whatever is left and remove the node's cgroups everywhere (idempotent)."""
    kill_node(node)
    _remove_children(node, include_top=True)
    for root in _hierarchies(_V1_ALL):
        # The last node gone: leave no trace. Other nodes still there: keep it.
        with contextlib.suppress(OSError):
            (root / LAB_CGROUP).rmdir()


def lab_cgroups() -> list[str]:
    """Node cgroups of the lab that exist (``rto-lab/<node>`` names, any hierarchy)."""
    found: set[str] = set()
    for root in _hierarchies(_V1_ALL):
        lab = root / LAB_CGROUP
        if lab.is_dir():
            found.update(f"{LAB_CGROUP}/{p.name}" for p in lab.iterdir() if p.is_dir())
    return sorted(found)
