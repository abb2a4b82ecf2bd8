"""``rto report`` as a CI gate: by default it fails on contradicted, no-recovery and
aborted cells; ``--fail-on none`` only writes the report."""

from __future__ import annotations

from pathlib import Path

from campaign_rows import STANDARD, campaign_rows
from click.testing import CliRunner

from chaos import cli
from chaos.results import ResultsStore
from reports.analysis import FAIL_ON_DEFAULT


def _store(tmp_path: Path) -> Path:
    store = ResultsStore(tmp_path / "runs")
    for r in campaign_rows(STANDARD, vmi="aborted"):
        if r.kind == "vmi" or r.fault == "storage-lost":
            store.append(r)
    return store.root


def test_the_default_fail_on_is_what_a_ci_gate_expects() -> None:
    option = next(p for p in cli.report_cmd.params if p.name == "fail_on")
    assert isinstance(option.default, str)
    assert set(option.default.split(",")) == set(FAIL_ON_DEFAULT)


def test_report_fails_on_aborted_runs_by_default(tmp_path: Path) -> None:
    runs, out = _store(tmp_path), tmp_path / "report"
    res = CliRunner().invoke(cli.cli, ["report", "--runs-dir", str(runs), "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "aborted" in res.output and "to be Ready" in res.output
    assert (out / "junit.xml").exists()
    res = CliRunner().invoke(
        cli.cli, ["report", "--runs-dir", str(runs), "--out", str(out), "--fail-on", "none"]
    )
    assert res.exit_code == 0, res.output
