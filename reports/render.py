"""Renderers of a report: one self-contained HTML page, a Markdown summary, JUnit XML.

Filled from a :class:`reports.analysis.ReportSummary`, the run rows and the PNG
bytes of ``reports.plots``; read by people (HTML, Markdown in a PR comment or
a job summary) and by CI systems (JUnit: one testcase per cell, a failure for
"contradicted" and "no recovery"; one testcase per aborted run, an error with
its reason: an abort is the harness's or the platform's failure, and a CI
gate must see it). Plain string building with escaping, no template engine:
the pages are small and the dependency is not worth it.
"""

from __future__ import annotations

import base64
import html
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence

from chaos.results import RunResult, RunStatus
from core.timeline import EventKind
from reports.analysis import (
    CellSummary,
    ReportSummary,
    Side,
    Verdict,
    accelerator_label,
    fmt_ms,
    fmt_rto,
    fmt_s,
    resolution_text,
)
from reports.expectations import FAULTS, RtoExpectation

__all__ = ["VERDICT_COLOURS", "render_html", "render_junit", "render_markdown"]

VERDICT_COLOURS: dict[Verdict, str] = {
    Verdict.HOLDS: "#c8e6c9",
    Verdict.CONTRADICTED: "#ffcdd2",
    Verdict.NO_RECOVERY: "#ef9a9a",
    Verdict.INFORMATIONAL: "#d6eaf8",
    Verdict.NOT_MEASURED: "#eeeeee",
    Verdict.SCALED: "#fff3c4",
}

_Setting = tuple[str, str, str, str]  # variant, backend, profile, healers


def _faults(summary: ReportSummary) -> list[str]:
    # Documented faults first in handbook order, then anything else measured.
    extra = sorted({c.fault for c in summary.cells} - set(FAULTS))
    return [*FAULTS, *extra]


def _settings(summary: ReportSummary, fault: str) -> list[_Setting]:
    seen = {(c.variant, c.backend, c.profile, c.healers) for c in summary.cells if c.fault == fault}
    return sorted(seen, key=lambda s: (s[1], s[2], s[0], s[3]))


def _find(summary: ReportSummary, fault: str, kind: str, s: _Setting) -> CellSummary | None:
    return next(
        (
            c
            for c in summary.cells
            if c.fault == fault
            and c.kind == kind
            and (c.variant, c.backend, c.profile, c.healers) == s
        ),
        None,
    )


def _setting_text(s: _Setting) -> str:
    variant, backend, profile, healers = s
    head = f"[{variant}] " if variant else ""
    return f"{head}{backend}/{profile}, healers: {healers}"


def _measured(c: CellSummary | None) -> str:
    if c is None:
        return "no runs"
    parts = []
    if c.median_s is not None:
        parts.append(f"median {fmt_s(c.median_s)}, p95 {fmt_s(c.p95_s)} ({c.resolution})")
    parts.append(f"n={c.n}")
    if c.not_recovered:
        parts.append(f"{c.not_recovered} not recovered")
    if c.aborted:
        parts.append(f"{c.aborted} aborted")
    if c.side is not Side.MEASURED:
        parts.append(f"not measured: {c.side.value}")
    if c.platform:
        parts.append(f"on {c.platform}")
    if c.kind == "vmi":
        parts.append(f"VMI figures: {accelerator_label(c.accelerator)}")
    return ", ".join(parts)


def _accelerators_note(summary: ReportSummary) -> str:
    """Which accelerator ran the VMs behind the VMI figures, over the whole report."""
    vmi = [c for c in summary.cells if c.kind == "vmi"]
    if not vmi:
        return ""
    counts: dict[str, int] = {}
    for c in vmi:
        label = accelerator_label(c.accelerator)
        counts[label] = counts.get(label, 0) + 1
    parts = ", ".join(f"{label} in {n} cell(s)" for label, n in counts.items())
    tcg = " Figures under TCG measure software emulation and do not transfer to KVM hosts."
    return f"VMI figures: {parts}." + (tcg if any("TCG" in k for k in counts) else "")


def _documented(e: RtoExpectation | None) -> str:
    return f"{e.mechanism}: {e.claim_text}" if e else "(no documented claim)"


def _verdict_of(c: CellSummary | None) -> Verdict:
    return c.verdict if c is not None else Verdict.NOT_MEASURED


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.88em; }
th, td { border: 1px solid #bbb; padding: 4px 7px; vertical-align: top; text-align: left; }
th { background: #f0f0f0; }
td.num { text-align: right; white-space: nowrap; }
th.doc, td.doc { background: #fafafa; }
.verdict { font-weight: 600; min-width: 7em; }
.verdict .why { font-weight: normal; font-size: 0.85em; color: #333; margin-top: 3px; }
td.why { min-width: 16em; }
div.runs { font-size: 0.85em; margin-top: 3px; }
div.runs a { margin-right: 4px; white-space: nowrap; }
table.wide { width: 100%; }
.note { color: #555; font-size: 0.92em; }
.empty { padding: 1em; background: #fff3c4; border: 1px solid #e0c060; font-size: 1.1em; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.3em 0; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots figure { margin: 0; flex: 0 1 auto; max-width: 100%; }
figcaption { font-weight: 600; }
details { margin: 0.4em 0; border: 1px solid #ddd; padding: 0.3em 0.6em; }
summary { cursor: pointer; }
.legend span { padding: 2px 8px; margin-right: 6px; border: 1px solid #bbb; }
tr.log td { background: #f3f6fb; color: #234; }
tr.log td.out { font-family: ui-monospace, monospace; white-space: pre-wrap; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _verdict_td(v: Verdict, detail: str = "", show: bool = False) -> str:
    """A coloured verdict cell; the reason is a tooltip, or shown under it with ``show``."""
    title = f' title="{_e(detail)}"' if detail else ""
    why = f'<div class="why">{_e(detail)}</div>' if show and detail else ""
    return (
        f'<td class="verdict" style="background:{VERDICT_COLOURS[v]}"{title}>'
        f"{_e(v.label)}{why}</td>"
    )


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _comparison_html(summary: ReportSummary) -> str:
    head = (
        "<tr><th>fault</th><th>setting</th>"
        '<th class="doc">documented pod</th><th>measured pod</th><th>pod verdict</th>'
        '<th class="doc">documented VMI</th><th>measured VMI</th><th>VMI verdict</th></tr>'
    )
    rows = []
    for fault in _faults(summary):
        pod_e = summary.expectations.get(fault, "pod")
        vmi_e = summary.expectations.get(fault, "vmi")
        settings: list[_Setting | None] = list(_settings(summary, fault)) or [None]
        for i, s in enumerate(settings):
            # The documented text is per fault: span it over the fault's settings
            # so that the eye reads one claim against several measurements.
            span = f' rowspan="{len(settings)}"'
            row_name = pod_e.handbook_row if pod_e else "-"
            fault_td = doc_pod = doc_vmi = ""
            if i == 0:
                fault_td = (
                    f"<td{span}><b>{_e(fault)}</b><br>"
                    f'<span class="note">handbook: {_e(row_name)}</span></td>'
                )
                doc_pod = f'<td class="doc"{span}>{_e(_documented(pod_e))}</td>'
                doc_vmi = f'<td class="doc"{span}>{_e(_documented(vmi_e))}</td>'
            pod = _find(summary, fault, "pod", s) if s else None
            vmi = _find(summary, fault, "vmi", s) if s else None
            rows.append(
                f"<tr>{fault_td}<td>{_e(_setting_text(s) if s else 'no runs recorded')}</td>"
                f"{doc_pod}<td>{_e(_measured(pod))}</td>"
                f"{_verdict_td(_verdict_of(pod), pod.detail if pod else '', show=True)}"
                f"{doc_vmi}<td>{_e(_measured(vmi))}</td>"
                f"{_verdict_td(_verdict_of(vmi), vmi.detail if vmi else '', show=True)}</tr>"
            )
    return f'<table class="wide">{head}{"".join(rows)}</table>'


def _cells_html(summary: ReportSummary) -> str:
    head = (
        "<tr><th>fault</th><th>kind</th><th>setting</th><th>n</th><th>recovered</th>"
        "<th>median</th><th>p95</th><th>min</th><th>max</th><th>detection (median)</th>"
        "<th>healer action (median)</th><th>same instance</th><th>RTO resolution</th>"
        "<th>verdict</th><th>why (and runs)</th></tr>"
    )
    rows = []
    for c in summary.cells:
        same = "-" if c.same_instance_share is None else f"{c.same_instance_share:.0%}"
        nums = "".join(
            f'<td class="num">{_e(v)}</td>'
            for v in (
                c.n,
                c.recovered,
                fmt_s(c.median_s),
                fmt_s(c.p95_s),
                fmt_s(c.min_s),
                fmt_s(c.max_s),
                fmt_s(c.detection_median_s),
                fmt_s(c.healer_action_median_s),
                same,
            )
        )
        nums += f"<td>{_e(c.resolution)}</td>"
        setting = _setting_text((c.variant, c.backend, c.profile, c.healers))
        if c.platform:
            setting += f"; on {c.platform}"
        if c.kind == "vmi":
            setting += f"; VMI figures: {accelerator_label(c.accelerator)}"
        rows.append(
            f"<tr><td>{_e(c.fault)}</td><td>{_e(c.kind)}</td><td>{_e(setting)}</td>{nums}"
            f'{_verdict_td(c.verdict)}<td class="why">{_e(c.detail)}'
            f'<div class="runs">runs: {_run_links(c.run_ids)}</div></td></tr>'
        )
    return f'<table class="wide">{head}{"".join(rows)}</table>'


def _run_links(run_ids: Sequence[str], limit: int = 8) -> str:
    links = " ".join(f'<a href="#run-{_e(r)}">{_e(r)}</a>' for r in run_ids[:limit])
    more = f" (+{len(run_ids) - limit})" if len(run_ids) > limit else ""
    return links + more


def _documented_html(summary: ReportSummary) -> str:
    head = (
        "<tr><th>fault</th><th>kind</th><th>handbook row</th><th>mechanism</th>"
        "<th>documented RTO</th><th>checked as</th><th>what public sources say</th></tr>"
    )
    rows = "".join(
        f"<tr><td>{_e(e.fault)}</td><td>{_e(e.kind)}</td><td>{_e(e.handbook_row)}</td>"
        f"<td>{_e(e.mechanism)}</td><td>{_e(e.claim_text)}</td><td>{_e(e.claim.describe())}</td>"
        f'<td class="note">{_e(e.note or "-")}</td></tr>'
        for e in summary.expectations.rto
    )
    return f"<table>{head}{rows}</table>"


def _metrics_html(summary: ReportSummary) -> str:
    head = (
        "<tr><th>area</th><th>claim</th><th>verdict</th><th>why</th><th>figure from</th>"
        "<th>note</th></tr>"
    )
    rows = "".join(
        f"<tr><td>{_e(m.expectation.area)}</td><td>{_e(m.expectation.claim_text)}</td>"
        f"{_verdict_td(m.verdict)}<td>{_e(m.detail)}</td>"
        f"<td>{'<b>' if m.from_this_run else ''}{_e(m.provenance or '-')}"
        f"{'</b>' if m.from_this_run else ''}</td>"
        f'<td class="note">{_e(m.expectation.note or "-")}</td></tr>'
        for m in summary.metrics
    )
    return f"<table>{head}{rows}</table>"


# Per-run resource metrics (RunResult.metrics, averaged per fault and kind).
_RUN_METRIC_COLS: tuple[tuple[str, str], ...] = (
    ("fault", "fault"),
    ("kind", "kind"),
    ("runs", "runs"),
    ("cpu_cores", "CPU (cores: container / vCPU)"),
    ("host_cpu_cores", "host CPU (cores, incl. QEMU)"),
    ("mem_mib", "memory MiB (cgroup / guest)"),
    ("overhead_mib", "QEMU overhead MiB"),
    ("disk_wr_kib_s", "disk write KiB/s"),
    ("disk_wr_ops_s", "disk write ops/s"),
    ("net_rx_kib_s", "net rx KiB/s"),
    ("net_tx_kib_s", "net tx KiB/s"),
    ("errors", "read errors"),
)


def _metric_cell(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _figures_note(summary: ReportSummary) -> str:
    if not summary.metric_figures:
        return (
            "No pod-vs-VMI figures: run benchmarks/net_compare.py, or a campaign with "
            "metric_claims: true."
        )
    return " ".join(
        f"Pod-vs-VMI figures {f.provenance}: {f.label}. {f.caveat}".strip()
        for f in summary.metric_figures
    )


def _run_metrics_html(summary: ReportSummary) -> list[str]:
    parts = [f'<p class="note">{_e(_figures_note(summary))}</p>', "<h2>Resource metrics</h2>"]
    if not summary.run_metrics:
        return [*parts, '<p class="empty">No run carries resource metrics yet.</p>']
    head = "".join(f"<th>{_e(label)}</th>" for _, label in _RUN_METRIC_COLS)
    rows = "".join(
        "<tr>"
        + "".join(f"<td>{_e(_metric_cell(getattr(r, k)))}</td>" for k, _ in _RUN_METRIC_COLS)
        + "</tr>"
        for r in summary.run_metrics
    )
    return [*parts, f"<table><tr>{head}</tr>{rows}</table>"]


def _run_metrics_md(summary: ReportSummary) -> list[str]:
    out = ["", _md(_figures_note(summary)), "", "## Resource metrics", ""]
    if not summary.run_metrics:
        return [*out, "No run carries resource metrics yet."]
    out.append("| " + " | ".join(label for _, label in _RUN_METRIC_COLS) + " |")
    out.append("|" + "---|" * len(_RUN_METRIC_COLS))
    out += [
        "| " + " | ".join(_md(_metric_cell(getattr(r, k))) for k, _ in _RUN_METRIC_COLS) + " |"
        for r in summary.run_metrics
    ]
    return out


def _edges_text(run: RunResult) -> str:
    """Where the outage's start and end are known to lie, and what edge probes cost."""
    parts = []
    if run.outage_start_bracket_s is not None:
        parts.append(f"outage start known to within {fmt_ms(run.outage_start_bracket_s)}")
    if run.recovery_bracket_s is not None:
        parts.append(f"recovery to within {fmt_ms(run.recovery_bracket_s)}")
    if run.probes_edge:
        parts.append(f"{run.probes_edge} of the probes were edge probes")
    return "; " + ", ".join(_e(p) for p in parts) if parts else ""


def _run_html(run: RunResult, png: bytes | None) -> str:
    healers = ",".join(run.healers) or "none"
    title = (
        f"{run.run_id}: {run.fault}{'[' + run.variant + ']' if run.variant else ''}/{run.kind} "
        f"{run.backend}/{run.profile} healers={healers}: {run.status.value}, "
        f"RTO {fmt_rto(run.rto_s, run.rto_uncertainty_s)}"
        + (
            " ("
            + resolution_text(
                run.rto_uncertainty_s, run.probe_interval_s, run.edge_probe_interval_s
            )
            + ")"
            if run.rto_s is not None
            else ""
        )
    )
    facts = (
        f"<p>experiment {_e(run.experiment)}, campaign {_e(run.campaign or '-')}, repetition "
        f"{run.repetition}, started {_e(run.started_at)}; detection {fmt_s(run.detection_s)}, "
        f"healer action {fmt_s(run.healer_action_s)}, outage start {fmt_s(run.outage_start_s)}, "
        f"same instance {_e(run.same_instance if run.same_instance is not None else '-')}, "
        + (
            f"probes {run.probes_failed}/{run.probes_sent} failed"
            if run.probes_sent
            else "<b>no probe was sent: nothing about the workload's health was measured</b>"
        )
        + _edges_text(run)
        + (f"; VMI figures: {_e(accelerator_label(run.accelerator))}" if run.kind == "vmi" else "")
        + (f"; error: {_e(run.error)}" if run.error else "")
        + "</p>"
    )
    # What the workload printed (LOG) reads as console output, apart from the
    # harness's own events.
    events = "".join(
        (
            f'<tr class="log"><td class="num">{e.t:.3f}</td><td>log</td><td>{_e(e.source)}</td>'
            f'<td class="out">&gt; {_e(e.message)}</td>'
            if e.kind is EventKind.LOG
            else f'<tr><td class="num">{e.t:.3f}</td><td>{_e(e.kind.value)}</td>'
            f"<td>{_e(e.source)}</td><td>{_e(e.message)}</td>"
        )
        + f"<td>{_e(', '.join(f'{k}={v}' for k, v in e.data.items()))}</td></tr>"
        for e in sorted(run.timeline, key=lambda e: e.t)
    )
    table = (
        "<table><tr><th>t (s)</th><th>event</th><th>source</th><th>message</th><th>data</th></tr>"
        f"{events}</table>"
        if events
        else "<p>(no timeline events recorded)</p>"
    )
    img = _img(png, f"timeline of {run.run_id}") if png else ""
    # Runs that went wrong are the ones a reader opens first: show them unfolded.
    unfold = " open" if run.status in (RunStatus.NOT_RECOVERED, RunStatus.ABORTED) else ""
    return (
        f'<details id="run-{_e(run.run_id)}"{unfold}><summary>{_e(title)}</summary>'
        f"{facts}{img}{table}</details>"
    )


def render_html(
    summary: ReportSummary,
    runs: Sequence[RunResult],
    rto_plots: Mapping[str, bytes],
    timeline_plots: Mapping[str, bytes],
    history: str = "",
) -> str:
    """The whole report as one HTML page; images are embedded, nothing is fetched.

    ``history``: the HTML of ``reports.history.history_html`` (a store with two
    campaigns or more), shown as its own section after the cells.
    """
    counts = ", ".join(f"{n} {v}" for v, n in summary.verdict_counts().items()) or "no cells"
    legend = "".join(
        f'<span style="background:{c}">{_e(v.label)}</span>' for v, c in VERDICT_COLOURS.items()
    )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>RTO report: pods vs VMIs against the documented table</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>RTO report: pods vs VMIs against the documented table</h1>",
        f"<p>Generated {_e(summary.generated_at)} from <code>{_e(summary.results_path)}</code> "
        f"({summary.runs} runs, {len(summary.cells)} cells: {_e(counts)}); expectations "
        f"<code>{_e(summary.expectations_path)}</code>.</p>",
    ]
    if summary.message:
        parts.append(f'<p class="empty">{_e(summary.message)}</p>')
    if _accelerators_note(summary):
        parts.append(f'<p class="note"><b>{_e(_accelerators_note(summary))}</b></p>')
    parts += [
        "<p>Verdicts are given only for runs with real platform timings (profile "
        "<code>kubernetes-defaults</code>, or backend <code>kube</code> not on a scaled "
        "profile), judged on the median RTO. Other profiles scale the platform's timings "
        "and get no verdict. Hover a verdict "
        f'for the reason.</p><p class="legend">{legend}</p>',
        "<h2>Documented vs measured</h2>",
        _comparison_html(summary),
    ]
    if summary.cells:
        parts += ["<h2>Cells in detail</h2>", _cells_html(summary)]
    if history:
        parts += ['<h2 id="history">RTO history across campaigns</h2>', history]
    parts += [
        "<h2>The documented table and what public sources say</h2>",
        _documented_html(summary),
        "<h2>Metric claims</h2>",
        _metrics_html(summary),
        *_run_metrics_html(summary),
    ]
    if rto_plots:
        parts.append("<h2>RTO per fault</h2>")
        figures = "".join(
            f"<figure><figcaption>{_e(f)}</figcaption>{_img(png, f'RTO of {f}')}</figure>"
            for f, png in rto_plots.items()
        )
        parts.append(f'<div class="plots">{figures}</div>')
    if runs:
        parts.append(f"<h2>Runs ({len(runs)})</h2>")
        parts += [_run_html(r, timeline_plots.get(r.run_id)) for r in runs]
    parts.append("</body></html>")
    return "\n".join(parts)


# ----------------------------------------------------------------------- Markdown


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(summary: ReportSummary) -> str:
    """The same tables as the HTML page, for a PR comment or a CI job summary."""
    counts = ", ".join(f"{n} {v}" for v, n in summary.verdict_counts().items()) or "no cells"
    out = [
        "# RTO report: pods vs VMIs against the documented table",
        "",
        f"Generated {summary.generated_at} from `{summary.results_path}`: {summary.runs} runs, "
        f"{len(summary.cells)} cells ({counts}).",
        "",
    ]
    if summary.message:
        out += [f"> **{summary.message}**", ""]
    if _accelerators_note(summary):
        out += [f"**{_accelerators_note(summary)}**", ""]
    out += [
        "Verdicts only for real platform timings (profile `kubernetes-defaults`, or backend "
        "`kube` not on a scaled profile), judged on the median RTO.",
        "",
        "## Documented vs measured",
        "",
        "| fault | setting | documented pod | measured pod | pod verdict "
        "| documented VMI | measured VMI | VMI verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fault in _faults(summary):
        pod_e = summary.expectations.get(fault, "pod")
        vmi_e = summary.expectations.get(fault, "vmi")
        md_settings: list[_Setting | None] = list(_settings(summary, fault)) or [None]
        for s in md_settings:
            pod = _find(summary, fault, "pod", s) if s else None
            vmi = _find(summary, fault, "vmi", s) if s else None
            out.append(
                f"| {_md(fault)} | {_md(_setting_text(s) if s else 'no runs recorded')} "
                f"| {_md(_documented(pod_e))} | {_md(_measured(pod))} | "
                f"**{_verdict_of(pod).label}** | {_md(_documented(vmi_e))} "
                f"| {_md(_measured(vmi))} | **{_verdict_of(vmi).label}** |"
            )
    if summary.cells:
        out += ["", "## Verdicts", "", "| cell | verdict | why |", "|---|---|---|"]
        out += [
            f"| {_md(c.name)}"
            + (f" (VMI figures: {accelerator_label(c.accelerator)})" if c.kind == "vmi" else "")
            + f" | {c.verdict.label} | {_md(c.detail)} |"
            for c in summary.cells
        ]
    out += [
        "",
        "## Metric claims",
        "",
        "| claim | verdict | why | figure from | note |",
        "|---|---|---|---|---|",
    ]
    out += [
        f"| {_md(m.expectation.claim_text)} | {m.verdict.label} | {_md(m.detail)} "
        f"| {_md(m.provenance or '-')} | {_md(m.expectation.note)} |"
        for m in summary.metrics
    ]
    out += _run_metrics_md(summary)
    out += ["", "## Where public sources disagree with the handbook", ""]
    out += [
        f"- **{e.fault}/{e.kind}** ({e.claim_text}): {e.note}"
        for e in summary.expectations.rto
        if e.note
    ]
    return "\n".join(out) + "\n"


# -------------------------------------------------------------------------- JUnit


def render_junit(summary: ReportSummary) -> str:
    """JUnit XML: one testcase per cell (failures for contradicted / no recovery) and
    one per aborted run (an error with the run's reason)."""
    suite = ET.Element("testsuite", name="rto-vs-documented")
    failures = skipped = tests = errors = 0
    for c in summary.cells:
        tests += 1
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"rto.{c.fault}.{c.kind}",
            name=c.name,
            time="0",
        )
        props = ET.SubElement(case, "properties")
        for k, v in (
            ("verdict", c.verdict.value),
            ("documented", c.documented),
            ("median_s", "" if c.median_s is None else f"{c.median_s:.3f}"),
            ("p95_s", "" if c.p95_s is None else f"{c.p95_s:.3f}"),
            ("runs", str(c.n)),
            ("recovered", str(c.recovered)),
        ):
            ET.SubElement(props, "property", name=k, value=v)
        if c.verdict.fails:
            failures += 1
            fail = ET.SubElement(case, "failure", message=c.detail, type=c.verdict.value)
            fail.text = f"{c.name}: {c.verdict.label}\n{c.detail}\nruns: {', '.join(c.run_ids)}"
        elif c.verdict is not Verdict.HOLDS:
            skipped += 1
            ET.SubElement(case, "skipped", message=f"{c.verdict.label}: {c.detail}")
        ET.SubElement(case, "system-out").text = c.detail
        for run_id, reason in c.aborted_runs:
            tests += 1
            errors += 1
            run_case = ET.SubElement(
                suite,
                "testcase",
                classname=f"rto.{c.fault}.{c.kind}.aborted",
                name=f"{run_id}: {c.name}",
                time="0",
            )
            err = ET.SubElement(run_case, "error", message=reason, type="aborted")
            err.text = f"run {run_id} of {c.name} aborted: {reason}"
    for m in summary.metrics:
        tests += 1
        skipped += 1
        case = ET.SubElement(
            suite, "testcase", classname=f"rto.metrics.{m.expectation.area}", name=m.expectation.id
        )
        ET.SubElement(case, "skipped", message=f"{m.verdict.label}: {m.detail}")
    if not summary.cells:
        tests += 1
        skipped += 1
        case = ET.SubElement(suite, "testcase", classname="rto", name="runs recorded")
        ET.SubElement(case, "skipped", message=summary.message or "no runs recorded")
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", str(skipped))
    suite.set("timestamp", summary.generated_at)
    root = ET.Element(
        "testsuites", name="rto", tests=str(tests), failures=str(failures), errors=str(errors)
    )
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
