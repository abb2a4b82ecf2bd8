"""A report's figures as Prometheus metrics: a textfile for node-exporter, or a Pushgateway push.

Filled from the :class:`reports.analysis.ReportSummary` that ``rto report``
builds (every figure is read from its cells, nothing is recomputed) plus the
store's rows for the one thing a summary does not hold, the campaign's
timestamp (the newest run's start). Read by ``rto report --openmetrics FILE``
(:func:`write_metrics_file`) and ``--pushgateway URL`` (:func:`check_pushgateway_url`,
then :func:`push_metrics`); then by Prometheus, through node-exporter's textfile
collector or a Pushgateway, and the dashboards and alerts on top.

Every metric is a gauge named ``rto_harness_*`` (a report is a snapshot of the
store, not a running count), seconds in the name, one series per cell labelled
``fault, variant, kind, backend, profile, healers`` (:data:`CELL_LABELS`). A
figure the cell has none of (no recovered run, so no RTO) has no series rather
than a NaN: ``absent()`` and a missing point in a graph say "not measured"
better than a NaN that sorts and averages oddly.

The format follows the file name: node-exporter's textfile collector reads only
``*.prom`` files, with the classic Prometheus text parser, so a ``.prom`` file
gets the classic text format; any other name gets OpenMetrics 1.0 text (what the
option is named after; it adds ``# UNIT`` lines and a final ``# EOF``). The
classic parser skips every comment that is not HELP or TYPE, so with gauges
only either file parses there; the choice keeps the collector's file in its own
format should a counter or stateset ever be added (whose OpenMetrics TYPE lines
it would not read).
"""

from __future__ import annotations

import os
import socket
import tempfile
import urllib.error
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway
from prometheus_client import exposition as classic
from prometheus_client.openmetrics import exposition as openmetrics

from chaos.results import RunResult
from core.errors import HarnessError, SpecError
from reports.analysis import CELL_KEYS, ReportSummary, Verdict

__all__ = [
    "CELL_LABELS",
    "PUSH_JOB",
    "PUSH_TIMEOUT_S",
    "ReportMetrics",
    "check_pushgateway_url",
    "metrics_text",
    "push_metrics",
    "report_metrics",
    "verdict_label",
    "write_metrics_file",
]

CELL_LABELS = CELL_KEYS  # the report's cell, label for label
# The Pushgateway job every report pushes under; the grouping key adds the campaign,
# so tonight's push replaces last night's of the same campaign and no other.
PUSH_JOB = "rto-harness"
PUSH_TIMEOUT_S = 10.0
NO_CAMPAIGN = "none"  # rows of `rto run` / `chaos run` carry no campaign name
_OUTCOMES = ("recovered", "not_recovered", "aborted")


def verdict_label(verdict: Verdict) -> str:
    """The label value of a verdict: its ``--fail-on`` spelling ("no-recovery")."""
    return verdict.value.replace(" ", "-")


@dataclass(frozen=True)
class ReportMetrics:
    """The registry of one report and what a push groups it by."""

    registry: CollectorRegistry
    campaign: str  # the newest run's campaign, NO_CAMPAIGN without one
    started_at: float | None  # the newest run's start (s since the epoch); None: no runs


def _started(row: RunResult, results_path: str) -> float:
    try:
        when = datetime.fromisoformat(row.started_at)
    except ValueError:
        raise SpecError(
            f"{results_path}: run {row.run_id}: started_at {row.started_at!r} is not an "
            "ISO 8601 time (the runner writes e.g. 2026-12-01T10:00:00+00:00)"
        ) from None
    # The runner writes UTC with its offset; a row without one is read as UTC too.
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def report_metrics(summary: ReportSummary, runs: Sequence[RunResult]) -> ReportMetrics:
    """The summary's figures as gauges in a registry of their own.

    ``runs`` are the rows the summary was built from (``reports.analysis.load_runs``
    of its ``results_path``); only their start times and campaign names are read.
    """
    reg = CollectorRegistry(auto_describe=True)
    labels = list(CELL_LABELS)

    def gauge(name: str, doc: str, extra: Sequence[str] = (), unit: str = "") -> Gauge:
        return Gauge(name, doc, [*labels, *extra], unit=unit, registry=reg)

    seconds = {
        "median_s": gauge(
            "rto_harness_rto_median_seconds",
            "Median RTO of the cell's recovered runs: first failed probe to the first "
            "of the N good probes (0 for a run without outage); absent when none recovered.",
            unit="seconds",
        ),
        "p95_s": gauge(
            "rto_harness_rto_p95_seconds",
            "95th percentile of the cell's RTOs (recovered runs only).",
            unit="seconds",
        ),
        "min_s": gauge(
            "rto_harness_rto_min_seconds",
            "Shortest RTO of the cell's recovered runs.",
            unit="seconds",
        ),
        "max_s": gauge(
            "rto_harness_rto_max_seconds",
            "Longest RTO of the cell's recovered runs (what an RTO budget is held against).",
            unit="seconds",
        ),
        "detection_median_s": gauge(
            "rto_harness_detection_median_seconds",
            "Median time from injection to the control plane's first reaction; "
            "absent when no run saw one.",
            unit="seconds",
        ),
        "healer_action_median_s": gauge(
            "rto_harness_healer_action_median_seconds",
            "Median time from injection to the first healer action; absent without healers.",
            unit="seconds",
        ),
        "uncertainty_max_s": gauge(
            "rto_harness_rto_uncertainty_max_seconds",
            "Widest RTO uncertainty of the cell's recovered runs: the width of the interval "
            "each true RTO is known to lie in (outage start and end brackets of the "
            "prober); absent for rows that did not record it.",
            unit="seconds",
        ),
    }
    runs_g = gauge(
        "rto_harness_runs",
        "Runs of the cell by outcome: recovered (or no outage), not_recovered (still "
        "down at the deadline), aborted (an error, no measurement); sum without "
        "(outcome) is the cell's runs.",
        ["outcome"],
    )
    verdict_g = gauge(
        "rto_harness_verdict",
        "The cell's verdict against the handbook: 1 for its verdict, 0 for the others "
        "(holds, contradicted, informational, not-measured, no-recovery, scaled).",
        ["verdict"],
    )
    for cell in summary.cells:
        key = dict(zip(CELL_LABELS, cell.key, strict=True))
        for field, g in seconds.items():
            value = getattr(cell, field)
            if value is not None:
                g.labels(**key).set(value)
        counts = (cell.recovered, cell.not_recovered, cell.aborted)
        for outcome, n in zip(_OUTCOMES, counts, strict=True):
            runs_g.labels(**key, outcome=outcome).set(n)
        for v in Verdict:
            verdict_g.labels(**key, verdict=verdict_label(v)).set(1 if v is cell.verdict else 0)

    Gauge(
        "rto_harness_report_runs",
        "Runs in the results store the report was built from, aborted included.",
        registry=reg,
    ).set(summary.runs)
    newest: tuple[float, RunResult] | None = None
    for row in runs:
        t = _started(row, summary.results_path)
        if newest is None or t >= newest[0]:
            newest = (t, row)
    campaign = (newest[1].campaign or NO_CAMPAIGN) if newest else NO_CAMPAIGN
    if newest is not None:
        Gauge(
            "rto_harness_campaign_start_timestamp_seconds",
            "Start of the newest run in the store (seconds since the epoch), labelled "
            "with its campaign: time() minus this is how old the figures are.",
            ["campaign"],
            unit="seconds",
            registry=reg,
        ).labels(campaign=campaign).set(newest[0])
    return ReportMetrics(registry=reg, campaign=campaign, started_at=newest[0] if newest else None)


def metrics_text(registry: CollectorRegistry, path: Path) -> bytes:
    """Classic Prometheus text for a ``.prom`` file (the textfile collector's), else
    OpenMetrics (see the module docstring)."""
    if path.suffix == ".prom":
        return classic.generate_latest(registry)
    text: bytes = openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
    return text


def write_metrics_file(registry: CollectorRegistry, path: Path) -> None:
    """Write the metrics to ``path`` atomically: the collector may read at any moment,
    so the text goes to a temporary file in the same directory (same file system,
    so the rename is atomic) whose name does not end in ``.prom`` (the collector
    skips it), then replaces ``path``."""
    data = metrics_text(registry, path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes 0600; node-exporter runs as its own user and must read it.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise HarnessError(
            f"--openmetrics {path}: cannot write the metrics file: "
            f"{exc.strerror or exc} ({exc.filename or path})"
        ) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


_EXAMPLE = "e.g. http://127.0.0.1:9091"


def check_pushgateway_url(url: str) -> str:
    """The Pushgateway's base URL, checked before anything is built or pushed.

    ``http``/``https``, a host, an optional numeric port, and at most a path
    prefix (a gateway behind ``--web.route-prefix`` or a proxy); no credentials,
    query or fragment, and no ``/metrics`` in the path: prometheus-client appends
    ``/metrics/job/...`` itself, so a pasted push URL would push somewhere else.
    Returns the URL without a trailing slash; a bad one raises :class:`SpecError`.
    """

    def bad(why: str) -> SpecError:
        return SpecError(f"--pushgateway {url!r}: {why} ({_EXAMPLE}); nothing was pushed")

    if not url or url != url.strip() or any(c.isspace() or ord(c) < 32 for c in url):
        raise bad("the URL is empty or holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when not a number or out of range
    except ValueError as exc:
        raise bad(f"not a valid URL ({exc}); a port, if given, is a number 1-65535") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise bad("the URL must start with http:// or https:// and name the gateway's host")
    if parts.username is not None or parts.password is not None:
        raise bad("credentials in the URL are not supported")
    if not parts.hostname:
        raise bad("the URL names no host")
    # urlsplit's port takes int() of the text ("+80", " 80"); the URL must spell digits.
    after_host = parts.netloc.rpartition("]")[2] if "]" in parts.netloc else parts.netloc
    _, colon, port_text = after_host.partition(":")
    if colon and not (port_text.isascii() and port_text.isdigit() and port):
        raise bad("the port must be a number 1-65535")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise bad("the URL must have no query (?...) or fragment (#...)")
    segments = [s for s in parts.path.split("/") if s]
    if any(s in (".", "..") for s in segments) or "//" in parts.path:
        raise bad("the path must be a plain prefix, without '.', '..' or '//'")
    if "metrics" in segments:
        raise bad(
            "give the gateway's base URL, not a push path: /metrics/job/... is added "
            "by the harness (job rto-harness, grouped by campaign)"
        )
    return url.rstrip("/")


def push_metrics(metrics: ReportMetrics, gateway: str, *, timeout_s: float = PUSH_TIMEOUT_S) -> str:
    """PUT the registry to the Pushgateway under job ``rto-harness`` and the campaign.

    ``gateway`` is what :func:`check_pushgateway_url` returned. A PUT replaces the
    group's metrics, so a cell that disappeared from the store does not linger.
    Returns where it went, for people; a refused, unreachable or failing gateway raises
    :class:`HarnessError` in one paragraph.
    """
    grouping = {"campaign": metrics.campaign}
    try:
        push_to_gateway(
            gateway,
            job=PUSH_JOB,
            registry=metrics.registry,
            grouping_key=grouping,
            timeout=timeout_s,
        )
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace").strip().replace("\n", " ")[:300]
        raise HarnessError(
            f"--pushgateway {gateway}: the gateway refused the metrics: HTTP {exc.code} "
            f"{exc.reason}{': ' + body if body else ''}; is this URL a Pushgateway "
            "(and its route prefix, if any)? The report was written; nothing was pushed"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, socket.timeout | TimeoutError):
            why = f"no answer within {timeout_s:g} s"
        else:
            why = getattr(reason, "strerror", None) or str(reason)
        raise HarnessError(
            f"--pushgateway {gateway}: cannot reach the gateway ({why}); is a Pushgateway "
            "listening there? The report was written; nothing was pushed"
        ) from None
    return f"{gateway} (job {PUSH_JOB}, campaign {metrics.campaign})"
