"""The standard campaign's report, from rows shaped like its runs: no VMI-dependent
"contradicted" when every VMI run aborted, JUnit errors = aborted runs, RTO plot
tick labels that do not overlap (measured with matplotlib's text extents on the
real plotting code), and timelines of never-probed runs that draw no health."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from campaign_rows import STANDARD, campaign_rows
from matplotlib.figure import Figure

from chaos.results import ResultsStore, RunStatus
from reports.analysis import FAIL_ON_DEFAULT, Side, Verdict, failing_cells, runs_frame
from reports.build import build_report
from reports.expectations import FAULTS, load_expectations
from reports.plots import overlapping_tick_labels, rto_figure, timeline_figure

GREEN = (0x27 / 255, 0xAE / 255, 0x60 / 255)


def test_all_vmi_runs_aborted_gives_no_vmi_dependent_verdict(tmp_path: Path) -> None:
    rows = campaign_rows(STANDARD, vmi="aborted")
    aborted = [r for r in rows if r.status is RunStatus.ABORTED]
    assert len(aborted) == 23 and {r.kind for r in aborted} == {"vmi"}
    store = ResultsStore(tmp_path / "runs")
    for r in rows:
        store.append(r)
    summary = build_report(store.root, tmp_path / "report")

    for c in summary.cells:
        if c.kind == "vmi":
            assert (c.verdict, c.side) == (Verdict.NOT_MEASURED, Side.ABORTED), c.name
            assert "aborted before the fault" in c.detail and "to be Ready" in c.detail
        elif c.verdict is Verdict.CONTRADICTED:
            # Only the pod's own range claims may be contradicted, never a
            # comparison with the VMI that was not measured.
            assert "vmi" not in c.detail, c.detail
    hang = summary.cell("storage-lost", "pod", variant="hang", profile="kubernetes-defaults")
    assert hang.verdict is Verdict.NOT_MEASURED and "vmi side" in hang.detail

    suite = ET.parse(tmp_path / "report" / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("errors") == "23"
    failing = failing_cells(summary, set(FAIL_ON_DEFAULT))
    assert sum(f.cell.aborted for f in failing if f.cell.kind == "vmi") == 23

    page = (tmp_path / "report" / "index.html").read_text()
    assert "VMI figures: TCG (software emulation)" in page
    assert "no probe was sent" in page
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "VMI figures: TCG (software emulation)" in md


@pytest.mark.parametrize("fault", FAULTS)
def test_rto_plot_tick_labels_do_not_overlap(fault: str) -> None:
    frame = runs_frame(campaign_rows(STANDARD, repetitions=3))
    fig = rto_figure(frame, fault, load_expectations())
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert len(labels) >= 2  # both profiles, so there is something to collide
    assert overlapping_tick_labels(fig) == []


def test_the_overlap_check_sees_overlapping_labels() -> None:
    fig = Figure(figsize=(3, 2))
    ax = fig.add_subplot()
    ax.set_xticks([0, 1, 2])
    ax.set_xticklabels(["healers: eviction+migration+watchdog lab/kubernetes-defaults"] * 3)
    assert len(overlapping_tick_labels(fig)) == 3


def _green_bars(fig: Figure) -> int:
    return sum(
        1
        for coll in fig.axes[0].collections
        for colour in coll.get_facecolors()
        if tuple(round(float(x), 3) for x in colour[:3]) == tuple(round(x, 3) for x in GREEN)
    )


def test_timeline_of_a_never_probed_run_draws_no_health() -> None:
    rows = campaign_rows(STANDARD, vmi="aborted")
    never = next(r for r in rows if r.status is RunStatus.ABORTED)
    probed = next(r for r in rows if r.status is RunStatus.RECOVERED)
    assert _green_bars(timeline_figure(probed)) == 1
    fig = timeline_figure(never)
    assert _green_bars(fig) == 0
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("no probe was sent" in t for t in texts)
    assert any("no fault injected" in t for t in texts)
