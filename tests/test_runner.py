"""The runner's logic on the FakeBackend + FakeClock: outcomes, aborts, reverts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakes import FakeBackend, FakeHealer, FakeRecorder, fake_recorder_factory

from chaos.faults import revert_pending
from chaos.journal import Journal
from chaos.results import ResultsStore, RunStatus
from chaos.runner import RunOptions, run_experiment
from chaos.spec import ExperimentSpec, RtoSpec
from cluster.api import WorkloadKind
from core.clock import FakeClock
from core.errors import FaultError
from core.timeline import EventKind


def spec(
    fault: dict[str, object], healers: list[str] | None = None, deadline: float = 60
) -> ExperimentSpec:
    rto = RtoSpec.model_validate(
        {
            "name": "rto",
            "target": {"workload": "web", "kind": "pod", "node": "node1"},
            "fault": fault,
            "healers": healers if healers is not None else ["watchdog"],
            "recovery": {"good_probes": 5, "deadline_s": deadline, "probe_interval_ms": 20},
            "profile": "fast",
        }
    )
    return ExperimentSpec(path=Path("t.yaml"), title="t", rto=rto)


@pytest.fixture
def env(tmp_path: Path) -> tuple[FakeBackend, ResultsStore, RunOptions, Journal, list[FakeHealer]]:
    clock = FakeClock(1000.0)
    backend = FakeBackend(clock, restart_delay=2.0)
    journal = Journal(tmp_path / "journal.jsonl")
    healers: list[FakeHealer] = []

    def healer_factory(names: list[str], profile: str) -> list[FakeHealer]:
        healers.extend(FakeHealer(n) for n in names)
        return healers

    opts = RunOptions(
        clock=clock,
        journal=journal,
        recorder_factory=fake_recorder_factory,  # type: ignore[arg-type]
        healer_factory=healer_factory,  # type: ignore[arg-type]
    )
    return backend, ResultsStore(tmp_path / "runs"), opts, journal, healers


def test_process_crash_recovers_with_rto_of_the_restart_delay(env) -> None:  # type: ignore[no-untyped-def]
    backend, store, opts, journal, healers = env
    r = run_experiment(spec({"type": "process-crash"}), backend, store, options=opts)
    assert r.status is RunStatus.RECOVERED
    assert r.rto_s is not None and 1.9 <= r.rto_s <= 2.1
    assert r.same_instance is False
    assert "create_workload(web)" in backend.calls
    assert [h.started and h.stopped for h in healers] == [True]
    assert journal.pending() == []
    assert store.load() == [r]


def test_power_off_held_then_reverted_and_recovered(env) -> None:  # type: ignore[no-untyped-def]
    backend, store, opts, _journal, _ = env
    r = run_experiment(
        spec({"type": "node-power-off", "duration_s": 10}), backend, store, options=opts
    )
    assert r.status is RunStatus.RECOVERED
    # Down from injection until power-on (10 s) + restart (2 s).
    assert r.rto_s is not None and 11.9 <= r.rto_s <= 12.1
    assert backend.node_state("node1")["powered"] is True
    kinds = [e.kind for e in r.timeline]
    assert kinds.index(EventKind.FAULT_INJECTED) < kinds.index(EventKind.FAULT_REVERTED)


def test_no_watchdog_switches_restarts_off_and_restores(env) -> None:  # type: ignore[no-untyped-def]
    backend, store, opts, _, _ = env
    r = run_experiment(
        spec({"type": "process-crash"}, healers=[], deadline=5), backend, store, options=opts
    )
    assert r.status is RunStatus.NOT_RECOVERED
    calls = backend.calls
    assert calls.index("set_restart_healing(False)") < calls.index("kill_main_process(web)")
    assert calls[-1] == "set_restart_healing(True)"
    assert backend.restart_healing() is True


def test_no_outage_when_the_workload_never_stops_answering(env) -> None:  # type: ignore[no-untyped-def]
    backend, store, opts, _, _ = env
    backend.restart_delay = 0.0  # the restart is quicker than one probe interval
    r = run_experiment(spec({"type": "process-crash"}, deadline=5), backend, store, options=opts)
    assert r.status is RunStatus.NO_OUTAGE
    assert r.rto_s == 0.0 and r.probes_failed == 0


def test_error_mid_run_reverts_records_aborted_and_reraises(env) -> None:  # type: ignore[no-untyped-def]
    backend, store, opts, journal, healers = env
    calls = {"n": 0}
    sleep = opts.clock.sleep

    def failing_sleep(s: float) -> None:
        calls["n"] += 1
        if s >= 10:  # the hold of the fault
            raise RuntimeError("harness bug during the hold")
        sleep(s)

    opts.clock.sleep = failing_sleep  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="harness bug"):
        run_experiment(
            spec({"type": "storage-lost", "mode": "eio", "duration_s": 10}),
            backend,
            store,
            options=opts,
        )
    assert backend.workload_state("web")["volume"] is None  # reverted
    assert journal.pending() == []
    [row] = store.load()
    assert row.status is RunStatus.ABORTED
    assert row.error is not None and "harness bug" in row.error
    assert all(h.stopped for h in healers)


def test_keyboard_interrupt_mid_run_reverts(env) -> None:  # type: ignore[no-untyped-def]
    backend, store, opts, journal, _ = env
    sleep = opts.clock.sleep

    def interrupt(s: float) -> None:
        if s >= 10:
            raise KeyboardInterrupt
        sleep(s)

    opts.clock.sleep = interrupt  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        run_experiment(
            spec({"type": "network-partition", "scope": "node", "duration_s": 30}),
            backend,
            store,
            options=opts,
        )
    assert backend.node_state("node1")["partitioned"] is False
    assert journal.pending() == []
    [row] = store.load()
    assert row.status is RunStatus.ABORTED and row.error == "interrupted (Ctrl-C)"


def test_revert_failure_is_recorded_journaled_and_raised(env) -> None:  # type: ignore[no-untyped-def]
    backend, store, opts, journal, _ = env
    backend.fail_on["power_on"] = "node1 BMC unreachable"
    with pytest.raises(FaultError, match="BMC unreachable"):
        run_experiment(
            spec({"type": "node-power-off", "duration_s": 5}), backend, store, options=opts
        )
    [row] = store.load()
    assert row.status is RunStatus.ABORTED
    assert row.error is not None and "revert failed" in row.error
    [pending] = journal.pending()
    assert pending.state == "revert_failed" and pending.target == "node1"
    # Once the cause is fixed, the journal reverts it.
    del backend.fail_on["power_on"]
    revert_pending(journal, lambda name: backend)
    assert journal.pending() == []
    assert backend.node_state("node1")["powered"] is True


def test_no_steady_state_injects_nothing(env) -> None:  # type: ignore[no-untyped-def]
    backend, store, opts, journal, _ = env
    backend.create_workload("web", WorkloadKind.POD, "node1")
    backend.partition_workload("web")
    opts.steady_timeout_s = 1.0
    with pytest.raises(FaultError, match="no steady state"):
        run_experiment(spec({"type": "process-crash"}), backend, store, options=opts)
    assert "kill_main_process(web)" not in backend.calls
    assert journal.records() == []
    [row] = store.load()
    assert row.status is RunStatus.ABORTED


def test_healer_dying_fails_the_run(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    backend, store, opts, _, _ = env
    opts.healer_factory = lambda names, profile: [FakeHealer("eviction", fail_stop="loop died")]
    with pytest.raises(FaultError, match="loop died"):
        run_experiment(
            spec({"type": "process-crash"}, healers=["watchdog", "eviction"]),
            backend,
            store,
            options=opts,
        )
    assert store.load()[0].status is RunStatus.ABORTED


def test_edges_are_announced_just_before_the_inject_and_the_revert(env) -> None:  # type: ignore[no-untyped-def]
    backend, store, opts, _journal, _ = env
    recorders: list[FakeRecorder] = []

    def factory(*args: Any) -> FakeRecorder:
        recorders.append(fake_recorder_factory(*args))
        return recorders[-1]

    opts.recorder_factory = factory
    r = run_experiment(
        spec({"type": "node-power-off", "duration_s": 10}), backend, store, options=opts
    )
    at = {e.kind: e.t for e in r.timeline}
    first, second = recorders[0].edge_hints
    # Each hint a few ms before its act: the edge probes are going when it comes.
    assert 0 < at[EventKind.FAULT_INJECTED] - first <= 0.01
    assert 0 < at[EventKind.FAULT_REVERTED] - second <= 0.01
    # The row says what resolution the figures have.
    assert r.probe_interval_s == 0.02 and r.probes_edge == 0
    assert r.rto_uncertainty_s is None  # the fake's transitions carry no brackets


def test_no_revert_hint_when_the_workload_is_already_back(env) -> None:  # type: ignore[no-untyped-def]
    backend, store, opts, _journal, _ = env
    recorders: list[FakeRecorder] = []

    def factory(*args: Any) -> FakeRecorder:
        recorders.append(fake_recorder_factory(*args))
        return recorders[-1]

    opts.recorder_factory = factory
    r = run_experiment(spec({"type": "process-crash"}), backend, store, options=opts)
    assert r.status is RunStatus.RECOVERED
    # The crash's outage ended with the restart: the revert has no edge to place.
    (only,) = recorders[0].edge_hints
    assert only < next(e.t for e in r.timeline if e.kind is EventKind.FAULT_INJECTED)
