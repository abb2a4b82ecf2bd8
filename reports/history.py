"""Nightly history: each cell's RTO across the last campaigns, and a regression rule.

Filled from the results store (rows of :class:`chaos.results.RunResult`, each
carrying its campaign's id and start, see ``chaos.provenance``); read by
``rto history`` (a rich table in the terminal; Markdown, HTML and a trend PNG
with ``--out``; ``--fail-on regression`` exits 1 listing the regressed cells)
and by ``reports.build``, which adds a history section to ``rto report``'s page
when the store holds two campaigns or more. Cells are the report's
(``reports.analysis.CELL_KEYS``: fault, variant, kind, backend, profile,
healers), so a cell here is the cell of ``rto report``.

A *campaign* is one invocation (``rto campaign`` or ``rto run``): its rows share
``campaign_id``. Rows written before ids existed count as one campaign per
campaign name. Each cell keeps its last N campaigns (``--last``, default 10)
that measured it, oldest first; the newest is judged against the others.

The rule (:data:`RULE_TEXT`, printed with every output), for each cell:

1. *Baseline*: the RTOs of every recovered run of the previous campaigns,
   pooled (a no-outage run counts as RTO 0, as in the report). Its median M and
   its robust spread S = 1.4826 x MAD (the median absolute deviation, scaled to
   a standard deviation for normal noise; one wild run moves neither).
2. *Resolution floor*: S is raised to at least the measurement resolution R
   of an RTO, two probe intervals (each of its two edges is placed within one
   interval; the interval is the recorder's ``interval_ms``, in each
   timeline's ``recorder_started`` MARK, 20 ms when a row does not say), so
   identical baselines (S = 0) do not turn a probe or two of difference into a
   regression.
3. *Minimum history*: at least 2 previous campaigns with recovered runs and 4
   such runs in all; below that the cell says "not enough history" and is not
   judged.
4. *Verdict* on the newest campaign's runs: "no longer recovers" when one of
   them did not recover within its deadline while every finished run of the
   previous campaigns did; else "regressed" when their median m exceeds
   M + k x max(S, R) with k = 3; "improved" when m < M - k x max(S, R); else
   "ok". A cell whose newest runs all aborted is "not measured" (aborts are
   the report's business, ``rto report --fail-on aborted``).

A cell is judged only by the newest campaign of its campaign name: a cell the
newest ``nightly`` did not measure keeps its last verdict on screen but is
"not in the newest campaign" and does not fail CI.
"""

from __future__ import annotations

import base64
import html
import io
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never try to open a display

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field
from rich.markup import escape
from rich.table import Table

from chaos.results import RunResult, RunStatus
from core.errors import HarnessError
from core.timeline import EventKind
from reports.analysis import CELL_KEYS, Cell, fmt_s

__all__ = [
    "DEFAULT_LAST",
    "DEFAULT_RESOLUTION_S",
    "RULE_TEXT",
    "CampaignPoint",
    "CellHistory",
    "HistoryRule",
    "HistorySummary",
    "HistoryVerdict",
    "Judgement",
    "campaign_count",
    "history_html",
    "history_markdown",
    "history_table",
    "judge",
    "plot_history",
    "probe_interval_s",
    "regressed_cells",
    "summarise_history",
    "write_history",
]

DEFAULT_LAST = 10
DEFAULT_RESOLUTION_S = 0.020  # chaos.spec.RecoverySpec's default probe interval
MAD_TO_SIGMA = 1.4826


class HistoryRule(BaseModel):
    """The regression rule's constants (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    k: float = Field(default=3.0, gt=0)
    min_campaigns: int = Field(default=2, ge=1)
    min_runs: int = Field(default=4, ge=1)

    def describe(self) -> str:
        return (
            f"newest campaign's median RTO vs the previous campaigns' runs: regressed when "
            f"above median + {self.k:g} x max(1.4826 x MAD, 2 probe intervals); "
            f"'no longer recovers' when a newest run did not recover and every previous "
            f"one did; judged with at least {self.min_campaigns} previous campaigns and "
            f"{self.min_runs} recovered runs, else 'not enough history'"
        )


RULE_TEXT = HistoryRule().describe()


class HistoryVerdict(StrEnum):
    OK = "ok"
    IMPROVED = "improved"
    REGRESSED = "regressed"
    NO_LONGER_RECOVERS = "no longer recovers"
    NOT_ENOUGH_HISTORY = "not enough history"
    NOT_MEASURED = "not measured"  # the newest campaign's runs all aborted
    NOT_CURRENT = "not in the newest campaign"

    @property
    def fails(self) -> bool:
        """What ``rto history --fail-on regression`` exits 1 for."""
        return self in (HistoryVerdict.REGRESSED, HistoryVerdict.NO_LONGER_RECOVERS)


_COLOURS = {
    HistoryVerdict.OK: "green",
    HistoryVerdict.IMPROVED: "cyan",
    HistoryVerdict.REGRESSED: "red",
    HistoryVerdict.NO_LONGER_RECOVERS: "red",
    HistoryVerdict.NOT_ENOUGH_HISTORY: "yellow",
    HistoryVerdict.NOT_MEASURED: "yellow",
    HistoryVerdict.NOT_CURRENT: "dim",
}
_HTML_COLOURS = {
    HistoryVerdict.OK: "#c8e6c9",
    HistoryVerdict.IMPROVED: "#d6eaf8",
    HistoryVerdict.REGRESSED: "#ffcdd2",
    HistoryVerdict.NO_LONGER_RECOVERS: "#ef9a9a",
    HistoryVerdict.NOT_ENOUGH_HISTORY: "#fff3c4",
    HistoryVerdict.NOT_MEASURED: "#eeeeee",
    HistoryVerdict.NOT_CURRENT: "#eeeeee",
}


class CampaignPoint(BaseModel):
    """One campaign's runs of one cell."""

    model_config = ConfigDict(frozen=True)

    campaign_id: str
    name: str  # the campaign's name; "rto run" for a run invocation
    started_at: str  # the campaign's wall-clock start, ISO 8601 UTC
    n: int  # runs, aborted included
    not_recovered: int
    aborted: int
    rtos: tuple[float, ...]  # RTO of each recovered run (no outage: 0)
    resolution_s: float  # the coarsest probe interval of these runs
    git_commit: str | None = None
    harness_version: str | None = None
    host_cores: int | None = None
    accelerator: str | None = None  # the VMI rows' own, else the host's

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.rtos) if self.rtos else None

    @property
    def finished(self) -> int:
        return self.n - self.aborted

    @property
    def label(self) -> str:
        return f"{self.name} {self.started_at[:16].replace('T', ' ')}"


class CellHistory(Cell):
    """One cell's campaigns (oldest first) and the rule's verdict on the newest."""

    points: tuple[CampaignPoint, ...]
    verdict: HistoryVerdict
    detail: str
    baseline_median_s: float | None = None
    spread_s: float | None = None  # max(1.4826 x MAD, resolution)
    threshold_s: float | None = None  # baseline median + k x spread


class HistorySummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    generated_at: str
    campaigns: int  # distinct campaigns in the store
    last: int
    rule: HistoryRule
    cells: tuple[CellHistory, ...]

    @property
    def rule_text(self) -> str:
        return self.rule.describe()


def _s(value: float | None) -> str:
    """Seconds with the precision a history needs: tens of ms below 10 s."""
    if value is not None and 1 <= value < 10:
        return f"{value:.2f} s"
    return fmt_s(value)


# --------------------------------------------------------------------- grouping


def _campaign_of(r: RunResult) -> tuple[str, str]:
    """(id, name): rows from before campaign ids count as one campaign per name."""
    name = r.campaign or "rto run"
    return (r.campaign_id or f"legacy:{name}", name)


def _rto_of(r: RunResult) -> float | None:
    """The report's convention (reports.analysis.runs_frame): no outage is RTO 0."""
    if r.status is RunStatus.NO_OUTAGE:
        return 0.0 if r.rto_s is None else r.rto_s
    if r.status is RunStatus.RECOVERED:
        return r.rto_s
    return None


def probe_interval_s(r: RunResult) -> float | None:
    """The probe interval the run used, from its recorder_started MARK."""
    for e in r.timeline:
        if e.kind is EventKind.MARK and e.data.get("event") == "recorder_started":
            try:
                return float(e.data["interval_ms"]) / 1000.0
            except (KeyError, ValueError):
                return None
    return None


@dataclass
class _Campaign:
    id: str
    name: str
    started_at: str


def _campaigns(rows: Iterable[RunResult]) -> dict[str, _Campaign]:
    found: dict[str, _Campaign] = {}
    for r in rows:
        cid, name = _campaign_of(r)
        start = r.campaign_started_at or r.started_at
        c = found.get(cid)
        if c is None:
            found[cid] = _Campaign(cid, name, start)
        elif start < c.started_at:
            c.started_at = start
    return found


def campaign_count(rows: Iterable[RunResult]) -> int:
    """How many campaigns the rows come from (``reports.build`` shows history from 2)."""
    return len(_campaigns(rows))


def _point(c: _Campaign, rows: Sequence[RunResult]) -> CampaignPoint:
    rtos = tuple(v for v in (_rto_of(r) for r in rows) if v is not None)
    intervals = [v for v in (probe_interval_s(r) for r in rows) if v is not None]
    first = rows[0]
    accelerators = sorted({a for a in (r.accelerator or r.host_accelerator for r in rows) if a})
    return CampaignPoint(
        campaign_id=c.id,
        name=c.name,
        started_at=c.started_at,
        n=len(rows),
        not_recovered=sum(r.status is RunStatus.NOT_RECOVERED for r in rows),
        aborted=sum(r.status is RunStatus.ABORTED for r in rows),
        rtos=rtos,
        resolution_s=max(intervals) if intervals else DEFAULT_RESOLUTION_S,
        git_commit=first.git_commit,
        harness_version=first.harness_version,
        host_cores=first.host_cores,
        accelerator="+".join(accelerators) or None,
    )


# ------------------------------------------------------------------------- rule


@dataclass(frozen=True)
class Judgement:
    verdict: HistoryVerdict
    detail: str
    baseline_median_s: float | None = None
    spread_s: float | None = None
    threshold_s: float | None = None


def judge(
    newest: CampaignPoint, previous: Sequence[CampaignPoint], rule: HistoryRule | None = None
) -> Judgement:
    """The rule of the module docstring: ``newest`` against ``previous``."""
    rule = rule or HistoryRule()
    if newest.finished == 0:
        return Judgement(HistoryVerdict.NOT_MEASURED, f"all {newest.n} newest run(s) aborted")
    with_rto = [p for p in previous if p.rtos]
    baseline = [v for p in with_rto for v in p.rtos]
    if len(with_rto) < rule.min_campaigns or len(baseline) < rule.min_runs:
        return Judgement(
            HistoryVerdict.NOT_ENOUGH_HISTORY,
            f"{len(with_rto)} previous campaign(s) with {len(baseline)} recovered run(s); "
            f"the rule needs {rule.min_campaigns} and {rule.min_runs}",
        )
    m0 = statistics.median(baseline)
    mad = statistics.median(abs(v - m0) for v in baseline)
    # An RTO is the gap between two probe-placed edges: 2 intervals of resolution.
    resolution = 2 * max(p.resolution_s for p in (*with_rto, newest))
    spread = max(MAD_TO_SIGMA * mad, resolution)
    threshold = m0 + rule.k * spread
    base = {"baseline_median_s": m0, "spread_s": spread, "threshold_s": threshold}
    against = (
        f"previous {len(with_rto)} campaign(s), {len(baseline)} runs: median {_s(m0)}, "
        f"spread {_s(spread)} (1.4826 x MAD {_s(MAD_TO_SIGMA * mad)}, 2 probe intervals "
        f"{_s(resolution)}), threshold {_s(threshold)}"
    )
    previous_failed = sum(p.not_recovered for p in previous)
    if newest.not_recovered and not previous_failed:
        return Judgement(
            HistoryVerdict.NO_LONGER_RECOVERS,
            f"{newest.not_recovered} of {newest.finished} newest run(s) did not recover; "
            f"every previous run did ({against})",
            **base,
        )
    m = newest.median_s
    if m is None:
        return Judgement(
            HistoryVerdict.NOT_MEASURED, f"no newest run recovered ({against})", **base
        )
    now = f"newest median {_s(m)} of {len(newest.rtos)} run(s)"
    if m > threshold:
        return Judgement(HistoryVerdict.REGRESSED, f"{now} > {against}", **base)
    if m < m0 - rule.k * spread:
        return Judgement(HistoryVerdict.IMPROVED, f"{now}, below the baseline: {against}", **base)
    return Judgement(HistoryVerdict.OK, f"{now}, within: {against}", **base)


def summarise_history(
    rows: Sequence[RunResult], last: int = DEFAULT_LAST, rule: HistoryRule | None = None
) -> HistorySummary:
    """Every cell's last ``last`` campaigns and the rule's verdict on its newest."""
    rule = rule or HistoryRule()
    campaigns = _campaigns(rows)
    ordered = sorted(campaigns.values(), key=lambda c: (c.started_at, c.id))
    newest_of_name = {c.name: c.id for c in ordered}  # later ones overwrite
    by_cell: dict[tuple[str, ...], dict[str, list[RunResult]]] = {}
    for r in rows:
        by_cell.setdefault(Cell.of(r).key, {}).setdefault(_campaign_of(r)[0], []).append(r)
    cells = []
    for key in sorted(by_cell):
        per_campaign = by_cell[key]
        chosen = [c for c in ordered if c.id in per_campaign][-last:]
        points = tuple(_point(c, per_campaign[c.id]) for c in chosen)
        j = judge(points[-1], points[:-1], rule)
        verdict, detail = j.verdict, j.detail
        newest = chosen[-1]
        if newest_of_name[newest.name] != newest.id:
            verdict = HistoryVerdict.NOT_CURRENT
            detail = (
                f"last measured by {newest.name} of {newest.started_at}, not by the newest "
                f"{newest.name} campaign (then: {j.verdict.value}: {j.detail})"
            )
        cells.append(
            CellHistory(
                **dict(zip(CELL_KEYS, key, strict=True)),
                points=points,
                verdict=verdict,
                detail=detail,
                baseline_median_s=j.baseline_median_s,
                spread_s=j.spread_s,
                threshold_s=j.threshold_s,
            )
        )
    return HistorySummary(
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        campaigns=len(campaigns),
        last=last,
        rule=rule,
        cells=tuple(cells),
    )


def regressed_cells(summary: HistorySummary) -> list[CellHistory]:
    """The cells ``--fail-on regression`` fails: regressed or no longer recovering."""
    return [c for c in summary.cells if c.verdict.fails]


# ---------------------------------------------------------------------- output


def _point_text(p: CampaignPoint) -> str:
    text = _s(p.median_s)
    if p.not_recovered:
        text += f" ({p.not_recovered} not rec.)"
    if p.aborted:
        text += f" ({p.aborted} aborted)"
    return text


def _columns(summary: HistorySummary) -> int:
    return max((len(c.points) for c in summary.cells), default=0)


def history_table(summary: HistorySummary) -> Table:
    """The terminal table: one row per cell, its medians newest last, the verdict.

    The rule goes beside it (``summary.rule_text``): a caption would wrap it
    to the table's width."""
    width = _columns(summary)
    table = Table(title=f"RTO median per campaign (last {summary.last}, newest last)")
    # overflow="fold": a narrow terminal wraps a value, never cuts it short.
    first_word = max((len(c.name.split(" ")[0]) for c in summary.cells), default=4)
    table.add_column("cell", overflow="fold", min_width=min(first_word, 20))
    for i in range(width):
        name = "newest" if i == width - 1 else f"-{width - 1 - i}"
        table.add_column(name, justify="right", overflow="fold")
    table.add_column("threshold", justify="right", overflow="fold")
    table.add_column("verdict", overflow="fold", min_width=9)
    for c in summary.cells:
        medians = [""] * (width - len(c.points)) + [_point_text(p) for p in c.points]
        colour = _COLOURS[c.verdict]
        table.add_row(
            escape(c.name),
            *medians,
            _s(c.threshold_s),
            f"[{colour}]{c.verdict.value}[/{colour}]",
        )
    return table


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def history_markdown(summary: HistorySummary) -> str:
    lines = [
        "# RTO history",
        "",
        f"Generated {summary.generated_at}: {summary.campaigns} campaign(s) in the store, "
        f"the last {summary.last} per cell shown (median RTO per campaign, oldest first).",
        "",
        f"Rule: {summary.rule_text}.",
        "",
        "| cell | campaigns (median RTO, oldest first) | threshold | verdict | why |",
        "|---|---|---|---|---|",
    ]
    for c in summary.cells:
        trend = " → ".join(_point_text(p) for p in c.points)
        lines.append(
            f"| {_md(c.name)} | {_md(trend)} | {_s(c.threshold_s)} | "
            f"**{c.verdict.value}** | {_md(c.detail)} |"
        )
    lines += ["", "| campaign | started | commit | version | cores | accelerator |"]
    lines.append("|---|---|---|---|---|---|")
    for p in _all_points(summary):
        lines.append(
            f"| {_md(p.name)} `{p.campaign_id[:12]}` | {p.started_at} | "
            f"{(p.git_commit or '-')[:12]} | {p.harness_version or '-'} | "
            f"{p.host_cores or '-'} | {p.accelerator or '-'} |"
        )
    return "\n".join(lines) + "\n"


def _all_points(summary: HistorySummary) -> list[CampaignPoint]:
    seen: dict[str, CampaignPoint] = {}
    for c in summary.cells:
        for p in c.points:
            seen.setdefault(p.campaign_id, p)
    return sorted(seen.values(), key=lambda p: p.started_at)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def history_html(summary: HistorySummary, png: bytes | None = None) -> str:
    """An HTML fragment (a section of ``rto report``'s page, or a page's body)."""
    width = _columns(summary)
    head = "".join(
        f"<th>{'newest' if i == width - 1 else f'-{width - 1 - i}'}</th>" for i in range(width)
    )
    rows = []
    for c in summary.cells:
        pad = "<td></td>" * (width - len(c.points))
        tds = "".join(f'<td title="{_e(p.label)}">{_e(_point_text(p))}</td>' for p in c.points)
        rows.append(
            f"<tr><td>{_e(c.name)}</td>{pad}{tds}<td>{_e(_s(c.threshold_s))}</td>"
            f'<td style="background:{_HTML_COLOURS[c.verdict]}" title="{_e(c.detail)}">'
            f"{_e(c.verdict.value)}</td></tr>"
        )
    img = ""
    if png:
        data = base64.b64encode(png).decode()
        img = f'<img alt="RTO trend per cell" src="data:image/png;base64,{data}">'
    return (
        f"<p>{summary.campaigns} campaigns in the store; each cell's last {summary.last}, "
        f"median RTO per campaign, newest last. Rule: {_e(summary.rule_text)}. Hover a "
        "verdict for the figures.</p>"
        f"<table><tr><th>cell</th>{head}<th>threshold</th><th>verdict</th></tr>"
        + "".join(rows)
        + f"</table>{img}"
    )


def plot_history(summary: HistorySummary, columns: int = 3) -> bytes:
    """One faceted PNG: per cell each campaign's runs (dots), medians (line), threshold."""
    cells = [c for c in summary.cells if c.points]
    n = max(1, len(cells))
    cols = min(columns, n)
    nrows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 2.8 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax in axes.flat[len(cells) :]:
        ax.set_visible(False)
    for ax, c in zip(axes.flat, cells, strict=False):
        xs = range(len(c.points))
        for x, p in zip(xs, c.points, strict=True):
            ax.scatter([x] * len(p.rtos), p.rtos, s=10, alpha=0.6, color="#1f77b4")
            if p.not_recovered:
                ax.annotate(f"{p.not_recovered}✗", (x, 0), color="#c62828", fontsize=8)
        medians = [p.median_s if p.median_s is not None else math.nan for p in c.points]
        ax.plot(list(xs), medians, color="#1f77b4", marker="o", markersize=3)
        if c.threshold_s is not None:
            ax.axhline(c.threshold_s, color="#c62828", linestyle="--", linewidth=1)
        ax.set_title(f"{c.name}\n{c.verdict.value}", fontsize=8)
        ax.set_xticks(list(xs), [p.started_at[5:16].replace("T", " ") for p in c.points])
        ax.tick_params(axis="x", labelrotation=45, labelsize=6)
        ax.set_ylabel("RTO (s)", fontsize=7)
        ax.set_ylim(bottom=0)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def write_history(summary: HistorySummary, out_dir: Path) -> list[Path]:
    """``out_dir``/history.md, history.html and history.png; the paths written."""
    png = plot_history(summary)
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<title>RTO history</title><style>body{font-family:sans-serif;margin:1.5em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;"
        "font-size:90%}</style></head><body><h1>RTO history</h1>"
        f"{history_html(summary, png)}</body></html>\n"
    )
    outputs: dict[str, str | bytes] = {
        "history.md": history_markdown(summary),
        "history.html": page,
        "history.png": png,
    }
    written = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, content in outputs.items():
            path = out_dir / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
            written.append(path)
    except OSError as exc:
        raise HarnessError(
            f"cannot write the history into {out_dir}: {exc.strerror} ({exc.filename})"
        ) from exc
    return written
