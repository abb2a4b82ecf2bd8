"""Tests of the reports package: expectations, verdicts, CI failures, renderers.

Synthetic results stores are written with chaos.results.RunResult, with values
chosen so every verdict is known in advance.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from chaos.results import ResultsStore, RunResult, RunStatus
from core.errors import SpecError
from core.timeline import EventKind, TimelineEvent
from reports.analysis import CellSummary, Verdict, failing_cells, runs_frame, summarise
from reports.build import build_report
from reports.expectations import DEFAULT_EXPECTATIONS, load_expectations
from reports.openmetrics import metrics_text, report_metrics
from reports.plots import plot_rto, plot_timeline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _timeline(rto: float | None) -> list[TimelineEvent]:
    events = [
        TimelineEvent(t=1.0, kind=EventKind.FAULT_INJECTED, source="runner", message="kill"),
        TimelineEvent(t=1.1, kind=EventKind.PROBE_FAIL, source="probe"),
        TimelineEvent(t=1.3, kind=EventKind.CONTROL, source="control", message="phase Failed"),
        TimelineEvent(t=1.5, kind=EventKind.HEALER_ACTION, source="watchdog", message="reset"),
    ]
    if rto is not None:
        events.append(TimelineEvent(t=1.1 + rto, kind=EventKind.PROBE_OK, source="probe"))
    end = 1.1 + (rto if rto is not None else 30.0) + 0.5
    events.append(TimelineEvent(t=end, kind=EventKind.FAULT_REVERTED, source="runner"))
    return events


_counter = iter(range(1_000_000))


def run(
    fault: str,
    kind: str,
    rto: float | None,
    *,
    status: RunStatus = RunStatus.RECOVERED,
    profile: str = "kubernetes-defaults",
    backend: str = "lab",
    healers: tuple[str, ...] = (),
    variant: str = "",
) -> RunResult:
    n = next(_counter)
    return RunResult(
        run_id=f"run-{n:04d}",
        experiment=f"{fault}-{kind}",
        fault=fault,
        variant=variant,
        kind=kind,
        backend=backend,
        profile=profile,
        healers=list(healers),
        started_at="2025-01-01T00:00:00+00:00",
        status=status,
        rto_s=rto,
        detection_s=0.25,
        healer_action_s=0.5 if healers else None,
        outage_start_s=0.1,
        same_instance=kind == "vmi",
        timeline=_timeline(rto if status is RunStatus.RECOVERED else None),
    )


def sample_rows() -> list[RunResult]:
    """Runs whose verdicts are known (see the comments)."""
    return [
        # process crash pod, documented 0..10 s: medians 0.5 -> holds
        run("process-crash", "pod", 0.4),
        run("process-crash", "pod", 0.5),
        run("process-crash", "pod", 0.9),
        # process crash vmi, documented >= 30 s: median 0.6 -> contradicted, 50x faster
        run("process-crash", "vmi", 0.5, healers=("watchdog",)),
        run("process-crash", "vmi", 0.6, healers=("watchdog",)),
        run("process-crash", "vmi", 0.7, healers=("watchdog",)),
        # the same on the fast profile: scaled, no verdict
        run("process-crash", "vmi", 0.6, healers=("watchdog",), profile="fast"),
        # node power-off pod, documented 300..360: 350 -> holds
        run("node-power-off", "pod", 350.0),
        # node power-off vmi without healers: never comes back -> no recovery
        run("node-power-off", "vmi", None, status=RunStatus.NOT_RECOVERED),
        # node drain vmi with migration: 0.4 s within 0..1 -> holds; kube backend
        run("node-drain", "vmi", 0.4, healers=("migration",), backend="kube", profile="kind"),
        # partition: informational
        run("network-partition", "pod", 55.0, variant="node"),
        # storage lost: pod 2 s vs vmi 40 s -> contradicted for both (20x)
        run("storage-lost", "pod", 2.0, variant="eio"),
        run("storage-lost", "vmi", 40.0, variant="eio"),
        # storage lost hang: 3 s vs 6 s -> within 2x -> holds for both
        run("storage-lost", "pod", 3.0, variant="hang"),
        run("storage-lost", "vmi", 6.0, variant="hang"),
        # an aborted run only: not measured
        run("network-partition", "vmi", None, status=RunStatus.ABORTED, variant="node"),
    ]


Cells = tuple[CellSummary, ...]


@pytest.fixture(scope="module")
def summary_cells() -> Cells:
    return summarise(sample_rows(), load_expectations())


def _cell(cells: Cells, fault: str, kind: str, **match: str) -> CellSummary:
    found = [
        c
        for c in cells
        if c.fault == fault and c.kind == kind and all(getattr(c, k) == v for k, v in match.items())
    ]
    assert len(found) == 1, found
    return found[0]


# ------------------------------------------------------------------ expectations


def test_shipped_expectations_cover_every_fault_and_kind() -> None:
    exp = load_expectations()
    assert len(exp.rto) == 12  # the handbook's 5 faults and network-flap, pod and vmi
    vmi_crash = exp.get("process-crash", "vmi")
    assert vmi_crash is not None and vmi_crash.claim_text == "30 s+"
    # The handbook's "node down" row is carried by both the drain and the power-off rows.
    for fault in ("node-drain", "node-power-off"):
        e = exp.get(fault, "vmi")
        assert e is not None and e.handbook_row == "node down"
        assert e.claim_text == "0 s (hot migration)"
    assert {m.id for m in exp.metrics} >= {"vm-network-throughput", "bare-metal-latency"}


def _write_bad(tmp_path: Path, mutate: Callable[[dict[str, Any]], None]) -> Path:
    raw = yaml.safe_load(DEFAULT_EXPECTATIONS.read_text())
    mutate(raw)
    path = tmp_path / "bad-expectations.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_malformed_expectations_name_file_and_field(tmp_path: Path) -> None:
    def bad_max(raw: dict[str, Any]) -> None:
        raw["rto"][1]["claim"]["max_s"] = "lots"

    path = _write_bad(tmp_path, bad_max)
    with pytest.raises(SpecError) as err:
        load_expectations(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "rto[1] (process-crash/vmi).claim.max_s" in msg
    assert "\n" not in msg  # one paragraph


def test_expectations_missing_field_and_typo_are_errors(tmp_path: Path) -> None:
    def typo(raw: dict[str, Any]) -> None:
        del raw["rto"][3]["mechanism"]
        raw["rto"][0]["claim_txt"] = "oops"

    with pytest.raises(SpecError) as err:
        load_expectations(_write_bad(tmp_path, typo))
    assert "rto[3] (node-drain/vmi).mechanism: Field required" in str(err.value)
    assert "rto[0] (process-crash/pod).claim_txt" in str(err.value)


def test_expectations_incomplete_or_not_yaml(tmp_path: Path) -> None:
    def drop(raw: dict[str, Any]) -> None:
        raw["rto"] = [e for e in raw["rto"] if e["fault"] != "storage-lost" or e["kind"] != "vmi"]

    with pytest.raises(SpecError, match="no entry for storage-lost/vmi"):
        load_expectations(_write_bad(tmp_path, drop))
    broken = tmp_path / "broken.yaml"
    broken.write_text("rto: [\n  {fault: x\n")
    with pytest.raises(SpecError, match=r"broken.yaml is not valid YAML at line"):
        load_expectations(broken)
    with pytest.raises(SpecError, match="cannot be read"):
        load_expectations(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------- verdicts


def test_range_verdicts(summary_cells: Cells) -> None:
    pod = _cell(summary_cells, "process-crash", "pod")
    assert pod.verdict is Verdict.HOLDS
    assert (pod.n, pod.recovered, pod.median_s, pod.min_s, pod.max_s) == (3, 3, 0.5, 0.4, 0.9)

    vmi = _cell(summary_cells, "process-crash", "vmi", profile="kubernetes-defaults")
    assert vmi.verdict is Verdict.CONTRADICTED
    assert vmi.healers == "watchdog"
    assert "measured median 0.60 s vs documented >= 30 s" in vmi.detail
    assert "50x faster" in vmi.detail
    assert vmi.same_instance_share == 1.0

    assert _cell(summary_cells, "node-power-off", "pod").verdict is Verdict.HOLDS
    drain = _cell(summary_cells, "node-drain", "vmi")
    assert (drain.backend, drain.verdict) == ("kube", Verdict.HOLDS)


def test_scaled_profile_gets_no_verdict(summary_cells: Cells) -> None:
    fast = _cell(summary_cells, "process-crash", "vmi", profile="fast")
    assert fast.verdict is Verdict.SCALED
    assert fast.verdict.label == "scaled timings, no verdict"


def test_no_recovery_informational_and_aborted(summary_cells: Cells) -> None:
    lost = _cell(summary_cells, "node-power-off", "vmi")
    assert lost.verdict is Verdict.NO_RECOVERY
    assert (lost.recovered, lost.not_recovered, lost.median_s) == (0, 1, None)
    part = _cell(summary_cells, "network-partition", "pod")
    assert part.verdict is Verdict.INFORMATIONAL and "55.0 s" in part.detail
    aborted = _cell(summary_cells, "network-partition", "vmi")
    assert (aborted.verdict, aborted.aborted) == (Verdict.NOT_MEASURED, 1)


def test_same_behaviour_is_relational(summary_cells: Cells) -> None:
    for kind in ("pod", "vmi"):
        eio = _cell(summary_cells, "storage-lost", kind, variant="eio")
        assert eio.verdict is Verdict.CONTRADICTED
        assert "vmi 20x slower" in eio.detail
        assert _cell(summary_cells, "storage-lost", kind, variant="hang").verdict is Verdict.HOLDS


def test_range_slower_than_documented() -> None:
    cells = summarise([run("node-power-off", "pod", 720.0)], load_expectations())
    assert cells[0].verdict is Verdict.CONTRADICTED
    assert "2.0x slower" in cells[0].detail


def test_no_outage_counts_as_zero_rto() -> None:
    cells = summarise(
        [run("process-crash", "vmi", None, status=RunStatus.NO_OUTAGE)], load_expectations()
    )
    assert (cells[0].median_s, cells[0].verdict) == (0.0, Verdict.CONTRADICTED)
    assert "no outage at all" in cells[0].detail


def test_a_variant_the_claim_does_not_cover_is_its_own_informational_cell() -> None:
    # A drain of a VMI without live migration (evictionStrategy None) is a cold
    # restart: not judged against "live migration: 0 s", not mixed with it.
    rows = [
        run("node-drain", "vmi", 0.4),
        run("node-drain", "vmi", 7.3, variant="evictionStrategy=None"),
    ]
    cells = {c.variant: c for c in summarise(rows, load_expectations())}
    assert cells[""].median_s == 0.4 and cells[""].verdict is Verdict.HOLDS
    cold = cells["evictionStrategy=None"]
    assert cold.median_s == 7.3 and cold.verdict is Verdict.INFORMATIONAL
    assert "is not about [evictionStrategy=None]" in cold.detail


def test_healer_order_does_not_split_cells() -> None:
    rows = [
        run("process-crash", "pod", 1.0, healers=("watchdog", "eviction")),
        run("process-crash", "pod", 2.0, healers=("eviction", "watchdog")),
    ]
    frame = runs_frame(rows)
    assert set(frame["healers"]) == {"eviction+watchdog"}
    assert len(summarise(frame, load_expectations())) == 1


# -------------------------------------------------------------------- CI mode


def test_failing_cells_by_verdict_and_budget(summary_cells: Cells) -> None:
    failing = failing_cells(summary_cells, {"contradicted"}, {})
    names = {(f.cell.fault, f.cell.kind, f.cell.variant) for f in failing}
    assert names == {
        ("process-crash", "vmi", ""),
        ("storage-lost", "pod", "eio"),
        ("storage-lost", "vmi", "eio"),
    }
    assert failing_cells(summary_cells, set(), {}) == []
    both = failing_cells(summary_cells, {"contradicted", "no-recovery"}, {})
    assert len(both) == 4
    # Budgets: most specific key wins; a run that never recovered breaks any budget.
    over = failing_cells(summary_cells, set(), {"*": 100.0, "node-power-off/pod": 400.0})
    assert {(f.cell.fault, f.cell.kind) for f in over} == {("node-power-off", "vmi")}
    over = failing_cells(summary_cells, set(), {"pod": 1.0})
    reasons = {f.cell.fault: f.reason for f in over}
    assert "max RTO 3.0 s over budget pod: 1.0 s" in reasons["storage-lost"]
    assert "node-power-off" in reasons and "process-crash" not in reasons
    with pytest.raises(SpecError, match="not a verdict"):
        failing_cells(summary_cells, {"wrong"}, {})


# ------------------------------------------------------------------ rendering


def test_plots_are_png() -> None:
    rows = sample_rows()
    exp = load_expectations()
    png = plot_rto(runs_frame(rows), "process-crash", exp)
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    assert plot_timeline(rows[0]).startswith(PNG_MAGIC)
    # A run without any event still plots (an aborted run before injection).
    empty = rows[-1].model_copy(update={"timeline": []})
    assert plot_timeline(empty).startswith(PNG_MAGIC)


def test_build_report_writes_everything(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "runs")
    for r in sample_rows():
        store.append(r)
    out = tmp_path / "report"
    summary = build_report(store.path, out)

    assert summary.runs == 16
    assert summary.verdict_counts()["contradicted"] == 3
    # The CLI's --fail-on works on the summary build_report returns.
    assert len(failing_cells(summary, {"contradicted"}, {})) == 3
    for name in ("index.html", "summary.md", "junit.xml"):
        assert (out / name).stat().st_size > 0
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert "rto-process-crash.png" in pngs and len(pngs) == 5 + 16
    assert all(f"plots/{p}" in summary.files for p in pngs)

    page = (out / "index.html").read_text()
    assert "<h2>Documented vs measured</h2>" in page
    assert page.count("data:image/png;base64,") == 5 + 16
    assert "RestartPolicy=Always: seconds" in page and "QEMU watchdog restart: 30 s+" in page
    assert "50x faster" in page
    assert "scaled timings, no verdict" in page
    assert 'id="run-run-' in page and "kubevirt/kubevirt PR #10961" in page
    assert "http://" not in page and "https://" not in page  # self-contained

    md = (out / "summary.md").read_text()
    assert "| fault | setting | documented pod | measured pod |" in md
    assert "**contradicted**" in md and "VM throughput 20-30% lower" in md

    root = ET.parse(out / "junit.xml").getroot()
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    # One testcase per cell, per metric claim and per aborted run (an error).
    assert len(cases) == len(summary.cells) + len(summary.metrics) + 1
    [error] = suite.findall("testcase/error")
    assert suite.get("errors") == "1" and error.get("type") == "aborted"
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failed == {
        c.name for c in summary.cells if c.verdict in (Verdict.CONTRADICTED, Verdict.NO_RECOVERY)
    }
    assert len(failed) == 4 and suite.get("failures") == "4"
    holds = [c for c in cases if c.get("name") == summary.cell("node-drain", "vmi").name]
    assert holds[0].find("failure") is None and holds[0].find("skipped") is None


def test_empty_store_says_no_runs(tmp_path: Path) -> None:
    out = tmp_path / "report"
    summary = build_report(tmp_path / "runs" / "results.jsonl", out)
    assert summary.runs == 0 and summary.cells == ()
    assert "no runs recorded" in summary.message
    assert "no runs recorded" in (out / "index.html").read_text()
    assert "no runs recorded" in (out / "summary.md").read_text()
    # The documented table is still there, every fault marked not measured.
    assert (out / "index.html").read_text().count("not measured") >= 10
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"


def test_bad_store_line_is_a_spec_error(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    results.write_text('{"run_id": "x"}\n')
    with pytest.raises(SpecError, match="line 1 is not a valid run result"):
        build_report(results, tmp_path / "out")


def test_a_kube_cluster_on_a_scaled_profile_gets_no_verdict() -> None:
    """The lab's real cluster started with ``fast`` runs scaled knobs, like the model."""
    from reports.analysis import judged_with_real_timings

    assert not judged_with_real_timings("kube", "fast")
    assert judged_with_real_timings("kube", "kind")  # a cluster's own timings
    assert judged_with_real_timings("kube", "kubernetes-defaults")
    assert not judged_with_real_timings("lab", "fast")


def test_cells_name_the_platform_they_were_measured_on(tmp_path: Path) -> None:
    """Pod cells say which Kubernetes (or the lab's model) gave their figures."""
    real = run("process-crash", "pod", 1.9, backend="kube").model_copy(
        update={"platform": "Kubernetes v1.34.4"}
    )
    model = run("process-crash", "pod", 0.04).model_copy(update={"platform": "lab model"})
    cells = summarise([real, model], load_expectations())
    assert {(c.backend, c.platform) for c in cells} == {
        ("kube", "Kubernetes v1.34.4"),
        ("lab", "lab model"),
    }
    store = ResultsStore(tmp_path / "runs")
    for r in (real, model):
        store.append(r)
    build_report(store.path, tmp_path / "out")
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "on Kubernetes v1.34.4" in md and "on lab model" in md


def test_each_rto_is_shown_with_its_resolution(tmp_path: Path) -> None:
    """Rows carrying their brackets show 'to within', next to the RTO of the run and
    of the cell; rows written before brackets existed say it was not recorded."""
    sharp = [
        run("process-crash", "pod", rto).model_copy(
            update={
                "probe_interval_s": 0.02,
                "edge_probe_interval_s": 0.002,
                "probes_edge": 40,
                "outage_start_bracket_s": 0.0012,
                "recovery_bracket_s": width - 0.0012,
                "rto_uncertainty_s": width,
            }
        )
        for rto, width in ((1.2345, 0.0031), (1.3012, 0.0024))
    ]
    old = run("node-drain", "pod", 4.2)
    store = ResultsStore(tmp_path / "runs")
    for r in (*sharp, old):
        store.append(r)
    summary = build_report(store.path, tmp_path / "out")
    crash = next(c for c in summary.cells if c.fault == "process-crash")
    assert crash.uncertainty_max_s == pytest.approx(0.0031) and crash.uncertainty_known == 2
    assert crash.resolution == "each to within 3.1 ms; 20 ms probes, 2.0 ms edge probes"
    drain = next(c for c in summary.cells if c.fault == "node-drain")
    assert drain.resolution.startswith("resolution not recorded")
    html = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    # The run's title: the RTO with the digits its resolution carries, then the resolution.
    assert "RTO 1.234 s (to within 3.1 ms; 20 ms probes, 2.0 ms edge probes)" in html
    assert "outage start known to within 1.2 ms, recovery to within 1.9 ms" in html
    assert "<th>RTO resolution</th>" in html and "each to within 3.1 ms" in html
    md = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert "p95 1.3 s (each to within 3.1 ms; 20 ms probes, 2.0 ms edge probes)" in md
    # And in the metrics a dashboard scrapes.
    metrics = report_metrics(summary, store.load())
    text = metrics_text(metrics.registry, tmp_path / "rto.prom").decode()
    line = next(
        x for x in text.splitlines() if x.startswith("rto_harness_rto_uncertainty_max_seconds{")
    )
    assert 'fault="process-crash"' in line and line.endswith(" 0.0031")
