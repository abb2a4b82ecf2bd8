"""The ``rto`` pytest plugin (chaos.pytest_plugin) through ``pytester``.

Inner pytest runs (in this process, so the plugin's injection points reach
them) run on the FakeBackend with the fake recorder and a FakeClock, and
``--rto-lab`` on a provider that counts ups and downs: markers pass and fail
with their one message, the ``rto`` fixture's result matches the stored row,
the figures are in the JUnit XML, the lab goes down after failures, Ctrl-C
(in a test, in the lab's start, mid-fault) and SIGTERM, and bad marker
arguments or options are one paragraph with nothing injected. One real lab
run at the end: a new user's repo holding only the example file (plus a
budget too tight to hold) run with ``pytest --rto-lab`` in a child process.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeBackend, FakeHealer, fake_recorder_factory

import chaos.pytest_plugin as plugin
from chaos.journal import Journal
from chaos.results import ResultsStore, RunResult, RunStatus
from chaos.runner import RunOptions
from core.clock import FakeClock
from core.errors import LabError, SpecError
from reports.analysis import runs_frame, summarise
from reports.expectations import load_expectations
from reports.plots import plot_timeline

# reports.plots (matplotlib) is imported here, before any inner run, though only
# the plugin uses it: pytester restores sys.modules after each in-process run, and
# numpy and matplotlib must not be imported twice in one process.
assert callable(plot_timeline)

__all__: list[str] = []

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "test_rto_budgets.py"
STRICT = ("-W", "error", "--strict-markers", "-p", "no:cacheprovider")


class CountingProvider:
    """A BackendProvider whose up/down only count (and may be told to fail)."""

    name = "lab"

    def __init__(self) -> None:
        self.ups: list[tuple[str, int, bool]] = []
        self.downs = 0
        self.up_raises: BaseException | None = None
        self.down_raises: BaseException | None = None

    def backend(self) -> FakeBackend:
        raise AssertionError("the plugin makes its backend through BACKEND_FACTORY")

    def up(self, profile: str, nodes: int, vms: bool) -> str | None:
        self.ups.append((profile, nodes, vms))
        if self.up_raises is not None:
            raise self.up_raises
        return "a counting lab"

    def down(self) -> None:
        self.downs += 1
        if self.down_raises is not None:
            raise self.down_raises


class Fakes:
    def __init__(self, backend: FakeBackend, provider: CountingProvider, clock: FakeClock) -> None:
        self.backend = backend
        self.provider = provider
        self.clock = clock
        self.status_hook: list[str] = []  # a status line containing this raises Ctrl-C


@pytest.fixture
def fake(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fakes]:
    journal = pytester.path / "journal.jsonl"
    monkeypatch.setenv("RTO_JOURNAL", str(journal))
    clock = FakeClock(500.0)
    backend = FakeBackend(clock, restart_delay=1.5)  # in memory: the inner runs share this process
    provider = CountingProvider()
    fakes = Fakes(backend, provider, clock)

    def status(line: str) -> None:
        if any(s in line for s in fakes.status_hook):
            raise KeyboardInterrupt

    monkeypatch.setattr(plugin, "BACKEND_FACTORY", lambda name: backend)
    monkeypatch.setattr(plugin, "PROVIDER_FACTORY", lambda name: provider)
    monkeypatch.setattr(
        plugin,
        "OPTIONS_FACTORY",
        lambda: RunOptions(
            clock=clock,
            recorder_factory=fake_recorder_factory,  # type: ignore[arg-type]
            healer_factory=lambda names, profile: [FakeHealer(n) for n in names],  # type: ignore[arg-type,misc]
            status=status,
        ),
    )
    yield fakes


def rows(pytester: pytest.Pytester) -> list[RunResult]:
    return ResultsStore(pytester.path / "runs").load()


def junit(path: Path) -> dict[str, dict[str, object]]:
    """testcase name -> its properties, plus ``_failure`` (the message) if it failed."""
    out: dict[str, dict[str, object]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        props: dict[str, object] = {
            p.get("name", ""): p.get("value", "") for p in case.iter("property")
        }
        failure = case.find("failure")
        if failure is not None:
            props["_failure"] = failure.text or ""  # the message attribute adds "Failed: "
        props["_properties"] = [p.get("name") for p in case.iter("property")]
        out[case.get("name", "")] = props
    return out


def failure_text(reprec: pytest.HookRecorder, name: str) -> str:
    (report,) = [
        r for r in reprec.getreports("pytest_runtest_logreport") if r.failed and name in r.nodeid
    ]
    return str(report.longrepr)


BUDGETS = """
import pytest

@pytest.mark.rto("experiments/pods/process-crash.yaml", budget_s=1000)
def test_generous(rto):
    assert rto.last is not None and rto.last.status == "recovered"

@pytest.mark.rto("experiments/pods/process-crash.yaml", budget_s=0.001)
def test_tiny(rto):
    assert rto.last is not None  # the body runs, and may read the result
"""


def test_marker_passes_or_fails_with_one_message_and_junit_figures(
    pytester: pytest.Pytester, fake: Fakes
) -> None:
    pytester.makepyfile(test_budgets=BUDGETS)
    xml = pytester.path / "out.xml"
    reprec = pytester.inline_run(*STRICT, f"--junitxml={xml}")
    reprec.assertoutcome(passed=1, failed=1)
    generous, tiny = rows(pytester)
    assert generous.status is tiny.status is RunStatus.RECOVERED
    assert tiny.rto_s is not None and tiny.rto_s > 0.001
    png = Path("runs/timelines") / f"test_budgets.py__test_tiny-{tiny.run_id}.png"
    (cell,) = summarise(runs_frame([tiny]), load_expectations())
    experiment = ROOT / "experiments/pods/process-crash.yaml"  # the shipped one
    message = (
        f"process-crash/pod: RTO {tiny.rto_s:.3f} s is over the budget of 0.001 s "
        f"({experiment} on fake/fast, healers eviction+watchdog, run {tiny.run_id}, "
        f"handbook verdict: {cell.verdict.value}); timeline: {png}"
    )
    assert failure_text(reprec, "test_tiny") == message
    assert (pytester.path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cases = junit(xml)
    assert cases["test_tiny"]["_failure"] == message
    for name, row, budget in (("test_generous", generous, "1000"), ("test_tiny", tiny, "0.001")):
        props = cases[name]
        assert props["_properties"] == [
            "rto_s", "rto_uncertainty_s", "detection_s", "budget_s", "status", "verdict",
            "cell", "run_id", "timeline", "timeline_json",
        ]  # fmt: skip
        assert props["rto_s"] == f"{row.rto_s:.3f}"
        unc = row.rto_uncertainty_s  # None on the fake: its transitions carry no brackets
        assert props["rto_uncertainty_s"] == ("" if unc is None else f"{unc:.4f}")
        assert props["detection_s"] == ("" if row.detection_s is None else f"{row.detection_s:.3f}")
        assert props["budget_s"] == budget
        assert props["status"] == "recovered"
        assert props["verdict"] == cell.verdict.value
        assert props["cell"] == "process-crash/pod"
        assert props["run_id"] == row.run_id
        stem = f"runs/timelines/test_budgets.py__{name}-{row.run_id}"
        assert props["timeline"] == f"{stem}.png"
        assert props["timeline_json"] == f"{stem}.json"
        assert RunResult.model_validate_json((pytester.path / f"{stem}.json").read_text()) == row
    assert Journal().pending() == []


def test_the_junit_figures_raise_no_warning_under_the_default_junit_family(
    pytester: pytest.Pytester, fake: Fakes
) -> None:
    # pytest's own record_property fixture warns under junit_family=xunit2 (the
    # default); the plugin writes the test's user_properties, which it does not.
    pytester.makepyfile(test_budgets=BUDGETS)
    result = pytester.runpytest(*STRICT, "--junitxml=out.xml", "-k", "generous")
    result.assert_outcomes(passed=1)
    assert "warnings" not in result.parseoutcomes()
    assert junit(pytester.path / "out.xml")["test_generous"]["status"] == "recovered"


def test_rto_fixture_returns_the_stored_run(pytester: pytest.Pytester, fake: Fakes) -> None:
    pytester.makepyfile(
        test_fixture="""
        import json
        from pathlib import Path

        def test_run(rto):
            r = rto.run("experiments/pods/process-crash.yaml", healers=["watchdog"],
                        deadline_s=30, budget_s=5)
            assert rto.last is r and r.failure() is None
            Path("seen.json").write_text(json.dumps({
                "status": r.status.value, "rto_s": r.rto_s, "detection_s": r.detection_s,
                "verdict": r.verdict, "cell": r.cell, "run_id": r.run_id,
                "timeline": str(r.timeline), "png": str(r.timeline_png),
                "healers": r.row.healers, "deadline_s": r.deadline_s,
            }))
        """
    )
    reprec = pytester.inline_run(*STRICT)
    reprec.assertoutcome(passed=1)
    (row,) = rows(pytester)
    seen = json.loads((pytester.path / "seen.json").read_text())
    (cell,) = summarise(runs_frame([row]), load_expectations())
    assert seen == {
        "status": row.status.value,
        "rto_s": row.rto_s,
        "detection_s": row.detection_s,
        "verdict": cell.verdict.value,
        "cell": "process-crash/pod",
        "run_id": row.run_id,
        "timeline": seen["timeline"],
        "png": seen["png"],
        "healers": ["watchdog"],  # the override reached the run
        "deadline_s": 30.0,
    }
    assert row.status is RunStatus.RECOVERED and row.rto_s is not None
    assert json.loads(Path(seen["timeline"]).read_text())["timeline"] == [
        e.model_dump(mode="json") for e in row.timeline
    ]
    assert Path(seen["png"]).read_bytes()[:4] == b"\x89PNG"


def test_not_recovered_fails_naming_the_deadline(pytester: pytest.Pytester, fake: Fakes) -> None:
    fake.backend.restart_delay = 1000.0  # the process never comes back within the deadline
    pytester.makepyfile(
        test_nr="""
        import pytest

        @pytest.mark.rto("experiments/pods/process-crash.yaml", deadline_s=3)
        def test_crash(rto):
            pass
        """
    )
    reprec = pytester.inline_run(*STRICT)
    reprec.assertoutcome(failed=1)
    (row,) = rows(pytester)
    assert row.status is RunStatus.NOT_RECOVERED
    text = failure_text(reprec, "test_crash")
    assert text.startswith("process-crash/pod: not recovered within the deadline of 3 s (")
    assert f"run {row.run_id}" in text and "\n" not in text


def test_aborted_run_fails_with_its_error(pytester: pytest.Pytester, fake: Fakes) -> None:
    fake.backend.fail_on["kill_main_process"] = "the node refused the kill"
    pytester.makepyfile(
        test_ab="""
        import pytest

        @pytest.mark.rto("experiments/pods/process-crash.yaml", budget_s=10)
        def test_crash(rto):
            pass

        def test_from_the_body(rto):
            rto.run("experiments/pods/process-crash.yaml")
        """
    )
    reprec = pytester.inline_run(*STRICT)
    reprec.assertoutcome(failed=2)
    assert [r.status for r in rows(pytester)] == [RunStatus.ABORTED] * 2
    for name in ("test_crash", "test_from_the_body"):
        text = failure_text(reprec, name)
        assert text.startswith("process-crash/pod: the run aborted")
        assert "the node refused the kill" in text and "Traceback" not in text
    assert "(budget 10 s)" in failure_text(reprec, "test_crash")


def test_a_failing_body_still_reports_the_budget(pytester: pytest.Pytester, fake: Fakes) -> None:
    pytester.makepyfile(
        test_body="""
        import pytest

        @pytest.mark.rto("experiments/pods/process-crash.yaml", budget_s=0.001)
        def test_both(rto):
            assert False, "the body's own check"

        @pytest.mark.rto("experiments/pods/process-crash.yaml", budget_s=1000)
        def test_body_only(rto):
            assert False, "the body's own check"
        """
    )
    reprec = pytester.inline_run(*STRICT)
    reprec.assertoutcome(failed=2)
    both = failure_text(reprec, "test_both")
    assert both.startswith("process-crash/pod: RTO ") and "over the budget of 0.001 s" in both
    assert both.endswith(
        "The test body also failed: AssertionError: the body's own check\nassert False"
    )
    assert "the body's own check" in failure_text(reprec, "test_body_only")


# --- the lab's lifecycle (--rto-lab) -----------------------------------------------


def test_lab_up_once_and_down_after_failures_and_errors(
    pytester: pytest.Pytester, fake: Fakes
) -> None:
    pytester.makepyfile(
        test_lab="""
        import pytest

        @pytest.mark.rto("experiments/pods/process-crash.yaml", budget_s=0.001)
        def test_over_budget(rto):
            pass

        def test_fails(rto):
            assert False

        @pytest.fixture
        def broken():
            raise RuntimeError("setup broke")

        def test_errors(rto, broken):
            pass

        def test_passes(rto_backend):
            pass
        """
    )
    reprec = pytester.inline_run(*STRICT, "--rto-lab", "--rto-lab-nodes", "2")
    reprec.assertoutcome(passed=1, failed=3)  # assertoutcome counts setup errors as failed
    assert fake.provider.ups == [("fast", 2, False)]
    assert fake.provider.downs == 1


def test_lab_down_after_ctrl_c_in_a_test(pytester: pytest.Pytester, fake: Fakes) -> None:
    pytester.makepyfile(
        test_int="""
        def test_first(rto):
            rto.run("experiments/pods/process-crash.yaml")
            raise KeyboardInterrupt

        def test_never_reached(rto):
            pass
        """
    )
    result = pytester.runpytest(*STRICT, "--rto-lab", no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert fake.provider.ups == [("fast", 3, False)] and fake.provider.downs == 1
    assert "test_never_reached" not in result.stdout.str()
    assert [r.status for r in rows(pytester)] == [RunStatus.RECOVERED]


def test_lab_down_after_ctrl_c_mid_fault(pytester: pytest.Pytester, fake: Fakes) -> None:
    fake.status_hook.append("waiting for recovery")  # Ctrl-C while the node is drained
    pytester.makepyfile(
        test_mid="""
        import pytest

        @pytest.mark.rto("experiments/pods/node-drain.yaml", budget_s=10)
        def test_drain(rto):
            pass
        """
    )
    result = pytester.runpytest(*STRICT, "--rto-lab", no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert fake.provider.downs == 1
    (row,) = rows(pytester)
    assert row.status is RunStatus.ABORTED and row.error == "interrupted (Ctrl-C)"
    assert "cordon(node1)" in fake.backend.calls and "uncordon(node1)" in fake.backend.calls
    assert Journal().pending() == []  # the drain was reverted before the lab went down


def test_lab_down_after_ctrl_c_while_it_comes_up(pytester: pytest.Pytester, fake: Fakes) -> None:
    fake.provider.up_raises = KeyboardInterrupt()
    pytester.makepyfile(test_up="def test_it(rto):\n    pass\n")
    result = pytester.runpytest(*STRICT, "--rto-lab", no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert len(fake.provider.ups) == 1 and fake.provider.downs == 1
    assert rows(pytester) == [] and fake.backend.calls == []


def test_a_lab_that_fails_to_come_up_is_one_error_per_test_and_down(
    pytester: pytest.Pytester, fake: Fakes
) -> None:
    fake.provider.up_raises = LabError("node2 not Ready within 120 s")
    pytester.makepyfile(test_up="def test_a(rto):\n    pass\n\ndef test_b(rto):\n    pass\n")
    result = pytester.runpytest(*STRICT, "--rto-lab")
    result.assert_outcomes(errors=2)
    assert len(fake.provider.ups) == 1 and fake.provider.downs == 1  # tried once, taken down
    assert result.stdout.str().count("rto: node2 not Ready within 120 s") >= 2
    assert "Traceback" not in result.stdout.str() and "During handling" not in result.stdout.str()


def test_a_lab_that_fails_to_go_down_is_one_teardown_error(
    pytester: pytest.Pytester, fake: Fakes
) -> None:
    fake.provider.down_raises = LabError("netns rtox-node1 is busy; run `rto lab down`")
    pytester.makepyfile(test_down="def test_a(rto_backend):\n    pass\n")
    reprec = pytester.inline_run(*STRICT, "--rto-lab")
    (report,) = [r for r in reprec.getreports("pytest_runtest_logreport") if r.failed]
    assert report.when == "teardown"
    assert str(report.longrepr) == "rto: netns rtox-node1 is busy; run `rto lab down`"
    assert fake.provider.downs == 1  # not tried again at unconfigure


def test_lab_down_after_sigterm(pytester: pytest.Pytester) -> None:
    # A child process: SIGTERM must reach a real process's handler. Its
    # conftest points the plugin at a provider that writes its ups and downs.
    log = pytester.path / "lab.log"
    pytester.makeconftest(
        f"""
        import chaos.pytest_plugin as plugin

        class Provider:
            name = "lab"
            def up(self, profile, nodes, vms):
                with open({str(log)!r}, "a") as f:
                    f.write("up\\n")
            def down(self):
                with open({str(log)!r}, "a") as f:
                    f.write("down\\n")

        plugin.PROVIDER_FACTORY = lambda name: Provider()
        plugin.BACKEND_FACTORY = lambda name: object()
        """
    )
    pytester.makepyfile(
        test_term="""
        import os, signal
        import pytest

        def test_cancelled(rto_backend):
            os.kill(os.getpid(), signal.SIGTERM)
            pytest.fail("SIGTERM did not interrupt the test")
        """
    )
    result = pytester.runpytest_subprocess(*STRICT, "--rto-lab", timeout=60)
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
    assert log.read_text().split() == ["up", "down"]


def test_vmi_experiments_are_skipped_on_a_lab_without_vms(
    pytester: pytest.Pytester, fake: Fakes
) -> None:
    pytester.makepyfile(
        test_vmi="""
        import pytest

        @pytest.mark.rto("experiments/vmis/node-drain.yaml", budget_s=10)
        def test_drain(rto):
            pass
        """
    )
    result = pytester.runpytest(*STRICT, "--rto-lab", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*VMI experiment*add --rto-lab-vms*"])
    assert fake.provider.ups == [] and fake.backend.calls == []  # skipped before the lab came up


def test_the_example_file_passes_on_the_fake_backend(
    pytester: pytest.Pytester, fake: Fakes
) -> None:
    # The file a team copies, alone in its repo: pods pass, the VMI test is
    # skipped without --rto-lab-vms and passes with it.
    shutil.copy(EXAMPLE, pytester.path / EXAMPLE.name)
    result = pytester.runpytest(*STRICT, "--rto-lab", "--junitxml=pods.xml")
    result.assert_outcomes(passed=3, skipped=1)
    result = pytester.runpytest(*STRICT, "--rto-lab", "--rto-lab-vms")
    result.assert_outcomes(passed=4)
    assert fake.provider.ups == [("fast", 3, False), ("fast", 3, True)]
    assert fake.provider.downs == 2
    result.stdout.fnmatch_lines(
        [
            "*rto: runs of this session*",
            "node-drain/vmi *test_vmi_live_migrates_off_a_drained_node*",
        ]
    )


# --- bad input -----------------------------------------------------------------------

BAD_MARKERS = [
    ('"experiments/pods/process-crash.yaml", budget=2', "budget: unknown argument; allowed: "),
    ('"experiments/pods/process-crash.yaml", budget_s=-1', "budget_s: must be a positive number"),
    (
        '"experiments/pods/process-crash.yaml", budget_s="2"',
        "budget_s: must be a number of seconds",
    ),
    ('"experiments/pods/process-crash.yaml", budget_s=True', "budget_s: must be a number"),
    ('"experiments/pods/process-crash.yaml", healers="watchdog"', "healers: must be a list of"),
    ('"experiments/pods/process-crash.yaml", healers=[1]', "healers: must be a list of healer"),
    ('"experiments/pods/process-crash.yaml", healers=["nope"]', "override.healers: unknown heal"),
    ('"experiments/pods/process-crash.yaml", profile="slow"', "profile: got 'slow'; allowed"),
    ('"experiments/pods/process-crash.yaml", duration_s=5', "duration_s: fault process-crash has"),
    (
        '"experiments/pods/nope.yaml", budget_s=2',
        "experiment file 'experiments/pods/nope.yaml' not",
    ),
    ('"bad.yaml", budget_s=2', "bad.yaml: invalid: extensions[0].fault.mode: "),
    ("budget_s=2", "expects one experiment file as its only positional argument"),
    ('"a.yaml", "b.yaml"', "got 2 positional argument(s)"),
]


@pytest.mark.parametrize(
    ("args", "says"), BAD_MARKERS, ids=[s.split(":")[0] for _, s in BAD_MARKERS]
)
def test_bad_marker_arguments_error_that_test_only_and_inject_nothing(
    pytester: pytest.Pytester, fake: Fakes, args: str, says: str
) -> None:
    text = (ROOT / "experiments/pods/storage-hang.yaml").read_text()
    (pytester.path / "bad.yaml").write_text(text.replace("mode: hang", "mode: melt"))
    pytester.makepyfile(
        test_bad=f"""
        import pytest

        @pytest.mark.rto({args})
        def test_it(rto):
            pass

        def test_other():
            pass
        """
    )
    reprec = pytester.inline_run(*STRICT, "--rto-lab")
    reprec.assertoutcome(passed=1, failed=1)
    (report,) = [r for r in reprec.getreports("pytest_runtest_logreport") if r.failed]
    assert report.when == "setup"
    message = str(report.longrepr)
    assert message.startswith("test_bad.py::test_it: @pytest.mark.rto: "), message
    assert says in message and "\n" not in message and "Traceback" not in message
    assert fake.provider.ups == [] and fake.backend.calls == [] and rows(pytester) == []


def test_bad_rto_run_arguments_fail_the_test_in_one_paragraph(
    pytester: pytest.Pytester, fake: Fakes
) -> None:
    pytester.makepyfile(
        test_run="""
        def test_it(rto):
            rto.run("experiments/pods/process-crash.yaml", healers="watchdog")
        """
    )
    reprec = pytester.inline_run(*STRICT)
    reprec.assertoutcome(failed=1)
    assert failure_text(reprec, "test_it") == (
        "test_run.py::test_it: rto.run('experiments/pods/process-crash.yaml'): healers: must be "
        "a list of healer names, e.g. ['watchdog'], got 'watchdog'."
    )
    assert fake.backend.calls == [] and rows(pytester) == []


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (
            ["--rto-backend", "nope"],
            "--rto-backend 'nope': unknown backend; choose one of kube, lab",
        ),
        (["--rto-context", "prod"], "--rto-context applies to the kube backend only"),
        (["--rto-lab", "--rto-backend", "kube"], "--rto-lab brings up the harness's lab"),
        (["--rto-lab-vms"], "--rto-lab-vms says how --rto-lab brings the lab up; add --rto-lab"),
        (["--rto-lab", "--rto-lab-nodes", "9"], "--rto-lab-nodes '9': a whole number of nodes"),
        (["--rto-lab", "--rto-lab-nodes", "two"], "--rto-lab-nodes 'two': a whole number"),
        (["--rto-profile", "slow"], "--rto-profile 'slow': unknown profile; allowed: "),
    ],
)
def test_bad_options_are_one_usage_error(
    pytester: pytest.Pytester, fake: Fakes, options: list[str], says: str
) -> None:
    pytester.makepyfile(test_x="def test_it(rto):\n    pass\n")
    result = pytester.runpytest(*STRICT, *options)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    (line,) = [ln for ln in result.errlines if ln.startswith("ERROR:")]
    assert says in line and "Traceback" not in result.stderr.str()
    assert fake.provider.ups == [] and fake.backend.calls == []


def test_kube_context_reaches_the_backend_through_the_environment(
    pytester: pytest.Pytester, fake: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RTO_KUBE_CONTEXT", raising=False)
    pytester.makepyfile(
        test_ctx="""
        import os

        def test_it(rto_backend):
            assert os.environ["RTO_KUBE_CONTEXT"] == "staging"
        """
    )
    reprec = pytester.inline_run(*STRICT, "--rto-backend", "kube", "--rto-context", "staging")
    reprec.assertoutcome(passed=1)
    assert "RTO_KUBE_CONTEXT" not in os.environ  # restored when the inner run ended


# --- where experiment files are found -------------------------------------------------


def test_experiments_resolve_test_dir_then_rootdir_then_shipped(tmp_path: Path) -> None:
    shipped = plugin.shipped_experiments()
    assert sorted(p.relative_to(shipped) for p in shipped.rglob("*.yaml")) == sorted(
        p.relative_to(ROOT / "experiments") for p in (ROOT / "experiments").rglob("*.yaml")
    )
    tests, root = tmp_path / "repo" / "tests", tmp_path / "repo"
    tests.mkdir(parents=True)
    name = "experiments/pods/process-crash.yaml"
    resolve = plugin.resolve_experiment
    assert resolve(name, tests, root) == shipped / "pods/process-crash.yaml"
    assert resolve("pods/process-crash.yaml", tests, root) == shipped / "pods/process-crash.yaml"
    (root / "experiments/pods").mkdir(parents=True)
    (root / name).write_text("rootdir's")
    assert resolve(name, tests, root) == root / name
    (tests / "experiments/pods").mkdir(parents=True)
    (tests / name).write_text("the test dir's")
    assert resolve(name, tests, root) == tests / name
    with pytest.raises(SpecError, match=r"'experiments/pods/x.yaml' not found \(looked for"):
        resolve("experiments/pods/x.yaml", tests, root)


# --- one real lab run through the plugin ------------------------------------------------


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_new_users_repo_runs_pytest_rto_lab_on_the_real_lab(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from private_lab import PrivateLab

    lab = PrivateLab("pyplug", "rtopp", "node")  # node names as the experiment files place them
    lab.isolate(monkeypatch, journal=pytester.path / "journal.jsonl")
    example = EXAMPLE.read_text() + (
        "\n\n# Added by the test: a budget no restart can meet.\n"
        '@pytest.mark.rto("experiments/pods/process-crash.yaml", budget_s=0.001)\n'
        "def test_pod_restarts_within_a_millisecond(rto: Rto) -> None:\n"
        "    pass\n"
    )
    pytester.makepyfile(test_rto_budgets=example)
    xml = pytester.path / "rto.xml"
    t0 = time.monotonic()
    try:
        result = pytester.runpytest_subprocess(
            *STRICT, "--rto-lab", "--rto-lab-nodes", "2", f"--junitxml={xml}", "-rs", timeout=240
        )
    finally:
        from cluster.lab import lifecycle

        lifecycle.lab_down()  # the plugin takes it down; this covers a crash of the child
    took = time.monotonic() - t0
    print(result.stdout.str()[-3000:])
    print(f"FIGURE pytest --rto-lab (2 nodes, fast, 4 pod runs): {took:.1f} s")
    assert lab.our_objects() == {}
    result.assert_outcomes(passed=3, failed=1, skipped=1)
    stored = ResultsStore(pytester.path / "runs").load()
    assert len(stored) == 4 and all(r.status is RunStatus.RECOVERED for r in stored), stored
    cases = junit(xml)
    tiny = cases["test_pod_restarts_within_a_millisecond"]
    row = next(r for r in stored if r.run_id == tiny["run_id"])
    assert row.rto_s is not None
    assert str(tiny["_failure"]).startswith(
        f"process-crash/pod: RTO {row.rto_s:.3f} s is over the budget of 0.001 s ("
    )
    assert f"timeline: {tiny['timeline']}" in str(tiny["_failure"])
    assert (pytester.path / str(tiny["timeline"])).read_bytes()[:4] == b"\x89PNG"
    for name in ("test_pod_restarts_after_a_crash", "test_pod_comes_back_after_a_drain"):
        props = cases[name]
        r = next(r for r in stored if r.run_id == props["run_id"])
        assert props["rto_s"] == f"{r.rto_s:.3f}" and props["status"] == "recovered"
        assert props["verdict"] == "scaled"  # the fast profile: scaled timings, no verdict
        print(f"FIGURE {name}: {props['cell']} RTO {props['rto_s']} s, budget {props['budget_s']}")
    print(f"FIGURE tiny budget: RTO {tiny['rto_s']} s; message: {tiny['_failure']}")
    assert Journal().pending() == []
