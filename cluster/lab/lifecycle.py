"""Bring the embedded lab up and tear it down; report what exists.

Called by the CLI (``rto lab up|down|status``), by test fixtures and by
``LabBackend.power_on`` (``reboot_node``). ``lab_up`` builds the hub and node
networks and cgroups, writes a fresh state database (nodes, settings
``profile`` and ``restart_healing``), starts the control plane in the hub
netns and one agent per node inside its netns and cgroup, and waits until
every node is Ready. ``lab_down`` must leave the machine as it found it even
when the harness, agents and containers were SIGKILLed or the lab was never
up, so it works from what exists (pid files, /proc, cgroups, runc roots,
mountinfo, losetup, /run/netns), not from what the database claims.
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.lab import accel, cgroups, net, rootfs, runtime, state, virtd, volumes
from cluster.lab.accel import AccelChoice
from cluster.lab.guest.build import build_guest
from cluster.lab.kube import cluster as kube_cluster
from cluster.lab.kube import hub as kube_hub
from cluster.lab.kube import images as kube_images
from cluster.lab.kube import node as kube_node
from cluster.lab.kube import paths as kube_paths
from cluster.lab.kube.virt_api import write_virt_kubeconfig
from cluster.lab.store import NodeRow, Store, db_path
from cluster.profiles import get_profile
from core.clock import Clock
from core.errors import HarnessError, LabError
from core.wait import WaitTimeout, poll_until

__all__ = [
    "agent_alive",
    "agent_pid_file",
    "controlplane_alive",
    "lab_down",
    "lab_processes",
    "lab_status",
    "lab_up",
    "leftovers",
    "reboot_node",
    "set_profile",
]

_DAEMONS = (
    "cluster.lab.agent",
    "cluster.lab.controlplane",
    "cluster.lab.kube.virt_controller",
    "cluster.lab.kube.virt_handler",
)
# Popen objects of daemons this process started: polled so that dead ones do
# not linger as zombies (a zombie still answers kill(pid, 0)).
_children: dict[int, subprocess.Popen[bytes]] = {}


def _log_dir() -> Path:
    return Path(state.STATE_DIR) / "logs"


def agent_pid_file(node: str) -> Path:
    return Path(state.RUN_DIR) / node / "agent.pid"


def _cp_pid_file() -> Path:
    return Path(state.RUN_DIR) / "controlplane.pid"


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


def agent_alive(node: str) -> bool:
    return _alive(_read_pid(agent_pid_file(node)), "cluster.lab.agent")


def controlplane_alive() -> bool:
    return _alive(_read_pid(_cp_pid_file()), "cluster.lab.controlplane")


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


def _start_controlplane() -> int:
    pid = _spawn(net.HUB_NS, "cluster.lab.controlplane", [], _log_dir() / "controlplane.log", None)
    # nsenter execs the command, so this is the daemon's pid; written here
    # too so lab_down finds it even if the daemon dies before writing its own.
    _cp_pid_file().parent.mkdir(parents=True, exist_ok=True)
    _cp_pid_file().write_text(f"{pid}\n")
    return pid


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


def _start_agent(store: Store, node: str) -> int:
    (Path(state.RUN_DIR) / node).mkdir(parents=True, exist_ok=True)
    pid = _spawn(
        net.node_ns(node),
        "cluster.lab.agent",
        ["--node", node],
        _log_dir() / f"{node}-agent.log",
        node,
    )
    agent_pid_file(node).write_text(f"{pid}\n")
    store.set_agent_pid(node, pid)
    return pid


def reboot_node(store: Store, node: NodeRow) -> None:
    """Power a node (back) on: clear what its death left, start its agent.

    Like a reboot: stale runc state and the network namespaces of pods still
    bound to it are gone, the agent starts them afresh. Pods that were moved
    away keep their new namespaces (same names, other node).
    """
    name = node.name
    cgroups.kill_node(name)  # nothing of the old boot may survive
    for pod in runtime.list_containers(name):
        runtime.delete(name, pod)
    for w in store.workloads_on(name):
        net.delete_pod_net(w.name)
    cgroups.create_node_cgroup(name)
    net.create_node_net(name, node.idx)
    if store.get_setting("vms") is True:
        _start_virt(name, node.idx)
    if kube_cluster.cluster_up():
        kube_node.cleanup_node(name)  # what the killed kubelet and containerd left
        kube_cluster.start_kubelet(name, node.idx)
    if store.get_setting("vmi_api") == "kubevirt":
        _start_virt_handler(name, node.idx)
    _start_agent(store, name)
    store.set_node_flag(name, "powered", True)


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
    restart_healing: bool = True,
    vms: bool = False,
    kube: bool = False,
    kubevirt: bool | None = None,
    timeout: float | None = None,
    clock: Clock | None = None,
) -> AccelChoice | None:
    """Create the lab and return once every node is Ready.

    ``vms=True`` also starts one libvirtd per node (and builds the guest
    image), so ``WorkloadKind.VMI`` workloads can run; pod-only labs skip it.
    With VMs it first chooses the accelerator (``cluster.lab.accel``: KVM only
    if the guest boots on it) and returns that choice, which the node agents
    read from the store; a refused ``RTO_LAB_ACCEL=kvm`` fails before anything
    is created.
    ``kube=True`` also starts the real cluster (``cluster.lab.kube``): etcd,
    kube-apiserver, kube-controller-manager and kube-scheduler in the hub, a
    containerd and a kubelet per node, and waits until every Node is Ready.
    ``kubevirt`` (default: when both ``vms`` and ``kube``) makes VMIs
    ``kubevirt.io/v1`` objects of that API server: the lab's virt-controller in
    the hub and a virt-handler per node reconcile them
    (``cluster.lab.kube.virt_controller``), and the node agents leave VMIs
    alone. ``kubevirt=False`` keeps the lab model's VMIs (placed by its
    control plane, run by the agents).
    Raises ``LabError`` (after tearing down what it made) if a node does not
    become Ready in time, with the tails of the daemon logs in the message.
    """
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, cgroups, mounts); run as root")
    prof = get_profile(profile)
    if not 1 <= nodes <= 9:
        raise LabError(f"the lab runs 1..9 nodes, not {nodes}")
    if controlplane_alive() or any(kube_hub.hub_alive().values()):
        raise LabError("the lab is already up; run `rto lab down` first")
    if kubevirt is None:
        kubevirt = vms and kube
    if kubevirt and not (kube and vms):
        raise LabError(
            "VMIs as kubevirt.io/v1 objects need the real cluster and VMs (--kube --vms)"
        )
    if leftovers():
        lab_down()  # a previous lab died without its down: start clean
    choice = accel.accelerator() if vms else None
    try:
        rootfs.ensure_rootfs()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_path()}{suffix}").unlink(missing_ok=True)
        store = Store()
        store.put_setting("profile", prof.name)
        store.put_setting("restart_healing", restart_healing)
        store.put_setting("vms", vms)
        store.put_setting("accelerator", choice.accel if choice else None)
        store.put_setting("vmi_api", "kubevirt" if kubevirt else "lab")
        if vms:
            build_guest()  # cached; agents then find it ready
        names = [f"{node_prefix}{i}" for i in range(1, nodes + 1)]
        net.create_hub()
        for i, name in enumerate(names, start=1):
            store.add_node(name, i)
            net.create_node_net(name, i)
            cgroups.create_node_cgroup(name)
            if vms:
                _start_virt(name, i)
        if kube:
            kube_cluster.start_cluster(
                prof.name, list(zip(names, range(1, nodes + 1), strict=True))
            )
        if kubevirt:
            write_virt_kubeconfig()
            _start_virt_controller()
            for i, name in enumerate(names, start=1):
                _start_virt_handler(name, i)
        _start_controlplane()
        for name in names:
            _start_agent(store, name)
        limit = timeout if timeout is not None else max(20.0, 5 * prof.heartbeat_interval + 10)
        try:
            poll_until(lambda: all(n.ready for n in store.nodes()), limit, "nodes Ready", clock)
        except WaitTimeout:
            late = [n.name for n in store.nodes() if not n.ready]
            logs = "\n".join(
                f"--- {p.name}:\n{_tail(p)}"
                for p in [_log_dir() / "controlplane.log"]
                + [_log_dir() / f"{n}-agent.log" for n in late]
            )
            raise LabError(
                f"lab nodes {', '.join(late)} not Ready after {limit} s\n{logs}"
            ) from None
        store.close()
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
    """Nodes of this lab, from what survives a SIGKILL: the db and the runtime
    dirs an agent or runc made. Deliberately not "every rto-* netns": other
    tools on the machine (VM scratch networks in tests) share the prefix."""
    run = Path(state.RUN_DIR)
    names: set[str] = set()
    if run.is_dir():
        names |= {
            p.name
            for p in run.iterdir()
            if p.is_dir() and ((p / "agent.pid").exists() or (p / "runc").exists())
        }
    if db_path().exists():
        store = Store()
        try:
            names |= {n.name for n in store.nodes()}
        finally:
            store.close()
    return names


def _our_netns(nodes: set[str]) -> list[str]:
    """The hub, the netns of ``nodes`` and every pod netns of the lab's prefix."""
    mine = {net.HUB_NS} | {net.node_ns(n) for n in nodes}
    pods = f"{net.NS_PREFIX}-p-"
    return [ns for ns in net.lab_netns() if ns in mine or ns.startswith(pods)]


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
    for node in sorted(nodes):

        def clear_runc(n: str = node) -> None:
            for pod in runtime.list_containers(n):
                runtime.delete(n, pod)

        step(f"runc containers of {node}", clear_runc)
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
        prefix = f"{net.NS_PREFIX}-"
        if ns == net.HUB_NS:
            continue  # last: node veths hang off its bridge
        if ns.startswith(f"{prefix}p-"):
            step(f"netns {ns}", functools.partial(net.delete_pod_net, ns[len(prefix) + 2 :]))
        else:
            step(f"netns {ns}", functools.partial(net.delete_node_net, ns[len(prefix) :]))
    step("hub netns", net.delete_hub)
    for node in sorted(nodes):
        step(f"cgroup of {node}", functools.partial(cgroups.delete_node_cgroup, node))
    step("cgroups in other hierarchies", functools.partial(_remove_cgroup_dirs, nodes))
    run = Path(state.RUN_DIR)
    if run.exists():
        step("runtime dir", lambda: shutil.rmtree(run))
    for suffix in ("", "-wal", "-shm"):
        step("state db", functools.partial(Path(f"{db_path()}{suffix}").unlink, missing_ok=True))
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
    """What is up: daemons, nodes, workloads and the lab's kernel objects."""
    status: dict[str, Any] = {
        "up": False,
        "controlplane": {"pid": _read_pid(_cp_pid_file()), "alive": controlplane_alive()},
        "profile": None,
        "restart_healing": None,
        "accelerator": None,
        "nodes": [],
        "workloads": [],
        "netns": _our_netns(_node_names()),
        "cgroups": cgroups.lab_cgroups(),
        "volumes": volumes.lab_volumes(),
        "kubernetes": kube_cluster.cluster_status(),
        "kubevirt": _virt_status(),
    }
    if not db_path().exists():
        return status
    store = Store()
    try:
        status["profile"] = store.get_setting("profile")
        status["restart_healing"] = store.get_setting("restart_healing")
        status["accelerator"] = store.get_setting("accelerator")
        now = store.clock.now()
        for n in store.nodes():
            status["nodes"].append(
                {
                    "name": n.name,
                    "ready": n.ready,
                    "schedulable": n.schedulable,
                    "fenced": n.fenced,
                    "powered": n.powered,
                    "heartbeat_age": None
                    if n.last_heartbeat is None
                    else round(now - n.last_heartbeat, 3),
                    "agent_pid": _read_pid(agent_pid_file(n.name)),
                    "agent_alive": agent_alive(n.name),
                }
            )
        for w in store.workloads():
            status["workloads"].append(
                {
                    "name": w.name,
                    "kind": w.kind.value,
                    "phase": w.phase.value,
                    "node": w.node,
                    "ip": w.ip,
                    "instance": w.instance,
                    "restarts": w.restarts,
                }
            )
    finally:
        store.close()
    status["up"] = status["controlplane"]["alive"] and all(
        n["agent_alive"] for n in status["nodes"] if n["powered"]
    )
    return status


def set_profile(name: str) -> None:
    """Switch the timing profile of a running lab; the control plane picks it up
    at its next monitor period, agents when they next read settings."""
    prof = get_profile(name)
    if not db_path().exists():
        raise LabError("the lab is not up; `rto lab up --profile NAME` instead")
    store = Store()
    try:
        if store.get_setting("profile", None) == prof.name:
            return
        switched = time.monotonic()
        store.put_setting("profile", prof.name)

        # Runs must not start while nodes still beat on the old schedule: their
        # heartbeat age would read as silence to the new profile (and to the
        # eviction healer). Agents beat at once when they see the change.
        def fresh() -> bool:
            return all(
                n.last_heartbeat is not None and n.last_heartbeat > switched
                for n in store.nodes()
                if n.ready and n.powered
            )

        try:
            poll_until(fresh, 10.0, f"heartbeats under profile {prof.name}")
        except WaitTimeout:
            raise LabError(
                f"profile {prof.name} set, but not every Ready node beat under it within "
                f"10 s; see the agent logs in {Path(state.STATE_DIR) / 'logs'}"
            ) from None
    finally:
        store.close()
