"""Pod containers: OCI bundles and the runc commands the node agent uses.

Called by the node agent (``prepare_bundle``, ``run_foreground``, ``delete``),
by the process-crash fault (``main_pid`` to find whom to SIGKILL) and by
``lab_down`` (``list_containers``, ``delete``). One runc state root per node
(``RUNC_ROOT``), container id = pod name, bundle
``<RUN_DIR>/<node>/bundles/<pod>``. The container joins the pod's network
namespace (made by ``net.create_pod_net``) and the cgroup
``/rto-lab/<node>/<pod>``; its root is the shared read-only busybox image with
tmpfs ``/tmp`` and ``/www`` and the pod's volume bind-mounted at ``/data``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path
from typing import IO, Any

from cluster.lab import cgroups, net, state, volumes
from cluster.lab.rootfs import ensure_rootfs
from core.errors import LabError

__all__ = [
    "RUNC",
    "RUNC_ROOT",
    "bundle_dir",
    "container_status",
    "delete",
    "kill",
    "list_containers",
    "main_pid",
    "prepare_bundle",
    "run_foreground",
]

RUNC = "runc"


def RUNC_ROOT(node: str) -> Path:  # upper case: the name in LAB-CONTRACT.md
    """runc's state root for one node: containers of different nodes never mix."""
    return state.RUN_DIR / node / "runc"


def bundle_dir(node: str, pod: str) -> Path:
    return state.RUN_DIR / node / "bundles" / pod


def _runc(node: str, *args: str) -> subprocess.CompletedProcess[str]:
    root = RUNC_ROOT(node)
    root.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(
            [RUNC, "--root", str(root), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except FileNotFoundError:
        raise LabError("runc is not installed (apt-get install runc)") from None
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"runc {' '.join(args)} on node {node} hung for 30 s") from exc


_TMPFS_OPTS = ["nosuid", "nodev", "mode=1777", "size=16m"]


def _config(node: str, index: int, pod: str, ip: str, instance: str) -> dict[str, Any]:
    rootfs = ensure_rootfs()
    data = volumes.mountpoint(pod)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/start"],
            "env": [
                "PATH=/bin",
                f"POD_NAME={pod}",
                f"INSTANCE={instance}",
                f"POD_IP={ip}",
                f"NODE_NAME={node}",
                f"NODE_INDEX={index}",
            ],
            "cwd": "/",
            # httpd binds port 80; nothing else needs privileges.
            "capabilities": {
                k: ["CAP_NET_BIND_SERVICE", "CAP_KILL", "CAP_AUDIT_WRITE"]
                for k in ("bounding", "effective", "permitted", "ambient")
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": pod[:63],
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": _TMPFS_OPTS},
            {"destination": "/www", "type": "tmpfs", "source": "tmpfs", "options": _TMPFS_OPTS},
            {
                "destination": "/data",
                "type": "bind",
                "source": str(data),
                "options": ["rbind", "rw", "rprivate"],
            },
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": str(net.NETNS_DIR / net.pod_ns(pod))},
            ],
            "cgroupsPath": cgroups.pod_cgroups_path(node, pod),
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "maskedPaths": [
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/sched_debug",
                "/sys/firmware",
            ],
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
    }


def prepare_bundle(node: str, index: int, pod: str, ip: str, instance: str) -> Path:
    """Write the bundle (config.json) for the pod's next container; returns its dir.

    The pod netns and the volume must exist before the container is started
    (``net.create_pod_net``, ``volumes.ensure_volume``).
    """
    bdir = bundle_dir(node, pod)
    bdir.mkdir(parents=True, exist_ok=True)
    tmp = bdir / "config.json.tmp"
    tmp.write_text(json.dumps(_config(node, index, pod, ip, instance), indent=1))
    tmp.replace(bdir / "config.json")
    return bdir


def run_foreground(node: str, pod: str, log: Path) -> subprocess.Popen[bytes]:
    """``runc run`` as a child: it exits when the container's pid 1 does.

    stdout/stderr of the container (and of runc) are appended to ``log``.
    A stale container of the same id (left by a killed agent) is removed first.
    """
    delete(node, pod)
    log.parent.mkdir(parents=True, exist_ok=True)
    bdir = bundle_dir(node, pod)
    if not (bdir / "config.json").is_file():
        raise LabError(f"no bundle for pod {pod} on node {node}; call prepare_bundle first")
    out: IO[bytes]
    with open(log, "ab") as out:
        return subprocess.Popen(
            [RUNC, "--root", str(RUNC_ROOT(node)), "run", "--bundle", str(bdir), pod],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            close_fds=True,
        )


def container_status(node: str, pod: str) -> str | None:
    """runc's status ("created", "running", "paused", "stopped") or None if unknown."""
    res = _runc(node, "state", pod)
    if res.returncode != 0:
        return None
    status = json.loads(res.stdout).get("status")
    return str(status) if status is not None else None


def main_pid(node: str, pod: str) -> int | None:
    """Host pid of the container's pid 1 (httpd) while it runs, else None."""
    res = _runc(node, "state", pod)
    if res.returncode != 0:
        return None
    info = json.loads(res.stdout)
    if info.get("status") not in ("running", "paused", "created"):
        return None
    pid = int(info.get("pid") or 0)
    return pid or None


def kill(node: str, pod: str) -> None:
    """SIGKILL the container (idempotent: a missing or stopped one is fine)."""
    res = _runc(node, "kill", pod, "KILL")
    if res.returncode != 0 and not _gone(res.stderr):
        raise LabError(f"runc kill {pod} on node {node} failed: {res.stderr.strip()}")


def delete(node: str, pod: str) -> None:
    """Remove the container and its runc state (idempotent; kills it if running)."""
    res = _runc(node, "delete", "--force", pod)
    if res.returncode != 0 and not _gone(res.stderr):
        raise LabError(f"runc delete {pod} on node {node} failed: {res.stderr.strip()}")


def _gone(stderr: str) -> bool:
    s = stderr.lower()
    return "does not exist" in s or "not running" in s or "container not running" in s


def list_containers(node: str) -> list[str]:
    """Ids of the containers runc knows on this node (any status)."""
    root = RUNC_ROOT(node)
    if not root.is_dir():
        return []
    res = _runc(node, "list", "--format", "json")
    if res.returncode != 0:
        raise LabError(f"runc list on node {node} failed: {res.stderr.strip()}")
    with contextlib.suppress(json.JSONDecodeError):
        items = json.loads(res.stdout or "null") or []
        return sorted(str(i["id"]) for i in items)
    raise LabError(f"runc list on node {node} printed something unreadable: {res.stdout!r}")
