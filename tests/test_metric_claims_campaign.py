"""A campaign with ``metric_claims: true`` measures the metric claims in its own run:
the benchmark runs as a child process (a stand-in script here; the real one needs
the lab), its figures land next to the results with the campaign's name, and the
report reads them as "from this run". No lab is started by these tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeBackend, FakeHealer, fake_recorder_factory

from chaos.campaign import METRIC_CLAIMS_FILE, measure_metric_claims, plan_campaign, run_campaign
from chaos.results import ResultsStore, RunStatus
from chaos.runner import RunOptions
from core.clock import FakeClock
from core.errors import HarnessError, SpecError
from reports.analysis import CAMPAIGN_METRIC_FIGURES, load_campaign_metric_figures

ROOT = Path(__file__).resolve().parents[1]

# Writes what benchmarks/net_compare.py writes (the fields a report reads) to --out.
_BENCH = """
import json, sys
out = sys.argv[sys.argv.index("--out") + 1]
json.dump({"benchmark": "net_compare", "generated_at": "2026-12-01T12:00:00+00:00",
           "host": {"kernel": "6.1.0-test", "machine": "x86_64"}, "accelerator": "tcg",
           "caveat": "TCG", "ratios": {"network_latency_vm_over_pod": 9.5}}, open(out, "w"))
"""


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "bench.py"
    path.write_text(body)
    return path


def test_the_store_file_names_agree() -> None:
    assert METRIC_CLAIMS_FILE == CAMPAIGN_METRIC_FIGURES


def test_measured_figures_are_stored_as_this_campaigns(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    path = measure_metric_claims(runs, "standard", script=_script(tmp_path, _BENCH))
    assert path == runs / METRIC_CLAIMS_FILE
    assert [p.name for p in runs.iterdir()] == [METRIC_CLAIMS_FILE]  # no partial file left
    figures = load_campaign_metric_figures(runs)
    assert figures is not None and figures.campaign == "standard"
    assert figures.ratios == {"network_latency_vm_over_pod": 9.5}
    assert figures.provenance.startswith("from this run: campaign standard")


def test_a_failed_benchmark_says_why_and_stores_nothing(tmp_path: Path) -> None:
    script = _script(
        tmp_path, "import sys\nprint('libvirtd did not start', file=sys.stderr)\nsys.exit(3)\n"
    )
    with pytest.raises(HarnessError, match=r"exit 3\):\n    libvirtd did not start"):
        measure_metric_claims(tmp_path / "runs", "standard", script=script)
    assert not (tmp_path / "runs" / METRIC_CLAIMS_FILE).exists()


def _campaign(tmp_path: Path, extra: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "claims.yaml"
    crash = ROOT / "experiments" / "pods" / "process-crash.yaml"
    path.write_text(f"name: claims\n{extra}experiments:\n  - {{path: {crash}}}\n")
    return path


class Measurements:
    """Stands in for measure_metric_claims: records each call, may fail."""

    def __init__(self, error: str = "") -> None:
        self.calls: list[tuple[Path, str]] = []
        self.error = error

    def __call__(self, store_dir: Path, campaign: str) -> Path:
        self.calls.append((store_dir, campaign))
        if self.error:
            raise HarnessError(self.error)
        return store_dir / METRIC_CLAIMS_FILE


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str, m: Measurements) -> Path:
    monkeypatch.setenv("RTO_JOURNAL", str(tmp_path / "journal.jsonl"))
    clock = FakeClock(100.0)
    backend = FakeBackend(clock)
    opts = RunOptions(
        clock=clock,
        recorder_factory=fake_recorder_factory,  # type: ignore[arg-type]
        healer_factory=lambda names, profile: [FakeHealer(n) for n in names],  # type: ignore[arg-type,misc]
    )
    store = ResultsStore(tmp_path / "runs")
    run_campaign(
        plan_campaign(_campaign(tmp_path, extra)),
        store,
        backend_factory=lambda name: backend,
        options=opts,
        measure_claims=m,
    )
    return store.root


def test_a_campaign_measures_the_claims_after_its_runs_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = Measurements()
    runs = _run(tmp_path, monkeypatch, "vms: true\nmetric_claims: true\n", m)
    assert m.calls == [(runs, "claims")]
    assert [r.status for r in ResultsStore(runs).load()] == [RunStatus.RECOVERED]
    quiet = Measurements()
    _run(tmp_path / "b", monkeypatch, "vms: true\n", quiet)
    assert quiet.calls == []


def test_a_failed_measurement_fails_the_campaign_after_its_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = Measurements("no libvirtd")
    with pytest.raises(HarnessError, match="metric claims were not measured: no libvirtd"):
        _run(tmp_path, monkeypatch, "vms: true\nmetric_claims: true\n", m)
    assert len(ResultsStore(tmp_path / "runs").load()) == 1  # the runs were kept


@pytest.mark.parametrize(
    "extra", ["metric_claims: true\n", "backend: kube\nvms: true\nmetric_claims: true\n"]
)
def test_metric_claims_need_the_lab_with_vms(tmp_path: Path, extra: str) -> None:
    with pytest.raises(SpecError, match="metric_claims"):
        plan_campaign(_campaign(tmp_path, extra))
