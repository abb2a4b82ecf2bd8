"""The lab's real control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

Called by ``cluster.lab.kube.cluster`` at ``rto lab up``, by ``lab_down``,
and at a profile switch (``outdated``, ``stop_component``,
``start_components``: the control plane restarts, etcd and its data stay).
Every process runs in the hub network namespace (where the probers and the
lab's virt-controller also run) and in the cgroup ``rto-lab/kube-hub``, so a teardown after a
SIGKILL of everything finds and kills it by cgroup, not by what a pid file
claims. The API server listens on every address of the hub: nodes reach it at
``HUB_IP:6443`` over the lab bridge, the host (the harness, the user's
``kubectl``) at the hub end of the host link (``paths.host_link``). etcd and
the components' own health ports stay on the hub's loopback.

The binaries are the pinned ones of scripts/build-kube.sh; the flags are the
components' defaults plus what a cluster needs to work (TLS, RBAC, service
accounts, NodeRestriction) and the profile's knobs (``flags``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import ssl
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from cluster.lab import cgroups, net, state
from cluster.lab.kube import paths
from cluster.lab.kube.flags import ComponentFlags
from cluster.lab.kube.pki import ADMIN_USER, FRONT_PROXY_USER, Pki, kubeconfig
from core.errors import LabError
from core.wait import WaitTimeout, poll_until

__all__ = [
    "COMPONENTS",
    "CONTROL_PLANE",
    "HUB_CGROUP",
    "admin_kubeconfig",
    "api_server_url",
    "component_pid",
    "etcd_running",
    "hub_alive",
    "hub_log",
    "kill_hub",
    "node_kubeconfig",
    "outdated",
    "record_flags",
    "start_components",
    "start_hub",
    "stop_component",
]

HUB_CGROUP = "kube-hub"  # a "node" name for cgroups.*: rto-lab/kube-hub
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
CONTROL_PLANE = COMPONENTS[1:]  # what a profile switch may restart: etcd (the data) stays
_STOP_TIMEOUT = 15.0
_ETCD = "http://127.0.0.1:2379"


def admin_kubeconfig() -> Path:
    """The kubeconfig ``rto lab kubeconfig`` hands out (server: the host link)."""
    return paths.kube_dir() / "admin.kubeconfig"


def node_kubeconfig(node: str) -> Path:
    return paths.kube_dir() / "kubeconfigs" / f"{node}-kubelet.kubeconfig"


def api_server_url() -> str:
    """The API server as the host reaches it."""
    return f"https://{paths.host_link()[2]}:{paths.API_PORT}"


def _log_dir() -> Path:
    return Path(state.STATE_DIR) / "logs"


def hub_log(component: str, lines: int = 15) -> str:
    try:
        text = (_log_dir() / f"{component}.log").read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _pid_file(component: str) -> Path:
    return paths.kube_run_dir() / "hub" / f"{component}.pid"


def _spawn(component: str, argv: list[str]) -> None:
    """Start ``component`` in the hub netns and the hub cgroup (joined before exec)."""
    log = _log_dir() / f"{component}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    binary = paths.bin_dir() / component
    if not binary.is_file():
        raise LabError(f"{binary} is missing: run `bash scripts/build-kube.sh`")
    with open(log, "ab") as out:
        p = subprocess.Popen(
            ["nsenter", f"--net={net.NETNS_DIR / net.HUB_NS}", str(binary), *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the harness must not stop the cluster
            preexec_fn=lambda: cgroups.attach(os.getpid(), HUB_CGROUP),
            close_fds=True,
            cwd=paths.kube_dir(),
        )
    # Reaped by a thread: the lab outlives nothing of ours, but while this
    # process lives a dead component must not linger as a zombie.
    threading.Thread(target=p.wait, name=f"reap-{component}", daemon=True).start()
    _pid_file(component).parent.mkdir(parents=True, exist_ok=True)
    _pid_file(component).write_text(f"{p.pid}\n")


def _component_pid(component: str) -> int | None:
    """The pid of ``component`` if it runs, in the hub cgroup, with its binary."""
    try:
        pid = int(_pid_file(component).read_text().strip())
        exe = os.readlink(f"/proc/{pid}/exe")
        cg = Path(f"/proc/{pid}/cgroup").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    mine = f"/{cgroups.LAB_CGROUP}/{cgroups.node_dir(HUB_CGROUP)}" in cg
    alive = stat.rsplit(")", 1)[1].split()[0] != "Z"
    # Just after the spawn it may still be nsenter, which then execs the component.
    exe_ok = Path(exe).name in (component, "nsenter")
    return pid if mine and alive and exe_ok else None


def component_pid(component: str) -> int | None:
    """The pid of a running hub component (what a switch restarted shows in it)."""
    return _component_pid(component)


def hub_alive() -> dict[str, bool]:
    return {c: _component_pid(c) is not None for c in COMPONENTS}


def etcd_running() -> bool:
    """Does etcd (the cluster's data) run? A profile switch needs it and keeps it."""
    return _component_pid("etcd") is not None


def _in_hub(fn: Callable[[], bool]) -> bool:
    """Run ``fn`` in a thread that entered the hub netns (sockets open there)."""
    out: list[bool] = []

    def run() -> None:
        try:
            net.enter_netns(net.HUB_NS)
            out.append(fn())
        except (OSError, LabError):
            out.append(False)

    t = threading.Thread(target=run, name="hub-probe")
    t.start()
    t.join()
    return bool(out and out[0])


def _wait(component: str, ready: Callable[[], bool], timeout: float) -> None:
    def check() -> bool:
        if _component_pid(component) is None:
            raise LabError(f"{component} exited during start:\n{hub_log(component)}")
        return ready()

    try:
        poll_until(check, timeout, f"{component} ready", interval=0.2)
    except WaitTimeout:
        raise LabError(
            f"{component} not ready after {timeout:.0f} s:\n{hub_log(component)}"
        ) from None


def _https_ok(url: str, ctx: ssl.SSLContext) -> Callable[[], bool]:
    """A check: does ``url`` answer 200 over TLS with ``ctx``?"""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    return check


def _admin_tls(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.crt("admin")), str(pki.key("admin")))
    return ctx


def _unverified_tls() -> ssl.SSLContext:
    # The controller-manager's and scheduler's serving certificates are
    # self-signed at start; only their liveness matters here.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _etcd_healthy() -> bool:
    try:
        with urllib.request.urlopen(f"{_ETCD}/health", timeout=2) as r:
            return bool(json.loads(r.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


def start_hub(flags: ComponentFlags, nodes: list[tuple[str, str]], timeout: float = 120) -> None:
    """PKI, kubeconfigs, host link, then the four components, each ready before the next.

    ``nodes``: (name, node IP) of every lab node, for their certificates.
    """
    kdir = paths.kube_dir()
    kdir.mkdir(parents=True, exist_ok=True)
    pki = Pki.default()
    ifname, host_addr, hub_addr = paths.host_link()
    pki.make_hub([state.HUB_IP, hub_addr], _first_service_ip())
    for name, ip in nodes:
        pki.make_node(name, ip)
    kubeconfig(admin_kubeconfig(), api_server_url(), pki.ca, pki.crt("admin"), pki.key("admin"),
               ADMIN_USER, inline=True)  # fmt: skip
    local = f"https://127.0.0.1:{paths.API_PORT}"  # components in the hub netns
    for who in ("controller-manager", "scheduler"):
        crt, key = pki.crt(who), pki.key(who)
        kubeconfig(_kubeconfigs() / f"{who}.kubeconfig", local, pki.ca, crt, key, who)
    bridge = f"https://{state.HUB_IP}:{paths.API_PORT}"  # kubelets, over the lab bridge
    for name, _ip in nodes:
        crt, key = pki.crt(f"{name}-kubelet"), pki.key(f"{name}-kubelet")
        kubeconfig(node_kubeconfig(name), bridge, pki.ca, crt, key, f"system:node:{name}")
    net.create_host_link(ifname, host_addr, hub_addr)
    cgroups.create_node_cgroup(HUB_CGROUP)

    _spawn("etcd", [
        "--name=rto-lab", f"--data-dir={kdir / 'etcd'}",
        f"--listen-client-urls={_ETCD}", f"--advertise-client-urls={_ETCD}",
        "--listen-peer-urls=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        "--initial-cluster=rto-lab=http://127.0.0.1:2380", "--initial-cluster-state=new",
        "--log-level=warn",
    ])  # fmt: skip
    _wait("etcd", lambda: _in_hub(_etcd_healthy), 30)
    start_components(CONTROL_PLANE, flags, timeout)
    record_flags(flags)


def record_flags(flags: ComponentFlags) -> None:
    """``kube-profile.json``: the values the components run with, for the report."""
    text = json.dumps(flags.as_dict(), indent=1) + "\n"
    (paths.kube_dir() / "kube-profile.json").write_text(text)


def _kubeconfigs() -> Path:
    """The controller-manager's and scheduler's kubeconfigs (server: the hub's loopback)."""
    return paths.kube_dir() / "kubeconfigs"


def _apiserver_argv(flags: ComponentFlags) -> list[str]:
    kdir, pki = paths.kube_dir(), Pki.default()
    return [
        f"--etcd-servers={_ETCD}", "--bind-address=0.0.0.0",
        f"--advertise-address={state.HUB_IP}", f"--secure-port={paths.API_PORT}",
        f"--tls-cert-file={pki.crt('apiserver')}", f"--tls-private-key-file={pki.key('apiserver')}",
        f"--client-ca-file={pki.ca}",
        f"--kubelet-client-certificate={pki.crt('apiserver-kubelet-client')}",
        f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
        f"--kubelet-certificate-authority={pki.ca}",
        # Reach kubelets (logs, exec, the node proxy) at their node IP: the lab
        # has no DNS, so a node's hostname resolves to nothing.
        "--kubelet-preferred-address-types=InternalIP",
        f"--service-account-key-file={pki.dir / 'sa.pub'}",
        f"--service-account-signing-key-file={pki.dir / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-cluster-ip-range={paths.SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC",
        # Added to the default plugins (DefaultTolerationSeconds among them):
        # a kubelet may only touch its own Node and its pods.
        "--enable-admission-plugins=NodeRestriction",
        "--allow-privileged=true",
        f"--cert-dir={kdir / 'apiserver-certs'}",
        # The aggregator's identity towards extension API servers (the lab's
        # virt-api serves subresources.kubevirt.io), and the CA they check it
        # with; routed to the APIService's endpoint, as there is no kube-proxy.
        f"--requestheader-client-ca-file={pki.ca}",
        f"--requestheader-allowed-names={FRONT_PROXY_USER}",
        f"--proxy-client-cert-file={pki.crt('front-proxy-client')}",
        f"--proxy-client-key-file={pki.key('front-proxy-client')}",
        "--enable-aggregator-routing=true",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        # On SIGTERM, end open watches (their clients re-watch) within 2 s:
        # left open, they hold the shutdown until its 60 s timeout, and a
        # profile switch (``stop_component``) would SIGKILL it after 15 s.
        "--shutdown-watch-termination-grace-period=2s",
        *flags.argv("apiserver"),
    ]  # fmt: skip


def _controller_manager_argv(flags: ComponentFlags) -> list[str]:
    kdir, pki, kcs = paths.kube_dir(), Pki.default(), _kubeconfigs()
    return [
        f"--kubeconfig={kcs / 'controller-manager.kubeconfig'}",
        f"--authentication-kubeconfig={kcs / 'controller-manager.kubeconfig'}",
        f"--authorization-kubeconfig={kcs / 'controller-manager.kubeconfig'}",
        "--bind-address=127.0.0.1", "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.dir / 'sa.key'}",
        f"--root-ca-file={pki.ca}",
        f"--cluster-signing-cert-file={pki.ca}", f"--cluster-signing-key-file={pki.ca_key}",
        f"--service-cluster-ip-range={paths.SERVICE_CIDR}",
        # Its default /usr/libexec/kubernetes/... would be created on the host.
        f"--flex-volume-plugin-dir={kdir / 'flexvolume'}",
        *flags.argv("controller_manager"),
    ]  # fmt: skip


def _scheduler_argv(flags: ComponentFlags) -> list[str]:
    kcs = _kubeconfigs()  # no profile knob: ``flags`` only for the table's shape
    return [
        f"--kubeconfig={kcs / 'scheduler.kubeconfig'}",
        f"--authentication-kubeconfig={kcs / 'scheduler.kubeconfig'}",
        f"--authorization-kubeconfig={kcs / 'scheduler.kubeconfig'}",
        "--bind-address=127.0.0.1", "--leader-elect=false",
    ]  # fmt: skip


_ARGV: dict[str, Callable[[ComponentFlags], list[str]]] = {
    "kube-apiserver": _apiserver_argv,
    "kube-controller-manager": _controller_manager_argv,
    "kube-scheduler": _scheduler_argv,
}


def _ready_check(component: str) -> Callable[[], bool]:
    """What "ready" means for a control-plane component, as a check."""
    if component == "kube-apiserver":
        # From the host, through the host link: what the harness and kubectl use.
        return _https_ok(f"{api_server_url()}/readyz", _admin_tls(Pki.default()))
    # Their healthz answer anonymous GETs on the hub's loopback (default ports).
    port = {"kube-controller-manager": 10257, "kube-scheduler": 10259}[component]
    healthz = _https_ok(f"https://127.0.0.1:{port}/healthz", _unverified_tls())
    return functools.partial(_in_hub, healthz)


def start_components(components: Sequence[str], flags: ComponentFlags, timeout: float) -> None:
    """Start control-plane ``components`` (in ``CONTROL_PLANE`` order) with ``flags``; ready.

    The API server is awaited before the others are spawned (they need it);
    the others start side by side and are awaited together. etcd must run.
    """
    todo = [c for c in CONTROL_PLANE if c in components]
    if "kube-apiserver" in todo:
        _spawn("kube-apiserver", _ARGV["kube-apiserver"](flags))
        _wait("kube-apiserver", _ready_check("kube-apiserver"), timeout)
        todo.remove("kube-apiserver")
    for component in todo:
        _spawn(component, _ARGV[component](flags))
    for component in todo:
        _wait(component, _ready_check(component), min(timeout, 60))


def stop_component(component: str) -> None:
    """SIGTERM ``component`` and wait for its exit (SIGKILL after ``_STOP_TIMEOUT``).

    Graceful, unlike ``kill_hub``: the API server drains its watches, the
    others release their ports, so a successor started at once can bind them.
    """
    pid = _component_pid(component)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)

    def gone() -> bool:
        return _component_pid(component) is None

    try:
        poll_until(gone, _STOP_TIMEOUT, f"{component} to exit", interval=0.05)
    except WaitTimeout:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        try:
            poll_until(gone, 5, f"{component} to die", interval=0.05)
        except WaitTimeout:
            raise LabError(f"{component} (pid {pid}) survived SIGKILL") from None


def _running_argv(component: str) -> list[str] | None:
    """The flags ``component`` runs with (what follows its binary), None if it does not run."""
    pid = _component_pid(component)
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes() if pid is not None else b""
    except OSError:
        return None
    words = [w.decode(errors="replace") for w in raw.split(b"\0")[:-1]]
    binary = str(paths.bin_dir() / component)
    # Just after the spawn it may still be ``nsenter --net=... <binary> ...``.
    return words[words.index(binary) + 1 :] if binary in words else None


def outdated(flags: ComponentFlags) -> list[str]:
    """Control-plane components not running with ``flags`` (or not running), in start order.

    Read from each process's command line, not from a record of what was
    asked for: a switch that failed half-way is seen as it is.
    """
    return [c for c in CONTROL_PLANE if _running_argv(c) != _ARGV[c](flags)]


def _first_service_ip() -> str:
    a, b, c, d = paths.SERVICE_CIDR.split("/")[0].split(".")
    return f"{a}.{b}.{c}.{int(d) + 1}"


def kill_hub() -> None:
    """SIGKILL every process of the hub cgroup, remove it, the host link and the pid files.

    Works after a SIGKILL of the harness (it needs no pid file). etcd's data
    goes with the state dir: every ``lab up`` starts a new cluster.
    """
    for component in reversed(COMPONENTS):
        pid = _component_pid(component)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    cgroups.kill_node(HUB_CGROUP)
    cgroups.delete_node_cgroup(HUB_CGROUP)
    net.delete_host_link(paths.host_link()[0])
    with contextlib.suppress(FileNotFoundError):
        for f in (paths.kube_run_dir() / "hub").iterdir():
            f.unlink()
