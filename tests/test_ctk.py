"""Chaos Toolkit loads our experiment files and, run by chaoslib, records a row."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from chaoslib.experiment import ensure_experiment_is_valid, run_experiment
from fakes import FakeBackend, FakeHealer, fake_recorder_factory

from chaos import ctk
from chaos.clock import FakeClock
from chaos.journal import Journal
from chaos.results import ResultsStore, RunStatus
from chaos.runner import RunOptions

ROOT = Path(__file__).resolve().parents[1]
PODS = sorted((ROOT / "experiments" / "pods").glob("*.yaml"))


def _load(path: Path, runs: Path) -> dict[str, object]:
    doc = yaml.safe_load(path.read_text())
    doc["controls"][0]["provider"]["arguments"]["runs_dir"] = str(runs)
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("path", PODS, ids=[p.stem for p in PODS])
def test_chaoslib_validates_our_files(path: Path, tmp_path: Path) -> None:
    ensure_experiment_is_valid(_load(path, tmp_path))


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    monkeypatch.setenv("RTO_JOURNAL", str(tmp_path / "journal.jsonl"))
    clock = FakeClock(100.0)
    backend = FakeBackend(clock)
    monkeypatch.setattr(ctk, "BACKEND_FACTORY", lambda name: backend)
    monkeypatch.setattr(
        ctk,
        "OPTIONS_FACTORY",
        lambda: RunOptions(
            clock=clock,
            recorder_factory=fake_recorder_factory,  # type: ignore[arg-type]
            healer_factory=lambda names, profile: [FakeHealer(n) for n in names],  # type: ignore[arg-type,misc]
        ),
    )
    return backend


@pytest.mark.parametrize("name", ["process-crash", "storage-eio", "node-power-off"])
def test_chaos_run_records_the_same_row_as_rto_run(
    fake: FakeBackend, tmp_path: Path, name: str
) -> None:
    runs = tmp_path / "runs"
    journal = run_experiment(_load(ROOT / f"experiments/pods/{name}.yaml", runs))
    assert journal["status"] == "completed", journal
    assert journal["deviated"] is False
    [row] = ResultsStore(runs).load()
    assert row.status is RunStatus.RECOVERED
    assert (
        row.fault
        == yaml.safe_load((ROOT / f"experiments/pods/{name}.yaml").read_text())["extensions"][0][
            "fault"
        ]["type"]
    )
    assert row.rto_s is not None and row.rto_s > 0
    assert Journal().pending() == []


def test_failure_in_method_reverts_and_records_aborted(fake: FakeBackend, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    fake.fail_on["partition_node"] = "nft refused"
    journal = run_experiment(_load(ROOT / "experiments/pods/network-partition-node.yaml", runs))
    # chaoslib carries on after a failed action; the row still tells the truth.
    [row] = ResultsStore(runs).load()
    assert journal["run"][0]["status"] == "failed"
    assert row.status is not RunStatus.RECOVERED or row.error
    assert Journal().pending() == []
    assert fake.node_state("node1")["partitioned"] is False


def test_no_steady_state_stops_before_injecting(fake: FakeBackend, tmp_path: Path) -> None:
    from cluster.api import WorkloadKind

    fake.create_workload("web-crash", WorkloadKind.POD, "node1")
    fake.partition_workload("web-crash")
    opts = ctk.OPTIONS_FACTORY()
    opts.steady_timeout_s = 1.0
    ctk.OPTIONS_FACTORY = lambda: opts  # type: ignore[assignment]
    runs = tmp_path / "runs"
    journal = run_experiment(_load(ROOT / "experiments/pods/process-crash.yaml", runs))
    assert journal["status"] in ("interrupted", "failed")
    assert "kill_main_process(web-crash)" not in fake.calls
    [row] = ResultsStore(runs).load()
    assert row.status is RunStatus.ABORTED


def test_functions_without_a_control_say_what_to_do() -> None:
    from chaos.errors import HarnessError

    with pytest.raises(HarnessError, match=r"chaos\.ctk_control"):
        ctk.inject_fault()
