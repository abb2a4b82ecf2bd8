"""Reports on metrics: verdicts on the handbook's metric claims from a synthetic
net_compare result, and the per-run resource metrics section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos.metrics import MetricsSummary
from chaos.results import ResultsStore, RunResult, RunStatus
from core.errors import SpecError
from reports.analysis import (
    Verdict,
    judge_metrics,
    load_metric_figures,
    metrics_rows,
)
from reports.build import build_report
from reports.expectations import DEFAULT_EXPECTATIONS, load_expectations


def _figures(tmp_path: Path, accelerator: str, **ratios: float) -> Path:
    path = tmp_path / f"net_compare-{accelerator}.json"
    path.write_text(
        json.dumps(
            {
                "benchmark": "net_compare",
                "generated_at": "2026-01-01T00:00:00+00:00",
                "accelerator": accelerator,
                "caveat": "VM figures are for QEMU TCG" if accelerator == "tcg" else "",
                "pod": {},
                "vmi": {},
                "ratios": ratios,
            }
        )
    )
    return path


def _by_id(verdicts: tuple[object, ...]) -> dict[str, object]:
    return {v.expectation.id: v for v in verdicts}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("ratios", "expected"),
    [
        # throughput VM/pod 0.75 within 0.70-0.80; latency 2x is not 6x.
        (
            {
                "network_throughput_vm_over_pod": 0.75,
                "network_latency_vm_over_pod": 2.0,
                "disk_latency_vm_over_pod": 1.5,
            },
            {
                "vm-network-throughput": Verdict.HOLDS,
                "bare-metal-latency": Verdict.CONTRADICTED,
                "vm-disk-latency-tolerance": Verdict.INFORMATIONAL,
            },
        ),
        # 0.5 is far below 0.70 (-10%); 6.5 is within 6 +- 10%.
        (
            {"network_throughput_vm_over_pod": 0.5, "network_latency_vm_over_pod": 6.5},
            {
                "vm-network-throughput": Verdict.CONTRADICTED,
                "bare-metal-latency": Verdict.HOLDS,
                "vm-disk-latency-tolerance": Verdict.NOT_MEASURED,
            },
        ),
    ],
)
def test_kvm_figures_judge_the_claims(
    tmp_path: Path, ratios: dict[str, float], expected: dict[str, Verdict]
) -> None:
    exp = load_expectations(DEFAULT_EXPECTATIONS)
    figures = load_metric_figures(_figures(tmp_path, "kvm", **ratios))
    got = _by_id(judge_metrics(exp, figures))
    assert {k: v.verdict for k, v in got.items()} == expected  # type: ignore[attr-defined]


def test_tcg_figures_inform_and_say_what_they_would_mean(tmp_path: Path) -> None:
    exp = load_expectations(DEFAULT_EXPECTATIONS)
    figures = load_metric_figures(
        _figures(
            tmp_path,
            "tcg",
            network_throughput_vm_over_pod=0.05,
            network_latency_vm_over_pod=20.0,
            disk_latency_vm_over_pod=3.0,
        )
    )
    got = judge_metrics(exp, figures)
    assert {m.verdict for m in got} == {Verdict.INFORMATIONAL}
    throughput = _by_id(got)["vm-network-throughput"]
    assert "as measured: contradicted" in throughput.detail  # type: ignore[attr-defined]
    assert all("TCG" in m.detail and "KVM" in m.detail for m in got)
    assert not any(m.verdict.fails for m in got)


def test_no_figures_means_not_measured() -> None:
    exp = load_expectations(DEFAULT_EXPECTATIONS)
    got = judge_metrics(exp, None)
    assert {m.verdict for m in got} == {Verdict.NOT_MEASURED}
    assert all("net_compare" in m.detail for m in got)


def test_bad_figures_file_is_a_spec_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"accelerator": "tcg"}')
    with pytest.raises(SpecError, match="net_compare"):
        load_metric_figures(bad)
    with pytest.raises(SpecError, match="net_compare"):
        load_metric_figures(tmp_path / "missing.json")


def _run(n: int, kind: str, metrics: MetricsSummary | None) -> RunResult:
    return RunResult(
        run_id=f"m{n}",
        experiment="crash",
        fault="process-crash",
        kind=kind,
        backend="lab",
        profile="fast",
        started_at="2026-01-01T00:00:00+00:00",
        status=RunStatus.RECOVERED,
        rto_s=1.0,
        metrics=metrics,
    )


_POD = MetricsSummary(
    kind="pod",
    period_s=0.5,
    samples=20,
    duration_s=10.0,
    cpu_s=0.5,
    host_cpu_s=0.5,
    net_rx_bytes=10240,
    mem_bytes_mean=8 * 2**20,
    overhead_bytes_mean=0,
)
_VMI = MetricsSummary(
    kind="vmi",
    period_s=0.5,
    samples=20,
    duration_s=10.0,
    cpu_s=4.0,
    host_cpu_s=6.0,
    disk_wr_ops=50,
    mem_bytes_mean=30 * 2**20,
    overhead_bytes_mean=160 * 2**20,
)


def test_metrics_rows_average_rates_per_fault_and_kind() -> None:
    rows = metrics_rows([_run(1, "pod", _POD), _run(2, "vmi", _VMI), _run(3, "vmi", None)])
    by_kind = {r.kind: r for r in rows}
    assert by_kind["pod"].cpu_cores == pytest.approx(0.05)
    assert by_kind["pod"].net_rx_kib_s == pytest.approx(1.0)
    assert by_kind["vmi"].runs == 1  # the run without metrics is left out
    assert by_kind["vmi"].host_cpu_cores == pytest.approx(0.6)
    assert by_kind["vmi"].overhead_mib == pytest.approx(160)
    assert by_kind["vmi"].disk_wr_ops_s == pytest.approx(5)


def test_report_shows_metric_verdicts_and_resource_metrics(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "runs")
    for n, (kind, m) in enumerate([("pod", _POD), ("vmi", _VMI)]):
        store.append(_run(n, kind, m))
    figures = _figures(
        tmp_path, "tcg", network_throughput_vm_over_pod=0.1, network_latency_vm_over_pod=9.0
    )
    summary = build_report(store.path, tmp_path / "out", metric_figures=figures)
    [source] = summary.metric_figures
    assert source.accelerator == "tcg" and not source.campaign
    assert len(summary.run_metrics) == 2
    md = (tmp_path / "out" / "summary.md").read_text()
    html = (tmp_path / "out" / "index.html").read_text()
    for text in (md, html):
        assert "Resource metrics" in text
        assert "QEMU overhead MiB" in text
        assert "software emulation" in text
    assert "| process-crash | vmi | 1 | 0.4 | 0.6 | 30 | 160 |" in md


def _campaign_figures(store: Path, accelerator: str, **ratios: float) -> Path:
    """What chaos.campaign.measure_metric_claims leaves in a store."""
    store.mkdir(parents=True, exist_ok=True)
    path = store / "metric_claims.json"
    path.write_text(
        json.dumps(
            {
                "benchmark": "net_compare",
                "generated_at": "2026-12-01T12:00:00+00:00",
                "host": {"kernel": "6.1.0-test", "machine": "x86_64"},
                "accelerator": accelerator,
                "campaign": "standard",
                "ratios": ratios,
            }
        )
    )
    return path


def test_each_claim_says_whether_its_figure_is_from_this_run_or_a_benchmark_file(
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs"
    store = ResultsStore(runs)
    store.append(_run(0, "pod", _POD))
    # The campaign measured latency only (under KVM); throughput comes from the file.
    _campaign_figures(runs, "kvm", network_latency_vm_over_pod=1.1)
    bench = _figures(tmp_path, "tcg", network_throughput_vm_over_pod=0.1)
    summary = build_report(runs, tmp_path / "out", metric_figures=bench)
    assert [f.campaign for f in summary.metric_figures] == ["standard", ""]
    by_metric = {m.expectation.metric: m for m in summary.metrics}
    latency = by_metric["network_latency_vm_over_pod"]
    assert latency.from_this_run and latency.provenance.startswith("from this run: campaign")
    assert "2026-12-01" in latency.provenance and "x86_64 6.1.0-test" in latency.provenance
    assert "KVM (hardware virtualisation)" in latency.provenance
    throughput = by_metric["network_throughput_vm_over_pod"]
    assert not throughput.from_this_run
    assert throughput.provenance.startswith(f"from benchmark file {bench}")
    assert "not from this run" in throughput.provenance and "TCG" in throughput.provenance
    assert throughput.verdict is Verdict.INFORMATIONAL  # TCG figures never judge
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| claim | verdict | why | figure from | note |" in md
    assert "from this run: campaign standard" in md and "from benchmark file" in md


def test_a_campaign_file_without_its_campaign_is_refused(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    path = _campaign_figures(runs, "kvm", network_latency_vm_over_pod=1.1)
    path.write_text(path.read_text().replace('"campaign": "standard"', '"campaign": ""'))
    with pytest.raises(SpecError, match="rto campaign"):
        build_report(runs, tmp_path / "out")
