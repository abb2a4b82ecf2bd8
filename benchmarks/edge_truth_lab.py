"""The lab half of ``benchmarks/edge_truth.py``: a real pod switched off from inside.

Imported by ``edge_truth.main`` only with ``--lab``/``--lab-up`` (the loopback
half must run where no lab code works). The pod is the lab's busybox-httpd pod
(``LabClusterBackend.create_workload(name, WorkloadKind.POD)``, the CGI of
``cluster.kube.workloads``). Its server is switched off and on again from
inside the container: the CGI ``/www/cgi-bin/healthz`` is replaced by one that
answers ``Status: 500`` (busybox httpd turns that into ``HTTP/1.0 500``) and
then by the original, each time by writing the new script next to it and
renaming it over the old one through ``/proc/<container pid>/root``. httpd
execs the CGI anew for every request, so every request whose exec comes after
the rename gets the new answer: the rename(2) is the edge, stamped before and
after with ``time.monotonic()``.

The container's pid is found from the pod: its ``containerID`` (containerd)
names the container's cgroup under the node's ``kubepods`` (kubelet cgroupfs
driver), and any process in that cgroup shares the container's mount
namespace.

``--lab-up`` brings up a private 1-node lab (own state/run dirs, netns prefix
and node names, as ``benchmarks/recorder_precision.py`` does) and always tears
it down, also on error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from truth_server import Stamp

__all__ = ["lab"]

WORKLOAD = "rto-edge"
MODE = "cgi500"
CGI = "www/cgi-bin/healthz"
_OFF_CGI = (
    "#!/bin/sh\n"
    "printf 'Status: 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\n"
    '%s %s switched off\\n\' "$WORKLOAD" "$INSTANCE"\n'
)
# Private lab: never touches a lab someone else has up on the machine.
_PRIVATE_ENV = {
    "RTO_LAB_STATE_DIR": "/var/lib/rto-lab-edgetruth",
    "RTO_LAB_RUN_DIR": "/run/rto-lab-edgetruth",
    "RTO_LAB_NS_PREFIX": "rtoet",
}
_NODE_PREFIX = "et"


def container_root(node: str, container_id: str) -> Path:
    """``/proc/<pid>/root`` of a process of the container ``container_id`` on ``node``."""
    from cluster.lab import cgroups

    for pid in sorted(cgroups.cgroup_pids(node)):
        with contextlib.suppress(OSError):
            if container_id in Path(f"/proc/{pid}/cgroup").read_text():
                root = Path(f"/proc/{pid}/root")
                if (root / CGI).exists():
                    return root
    raise SystemExit(f"lab: no process of container {container_id[:12]} on {node} has {CGI}")


class CgiSwitch:
    """Replace the pod's CGI atomically (rename over it), stamping the rename."""

    def __init__(self, root: Path) -> None:
        self.path = root / CGI
        self.original = self.path.read_bytes()
        self.current = self.original

    def _put(self, content: bytes) -> Stamp:
        tmp = self.path.with_name(".healthz.next")
        tmp.write_bytes(content)
        tmp.chmod(0o755)
        # Written and flushed before the stamps: only the rename is timed.
        before = time.monotonic()
        os.rename(tmp, self.path)
        after = time.monotonic()
        self.current = content
        return Stamp("off" if content != self.original else "on", before, after)

    def off(self) -> Stamp:
        return self._put(_OFF_CGI.encode())

    def on(self) -> Stamp:
        return self._put(self.original)

    def restore(self) -> None:
        if self.current != self.original:
            self.on()


@contextlib.contextmanager
def _lab_backend(bring_up: bool) -> Iterator[Any]:
    """A ``LabClusterBackend``; with ``bring_up`` on a private lab, torn down after."""
    if bring_up:
        # Before the lab modules are imported: they read these once.
        for key, value in _PRIVATE_ENV.items():
            os.environ.setdefault(key, value)
    from cluster.lab import state
    from cluster.lab.lifecycle import lab_down, lab_status, lab_up
    from cluster.lab_cluster import LabClusterBackend, LabClusterProvider

    if bring_up and str(state.STATE_DIR) != os.environ["RTO_LAB_STATE_DIR"]:
        raise SystemExit(f"lab modules were imported too early: state dir {state.STATE_DIR}")
    if not bring_up and not lab_status().get("up"):
        raise SystemExit("--lab: the lab is not up (run `rto lab up` or pass --lab-up)")
    try:
        if bring_up:
            t0 = time.monotonic()
            lab_up("fast", nodes=1, node_prefix=_NODE_PREFIX)
            print(f"lab up in {time.monotonic() - t0:.1f} s", flush=True)
        be = LabClusterProvider().backend()
        assert isinstance(be, LabClusterBackend)
        try:
            yield be
        finally:
            be.close()
    finally:
        if bring_up:
            lab_down()


def lab(
    args: argparse.Namespace,
    make_arms: Callable[..., list[Any]],
    run_trials: Callable[..., dict[str, Any]],
    plan: list[tuple[str, float]],
) -> dict[str, Any]:
    """The ``plan``'s CGI-500 outages of a lab pod, watched by every arm's prober.

    Each prober reaches the pod where the recorder would (``probe_target``: the
    pod's IP, from the node's network namespace). ``edge_truth`` passes its own
    arm and trial machinery in (it runs as ``__main__``; importing it from here
    would load a second copy).
    """
    from cluster.api import WorkloadKind

    with _lab_backend(args.lab_up) as be:
        be.create_workload(WORKLOAD, WorkloadKind.POD)
        switch: CgiSwitch | None = None
        try:
            if be.wait_ready(WORKLOAD, timeout=90) is None:
                raise SystemExit(f"lab: pod {WORKLOAD} not Ready within 90 s; nothing measured")
            pod = be.kube.reader.pod_of(WORKLOAD)
            cid = pod["status"]["containerStatuses"][0]["containerID"].rpartition("://")[2]
            switch = CgiSwitch(container_root(pod["spec"]["nodeName"], cid))
            target = be.probe_target(WORKLOAD)
            if target is None:
                raise SystemExit(f"lab: pod {WORKLOAD} has no probe target; nothing measured")
            arms = make_arms(target, WORKLOAD, time.monotonic(), args)
            sw = switch
            out: dict[str, Any] = run_trials(
                "lab",
                arms,
                {MODE: (sw.off, sw.on)},
                plan,
                args.seed + 2,
                args.interval,
                args.lead,
                10.0,
            )
            out["pod"] = {"node": pod["spec"]["nodeName"], "container": cid[:12]}
            return out
        finally:
            try:
                if switch is not None:
                    switch.restore()
            finally:
                be.delete_workload(WORKLOAD)
