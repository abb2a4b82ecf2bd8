"""Run one experiment: steady state, inject, hold, revert, wait for recovery, record.

Called by the CLI (``rto run``), the campaign and, stage by stage, the Chaos
Toolkit control (``chaos.ctk_control``), so every path records the same row.
Reads a validated ``ExperimentSpec``; writes one ``RunResult`` to the
``ResultsStore`` whatever happens: recovered, no outage, not recovered, or
aborted (Ctrl-C or an error, then re-raised). The fault is journaled before it
acts and reverted in every outcome.

Waiting is the recorder's job (its waits run on the injected Clock), and holding
a fault is one ``clock.sleep``: tests drive the whole run on a FakeClock.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from chaos.faults import Fault, build_fault
from chaos.faults.harness_state import RestartHealingOff
from chaos.journal import Journal
from chaos.metrics import MetricsSampler, MetricsSummary
from chaos.provenance import Invocation, new_invocation
from chaos.recorder import Recorder
from chaos.results import ResultsStore, RunResult, RunStatus
from chaos.rto import measure
from chaos.spec import (
    ExperimentSpec,
    RecoverySpec,
    fault_variant,
)
from cluster.api import Backend, Phase, WorkloadKind
from core.clock import Clock, RealClock
from core.errors import BackendError, FaultError, HarnessError
from core.timeline import EventKind, Timeline
from healers.base import HealerContext
from healers.registry import build_healers, read_test_delays

# How long before an inject or a revert the prober is told an edge is coming.
_EDGE_LEAD_S = 0.005

__all__ = [
    "HealerFactory",
    "HealerLike",
    "RecorderFactory",
    "RecorderLike",
    "Run",
    "RunOptions",
    "run_experiment",
]


class RecorderLike(Protocol):
    """What the runner uses of ``chaos.recorder.Recorder``."""

    @property
    def probes_sent(self) -> int: ...

    @property
    def probes_failed(self) -> int: ...

    @property
    def probes_edge(self) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def is_up(self) -> bool: ...

    def wait_until_up(self, timeout_s: float) -> bool: ...

    def wait_until_recovered(self, since_t: float, timeout_s: float) -> bool: ...

    def expect_edge(self, window_s: float = 1.0) -> None: ...


class HealerLike(Protocol):
    name: str

    def start(self, ctx: object) -> None: ...

    def stop(self) -> None: ...


RecorderFactory = Callable[[Backend, str, Timeline, Clock, RecoverySpec], RecorderLike]
HealerFactory = Callable[[list[str], str], list[HealerLike]]


def default_recorder(
    backend: Backend, workload: str, timeline: Timeline, clock: Clock, recovery: RecoverySpec
) -> RecorderLike:

    rec: RecorderLike = Recorder(
        backend,
        workload,
        timeline,
        clock=clock,
        interval=recovery.probe_interval_ms / 1000.0,
        timeout=recovery.probe_timeout_ms / 1000.0,
        good_needed=recovery.good_probes,
        edge_interval=(
            None
            if recovery.edge_probe_interval_ms is None
            else recovery.edge_probe_interval_ms / 1000.0
        ),
    )
    return rec


def default_healers(names: list[str], profile: str) -> list[HealerLike]:

    return list(build_healers(names, profile))  # type: ignore[arg-type]


def _no_status(_: str) -> None:
    return None


@dataclass
class RunOptions:
    """The injectable parts of a run (tests swap the recorder, healers and clock)."""

    clock: Clock = field(default_factory=RealClock)
    journal: Journal | None = None  # None: Journal() at $RTO_JOURNAL or the default path
    recorder_factory: RecorderFactory = default_recorder
    healer_factory: HealerFactory = default_healers
    ready_timeout_s: float = 120.0  # workload created -> Ready
    steady_timeout_s: float = 60.0  # workload must answer before anything is injected
    status: Callable[[str], None] = _no_status  # progress line (rich status in the CLI)
    # Resource sampling beside the recorder (chaos.metrics); None switches it off.
    metrics_period_s: float | None = 0.5


class Run:
    """One run, in stages. ``run_experiment`` chains them; the CTK control calls them
    from its hooks. ``finish`` must always be called: it reverts and records."""

    def __init__(
        self,
        spec: ExperimentSpec,
        backend: Backend,
        store: ResultsStore,
        options: RunOptions | None = None,
        campaign: str | None = None,
        repetition: int = 0,
        profile: str | None = None,
        invocation: Invocation | None = None,
    ) -> None:
        # A malformed test-only healer delay fails here, before anything acts.
        read_test_delays()
        self.spec = spec
        self.backend = backend
        self.store = store
        self.opts = options or RunOptions()
        self.clock = self.opts.clock
        self.journal = self.opts.journal or Journal()
        self.campaign = campaign
        self.repetition = repetition
        self.profile = profile or spec.rto.profile or backend.profile or "unknown"
        self.run_id = uuid.uuid4().hex[:12]
        # Who ran this run (a campaign, `rto run`): one id per invocation, shared
        # by its rows. A Run built alone (the CTK control, a game day) is its own.
        self.invocation = invocation or new_invocation(campaign)
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.timeline = Timeline(origin=self.clock.now())
        self.recorder: RecorderLike | None = None
        self.sampler: MetricsSampler | None = None
        self.metrics: MetricsSummary | None = None
        self.healers: list[HealerLike] = []
        self.fault: Fault | None = None
        self.injected_at: float | None = None  # monotonic
        self._restart_off: RestartHealingOff | None = None
        self._finished: RunResult | None = None

    # --- stages ------------------------------------------------------------------
    def _mark(self, message: str, **data: str) -> None:
        self.timeline.add(self.clock.now(), EventKind.MARK, "runner", message, data)
        self.opts.status(f"{self.spec.title}: {message}")

    def _ensure_workload(self) -> None:
        target = self.spec.rto.target
        try:
            status = self.backend.workload(target.workload)
        except BackendError:
            status = None
        if status is not None and status.phase is Phase.FAILED:
            # Left Failed by an earlier baseline run (restarts off): start afresh.
            self.backend.delete_workload(target.workload)
            status = None
        if status is None:
            self._mark(f"creating {target.kind} {target.workload}")
            kind = WorkloadKind(target.kind)
            if kind is WorkloadKind.VMI:
                self.backend.create_workload(
                    target.workload,
                    kind,
                    target.node,
                    watchdog_heartbeat_s=target.watchdog_heartbeat_s,
                    eviction_strategy=target.eviction_strategy,
                )
            else:
                self.backend.create_workload(target.workload, kind, target.node)
        self.backend.wait_ready(target.workload, self.opts.ready_timeout_s)

    def prepare(self) -> None:
        """Workload present, recorder running, healers on, steady state reached."""
        rto = self.spec.rto
        self._ensure_workload()
        self.recorder = self.opts.recorder_factory(
            self.backend, rto.target.workload, self.timeline, self.clock, rto.recovery
        )
        self.recorder.start()
        if self.opts.metrics_period_s is not None:
            self.sampler = MetricsSampler(
                self.backend, rto.target.workload, self.clock, self.opts.metrics_period_s
            )
            self.sampler.start()
        if "watchdog" not in rto.healers:
            # The baseline without our watchdog: node-side restarts off for the run.
            # Journaled like a fault, so a SIGKILLed harness leaves no node with
            # restarts switched off (`rto revert` switches them back on).
            self._restart_off = RestartHealingOff(self.backend, self.journal)
            self._restart_off.inject()
        healer_profile = self.profile if self.profile != "unknown" else "kubernetes-defaults"
        self.healers = []
        if rto.healers:
            ctx = HealerContext(
                backend=self.backend,
                workloads=[rto.target.workload],
                record=self._record_healer,
                clock=self.clock,
                journal=self.journal,
            )
            for healer in self.opts.healer_factory(list(rto.healers), healer_profile):
                healer.start(ctx)
                self.healers.append(healer)
        self._mark("waiting for steady state")
        if not self.recorder.wait_until_up(self.opts.steady_timeout_s):
            raise FaultError(
                f"{rto.target.workload} did not answer within {self.opts.steady_timeout_s:g} s "
                "before injection (no steady state); nothing was injected. Check "
                "`rto lab status` and the workload's log."
            )
        # A short baseline of good probes, so the timeline shows the workload up
        # (and its instance) strictly before the injection.
        recovery = rto.recovery
        self.clock.sleep(recovery.good_probes * recovery.probe_interval_ms / 1000.0)
        if not self.recorder.is_up():
            raise FaultError(
                f"{rto.target.workload} stopped answering during the baseline before "
                "injection (flapping workload); nothing was injected"
            )

    def _record_healer(self, source: str, message: str, data: dict[str, str]) -> None:
        self.timeline.add(self.clock.now(), EventKind.HEALER_ACTION, source, message, data)

    def _expect_edge(self, *, only_if_down: bool = False) -> None:
        """Edge probes going before the act (``chaos.prober``, "Edge refinement").

        ``only_if_down``: for the revert, whose edge is the end of an outage; a
        workload already back (a crash, a drain) has none to place there.
        """
        if self.recorder is not None and not (only_if_down and self.recorder.is_up()):
            self.recorder.expect_edge()
            # The hint reaches the prober's loop through its thread: a few edge
            # intervals for the first ones to be sent before the edge comes.
            self.clock.sleep(_EDGE_LEAD_S)

    def inject(self) -> None:
        rto = self.spec.rto
        self.fault = build_fault(rto.fault, rto.target, self.backend, self.journal)
        self._expect_edge()
        self.injected_at = self.clock.now()
        self.timeline.add(
            self.injected_at,
            EventKind.FAULT_INJECTED,
            rto.fault.type,
            self.fault.describe(),
            {"fault_id": self.fault.id},
        )
        self.opts.status(f"{self.spec.title}: injected {self.fault.describe()}")
        self.fault.inject()

    def _remaining(self) -> float:
        assert self.injected_at is not None
        elapsed = self.clock.now() - self.injected_at
        return max(0.0, self.spec.rto.recovery.deadline_s - elapsed)

    def hold(self) -> None:
        """Keep the fault: ``duration_s``, or until recovery for crash and drain."""
        held_for = self.spec.rto.fault.held_for()
        assert self.recorder is not None and self.injected_at is not None
        if held_for is None:
            self.opts.status(f"{self.spec.title}: waiting for recovery")
            self.recorder.wait_until_recovered(self.injected_at, self._remaining())
        else:
            self.opts.status(f"{self.spec.title}: holding the fault {held_for:g} s")
            self.clock.sleep(held_for)

    def revert(self) -> None:
        if self.fault is None or self.fault.state in ("new", "reverted"):
            return
        # Stamped when the revert starts: a good probe may come while a slow
        # revert (a node's power-on) is still returning, and the timeline must
        # not show the workload back before its fault was lifted.
        self._expect_edge(only_if_down=True)
        started = self.clock.now()
        self.fault.revert()
        self.timeline.add(
            started,
            EventKind.FAULT_REVERTED,
            self.spec.rto.fault.type,
            self.fault.describe(),
            {"fault_id": self.fault.id, "revert_s": f"{self.clock.now() - started:.3f}"},
        )

    def wait_recovery(self) -> bool:
        assert self.recorder is not None and self.injected_at is not None
        injected_t = self.injected_at - self.timeline.origin
        saw_outage = any(
            e.kind is EventKind.PROBE_FAIL and e.t >= injected_t for e in self.timeline.events()
        )
        if not saw_outage and self.recorder.is_up():
            return True  # no outage at all: nothing to wait for (rto.measure says no_outage)
        self.opts.status(f"{self.spec.title}: waiting for recovery")
        return self.recorder.wait_until_recovered(self.injected_at, self._remaining())

    # --- the end, in every outcome ------------------------------------------------
    def finish(self, error: BaseException | None = None) -> RunResult:
        """Revert, stop healers and recorder, measure, append the row.

        With ``error`` (the run is being aborted) it never raises: the caller
        re-raises ``error``. Without, a failed revert or a dead healer is
        recorded as an aborted run and raised as ``HarnessError`` afterwards.
        """
        if self._finished is not None:
            return self._finished
        problems: list[str] = []
        try:
            self.revert()
        except Exception as exc:  # recorded below and raised after the row is stored
            problems.append(f"revert failed: {exc}")
        for healer in reversed(self.healers):
            try:
                healer.stop()
            except Exception as exc:
                problems.append(f"healer {healer.name} failed: {exc}")
        if self._restart_off is not None:
            try:
                self._restart_off.revert()
            except Exception as exc:
                problems.append(f"could not switch node-side restarts back on: {exc}")
        if self.recorder is not None:
            try:
                self.recorder.stop()
            except Exception as exc:
                problems.append(f"recorder failed: {exc}")
        if self.sampler is not None:
            try:
                self.metrics = self.sampler.stop()
            except Exception as exc:
                problems.append(f"metrics sampler failed: {exc}")
                self.metrics = self.sampler.summary()
        result = self._result(error, problems)
        self.store.append(result)
        self._finished = result
        if error is None and problems:
            raise FaultError(f"run {self.run_id} ({self.spec.path}): " + "; ".join(problems))
        return result

    def _result(self, error: BaseException | None, problems: list[str]) -> RunResult:

        rto = self.spec.rto
        measures = None
        if self.injected_at is not None:
            measures = measure(self.timeline.events(), self.injected_at - self.timeline.origin)
        messages = []
        if error is not None:
            messages.append(
                "interrupted (Ctrl-C)"
                if isinstance(error, KeyboardInterrupt)
                else f"{type(error).__name__}: {error}"
            )
        messages.extend(problems)
        if messages:
            status = RunStatus.ABORTED
        elif measures is None:
            status = RunStatus.ABORTED  # cannot happen through run_experiment
            messages.append("finished before any fault was injected")
        else:
            status = measures.status
        return RunResult(
            run_id=self.run_id,
            campaign=self.campaign,
            experiment=self.spec.title,
            fault=rto.fault.type,
            variant=fault_variant(rto.fault, rto.target),
            kind=rto.target.kind,
            backend=self.backend.name,
            profile=self.profile,
            healers=list(rto.healers),
            repetition=self.repetition,
            started_at=self.started_at,
            status=status,
            rto_s=measures.rto_s if measures else None,
            detection_s=measures.detection_s if measures else None,
            healer_action_s=measures.healer_action_s if measures else None,
            outage_start_s=measures.outage_start_s if measures else None,
            same_instance=measures.same_instance if measures else None,
            probes_sent=self.recorder.probes_sent if self.recorder else 0,
            probes_failed=self.recorder.probes_failed if self.recorder else 0,
            error="; ".join(messages) or None,
            timeline=self.timeline.events(),
            metrics=self.metrics,
            accelerator=self._accelerator(),
            platform=self._platform(),
            campaign_id=self.invocation.id,
            campaign_started_at=self.invocation.started_at,
            harness_version=self.invocation.harness_version,
            git_commit=self.invocation.git_commit,
            host_cores=self.invocation.host_cores,
            host_accelerator=self._host_accelerator(),
            # What the recorder wrote it ran with; else what the spec asked for.
            probe_interval_s=(
                measures.probe_interval_s
                if measures and measures.probe_interval_s is not None
                else rto.recovery.probe_interval_ms / 1000.0
            ),
            edge_probe_interval_s=measures.edge_interval_s if measures else None,
            probes_edge=self.recorder.probes_edge if self.recorder else None,
            outage_start_bracket_s=measures.start_bracket_s if measures else None,
            recovery_bracket_s=measures.end_bracket_s if measures else None,
            rto_uncertainty_s=measures.rto_uncertainty_s if measures else None,
        )

    def _platform(self) -> str | None:
        """What the run was measured on ("Kubernetes v1.34.4", "lab model")."""
        try:
            return self.backend.platform_version(WorkloadKind(self.spec.rto.target.kind))
        except HarnessError:
            return None  # the row is written whatever the backend says

    def _host_accelerator(self) -> str | None:
        """What this backend's VMs run on, for every row (pods too): a night on TCG
        is not a night on KVM, even for the pods beside the VMs; None: no VMs."""
        try:
            return self.backend.vm_accelerator()
        except HarnessError:
            return None  # the row is written whatever the backend says

    def _accelerator(self) -> str | None:
        """What ran the VM of a VMI run ("kvm"/"tcg"); None for pods or unknown."""
        if self.spec.rto.target.kind != WorkloadKind.VMI.value:
            return None
        try:
            return self.backend.vm_accelerator()
        except HarnessError:
            return None  # the row is written whatever the backend says


def run_experiment(
    spec: ExperimentSpec,
    backend: Backend,
    store: ResultsStore,
    clock: Clock | None = None,
    campaign: str | None = None,
    repetition: int = 0,
    *,
    profile: str | None = None,
    options: RunOptions | None = None,
    invocation: Invocation | None = None,
) -> RunResult:
    """Run ``spec`` once on ``backend`` and append its row to ``store``.

    Any exception (KeyboardInterrupt included) reverts the fault, records the run
    as aborted with the error, and is re-raised. ``invocation``: the campaign or
    ``rto run`` this run belongs to (its id goes on the row); None, its own.
    """
    opts = options or RunOptions()
    if clock is not None:
        opts.clock = clock
    run = Run(spec, backend, store, opts, campaign, repetition, profile, invocation)
    try:
        run.prepare()
        run.inject()
        run.hold()
        run.revert()
        run.wait_recovery()
    except BaseException as exc:
        run.finish(exc)
        raise
    return run.finish(None)
