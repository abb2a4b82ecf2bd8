"""KubeBackend.metrics and .log_path against the stateful API emulator.

metrics: metrics-server's PodMetrics (quantities, a VMI read through its
virt-launcher pod, CPU rate integrated into cpu_s, no metrics-server = None
asked once, RBAC explained). log_path: the pod's log streamed into a local file
that ``chaos.logs.LogFollower`` turns into LOG events, re-attached to a new pod,
stopped by ``close``. The real ``kubernetes`` client speaks HTTP to the
emulator on 127.0.0.1 (tests/kube_emulator.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from kube_emulator import KubeEmulator, emulator, eventually, write_kubeconfig

from chaos.logs import LogFollower
from chaos.metrics import MetricsSampler
from cluster.kube.backend import KubeBackend
from cluster.kube.config import KubeConfig
from cluster.kube.observe import PodLogFollower, cpu_cores, memory_bytes
from core.clock import FakeClock
from core.errors import BackendError
from core.timeline import EventKind, Timeline

NS = "rto"
TARGET = {"rto.harness/target": "true"}
METRICS = "/apis/metrics.k8s.io/v1beta1"


def wl(name: str) -> dict[str, str]:
    return {**TARGET, "rto.harness/workload": name}


@pytest.fixture
def emu() -> Iterator[KubeEmulator]:
    with emulator() as e:
        for n in ("w1", "w2"):
            e.add_node(n, TARGET)
        e.add_pod(NS, "web-a1", "w1", wl("web"), owner="web-rs")
        e.add_vmi(NS, "vm1", "w1", wl("vm1"))
        yield e


@pytest.fixture
def backend(emu: KubeEmulator, tmp_path: Path) -> Iterator[KubeBackend]:
    cfg_path = write_kubeconfig(str(tmp_path / "kubeconfig"), {"emu": emu.url}, "emu")
    cfg = KubeConfig(contexts=("emu",), kubeconfig=cfg_path, namespaces=(NS,))
    b = KubeBackend(cfg, sleep=lambda s: None, echo=lambda m: None, clock=FakeClock(100.0))
    try:
        yield b
    finally:
        b.close()


def launcher(emu: KubeEmulator, vmi: str) -> str:
    names = [
        o["metadata"]["name"]
        for o in emu.items("", "pods")
        if o["metadata"]["labels"].get("vm.kubevirt.io/name") == vmi
    ]
    assert len(names) == 1
    return str(names[0])


def clock_of(b: KubeBackend) -> FakeClock:
    assert isinstance(b.clock, FakeClock)
    return b.clock


# --- metrics -------------------------------------------------------------------------
def test_quantities() -> None:
    assert cpu_cores("12345n") == pytest.approx(12345e-9)
    assert cpu_cores("250u") == pytest.approx(250e-6)
    assert cpu_cores("5m") == pytest.approx(0.005)
    assert cpu_cores("2") == 2.0
    assert memory_bytes("1234Ki") == 1234 * 1024
    assert memory_bytes("3Mi") == 3 * 1024**2
    assert memory_bytes("1Gi") == 1024**3
    assert memory_bytes("1k") == 1000
    assert memory_bytes("2M") == 2_000_000
    assert memory_bytes("1G") == 10**9
    assert memory_bytes("4096") == 4096
    with pytest.raises(BackendError, match="CPU quantity 'lots'"):
        cpu_cores("lots")


def test_pod_metrics_integrate_cpu_rate(emu: KubeEmulator, backend: KubeBackend) -> None:
    clock = clock_of(backend)
    emu.set_usage(NS, "web-a1", {"main": ("500m", "1024Ki")})
    s0 = backend.metrics("web")
    assert s0 is not None
    assert (s0.kind, s0.workload, s0.t) == ("pod", "web", 100.0)
    assert s0.cpu_s == 0.0 and s0.mem_bytes == 1024 * 1024 and s0.host_cpu_s == s0.cpu_s
    clock.advance(2.0)
    emu.set_usage(NS, "web-a1", {"main": ("1500m", "2Mi")})
    s1 = backend.metrics("web")
    assert s1 is not None
    # Trapezoid over 2 s of 0.5 -> 1.5 cores.
    assert s1.cpu_s == pytest.approx(2.0) and s1.mem_bytes == 2 * 1024**2
    clock.advance(1.0)
    s2 = backend.metrics("web")
    assert s2 is not None and s2.cpu_s == pytest.approx(3.5)
    # The pod is replaced (the Deployment's controller): a new instance counts from 0.
    emu.remove("", "pods", NS, "web-a1")
    new = eventually(
        lambda: [p for p in emu.items("", "pods") if p["metadata"]["name"].startswith("web-rs")]
    )[0]["metadata"]["name"]
    assert backend.metrics("web") is None  # not scraped yet
    emu.set_usage(NS, new, {"main": ("1", "1Mi")})
    clock.advance(1.0)
    s3 = backend.metrics("web")
    assert s3 is not None and s3.cpu_s == 0.0


def test_sampler_summary_from_kube_metrics(emu: KubeEmulator, backend: KubeBackend) -> None:
    clock = clock_of(backend)
    emu.set_usage(NS, "web-a1", {"main": ("250m", "10Mi")})
    sampler = MetricsSampler(backend, "web", clock=clock, period_s=1.0)
    for _ in range(5):
        assert sampler.sample_once() is not None
        clock.advance(1.0)
    summary = sampler.summary()
    assert summary.samples == 5 and summary.errors == 0
    assert summary.cpu_s == pytest.approx(1.0)  # 0.25 cores for 4 s
    assert summary.cpu_util == pytest.approx(0.25)
    assert summary.mem_bytes_max == 10 * 1024**2


def test_vmi_metrics_come_from_its_launcher_pod(emu: KubeEmulator, backend: KubeBackend) -> None:
    pod = launcher(emu, "vm1")
    emu.set_usage(NS, pod, {"compute": ("900m", "512Mi"), "guest-console-log": ("1m", "4Mi")})
    s = backend.metrics("vm1")
    assert s is not None and s.kind == "vmi"
    assert s.mem_bytes == 516 * 1024**2 and s.overhead_bytes == 0
    asked = ("GET", f"{METRICS}/namespaces/{NS}/pods/{pod}")
    assert asked in emu.requests
    clock_of(backend).advance(1.0)
    s2 = backend.metrics("vm1")
    assert s2 is not None and s2.cpu_s == pytest.approx(0.901) and s2.host_cpu_s == s2.cpu_s
    assert emu.requests.count(asked) == 2


def test_no_metrics_server_is_none_and_asked_once(emu: KubeEmulator, backend: KubeBackend) -> None:
    emu.metrics_server = False
    emu.set_usage(NS, "web-a1", {"main": ("1", "1Mi")})
    for _ in range(5):
        assert backend.metrics("web") is None
        assert backend.metrics("vm1") is None
    asked = [p for _, p in emu.requests if p.startswith("/apis/metrics.k8s.io")]
    assert asked == [METRICS]
    # No pod listing either: without the API there is nothing to look up.
    assert not any(p.endswith("/pods") for _, p in emu.requests)


def test_no_reading_yet_and_no_pod_are_none(emu: KubeEmulator, backend: KubeBackend) -> None:
    assert backend.metrics("web") is None  # metrics-server has not scraped it yet
    emu.set_usage(NS, "web-a1", {"main": ("1", "1Mi")})
    emu.objects.pop(("", "pods", NS, "web-a1"))  # gone, and nothing replaces it
    assert backend.metrics("web") is None
    assert backend.metrics("nope") is None  # no such workload now (being re-created)


def test_metrics_rbac_denial_is_explained_and_counted(
    emu: KubeEmulator, backend: KubeBackend
) -> None:
    emu.set_usage(NS, "web-a1", {"main": ("1", "1Mi")})
    emu.deny.add(("get", "metrics.k8s.io/pods"))
    with pytest.raises(BackendError, match=r"RBAC: .*'get' 'pods.metrics.k8s.io'"):
        backend.metrics("web")
    sampler = MetricsSampler(backend, "web", clock=clock_of(backend), period_s=1.0)
    for _ in range(3):
        assert sampler.sample_once() is None
    summary = sampler.summary()
    assert summary.errors == 3 and summary.last_error is not None
    assert "grant verbs [get]" in summary.last_error
    # Remembered: the denied API is not asked again on every sample.
    denied = [p for _, p in emu.requests if p == f"{METRICS}/namespaces/{NS}/pods/web-a1"]
    assert len(denied) == 1


# --- logs ----------------------------------------------------------------------------
def test_log_lines_reach_the_file_and_timeline(emu: KubeEmulator, backend: KubeBackend) -> None:
    emu.append_log(NS, "web-a1", "printed long before the run")
    # Written before the run: older than the first attach's sinceSeconds.
    old = emu.logs[next(iter(emu.logs))]
    old[0] = (old[0][0].replace(year=2020), old[0][1])
    path = backend.log_path("web")
    assert path is not None and path.parent.parent.name == "rto-kube-logs"
    assert backend.log_path("web") == path  # one follower per workload
    clock = clock_of(backend)
    timeline = Timeline(origin=clock.now())
    follower = LogFollower(lambda: backend.log_path("web"), timeline, workload="web", clock=clock)
    follower.start()
    try:
        eventually(lambda: emu.open_log_streams() == 1)
        emu.append_log(NS, "web-a1", "hello from web")
        emu.append_log(NS, "web-a1", "RTO-READY web")
        eventually(lambda: "RTO-READY web" in path.read_text())
        assert path.read_text() == "hello from web\nRTO-READY web\n"
        assert follower.poll() == 2
    finally:
        follower.finish()
    logs = [e for e in timeline.events() if e.kind is EventKind.LOG]
    assert [e.message for e in logs] == ["hello from web", "RTO-READY web"]
    assert logs[0].data == {"workload": "web"}


def test_log_follower_reattaches_to_new_pod(emu: KubeEmulator, backend: KubeBackend) -> None:
    path = backend.log_path("web")
    assert path is not None
    eventually(lambda: emu.open_log_streams() == 1)
    emu.append_log(NS, "web-a1", "old pod says bye")
    eventually(lambda: "bye" in path.read_text())
    emu.remove("", "pods", NS, "web-a1")  # the stream ends; the Deployment replaces it
    new = eventually(
        lambda: [p for p in emu.items("", "pods") if p["metadata"]["name"].startswith("web-rs")]
    )[0]["metadata"]["name"]
    emu.append_log(NS, new, "new pod booted")  # before or after it attaches: read
    eventually(lambda: "new pod booted" in path.read_text())
    emu.append_log(NS, new, "new pod serving")
    eventually(lambda: "new pod serving" in path.read_text())
    assert path.read_text() == "old pod says bye\nnew pod booted\nnew pod serving\n"
    follower = backend._log_followers["web"]
    assert follower.attaches >= 2 and follower.error is None


def test_same_pod_stream_end_does_not_repeat_lines(emu: KubeEmulator, backend: KubeBackend) -> None:
    path = backend.log_path("web")
    assert path is not None
    eventually(lambda: emu.open_log_streams() == 1)
    emu.append_log(NS, "web-a1", "one")
    eventually(lambda: "one" in path.read_text())
    emu.drop_watches()  # the server ends the stream (an apiserver restart)
    eventually(lambda: backend._log_followers["web"].attaches >= 2)
    emu.append_log(NS, "web-a1", "two")
    eventually(lambda: "two" in path.read_text())
    assert path.read_text() == "one\ntwo\n"  # "one" was served again and skipped


def test_vmi_log_follows_console_container(emu: KubeEmulator, backend: KubeBackend) -> None:
    pod = launcher(emu, "vm1")
    path = backend.log_path("vm1")
    assert path is not None
    eventually(lambda: emu.open_log_streams() == 1)
    emu.append_log(NS, pod, "virt-launcher noise", container="compute")
    emu.append_log(NS, pod, "rto-guest: watchdog armed", container="guest-console-log")
    eventually(lambda: "watchdog" in path.read_text())
    assert path.read_text() == "rto-guest: watchdog armed\n"


def test_vmi_without_console_log_reads_compute(emu: KubeEmulator, backend: KubeBackend) -> None:
    emu.add_vmi(NS, "vm2", "w2", wl("vm2"), console_log=False)
    pod = launcher(emu, "vm2")
    path = backend.log_path("vm2")
    assert path is not None
    eventually(lambda: emu.open_log_streams() == 1)
    emu.append_log(NS, pod, "virt-launcher started", container="compute")
    eventually(lambda: "virt-launcher started" in path.read_text())


def test_close_stops_followers_and_removes_files(emu: KubeEmulator, backend: KubeBackend) -> None:
    path = backend.log_path("web")
    path2 = backend.log_path("vm1")
    assert path is not None and path2 is not None
    eventually(lambda: emu.open_log_streams() == 2)
    followers = list(backend._log_followers.values())
    backend.close()
    assert not any(f.alive() for f in followers)
    assert not [t for t in threading.enumerate() if t.name.startswith("log-")]
    assert not path.parent.exists()
    eventually(lambda: emu.open_log_streams() == 0)


def test_log_rbac_denial_ends_follower(emu: KubeEmulator, backend: KubeBackend) -> None:
    emu.deny.add(("get", "pods/log"))
    backend.log_path("web")
    follower = backend._log_followers["web"]
    eventually(lambda: not follower.alive())
    assert isinstance(follower.error, BackendError)
    assert "RBAC: the harness may not 'get' 'pods/log'" in str(follower.error)


def test_follower_bounds_history_and_file(
    emu: KubeEmulator, backend: KubeBackend, tmp_path: Path
) -> None:
    emu.add_pod(NS, "solo-a1", "w1", wl("solo"))
    path = tmp_path / "solo.log"
    follower = PodLogFollower(
        backend.api,
        partial(backend._log_source, "solo"),
        path,
        history_lines=2,
        max_bytes=20,
    )
    follower.start()
    try:
        eventually(lambda: emu.open_log_streams() == 1)
        # A second pod, already chatty, takes over when the first is deleted:
        # only the last history_lines of what it printed are asked for.
        emu.add_pod(NS, "solo-b2", "w2", wl("solo"))
        for i in range(5):
            emu.append_log(NS, "solo-b2", f"boot {i}")
        emu.remove("", "pods", NS, "solo-a1")
        eventually(lambda: "boot 4" in path.read_text())
        assert path.read_text() == "boot 3\nboot 4\n"
        emu.append_log(NS, "solo-b2", "0123456789")  # past 20 bytes: the file starts over
        eventually(lambda: "0123456789" in path.read_text())
        assert path.read_text() == "0123456789\n" and follower.truncations == 1
    finally:
        follower.stop()
    assert not follower.alive()
