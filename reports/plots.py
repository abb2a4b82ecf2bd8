"""Plots of a report: RTO per fault and one timeline per run, as PNG bytes.

Filled from the runs DataFrame (``reports.analysis.runs_frame``) and from
single :class:`chaos.results.RunResult` rows; read by ``reports.render``, which
embeds the bytes in the HTML page, and by ``reports.build``, which writes them
to ``plots/*.png``. Uses matplotlib's object API on the Agg canvas (no pyplot,
no global figure state), so it is safe in threads and on headless CI.

Tick labels of the RTO plots are wrapped to their slot and the figure widened
until no two overlap (measured with the renderer's text extents, as
``tests/test_plots.py`` checks); a timeline of a run that never probed says so
instead of drawing a healthy probe lane.
"""

from __future__ import annotations

import io
import math
import textwrap

import matplotlib

matplotlib.use("Agg")  # headless: never try to open a display

import pandas as pd
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from chaos.results import RunResult
from core.timeline import EventKind, TimelineEvent
from reports.analysis import fmt_s, judged_with_real_timings
from reports.expectations import Expectations, RangeClaim

__all__ = [
    "KIND_COLOURS",
    "overlapping_tick_labels",
    "plot_rto",
    "plot_timeline",
    "rto_figure",
    "timeline_figure",
]

KIND_COLOURS = {"pod": "#1f77b4", "vmi": "#e67e22"}
_OFFSET = {"pod": -0.2, "vmi": 0.2}
_DPI = 100


def _png(fig: Figure, dpi: int = _DPI) -> bytes:
    buf = io.BytesIO()
    # bbox "tight": the timeline legend sits outside the axes and must not be cut.
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


# Characters per tick-label line: about what fits the 1.9 in slot of a group at
# 8 pt; longer healer lists ("eviction+migration+watchdog") wrap at "+".
_LABEL_WIDTH = 22
_SLOT_IN = 1.9


def _wrap(text: str) -> list[str]:
    # Break after "+" as well as at spaces: healer lists have no spaces.
    return textwrap.wrap(text.replace("+", "+ "), _LABEL_WIDTH, break_on_hyphens=False) or [""]


def _group_label(variant: str, backend: str, profile: str, healers: str) -> str:
    lines = [f"[{variant}]"] if variant else []
    lines += _wrap(f"healers: {healers}")
    lines += _wrap(f"{backend} / {profile}")
    return "\n".join(line.replace("+ ", "+") for line in lines)


def _renderer(fig: Figure) -> RendererBase:
    # A bare Figure has a base canvas, which cannot measure text: give it Agg's.
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()  # type: ignore[no-untyped-call]  # matplotlib's stubs leave it untyped
    renderer: RendererBase = canvas.get_renderer()  # type: ignore[no-untyped-call]
    return renderer


def overlapping_tick_labels(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of x tick labels (on any axes of ``fig``) whose drawn extents overlap."""
    renderer = _renderer(fig)
    pairs: list[tuple[str, str]] = []
    for ax in fig.axes:
        labels = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        boxes = [t.get_window_extent(renderer) for t in labels]
        for i in range(len(labels)):
            for j in range(i + 1, len(labels)):
                if boxes[i].overlaps(boxes[j]):
                    pairs.append((labels[i].get_text(), labels[j].get_text()))
    return pairs


def _fit_tick_labels(fig: Figure, tries: int = 4) -> None:
    """Widen ``fig`` until its x tick labels do not overlap (bounded tries)."""
    for _ in range(tries):
        renderer = _renderer(fig)
        ax = fig.axes[0]
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        if len(labels) < 2 or not overlapping_tick_labels(fig):
            return
        # The widest label must fit the distance between two ticks.
        widest = max(t.get_window_extent(renderer).width for t in labels)
        x0, x1 = (ax.transData.transform((x, 0))[0] for x in (0, 1))
        gap = abs(x1 - x0)
        fig.set_figwidth(fig.get_figwidth() * max(1.1, widest * 1.15 / gap))


def plot_rto(frame: pd.DataFrame, fault: str, expectations: Expectations) -> bytes:
    """:func:`rto_figure` as PNG bytes."""
    return _png(rto_figure(frame, fault, expectations))


def rto_figure(frame: pd.DataFrame, fault: str, expectations: Expectations) -> Figure:
    """RTO of every run of one fault: pod next to vmi per setting, documented band behind.

    Dots are runs, a bar is the median; runs that did not recover sit on the
    top edge as red crosses. The documented range is drawn only for settings
    measured with real timings (a ``fast`` profile is scaled, so the band
    would mislead).
    """
    runs = frame[frame["fault"] == fault]
    groups: list[tuple[str, str, str, str]] = list(
        runs[["variant", "backend", "profile", "healers"]]
        .drop_duplicates()
        .sort_values(["backend", "profile", "variant", "healers"])
        .itertuples(index=False, name=None)
    )
    fig = Figure(figsize=(max(6.0, _SLOT_IN * len(groups) + 2.0), 4.2))
    ax = fig.add_subplot()
    if not groups:
        ax.text(0.5, 0.5, f"{fault}: no runs recorded", ha="center", va="center")
        ax.set_axis_off()
        return fig

    values = runs.loc[runs["recovered"], "rto_s"].dropna()
    finite_bounds: list[float] = []
    for kind in _OFFSET:
        exp = expectations.get(fault, kind)
        if exp is not None and isinstance(exp.claim, RangeClaim):
            finite_bounds += [b for b in (exp.claim.min_s, exp.claim.upper) if math.isfinite(b)]
    scale_vals = [v for v in [*values.tolist(), *finite_bounds] if v > 0]
    # Sub-second and five-minute values on one axis: log scale when they spread
    # over more than 30x; symlog keeps a 0 s run (no outage) on the axis.
    log = bool(scale_vals) and max(scale_vals) / min(scale_vals) > 30
    # Headroom for open-ended bands (">= 30 s") and the "did not recover" row.
    top = max(scale_vals, default=1.0) * (4.0 if log else 1.6)
    if log:
        ax.set_yscale("symlog", linthresh=max(min(scale_vals) / 2, 0.01))
    ax.set_ylim(0, top)

    banded: set[str] = set()
    failed_label = False
    for x, (variant, backend, profile, healers) in enumerate(groups):
        sel = runs[
            (runs["variant"] == variant)
            & (runs["backend"] == backend)
            & (runs["profile"] == profile)
            & (runs["healers"] == healers)
        ]
        for kind, dx in _OFFSET.items():
            colour = KIND_COLOURS[kind]
            exp = expectations.get(fault, kind)
            if (
                exp is not None
                and isinstance(exp.claim, RangeClaim)
                and judged_with_real_timings(backend, profile)
            ):
                lo, hi = exp.claim.min_s, min(exp.claim.upper, top)
                label = None
                if kind not in banded:
                    label = f"documented {kind}: {exp.claim_text}"
                    banded.add(kind)
                ax.fill_between(
                    [x + dx - 0.17, x + dx + 0.17],
                    lo,
                    hi,
                    color=colour,
                    alpha=0.15,
                    hatch="//",
                    edgecolor=colour,
                    linewidth=0,
                    label=label,
                )
            k = sel[sel["kind"] == kind]
            ok = k.loc[k["recovered"], "rto_s"].dropna()
            if len(ok):
                jitter = [((i % 5) - 2) * 0.025 for i in range(len(ok))]
                ax.scatter(
                    [x + dx + j for j in jitter],
                    ok,
                    color=colour,
                    s=18,
                    zorder=3,
                    label=kind if x == 0 else None,
                )
                med = float(ok.median())
                ax.hlines(med, x + dx - 0.15, x + dx + 0.15, color=colour, linewidth=3, zorder=4)
                ax.annotate(
                    fmt_s(med),
                    (x + dx + 0.16, med),
                    fontsize=7,
                    va="center",
                    color=colour,
                )
            elif x == 0:
                # Keep the legend entry even when the first group has no such runs.
                ax.scatter([], [], color=colour, s=18, label=kind)
            lost = int((k["status"] == "not_recovered").sum())
            if lost:
                ax.scatter(
                    [x + dx],
                    [top * 0.93 if not log else top / 1.15],
                    marker="x",
                    color="#c0392b",
                    s=60,
                    zorder=5,
                    label="did not recover" if not failed_label else None,
                )
                failed_label = True
                ax.annotate(
                    f"{lost} lost",
                    (x + dx, top * 0.93 if not log else top / 1.15),
                    textcoords="offset points",
                    xytext=(0, -12),
                    ha="center",
                    fontsize=7,
                    color="#c0392b",
                )
            n_aborted = int((k["status"] == "aborted").sum())
            if len(k) == 0 or (n_aborted and not len(ok)):
                # Aborted runs measured nothing: say so where their RTO would be.
                ax.annotate(
                    "no runs" if len(k) == 0 else f"{n_aborted} aborted",
                    (x + dx, 0),
                    textcoords="offset points",
                    xytext=(0, 4),
                    ha="center",
                    fontsize=7,
                    color="#888",
                    rotation=90,
                )

    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([_group_label(*g) for g in groups], fontsize=8)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel("RTO (s)" + (", symlog scale" if log else ""))
    ax.set_title(f"{fault}: RTO per run (bar = median)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", framealpha=0.85)
    _fit_tick_labels(fig)
    return fig


_LANES = {"probe": 3.0, "fault": 2.0, "healer": 1.0, "control": 0.0}


def _short(ev: TimelineEvent, width: int = 28) -> str:
    text = ev.message or ev.source or ev.kind.value
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _never_probed(run: RunResult) -> bool:
    return run.probes_sent == 0 and not any(
        e.kind in (EventKind.PROBE_OK, EventKind.PROBE_FAIL) for e in run.timeline
    )


def plot_timeline(run: RunResult) -> bytes:
    """:func:`timeline_figure` as PNG bytes (a lower resolution: one per run in the page)."""
    return _png(timeline_figure(run), dpi=80)


def timeline_figure(run: RunResult) -> Figure:
    """One run on a time axis: probe up/down, fault window, healer actions, control events."""
    events = sorted(run.timeline, key=lambda e: e.t)
    end = max([e.t for e in events] + [1.0]) * 1.05
    fig = Figure(figsize=(10, 3.0))
    ax = fig.add_subplot()

    y = _LANES["probe"]
    if _never_probed(run):
        # No probe was sent (the run aborted before its recorder started, e.g.
        # the workload never became Ready): nothing is known about health, so
        # draw no health at all.
        ax.broken_barh(
            [(0, end)],
            (y - 0.3, 0.6),
            facecolors="none",
            edgecolors="#888888",
            hatch="//",
            label="not probed",
        )
        ax.text(
            end / 2,
            y,
            f"no probe was sent (run {run.status.value.replace('_', ' ')}): health not measured",
            ha="center",
            va="center",
            fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "#888888"},
        )
    else:
        # Probe lane: up until the first failure (probes start against a healthy
        # workload), then alternate on every transition.
        up, down, state, since = [], [], True, 0.0
        for ev in events:
            if ev.kind is EventKind.PROBE_FAIL and state:
                up.append((since, ev.t - since))
                state, since = False, ev.t
            elif ev.kind is EventKind.PROBE_OK and not state:
                down.append((since, ev.t - since))
                state, since = True, ev.t
        (up if state else down).append((since, end - since))
        ax.broken_barh(up, (y - 0.3, 0.6), facecolors="#27ae60", label="probe ok")
        ax.broken_barh(down, (y - 0.3, 0.6), facecolors="#c0392b", label="probe failing")

    injected = next((e for e in events if e.kind is EventKind.FAULT_INJECTED), None)
    reverted = next((e for e in events if e.kind is EventKind.FAULT_REVERTED), None)
    if injected is not None:
        stop = reverted.t if reverted is not None else end
        ax.broken_barh(
            [(injected.t, stop - injected.t)],
            (_LANES["fault"] - 0.25, 0.5),
            facecolors="#f5b7b1",
            edgecolors="#c0392b",
        )
        ax.axvline(injected.t, color="#c0392b", linestyle="--", linewidth=1, label="fault injected")
        ax.text(injected.t, _LANES["fault"], " " + _short(injected), fontsize=7, va="center")
    else:
        ax.text(0, _LANES["fault"], " no fault injected", fontsize=7, va="center", color="#888")
    if reverted is not None:
        ax.axvline(reverted.t, color="#27ae60", linestyle="--", linewidth=1, label="fault reverted")

    # The RTO bracket: first failed probe .. first failed probe + rto_s.
    first_fail = next((e for e in events if e.kind is EventKind.PROBE_FAIL), None)
    if first_fail is not None and run.rto_s is not None:
        yb = _LANES["probe"] + 0.45
        ax.annotate(
            "",
            (first_fail.t, yb),
            (first_fail.t + run.rto_s, yb),
            arrowprops={"arrowstyle": "<->", "color": "black", "lw": 1},
        )
        ax.text(
            first_fail.t + run.rto_s / 2,
            yb + 0.12,
            f"RTO {fmt_s(run.rto_s)}",
            ha="center",
            fontsize=8,
        )

    for lane, kind, marker, colour in (
        ("healer", EventKind.HEALER_ACTION, "^", "#8e44ad"),
        ("control", EventKind.CONTROL, "o", "#34495e"),
    ):
        evs = [e for e in events if e.kind is kind]
        if not evs:
            continue
        ax.scatter(
            [e.t for e in evs],
            [_LANES[lane]] * len(evs),
            marker=marker,
            color=colour,
            zorder=3,
            label="healer action" if lane == "healer" else "control event",
        )
        # Label a bounded number of events, alternating up and down, so that a
        # chatty control plane does not turn the lane into a smear of text.
        step = max(1, len(evs) // 8)
        for i, ev in enumerate(evs[::step]):
            ax.annotate(
                _short(ev, 24),
                (ev.t, _LANES[lane]),
                textcoords="offset points",
                xytext=(3, 7 if i % 2 == 0 else -11),
                fontsize=6.5,
                color=colour,
            )

    ax.set_yticks(list(_LANES.values()))
    ax.set_yticklabels(list(_LANES))
    ax.set_ylim(-0.7, 4.1)
    ax.set_xlim(0, end)
    ax.set_xlabel("seconds since the run started")
    healers = ",".join(run.healers) or "none"
    rto = fmt_s(run.rto_s) if run.rto_s is not None else run.status.value.replace("_", " ")
    ax.set_title(
        f"{run.run_id}: {run.fault}{'[' + run.variant + ']' if run.variant else ''}/{run.kind}"
        f" on {run.backend}/{run.profile}, healers {healers}, RTO {rto}",
        fontsize=9,
    )
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig
