"""One containerd and one kubelet per lab node: the real cluster's nodes.

Called by the real cluster's lifecycle (``start_node`` at ``lab up`` and at a
node's power-on, ``stop_node``/``cleanup_node`` at ``lab down`` and after a
power-off, ``leftovers`` in ``lab status``, ``kubelet_outdated`` and
``restart_kubelet`` at a profile switch); the API (the hub half) is the
kubelets' only peer. Each node runs, all in its lab cgroup (so
``cgroups.kill_node`` is its power-off) and in its network namespace:

- a *holder*: the ``pause`` program in a new mount namespace that the node's
  containerd and kubelet then join (``nsenter --mount``). In it, ``/run``,
  ``/var/lib`` and ``/var/log`` are node-private trees (a tmpfs with the lab's
  own directories bound back in), so the paths the components use whatever
  their flags say (``/var/lib/kubelet/device-plugins``, ``/run/containerd/s``,
  ``/var/lib/cni``, ``/var/log/containers``, ...) are per node and vanish with
  the namespace; the pod volumes' directory is bound back with the mounts
  below it and follows the host's later ones (``_followed_dirs``); the six
  ``/proc/sys`` files the kubelet sets are bind mounts of regular files: the
  host's sysctls never change. Every mount made
  for the node (pod netns files, rootfs overlays, volumes) lives only in that
  namespace, so after a power-off the kernel drops them with its last process.
- containerd (config v3: root in the node's state dir, state and sockets in
  its run dir, CNI ``bridge`` ``kbr0`` + ``host-local`` on ``paths.pod_cidr``,
  Debian's runc) with the images of ``cluster.lab.kube.images`` imported;
- the kubelet (``cgroupfs`` driver, ``cgroupRoot`` the node's own cgroup, the
  profile's ``KubeletConfiguration`` fields merged over the lab's base).

Files: ``paths.node_dir(node)`` keeps what a real node keeps on disk
(containerd's root with the images, pod logs, component logs);
``paths.kube_run_dir()/<node>`` what a reboot loses (sockets, containerd state,
the kubelet's root dir, CNI IPAM), removed by ``cleanup_node``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cluster.lab import cgroups, net, state, volumes
from cluster.lab.kube import images, paths
from core.errors import LabError
from core.wait import WaitTimeout, poll_until

__all__ = [
    "HOST_SYSCTLS",
    "KubeletSpec",
    "cleanup_node",
    "component_pid",
    "containerd_address",
    "holder_pid",
    "kubelet_outdated",
    "leftovers",
    "node_log",
    "node_processes",
    "node_run_dir",
    "restart_kubelet",
    "start_node",
    "stop_node",
]

RUNC = Path("/usr/sbin/runc")  # Debian's runc 1.1.5: the one the lab already uses
CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
CNI_BRIDGE = "kbr0"  # beside cbr0 (the VMIs' gateway) in the node netns
KUBELET_HEALTHZ_PORT = 10248

# What v1.34.4's setupKernelTunables writes (pkg/kubelet/cm/container_manager_linux.go):
# the node namespace gets bind-mounted files already holding these values.
HOST_SYSCTLS: dict[str, str] = {
    "vm.overcommit_memory": "1",
    "vm.panic_on_oom": "0",
    "kernel.panic": "10",
    "kernel.panic_on_oops": "1",
    "kernel.keys.root_maxkeys": "1000000",
    "kernel.keys.root_maxbytes": "25000000",
}
# Host directories covered by a node-private tree in the node's mount namespace.
_COVERED = (Path("/run"), Path("/var/lib"), Path("/var/log"))
# Default paths that kubelet, containerd, the shims or libcni create on the
# host when they are not confined: none may ever appear (leftovers checks).
_STRAY = (
    "/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/run/containerd",
    "/var/lib/cni", "/etc/cni", "/opt/cni", "/opt/containerd", "/var/lib/containerd",
    "/etc/containerd", "/run/kubernetes", "/etc/kubernetes", "/usr/libexec/kubernetes",
    "/run/nri", "/etc/cdi", "/run/cdi", "/run/runc",
)  # fmt: skip
_HOLDER_MARK = "--rto-kube-node-holder="
_STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class KubeletSpec:
    """What the hub half hands over to start one node."""

    node: str  # lab node name == Kubernetes Node name
    index: int  # lab node index: node IP state.node_ip(index), pods paths.pod_cidr(index)
    kubeconfig: Path  # user system:node:<node>, server https://HUB_IP:6443
    ca_file: Path  # the kubelet's authentication.x509.clientCAFile
    serving_cert: Path  # tlsCertFile
    serving_key: Path  # tlsPrivateKeyFile
    # KubeletConfiguration fields merged over the lab's base (profile knobs).
    config: Mapping[str, Any] = field(default_factory=dict)
    feature_gates: Mapping[str, bool] = field(default_factory=dict)


# --- where things are -----------------------------------------------------------


def node_run_dir(node: str) -> Path:
    return paths.kube_run_dir() / node


def containerd_address(node: str) -> Path:
    """The node's containerd socket (usable from the host: ``ctr --address``)."""
    return node_run_dir(node) / "containerd.sock"


def _log(node: str, component: str) -> Path:
    return paths.node_dir(node) / "logs" / f"{component}.log"


def node_log(node: str, component: str, lines: int = 12) -> str:
    """The tail of ``component``'s log (holder, containerd, kubelet) on ``node``."""
    try:
        text = _log(node, component).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _pid_file(node: str, component: str) -> Path:
    return node_run_dir(node) / f"{component}.pid"


# --- processes ------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _mntns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _ours(pid: int, node: str) -> bool:
    """Started for the node: in its cgroup, or running one of the lab's binaries.

    Keeps a ``tail -f`` of the node's log (its command line names the node's
    dirs too) out of what a teardown kills.
    """
    if _in_cgroup(pid, (f"/{cgroups.LAB_CGROUP}/{cgroups.node_dir(node)}",)):
        return True
    try:
        exe = Path(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return False
    return exe.parent == paths.bin_dir() or exe == RUNC


def _in_cgroup(pid: int, cg_prefixes: tuple[str, ...]) -> bool:
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        where = line.split(":", 2)[-1]
        if any(where == p or where.startswith(f"{p}/") for p in cg_prefixes):
            return True
    return False


def _kubepods_cgroup(node: str) -> str:
    return f"/{cgroups.LAB_CGROUP}/{cgroups.node_dir(node)}/kubepods"


def component_pid(node: str, component: str) -> int | None:
    """The pid of the node's ``holder``, ``containerd`` or ``kubelet`` if it runs."""
    return _alive(node, component)


def holder_pid(node: str) -> int | None:
    """The process holding the node's mount namespace (``nsenter --mount=/proc/<pid>/ns/mnt``)."""
    return _alive(node, "holder")


def _live_mntns(node: str) -> int | None:
    """The node's mount namespace while its holder runs (else None).

    Only a live holder's: a namespace's inode number is reused once it is
    gone, and a recorded one could then name another node's namespace.
    """
    holder = _alive(node, "holder")
    ns = _mntns(holder) if holder is not None else None
    return ns if ns is not None and ns != _mntns(os.getpid()) else None


def node_processes(node: str) -> list[int]:
    """Pids of the node's holder, containerd, kubelet, shims, runc, CNI plugins and pods.

    Found three ways, so that none escapes a teardown: a command line naming
    the node's directories (of a process in the node cgroup or running a lab
    binary); the pods' cgroups (``.../kubepods``); and the node's mount
    namespace (what containerd runs briefly: runc, CNI plugins). Never the
    node's libvirtd or virt-handler, which share the node cgroup but none of these.
    """
    dirs = (f"{node_run_dir(node)}/", f"{paths.node_dir(node)}/")
    pods = (_kubepods_cgroup(node),)
    ns = _live_mntns(node)
    me = os.getpid()
    found: list[int] = []
    for pid in _pids():
        if pid == me or _is_zombie(pid):
            continue
        cmd = _cmdline(pid)
        if (
            (any(d in cmd for d in dirs) and _ours(pid, node))
            or _in_cgroup(pid, pods)
            or (ns is not None and _mntns(pid) == ns)
        ):
            found.append(pid)
    return sorted(found)


def _alive(node: str, component: str) -> int | None:
    """The pid of ``component`` of ``node`` if it runs (pid file + command line check)."""
    try:
        pid = int(_pid_file(node, component).read_text().strip())
    except (OSError, ValueError):
        return None
    if _is_zombie(pid) or f"{node_run_dir(node)}/" not in _cmdline(pid):
        return None
    return pid


# The processes _spawn started, to say how one that died while starting ended.
_SPAWNED: dict[tuple[str, str], subprocess.Popen[bytes]] = {}


def _spawn(node: str, component: str, argv: list[str]) -> int:
    """Start ``argv`` in the node's cgroup (joined before exec); its pid."""
    log = _log(node, component)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": f"{paths.bin_dir()}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
    }
    with open(log, "ab") as out:
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            # A Ctrl-C of the harness must not reach the node's processes.
            start_new_session=True,
            preexec_fn=lambda: cgroups.attach(os.getpid(), node),
            close_fds=True,
            cwd="/",
        )
    # Reaped by a thread: while this process lives, a dead component must not
    # linger as a zombie (it would still count as a process of the node).
    threading.Thread(target=p.wait, name=f"reap-{node}-{component}", daemon=True).start()
    _SPAWNED[(node, component)] = p
    _pid_file(node, component).write_text(f"{p.pid}\n")
    # Until the child execs, its command line is this process's; then, when it
    # is an nsenter, nsenter's until that execs the component (a /proc read in
    # between came back empty and _alive said gone). Wait for the component's
    # own command line, so that _alive (which checks it) means what it says.
    # (Only through nsenter: the holder's unshare execs sh, which execs pause.)
    binary = argv[argv.index("--") + 1] if argv[0] == "nsenter" and "--" in argv else ""

    def execed() -> bool:
        return _alive(node, component) is not None and _cmdline(p.pid).startswith(binary)

    try:
        poll_until(lambda: p.poll() is not None or execed(), 10,
                   f"{component} of node {node} to exec", interval=0.005)  # fmt: skip
    except WaitTimeout:
        raise LabError(f"{component} of node {node} did not start within 10 s") from None
    return p.pid


def _exit_status(node: str, component: str) -> str:
    """How the process this harness started for ``component`` ended, if it did."""
    p = _SPAWNED.get((node, component))
    code = None if p is None else p.poll()
    if code is None:
        assert p is not None
        try:
            recorded = _pid_file(node, component).read_text().strip()
        except OSError as exc:
            recorded = f"unreadable ({exc.strerror})"
        return (
            f"pid {p.pid} still running, but not as the pid file says: pid file {recorded}, "
            f"zombie {_is_zombie(p.pid)}, command line {_cmdline(p.pid)[:200]!r}"
        )
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def _wait(node: str, component: str, what: str, ready: Callable[[], bool], timeout: float) -> None:
    spawned = _SPAWNED.get((node, component))

    def check() -> bool:
        # The child this process started says for sure whether it still runs;
        # the pid file and /proc read of _alive was seen to miss a live kubelet
        # for a moment (pid file and command line both right just after).
        if spawned is not None:
            gone = spawned.poll() is not None
        else:
            gone = _alive(node, component) is None
        if gone:
            raise LabError(
                f"{component} of node {node} exited while starting "
                f"({_exit_status(node, component)}); its log ends:\n"
                f"{node_log(node, component)}"
            )
        return bool(ready())

    try:
        poll_until(check, timeout, f"{what} of node {node}", interval=0.1)
    except WaitTimeout:
        raise LabError(
            f"{what} of node {node}: not within {timeout:.0f} s; "
            f"{component} log ends:\n{node_log(node, component)}"
        ) from None


# --- cgroups --------------------------------------------------------------------


def _kubelet_cgroup_root(node: str) -> str:
    """The kubelet's ``cgroupRoot``: the node's own cgroup."""
    return f"/{Path(cgroups.LAB_CGROUP) / cgroups.node_dir(node)}"


def _ensure_kubelet_cgroup_root(node: str) -> str:
    """The node cgroup in every v1 hierarchy the kubelet checks; its path.

    ``cgroups.create_node_cgroup`` makes it where the lab attaches processes;
    the kubelet also wants cpuset (cpus/mems copied down, or no task may join),
    devices and the named systemd hierarchy.
    """
    cgroups.create_node_cgroup(node)
    rel = Path(cgroups.LAB_CGROUP) / cgroups.node_dir(node)
    if cgroups.is_v2():
        return f"/{rel}"
    for hier in sorted(cgroups.CGROUP_ROOT.iterdir()):
        if hier.name == "unified" or not (hier / "cgroup.procs").exists():
            continue
        parent = hier
        for part in rel.parts:
            child = parent / part
            try:
                child.mkdir(exist_ok=True)
                if hier.name == "cpuset":
                    for f in ("cpuset.cpus", "cpuset.mems"):
                        if not (child / f).read_text().strip():
                            (child / f).write_text((parent / f).read_text())
            except OSError as exc:
                raise LabError(f"cannot prepare cgroup {child} for the kubelet: {exc}") from exc
            parent = child
    return f"/{rel}"


def _remove_kubepods(node: str) -> None:
    """The pods' cgroups the kubelet made (after its processes are gone)."""
    if not cgroups.CGROUP_ROOT.is_dir():
        return
    rel = Path(cgroups.LAB_CGROUP) / cgroups.node_dir(node) / "kubepods"
    roots = [cgroups.CGROUP_ROOT] if cgroups.is_v2() else list(cgroups.CGROUP_ROOT.iterdir())
    for hier in roots:
        top = hier / rel
        if not top.is_dir():
            continue
        dirs = [Path(d) for d, _, _ in os.walk(top)]
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise LabError(f"cgroup {d} still has processes after the kill") from exc
                raise LabError(f"cannot remove cgroup {d}: {exc}") from exc


# --- configuration files --------------------------------------------------------


def _containerd_config(node: str) -> str:
    run, disk = node_run_dir(node), paths.node_dir(node)
    q = json.dumps  # a TOML basic string is a JSON string for these paths
    return f"""version = 3
root = {q(str(disk / "containerd"))}
state = {q(str(run / "containerd"))}
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.tracing"]

[grpc]
  address = {q(str(containerd_address(node)))}
[ttrpc]
  address = {q(str(run / "containerd.sock.ttrpc"))}

# Kept (the CRI image service needs it), pointed away from /opt/containerd.
[plugins.'io.containerd.image-verifier.v1.bindir']
  bin_dir = {q(str(run / "image-verifier"))}
[plugins.'io.containerd.internal.v1.opt']
  path = {q(str(disk / "opt"))}
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = {q(images.pause_image())}
[plugins.'io.containerd.cri.v1.runtime']
  # Pod netns files under the state dir, inside the node's mount namespace.
  netns_mounts_under_state_dir = true
  # Root here has no CAP_SYS_RESOURCE: lowering a container's oom_score_adj
  # fails in runc (EACCES) unless clamped to containerd's own score.
  restrict_oom_score_adj = true
  cdi_spec_dirs = [{q(str(run / "cdi"))}]
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = [{q(str(CNI_BIN))}]
  conf_dir = {q(str(run / "cni" / "net.d"))}
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = {q(str(RUNC))}
  Root = {q(str(run / "runc"))}
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
"""


def _cni_conflist(node: str, index: int) -> str:
    doc = {
        "cniVersion": "1.0.0",
        "name": "rto-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": CNI_BRIDGE,
                "isGateway": True,
                # Routed, not NATed: the hub routes the pod range to the node
                # (net.route_to_node) and probers see the pods' own addresses.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": paths.pod_cidr(index)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(node_run_dir(node) / "cni" / "ipam"),
                },
            }
        ],
    }
    return json.dumps(doc, indent=1) + "\n"


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _kubelet_config(spec: KubeletSpec, cgroup_root: str) -> dict[str, Any]:
    run, disk = node_run_dir(spec.node), paths.node_dir(spec.node)
    base: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": state.node_ip(spec.index),
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "cgroupDriver": "cgroupfs",
        # Pods under the node's cgroup: the lab's power-off kills them too.
        "cgroupRoot": cgroup_root,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{containerd_address(spec.node)}",
        "podLogsDir": str(disk / "pod-logs"),
        # Its default is under /usr/libexec, on the host.
        "volumePluginDir": str(run / "volume-plugins"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(spec.ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(spec.serving_cert),
        "tlsPrivateKeyFile": str(spec.serving_key),
        "resolvConf": "/etc/resolv.conf",
        # Several nodes share one disk and 2 cores: pressure evictions would
        # measure the machine, not the fault; memory keeps a floor.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        # The lab's images exist nowhere else: never garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "featureGates": {},
    }
    cfg = _merge(base, spec.config)
    cfg["featureGates"] = {**cfg.get("featureGates", {}), **spec.feature_gates}
    return cfg


# --- the node's mount namespace -------------------------------------------------


def _files_of_kubeconfig(path: Path) -> list[Path]:
    """Files a kubeconfig names by path (CA, client certificate and key)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LabError(f"cannot read kubelet kubeconfig {path}: {exc}") from exc
    found: list[Path] = []
    for entry in (doc or {}).get("clusters", []) + (doc or {}).get("users", []):
        body = entry.get("cluster") or entry.get("user") or {}
        for key in ("certificate-authority", "client-certificate", "client-key"):
            if body.get(key):
                found.append(Path(body[key]))
    return found


def _followed_dirs() -> list[Path]:
    """Host directories whose mounts the node sees, those made after it started too.

    The lab's pod volumes (``cluster.lab.volumes``): one loop-mounted ext4 per
    pod, mounted on the host before the pod is created and again by each
    repair, and used by the pod as a hostPath on whichever node runs it (the
    kube config's ``pod_volume_host_path``). The host's mount of the directory
    is shared (``volumes.share_volumes_dir``), the node's copy a slave of it: every later
    mount and unmount below it on the host reaches the node, none made in
    the node reaches the host.
    """
    return [volumes.image_path("any").parent]


def _needed_dirs(spec: KubeletSpec) -> list[Path]:
    """Host directories the node's processes must see under the covered trees."""
    node = spec.node
    files = [spec.kubeconfig, spec.ca_file, spec.serving_cert, spec.serving_key]
    files += _files_of_kubeconfig(spec.kubeconfig)
    dirs = {paths.node_dir(node), node_run_dir(node), paths.bin_dir(), CNI_BIN, RUNC.parent}
    dirs |= set(_followed_dirs())
    dirs |= {f.resolve().parent for f in files}
    # Outermost only: a bind of a directory brings its subdirectories.
    ordered = sorted(dirs, key=lambda p: len(p.parts))
    out: list[Path] = []
    for d in ordered:
        if not any(d == o or o in d.parents for o in out):
            out.append(d)
    return out


def _ns_script(spec: KubeletSpec) -> str:
    """Shell run by ``unshare -m``: builds the node's mount namespace, then execs the holder."""
    node = spec.node
    run = node_run_dir(node)
    nsdir = run / "ns"
    needed = _needed_dirs(spec)
    followed = _followed_dirs()
    for c in _COVERED:
        if any(d == c or d in c.parents for d in needed):
            raise LabError(f"{c} would be hidden from node {node}: move the lab's dirs below it")
    # Cover the tree holding the namespace's own tmpfs last: after covering,
    # that path no longer leads to the tmpfs.
    covers = sorted(_COVERED, key=lambda c: c in nsdir.parents)
    q = shlex.quote
    lines = [
        "set -eu",
        f"NSDIR={q(str(nsdir))}",
        # Copies of the host's mounts the node does not need are detached here
        # (only here): a node never keeps a host filesystem or another lab's
        # netns busy after the host unmounted it.
        "for m in $(awk '{print $5}' /proc/self/mountinfo | sort -r); do",
        '  case "$m" in /|/proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac',
        "  keep=0",
        f"  for d in {' '.join(q(str(d)) for d in needed)}; do",
        '    case "$d/" in "$m"/*) keep=1 ;; esac',
        "  done",
        # The mounts below a followed dir (pod volumes mounted before this
        # node started) are the node's to see.
        f"  for d in {' '.join(q(str(d)) for d in followed)}; do",
        '    case "$m/" in "$d"/*) keep=1 ;; esac',
        "  done",
        '  [ "$keep" = 1 ] || umount -l "$m" 2>/dev/null || true',
        "done",
        'mount -t tmpfs -o mode=0755,size=64m rto-kube-node "$NSDIR"',
        'mkdir "$NSDIR/sysctl"',
    ]
    for key, value in HOST_SYSCTLS.items():
        f = f"$NSDIR/sysctl/{key}"
        lines += [f'echo {value} >"{f}"', f'mount --bind "{f}" /proc/sys/{key.replace(".", "/")}']
    for c in covers:
        lines.append(f'mkdir -p "$NSDIR/cover"{q(str(c))}')
        for d in needed:
            if c in d.parents:
                bind = "--rbind" if d in followed else "--bind"
                lines += [
                    f'mkdir -p "$NSDIR/cover"{q(str(d))}',
                    f'mount {bind} {q(str(d))} "$NSDIR/cover"{q(str(d))}',
                ]
        lines.append(f'mount --rbind "$NSDIR/cover"{q(str(c))} {q(str(c))}')
    lines += [
        f"echo $$ >{q(str(run / 'holder.ready'))}",
        f'exec {q(str(paths.bin_dir() / "pause"))} "{_HOLDER_MARK}{run}/"',
    ]
    return "\n".join(lines) + "\n"


def _start_holder(spec: KubeletSpec) -> int:
    run = node_run_dir(spec.node)
    volumes.share_volumes_dir()  # the one followed dir (_followed_dirs)
    (run / "ns").mkdir(parents=True, exist_ok=True)
    script = run / "ns-setup.sh"
    script.write_text(_ns_script(spec))
    ready = run / "holder.ready"
    ready.unlink(missing_ok=True)
    pid = _spawn(
        spec.node, "holder", ["unshare", "-m", "--propagation", "slave", "sh", str(script)]
    )

    def up() -> bool:
        if _is_zombie(pid):
            raise LabError(
                f"the mount namespace of node {spec.node} could not be made; its log ends:\n"
                f"{node_log(spec.node, 'holder')}"
            )
        return ready.is_file() and _cmdline(pid).startswith(str(paths.bin_dir() / "pause"))

    try:
        poll_until(up, 15, f"node {spec.node} mount namespace", interval=0.02)
    except WaitTimeout:
        raise LabError(
            f"node {spec.node}: mount namespace not ready in 15 s:\n{node_log(spec.node, 'holder')}"
        ) from None
    if _live_mntns(spec.node) is None:
        raise LabError(f"node {spec.node}: the holder {pid} has no mount namespace of its own")
    return pid


def _in_node(holder: int, node: str, argv: list[str]) -> list[str]:
    return [
        "nsenter",
        f"--mount=/proc/{holder}/ns/mnt",
        f"--net={net.NETNS_DIR / net.node_ns(node)}",
        "--",
        *argv,
    ]


# --- the API --------------------------------------------------------------------


def _check_prerequisites(spec: KubeletSpec) -> None:
    for b in ("kubelet", "containerd", "containerd-shim-runc-v2", "ctr", "pause"):
        if not (paths.bin_dir() / b).is_file():
            raise LabError(f"{paths.bin_dir() / b} is missing: run `bash scripts/build-kube.sh`")
    if not RUNC.is_file():
        raise LabError(f"{RUNC} is missing: apt-get install runc")
    for plugin in ("bridge", "host-local", "loopback"):
        if not (CNI_BIN / plugin).is_file():
            raise LabError(
                f"{CNI_BIN / plugin} is missing: apt-get install containernetworking-plugins"
            )
    if not (net.NETNS_DIR / net.node_ns(spec.node)).exists():
        raise LabError(f"node {spec.node} has no network namespace {net.node_ns(spec.node)}")
    for f in (spec.kubeconfig, spec.ca_file, spec.serving_cert, spec.serving_key):
        if not f.is_file():
            raise LabError(f"kubelet file {f} of node {spec.node} does not exist")


def _ctr_version_ok(node: str) -> bool:
    if not containerd_address(node).exists():
        return False
    res = subprocess.run(
        [str(paths.bin_dir() / "ctr"), "--address", str(containerd_address(node)), "version"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return res.returncode == 0 and "Server:" in res.stdout


def start_node(spec: KubeletSpec) -> None:
    """Start the node's containerd, import its images, start its kubelet.

    Returns once containerd answers, the images are there and the kubelet
    serves its healthz port (it has read its config and reached the runtime);
    Node Ready is the caller's to await through the API. A node already
    running is left as it is; one half up (a component died) is cleaned and
    started afresh.
    """
    node = spec.node
    _check_prerequisites(spec)
    if all(_alive(node, c) for c in ("holder", "containerd", "kubelet")):
        images.import_images(containerd_address(node))
        return
    if node_processes(node) or node_run_dir(node).exists():
        cleanup_node(node)
    try:
        _start(spec)
    except BaseException:
        # Nothing half-started stays behind (its logs do, named in the error).
        with contextlib.suppress(LabError):
            cleanup_node(node)
        raise


def _start(spec: KubeletSpec) -> None:
    node = spec.node
    t0 = time.monotonic()
    run, disk = node_run_dir(node), paths.node_dir(node)
    for d in (run / "cni" / "net.d", run / "kubelet", disk / "logs", disk / "pod-logs"):
        d.mkdir(parents=True, exist_ok=True)
    _ensure_kubelet_cgroup_root(node)
    images.all_images()  # packed before containerd needs the pause reference
    (run / "containerd.toml").write_text(_containerd_config(node))
    (run / "cni" / "net.d" / "10-rto-pods.conflist").write_text(_cni_conflist(node, spec.index))

    holder = _start_holder(spec)
    containerd = paths.bin_dir() / "containerd"
    _spawn(node, "containerd", _in_node(holder, node, [str(containerd), "--config",
                                                       str(run / "containerd.toml")]))  # fmt: skip
    _wait(node, "containerd", "containerd answering", lambda: _ctr_version_ok(node), 30)
    t_containerd = time.monotonic() - t0
    imported = images.import_images(containerd_address(node))
    t_images = time.monotonic() - t0
    net.route_to_node(paths.pod_cidr(spec.index), spec.index)
    _spawn_kubelet(spec, holder)
    # The phases of a start, for the lab's figures (and a slow start's diagnosis).
    with open(_log(node, "start"), "a") as f:
        f.write(
            f"{time.strftime('%H:%M:%S')} start: containerd answering {t_containerd:.2f} s, "
            f"images {t_images:.2f} s (imported: {', '.join(imported) or 'none'}), "
            f"kubelet healthz {time.monotonic() - t0:.2f} s\n"
        )


def _kubelet_yaml(spec: KubeletSpec) -> str:
    """The kubelet's config file for ``spec``."""
    cfg = _kubelet_config(spec, _kubelet_cgroup_root(spec.node))
    return json.dumps(cfg, indent=1) + "\n"


def _spawn_kubelet(spec: KubeletSpec, holder: int) -> None:
    """Write the kubelet's config, start it in the node's namespaces, await its healthz port."""
    node = spec.node
    run = node_run_dir(node)
    kubelet_yaml = run / "kubelet.yaml"
    kubelet_yaml.write_text(_kubelet_yaml(spec))
    _spawn(node, "kubelet", _in_node(holder, node, [
        str(paths.bin_dir() / "kubelet"),
        f"--config={kubelet_yaml}",
        f"--kubeconfig={spec.kubeconfig}",
        f"--root-dir={run / 'kubelet'}",
        f"--cert-dir={run / 'kubelet-pki'}",
        f"--hostname-override={node}",
        f"--node-ip={state.node_ip(spec.index)}",
        "-v=1",
    ]))  # fmt: skip
    ns = net.node_ns(node)
    _wait(node, "kubelet", "kubelet healthz port",
          lambda: net.can_connect(ns, "127.0.0.1", KUBELET_HEALTHZ_PORT, 0.5), 60)  # fmt: skip


def kubelet_outdated(spec: KubeletSpec) -> bool:
    """Is the node's kubelet not running with ``spec``'s config (or not running at all)?

    The config file is written just before each kubelet start and read by the
    kubelet only then, so it says what the running one was given.
    """
    try:
        current = (node_run_dir(spec.node) / "kubelet.yaml").read_text()
    except OSError:
        return True
    return _alive(spec.node, "kubelet") is None or current != _kubelet_yaml(spec)


def restart_kubelet(spec: KubeletSpec) -> None:
    """Restart only the kubelet, with ``spec``'s config; returns once it serves healthz.

    A kubelet reads its config at start only, so a new profile needs a new
    process. containerd and the shims stay: the pods' containers keep running
    (no graceful node shutdown is configured, so a SIGTERMed kubelet leaves
    them alone) and the new kubelet adopts them from the runtime.
    """
    node = spec.node
    holder = _alive(node, "holder")
    if holder is None or _alive(node, "containerd") is None:
        raise LabError(f"node {node} is not running (powered off?): power it on first")
    _term(node, "kubelet")
    _spawn_kubelet(spec, holder)


def _term(node: str, component: str) -> None:
    pid = _alive(node, component)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    try:
        poll_until(lambda: _alive(node, component) is None, _STOP_TIMEOUT,
                   f"{component} of {node} to exit", interval=0.05)  # fmt: skip
    except WaitTimeout:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        # Gone before a successor binds its ports (a restart follows at once).
        with contextlib.suppress(WaitTimeout):
            poll_until(lambda: _alive(node, component) is None, 5,
                       f"{component} of {node} to die", interval=0.05)  # fmt: skip


def stop_node(node: str) -> None:
    """SIGTERM the kubelet, then containerd; kill what is left (shims, pods); clean up."""
    _term(node, "kubelet")
    _term(node, "containerd")
    cleanup_node(node)


def _kill_all(node: str) -> None:
    """SIGKILL every process of the node until none is left (a shim may fork meanwhile)."""

    def gone() -> bool:
        pids = node_processes(node)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return not pids

    try:
        poll_until(gone, 10, f"processes of node {node} to die", interval=0.05)
    except WaitTimeout:
        raise LabError(
            f"processes of node {node} survived SIGKILL: {node_processes(node)}"
        ) from None


def cleanup_node(node: str) -> None:
    """Kill what is left of the node, then remove its runtime state (idempotent).

    After a power-off (``cgroups.kill_node``) nothing runs and the kernel has
    already dropped the node's mount namespace with every mount in it; here go
    the pods' cgroups, the run dir (sockets, containerd state, the kubelet's
    root dir, CNI IPAM and results). The node's disk (containerd's root with
    the images, logs) stays, as a real node's would.
    """
    _kill_all(node)
    _remove_kubepods(node)
    run = node_run_dir(node)
    if run.exists():
        left = [m for m in _host_mounts() if m == str(run) or m.startswith(f"{run}/")]
        for m in sorted(left, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True, check=False)
        try:
            shutil.rmtree(run)
        except OSError as exc:
            raise LabError(f"cannot remove {run} of node {node}: {exc}") from exc


# --- leftovers ------------------------------------------------------------------


def _host_mounts() -> list[str]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    return [line.split()[4].replace("\\040", " ") for line in lines]


def _known_nodes() -> set[str]:
    found: set[str] = set()
    for d in (paths.kube_dir() / "nodes", paths.kube_run_dir()):
        with contextlib.suppress(OSError):
            found |= {p.name for p in d.iterdir() if p.is_dir() and p.name != "hub"}
    return found


def leftovers() -> list[str]:
    """Everything of this lab's kube nodes still on the machine; [] when clean.

    Processes (by command line, pods' cgroups, a node mount namespace), mounts
    under the lab's kube dirs in the host namespace, pods' cgroups, run
    directories of nodes, pod netns in /run/netns, and the default host paths
    a confined component would never create.
    """
    out: list[str] = []
    nodes = _known_nodes()
    kube_dirs = (f"{paths.kube_run_dir()}/", f"{paths.kube_dir() / 'nodes'}/")
    pods_cgs = tuple(_kubepods_cgroup(n) for n in nodes)
    holders = f"{_HOLDER_MARK}{paths.kube_run_dir()}/"
    namespaces = {ns for n in nodes if (ns := _live_mntns(n)) is not None}
    me = os.getpid()
    for pid in _pids():
        if pid == me or _is_zombie(pid):
            continue
        cmd = _cmdline(pid)
        if (
            any(d in cmd for d in kube_dirs)
            or holders in cmd
            or (pods_cgs and _in_cgroup(pid, pods_cgs))
            or _mntns(pid) in namespaces
        ):
            out.append(f"process {pid}: {cmd[:160]}")
    for m in _host_mounts():
        if any(m.startswith(d) for d in kube_dirs):
            out.append(f"mount {m}")
    for n in sorted(nodes):
        rel = Path(cgroups.LAB_CGROUP) / cgroups.node_dir(n) / "kubepods"
        with contextlib.suppress(OSError):
            for hier in sorted(cgroups.CGROUP_ROOT.iterdir()):
                if (hier / rel).is_dir():
                    out.append(f"cgroup {hier / rel}")
        if node_run_dir(n).exists():
            out.append(f"run dir {node_run_dir(n)}")
    with contextlib.suppress(OSError):
        out += [f"pod netns {p}" for p in sorted(net.NETNS_DIR.glob("cni-*"))]
    out += [f"stray host path {p}" for p in _STRAY if os.path.lexists(p)]
    return out
