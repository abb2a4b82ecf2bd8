"""The game-day report: what happened in the room, as HTML and Markdown.

Filled from a :class:`chaos.gameday.record.GameDayRecord` (``gameday.json``,
written by ``chaos.gameday.session`` as the game day runs) and the handbook's
expectations; read by the people who ran the game day and whoever reviews it
afterwards. One page holds: the header (runbook, backend, outcome, journal),
the steps with each run's RTO next to the handbook's claim and the verdict
``rto report`` would give that cell, ONE timeline plot of the whole game day
(steps, notes, faults, healer actions, outages, the abort), the full event
table, and what was reverted when. The HTML page embeds its plot (base64 PNG)
and fetches nothing; the Markdown file links the PNG written beside it.

Runbook texts and notes are typed by people: every user text is escaped, in
HTML and in Markdown alike.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never try to open a display

from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MultipleLocator

from chaos.gameday.record import (
    GameDayEventKind,
    GameDayOutcome,
    GameDayRecord,
    StepRecord,
    StepStatus,
)
from chaos.results import RunResult
from core.errors import HarnessError
from core.timeline import EventKind
from reports.analysis import CellSummary, fmt_s, summarise
from reports.expectations import Expectations, load_expectations
from reports.plots import KIND_COLOURS
from reports.render import VERDICT_COLOURS

__all__ = [
    "GAMEDAY_HTML",
    "GAMEDAY_MD",
    "GAMEDAY_PNG",
    "FaultSpan",
    "fault_spans",
    "gameday_figure",
    "judge_steps",
    "outages",
    "render_gameday_html",
    "render_gameday_markdown",
    "write_gameday_report",
]

GAMEDAY_HTML = "gameday.html"
GAMEDAY_MD = "gameday.md"
GAMEDAY_PNG = "gameday-timeline.png"

# --------------------------------------------------------------------- the facts


def judge_steps(record: GameDayRecord, expectations: Expectations) -> dict[int, CellSummary]:
    """The cell ``rto report`` would give each run step's row, by step index.

    Each step is judged on its own row, so two runs of one cell in a game day
    get a verdict each. A same-behaviour claim compares pod with VMI, so the
    game day's rows of the other kind go in beside it (as ``rto report`` over
    this game day's rows would see them); steps without a row are absent.
    """
    rows = {s.index: s.result for s in record.steps if s.result is not None}
    judged: dict[int, CellSummary] = {}
    for index, row in rows.items():
        others = [r for i, r in rows.items() if i != index and r.kind != row.kind]
        cells = summarise([row, *others], expectations)
        cell = next((c for c in cells if row.run_id in c.run_ids), None)
        if cell is not None:
            judged[index] = cell
    return judged


def _end_t(record: GameDayRecord) -> float:
    """The last moment the record knows of, in game-day seconds (0 for an empty one)."""
    times = [e.t for e in record.events] + [r.t for r in record.reverts]
    times += [t for s in record.steps for t in (s.started_t, s.ended_t) if t is not None]
    return max(times, default=0.0)


def outages(record: GameDayRecord) -> list[tuple[float, float, bool]]:
    """Probe outages as (start, end, recovered), in game-day seconds.

    Probe events are transitions: a failure opens an outage, the next success
    in the same step closes it. An outage still open when its step ended did
    not recover while the step ran: it ends at the step's end.
    """
    ends = {s.index: s.ended_t for s in record.steps}
    spans: list[tuple[float, float, bool]] = []
    open_at: dict[int | None, float] = {}
    for ev in sorted(record.events, key=lambda e: e.t):
        if ev.kind == EventKind.PROBE_FAIL and ev.step not in open_at:
            open_at[ev.step] = ev.t
        elif ev.kind == EventKind.PROBE_OK and ev.step in open_at:
            spans.append((open_at.pop(ev.step), ev.t, True))
    for step, start in open_at.items():
        end = ends.get(step) if step is not None else None
        spans.append((start, end if end is not None else _end_t(record), False))
    return sorted(spans)


@dataclass(frozen=True)
class FaultSpan:
    """One fault from its injection to its revert (``end`` None: no revert recorded)."""

    fault_id: str
    fault: str
    message: str
    step: int | None
    start: float
    end: float | None
    by: str  # "run" | "abort" | "" (no revert recorded)


def fault_spans(record: GameDayRecord) -> list[FaultSpan]:
    """Every fault injected, paired with its revert by fault id.

    The revert is the record's ``reverts`` entry, else the run's own
    ``fault_reverted`` event (a record written before the revert list was).
    """
    reverts = {r.fault_id: r for r in record.reverts}
    reverted_events = {
        e.data.get("fault_id"): e for e in record.events if e.kind == EventKind.FAULT_REVERTED
    }
    spans = []
    for ev in record.events:
        if ev.kind != EventKind.FAULT_INJECTED:
            continue
        fid = ev.data.get("fault_id", "")
        rev, rev_ev = reverts.get(fid), reverted_events.get(fid)
        end = rev.t if rev is not None else rev_ev.t if rev_ev is not None else None
        by = rev.by if rev is not None else "run" if rev_ev is not None else ""
        spans.append(FaultSpan(fid, ev.source, ev.message, ev.step, ev.t, end, by))
    return sorted(spans, key=lambda s: s.start)


def _stop_lines(record: GameDayRecord) -> list[str]:
    """How an aborted or failed game day stopped, and what its journal replay reverted."""
    aborts = [e for e in record.events if e.kind == GameDayEventKind.ABORT]
    failed = next((s for s in record.steps if s.status is StepStatus.FAILED), None)
    lines: list[str] = []
    for ev in aborts:
        step = next((s for s in record.steps if s.index == ev.step), None)
        during = f" during step #{step.index} ({step.kind}: {step.title})" if step else ""
        lines.append(f"Abort at {_gd(ev.t)} ({_clock(ev.at)}){during}: {ev.message or '-'}.")
    if failed is not None:
        lines.append(
            f"Step #{failed.index} ({failed.kind}: {failed.title}) failed: {failed.error}."
        )
    if not lines:
        lines.append(f"Outcome {record.outcome}; the record holds no abort event.")
    # by="abort": reverted by the journal replay that ends an abort or a failure.
    by_abort = [r for r in record.reverts if r.by == "abort"]
    who = "The abort" if aborts else "The journal replay after the failure"
    what = "; ".join(f"{r.fault} on {r.target} (id {r.fault_id}) at {_gd(r.t)}" for r in by_abort)
    lines.append(
        f"{who} reverted {len(by_abort)} fault(s): {what}."
        if by_abort
        else f"{who} reverted nothing: no fault was active by then."
    )
    return lines


def _abort_lines(record: GameDayRecord) -> list[str]:
    """What the abort did and what was left, in sentences (plain text, unescaped)."""
    stopped = record.outcome in (GameDayOutcome.ABORTED, GameDayOutcome.FAILED)
    lines = _stop_lines(record) if stopped else []
    spans = fault_spans(record)
    left = [s for s in spans if s.end is None]
    if left:
        what = "; ".join(f"{s.fault} (id {s.fault_id})" for s in left)
        lines.append(
            f"Not reverted according to this record: {what}. Run rto revert with the "
            f"journal {record.journal or '(not recorded)'} to clear what is still pending."
        )
    elif spans:
        lines.append("Every fault injected has a revert on record.")
    if record.pending_after:
        lines.append(
            f"The journal {record.journal or '(not recorded)'} still held "
            f"{len(record.pending_after)} pending fault(s) at the end "
            f"({', '.join(record.pending_after)}): run rto revert to clear them."
        )
    elif record.pending_after is not None and (lines or record.reverts):
        lines.append(
            f"The journal {record.journal or '(not recorded)'} was read back at the end: "
            "nothing pending."
        )
    elif lines or record.reverts:
        # Not read back (an older record): say so instead of claiming it was clean.
        lines.append(
            "This record does not say whether the journal had anything pending afterwards; "
            "rto revert lists and clears whatever is."
        )
    return lines


# ----------------------------------------------------------------------- formats


def _gd(t: float) -> str:
    """Game-day seconds as m:ss.ss (one format for 30 s and 30 min)."""
    sign, t = ("-", -t) if t < 0 else ("", t)
    minutes, seconds = divmod(t, 60)
    return f"{sign}{int(minutes)}:{seconds:05.2f}"


def _clock(at: str | None) -> str:
    """The time of day of an ISO 8601 wall clock (HH:MM:SS.mmm), or the text as given."""
    if not at:
        return "-"
    try:
        return datetime.fromisoformat(at).strftime("%H:%M:%S.%f")[:-3]
    except ValueError:
        return at


def _wall(record: GameDayRecord, t: float | None) -> str:
    """The wall clock at game-day second ``t``, from the record's start."""
    if t is None:
        return "-"
    try:
        start = datetime.fromisoformat(record.started_at)
    except ValueError:
        return "-"
    return (start + timedelta(seconds=t)).strftime("%H:%M:%S.%f")[:-3]


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


# Characters Markdown (CommonMark, GitHub) reads as markup inside a table cell
# or after a list marker; "#", "+" and "-" are markup only at a line's start,
# "(" only after "]", which user text never reaches.
_MD_SPECIAL = "\\`*_[]|~"
_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _md(text: object) -> str:
    """One line of user text, inert in Markdown: no markup, no raw HTML, no line breaks."""
    out = []
    for ch in " ".join(str(text).split()):
        if ch in _MD_ENTITIES:
            out.append(_MD_ENTITIES[ch])
        elif ch in _MD_SPECIAL:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


# ------------------------------------------------------------------------ tables


@dataclass(frozen=True)
class _Td:
    """A table cell: its text and, in HTML, a background."""

    text: str
    colour: str = ""


_Row = Sequence[_Td | str]


def _html_table(headers: Sequence[str], rows: Sequence[_Row], empty: str) -> str:
    """An HTML table, every cell escaped; ``empty`` when there are no rows."""
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        tds = []
        for cell in row:
            td = cell if isinstance(cell, _Td) else _Td(cell)
            style = f' style="background:{td.colour}"' if td.colour else ""
            tds.append(f"<td{style}>{_e(td.text)}</td>")
        body.append(f"<tr>{''.join(tds)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _md_table(headers: Sequence[str], rows: Sequence[_Row], empty: str) -> list[str]:
    """A Markdown table, every cell escaped; ``empty`` when there are no rows."""
    if not rows:
        return [f"_{_md(empty)}_"]
    out = ["| " + " | ".join(_md(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        texts = [c.text if isinstance(c, _Td) else c for c in row]
        out.append("| " + " | ".join(_md(t) or " " for t in texts) + " |")
    return out


def _header_rows(record: GameDayRecord) -> list[tuple[str, str]]:
    """(field, value) pairs of the report's header."""
    ran = [s for s in record.steps if s.started_t is not None]
    outcome = record.outcome.value if record.outcome else "in progress (record written mid-run)"
    return [
        ("runbook", record.runbook),
        ("backend", record.backend),
        ("profile", record.profile or "-"),
        ("started", record.started_at),
        ("ended", record.ended_at or "-"),
        ("outcome", outcome),
        ("mode", "rehearsal (--yes: checkpoints skipped)" if record.rehearsal else "live"),
        ("steps", f"{len(ran)} of {len(record.steps)} run, {_gd(_end_t(record))} on its clock"),
        ("journal", record.journal or "(not recorded)"),
    ]


_STEP_HEADERS = (
    "#",
    "kind",
    "title",
    "status",
    "start",
    "wall clock",
    "duration",
    "RTO",
    "detection",
    "run status",
    "handbook claim",
    "verdict",
)


_STATUS_COLOURS = {StepStatus.ABORTED: "#ffcdd2", StepStatus.FAILED: "#ef9a9a"}


def _step_row(
    record: GameDayRecord, step: StepRecord, cell: CellSummary | None, exp: Expectations
) -> list[_Td | str]:
    """One steps-table row; run steps carry their figures, claim and verdict."""
    status = _Td(
        step.status.value + (f": {step.error}" if step.error else ""),
        _STATUS_COLOURS.get(step.status, ""),
    )
    duration = (
        fmt_s(step.ended_t - step.started_t)
        if step.started_t is not None and step.ended_t is not None
        else "-"
    )
    started = _gd(step.started_t) if step.started_t is not None else "-"
    row: list[_Td | str] = [str(step.index), step.kind, step.title, status, started]
    row += [_wall(record, step.started_t), duration]
    run: RunResult | None = step.result
    if run is None:
        return [*row, "", "", "", "", ""]
    documented = exp.get(run.fault, run.kind)
    claim = f"{documented.mechanism}: {documented.claim_text}" if documented else "(no claim)"
    verdict: _Td | str = "-"
    if cell is not None:
        verdict = _Td(f"{cell.verdict.label}: {cell.detail}", VERDICT_COLOURS[cell.verdict])
    cell_name = f"{run.fault}{f'[{run.variant}]' if run.variant else ''}/{run.kind}"
    return [
        *row,
        fmt_s(run.rto_s),
        fmt_s(run.detection_s),
        run.status.value.replace("_", " "),
        f"{cell_name}: {claim}",
        verdict,
    ]


def _steps_rows(record: GameDayRecord, exp: Expectations) -> list[_Row]:
    """The steps table, in runbook order."""
    cells = judge_steps(record, exp)
    return [
        _step_row(record, step, cells.get(step.index), exp)
        for step in sorted(record.steps, key=lambda s: s.index)
    ]


_EVENT_HEADERS = ("t", "wall clock", "step", "kind", "source", "message")


def _event_rows(record: GameDayRecord) -> list[_Row]:
    """Every event of the game day, in time order."""
    return [
        [
            _gd(e.t),
            _clock(e.at),
            "-" if e.step is None else f"#{e.step}",
            e.kind,
            e.source,
            e.message,
        ]
        for e in sorted(record.events, key=lambda e: e.t)
    ]


_REVERT_HEADERS = ("t", "wall clock", "fault", "target", "id", "reverted by")


def _revert_rows(record: GameDayRecord) -> list[_Row]:
    """The reverts list, in time order."""
    return [
        [_gd(r.t), _clock(r.at), r.fault, r.target, r.fault_id, f"the {r.by}"]
        for r in sorted(record.reverts, key=lambda r: r.t)
    ]


# ------------------------------------------------------------------------ the plot

_LANES = {"steps": 5.0, "probe": 4.0, "faults": 3.0, "healers": 2.0, "control": 1.0, "notes": 0.0}
_STEP_COLOURS = {
    "say": "#bdc3c7",
    "checkpoint": "#f7dc6f",
    "observe": "#a9dfbf",
    "note": "#d7bde2",
    "run": "#5dade2",
}
_FIG_W_IN, _AXES_PX = 12.0, 1000.0  # the axes span about 1000 px at 100 dpi
_CHAR_PX = 6.0  # one character at 7 pt


def _plain(text: str) -> str:
    """User text for matplotlib: a "$" is a dollar, never the start of mathtext
    (a note reading "$\\frac{$" would otherwise fail the whole plot)."""
    return text.replace("$", r"\$")


def _tick_interval(end: float) -> float:
    """A round tick spacing giving at most a dozen ticks over ``end`` seconds."""
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if end / step <= 12:
            return float(step)
    return math.ceil(end / 12 / 3600) * 3600.0


def _time_axis(ax: Axes, end: float) -> None:
    """Seconds for short game days, m:ss once they pass two minutes."""
    ax.set_xlim(0, end)
    ax.xaxis.set_major_locator(MultipleLocator(_tick_interval(end)))
    if end >= 120:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: _gd(x)[:-3]))
        ax.set_xlabel("game-day time (m:ss)")
    else:
        ax.set_xlabel("seconds since the game day started")


def _step_label(step: StepRecord) -> str:
    run = step.result
    what = f" {run.fault}/{run.kind}" if run is not None else ""
    return f"#{step.index} {step.kind}{what}"


def _draw_steps(ax: Axes, record: GameDayRecord, end: float) -> None:
    """Step bands, coloured by kind, labelled inside when wide enough, else above.

    Instant steps (a ``say`` under ``--yes``) get a minimum width so they show;
    their labels merge into "#2-5" when they would collide.
    """
    y, per_char = _LANES["steps"], end / _AXES_PX * _CHAR_PX
    ran = [s for s in sorted(record.steps, key=lambda s: s.index) if s.started_t is not None]
    above: list[tuple[float, int]] = []
    for s in ran:
        start = s.started_t or 0.0
        width = max((s.ended_t if s.ended_t is not None else end) - start, end * 0.003)
        colour, _label = _step_colour(s)
        bad = s.status in (StepStatus.ABORTED, StepStatus.FAILED)
        ax.broken_barh(
            [(start, width)],
            (y - 0.35, 0.7),
            facecolors=colour,
            edgecolors="#c0392b" if bad else "white",
            hatch="xx" if bad else None,
            linewidth=1.5 if bad else 0.5,
        )
        label = _step_label(s)
        if width >= (len(label) + 1) * per_char:
            ax.text(start + width / 2, y, label, ha="center", va="center", fontsize=7)
        else:
            above.append((start, s.index))
    groups: list[list[tuple[float, int]]] = []
    for x, index in above:
        if groups and x - groups[-1][0][0] < 5 * per_char:
            groups[-1].append((x, index))
        else:
            groups.append([(x, index)])
    for n, group in enumerate(groups):
        first, last = group[0][1], group[-1][1]
        text = f"#{first}" if first == last else f"#{first}-{last}"
        ax.text(group[0][0], y + 0.45 + 0.25 * (n % 2), text, fontsize=6.5, va="bottom")


def _draw_probe_and_faults(ax: Axes, record: GameDayRecord, end: float) -> None:
    """Outages in the probe lane (green tick at recovery); faults from inject to revert."""
    y = _LANES["probe"]
    for start, stop, recovered in outages(record):
        ax.broken_barh(
            [(start, max(stop - start, end * 0.002))], (y - 0.3, 0.6), facecolors="#c0392b"
        )
        if recovered:
            ax.plot([stop, stop], [y - 0.35, y + 0.35], color="#27ae60", linewidth=2)
        else:
            ax.text(stop, y, " still down at step end", fontsize=6.5, va="center", color="#c0392b")
    y = _LANES["faults"]
    for span in fault_spans(record):
        stop = span.end if span.end is not None else end
        ax.broken_barh(
            [(span.start, max(stop - span.start, end * 0.002))],
            (y - 0.25, 0.5),
            facecolors="#f5b7b1",
            edgecolors="#c0392b",
            hatch=None if span.end is not None else "//",
        )
        if span.by == "abort":
            ax.scatter([stop], [y], marker="X", color="black", zorder=4, s=40)
        ax.text(span.start, y + 0.3, _plain(span.fault), fontsize=6.5, va="bottom", color="#922b21")


# Events drawn as markers: kind, marker, colour, lane, legend label.
_MARKERS = (
    (EventKind.HEALER_ACTION, "^", "#8e44ad", "healers", "healer action"),
    (EventKind.CONTROL, "o", "#34495e", "control", "control-plane event"),
    (GameDayEventKind.NOTE, "*", "#d35400", "notes", "note"),
)


def _draw_markers(ax: Axes, record: GameDayRecord) -> None:
    """Healer actions, control-plane events and notes as markers; notes labelled."""
    for kind, marker, colour, lane, _label in _MARKERS:
        evs = [e for e in record.events if e.kind == kind]
        if evs:
            ax.scatter(
                [e.t for e in evs], [_LANES[lane]] * len(evs), marker=marker, color=colour, s=24
            )
        if kind != GameDayEventKind.NOTE:
            continue
        # Notes are what the room said: label them, a bounded number, staggered.
        every = max(1, len(evs) // 12)
        for i, ev in enumerate(evs[::every]):
            text = ev.message if len(ev.message) <= 24 else ev.message[:23] + "\u2026"
            ax.annotate(
                _plain(text),
                (ev.t, _LANES[lane]),
                textcoords="offset points",
                xytext=(3, (6, -10, 14)[i % 3]),
                fontsize=6.5,
                color=colour,
            )
    abort = next((e for e in record.events if e.kind == GameDayEventKind.ABORT), None)
    if abort is not None:
        ax.axvline(abort.t, color="#c0392b", linewidth=2)
        ax.text(abort.t, _LANES["steps"] + 0.9, " abort", color="#c0392b", fontsize=8)


def _step_colour(step: StepRecord) -> tuple[str, str]:
    """A step band's colour and legend label: run steps by workload kind (as in ``rto report``)."""
    if step.result is not None and step.result.kind in KIND_COLOURS:
        return KIND_COLOURS[step.result.kind], f"step: run ({step.result.kind})"
    return _STEP_COLOURS.get(step.kind, "#cccccc"), f"step: {step.kind}"


def _legend(ax: Axes, record: GameDayRecord) -> None:
    """One legend entry per kind of thing drawn, and none for what is absent."""
    ran = [s for s in record.steps if s.started_t is not None]
    steps = dict(_step_colour(s)[::-1] for s in ran)
    handles: list[Artist] = [Patch(facecolor=c, label=label) for label, c in steps.items()]
    kinds = {e.kind for e in record.events}
    spans = fault_spans(record)
    marks: list[tuple[bool, Artist]] = [
        (bool(outages(record)), Patch(facecolor="#c0392b", label="probe failing (outage)")),
        (EventKind.PROBE_OK in kinds, Line2D([], [], color="#27ae60", label="probe up again")),
        (bool(spans), Patch(facecolor="#f5b7b1", edgecolor="#c0392b", label="fault active")),
        (
            any(s.by == "abort" for s in spans),
            Line2D([], [], marker="X", color="k", linestyle="", label="reverted by the abort"),
        ),
    ]
    marks += [
        (kind in kinds, Line2D([], [], marker=m, color=c, linestyle="", label=label))
        for kind, m, c, _lane, label in _MARKERS
    ]
    handles += [h for shown, h in marks if shown]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def gameday_figure(record: GameDayRecord) -> Figure:
    """The whole game day on one time axis: a lane each for steps, probe, faults,
    healers, control-plane events and notes; the abort as a red line."""
    fig = Figure(figsize=(_FIG_W_IN, 4.2))
    ax = fig.add_subplot()
    outcome = record.outcome.value if record.outcome else "in progress"
    ax.set_title(_plain(f"{record.name}: {outcome}, on {record.backend}"), fontsize=9)
    if not any(s.started_t is not None for s in record.steps) and not record.events:
        ax.text(0.5, 0.5, "no step was run: nothing to draw", ha="center", va="center")
        ax.set_axis_off()
        return fig
    end = max(_end_t(record) * 1.03, 1.0)
    _draw_steps(ax, record, end)
    _draw_probe_and_faults(ax, record, end)
    _draw_markers(ax, record)
    ax.set_yticks(list(_LANES.values()))
    ax.set_yticklabels(list(_LANES))
    ax.set_ylim(-0.8, 6.3)
    _time_axis(ax, end)
    ax.grid(axis="x", alpha=0.3)
    _legend(ax, record)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # bbox "tight": the legend sits outside the axes and must not be cut.
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


# ----------------------------------------------------------------------- renderers

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.88em; }
th, td { border: 1px solid #bbb; padding: 4px 7px; vertical-align: top; text-align: left; }
th { background: #f0f0f0; }
.empty { padding: 0.6em; background: #fff3c4; border: 1px solid #e0c060; }
.abort { padding: 0.6em; background: #fdecea; border: 1px solid #c0392b; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


def render_gameday_html(record: GameDayRecord, exp: Expectations, png: bytes) -> str:
    """The report as one self-contained page: the plot is embedded, nothing is fetched."""
    header = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in _header_rows(record))
    img = base64.b64encode(png).decode("ascii")
    abort = "".join(f"<p>{_e(line)}</p>" for line in _abort_lines(record))
    css = "abort" if record.outcome is GameDayOutcome.ABORTED else "reverts"
    return "\n".join(
        [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>Game day: {_e(record.name)}</title><style>{_CSS}</style></head><body>",
            f"<h1>Game day: {_e(record.name)}</h1>",
            f"<table>{header}</table>",
            "<h2>Steps</h2>",
            _html_table(_STEP_HEADERS, _steps_rows(record, exp), "the runbook has no steps"),
            "<h2>Timeline</h2>",
            f'<img alt="timeline of the game day" src="data:image/png;base64,{img}">',
            "<h2>What was reverted when</h2>",
            f'<div class="{css}">{abort}</div>',
            _html_table(_REVERT_HEADERS, _revert_rows(record), "no fault was reverted"),
            "<h2>Every event</h2>",
            _html_table(_EVENT_HEADERS, _event_rows(record), "no event recorded"),
            "</body></html>",
        ]
    )


def render_gameday_markdown(record: GameDayRecord, exp: Expectations, png_name: str) -> str:
    """The same sections in Markdown, the plot linked as the PNG beside it."""
    out = [f"# Game day: {_md(record.name)}", "", "| field | value |", "|---|---|"]
    out += [f"| {k} | {_md(v)} |" for k, v in _header_rows(record)]
    out += ["", "## Steps", ""]
    out += _md_table(_STEP_HEADERS, _steps_rows(record, exp), "the runbook has no steps")
    out += ["", "## Timeline", "", f"![timeline of the game day]({png_name})", ""]
    out += ["## What was reverted when", ""]
    out += [f"- {_md(line)}" for line in _abort_lines(record)]
    out += ["", *_md_table(_REVERT_HEADERS, _revert_rows(record), "no fault was reverted")]
    out += ["", "## Every event", ""]
    out += _md_table(_EVENT_HEADERS, _event_rows(record), "no event recorded")
    return "\n".join(out) + "\n"


def write_gameday_report(
    record: GameDayRecord, out_dir: Path, expectations: Path | None = None
) -> list[Path]:
    """Write ``gameday.html``, ``gameday.md`` and the timeline PNG into ``out_dir``.

    Returns their paths, HTML first. A bad expectations file raises
    :class:`core.errors.SpecError`; a directory that cannot be written,
    :class:`core.errors.HarnessError`.
    """
    exp = load_expectations(expectations)
    png = _png(gameday_figure(record))
    files = {
        GAMEDAY_HTML: render_gameday_html(record, exp, png).encode("utf-8"),
        GAMEDAY_MD: render_gameday_markdown(record, exp, GAMEDAY_PNG).encode("utf-8"),
        GAMEDAY_PNG: png,
    }
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (out_dir / name).write_bytes(data)
    except OSError as exc:
        raise HarnessError(
            f"cannot write the game-day report into {out_dir}: {exc.strerror} ({exc.filename})"
        ) from exc
    return [out_dir / name for name in files]
