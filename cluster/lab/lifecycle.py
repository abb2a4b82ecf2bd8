"""Bring the embedded lab up and tear it down; report what exists.

Called by the CLI (``rto lab up|down|status``), by test fixtures and by
``LabNodes.power_on`` and the lab power driver (``reboot_node``). ``lab_up``
builds the hub and node networks and cgroups, writes the lab's record of its
machines (``cluster.lab.machines``: nodes, settings), starts the real cluster
(``cluster.lab.kube``: etcd, kube-apiserver, controller-manager and scheduler in
the hub, a containerd and a kubelet per node) and, with VMs, a libvirtd, the
lab's virt-controller and a virt-handler per node, and returns once every Node
is Ready in the API server. ``lab_down`` must leave the machine as it found it
even when the harness and every daemon were SIGKILLed or the lab was never up,
so it works from what exists (pid files, /proc, cgroups, mountinfo, losetup,
/run/netns), not from what the record claims.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.lab import accel, cgroups, net, rootfs, state, virtd, volumes
from cluster.lab.accel import AccelChoice
from cluster.lab.guest.build import build_guest
from cluster.lab.kube import cluster as kube_cluster
from cluster.lab.kube import hub as kube_hub
from cluster.lab.kube import images as kube_images
from cluster.lab.kube import node as kube_node
from cluster.lab.kube import paths as kube_paths
from cluster.lab.kube.virt_api import write_virt_kubeconfig
from cluster.lab.machines import Machine, Machines
from cluster.profiles import get_profile
from core.errors import HarnessError, LabError

__all__ = [
    "lab_down",
    "lab_processes",
    "lab_status",
    "lab_up",
    "leftovers",
    "reboot_node",
]

_DAEMONS = (
    "cluster.lab.kube.virt_controller",
    "cluster.lab.kube.virt_handler",
)
# Popen objects of daemons this process started: polled so that dead ones do
# not linger as zombies (a zombie still answers kill(pid, 0)).
_children: dict[int, subprocess.Popen[bytes]] = {}


def _log_dir() -> Path:
    return Path(state.STATE_DIR) / "logs"


# --- processes -----------------------------------------------------------------
def _reap() -> None:
    for pid, p in list(_children.items()):
        if p.poll() is not None:
            del _children[pid]


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (a.decode(errors="replace").partition("=") for a in raw.split(b"\0") if a)
    return {k: v for k, _, v in pairs}


def _daemon_of(pid: int) -> str | None:
    """Which daemon module of THIS lab ``pid`` runs (``-m cluster.lab.X``), or None.

    Pid files can outlive their process and pids get reused: only a process
    whose command line is really ours is ever signalled. Another lab on the
    machine (tests use other ``RTO_LAB_RUN_DIR``s) is not ours either.
    """
    module = _module_of(_cmdline(pid))
    if module is None:
        return None
    run_dir = _environ(pid).get("RTO_LAB_RUN_DIR", "/run/rto-lab")
    return module if Path(run_dir) == Path(state.RUN_DIR) else None


def _module_of(args: list[str]) -> str | None:
    for i, a in enumerate(args[:-1]):
        if a == "-m" and args[i + 1] in _DAEMONS:
            return args[i + 1]
    return None


def _child_env() -> dict[str, str]:
    """The daemons must see the same lab as this process (paths, netns prefix)."""
    env = dict(os.environ)
    env["RTO_LAB_STATE_DIR"] = str(state.STATE_DIR)
    env["RTO_LAB_RUN_DIR"] = str(state.RUN_DIR)
    env["RTO_LAB_NS_PREFIX"] = net.NS_PREFIX
    return env


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _alive(pid: int | None, module: str) -> bool:
    _reap()
    return pid is not None and _daemon_of(pid) == module and not _is_zombie(pid)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def lab_processes(nodes: set[str] | None = None) -> list[int]:
    """Pids of this lab's daemons, runc of its roots and anything in its node cgroups."""
    me = os.getpid()
    names = _node_names() if nodes is None else nodes
    node_cgs = tuple(f"/{cgroups.LAB_CGROUP}/{cgroups.node_dir(n)}/" for n in names)
    node_tops = tuple(f"/{cgroups.LAB_CGROUP}/{cgroups.node_dir(n)}\n" for n in names)
    run_dir = str(state.RUN_DIR)
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        if _is_zombie(pid):
            continue
        args = _cmdline(pid)
        ours = _daemon_of(pid) is not None or (
            bool(args) and Path(args[0]).name == "runc" and run_dir in " ".join(args)
        )
        if not ours:
            try:
                cg = Path(f"/proc/{pid}/cgroup").read_text()
            except OSError:
                continue
            ours = any(c in cg for c in node_cgs + node_tops)
        if ours:
            found.append(pid)
    return found


def _spawn(netns: str, module: str, args: list[str], log: Path, node: str | None) -> int:
    """Start ``python -m module`` inside ``netns`` (and the node's cgroups).

    The cgroup is joined in the child before exec, so not even the first fork
    of the daemon escapes a later power-off.
    """
    log.parent.mkdir(parents=True, exist_ok=True)

    def join_cgroup() -> None:
        if node is not None:
            cgroups.attach(os.getpid(), node)

    with open(log, "ab") as out:
        p = subprocess.Popen(
            # nsenter, not `ip netns exec`: the latter also makes a private mount
            # namespace, and volumes/pod netns the daemons create must be
            # visible to the whole machine. nsenter execs: the pid is the daemon.
            [
                "nsenter",
                f"--net={net.NETNS_DIR / netns}",
                sys.executable,
                "-m",
                module,
                *args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the harness must not kill the lab
            preexec_fn=join_cgroup if node is not None else None,
            close_fds=True,
            env=_child_env(),
        )
    _children[p.pid] = p
    return p.pid


def _start_virt_controller() -> int:
    """The lab's virt-controller, in the hub's netns and cgroup (the hub's teardown kills it)."""
    return _spawn(
        net.HUB_NS,
        "cluster.lab.kube.virt_controller",
        ["--image", kube_images.pause_image()],
        _log_dir() / "virt-controller.log",
        kube_hub.HUB_CGROUP,
    )


def _start_virt_handler(node: str, index: int) -> int:
    """A node's virt-handler, in its netns and cgroup (a power-off kills it)."""
    return _spawn(
        net.node_ns(node),
        "cluster.lab.kube.virt_handler",
        ["--node", node, "--index", str(index)],
        _log_dir() / f"{node}-virt-handler.log",
        node,
    )


def reboot_node(node: Machine) -> None:
    """Power a node (back) on: clear what its death left, start what it runs.

    Like a reboot: nothing of the old boot survives (its cgroup is emptied
    again), its network namespace is made anew, then its libvirtd (with VMs),
    containerd and kubelet start and, with VMs, its virt-handler. The kubelet
    finds its pods in the API server and starts them again, as after a reboot.
    """
    name = node.name
    cgroups.kill_node(name)  # nothing of the old boot may survive
    cgroups.create_node_cgroup(name)
    net.create_node_net(name, node.idx)
    vms = Machines().get_setting("vms") is True
    if vms:
        _start_virt(name, node.idx)
    kube_node.cleanup_node(name)  # what the killed kubelet and containerd left
    kube_cluster.start_kubelet(name, node.idx)
    if vms:
        _start_virt_handler(name, node.idx)
    Machines().set_powered(name, True)


def _start_virt(node: str, index: int) -> None:
    """The node's hypervisor side: anycast VMI gateway on cbr0 and its libvirtd
    (in the node's cgroup, so a power-off takes it and its QEMUs down)."""
    from cluster.lab import virtd  # needs libvirt-python: only with VMs

    volumes.share_volumes_dir()  # libvirtd's namespace follows later mounts
    net.add_vmi_gateway(node)
    virtd.start_node_libvirtd(node, index)


def _stop_virt(node: str) -> None:
    """Stop the node's QEMUs and libvirtd, if VMs were ever enabled there."""
    if not (Path(state.RUN_DIR) / node / "libvirt").exists():
        return

    virtd.stop_node_libvirtd(node)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- up --------------------------------------------------------------------------
def lab_up(
    profile: str = "fast",
    nodes: int = 3,
    *,
    node_prefix: str = "node",
    vms: bool = False,
    timeout: float = 120.0,
) -> AccelChoice | None:
    """Create the lab and return once every Node is Ready in its API server.

    The real cluster (``cluster.lab.kube``) always: etcd, kube-apiserver,
    kube-controller-manager and kube-scheduler in the hub, a containerd and a
    kubelet per node, the components' flags from ``profile``
    (``cluster.lab.kube.flags``). ``vms=True`` also starts one libvirtd per node
    (and builds the guest image) and makes VMIs ``kubevirt.io/v1`` objects of
    that API server: the lab's virt-controller in the hub and a virt-handler
    per node reconcile them (``cluster.lab.kube.virt_controller``). With VMs it
    first chooses the accelerator (``cluster.lab.accel``: KVM only if the guest
    boots on it) and returns that choice, which the virt-handlers read from the
    lab's record; a refused ``RTO_LAB_ACCEL=kvm`` fails before anything is
    created. Raises ``LabError`` (after tearing down what it made) if a Node is
    not Ready within ``timeout``, with the tails of the logs in the message.
    """
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, cgroups, mounts); run as root")
    prof = get_profile(profile)
    if not 1 <= nodes <= 9:
        raise LabError(f"the lab runs 1..9 nodes, not {nodes}")
    if any(kube_hub.hub_alive().values()):
        raise LabError("the lab is already up; run `rto lab down` first")
    if leftovers():
        lab_down()  # a previous lab died without its down: start clean
    choice = accel.accelerator() if vms else None
    try:
        rootfs.ensure_rootfs()  # the pod image's root (cluster.lab.kube.images)
        names = [f"{node_prefix}{i}" for i in range(1, nodes + 1)]
        numbered = list(zip(names, range(1, nodes + 1), strict=True))
        Machines().create(
            numbered,
            {
                "profile": prof.name,
                "restart_healing": True,
                "vms": vms,
                "accelerator": choice.accel if choice else None,
            },
        )
        if vms:
            build_guest()  # cached; the virt-handlers then find it ready
        net.create_hub()
        for name, i in numbered:
            net.create_node_net(name, i)
            cgroups.create_node_cgroup(name)
            if vms:
                _start_virt(name, i)
        kube_cluster.start_cluster(prof.name, numbered, timeout=timeout)
        if vms:
            write_virt_kubeconfig()
            _start_virt_controller()
            for name, i in numbered:
                _start_virt_handler(name, i)
        return choice
    except BaseException:
        with contextlib.suppress(HarnessError):
            lab_down()  # the original error matters more than a teardown one
        raise


# --- down ------------------------------------------------------------------------
def _mounts_under(roots: list[Path]) -> list[str]:
    found: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mnt = line.split()[4].replace("\\040", " ")
            if any(mnt == str(r) or mnt.startswith(f"{r}/") for r in roots):
                found.append(mnt)
    return found


def _lab_loops() -> list[str]:
    """Loop devices whose backing file is under the lab's state directory."""
    res = subprocess.run(["losetup", "-J", "-l"], capture_output=True, text=True, check=False)
    if res.returncode != 0 or not res.stdout.strip():
        return []
    devs = json.loads(res.stdout).get("loopdevices", [])
    root = str(state.STATE_DIR)
    return [
        str(d["name"])
        for d in devs
        if str(d.get("back-file") or "").split(" (deleted)")[0].startswith(f"{root}/")
    ]


def leftovers(nodes: set[str] | None = None) -> dict[str, list[str]]:
    """Every object of this lab still on the machine, by kind (empty: nothing left).

    ``nodes``: node names whose cgroups count (default: the nodes that can still
    be found; pass the names from before a teardown to check it).
    """
    names = _node_names() if nodes is None else nodes
    ifname = kube_paths.host_link()[0]
    out = {
        "processes": [str(p) for p in lab_processes(names | {kube_hub.HUB_CGROUP})],
        "kube": kube_node.leftovers(),
        "host link": [ifname] if net.host_link_exists(ifname) else [],
        "netns": _our_netns(names),
        "cgroups": [str(d) for d in _node_cgroup_dirs(names)],
        "mounts": _mounts_under([Path(state.STATE_DIR), Path(state.RUN_DIR)]),
        "loops": _lab_loops(),
    }
    return {k: v for k, v in out.items() if v}


def _cgroup_roots() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, name=systemd, unified)."""
    root = cgroups.CGROUP_ROOT
    if (root / "cgroup.procs").exists():
        return [root]  # pure v2
    return [p for p in sorted(root.iterdir()) if (p / "cgroup.procs").exists()]


def _node_cgroup_dirs(nodes: set[str]) -> list[Path]:
    """``rto-lab/<node>`` dirs (and below) of ``nodes`` in any hierarchy, deepest first.

    runc also creates pod cgroups in hierarchies the node cgroups do not use
    (name=systemd, unified on hybrid hosts); they must go too.
    """
    found: list[Path] = []
    for root in _cgroup_roots():
        for node in nodes:
            top = root / cgroups.LAB_CGROUP / cgroups.node_dir(node)
            if top.is_dir():
                found.extend(Path(d) for d, _, _ in os.walk(top))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _remove_cgroup_dirs(nodes: set[str]) -> None:
    for d in _node_cgroup_dirs(nodes):
        with contextlib.suppress(FileNotFoundError):
            d.rmdir()
    for root in _cgroup_roots():
        with contextlib.suppress(OSError):  # busy: another lab's nodes still there
            (root / cgroups.LAB_CGROUP).rmdir()


def _node_names() -> set[str]:
    """Nodes of this lab, from what survives a SIGKILL: the lab's record and the
    runtime dirs a node's libvirtd made. Deliberately not "every rto-* netns":
    other tools on the machine (VM scratch networks in tests) share the prefix."""
    run = Path(state.RUN_DIR)
    names = {m.name for m in Machines().nodes()}
    if run.is_dir():
        names |= {p.name for p in run.iterdir() if p.is_dir() and (p / "libvirt").exists()}
    return names


def _our_netns(nodes: set[str]) -> list[str]:
    """The hub and the netns of ``nodes`` (pods' netns are CNI's: ``kube_node``)."""
    mine = {net.HUB_NS} | {net.node_ns(n) for n in nodes}
    return [ns for ns in net.lab_netns() if ns in mine]


def lab_down() -> None:
    """Remove every lab object; raise ``LabError`` listing whatever survived."""
    errors: list[str] = []

    def step(what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except (HarnessError, OSError, subprocess.SubprocessError) as exc:
            errors.append(f"{what}: {exc}")

    nodes = _node_names()

    def kill_daemons() -> None:
        for pid in lab_processes(nodes):
            if _daemon_of(pid) is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    step("kill lab daemons", kill_daemons)
    for node in sorted(nodes):
        step(f"libvirtd of {node}", functools.partial(_stop_virt, node))
    for node in sorted(nodes):
        step(f"power off {node}", functools.partial(cgroups.kill_node, node))

    def kill_stragglers() -> None:
        # Anything still in a lab cgroup or a runc of ours (e.g. cgroup created late).
        for pid in lab_processes(nodes | {kube_hub.HUB_CGROUP}):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    step("kill remaining lab processes", kill_stragglers)

    def real_cluster() -> None:
        problems = kube_cluster.teardown(nodes)
        if problems:
            raise LabError("; ".join(problems))

    step("real cluster", real_cluster)
    for pod in _safe(volumes.lab_volumes, errors):
        step(f"volume {pod}", functools.partial(volumes.destroy_volume, pod))

    def unmount_rest() -> None:
        for mnt in sorted(
            _mounts_under([Path(state.STATE_DIR), Path(state.RUN_DIR)]), key=len, reverse=True
        ):
            subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
        for dev in _lab_loops():
            subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)

    step("unmount", unmount_rest)
    for ns in _safe(functools.partial(_our_netns, nodes), errors):
        if ns == net.HUB_NS:
            continue  # last: node veths hang off its bridge
        step(f"netns {ns}", functools.partial(net.delete_node_net, ns[len(net.NS_PREFIX) + 1 :]))
    step("hub netns", net.delete_hub)
    for node in sorted(nodes):
        step(f"cgroup of {node}", functools.partial(cgroups.delete_node_cgroup, node))
    step("cgroups in other hierarchies", functools.partial(_remove_cgroup_dirs, nodes))
    run = Path(state.RUN_DIR)
    if run.exists():
        step("runtime dir", lambda: shutil.rmtree(run))
    step("the lab's record", Machines().remove)
    _reap()
    left = leftovers(nodes)
    if left:
        errors.append(f"still present: {left}")
    if errors:
        raise LabError("lab down left problems:\n  " + "\n  ".join(errors))


def _safe(fn: Callable[[], list[str]], errors: list[str]) -> list[str]:
    try:
        return fn()
    except (HarnessError, OSError, subprocess.SubprocessError) as exc:
        errors.append(f"{getattr(fn, '__name__', fn)}: {exc}")
        return []


# --- status / settings -------------------------------------------------------------
def _virt_status() -> dict[str, list[int]]:
    """The pids of the lab's virt-controller and virt-handlers that run (empty: none)."""
    found: dict[str, list[int]] = {}
    for pid in lab_processes():
        module = _daemon_of(pid)
        if module is not None and module.startswith("cluster.lab.kube.virt_"):
            found.setdefault(module.rsplit(".", 1)[1].replace("_", "-"), []).append(pid)
    return found


def lab_status() -> dict[str, Any]:
    """What is up: the real cluster, the virt components, nodes and kernel objects."""
    machines = Machines()
    kube = kube_cluster.cluster_status()
    status: dict[str, Any] = {
        "up": bool(kube) and all(kube_hub.hub_alive().values()),
        "profile": machines.get_setting("profile"),
        "accelerator": machines.get_setting("accelerator"),
        "vms": machines.get_setting("vms"),
        "nodes": [{"name": m.name, "index": m.idx, "powered": m.powered} for m in machines.nodes()],
        "netns": _our_netns(_node_names()),
        "cgroups": cgroups.lab_cgroups(),
        "volumes": volumes.lab_volumes(),
        "kubernetes": kube,
        "kubevirt": _virt_status(),
    }
    return status
