"""Per-workload resource metrics: one schema for pods and VMIs, a sampler, a summary.

Filled by the backends (``Backend.metrics(workload)`` returns one
:class:`core.samples.MetricSample`: the lab reads cgroup v1 files and the pod's network
counters for a pod, libvirt's bulk statistics plus QEMU's RSS for a VMI) and by
:class:`MetricsSampler`, a thread the runner starts beside the recorder. Read by
the runner, which stores the sampler's :class:`MetricsSummary` in the run's row
(``RunResult.metrics``), and by ``reports`` (the metrics section).

The schema answers the handbook's metric rows with one vocabulary:

- CPU: ``cpu_s`` is what the workload itself got (container CPU; for a VMI the
  sum of guest vCPU time), ``host_cpu_s`` what the host paid (for a VMI QEMU's
  whole process: vCPUs plus emulation and I/O threads; for a pod = ``cpu_s``).
  Their difference is the "vCPU vs pCPU" gap the handbook asks VMs to show.
- memory: ``mem_bytes`` is the cgroup's usage (pod) or the guest's memory as the
  balloon reports it (VMI); ``overhead_bytes`` is QEMU's RSS beyond that (VMI).
- disk and network: monotonic counters (bytes, operations, packets).

Counters reset when a workload restarts (a new cgroup, a new QEMU): the summary
adds the new value as growth from zero rather than a negative delta. Samples
are not kept: a row only carries means, maxima and deltas, so rows stay small.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from core.clock import Clock, RealClock
from core.errors import BackendError, HarnessError
from core.samples import COUNTERS, MetricSample

__all__ = [
    "MetricsAccumulator",
    "MetricsSampler",
    "MetricsSource",
    "MetricsSummary",
]


class MetricsSummary(BaseModel):
    """Per-run summary of the samples, stored in ``RunResult.metrics``.

    ``errors``/``last_error`` make failed reads visible in the row; ``missing``
    counts ticks where the workload had nothing to read (not running: expected
    during an outage).
    """

    model_config = ConfigDict(frozen=True)

    kind: str = ""
    period_s: float
    samples: int = 0
    missing: int = 0
    errors: int = 0
    last_error: str | None = None
    duration_s: float = 0.0  # first .. last sample
    restarts_seen: int = 0  # counter resets (new cgroup / new QEMU)
    # Counter deltas over the run (resets handled).
    cpu_s: float = 0.0
    host_cpu_s: float = 0.0
    disk_rd_bytes: int = 0
    disk_wr_bytes: int = 0
    disk_rd_ops: int = 0
    disk_wr_ops: int = 0
    net_rx_bytes: int = 0
    net_tx_bytes: int = 0
    net_rx_packets: int = 0
    net_tx_packets: int = 0
    # Gauges.
    mem_bytes_mean: float | None = None
    mem_bytes_max: int | None = None
    overhead_bytes_mean: float | None = None
    overhead_bytes_max: int | None = None

    @property
    def cpu_util(self) -> float | None:
        """Mean CPU use in cores (cpu_s over the sampled time)."""
        return self.cpu_s / self.duration_s if self.duration_s > 0 else None

    @property
    def host_cpu_util(self) -> float | None:
        return self.host_cpu_s / self.duration_s if self.duration_s > 0 else None


class MetricsAccumulator:
    """Streams samples into running deltas, means and maxima (O(1) memory)."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self.kind = ""
        self.samples = 0
        self.missing = 0
        self.errors = 0
        self.last_error: str | None = None
        self.restarts_seen = 0
        self._first_t: float | None = None
        self._last: MetricSample | None = None
        self._deltas: dict[str, float] = dict.fromkeys(COUNTERS, 0.0)
        self._mem_sum = 0.0
        self._mem_max = 0
        self._ovh_sum = 0.0
        self._ovh_max = 0

    def add(self, s: MetricSample) -> None:
        self.kind = s.kind
        if self._first_t is None:
            self._first_t = s.t
        prev = self._last
        if prev is not None:
            reset = False
            for name in COUNTERS:
                now, before = float(getattr(s, name)), float(getattr(prev, name))
                if now >= before:
                    self._deltas[name] += now - before
                else:
                    # A new process/cgroup: counting restarted from zero.
                    self._deltas[name] += now
                    reset = True
            self.restarts_seen += reset
        self._last = s
        self.samples += 1
        self._mem_sum += s.mem_bytes
        self._mem_max = max(self._mem_max, s.mem_bytes)
        self._ovh_sum += s.overhead_bytes
        self._ovh_max = max(self._ovh_max, s.overhead_bytes)

    def add_missing(self) -> None:
        self.missing += 1

    def add_error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message

    def summary(self) -> MetricsSummary:
        n = self.samples
        d = self._deltas
        duration = (self._last.t - self._first_t) if self._last and self._first_t else 0.0
        return MetricsSummary(
            kind=self.kind,
            period_s=self.period_s,
            samples=n,
            missing=self.missing,
            errors=self.errors,
            last_error=self.last_error,
            duration_s=round(duration, 3),
            restarts_seen=self.restarts_seen,
            cpu_s=round(d["cpu_s"], 6),
            host_cpu_s=round(d["host_cpu_s"], 6),
            **{k: int(d[k]) for k in COUNTERS if k not in ("cpu_s", "host_cpu_s")},
            mem_bytes_mean=round(self._mem_sum / n, 1) if n else None,
            mem_bytes_max=self._mem_max if n else None,
            overhead_bytes_mean=round(self._ovh_sum / n, 1) if n else None,
            overhead_bytes_max=self._ovh_max if n else None,
        )


class MetricsSource(Protocol):
    """What the sampler reads (``cluster.api.Backend.metrics``)."""

    def metrics(self, workload: str) -> MetricSample | None: ...


class MetricsSampler:
    """Samples one workload every ``period_s`` in a daemon thread until ``stop()``.

    Samples are stamped by the backend (on its clock); ``clock`` stamps nothing
    here but is kept so callers pass one clock to everything. The period is
    waited on a stop Event (as the recorder's follower does), so ``stop()``
    returns at once and a FakeClock shared with other threads is never moved;
    tests call :meth:`sample_once` directly on a FakeClock instead.
    ``BackendError`` from a read is counted and kept in the summary; any other
    exception ends the thread and is raised by ``stop()`` as ``HarnessError``.
    """

    def __init__(
        self,
        source: MetricsSource,
        workload: str,
        clock: Clock | None = None,
        period_s: float = 0.5,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        if period_s <= 0:
            raise HarnessError(f"metrics period must be > 0 s, not {period_s}")
        self.source = source
        self.workload = workload
        self.clock: Clock = clock or RealClock()
        self.period_s = period_s
        self._acc = MetricsAccumulator(period_s)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._thread: threading.Thread | None = None
        self._crash: BaseException | None = None

    def sample_once(self) -> MetricSample | None:
        """Take one reading into the summary; returns it (None: nothing to read)."""
        try:
            sample = self.source.metrics(self.workload)
        except BackendError as exc:
            with self._lock:
                self._acc.add_error(str(exc))
            return None
        with self._lock:
            if sample is None:
                self._acc.add_missing()
            else:
                self._acc.add(sample)
        return sample

    def _loop(self) -> None:
        try:
            self.sample_once()
            # A daemon loop on an Event: wakes every period or at stop().
            while not self._wait(self.period_s) and not self._stop.is_set():
                self.sample_once()
        except BaseException as exc:  # raised again by stop()
            self._crash = exc

    def start(self) -> None:
        if self._thread is not None:
            raise HarnessError(f"metrics sampler of {self.workload} already started")
        self._thread = threading.Thread(
            target=self._loop, name=f"metrics-{self.workload}", daemon=True
        )
        self._thread.start()

    def stop(self) -> MetricsSummary:
        """Stop the thread and return the summary; raises if the thread had died."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 4 * self.period_s))
            if self._thread.is_alive():
                raise HarnessError(
                    f"metrics sampler of {self.workload} did not stop: a backend read hangs"
                )
        if self._crash is not None:
            raise HarnessError(
                f"metrics sampler of {self.workload} died: "
                f"{type(self._crash).__name__}: {self._crash}"
            ) from self._crash
        return self.summary()

    def summary(self) -> MetricsSummary:
        with self._lock:
            return self._acc.summary()
