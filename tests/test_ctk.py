"""Chaos Toolkit loads our experiment files and, run by chaoslib, records a row:
in ./runs of the working directory (the store `rto run` and `rto report` use),
with the lab's profile, never in a second store named by the control."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from chaoslib.experiment import ensure_experiment_is_valid, run_experiment
from fakes import FakeBackend, FakeHealer, fake_recorder_factory

from chaos import ctk
from chaos.journal import Journal
from chaos.results import ResultsStore, RunStatus
from chaos.runner import RunOptions
from core.clock import FakeClock

ROOT = Path(__file__).resolve().parents[1]
PODS = sorted((ROOT / "experiments" / "pods").glob("*.yaml"))


def _load(path: Path, runs: Path, runs_dir: str | None = None) -> dict[str, object]:
    """The experiment as chaoslib reads it; ``runs`` is where its row must land."""
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    # The shipped files name ./runs; the tests run in tmp_path (see `fake`).
    assert runs == Path.cwd() / doc["controls"][0]["provider"]["arguments"]["runs_dir"]
    if runs_dir is not None:
        doc["controls"][0]["provider"]["arguments"]["runs_dir"] = runs_dir
    return doc


@pytest.mark.parametrize("path", PODS, ids=[p.stem for p in PODS])
def test_chaoslib_validates_our_files(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ensure_experiment_is_valid(_load(path, tmp_path / "runs"))


class LabProfiles:
    """Stands in for the lab's settings: the profile it is up with, and who asked."""

    def __init__(self, profile: str | None) -> None:
        self.profile = profile
        self.asked: list[str] = []

    def __call__(self, backend: object) -> str | None:
        self.asked.append(getattr(backend, "name", "?"))
        return self.profile


@pytest.fixture
def profiles(monkeypatch: pytest.MonkeyPatch) -> LabProfiles:
    lab = LabProfiles("kubernetes-defaults")
    monkeypatch.setattr(ctk, "PROFILE_OF", lab)
    return lab


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profiles: LabProfiles) -> FakeBackend:
    monkeypatch.setenv("RTO_JOURNAL", str(tmp_path / "journal.jsonl"))
    # chaos run writes chaostoolkit.log and journal.json, the control runs/, all
    # into the working directory.
    monkeypatch.chdir(tmp_path)
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


def test_the_row_records_the_lab_profile_when_the_experiment_names_none(
    fake: FakeBackend, profiles: LabProfiles, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    run_experiment(_load(ROOT / "experiments/pods/process-crash.yaml", runs))
    [row] = ResultsStore(runs).load()
    assert profiles.asked == ["fake"]
    assert row.profile == "kubernetes-defaults"


def test_a_control_naming_another_store_stops_before_anything(
    fake: FakeBackend, tmp_path: Path
) -> None:
    doc = _load(ROOT / "experiments/pods/process-crash.yaml", tmp_path / "runs", "hidden-runs")
    journal = run_experiment(doc)
    assert journal["status"] in ("interrupted", "failed")
    assert not (tmp_path / "hidden-runs").exists() and not (tmp_path / "runs").exists()
    assert not any(c.startswith("create_workload") for c in fake.calls), fake.calls
    # Naming the store itself, however spelt, is fine.
    doc = _load(ROOT / "experiments/pods/process-crash.yaml", tmp_path / "runs", "./runs/")
    assert run_experiment(doc)["status"] == "completed"
    assert len(ResultsStore(tmp_path / "runs").load()) == 1
    assert any(c.startswith("create_workload") for c in fake.calls)


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
    from core.errors import HarnessError

    with pytest.raises(HarnessError, match=r"chaos\.ctk_control"):
        ctk.inject_fault()
