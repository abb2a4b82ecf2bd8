"""``rto`` through click's CliRunner, on the FakeBackend with a fake recorder/clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fakes import FakeBackend, FakeHealer, fake_recorder_factory

from chaos import cli
from chaos.faults import NodePowerOff
from chaos.journal import Journal
from chaos.results import ResultsStore, RunStatus
from chaos.runner import RunOptions
from core.clock import FakeClock

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    monkeypatch.setenv("RTO_JOURNAL", str(tmp_path / "journal.jsonl"))
    clock = FakeClock(500.0)
    backend = FakeBackend(clock, state_file=tmp_path / "fake.json")
    made: list[str] = []

    def factory(name: str) -> FakeBackend:
        made.append(name)
        return backend

    monkeypatch.setattr(cli, "BACKEND_FACTORY", factory)
    monkeypatch.setattr(
        cli,
        "OPTIONS_FACTORY",
        lambda: RunOptions(
            clock=clock,
            recorder_factory=fake_recorder_factory,  # type: ignore[arg-type]
            healer_factory=lambda names, profile: [FakeHealer(n) for n in names],  # type: ignore[arg-type,misc]
        ),
    )
    backend.made = made  # type: ignore[attr-defined]
    return backend


def test_run_records_a_row(fake: FakeBackend, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    res = CliRunner().invoke(
        cli.cli,
        [
            "run",
            str(ROOT / "experiments/pods/process-crash.yaml"),
            "--runs-dir",
            str(runs),
            "--repeat",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = ResultsStore(runs).load()
    assert [r.status for r in rows] == [RunStatus.RECOVERED] * 2
    assert [r.repetition for r in rows] == [0, 1]
    assert "recovered" in res.output


def test_bad_input_exits_2_naming_the_field_and_injects_nothing(
    fake: FakeBackend, tmp_path: Path
) -> None:
    text = (ROOT / "experiments/pods/storage-hang.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("mode: hang", "mode: melt"))
    res = CliRunner().invoke(cli.cli, ["run", str(bad), "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 2
    assert (
        "bad.yaml" in res.output
        and "fault.mode" in res.output
        and "'hang', 'eio' or 'unplug'" in res.output
    )
    assert fake.made == []  # type: ignore[attr-defined]
    assert fake.calls == []
    assert not (tmp_path / "runs").exists()


def test_missing_file_exits_2(fake: FakeBackend, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli.cli, ["run", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "cannot read" in res.output


def test_campaign_runs_every_entry(fake: FakeBackend, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    res = CliRunner().invoke(
        cli.cli,
        ["campaign", str(ROOT / "experiments/campaigns/smoke.yaml"), "--runs-dir", str(runs)],
    )
    assert res.exit_code == 0, res.output
    rows = ResultsStore(runs).load()
    assert [r.fault for r in rows] == ["process-crash", "node-power-off", "network-partition"]
    assert {r.campaign for r in rows} == {"smoke"}
    assert all(r.status is RunStatus.RECOVERED for r in rows), [(r.status, r.rto_s) for r in rows]
    assert Journal().pending() == []


def test_revert_replays_the_journal(fake: FakeBackend) -> None:
    NodePowerOff(fake, "node2", Journal()).inject()
    res = CliRunner().invoke(cli.cli, ["revert"])
    assert res.exit_code == 0, res.output
    assert "reverted node-power-off on node2" in res.output
    assert fake.node_state("node2")["powered"] is True
    res = CliRunner().invoke(cli.cli, ["revert"])
    assert "nothing to revert" in res.output


def test_revert_failure_exits_2(fake: FakeBackend) -> None:
    NodePowerOff(fake, "node2", Journal()).inject()
    fake.fail_on["power_on"] = "no power"
    res = CliRunner().invoke(cli.cli, ["revert"])
    assert res.exit_code == 2 and "no power" in res.output and "rto revert" in res.output


def test_budget_parsing() -> None:
    assert cli.parse_budgets(("process-crash:pod=15", "*=600")) == {
        "process-crash/pod": 15.0,
        "*": 600.0,
    }
    res = CliRunner().invoke(cli.cli, ["report", "--budget", "process-crash:pod"])
    assert res.exit_code == 2 and "fault:kind=seconds" in res.output


def test_report_fail_on_no_recovery(fake: FakeBackend, tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "report"
    fake.fail_on["repair_volume"] = "x"  # irrelevant to a crash run
    res = CliRunner().invoke(
        cli.cli, ["run", str(ROOT / "experiments/pods/process-crash.yaml"), "--runs-dir", str(runs)]
    )
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(
        cli.cli,
        ["report", "--runs-dir", str(runs), "--out", str(out), "--budget", "process-crash:pod=0.5"],
    )
    assert res.exit_code == 1, res.output
    assert "FAIL" in res.output and (out / "index.html").exists()


def test_campaign_goes_on_after_an_aborted_run_then_fails_naming_it(
    fake: FakeBackend, tmp_path: Path
) -> None:
    """One run failing (power-off refused) is recorded as aborted; the others still
    run, the report is still written, and the command exits non-zero naming it."""
    fake.fail_on["power_off"] = "BMC unreachable"
    runs, out_dir = tmp_path / "runs", tmp_path / "report"
    res = CliRunner().invoke(
        cli.cli,
        [
            "campaign",
            str(ROOT / "experiments/campaigns/smoke.yaml"),
            "--runs-dir",
            str(runs),
            "--report",
            str(out_dir),
        ],
    )
    assert res.exit_code == 2, res.output
    assert "1 of 3 runs aborted" in res.output and "BMC unreachable" in res.output
    rows = ResultsStore(runs).load()
    assert [r.fault for r in rows] == ["process-crash", "node-power-off", "network-partition"]
    assert [r.status for r in rows] == [
        RunStatus.RECOVERED,
        RunStatus.ABORTED,
        RunStatus.RECOVERED,
    ]
    assert (out_dir / "index.html").exists()
    assert Journal().pending() == []


UNREADABLE = {
    "not-utf8.yaml": b"\x00\x01\x02\xff\xfe garbage",
    "utf16.yaml": "title: t\n".encode("utf-16"),
    "not-utf8.json": b"\xff\xfe{}",
    "nul.yaml": b"title: a\x00b\n",
    "deep.json": b"[" * 100_000 + b"]" * 100_000,
    "deep.yaml": b"[" * 100_000 + b"]" * 100_000,
    "python-tag.yaml": b"!!python/object:os.system x\n",
}


@pytest.mark.parametrize("command", ["run", "campaign"])
@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_undecodable_files_get_one_paragraph_and_inject_nothing(
    fake: FakeBackend, tmp_path: Path, command: str, name: str
) -> None:
    bad = tmp_path / name
    bad.write_bytes(UNREADABLE[name])
    res = CliRunner().invoke(cli.cli, [command, str(bad), "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: "), res.output
    assert "Traceback" not in res.output
    assert fake.made == [] and fake.calls == []  # type: ignore[attr-defined]
    assert not (tmp_path / "runs").exists()


def test_a_file_too_large_to_be_an_experiment_is_refused_unread(fake: FakeBackend) -> None:
    res = CliRunner().invoke(cli.cli, ["run", "/dev/zero"])
    assert res.exit_code == 2
    assert "larger than 4 MiB, too large for an experiment or campaign file" in res.output


def test_an_undecodable_kube_config_is_one_spec_error(tmp_path: Path) -> None:
    from cluster.kube.config import load_kube_config
    from core.errors import SpecError

    bad = tmp_path / "rto-kube.yaml"
    bad.write_bytes(b"contexts: [\xff\xfe]\n")
    with pytest.raises(SpecError) as err:
        load_kube_config(bad)
    assert str(err.value).startswith(f"{bad}: not UTF-8 text (byte 0xff at offset 11)")
    assert "\n" not in str(err.value)
