"""What a workload on a real cluster uses and prints: metrics-server readings and log streams.

Filled by ``KubeBackend`` (cluster/kube/backend.py), which owns one
:class:`PodMetricsReader` and one :class:`PodLogFollower` per workload whose log
was asked for, and hands them the pod to read (a pod workload's own pod, a VMI's
virt-launcher pod). Read through ``Backend.metrics`` by ``chaos.metrics``'s
sampler and through ``Backend.log_path`` by ``chaos.logs.LogFollower``, which
tails the local file a :class:`PodLogFollower` writes.

Metrics come from ``metrics.k8s.io/v1beta1`` (metrics-server): per container a
CPU *rate* (cores, averaged over metrics-server's window, refreshed every ~15 s)
and a memory working set. ``MetricSample`` wants a cumulative ``cpu_s``, so the
reader integrates the rate over the time between samples (trapezoids, per pod
instance, from zero when the pod changes): an estimate whose resolution is
metrics-server's window, not a kernel counter. Disk and network are not
published by metrics-server and stay 0.

Logs come from ``pods/NAME/log?follow=true&timestamps=true``, streamed in a
daemon thread into ``<dir>/<workload>.log``; the stream ends when the container
or pod does, and the follower attaches again to whatever pod is current
(tenacity back-off while there is none). The kubelet's timestamps are stripped
and used to skip lines already written when it re-attaches to the same pod.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

import urllib3
from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity
from tenacity import Retrying, retry_if_exception, wait_exponential

from cluster.kube.watch import raw_request, shutdown_stream
from core.errors import BackendError

__all__ = [
    "LogSource",
    "PodLogFollower",
    "PodMetricsReader",
    "PodUsage",
    "cpu_cores",
    "memory_bytes",
]

log = logging.getLogger(__name__)

METRICS_GROUP = "/apis/metrics.k8s.io/v1beta1"


def cpu_cores(quantity: str) -> float:
    """A CPU quantity in cores: ``"12345n"`` -> 1.2345e-05, ``"5m"`` -> 0.005, ``"2"`` -> 2."""
    try:
        value: Decimal = parse_quantity(quantity)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise BackendError(f"metrics-server CPU quantity {quantity!r}: {exc}") from exc
    return float(value)


def memory_bytes(quantity: str) -> int:
    """A memory quantity in bytes: ``"1234Ki"`` -> 1263616, ``"1M"`` -> 1000000."""
    try:
        value: Decimal = parse_quantity(quantity)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise BackendError(f"metrics-server memory quantity {quantity!r}: {exc}") from exc
    # Kubernetes rounds fractional bytes up ("1.5" bytes is 2).
    return int(value.to_integral_value(rounding="ROUND_CEILING"))


@dataclass(frozen=True)
class PodUsage:
    """One metrics-server reading of one pod, summed over its containers."""

    cores: float
    mem_bytes: int
    containers: tuple[str, ...]


@dataclass
class _Integral:
    """Running CPU-time estimate of one pod instance (uid)."""

    uid: str
    t: float
    cores: float
    cpu_s: float = 0.0


class PodMetricsReader:
    """Reads PodMetrics; remembers when the group is not served; integrates CPU.

    ``explain`` turns an ``ApiException`` into the backend's BackendError (RBAC
    names the verb and resource to grant). A denial is remembered and raised
    again without asking: ``MetricsSampler`` counts each BackendError and keeps
    the message in the run's summary, so the row says why it has no metrics.
    """

    def __init__(
        self, api: ApiClient, explain: Callable[[ApiException, str, str], BackendError]
    ) -> None:
        self.api = api
        self.explain = explain
        self.served: bool | None = None  # None: not asked yet
        self.denied: str | None = None
        self._cpu: dict[str, _Integral] = {}  # workload -> integral of its current pod

    def available(self) -> bool:
        """Is metrics.k8s.io served? Asked once: metrics-server is not installed mid-run."""
        if self.served is None:
            try:
                resp = raw_request(self.api, "GET", METRICS_GROUP)
                resp.drain_conn()
                resp.release_conn()
                self.served = True
            except ApiException as exc:
                if exc.status != 404:
                    raise self.explain(exc, "get", "metrics.k8s.io/v1beta1") from exc
                self.served = False
                log.warning(
                    "metrics.k8s.io is not served (no metrics-server): kube runs record "
                    "no CPU/memory metrics"
                )
            except urllib3.exceptions.HTTPError as exc:
                raise BackendError(f"kube API server unreachable: {exc}") from exc
        return self.served

    def usage(self, ns: str, pod: str) -> PodUsage | None:
        """The pod's reading now; None without metrics-server or before its first scrape."""
        if self.denied is not None:
            raise BackendError(self.denied)
        if not self.available():
            return None
        try:
            resp = raw_request(self.api, "GET", f"{METRICS_GROUP}/namespaces/{ns}/pods/{pod}")
        except ApiException as exc:
            if exc.status == 404:
                return None  # not scraped yet (new pod) or gone
            err = self.explain(exc, "get", "pods.metrics.k8s.io")
            if exc.status in (401, 403):
                self.denied = str(err)
            raise err from exc
        except urllib3.exceptions.HTTPError as exc:
            raise BackendError(f"kube API server unreachable: {exc}") from exc
        try:
            data: dict[str, Any] = json.loads(resp.data)
        finally:
            resp.release_conn()
        containers = data.get("containers") or []
        if not containers:
            return None
        cores = sum(cpu_cores(c["usage"]["cpu"]) for c in containers)
        mem = sum(memory_bytes(c["usage"]["memory"]) for c in containers)
        return PodUsage(cores, mem, tuple(c.get("name", "") for c in containers))

    def cpu_seconds(self, workload: str, uid: str, t: float, cores: float) -> float:
        """CPU time of the workload's pod ``uid`` so far, integrated from rate readings.

        A new uid (the pod was replaced) starts again from 0: to the metrics
        summary a counter reset, as a new cgroup is in the lab.
        """
        prev = self._cpu.get(workload)
        if prev is None or prev.uid != uid:
            self._cpu[workload] = _Integral(uid, t, cores)
            return 0.0
        if t > prev.t:
            prev.cpu_s += (prev.cores + cores) / 2 * (t - prev.t)
        prev.t, prev.cores = t, cores
        return prev.cpu_s


@dataclass(frozen=True)
class LogSource:
    """Which container's log to follow now."""

    namespace: str
    pod: str
    container: str
    uid: str


def _stamp_key(stamp: str) -> str:
    """An RFC3339Nano stamp made sortable: Go trims trailing zeros of the fraction."""
    base, _, frac = stamp.rstrip("Z").partition(".")
    return f"{base}.{frac:0<9}"


def _retryable(exc: BaseException) -> bool:
    # 401/403: nothing changes by asking again; everything else (no pod yet,
    # container waiting, connection dropped, 5xx) may pass.
    return not (isinstance(exc, ApiException) and exc.status in (401, 403))


class _Ended(Exception):
    """The log stream ended without a line: back off before attaching again."""


class PodLogFollower:
    """Streams one workload's current container log into ``path`` until ``stop()``.

    ``resolve`` names the container to follow now (raises BackendError while
    the workload has no pod). The first attach asks for the last
    ``since_seconds`` only (what was printed before the run is not the run's);
    a pod seen for the first time later is read from its start (a replacement
    pod's boot lines explain the recovery); the same pod again skips lines up
    to the last timestamp written. Later attaches ask for the last
    ``history_lines`` only, so a long-lived pod's whole log is never pulled.
    The file is bounded: past ``max_bytes`` it is truncated and written from
    the start (``LogFollower`` reads a truncated file from its start). ``wait``
    waits between attempts and returns early on ``stop()``.
    """

    def __init__(
        self,
        api: ApiClient,
        resolve: Callable[[], LogSource],
        path: Path,
        *,
        since_seconds: int = 1,
        history_lines: int = 1000,
        max_bytes: int = 64 << 20,
        max_backoff: float = 5.0,
        read_timeout_s: float = 300.0,
        wait: Callable[[threading.Event, float], object] | None = None,
        explain: Callable[[ApiException, str, str], BackendError] | None = None,
    ) -> None:
        self.core = CoreV1Api(api)
        self.resolve = resolve
        self.path = path
        self.since_seconds = since_seconds
        self.history_lines = history_lines
        self.max_bytes = max_bytes
        self.truncations = 0
        self.read_timeout_s = read_timeout_s
        self.explain = explain
        self._attached = False  # a stream was opened once (later ones read in full)
        self.attaches = 0
        self.lines = 0
        self.error: BaseException | None = None  # fatal (RBAC): the thread ended
        self.last_error: BaseException | None = None  # latest transient failure
        self._seen: dict[str, str] = {}  # pod uid -> sortable stamp of its last line
        self._stop = threading.Event()
        self._resp: Any = None
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Truncated per backend instance: the file holds this run's output only.
        self._out: BinaryIO = path.open("wb")
        self._wait = wait or (lambda ev, s: ev.wait(s))
        self._retrying = Retrying(
            retry=retry_if_exception(_retryable),
            wait=wait_exponential(multiplier=0.1, max=max_backoff),
            sleep=self._sleep,
            before_sleep=self._note,
            reraise=True,
        )
        self._thread = threading.Thread(target=self._run, name=f"log-{path.stem}", daemon=True)

    def _sleep(self, seconds: float) -> None:
        # Back-off between attaches, cut short by stop().
        if not self._stop.is_set():
            self._wait(self._stop, seconds)

    def _note(self, state: Any) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is not None and not isinstance(exc, _Ended):
            self.last_error = exc

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """End the stream and the thread; the file stays for the tailer's last read."""
        self._stop.set()
        if self._resp is not None:
            shutdown_stream(self._resp)
        self._thread.join(timeout=5)
        with self._lock:
            self._out.close()

    def _run(self) -> None:
        # A daemon loop over a blocking stream: each pass waits on the server.
        try:
            while not self._stop.is_set():
                self._retrying(self.attach_once)
        except BaseException as exc:
            if not self._stop.is_set():
                if isinstance(exc, ApiException) and self.explain is not None:
                    exc = self.explain(exc, "get", "pods/log")
                self.error = exc
                log.warning("log of %s no longer followed: %s", self.path.stem, exc)

    # --- one stream ------------------------------------------------------------------
    def attach_once(self) -> None:
        """Follow the current container's log until its stream ends."""
        if self._stop.is_set():
            return
        src = self.resolve()
        first = not self._attached
        resp: Any = self.core.read_namespaced_pod_log(
            src.pod,
            src.namespace,
            container=src.container,
            follow=True,
            timestamps=True,
            since_seconds=self.since_seconds if first else None,
            tail_lines=None if first else self.history_lines,
            _preload_content=False,
            # A quiet log times out the read after read_timeout_s: attach again
            # (the same pod's lines already written are skipped by timestamp).
            _request_timeout=(5, self.read_timeout_s),
        )
        self._attached = True
        self.attaches += 1
        self._resp = resp
        wrote = 0
        partial = b""
        try:
            for chunk in resp.stream(4096, decode_content=True):
                if self._stop.is_set():
                    return
                *complete, partial = (partial + chunk).split(b"\n")
                wrote += self._write(src.uid, complete)
            wrote += self._write(src.uid, [partial] if partial else [])
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if self._stop.is_set():
                return
            raise ConnectionError(f"log stream of {src.pod}/{src.container} broke: {exc}") from exc
        finally:
            self._resp = None
            resp.release_conn()
        if not wrote:
            raise _Ended()

    def _write(self, uid: str, raw_lines: list[bytes]) -> int:
        last = self._seen.get(uid, "")
        out = []
        for raw in raw_lines:
            stamp, _, text = raw.partition(b" ")
            key = _stamp_key(stamp.decode("ascii", errors="replace"))
            if key <= last:
                continue  # written before, by the previous stream of this pod
            last = key
            out.append(text.rstrip(b"\r") + b"\n")
        self._seen[uid] = last
        if out:
            with self._lock:
                if self._out.closed:
                    return 0
                data = b"".join(out)
                if self._out.tell() + len(data) > self.max_bytes:
                    # Bounded on disk: start over (the tailer reads a truncated file
                    # from its start; it has read what came before on its ticks).
                    self._out.seek(0)
                    self._out.truncate()
                    self.truncations += 1
                self._out.write(data)
                self._out.flush()
            self.lines += len(out)
        return len(out)
