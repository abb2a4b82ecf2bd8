"""Build a report directory from the results store: HTML, Markdown, JUnit, PNG plots.

Filled from ``runs/results.jsonl`` (one :class:`chaos.results.RunResult` per
line) and an expectations file; read by the ``rto report`` CLI, by CI (the
JUnit file and :func:`reports.analysis.failing_cells` on the returned
summary) and by people (``index.html``, ``summary.md``). A report is rebuilt
from the store alone (its rows, and the metric figures a campaign with
``metric_claims: true`` measured into it), plus the benchmark file
``benchmarks/results/net_compare.json`` for the metric claims the store has no
figure for, each claim labelled with where its figure came from. A store
holding two campaigns or more also gets the history section of
``reports.history`` (each cell's RTO per campaign, the regression rule's
verdict, ``plots/history.png``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from core.errors import HarnessError
from reports.analysis import (
    ReportSummary,
    judge_metrics,
    load_campaign_metric_figures,
    load_metric_figures,
    load_runs,
    metrics_rows,
    runs_frame,
    summarise,
)
from reports.expectations import DEFAULT_EXPECTATIONS, load_expectations
from reports.history import campaign_count, history_html, plot_history, summarise_history
from reports.plots import plot_rto, plot_timeline
from reports.render import render_html, render_junit, render_markdown

__all__ = ["DEFAULT_MAX_RUN_PLOTS", "ReportSummary", "build_report"]

# A nightly store holds hundreds of runs; a timeline PNG is ~30 kB embedded and
# ~0.3 s to draw, so beyond this many runs the page keeps the event tables only.
DEFAULT_MAX_RUN_PLOTS = 100


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def build_report(
    results: Path,
    out_dir: Path,
    expectations: Path | None = None,
    *,
    max_run_plots: int = DEFAULT_MAX_RUN_PLOTS,
    metric_figures: Path | None = None,
) -> ReportSummary:
    """Write ``out_dir``/index.html, summary.md, junit.xml and plots/*.png.

    ``results`` is the ``results.jsonl`` file or the directory holding it. An
    empty or missing store is not an error: the report says "no runs recorded"
    and still shows the documented table. A malformed store or expectations
    file raises :class:`core.errors.SpecError`.
    """
    exp_path = expectations or DEFAULT_EXPECTATIONS
    exp = load_expectations(exp_path)
    runs = load_runs(results)
    frame = runs_frame(runs)
    cells = summarise(frame, exp)
    # Pod-vs-VMI figures: a campaign's own (metric_claims.json in the store) first,
    # then the given file, else benchmarks/results/net_compare.json if any.
    figures = tuple(
        f
        for f in (load_campaign_metric_figures(results), load_metric_figures(metric_figures))
        if f is not None
    )
    message = "" if runs else f"no runs recorded in {results}: nothing to compare yet"

    plots_dir = out_dir / "plots"
    files: list[str] = []
    rto_plots: dict[str, bytes] = {}
    for fault in dict.fromkeys(frame["fault"].tolist()):
        rto_plots[fault] = plot_rto(frame, fault, exp)
    timeline_plots = {r.run_id: plot_timeline(r) for r in runs[:max_run_plots]}
    pngs = {
        **{f"rto-{_safe(f)}.png": b for f, b in rto_plots.items()},
        **{f"run-{_safe(r)}.png": b for r, b in timeline_plots.items()},
    }
    history = ""
    if campaign_count(runs) >= 2:
        hist = summarise_history(runs)
        pngs["history.png"] = plot_history(hist)
        history = history_html(hist, pngs["history.png"])

    summary = ReportSummary(
        results_path=str(results),
        expectations_path=str(exp_path),
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        runs=len(runs),
        cells=cells,
        metrics=judge_metrics(exp, figures),
        run_metrics=metrics_rows(runs),
        metric_figures=figures,
        expectations=exp,
        message=message,
        files=(),
    )
    outputs = {
        "index.html": render_html(summary, runs, rto_plots, timeline_plots, history),
        "summary.md": render_markdown(summary),
        "junit.xml": render_junit(summary),
    }
    try:
        plots_dir.mkdir(parents=True, exist_ok=True)
        for name, png in pngs.items():
            (plots_dir / name).write_bytes(png)
            files.append(f"plots/{name}")
        for name, text in outputs.items():
            (out_dir / name).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise HarnessError(
            f"cannot write the report into {out_dir}: {exc.strerror} ({exc.filename})"
        ) from exc
    return summary.model_copy(update={"files": (*outputs, *files)})
