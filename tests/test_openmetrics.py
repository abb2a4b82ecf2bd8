"""``rto report --openmetrics FILE`` and ``--pushgateway URL``: the report's figures
as Prometheus metrics, checked by real parsers and a real Pushgateway.

The store is made by the real runner (FakeBackend, fake recorder, FakeClock):
a cell that recovers three times with three RTOs, one that never recovers, plus
an aborted row written first but started last (the campaign's timestamp is the
newest start, not the last line). Every expected value is read from the
``ReportSummary`` that ``build_report`` returns for the same store. The
Pushgateway is Debian's ``/usr/bin/prometheus-pushgateway`` (scripts/install.sh),
started per test on 127.0.0.1 and a free port with persistence off (Debian's
build persists to /var/lib/prometheus by default) and stopped at the end.
``promtool check metrics`` runs when /usr/bin/promtool exists: it comes with
Debian's whole ``prometheus`` server package, which the harness does not install.
"""

from __future__ import annotations

import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fakes import FakeBackend, FakeHealer, fake_recorder_factory
from prometheus_client import generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_classic

from chaos import cli
from chaos.journal import Journal
from chaos.results import ResultsStore, RunResult, RunStatus
from chaos.runner import RunOptions, run_experiment
from chaos.spec import ExperimentSpec, RtoSpec
from core.clock import FakeClock
from core.errors import HarnessError, SpecError
from core.wait import poll_until
from reports.analysis import ReportSummary, Verdict, load_runs
from reports.build import build_report
from reports.openmetrics import push_metrics, report_metrics

PUSHGATEWAY = Path("/usr/bin/prometheus-pushgateway")
PROMTOOL = Path("/usr/bin/promtool")
CAMPAIGN = "nightly"
needs_pushgateway = pytest.mark.skipif(
    not PUSHGATEWAY.exists(), reason="prometheus-pushgateway is not installed (scripts/install.sh)"
)

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]


# --- the store and what its summary says ------------------------------------------


def _spec(healers: list[str], deadline: float) -> ExperimentSpec:
    rto = RtoSpec.model_validate(
        {
            "name": "rto",
            "target": {"workload": "web", "kind": "pod", "node": "node1"},
            "fault": {"type": "process-crash"},
            "healers": healers,
            "recovery": {"good_probes": 5, "deadline_s": deadline, "probe_interval_ms": 20},
            "profile": "fast",
        }
    )
    return ExperimentSpec(path=Path("crash.yaml"), title="crash", rto=rto)


def _make_store(root: Path) -> Path:
    clock = FakeClock(1000.0)
    backend = FakeBackend(clock, restart_delay=1.0)
    opts = RunOptions(
        clock=clock,
        journal=Journal(root / "journal.jsonl"),
        recorder_factory=fake_recorder_factory,  # type: ignore[arg-type]
        healer_factory=lambda names, profile: [FakeHealer(n) for n in names],  # type: ignore[arg-type]
    )
    store = ResultsStore(root / "runs")
    # Written first, started an hour after the others: the newest run.
    later = datetime.now(UTC) + timedelta(hours=1)
    store.append(
        RunResult(
            run_id="aborted-late",
            campaign=CAMPAIGN,
            experiment="crash",
            fault="process-crash",
            kind="pod",
            backend=backend.name,
            profile="fast",
            healers=["watchdog"],
            started_at=later.isoformat(timespec="seconds"),
            status=RunStatus.ABORTED,
            error="workload web never became Ready",
        )
    )
    for rep, delay in enumerate((1.0, 2.0, 3.0)):
        backend.restart_delay = delay
        run_experiment(
            _spec(["watchdog"], 60), backend, store, campaign=CAMPAIGN, repetition=rep, options=opts
        )
    for rep in range(2):  # no watchdog: the crashed pod is not restarted
        run_experiment(
            _spec([], 5), backend, store, campaign=CAMPAIGN, repetition=rep, options=opts
        )
    return store.root


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_store(tmp_path_factory.mktemp("openmetrics"))


@pytest.fixture(scope="module")
def summary(store: Path, tmp_path_factory: pytest.TempPathFactory) -> ReportSummary:
    s = build_report(store, tmp_path_factory.mktemp("reference-report"))
    # The store is what the docstring says: each outcome is there to be exported.
    crash = s.cell("process-crash", "pod", healers="watchdog")
    lost = s.cell("process-crash", "pod", healers="none")
    assert (crash.recovered, crash.aborted, lost.not_recovered) == (3, 1, 2)
    assert crash.min_s is not None and crash.max_s is not None and crash.min_s < crash.max_s
    return s


def _newest_start(store: Path) -> float:
    return max(datetime.fromisoformat(r.started_at).timestamp() for r in load_runs(store))


def _key(labels: dict[str, str]) -> Labels:
    # Prometheus reads an empty label value as no label (variant="" of a crash).
    return frozenset((k, v) for k, v in labels.items() if v != "")


def expected_samples(summary: ReportSummary, newest: float, **extra: str) -> Samples:
    """What the metrics must say, read from the summary's cells."""
    out: Samples = {}
    for c in summary.cells:
        cell = {
            "fault": c.fault,
            "variant": c.variant,
            "kind": c.kind,
            "backend": c.backend,
            "profile": c.profile,
            "healers": c.healers,
            **extra,
        }
        figures = {
            "rto_harness_rto_median_seconds": c.median_s,
            "rto_harness_rto_p95_seconds": c.p95_s,
            "rto_harness_rto_min_seconds": c.min_s,
            "rto_harness_rto_max_seconds": c.max_s,
            "rto_harness_detection_median_seconds": c.detection_median_s,
            "rto_harness_healer_action_median_seconds": c.healer_action_median_s,
        }
        for name, value in figures.items():
            if value is not None:
                out[(name, _key(cell))] = value
        for outcome, n in (
            ("recovered", c.recovered),
            ("not_recovered", c.not_recovered),
            ("aborted", c.aborted),
        ):
            out[("rto_harness_runs", _key({**cell, "outcome": outcome}))] = n
        for v in Verdict:
            label = v.value.replace(" ", "-")
            out[("rto_harness_verdict", _key({**cell, "verdict": label}))] = float(v is c.verdict)
    out[("rto_harness_report_runs", _key(extra))] = summary.runs
    start = {**extra, "campaign": CAMPAIGN}
    out[("rto_harness_campaign_start_timestamp_seconds", _key(start))] = newest
    return out


def samples_of(families: object) -> Samples:
    out: Samples = {}
    for family in families:  # type: ignore[attr-defined]
        for s in family.samples:
            if s.name.startswith("rto_harness_"):
                key = (s.name, _key(s.labels))
                assert key not in out, f"duplicate series {key}"
                out[key] = s.value
    return out


def _report(store: Path, out: Path, *args: str) -> Result:
    return CliRunner().invoke(
        cli.cli, ["report", "--runs-dir", str(store), "--out", str(out), "--fail-on", "none", *args]
    )


# --- the metrics file ---------------------------------------------------------------


def test_a_prom_file_is_classic_text_with_every_figure_of_the_summary(
    store: Path, summary: ReportSummary, tmp_path: Path
) -> None:
    textfile_dir = tmp_path / "textfile"
    target = textfile_dir / "rto_harness.prom"
    res = _report(store, tmp_path / "report", "--openmetrics", str(target))
    assert res.exit_code == 0, res.output
    text = target.read_text(encoding="utf-8")
    # node-exporter's textfile collector parses classic text: no OpenMetrics-only lines.
    assert "# EOF" not in text and "# UNIT" not in text
    assert samples_of(parse_classic(text)) == expected_samples(summary, _newest_start(store))
    families = list(parse_classic(text))
    assert all(f.documentation for f in families) and {f.type for f in families} == {"gauge"}
    # The collector runs as its own user; the temporary file is gone.
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in textfile_dir.iterdir()] == ["rto_harness.prom"]


def test_any_other_name_gets_openmetrics_with_units_and_eof(
    store: Path, summary: ReportSummary, tmp_path: Path
) -> None:
    target = tmp_path / "rto_harness.txt"
    res = _report(store, tmp_path / "report", "--openmetrics", str(target))
    assert res.exit_code == 0, res.output
    text = target.read_text(encoding="utf-8")
    assert text.endswith("# EOF\n")
    want = expected_samples(summary, _newest_start(store))
    families = list(parse_openmetrics(text))
    assert samples_of(families) == want
    for f in families:
        assert f.unit == ("seconds" if f.name.endswith("_seconds") else ""), f.name
    # What the textfile collector's parser does with it: the extra comments are skipped.
    assert samples_of(parse_classic(text)) == want


@pytest.mark.skipif(not PROMTOOL.exists(), reason="promtool comes with Debian's prometheus")
def test_promtool_finds_nothing_to_complain_about(store: Path, tmp_path: Path) -> None:
    target = tmp_path / "rto_harness.prom"
    assert _report(store, tmp_path / "report", "--openmetrics", str(target)).exit_code == 0
    check = subprocess.run(
        [str(PROMTOOL), "check", "metrics"],
        input=target.read_bytes(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_file_is_replaced_by_a_rename_never_rewritten_in_place(
    store: Path, tmp_path: Path
) -> None:
    target = tmp_path / "rto_harness.prom"
    target.write_text("# an older report\n", encoding="utf-8")
    before = target.stat().st_ino
    with target.open(encoding="utf-8") as reader:  # a collector mid-read
        res = _report(store, tmp_path / "report", "--openmetrics", str(target))
        assert res.exit_code == 0, res.output
        assert reader.read() == "# an older report\n"  # it still reads the whole old file
    assert target.stat().st_ino != before and "rto_harness_runs" in target.read_text()


def test_an_unwritable_metrics_file_is_one_paragraph(store: Path, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_text("", encoding="utf-8")
    res = _report(store, tmp_path / "report", "--openmetrics", str(not_a_dir / "x.prom"))
    assert res.exit_code == 2
    error = res.output[res.output.index("error:") :].strip()
    assert "\n" not in error and "--openmetrics" in error and str(not_a_dir) in error
    assert "Traceback" not in res.output


def test_an_empty_store_exports_zero_runs_and_no_campaign(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    summary = build_report(tmp_path / "runs", tmp_path / "report")
    metrics = report_metrics(summary, [])
    text = generate_latest(metrics.registry).decode()
    assert samples_of(parse_classic(text)) == {("rto_harness_report_runs", frozenset()): 0.0}
    assert metrics.started_at is None and metrics.campaign == "none"


def test_a_row_with_a_malformed_start_time_is_a_spec_error(store: Path, tmp_path: Path) -> None:
    rows = load_runs(store)
    bad = rows[0].model_copy(update={"started_at": "yesterday evening"})
    summary = build_report(store, tmp_path / "report")
    with pytest.raises(SpecError, match=r"run aborted-late: started_at 'yesterday evening'"):
        report_metrics(summary, [bad, *rows[1:]])


# --- the Pushgateway ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode("utf-8"))


def _ready(url: str) -> bool:
    try:
        return _get(f"{url}/-/ready") is not None
    except OSError:
        return False


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """A real Pushgateway on loopback, persistence off, stopped at the end."""
    port = _free_port()
    log = (tmp_path / "pushgateway.log").open("wb")
    proc = subprocess.Popen(
        [
            str(PUSHGATEWAY),
            f"--web.listen-address=127.0.0.1:{port}",
            "--persistence.file=",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        poll_until(lambda: proc.poll() is not None or _ready(url), 15, f"a Pushgateway on {url}")
        assert proc.poll() is None, (tmp_path / "pushgateway.log").read_text()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _gateway_samples(url: str) -> Samples:
    return samples_of(parse_classic(_get(f"{url}/metrics")))


@needs_pushgateway
def test_a_push_lands_in_the_gateway_with_the_summary_figures(
    store: Path, summary: ReportSummary, pushgateway: str, tmp_path: Path
) -> None:
    res = _report(store, tmp_path / "report", "--pushgateway", pushgateway)
    assert res.exit_code == 0, res.output
    assert f"campaign {CAMPAIGN}" in res.output
    # The gateway adds its grouping labels (job, campaign) to every series.
    want = expected_samples(summary, _newest_start(store), job="rto-harness", campaign=CAMPAIGN)
    assert _gateway_samples(pushgateway) == want

    # A push replaces its group: a cell no longer in the store does not linger.
    smaller = ResultsStore(tmp_path / "smaller")
    for row in load_runs(store):
        if row.healers:
            smaller.append(row)
    res = _report(smaller.root, tmp_path / "report2", "--pushgateway", pushgateway + "/")
    assert res.exit_code == 0, res.output
    left = {dict(labels).get("healers") for _name, labels in _gateway_samples(pushgateway)}
    assert left == {"watchdog", None}  # None: the store-wide series


@needs_pushgateway
def test_bad_urls_are_one_paragraph_and_push_nothing(
    store: Path, pushgateway: str, tmp_path: Path
) -> None:
    port = pushgateway.rsplit(":", 1)[1]
    bad = [
        "",
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        f"ftp://127.0.0.1:{port}",
        "http://",
        f"http://:{port}",
        "http://127.0.0.1:port",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:0",
        "http://127.0.0.1:",
        f"http://user:secret@127.0.0.1:{port}",
        f"{pushgateway}/metrics/job/rto-harness",
        f"{pushgateway}?job=x",
        f"{pushgateway}#top",
        f"{pushgateway}/../admin",
        f"{pushgateway}//x",
        f" {pushgateway}",
        f"http://127.0.0.1 :{port}",
        "http://[::1",
    ]
    for url in bad:
        out = tmp_path / "report"
        res = _report(store, out, "--pushgateway", url)
        assert res.exit_code == 2, (url, res.output)
        text = res.output.strip()
        assert text.startswith("error: --pushgateway") and "\n" not in text, (url, text)
        assert "nothing was pushed" in text and "Traceback" not in text
        assert not out.exists(), url  # stopped before the report was built
    assert _gateway_samples(pushgateway) == {}


@needs_pushgateway
def test_a_refused_or_wrong_gateway_is_one_paragraph(
    store: Path, pushgateway: str, tmp_path: Path
) -> None:
    refused = f"http://127.0.0.1:{_free_port()}"
    for url, why in (
        (refused, "cannot reach the gateway"),
        (f"{pushgateway}/not-a-route-prefix", "HTTP 404"),
    ):
        res = _report(store, tmp_path / "report", "--pushgateway", url)
        assert res.exit_code == 2, res.output
        error = res.output[res.output.index("error:") :].strip()
        assert "\n" not in error and why in error and "nothing was pushed" in error, error
        assert "Traceback" not in res.output
        assert (tmp_path / "report" / "index.html").exists()  # the report itself was written
    assert _gateway_samples(pushgateway) == {}


def test_a_gateway_that_never_answers_times_out_in_one_paragraph(
    store: Path, tmp_path: Path
) -> None:
    summary = build_report(store, tmp_path / "report")
    metrics = report_metrics(summary, load_runs(store))
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(HarnessError, match=r"no answer within 0\.5 s") as err:
            push_metrics(metrics, url, timeout_s=0.5)
    assert "\n" not in str(err.value)
