"""RTO statistics per cell and verdicts against the documented table.

Filled from the results store (``runs/results.jsonl``, rows of
:class:`chaos.results.RunResult`); read by ``reports.plots``, ``reports.render``,
``reports.build`` and the CLI (``rto report --fail-on ...`` calls
:func:`failing_cells`). A *cell* is every run sharing (fault, variant, kind,
backend, profile, healers). Only cells measured with real platform timings
(profile ``kubernetes-defaults``, or backend ``kube`` on a profile that is not
a scaled one)
are judged against the documented seconds; ``fast``-profile cells (the lab's real
cluster with its fast flags) are shown as scaled timings.

A verdict is computed only from what was measured: a cell whose runs all
aborted, or a same-behaviour claim whose other side aborted, did not recover or
has no runs, is "not measured" and its detail names the side and why
(:class:`Side`). Aborted runs are errors of the harness or the platform, not
verdicts; ``failing_cells(..., {"aborted"})`` and the JUnit file report them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Protocol, TypedDict

import pandas as pd
from pydantic import BaseModel, ConfigDict

from chaos.results import ResultsStore, RunResult, RunStatus
from core.errors import SpecError
from core.timeline import EventKind
from reports.expectations import (
    Expectations,
    MetricExpectation,
    RangeClaim,
    RtoExpectation,
    SameBehaviourClaim,
)

__all__ = [
    "ABORTED",
    "CAMPAIGN_METRIC_FIGURES",
    "CELL_KEYS",
    "FAIL_ON_DEFAULT",
    "Cell",
    "CellSummary",
    "FailingCell",
    "MetricFigures",
    "MetricVerdict",
    "ReportSummary",
    "RunMetricsRow",
    "Side",
    "Verdict",
    "accelerator_label",
    "cell_name",
    "failing_cells",
    "fmt_s",
    "healers_label",
    "judge_metrics",
    "judged_with_real_timings",
    "load_campaign_metric_figures",
    "load_metric_figures",
    "load_runs",
    "metrics_rows",
    "runs_frame",
    "summarise",
]

CELL_KEYS: tuple[str, ...] = ("fault", "variant", "kind", "backend", "profile", "healers")
REAL_PROFILE = "kubernetes-defaults"
# The profiles of cluster.profiles that scale the platform's timings (named here:
# reports read rows, not the cluster package).
SCALED_PROFILES = ("fast",)


class Verdict(StrEnum):
    HOLDS = "holds"
    CONTRADICTED = "contradicted"
    INFORMATIONAL = "informational"
    NOT_MEASURED = "not measured"
    NO_RECOVERY = "no recovery"
    SCALED = "scaled"

    @property
    def label(self) -> str:
        return "scaled timings, no verdict" if self is Verdict.SCALED else self.value

    @property
    def fails(self) -> bool:
        """Whether CI output (JUnit) shows the cell as a failure."""
        return self in (Verdict.CONTRADICTED, Verdict.NO_RECOVERY)


class Side(StrEnum):
    """Whether one cell (one side of a pod-vs-VMI comparison) was measured, and if not, why."""

    MEASURED = "measured"
    ABORTED = "aborted"  # every run aborted (before or after the fault)
    NO_RECOVERY = "no recovery"  # a run did not recover within the deadline: no RTO
    NO_RTO = "no RTO"  # recovered runs without an RTO value
    NO_RUNS = "no runs"


_ACCELERATORS = {
    "tcg": "TCG (software emulation)",
    "kvm": "KVM (hardware virtualisation)",
}


def accelerator_label(accelerator: str | None) -> str:
    """'tcg' -> 'TCG (software emulation)'; '' or None -> 'accelerator not recorded'.

    ``accelerator`` may join several with '+' (a cell or a file mixing them).
    """
    if not accelerator:
        return "accelerator not recorded"
    names = [_ACCELERATORS.get(a, a.upper()) for a in accelerator.split("+")]
    return names[0] if len(names) == 1 else "mixed: " + " and ".join(names)


def cell_name(fault: str, variant: str, kind: str, backend: str, profile: str, healers: str) -> str:
    """A cell in words, e.g. ``network-partition[node]/pod lab/fast healers=eviction``
    (the report's, the history's and the metrics' one spelling)."""
    shown = f"[{variant}]" if variant else ""
    return f"{fault}{shown}/{kind} {backend}/{profile} healers={healers}"


class Cell(BaseModel):
    """What makes a cell (CELL_KEYS): the report's, the history's and the metrics' key."""

    model_config = ConfigDict(frozen=True)

    fault: str
    variant: str
    kind: str
    backend: str
    profile: str
    healers: str  # healers_label(): "none" or names joined with "+"

    @classmethod
    def of(cls, r: RunResult) -> Cell:
        """The cell a result row belongs to."""
        return cls(
            fault=r.fault,
            variant=r.variant,
            kind=r.kind,
            backend=r.backend,
            profile=r.profile,
            healers=healers_label(r.healers),
        )

    @property
    def key(self) -> tuple[str, str, str, str, str, str]:
        return (self.fault, self.variant, self.kind, self.backend, self.profile, self.healers)

    @property
    def name(self) -> str:
        return cell_name(*self.key)


class CellSummary(Cell):
    """Statistics and verdict of one cell. Times in seconds; None when not measured."""

    n: int  # all runs, aborted included
    recovered: int  # recovered, or no outage at all (RTO 0)
    not_recovered: int
    aborted: int
    median_s: float | None = None
    p95_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    detection_median_s: float | None = None
    healer_action_median_s: float | None = None
    same_instance_share: float | None = None
    verdict: Verdict
    detail: str
    documented: str = ""  # the handbook's claim text, "" without an entry
    run_ids: tuple[str, ...] = ()
    side: Side = Side.MEASURED  # whether this cell was measured (see Side)
    aborted_before_fault: int = 0  # aborted runs with no fault injected
    abort_reasons: tuple[str, ...] = ()  # distinct errors of the aborted runs
    # What ran the VMs of a vmi cell ("tcg", "kvm", "kvm+tcg"); "" for pods or
    # rows that did not record it (RunResult.accelerator).
    accelerator: str = ""
    # What the cell was measured on ("Kubernetes v1.34.4", "lab model", both
    # joined with " + "); "" for rows that did not record it (RunResult.platform).
    platform: str = ""
    aborted_runs: tuple[tuple[str, str], ...] = ()  # (run_id, error) of each aborted run
    # Resolution of the recovered runs' RTOs (RunResult.rto_uncertainty_s: the
    # width of the interval each true RTO lies in): the widest and the median,
    # over the runs that recorded one (uncertainty_known of them), and the
    # prober's grid and edge intervals (None when unknown or mixed).
    uncertainty_max_s: float | None = None
    uncertainty_median_s: float | None = None
    uncertainty_known: int = 0
    probe_interval_s: float | None = None
    edge_interval_s: float | None = None

    @property
    def resolution(self) -> str:
        return resolution_text(
            self.uncertainty_max_s, self.probe_interval_s, self.edge_interval_s, widest=True
        )


class MetricVerdict(BaseModel):
    model_config = ConfigDict(frozen=True)

    expectation: MetricExpectation
    verdict: Verdict
    detail: str
    # Where the figure came from: this store's campaign or a benchmark file,
    # with date, machine and accelerator (MetricFigures.provenance); "" if none.
    provenance: str = ""
    from_this_run: bool = False


class ReportSummary(BaseModel):
    """What a report says: every cell with its verdict, the metric claims, the files."""

    model_config = ConfigDict(frozen=True)

    results_path: str
    expectations_path: str
    generated_at: str  # ISO 8601 UTC
    runs: int
    cells: tuple[CellSummary, ...]
    metrics: tuple[MetricVerdict, ...]
    expectations: Expectations
    message: str = ""  # e.g. "no runs recorded in runs/results.jsonl"
    files: tuple[str, ...] = ()  # what build_report wrote, relative to out_dir
    # Per-run resource metrics (pod vs VMI) and the pod-vs-VMI figures, in the
    # order they are preferred (this store's campaign first, then the benchmark).
    run_metrics: tuple[RunMetricsRow, ...] = ()
    metric_figures: tuple[MetricFigures, ...] = ()

    def verdict_counts(self) -> dict[str, int]:
        counts = {v.value: 0 for v in Verdict}
        for c in self.cells:
            counts[c.verdict.value] += 1
        return {k: n for k, n in counts.items() if n}

    def cell(self, fault: str, kind: str, **match: str) -> CellSummary:
        """The one cell of (fault, kind) matching ``match`` (e.g. profile=..., healers=...)."""
        found = [
            c
            for c in self.cells
            if c.fault == fault
            and c.kind == kind
            and all(getattr(c, k) == v for k, v in match.items())
        ]
        if len(found) != 1:
            raise LookupError(f"{len(found)} cells match {fault}/{kind} {match}")
        return found[0]


class FailingCell(BaseModel):
    model_config = ConfigDict(frozen=True)

    cell: CellSummary
    reason: str


def healers_label(healers: Iterable[str]) -> str:
    # Sorted so that ["eviction", "watchdog"] and ["watchdog", "eviction"] are one cell.
    names = sorted({h for h in healers if h})
    return "+".join(names) if names else "none"


def judged_with_real_timings(backend: str, profile: str) -> bool:
    """A cluster's own timings: the defaults profile, or a kube cluster whose
    profile is not a scaled one (a lab cluster started with ``fast`` is)."""
    return profile == REAL_PROFILE or (backend == "kube" and profile not in SCALED_PROFILES)


def fmt_s(value: float | None) -> str:
    """Seconds for people: 0.62 s, 4.2 s, 412 s; '-' when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    if value < 1:
        return f"{value:.2f} s"
    if value < 100:
        return f"{value:.1f} s"
    return f"{value:.0f} s"


def fmt_ms(value: float) -> str:
    """A small duration in ms: 0.4 ms, 3.2 ms, 41 ms."""
    ms = value * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def resolution_text(
    uncertainty_s: float | None,
    interval_s: float | None,
    edge_s: float | None,
    widest: bool = False,
) -> str:
    """How precise an RTO is, for people: 'to within 3.2 ms; 20 ms probes, 2.0 ms edge probes'."""
    probes = (
        "interval unknown"
        if interval_s is None
        else f"{fmt_ms(interval_s)} probes"
        + (", no edge probes" if edge_s is None else f", {fmt_ms(edge_s)} edge probes")
    )
    if uncertainty_s is None:
        return f"resolution not recorded; {probes}"
    return f"{'each ' if widest else ''}to within {fmt_ms(uncertainty_s)}; {probes}"


def fmt_rto(value: float | None, uncertainty_s: float | None) -> str:
    """An RTO with as many digits as its resolution carries: '4.213 s'."""
    if value is None or uncertainty_s is None or math.isnan(value):
        return fmt_s(value)
    digits = 3 if uncertainty_s < 0.01 else 2 if uncertainty_s < 0.1 else 1
    return f"{value:.{digits}f} s"


def _factor(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio < 10 else f"{ratio:.0f}x"


def load_runs(path: Path) -> list[RunResult]:
    """Read a results store: the ``results.jsonl`` file or the directory holding it."""
    store = ResultsStore(path if path.is_dir() else path.parent)
    if not path.is_dir():
        # The store names its file results.jsonl; a report may be asked to read a
        # copy under another name (a CI artifact), so point it at the file given.
        store.path = path
    return store.load()


_COLUMNS = [
    *CELL_KEYS,
    "run_id",
    "campaign",
    "experiment",
    "repetition",
    "started_at",
    "status",
    "recovered",
    "rto_s",
    "detection_s",
    "healer_action_s",
    "outage_start_s",
    "same_instance",
    "error",
    "injected",
    "accelerator",
    "platform",
    "rto_uncertainty_s",
    "probe_interval_s",
    "edge_interval_s",
]


def runs_frame(rows: Sequence[RunResult]) -> pd.DataFrame:
    """One DataFrame row per run; ``rto_s`` is 0 for no-outage runs, NaN when not recovered."""
    records = []
    for r in rows:
        recovered = r.status in (RunStatus.RECOVERED, RunStatus.NO_OUTAGE)
        rto = r.rto_s
        if r.status is RunStatus.NO_OUTAGE and rto is None:
            rto = 0.0
        if not recovered:
            # A not-recovered run's rto_s (if any) is the deadline, not an RTO.
            rto = None
        records.append(
            {
                **Cell.of(r).model_dump(),
                "run_id": r.run_id,
                "campaign": r.campaign,
                "experiment": r.experiment,
                "repetition": r.repetition,
                "started_at": r.started_at,
                "status": r.status.value,
                "recovered": recovered,
                "rto_s": float("nan") if rto is None else float(rto),
                "detection_s": float("nan") if r.detection_s is None else r.detection_s,
                "healer_action_s": float("nan") if r.healer_action_s is None else r.healer_action_s,
                "outage_start_s": float("nan") if r.outage_start_s is None else r.outage_start_s,
                "same_instance": r.same_instance,
                "error": r.error or "",
                "injected": any(e.kind is EventKind.FAULT_INJECTED for e in r.timeline),
                "accelerator": r.accelerator or "",
                "platform": r.platform or "",
                "rto_uncertainty_s": _nan(r.rto_uncertainty_s if recovered else None),
                "probe_interval_s": _nan(r.probe_interval_s),
                "edge_interval_s": _nan(r.edge_probe_interval_s),
            }
        )
    return pd.DataFrame.from_records(records, columns=_COLUMNS)


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _only(values: pd.Series) -> float | None:
    """The one value of a column (None when there is none, or several)."""
    distinct = set(values.dropna().round(6).tolist())
    return distinct.pop() if len(distinct) == 1 else None


def _num(x: object) -> float | None:
    if x is None:
        return None
    f = float(x)  # type: ignore[arg-type]
    return None if math.isnan(f) else f


class _Stats(TypedDict):
    n: int
    recovered: int
    not_recovered: int
    aborted: int
    median_s: float | None
    p95_s: float | None
    min_s: float | None
    max_s: float | None
    detection_median_s: float | None
    healer_action_median_s: float | None
    same_instance_share: float | None
    run_ids: tuple[str, ...]
    aborted_before_fault: int
    abort_reasons: tuple[str, ...]
    accelerator: str
    platform: str
    aborted_runs: tuple[tuple[str, str], ...]
    uncertainty_max_s: float | None
    uncertainty_median_s: float | None
    uncertainty_known: int
    probe_interval_s: float | None
    edge_interval_s: float | None


def _stats(group: pd.DataFrame) -> _Stats:
    rto = group.loc[group["recovered"], "rto_s"].dropna()
    uncertainty = group.loc[group["recovered"], "rto_uncertainty_s"].dropna()
    same = group["same_instance"].dropna()
    finished = group[group["status"] != RunStatus.ABORTED.value]
    aborted = group[group["status"] == RunStatus.ABORTED.value]
    reasons = [e or "no error recorded" for e in aborted["error"].tolist()]
    accelerators = sorted({a for a in group["accelerator"].tolist() if a})
    return {
        "n": len(group),
        "recovered": int(group["recovered"].sum()),
        "not_recovered": int((finished["status"] == RunStatus.NOT_RECOVERED.value).sum()),
        "aborted": int((group["status"] == RunStatus.ABORTED.value).sum()),
        "median_s": _num(rto.median()) if len(rto) else None,
        "p95_s": _num(rto.quantile(0.95)) if len(rto) else None,
        "min_s": _num(rto.min()) if len(rto) else None,
        "max_s": _num(rto.max()) if len(rto) else None,
        "detection_median_s": _num(group["detection_s"].median()),
        "healer_action_median_s": _num(group["healer_action_s"].median()),
        "same_instance_share": float(same.astype(bool).mean()) if len(same) else None,
        "run_ids": tuple(group["run_id"].tolist()),
        "aborted_before_fault": int((~aborted["injected"].astype(bool)).sum()),
        "abort_reasons": tuple(dict.fromkeys(reasons)),
        "accelerator": "+".join(accelerators),
        "platform": " + ".join(sorted({p for p in group["platform"].tolist() if p})),
        "aborted_runs": tuple(zip(aborted["run_id"].tolist(), reasons, strict=True)),
        "uncertainty_max_s": _num(uncertainty.max()) if len(uncertainty) else None,
        "uncertainty_median_s": _num(uncertainty.median()) if len(uncertainty) else None,
        "uncertainty_known": len(uncertainty),
        "probe_interval_s": _only(group["probe_interval_s"]),
        "edge_interval_s": _only(group["edge_interval_s"]),
    }


def _aborted_text(stats: _Stats) -> str:
    """'3 run(s) aborted before the fault: <first reason>' (+ how many other reasons)."""
    n, before = stats["aborted"], stats["aborted_before_fault"]
    if before == n:
        when = "before the fault"
    elif before == 0:
        when = "after the fault was injected"
    else:
        when = f"({before} before the fault, {n - before} after)"
    reasons = stats["abort_reasons"]
    more = f" (+{len(reasons) - 1} other error(s))" if len(reasons) > 1 else ""
    return f"{n} run(s) aborted {when}: {reasons[0] if reasons else '-'}{more}"


def _side(stats: _Stats | None) -> tuple[Side, str]:
    """Whether a cell was measured; if not, why, in words for the report."""
    if stats is None:
        return Side.NO_RUNS, "no runs recorded"
    finished = stats["n"] - stats["aborted"]
    if finished == 0:
        return Side.ABORTED, f"all {_aborted_text(stats)}; nothing was measured"
    if stats["not_recovered"]:
        median = stats["median_s"]
        tail = f"; median of the recovered {fmt_s(median)}" if median is not None else ""
        return Side.NO_RECOVERY, (
            f"{stats['not_recovered']} of {finished} run(s) did not recover within the "
            f"deadline{tail}"
        )
    if stats["median_s"] is None:
        # Recovered runs without an RTO value: the recorder did not fill rto_s.
        return Side.NO_RTO, f"{stats['recovered']} run(s) recovered but none has an RTO"
    return Side.MEASURED, ""


def _range_verdict(median: float, claim: RangeClaim, doc: str) -> tuple[Verdict, str]:
    measured = f"measured median {fmt_s(median)} vs documented {claim.describe()}"
    handbook = f' (handbook: "{doc}")'
    if median < claim.min_s:
        how = "no outage at all" if median == 0 else f"{_factor(claim.min_s / median)} faster"
        return Verdict.CONTRADICTED, f"{measured}: {how}{handbook}"
    if median > claim.upper:
        how = (
            f"{fmt_s(median - claim.upper)} slower"
            if claim.upper == 0
            else f"{_factor(median / claim.upper)} slower"
        )
        return Verdict.CONTRADICTED, f"{measured}: {how}{handbook}"
    return Verdict.HOLDS, f"{measured}: within the documented range{handbook}"


def _same_verdict(
    kind: str, median: float, other_kind: str, other: _Stats | None, claim: SameBehaviourClaim
) -> tuple[Verdict, str]:
    side, why = _side(other)
    if side is not Side.MEASURED or other is None or other["median_s"] is None:
        # A relational claim needs both medians: an unmeasured side gives no
        # verdict (its own cell says aborted / no recovery), never "contradicted".
        return Verdict.NOT_MEASURED, (
            f"same-behaviour claim needs the {other_kind} side with the same settings, "
            f"which is not measured ({side.value}: {why}); {kind} median {fmt_s(median)}"
        )
    other_median = other["median_s"]
    lo, hi = sorted((median, other_median))
    diff = hi - lo
    ratio = math.inf if lo == 0 else hi / lo
    both = f"{kind} median {fmt_s(median)} vs {other_kind} median {fmt_s(other_median)}"
    if diff <= claim.tolerance_s or ratio <= claim.factor:
        return Verdict.HOLDS, f"{both}: same behaviour ({claim.describe()})"
    slower = kind if median > other_median else other_kind
    how = f"{slower} {fmt_s(diff)} slower" if lo == 0 else f"{slower} {_factor(ratio)} slower"
    return Verdict.CONTRADICTED, f"{both}: {how} (documented: same behaviour, {claim.describe()})"


def _judge(
    key: tuple[str, ...],
    stats: _Stats,
    expectation: RtoExpectation | None,
    sibling: _Stats | None,
) -> tuple[Verdict, str]:
    fault, variant, kind, backend, profile, _healers = key
    median = stats["median_s"]
    numbers = f"median {fmt_s(median)}, detection {fmt_s(stats['detection_median_s'])}"
    side, why = _side(stats)
    if side is Side.NO_RECOVERY:
        return Verdict.NO_RECOVERY, why
    if side is not Side.MEASURED or median is None:
        return Verdict.NOT_MEASURED, why
    if expectation is None:
        return Verdict.INFORMATIONAL, f"no documented claim for {fault}/{kind}; {numbers}"
    if variant in expectation.not_for_variants:
        return Verdict.INFORMATIONAL, (
            f"the documented claim ({expectation.mechanism}: {expectation.claim_text}) is not "
            f"about [{variant}]; {numbers}"
        )
    if not judged_with_real_timings(backend, profile):
        return Verdict.SCALED, (
            f"profile {profile} scales platform timings; {numbers} "
            f"(documented for real timings: {expectation.claim_text})"
        )
    claim = expectation.claim
    if isinstance(claim, RangeClaim):
        return _range_verdict(median, claim, expectation.claim_text)
    if isinstance(claim, SameBehaviourClaim):
        other_kind = "vmi" if kind == "pod" else "pod"
        return _same_verdict(kind, median, other_kind, sibling, claim)
    return Verdict.INFORMATIONAL, f"documented: {expectation.claim_text}; measured {numbers}"


def summarise(
    rows: Sequence[RunResult] | pd.DataFrame, expectations: Expectations
) -> tuple[CellSummary, ...]:
    """Group runs into cells, compute statistics and a verdict for each cell."""
    frame = rows if isinstance(rows, pd.DataFrame) else runs_frame(rows)
    if frame.empty:
        return ()
    stats: dict[tuple[str, ...], _Stats] = {}
    for key, group in frame.groupby(list(CELL_KEYS), sort=True, dropna=False):
        stats[tuple(str(k) for k in key)] = _stats(group)
    cells = []
    for key, st in stats.items():
        fault, variant, kind, backend, profile, healers = key
        expectation = expectations.get(fault, kind)
        other_kind = "vmi" if kind == "pod" else "pod"
        sibling = stats.get((fault, variant, other_kind, backend, profile, healers))
        verdict, detail = _judge(key, st, expectation, sibling)
        side, _why = _side(st)
        if 0 < st["aborted"] < st["n"]:
            # Measured from the runs that finished; the aborted ones are errors.
            detail += f"; {_aborted_text(st)} (not counted)"
        cells.append(
            CellSummary(
                fault=fault,
                variant=variant,
                kind=kind,
                backend=backend,
                profile=profile,
                healers=healers,
                verdict=verdict,
                detail=detail,
                documented=expectation.claim_text if expectation else "",
                side=side,
                **st,
            )
        )
    order: dict[str, int] = {f: i for i, f in enumerate(e.fault for e in expectations.rto)}
    return tuple(sorted(cells, key=lambda c: (order.get(c.fault, len(order)), c.fault, c.key[1:])))


# --- metric claims (benchmarks/net_compare.py) and per-run metric summaries -------

DEFAULT_METRIC_FIGURES = (
    Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "net_compare.json"
)
# A measured ratio "holds" when within the claimed range widened by this much
# (the claims are round numbers; the benchmark has run-to-run noise).
METRIC_RTOL = 0.10
# Claim metric -> the ratio of net_compare.json that measures it. The disk claim
# is about tolerance (how much added latency a workload survives); the benchmark
# measures the baseline write latency each sees, so it only informs.
_METRIC_RATIO = {
    "network_throughput_vm_over_pod": "network_throughput_vm_over_pod",
    "network_latency_vm_over_pod": "network_latency_vm_over_pod",
    "disk_latency_tolerance_vm_over_pod": "disk_latency_vm_over_pod",
}
_INFORMS_ONLY = {"disk_latency_tolerance_vm_over_pod"}


# Written into the results store by a campaign with ``metric_claims: true``
# (chaos.campaign.measure_metric_claims): figures measured in that campaign's run.
CAMPAIGN_METRIC_FIGURES = "metric_claims.json"


class MetricFigures(BaseModel):
    """The part of a ``benchmarks/net_compare.py`` result a report reads.

    Either the committed benchmark file or a campaign's own measurement
    (``campaign`` set), stored next to its results.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    accelerator: str  # "tcg" | "kvm"
    caveat: str = ""
    generated_at: str = ""
    host: dict[str, str] = {}  # platform.release()/machine() of the measuring host
    ratios: dict[str, float]
    campaign: str = ""  # the campaign that measured them into this store; "" for a file
    source: str = ""  # the file it was read from (set by load_metric_figures)

    @property
    def label(self) -> str:
        if self.accelerator == "tcg":
            return "measured under QEMU TCG (software emulation; does not transfer to KVM)"
        return f"measured under {self.accelerator.upper()}"

    @property
    def provenance(self) -> str:
        """Where, when, on what and how: 'from this run (campaign standard, ...)'."""
        machine = " ".join(
            v for v in (self.host.get("machine", ""), self.host.get("kernel", "")) if v
        )
        facts = ", ".join(
            [
                self.generated_at or "date not recorded",
                f"host {machine}" if machine else "host not recorded",
                f"VMI figures: {accelerator_label(self.accelerator)}",
            ]
        )
        if self.campaign:
            return f"from this run: campaign {self.campaign}, {self.source} ({facts})"
        return f"from benchmark file {self.source} ({facts}), not from this run"


def load_metric_figures(path: Path | None = None) -> MetricFigures | None:
    """Read the pod-vs-VMI figures; None when ``path`` is None and the default
    file does not exist. A given path that is missing or malformed raises."""
    if path is None:
        if not DEFAULT_METRIC_FIGURES.exists():
            return None
        path = DEFAULT_METRIC_FIGURES
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        figures = MetricFigures.model_validate(data)
    except (OSError, ValueError) as exc:  # json and pydantic errors are ValueErrors
        raise SpecError(
            f"{path}: not a readable net_compare result ({exc}); "
            "run benchmarks/net_compare.py to produce it"
        ) from exc
    return figures.model_copy(update={"source": str(path)})


def load_campaign_metric_figures(results: Path) -> MetricFigures | None:
    """The figures a campaign measured into the store at ``results`` (its
    ``results.jsonl`` or directory); None when no campaign did."""
    path = (results if results.is_dir() else results.parent) / CAMPAIGN_METRIC_FIGURES
    if not path.exists():
        return None
    figures = load_metric_figures(path)
    assert figures is not None  # a given path never yields None
    if not figures.campaign:
        raise SpecError(f"{path}: no 'campaign' field; it is written by `rto campaign` only")
    return figures


def judge_metrics(
    expectations: Expectations,
    figures: MetricFigures | Sequence[MetricFigures] | None = None,
) -> tuple[MetricVerdict, ...]:
    """Verdicts on the handbook's metric claims from measured ratios (VMI / pod).

    ``figures`` is one source or several in order of preference (this store's
    campaign, then the benchmark file): each claim takes its ratio from the
    first source that has it, and says which (``provenance``).
    Without figures every claim is "not measured". Figures measured under TCG
    never give holds/contradicted: software emulation says nothing about a KVM
    host, so the verdict is informational and the detail says what the numbers
    would mean ("as measured ... contradicted").
    """
    sources: list[MetricFigures] = (
        [] if figures is None else [figures] if isinstance(figures, MetricFigures) else [*figures]
    )
    out = []
    for m in expectations.metrics:
        key = _METRIC_RATIO.get(m.metric)
        chosen = next((f for f in sources if key and key in f.ratios), None)
        if chosen is None or key is None or m.expected is None:
            why = (
                "no pod-vs-VMI figures (run benchmarks/net_compare.py, or a campaign "
                "with metric_claims: true)"
                if not sources
                else f"{', '.join(f.source for f in sources)}: no figure for {m.metric}"
            )
            out.append(MetricVerdict(expectation=m, verdict=Verdict.NOT_MEASURED, detail=why))
            continue
        figures_ = chosen
        ratio = chosen.ratios[key]
        lo, hi = m.expected.min * (1 - METRIC_RTOL), m.expected.max * (1 + METRIC_RTOL)
        holds = lo <= ratio <= hi
        claimed = (
            f"{m.expected.min:g}"
            if m.expected.min == m.expected.max
            else f"{m.expected.min:g}-{m.expected.max:g}"
        )
        as_measured = "holds" if holds else "contradicted"
        detail = f"VMI/pod {key} = {ratio:.2f} (claim {claimed}, +-{METRIC_RTOL:.0%})"
        if m.metric in _INFORMS_ONLY:
            verdict = Verdict.INFORMATIONAL
            direct = figures_.ratios.get("disk_direct_latency_vm_over_pod")
            detail += (
                "; this is the baseline fsync-write latency ratio"
                + (f" (O_DIRECT writes: {direct:.2f})" if direct is not None else "")
                + ", not the latency each tolerates: the claim itself is not measured"
            )
        elif figures_.accelerator != "kvm":
            verdict = Verdict.INFORMATIONAL
            detail = f"{detail}; as measured: {as_measured}"
        else:
            verdict = Verdict.HOLDS if holds else Verdict.CONTRADICTED
        out.append(
            MetricVerdict(
                expectation=m,
                verdict=verdict,
                detail=f"{detail} [{figures_.label}]",
                provenance=figures_.provenance,
                from_this_run=bool(figures_.campaign),
            )
        )
    return tuple(out)


class RunMetricsRow(BaseModel):
    """Per-run resource metrics (``RunResult.metrics``) averaged per (fault, kind)."""

    model_config = ConfigDict(frozen=True)

    fault: str
    kind: str
    runs: int
    samples: int
    errors: int
    cpu_cores: float | None  # workload CPU (container / vCPU) per second sampled
    host_cpu_cores: float | None  # host CPU incl. QEMU overhead
    mem_mib: float | None
    overhead_mib: float | None  # QEMU RSS beyond the guest (VMI)
    disk_wr_kib_s: float | None
    disk_wr_ops_s: float | None
    net_rx_kib_s: float | None
    net_tx_kib_s: float | None


def _mean(values: Iterable[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return round(sum(got) / len(got), 3) if got else None


def metrics_rows(rows: Sequence[RunResult]) -> tuple[RunMetricsRow, ...]:
    """Rows with metrics, grouped by (fault, kind): means of per-run rates."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in rows:
        if r.metrics is not None:
            groups.setdefault((r.fault, r.kind), []).append(r)
    out = []
    for (fault, kind), runs in sorted(groups.items()):
        ms = [r.metrics for r in runs if r.metrics is not None]

        def rate(x: float, d: float) -> float | None:
            return x / d if d > 0 else None

        out.append(
            RunMetricsRow(
                fault=fault,
                kind=kind,
                runs=len(ms),
                samples=sum(m.samples for m in ms),
                errors=sum(m.errors for m in ms),
                cpu_cores=_mean(m.cpu_util for m in ms),
                host_cpu_cores=_mean(m.host_cpu_util for m in ms),
                mem_mib=_mean(
                    m.mem_bytes_mean / 2**20 if m.mem_bytes_mean is not None else None for m in ms
                ),
                overhead_mib=_mean(
                    m.overhead_bytes_mean / 2**20 if m.overhead_bytes_mean is not None else None
                    for m in ms
                ),
                disk_wr_kib_s=_mean(rate(m.disk_wr_bytes / 1024, m.duration_s) for m in ms),
                disk_wr_ops_s=_mean(rate(m.disk_wr_ops, m.duration_s) for m in ms),
                net_rx_kib_s=_mean(rate(m.net_rx_bytes / 1024, m.duration_s) for m in ms),
                net_tx_kib_s=_mean(rate(m.net_tx_bytes / 1024, m.duration_s) for m in ms),
            )
        )
    return tuple(out)


ReportSummary.model_rebuild()


def _normalise(name: str) -> str:
    return " ".join(name.strip().lower().replace("-", " ").replace("_", " ").split())


def _budget_for(cell: CellSummary, budgets: Mapping[str, float]) -> tuple[str, float] | None:
    # Most specific key wins: "fault/kind", then "fault", then "kind", then "*".
    for key in (f"{cell.fault}/{cell.kind}", cell.fault, cell.kind, "*"):
        if key in budgets:
            return key, float(budgets[key])
    return None


# ``--fail-on`` names beyond the verdicts: a cell with an aborted run fails CI
# (an abort is an error of the harness or the platform, not a measurement).
ABORTED = "aborted"
# What ``rto report`` fails on unless told otherwise: what a CI gate must see.
FAIL_ON_DEFAULT: tuple[str, ...] = ("contradicted", "no-recovery", ABORTED)


class HasCells(Protocol):
    """What :func:`failing_cells` needs of a summary (``reports.build.ReportSummary``)."""

    @property
    def cells(self) -> Sequence[CellSummary]: ...


def failing_cells(
    summary: HasCells | Sequence[CellSummary],
    fail_on: set[str],
    budgets: Mapping[str, float] | None = None,
) -> list[FailingCell]:
    """Cells that should fail CI.

    ``summary`` is a ``ReportSummary`` (anything with a ``cells`` attribute) or a
    sequence of :class:`CellSummary`. ``fail_on`` holds verdict names
    ("contradicted", "no recovery"/"no-recovery", "holds", ...) and
    ``"aborted"`` (a cell with any aborted run; :data:`FAIL_ON_DEFAULT` is what
    ``rto report`` uses by default); ``"none"`` alone fails on nothing. ``budgets`` maps
    "fault/kind", "fault", "kind" or "*" to seconds: a cell fails when any of
    its runs took longer (its max RTO) or did not recover. Unknown verdict
    names raise :class:`SpecError`.
    """
    cells = summary if isinstance(summary, Sequence) else summary.cells
    by_name = {_normalise(v.value): v for v in Verdict}
    by_name[_normalise(Verdict.SCALED.label)] = Verdict.SCALED
    wanted: set[Verdict] = set()
    on_aborted = False
    for name in fail_on:
        if _normalise(name) in (ABORTED, "none"):
            on_aborted |= _normalise(name) == ABORTED
            continue
        verdict = by_name.get(_normalise(name))
        if verdict is None:
            choices = ", ".join([*(v.value.replace(" ", "-") for v in Verdict), ABORTED, "none"])
            raise SpecError(f"--fail-on {name!r} is not a verdict; choose from {choices}")
        wanted.add(verdict)
    for key, value in (budgets or {}).items():
        if not isinstance(value, int | float) or value < 0 or math.isnan(value):
            raise SpecError(
                f"RTO budget for {key!r} must be a number of seconds >= 0, got {value!r}"
            )
    out: list[FailingCell] = []
    for cell in cells:
        reasons = []
        if cell.verdict in wanted:
            reasons.append(f"verdict {cell.verdict.label}: {cell.detail}")
        if on_aborted and cell.aborted:
            reasons.append(
                f"{cell.aborted} of {cell.n} run(s) aborted: {'; '.join(cell.abort_reasons)} "
                f"(runs {', '.join(r for r, _ in cell.aborted_runs)})"
            )
        budget = _budget_for(cell, budgets or {})
        if budget is not None:
            key, limit = budget
            if cell.not_recovered:
                reasons.append(
                    f"{cell.not_recovered} run(s) did not recover (budget {key}: {fmt_s(limit)})"
                )
            elif cell.max_s is not None and cell.max_s > limit:
                reasons.append(f"max RTO {fmt_s(cell.max_s)} over budget {key}: {fmt_s(limit)}")
        if reasons:
            out.append(FailingCell(cell=cell, reason="; ".join(reasons)))
    return out
