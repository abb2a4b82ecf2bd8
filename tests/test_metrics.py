"""Tests of chaos.metrics: the summary of samples, the sampler, the runner's row."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fakes import FakeBackend, fake_recorder_factory

from chaos.journal import Journal
from chaos.metrics import MetricsAccumulator, MetricsSampler, MetricsSummary
from chaos.results import ResultsStore, RunResult
from chaos.runner import RunOptions, run_experiment
from cluster.api import WorkloadKind
from core.clock import FakeClock
from core.errors import BackendError, HarnessError
from core.samples import MetricSample


def _s(t: float, cpu: float, mem: int = 100, wr: int = 0, ovh: int = 0) -> MetricSample:
    return MetricSample(
        t=t,
        workload="w",
        kind="vmi",
        cpu_s=cpu,
        host_cpu_s=cpu * 2,
        mem_bytes=mem,
        overhead_bytes=ovh,
        disk_wr_bytes=wr,
    )


def test_summary_deltas_means_and_maxima() -> None:
    acc = MetricsAccumulator(0.5)
    acc.add(_s(10.0, 1.0, mem=100, wr=1000, ovh=10))
    acc.add(_s(10.5, 1.5, mem=300, wr=3000, ovh=30))
    acc.add_missing()
    acc.add_error("boom")
    s = acc.summary()
    assert (s.samples, s.missing, s.errors, s.last_error) == (2, 1, 1, "boom")
    assert s.duration_s == pytest.approx(0.5)
    assert s.cpu_s == pytest.approx(0.5) and s.host_cpu_s == pytest.approx(1.0)
    assert s.cpu_util == pytest.approx(1.0) and s.host_cpu_util == pytest.approx(2.0)
    assert s.disk_wr_bytes == 2000
    assert (s.mem_bytes_mean, s.mem_bytes_max) == (200.0, 300)
    assert (s.overhead_bytes_mean, s.overhead_bytes_max) == (20.0, 30)
    assert s.kind == "vmi"


def test_counter_reset_counts_growth_from_zero() -> None:
    acc = MetricsAccumulator(0.5)
    acc.add(_s(0.0, 5.0, wr=500))
    acc.add(_s(1.0, 6.0, wr=600))
    acc.add(_s(2.0, 0.25, wr=50))  # restarted: new cgroup/QEMU
    s = acc.summary()
    assert s.cpu_s == pytest.approx(1.25)
    assert s.disk_wr_bytes == 150
    assert s.restarts_seen == 1


def test_empty_summary_has_no_means() -> None:
    s = MetricsAccumulator(0.5).summary()
    assert s.samples == 0 and s.mem_bytes_mean is None and s.cpu_util is None


def test_sampler_on_fake_clock_follows_restarts() -> None:
    clock = FakeClock(100.0)
    fake = FakeBackend(clock=clock, restart_delay=1.0)
    fake.create_workload("web", WorkloadKind.POD)
    sampler = MetricsSampler(fake, "web", clock, period_s=0.5)
    for _ in range(4):
        clock.advance(0.5)
        assert sampler.sample_once() is not None
    fake.kill_main_process("web")
    clock.advance(0.5)
    assert sampler.sample_once() is None  # down: counted as missing
    clock.advance(1.0)
    sample = sampler.sample_once()
    assert sample is not None and sample.kind == "pod"
    s = sampler.summary()
    assert s.samples == 5 and s.missing == 1 and s.restarts_seen == 1
    # 4 x 0.5 s up at 0.1 core before the kill, then 0.5 s up after the restart.
    assert s.cpu_s == pytest.approx(0.1 * 1.5 + 0.1 * 0.5)


def test_sampler_keeps_backend_errors_in_the_summary() -> None:
    clock = FakeClock()
    fake = FakeBackend(clock=clock)
    fake.create_workload("web", WorkloadKind.VMI)
    fake.fail_on["metrics"] = "libvirt went away"
    sampler = MetricsSampler(fake, "web", clock)
    assert sampler.sample_once() is None
    assert sampler.summary().errors == 1
    assert sampler.summary().last_error == "libvirt went away"


class _Exploding:
    def metrics(self, workload: str) -> MetricSample | None:
        raise ValueError("bug in the backend")


def test_sampler_thread_crash_is_raised_by_stop() -> None:
    sampler = MetricsSampler(_Exploding(), "web", FakeClock(), period_s=0.01)
    sampler.start()
    with pytest.raises(HarnessError, match="bug in the backend"):
        sampler.stop()


def test_sampler_thread_samples_until_stopped() -> None:
    clock = FakeClock()
    fake = FakeBackend(clock=clock)
    fake.create_workload("web", WorkloadKind.VMI)
    ticks = threading.Semaphore(0)
    stop_after = threading.Event()

    def wait(_period: float) -> bool:
        # Injected wait: one tick per call, until the test has seen three.
        clock.advance(0.5)
        ticks.release()
        return stop_after.is_set()

    sampler = MetricsSampler(fake, "web", clock, period_s=0.5, wait=wait)
    sampler.start()
    for _ in range(3):
        assert ticks.acquire(timeout=5)
    stop_after.set()
    s = sampler.stop()
    assert s.samples >= 3 and s.kind == "vmi" and s.overhead_bytes_max == 40 << 20
    assert s.host_cpu_s == pytest.approx(1.5 * s.cpu_s)


def test_period_must_be_positive() -> None:
    with pytest.raises(HarnessError, match="period"):
        MetricsSampler(FakeBackend(), "w", period_s=0)


def test_old_rows_without_metrics_still_load(tmp_path: Path) -> None:
    row = {
        "run_id": "r1",
        "experiment": "e",
        "fault": "process-crash",
        "kind": "pod",
        "backend": "lab",
        "profile": "fast",
        "started_at": "2026-01-01T00:00:00+00:00",
        "status": "recovered",
        "rto_s": 1.0,
    }
    import json

    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    rows = ResultsStore(tmp_path).load()
    assert rows[0].metrics is None
    with_metrics = rows[0].model_copy(
        update={"metrics": MetricsSummary(period_s=0.5, samples=2, cpu_s=0.5)}
    )
    ResultsStore(tmp_path).append(with_metrics)
    again = ResultsStore(tmp_path).load()[1]
    assert isinstance(again, RunResult) and again.metrics is not None
    assert again.metrics.cpu_s == 0.5


def test_backend_error_class_is_what_the_sampler_counts() -> None:
    # A BackendError subclass raised by a backend counts as a read error too.
    class _Flaky:
        def metrics(self, workload: str) -> MetricSample | None:
            raise BackendError("node partitioned")

    sampler = MetricsSampler(_Flaky(), "w", FakeClock())
    sampler.sample_once()
    assert sampler.summary().errors == 1


def _runner_opts(tmp_path: Path, clock: FakeClock, period: float | None) -> RunOptions:
    return RunOptions(
        clock=clock,
        journal=Journal(tmp_path / "journal.jsonl"),
        recorder_factory=fake_recorder_factory,
        healer_factory=lambda names, profile: [],
        metrics_period_s=period,
    )


def test_runner_stores_the_metrics_summary_in_the_row(tmp_path: Path) -> None:
    from test_runner import spec

    clock = FakeClock(1000.0)
    backend = FakeBackend(clock, restart_delay=2.0)
    store = ResultsStore(tmp_path / "runs")
    r = run_experiment(
        spec({"type": "process-crash"}), backend, store, options=_runner_opts(tmp_path, clock, 0.5)
    )
    assert r.metrics is not None and r.metrics.samples >= 1 and r.metrics.kind == "pod"
    assert store.load()[0].metrics == r.metrics


def test_runner_failing_metrics_show_in_the_row(tmp_path: Path) -> None:
    from test_runner import spec

    clock = FakeClock(1000.0)
    backend = FakeBackend(clock, restart_delay=2.0)
    backend.fail_on["metrics"] = "cgroup gone"
    store = ResultsStore(tmp_path / "runs")
    r = run_experiment(
        spec({"type": "process-crash"}), backend, store, options=_runner_opts(tmp_path, clock, 0.5)
    )
    assert r.metrics is not None and r.metrics.errors >= 1
    assert r.metrics.last_error == "cgroup gone"


def test_runner_without_sampling_leaves_metrics_empty(tmp_path: Path) -> None:
    from test_runner import spec

    clock = FakeClock(1000.0)
    r = run_experiment(
        spec({"type": "process-crash"}),
        FakeBackend(clock, restart_delay=2.0),
        ResultsStore(tmp_path / "runs"),
        options=_runner_opts(tmp_path, clock, None),
    )
    assert r.metrics is None
