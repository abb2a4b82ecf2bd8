"""The nightly history (reports.history, ``rto history``) on hand-built rows, the
rows' provenance, and the test-only slowed healer (``$RTO_TEST_HEALER_DELAY``).

Nothing here runs a lab: rows are built like the runner writes them; the
provenance and the slowed healer are checked through the real runner on the
FakeBackend and FakeClock. tests/test_e2e_history.py does the same end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakes import FakeBackend, fake_recorder_factory

from chaos import cli
from chaos.journal import Journal
from chaos.provenance import git_commit, harness_version, new_invocation
from chaos.results import ResultsStore, RunResult, RunStatus
from chaos.runner import RunOptions, run_experiment
from chaos.spec import ExperimentSpec, RtoSpec
from core.clock import FakeClock
from core.errors import SpecError
from core.timeline import EventKind, TimelineEvent
from healers.base import HealerContext
from healers.registry import SlowedHealer, build_healers, read_test_delays
from reports.history import (
    HistoryRule,
    HistoryVerdict,
    campaign_count,
    regressed_cells,
    summarise_history,
)

__all__: list[str] = []

ROOT = Path(__file__).resolve().parents[1]

CRASH = {"fault": "process-crash", "kind": "pod", "healers": ["watchdog"]}
POWER = {"fault": "node-power-off", "kind": "pod", "healers": ["eviction"]}


def row(
    cell: dict[str, object],
    campaign: int,
    rep: int,
    rto: float | None,
    *,
    status: RunStatus = RunStatus.RECOVERED,
    interval_ms: float = 20,
    name: str = "nightly",
) -> RunResult:
    """A row as the runner writes it; campaign ``i`` started on day ``i``."""
    start = f"2026-11-{campaign + 1:02d}T02:30:00+00:00"
    return RunResult.model_validate(
        {
            **cell,
            "run_id": f"c{campaign}r{rep}{cell['fault']}",
            "campaign": name,
            "experiment": "t",
            "backend": "lab",
            "profile": "fast",
            "repetition": rep,
            "started_at": start,
            "status": status,
            "rto_s": rto,
            "campaign_id": f"{name}-{campaign:02d}",
            "campaign_started_at": start,
            "timeline": [
                TimelineEvent(
                    t=0.0,
                    kind=EventKind.MARK,
                    source="recorder",
                    message="recording",
                    data={"event": "recorder_started", "interval_ms": f"{interval_ms:g}"},
                )
            ],
        }
    )


def campaigns(cell: dict[str, object], rtos: list[list[float]], **kw: object) -> list[RunResult]:
    return [
        row(cell, i, j, v, **kw)  # type: ignore[arg-type]
        for i, values in enumerate(rtos)
        for j, v in enumerate(values)
    ]


# Noise as the lab shows it for a pod crash: a few tens of ms around 1 s.
NOISE = [[1.02, 0.97, 1.05], [0.99, 1.04, 0.96], [1.01, 0.98, 1.03]]


def verdicts(rows: list[RunResult]) -> dict[str, HistoryVerdict]:
    return {c.fault: c.verdict for c in summarise_history(rows).cells}


def test_noise_is_no_regression() -> None:
    rows = campaigns(CRASH, [*NOISE, [1.04, 1.06, 0.99]])
    (cell,) = summarise_history(rows).cells
    assert cell.verdict is HistoryVerdict.OK, cell.detail
    assert [p.median_s for p in cell.points][-1] == pytest.approx(1.04)
    assert regressed_cells(summarise_history(rows)) == []


def test_a_real_shift_regresses_that_cell_only() -> None:
    rows = campaigns(CRASH, [*NOISE, [3.1, 3.0, 3.2]]) + campaigns(POWER, [*NOISE, NOISE[0]])
    summary = summarise_history(rows)
    assert [c.fault for c in regressed_cells(summary)] == ["process-crash"]
    (crash,) = regressed_cells(summary)
    assert crash.verdict is HistoryVerdict.REGRESSED
    assert crash.threshold_s is not None and crash.baseline_median_s is not None
    assert crash.baseline_median_s < crash.threshold_s < 3.1
    assert "newest median 3.10 s" in crash.detail
    assert verdicts(rows)["node-power-off"] is HistoryVerdict.OK


def test_the_threshold_follows_the_cells_own_spread() -> None:
    # The same +0.5 s is noise for a cell that varies by seconds, a regression
    # for one that varies by tens of ms: no fixed percentage.
    wide = [[8.0, 10.5, 12.0], [9.0, 11.0, 13.0], [10.0, 8.5, 12.5]]
    newest_wide = [[11.0, 10.5, 11.5]]
    narrow_rows = campaigns(CRASH, [*NOISE, [1.5, 1.55, 1.45]])
    wide_rows = campaigns(POWER, [*wide, *newest_wide])
    v = verdicts(narrow_rows + wide_rows)
    assert v == {"process-crash": HistoryVerdict.REGRESSED, "node-power-off": HistoryVerdict.OK}


def test_identical_baselines_are_floored_at_the_probe_interval() -> None:
    same = [[1.0, 1.0, 1.0]] * 3
    # Two probes (2 x 20 ms, an RTO's resolution) later is not a regression ...
    assert verdicts(campaigns(CRASH, [*same, [1.04, 1.04, 1.04]]))["process-crash"] is (
        HistoryVerdict.OK
    )
    # ... seven probes later is one (threshold 1.0 + 3 x 2 x 0.02 = 1.12).
    assert verdicts(campaigns(CRASH, [*same, [1.14, 1.14, 1.14]]))["process-crash"] is (
        HistoryVerdict.REGRESSED
    )
    # With a 100 ms probe interval the same shift is within the resolution.
    coarse = campaigns(CRASH, [*same, [1.14, 1.14, 1.14]], interval_ms=100)
    (cell,) = summarise_history(coarse).cells
    assert cell.verdict is HistoryVerdict.OK
    assert cell.spread_s == pytest.approx(0.2)


def test_not_enough_history_is_said_not_guessed() -> None:
    one_previous = campaigns(CRASH, [NOISE[0], [9.0, 9.0, 9.0]])
    (cell,) = summarise_history(one_previous).cells
    assert cell.verdict is HistoryVerdict.NOT_ENOUGH_HISTORY
    assert "1 previous campaign(s)" in cell.detail
    # Two previous campaigns but 2 runs in all: below the 4 the rule needs.
    few_runs = campaigns(CRASH, [[1.0], [1.0], [9.0]])
    assert verdicts(few_runs)["process-crash"] is HistoryVerdict.NOT_ENOUGH_HISTORY
    # A looser rule judges the same rows.
    loose = summarise_history(few_runs, rule=HistoryRule(min_runs=2))
    assert loose.cells[0].verdict is HistoryVerdict.REGRESSED
    assert regressed_cells(summarise_history(one_previous)) == []


def test_a_cell_that_recovered_before_and_not_now_is_flagged() -> None:
    rows = [
        *campaigns(CRASH, NOISE),
        row(CRASH, 3, 0, 1.0),
        row(CRASH, 3, 1, 60.0, status=RunStatus.NOT_RECOVERED),
    ]
    summary = summarise_history(rows)
    (cell,) = regressed_cells(summary)
    assert cell.verdict is HistoryVerdict.NO_LONGER_RECOVERS
    assert cell.points[-1].not_recovered == 1
    assert cell.points[-1].rtos == (1.0,)  # the not-recovered run's rto_s is no RTO


def test_a_cell_that_never_recovered_is_not_a_new_failure() -> None:
    rows = (
        [row(CRASH, i, 0, 60.0, status=RunStatus.NOT_RECOVERED) for i in range(4)]
        + [row(CRASH, i, 1, 1.0) for i in range(4)]
        + [row(CRASH, i, 2, 1.0) for i in range(4)]
    )
    assert verdicts(rows)["process-crash"] is HistoryVerdict.OK


def test_aborted_newest_runs_are_not_measured_and_do_not_fail() -> None:
    rows = [*campaigns(CRASH, NOISE), row(CRASH, 3, 0, None, status=RunStatus.ABORTED)]
    summary = summarise_history(rows)
    assert summary.cells[0].verdict is HistoryVerdict.NOT_MEASURED
    assert regressed_cells(summary) == []


def test_a_cell_the_newest_campaign_did_not_measure_is_not_current() -> None:
    rows = campaigns(CRASH, [*NOISE, [5.0, 5.0, 5.0]]) + campaigns(POWER, [*NOISE, *NOISE])
    summary = summarise_history(rows)
    by_fault = {c.fault: c for c in summary.cells}
    # POWER's campaigns 3..5 are newer than CRASH's regressed campaign 3.
    assert by_fault["process-crash"].verdict is HistoryVerdict.NOT_CURRENT
    assert "regressed" in by_fault["process-crash"].detail
    assert regressed_cells(summary) == []


def test_last_n_campaigns_per_cell() -> None:
    rows = campaigns(CRASH, [[1.0, 1.0, 1.0]] * 12)
    summary = summarise_history(rows, last=4)
    assert summary.campaigns == 12
    assert [p.campaign_id for p in summary.cells[0].points] == [
        f"nightly-{i:02d}" for i in range(8, 12)
    ]


def test_old_rows_without_provenance_still_load_and_group(tmp_path: Path) -> None:
    new_fields = {
        "campaign_id",
        "campaign_started_at",
        "harness_version",
        "git_commit",
        "host_cores",
        "host_accelerator",
    }
    store = ResultsStore(tmp_path)
    store.path.parent.mkdir(parents=True, exist_ok=True)
    with store.path.open("w") as fh:
        for r in campaigns(CRASH, NOISE[:2]):
            fh.write(json.dumps(r.model_dump(mode="json", exclude=new_fields)) + "\n")
    old = store.load()
    assert len(old) == 6
    assert all(r.campaign_id is None and r.host_cores is None for r in old)
    # Without ids every old row of one campaign name is one campaign.
    assert campaign_count(old) == 1
    (cell,) = summarise_history(old).cells
    assert cell.verdict is HistoryVerdict.NOT_ENOUGH_HISTORY


# ----------------------------------------------------------------------- CLI


def write_store(tmp_path: Path, rows: list[RunResult]) -> Path:
    runs = tmp_path / "runs"
    store = ResultsStore(runs)
    for r in rows:
        store.append(r)
    return runs


def history(runs: Path, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli.cli, ["history", "--runs-dir", str(runs), *args])
    return res.exit_code, res.output


def test_cli_fails_on_regression_naming_only_the_regressed_cell(tmp_path: Path) -> None:
    runs = write_store(
        tmp_path,
        campaigns(CRASH, [*NOISE, [3.1, 3.0, 3.2]]) + campaigns(POWER, [*NOISE, NOISE[1]]),
    )
    code, output = history(runs, "--fail-on", "regression")
    assert code == 1, output
    flagged = [line for line in output.splitlines() if line.startswith("REGRESSED")]
    assert len(flagged) == 1 and "process-crash/pod lab/fast healers=watchdog" in flagged[0]
    assert "regressed when above median + 3 x max(1.4826 x MAD" in output  # the rule is shown
    code, output = history(runs, "--fail-on", "none")
    assert code == 0, output
    assert "REGRESSED" not in output


def test_cli_passes_without_regression_and_writes_its_files(tmp_path: Path) -> None:
    runs = write_store(tmp_path, campaigns(CRASH, [*NOISE, NOISE[0]]))
    out = tmp_path / "hist"
    code, output = history(runs, "--fail-on", "regression", "--out", str(out), "--last", "3")
    assert code == 0, output
    assert sorted(p.name for p in out.iterdir()) == ["history.html", "history.md", "history.png"]
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "history.md").read_text()
    assert "**ok**" in md and md.count(" → ") == 2  # three campaigns shown
    assert "Rule:" in (out / "history.html").read_text()


def test_cli_campaign_keeps_an_ad_hoc_run_from_being_tonight(tmp_path: Path) -> None:
    # Three nightlies, then an ad-hoc run of the same cell, slower (a debugging session).
    nightly = campaigns(CRASH, [*NOISE, NOISE[0]])
    ad_hoc = [row(CRASH, 9, j, 3.0, name="debugging") for j in range(3)]
    runs = write_store(tmp_path, nightly + ad_hoc)
    code, output = history(runs, "--fail-on", "regression")
    # Unfiltered, the ad-hoc run is the cell's newest campaign and fails the gate.
    assert code == 1, output
    code, output = history(runs, "--fail-on", "regression", "--campaign", "nightly")
    assert code == 0, output
    assert "REGRESSED" not in output and "ok" in output
    code, output = history(runs, "--campaign", "weekly")
    assert code == 0 and "no runs of campaign 'weekly'" in output


def test_cli_on_an_empty_store_and_bad_options(tmp_path: Path) -> None:
    code, output = history(tmp_path / "none", "--fail-on", "regression")
    assert code == 0 and "no history yet" in output
    code, output = history(tmp_path, "--fail-on", "always")
    assert code == 2 and "--fail-on" in output
    code, output = history(tmp_path, "--last", "1")
    assert code == 2 and "--last" in output


def test_report_gets_a_history_section_from_two_campaigns(tmp_path: Path) -> None:
    from reports.build import build_report

    one = write_store(tmp_path / "one", campaigns(CRASH, NOISE[:1]))
    build_report(one, tmp_path / "r1")
    assert "RTO history" not in (tmp_path / "r1" / "index.html").read_text()
    two = write_store(tmp_path / "two", campaigns(CRASH, [*NOISE, [3.0, 3.0, 3.0]]))
    build_report(two, tmp_path / "r2")
    page = (tmp_path / "r2" / "index.html").read_text()
    assert "RTO history" in page and "regressed" in page


# ------------------------------------------------------------- provenance


def spec(healers: list[str]) -> ExperimentSpec:
    rto = RtoSpec.model_validate(
        {
            "name": "rto",
            "target": {"workload": "web", "kind": "pod", "node": "node1"},
            "fault": {"type": "process-crash"},
            "healers": healers,
            "recovery": {"good_probes": 5, "deadline_s": 60, "probe_interval_ms": 20},
            "profile": "fast",
        }
    )
    return ExperimentSpec(path=Path("t.yaml"), title="t", rto=rto)


def test_rows_carry_their_invocation_and_host(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    backend = FakeBackend(clock, restart_delay=1.0)
    opts = RunOptions(
        clock=clock,
        journal=Journal(tmp_path / "journal.jsonl"),
        recorder_factory=fake_recorder_factory,  # type: ignore[arg-type]
        healer_factory=lambda names, profile: [],
    )
    store = ResultsStore(tmp_path / "runs")
    tonight = new_invocation("nightly")
    a = run_experiment(spec([]), backend, store, options=opts, invocation=tonight)
    b = run_experiment(spec([]), backend, store, options=opts, invocation=tonight)
    alone = run_experiment(spec([]), backend, store, options=opts)
    assert a.campaign_id == b.campaign_id == tonight.id != alone.campaign_id
    assert a.campaign_started_at == tonight.started_at
    assert a.host_cores is not None and a.host_cores >= 1
    assert a.host_accelerator == backend.accelerator == "tcg"  # pod rows too
    assert a.harness_version == harness_version()
    assert a.git_commit == git_commit()
    assert campaign_count(store.load()) == 2


def test_git_commit_is_none_outside_a_checkout(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None


# ------------------------------------------------------- the slowed healer


class _FenceOnStart:
    """A healer that reads the nodes, then fences node1, noting the clock each time."""

    name = "eviction"

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []

    def start(self, ctx: HealerContext) -> None:
        self.times.append(("start", ctx.clock.now()))
        ctx.backend.nodes()
        self.times.append(("read", ctx.clock.now()))
        ctx.backend.fence("node1")
        self.times.append(("fenced", ctx.clock.now()))

    def stop(self) -> None:
        pass


def test_slowed_healer_waits_before_each_action_not_each_read() -> None:
    clock = FakeClock(100.0)
    backend = FakeBackend(clock)
    events: list[tuple[str, str]] = []
    inner = _FenceOnStart()
    slowed = SlowedHealer(inner, 2.5)
    slowed.start(
        HealerContext(
            backend=backend,
            workloads=["web"],
            record=lambda source, message, data: events.append((source, message)),
            clock=clock,
        )
    )
    assert inner.times == [("start", 100.0), ("read", 100.0), ("fenced", 102.5)]
    assert backend.nodes()[0].fenced
    assert events and "test-only delay" in events[0][1]


def test_healer_delay_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTO_TEST_HEALER_DELAY", raising=False)
    assert read_test_delays() == {}
    assert not any(isinstance(h, SlowedHealer) for h in build_healers(["watchdog"], "fast"))
    env = {"RTO_TEST_HEALER_DELAY": "watchdog=2.0, eviction=0.5"}
    assert read_test_delays(env) == {"watchdog": 2.0, "eviction": 0.5}
    monkeypatch.setenv("RTO_TEST_HEALER_DELAY", "eviction=3")
    built = build_healers(["watchdog", "eviction"], "fast")
    assert [type(h).__name__ for h in built] == ["Watchdog", "SlowedHealer"]
    assert [h.name for h in built] == ["watchdog", "eviction"]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("watchdog", "is no delay in seconds"),
        ("watchdog=soon", "is no delay in seconds"),
        ("watchdog=-1", "is no delay in seconds"),
        ("watchdog=nan", "is no delay in seconds"),
        ("watchdog=9999", "is no delay in seconds"),
        ("doctor=1", "'doctor' is no healer"),
        ("=1", "a healer name is missing"),
        ("watchdog=1,watchdog=2", "'watchdog' is given twice"),
    ],
)
def test_bad_healer_delays_get_one_paragraph(value: str, why: str) -> None:
    with pytest.raises(SpecError) as exc:
        read_test_delays({"RTO_TEST_HEALER_DELAY": value})
    message = str(exc.value)
    assert "$RTO_TEST_HEALER_DELAY" in message and why in message and "test-only" in message
    assert "\n" not in message


def test_a_bad_healer_delay_stops_a_run_before_anything_acts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTO_TEST_HEALER_DELAY", "watchdog=later")
    backend = FakeBackend(FakeClock(0.0))
    store = ResultsStore(tmp_path / "runs")
    with pytest.raises(SpecError):
        run_experiment(spec(["watchdog"]), backend, store, clock=FakeClock(0.0))
    assert backend.calls == [] and store.load() == []


# ------------------------------------------- the CLI records campaign identity


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    """`rto` on the FakeBackend and a FakeClock (as tests/test_cli.py does)."""
    monkeypatch.setenv("RTO_JOURNAL", str(tmp_path / "journal.jsonl"))
    monkeypatch.delenv("RTO_TEST_HEALER_DELAY", raising=False)
    clock = FakeClock(500.0)
    backend = FakeBackend(clock, state_file=tmp_path / "fake.json")
    monkeypatch.setattr(cli, "BACKEND_FACTORY", lambda name: backend)
    monkeypatch.setattr(
        cli,
        "OPTIONS_FACTORY",
        lambda: RunOptions(
            clock=clock,
            recorder_factory=fake_recorder_factory,  # type: ignore[arg-type]
            healer_factory=lambda names, profile: [],
        ),
    )
    return backend


def test_each_rto_run_and_rto_campaign_is_one_campaign(fake: FakeBackend, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    crash = str(ROOT / "experiments/pods/process-crash.yaml")
    smoke = str(ROOT / "experiments/campaigns/smoke.yaml")
    for argv in (["run", crash, "--repeat", "2"],) * 2 + (["campaign", smoke],) * 2:
        res = CliRunner().invoke(cli.cli, [*argv, "--runs-dir", str(runs)])
        assert res.exit_code == 0, res.output
    rows = ResultsStore(runs).load()
    ids = list(dict.fromkeys(r.campaign_id for r in rows))
    assert len(ids) == 4 and None not in ids
    assert [sum(r.campaign_id == i for r in rows) for i in ids] == [2, 2, 3, 3]
    assert [rows[0].campaign, rows[-1].campaign] == [None, "smoke"]
    assert campaign_count(rows) == 4


def test_a_bad_healer_delay_fails_rto_campaign_before_anything(
    fake: FakeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTO_TEST_HEALER_DELAY", "eviction=3s")
    smoke = str(ROOT / "experiments/campaigns/smoke.yaml")
    res = CliRunner().invoke(cli.cli, ["campaign", smoke, "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 2
    assert "RTO_TEST_HEALER_DELAY" in res.output and "'3s' is no delay" in res.output
    assert fake.calls == [] and not (tmp_path / "runs").exists()
