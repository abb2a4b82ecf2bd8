"""Run a campaign: a list of experiments, each repeated, with per-entry overrides.

Called by ``rto campaign`` and the nightly job; reads a campaign file through
``chaos.spec.load_campaign`` (every experiment validated before the first run),
sets the backend's timing profile per entry, runs each repetition with
``chaos.runner.run_experiment`` and returns the rows it appended to the store.
With ``lab_lifecycle`` it brings the lab up before (with VMs when the campaign
says ``vms: true``) and always down after, through the backend's provider
(``chaos.backends.get_provider``). ``dry_run_campaign`` (``rto campaign
--dry-run``, kube only) prints every run's plan on a dry-run backend instead:
nothing is changed, journaled or stored. A campaign with ``metric_claims:
true`` also measures the handbook's metric claims after its runs
(:func:`measure_metric_claims`), so the report can judge them from this run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from chaos.backends import apply_profile, get_backend, get_provider
from chaos.faults import build_fault
from chaos.progress import make_progress
from chaos.provenance import Invocation, new_invocation
from chaos.results import ResultsStore, RunResult
from chaos.runner import RunOptions, run_experiment
from chaos.spec import CampaignSpec, ExperimentSpec, load_campaign
from cluster.api import Backend, WorkloadKind
from core.errors import HarnessError
from healers.registry import read_test_delays

__all__ = [
    "METRIC_CLAIMS_FILE",
    "CampaignPlan",
    "dry_run_campaign",
    "measure_metric_claims",
    "plan_campaign",
    "result_outcome",
    "run_campaign",
]

# Read by reports.analysis (CAMPAIGN_METRIC_FIGURES), next to results.jsonl.
METRIC_CLAIMS_FILE = "metric_claims.json"
NET_COMPARE = Path(__file__).resolve().parents[1] / "benchmarks" / "net_compare.py"


@dataclass(frozen=True)
class CampaignPlan:
    """A loaded campaign: the spec and one (experiment, repetitions) per entry."""

    spec: CampaignSpec
    entries: list[tuple[ExperimentSpec, int]]

    @property
    def total_runs(self) -> int:
        return sum(n for _, n in self.entries)


def plan_campaign(path: Path) -> CampaignPlan:
    read_test_delays()  # a malformed test-only setting fails before any run
    spec, experiments = load_campaign(path)
    entries = [
        (exp, entry.repetitions or spec.repetitions)
        for exp, entry in zip(experiments, spec.experiments, strict=True)
    ]
    return CampaignPlan(spec, entries)


def _cluster_lifecycle(
    backend: str,
    up: Callable[[str, int, bool], None] | None,
    down: Callable[[], None] | None,
) -> tuple[Callable[[str, int, bool], None], Callable[[], None]]:
    """``up``/``down`` as given, else the backend provider's (which says what it chose)."""
    if up is not None and down is not None:
        return up, down
    provider = get_provider(backend)

    def provider_up(profile: str, nodes: int, vms: bool) -> None:
        note = provider.up(profile, nodes, vms)
        if note is not None:
            print(note, flush=True)

    return up or provider_up, down or provider.down


def _delete_unless_next(
    backend: Backend,
    entries: list[tuple[ExperimentSpec, int]],
    i: int,
    show: Callable[[str], None],
) -> None:
    """Delete entry ``i``'s workload unless the next entry targets it too.

    Keeps one workload alive at a time: idle VMIs left behind would share the
    2 cores with the measured one, and a node power-off would reboot them all.
    """
    name = entries[i][0].rto.target.workload
    if i + 1 < len(entries) and entries[i + 1][0].rto.target.workload == name:
        return
    if any(w.name == name for w in backend.workloads()):
        show(f"deleting {name}")
        backend.delete_workload(name)


def _run_label(experiment: ExperimentSpec, rep: int) -> str:
    rto = experiment.rto
    return (
        f"{experiment.path.name} #{rep} ({rto.fault.type} on {rto.target.kind} "
        f"{rto.target.workload}, profile {rto.profile or 'as is'}, "
        f"healers {','.join(rto.healers) or 'none'})"
    )


def result_outcome(r: RunResult) -> str:
    """A run's status and RTO in a few words (progress lines, the CLI)."""
    rto = "-" if r.rto_s is None else f"{r.rto_s:.3f} s"
    return f"{r.status.value}, RTO {rto}" + (f" - {r.error}" if r.error else "")


def measure_metric_claims(
    store_dir: Path, campaign: str, *, script: Path = NET_COMPARE, timeout_s: float = 3600
) -> Path:
    """Run ``benchmarks/net_compare.py`` and store its figures as this campaign's.

    A child process, not an import: the benchmark points the lab's module-level
    state at its own private one-node lab, which must not leak into this
    process's lab. Writes ``store_dir/metric_claims.json`` (the benchmark's
    result, with date, host and accelerator, plus ``campaign``) and returns its
    path; a failed benchmark raises :class:`HarnessError` with its last lines.
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    out = store_dir / METRIC_CLAIMS_FILE
    partial = store_dir / f".{METRIC_CLAIMS_FILE}.partial"
    try:
        proc = subprocess.run(
            [sys.executable, str(script), "--out", str(partial)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"{script.name} did not finish within {timeout_s:.0f} s") from exc
    if proc.returncode != 0:
        tail = "\n    ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise HarnessError(f"{script.name} failed (exit {proc.returncode}):\n    {tail}")
    try:
        figures = json.loads(partial.read_text(encoding="utf-8"))
        if not isinstance(figures, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise HarnessError(f"{script.name} wrote no readable result to {partial}: {exc}") from exc
    figures["campaign"] = campaign
    out.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    partial.unlink()
    return out


def run_campaign(
    plan: CampaignPlan,
    store: ResultsStore,
    *,
    backend_factory: Callable[[str], Backend] = get_backend,
    options: RunOptions | None = None,
    lab_lifecycle: bool = False,
    console: Console | None = None,
    lab_up: Callable[[str, int, bool], None] | None = None,
    lab_down: Callable[[], None] | None = None,
    measure_claims: Callable[[Path, str], Path] = measure_metric_claims,
    invocation: Invocation | None = None,
) -> list[RunResult]:
    """Run every entry of ``plan``.

    With ``lab_lifecycle`` (``--with-lab``) the campaign's backend provider
    brings its cluster up before the first run and down after the last
    (``lab_up(profile, nodes, vms)``/``lab_down()`` stand in for it in tests);
    only the lab's provider does, a kube one refuses. A run that aborts (an
    error; the runner has reverted its fault and stored it as aborted) does not
    stop the campaign; once every run was tried a ``HarnessError`` lists the
    aborted ones. Ctrl-C stops at once. With ``metric_claims: true`` the metric
    claims are measured after the runs (``measure_claims``, after the lab is
    down: the benchmark brings up its own). Every row carries one campaign id
    (``invocation``, else a fresh one per call): tonight's campaign is told from
    last night's by it, whatever their names.
    """
    spec = plan.spec
    invocation = invocation or new_invocation(spec.name)
    first_profile = next(
        (e.rto.profile for e, _ in plan.entries if e.rto.profile), spec.profile or "fast"
    )
    results: list[RunResult] = []
    aborted: list[str] = []
    if lab_lifecycle:
        up, down = _cluster_lifecycle(spec.backend, lab_up, lab_down)
        up(first_profile, spec.nodes, spec.vms)
    backend: Backend | None = None
    try:
        backend = backend_factory(spec.backend)
        opts = options or RunOptions()
        progress = make_progress(console, spec.name, plan.total_runs)
        with progress:
            status = opts.status

            def show(message: str) -> None:
                progress.status(message)
                status(message)

            opts.status = show
            current: str | None = None
            for i, (experiment, reps) in enumerate(plan.entries):
                # Switching profile restarts the lab's timers; only do it on change.
                if experiment.rto.profile and experiment.rto.profile != current:
                    apply_profile(backend, experiment.rto.profile)
                    current = experiment.rto.profile
                for rep in range(reps):
                    progress.start_run(_run_label(experiment, rep))
                    try:
                        result = run_experiment(
                            experiment,
                            backend,
                            store,
                            campaign=spec.name,
                            repetition=rep,
                            profile=experiment.rto.profile,
                            options=opts,
                            invocation=invocation,
                        )
                    except HarnessError as exc:
                        # The runner reverted the fault and stored the row as
                        # aborted; a nightly campaign goes on with the next run
                        # (Ctrl-C is no HarnessError: it still stops everything).
                        aborted.append(f"{experiment.path.name} #{rep}: {exc}")
                        progress.end_run(f"aborted: {str(exc).splitlines()[0]}")
                    else:
                        results.append(result)
                        progress.end_run(result_outcome(result))
                if spec.delete_workloads:
                    _delete_unless_next(backend, plan.entries, i, show)
            opts.status = status
    finally:
        # Its watches and connections end before the cluster they talk to goes.
        try:
            close = getattr(backend, "close", None)
            if callable(close):
                close()
        finally:
            if lab_lifecycle:
                down()
    claims_error = ""
    if spec.metric_claims:
        try:
            measure_claims(store.root, spec.name)
        except HarnessError as exc:
            claims_error = f"the metric claims were not measured: {exc}"
    if aborted:
        raise HarnessError(
            f"campaign {spec.name}: {len(aborted)} of {plan.total_runs} runs aborted "
            "(recorded as aborted in the results store, faults reverted):\n  "
            + "\n  ".join(aborted)
            + (f"\n{claims_error}" if claims_error else "")
        )
    if claims_error:
        raise HarnessError(f"campaign {spec.name}: {claims_error}")
    return results


def _plan_run(backend: Backend, experiment: ExperimentSpec, echo: Callable[[str], None]) -> None:
    """What one run would do, acted out on a dry-run backend (which prints each change).

    Mirrors the runner's order: create the workload if it is missing, inject the
    fault, revert it. No journal (nothing acts), no recorder, no healers (they
    only act on what they observe); their names are printed.
    """
    rto = experiment.rto
    target = rto.target
    # workloads(), not workload(): a refused read must fail the plan, not read
    # as "missing".
    if all(w.name != target.workload for w in backend.workloads()):
        echo(f"  workload {target.workload} missing: the run creates it")
        kind = WorkloadKind(target.kind)
        if kind is WorkloadKind.VMI:
            backend.create_workload(
                target.workload,
                kind,
                target.node,
                watchdog_heartbeat_s=target.watchdog_heartbeat_s,
                eviction_strategy=target.eviction_strategy,
            )
        else:
            backend.create_workload(target.workload, kind, target.node)
        # Where the fault acts (the workload's pod, its node) is only known once
        # the workload exists, and the dry run created nothing.
        echo(f"  fault {rto.fault.type}: aimed once the workload exists")
        return
    fault = build_fault(rto.fault, target, backend, None)
    echo(f"  fault: {fault.describe()}")
    fault.inject()
    fault.revert()


def dry_run_campaign(
    plan: CampaignPlan,
    *,
    backend_factory: Callable[[str], Backend] = get_backend,
    echo: Callable[[str], None] = print,
) -> int:
    """Print every run's plan; change nothing. Returns the number of runs planned.

    The backend must be in dry-run mode (the kube backend with
    ``$RTO_KUBE_DRY_RUN=1``, set by ``rto campaign --dry-run``): it still reads
    the cluster (which workloads exist, which node each is on) and prints each
    change instead of making it.
    """
    backend = backend_factory(plan.spec.backend)
    if not backend.dry_run:
        raise HarnessError(
            f"campaign {plan.spec.name}: backend {backend.name!r} is not in dry-run mode; "
            "a dry run needs --backend kube with --dry-run"
        )
    k = 0
    failed: list[str] = []
    for experiment, reps in plan.entries:
        rto = experiment.rto
        healers = rto.healers  # the campaign's overrides are already applied
        for rep in range(reps):
            k += 1
            echo(
                f"run {k}/{plan.total_runs}: {experiment.path.name} #{rep}: {rto.fault.type} "
                f"on {rto.target.kind} {rto.target.workload}, "
                f"healers {','.join(healers) or 'none'}"
            )
            try:
                _plan_run(backend, experiment, echo)
            except HarnessError as exc:
                # A refused read (RBAC, a missing KubeVirt) is what a dry run is
                # for: show it, plan the rest, then fail naming every one.
                echo(f"  cannot plan: {exc}")
                failed.append(f"{experiment.path.name} #{rep}: {exc}")
    if failed:
        raise HarnessError(
            f"campaign {plan.spec.name}: dry run could not plan {len(failed)} of {k} runs:\n  "
            + "\n  ".join(failed)
        )
    return k
