"""The ``rto`` pytest plugin: RTO budgets as tests in a platform team's own repo.

Found by pytest through the ``pytest11`` entry point wherever the harness is
installed, and inert until a test asks for it (no option given, no fixture
used, no marker: nothing is imported beyond this module's own imports, nothing
is brought up). Filled by pytest (options, markers, fixtures, hooks); calls the
runner, which writes the same row to the results store as ``rto run``, and the
reports, for the handbook's verdict and the timeline figure. It adds:

- options ``--rto-backend lab|kube``, ``--rto-context`` (kube), ``--rto-lab``
  (the lab up once for the session through the backend provider and down at the
  end, whatever happened: failures, errors, Ctrl-C, SIGTERM), ``--rto-profile``,
  ``--rto-lab-nodes``, ``--rto-lab-vms``, ``--rto-runs-dir``, ``--rto-out``;
- fixtures ``rto_backend`` (session: the backend) and ``rto`` (function):
  ``rto.run(FILE, duration_s=, healers=, deadline_s=, profile=)`` runs one
  experiment and returns an :class:`RtoResult`;
- the marker ``@pytest.mark.rto(FILE, budget_s=..., ...)``: runs the experiment
  before the test body, and the test fails (one message naming the cell, the
  measured RTO, the budget and the timeline) when the RTO is over the budget,
  the workload did not recover, or the run aborted.

Every run's figures are the test's JUnit properties. Experiment files are found
relative to the test file, then the rootdir, then among the experiments shipped
with the harness (the package ``chaos.experiments``, the repo's ``experiments/``).
Bad marker arguments or options are one paragraph naming the test (or option)
and the field, before anything is injected.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from chaos.backends import BACKENDS, apply_profile, get_backend, get_provider
from chaos.results import ResultsStore, RunResult, RunStatus
from chaos.runner import RunOptions, run_experiment
from chaos.spec import ExperimentSpec, load_experiment
from cluster.api import Backend, BackendProvider
from cluster.profiles import PROFILES
from core.errors import HarnessError, SpecError
from reports.expectations import Expectations, load_expectations

__all__ = [
    "BACKEND_FACTORY",
    "OPTIONS_FACTORY",
    "PROVIDER_FACTORY",
    "Rto",
    "RtoResult",
    "resolve_experiment",
    "shipped_experiments",
]

# Injection points for tests (tests/fakes.py FakeBackend, a fake recorder and
# clock, a provider that counts ups and downs); read at call time, so a test can
# monkeypatch them. Production never changes them.
BACKEND_FACTORY: Callable[[str], Backend] = get_backend
OPTIONS_FACTORY: Callable[[], RunOptions] = RunOptions
PROVIDER_FACTORY: Callable[[str], BackendProvider] = get_provider

MARKER = "rto"
_MARK_KEYWORDS = ("budget_s", "healers", "duration_s", "deadline_s", "profile")
_NODES_DEFAULT = 3
_NODES_RANGE = (2, 8)  # what `rto lab up` and a campaign's `nodes` accept


# --- the result of one run --------------------------------------------------------


@dataclass(frozen=True)
class RtoResult:
    """One experiment run by the plugin: its figures, verdict and timeline files.

    ``cell`` is the report's cell name without backend, profile and healers
    (``process-crash/pod``, ``storage-lost[hang]/vmi``); ``verdict`` the
    handbook's verdict on this one run (``reports.analysis.Verdict`` value:
    holds, contradicted, scaled, no recovery, ...); ``timeline`` the run's row
    as JSON (its timeline events included) and ``timeline_png`` its plot.
    """

    experiment: Path
    cell: str
    status: RunStatus
    rto_s: float | None
    detection_s: float | None
    verdict: str
    verdict_detail: str
    run_id: str
    timeline: Path
    timeline_png: Path
    deadline_s: float
    row: RunResult = field(repr=False)
    budget_s: float | None = None

    @property
    def rto_uncertainty_s(self) -> float | None:
        """Width of the interval the true RTO lies in (None: not recorded)."""
        return self.row.rto_uncertainty_s

    @property
    def recovered(self) -> bool:
        """Recovered within the deadline, or no outage at all (RTO 0)."""
        return self.status in (RunStatus.RECOVERED, RunStatus.NO_OUTAGE)

    @property
    def error(self) -> str | None:
        return self.row.error

    def failure(self) -> str | None:
        """The one-paragraph failure against ``budget_s``; None when it passes."""
        rto = self.rto_s
        budget = "" if self.budget_s is None else f" (budget {self.budget_s:g} s)"
        if self.status is RunStatus.ABORTED:
            what = f"the run aborted{budget}: {self.error or 'no error recorded'}"
        elif self.status is RunStatus.NOT_RECOVERED:
            what = f"not recovered within the deadline of {self.deadline_s:g} s{budget}"
        elif rto is None:
            what = f"recovered, but no RTO was measured{budget}"
        elif self.budget_s is not None and rto > self.budget_s:
            what = f"RTO {rto:.3f} s is over the budget of {self.budget_s:g} s"
        else:
            return None
        return f"{self.cell}: {what} ({self._context()}); timeline: {_shown(self.timeline_png)}"

    def _context(self) -> str:
        r = self.row
        healers = "+".join(sorted(r.healers)) or "none"
        return (
            f"{_shown(self.experiment)} on {r.backend}/{r.profile}, healers {healers}, "
            f"run {r.run_id}, handbook verdict: {self.verdict}"
        )


def _shown(path: Path) -> str:
    """A path as a user finds it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _cell_name(row: RunResult) -> str:
    variant = f"[{row.variant}]" if row.variant else ""
    return f"{row.fault}{variant}/{row.kind}"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _junit_properties(result: RtoResult) -> list[tuple[str, str]]:
    """The run's figures as JUnit ``<property>`` pairs (empty value: not measured)."""
    return [
        ("rto_s", _fmt(result.rto_s)),
        ("rto_uncertainty_s", _fmt(result.rto_uncertainty_s, 4)),
        ("detection_s", _fmt(result.detection_s)),
        ("budget_s", "" if result.budget_s is None else f"{result.budget_s:g}"),
        ("status", result.status.value),
        ("verdict", result.verdict),
        ("cell", result.cell),
        ("run_id", result.run_id),
        ("timeline", _shown(result.timeline_png)),
        ("timeline_json", _shown(result.timeline)),
    ]


# --- where experiment files are found ---------------------------------------------


def shipped_experiments() -> Path:
    """The experiment files shipped with the harness (the repo's ``experiments/``,
    installed as the package ``chaos.experiments``, editable or not)."""
    return Path(str(files("chaos.experiments")))


def resolve_experiment(name: str | os.PathLike[str], test_dir: Path, rootdir: Path) -> Path:
    """``name`` relative to the test file's directory, then the rootdir, then the
    shipped experiments (``experiments/pods/x.yaml`` or ``pods/x.yaml``); an
    absolute path as it is. ``SpecError`` naming every place looked in."""
    path = Path(name)
    if path.is_absolute():
        candidates = [path]
    else:
        parts = path.parts[1:] if path.parts[:1] == ("experiments",) else path.parts
        candidates = [test_dir / path, rootdir / path, shipped_experiments().joinpath(*parts)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise SpecError(f"experiment file {str(name)!r} not found (looked for {looked})")


# --- arguments of the marker and of rto.run ------------------------------------------


def _seconds(value: object) -> float | None:
    if value is None:
        return None
    # bool is an int to Python; "2" is a string: neither is a number of seconds here
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number of seconds, got {value!r}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"must be a positive number of seconds, got {value!r}")
    return float(value)


class _RunArgs(BaseModel):
    """What a marker or ``rto.run`` may set on top of the experiment file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    budget_s: float | None = None
    healers: tuple[str, ...] | None = None
    duration_s: float | None = None
    deadline_s: float | None = None
    profile: str | None = None

    @field_validator("budget_s", "duration_s", "deadline_s", mode="before")
    @classmethod
    def _seconds(cls, v: object) -> float | None:
        return _seconds(v)

    @field_validator("healers", mode="before")
    @classmethod
    def _names(cls, v: object) -> tuple[str, ...] | None:
        if v is None:
            return None
        if not isinstance(v, list | tuple) or not all(isinstance(n, str) for n in v):
            raise ValueError(f"must be a list of healer names, e.g. ['watchdog'], got {v!r}")
        return tuple(v)

    @field_validator("profile", mode="before")
    @classmethod
    def _profile(cls, v: object) -> str | None:
        if v is None:
            return None
        if not isinstance(v, str) or v not in PROFILES:
            raise ValueError(f"got {v!r}; allowed: {', '.join(sorted(PROFILES))}")
        return v

    @classmethod
    def parse(cls, where: str, kwargs: Mapping[str, object]) -> _RunArgs:
        """Validated, or one ``SpecError`` paragraph: ``where``, then every bad field."""
        try:
            return cls.model_validate(dict(kwargs))
        except ValidationError as exc:
            problems = []
            for err in exc.errors(include_url=False):
                name = ".".join(str(p) for p in err["loc"])
                if err["type"] == "extra_forbidden":
                    msg = f"unknown argument; allowed: {', '.join(_MARK_KEYWORDS)}"
                else:
                    msg = err["msg"].removeprefix("Value error, ")
                problems.append(f"{name}: {msg}")
            raise SpecError(f"{where}: " + "; ".join(problems) + ".") from None

    def apply(self, spec: ExperimentSpec) -> ExperimentSpec:
        """The experiment with these overrides, validated like a campaign's."""
        overrides = (self.healers, self.duration_s, self.deadline_s, self.profile)
        if all(v is None for v in overrides):
            return spec
        return spec.with_overrides(
            profile=self.profile,
            healers=None if self.healers is None else list(self.healers),
            duration_s=self.duration_s,
            deadline_s=self.deadline_s,
        )


@dataclass(frozen=True)
class _Marked:
    """A test's valid ``@pytest.mark.rto``: the experiment with its overrides."""

    spec: ExperimentSpec
    budget_s: float | None


def _marked(item: pytest.Item) -> _Marked:
    """The test's marker as a validated experiment; ``SpecError`` naming the test."""
    where = f"{item.nodeid}: @pytest.mark.rto"
    marks = list(item.iter_markers(MARKER))
    if len(marks) != 1:
        raise SpecError(
            f"{where}: {len(marks)} rto markers apply to this test (module, class and "
            "function together); one experiment per test: use rto.run for more"
        )
    mark = marks[0]
    if len(mark.args) != 1 or not isinstance(mark.args[0], str | os.PathLike):
        raise SpecError(
            f"{where}: expects one experiment file as its only positional argument, "
            f'e.g. @pytest.mark.rto("experiments/pods/process-crash.yaml", budget_s=10); '
            f"got {len(mark.args)} positional argument(s)"
            + (f" ({mark.args[0]!r})" if mark.args else "")
        )
    args = _RunArgs.parse(where, mark.kwargs)
    return _Marked(_load(where, mark.args[0], item, args), args.budget_s)


def _load(
    where: str, name: str | os.PathLike[str], item: pytest.Item, args: _RunArgs
) -> ExperimentSpec:
    try:
        path = resolve_experiment(name, item.path.parent, item.config.rootpath)
        return args.apply(load_experiment(path))
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None


# --- options ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    """The plugin's options, validated once at configure."""

    backend: str
    lab: bool
    profile: str
    nodes: int
    vms: bool
    runs_dir: Path
    out_dir: Path
    context: str | None = None

    @classmethod
    def from_config(cls, config: pytest.Config) -> _Settings:
        opt = config.getoption
        backend = opt("rto_backend")
        context = opt("rto_context")
        lab = bool(opt("rto_lab"))
        nodes_text = opt("rto_lab_nodes")
        vms = bool(opt("rto_lab_vms"))
        if backend not in BACKENDS:
            known = ", ".join(BACKENDS) or "none installed (reinstall the harness)"
            raise SpecError(f"--rto-backend {backend!r}: unknown backend; choose one of {known}")
        if context is not None and backend != "kube":
            raise SpecError(
                f"--rto-context applies to the kube backend only (this is {backend!r}); "
                "add --rto-backend kube"
            )
        if lab and backend != "lab":
            raise SpecError(
                f"--rto-lab brings up the harness's lab; the {backend} backend runs on a "
                "cluster the harness does not own: drop --rto-lab"
            )
        if not lab and (nodes_text is not None or vms):
            given = "--rto-lab-nodes" if nodes_text is not None else "--rto-lab-vms"
            raise SpecError(f"{given} says how --rto-lab brings the lab up; add --rto-lab")
        profile = opt("rto_profile")
        if profile not in PROFILES:
            raise SpecError(
                f"--rto-profile {profile!r}: unknown profile; "
                f"allowed: {', '.join(sorted(PROFILES))}"
            )
        nodes = _NODES_DEFAULT
        if nodes_text is not None:
            lo, hi = _NODES_RANGE
            if not re.fullmatch(r"\d+", nodes_text) or not lo <= int(nodes_text) <= hi:
                raise SpecError(
                    f"--rto-lab-nodes {nodes_text!r}: a whole number of nodes from {lo} to {hi}"
                )
            nodes = int(nodes_text)
        here = config.invocation_params.dir
        runs_dir = here / opt("rto_runs_dir")
        out = opt("rto_out")
        return cls(
            backend=backend,
            lab=lab,
            profile=profile,
            nodes=nodes,
            vms=vms,
            runs_dir=runs_dir,
            out_dir=here / out if out is not None else runs_dir / "timelines",
            context=context,
        )


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rto", "RTO budgets (rto-harness)")
    group.addoption(
        "--rto-backend",
        default="lab",
        help="where experiments run: lab (the harness's lab on this machine) or kube "
        "(a real cluster, allowlisted in rto-kube.yaml); default lab",
    )
    group.addoption(
        "--rto-context", default=None, help="kube: the kubeconfig context (must be allowlisted)"
    )
    group.addoption(
        "--rto-lab",
        action="store_true",
        default=False,
        help="bring the lab up for this session (needs root) and down at the end, whatever happens",
    )
    group.addoption(
        "--rto-profile",
        default="fast",
        help="the platform timings --rto-lab brings the lab up with: fast (scaled) or "
        "kubernetes-defaults; default fast",
    )
    group.addoption(
        "--rto-lab-nodes",
        default=None,
        help=f"--rto-lab: how many nodes ({_NODES_RANGE[0]}-{_NODES_RANGE[1]}); "
        f"default {_NODES_DEFAULT}",
    )
    group.addoption(
        "--rto-lab-vms",
        action="store_true",
        default=False,
        help="--rto-lab: also run VMIs (libvirtd per node, the guest image); without it "
        "VMI experiments are skipped",
    )
    group.addoption(
        "--rto-runs-dir",
        default="runs",
        help="the results store (results.jsonl) every run appends to, as `rto run` does; "
        "default ./runs",
    )
    group.addoption(
        "--rto-out",
        default=None,
        help="where each run's timeline (JSON and PNG) is written; default <runs-dir>/timelines",
    )


# --- the session: settings, the lab's lifecycle, the backend ----------------------------


class _Session:
    """Per pytest run: the settings, the lab brought up (at most once), the backend.

    ``close`` is idempotent and called from the ``rto_backend`` finalizer and
    again from ``pytest_unconfigure``, so the lab goes down even if a session
    teardown was cut short.
    """

    def __init__(self, config: pytest.Config, settings: _Settings) -> None:
        self.config = config
        self.settings = settings
        self.backend: Backend | None = None
        self.provider: BackendProvider | None = None
        self.lab_started = False  # set before up(): an interrupted up is still taken down
        self.results: list[tuple[str, RtoResult]] = []
        self._expectations: Expectations | None = None
        self._old_sigterm: Any = None

    def say(self, line: str) -> None:
        """A line on the terminal, past pytest's output capture."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if capture is None:
            reporter.write_line(line)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)

    def open(self) -> Backend:
        if self.backend is not None:
            return self.backend
        s = self.settings
        if s.lab:
            self.provider = PROVIDER_FACTORY(s.backend)
            what = f"{s.nodes} nodes, profile {s.profile}" + (", VMIs" if s.vms else ", pods only")
            self.say(f"rto: bringing the lab up for this session ({what})...")
            self._trap_sigterm()
            self.lab_started = True
            t0 = time.monotonic()
            note = self.provider.up(s.profile, s.nodes, s.vms)
            took = time.monotonic() - t0
            self.say(f"rto: lab up in {took:.1f} s" + (f": {note}" if note else ""))
        self.backend = BACKEND_FACTORY(s.backend)
        return self.backend

    def close(self) -> None:
        backend, self.backend = self.backend, None
        try:
            # Its watches and connections end before the cluster they talk to goes.
            close = getattr(backend, "close", None)
            if callable(close):
                close()
        finally:
            if self.lab_started and self.provider is not None:
                self.lab_started = False  # once: the finalizer, then pytest_unconfigure
                try:
                    t0 = time.monotonic()
                    self.provider.down()
                    self.say(f"rto: lab down in {time.monotonic() - t0:.1f} s")
                finally:
                    self._restore_sigterm()

    def _trap_sigterm(self) -> None:
        """While the lab is up, SIGTERM (a CI job cancelled) interrupts like Ctrl-C,
        so the lab still goes down; the default handler would end the process there."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # someone (a CI wrapper, xdist) handles it already: leave theirs

        owner = os.getpid()

        def interrupt(signum: int, frame: FrameType | None) -> None:
            if os.getpid() != owner:
                # A fork of this process (pyroute2's netns helpers, which stop
                # their children with SIGTERM) must die of it, not unwind into
                # a second copy of this pytest session.
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            raise KeyboardInterrupt("SIGTERM")

        self._old_sigterm = signal.signal(signal.SIGTERM, interrupt)

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    def expectations(self) -> Expectations:
        if self._expectations is None:
            self._expectations = load_expectations()
        return self._expectations


_SESSION = pytest.StashKey[_Session]()
_MARKED = pytest.StashKey[_Marked]()
_BAD_MARK = pytest.StashKey[str]()
_ENV_KEY = "RTO_KUBE_CONTEXT"
_OLD_ENV = pytest.StashKey[str | None]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "rto(experiment, budget_s=None, healers=None, duration_s=None, deadline_s=None, "
        "profile=None): run the experiment file for this test (rto-harness) and fail "
        "when its RTO is over budget_s, it did not recover, or it aborted",
    )
    try:
        settings = _Settings.from_config(config)
    except SpecError as exc:
        raise pytest.UsageError(str(exc)) from None
    if settings.lab and hasattr(config, "workerinput"):
        # An xdist worker: every worker would bring the same lab up and down.
        raise pytest.UsageError(
            "--rto-lab with pytest-xdist (-n): each worker would bring up the same lab; "
            "run the RTO tests without -n"
        )
    if settings.context is not None:
        # The environment, not an argument, as `rto run --context` does: a journal
        # replay in this process rebuilds the kube backend by name and must see it.
        config.stash[_OLD_ENV] = os.environ.get(_ENV_KEY)
        os.environ[_ENV_KEY] = settings.context
    config.stash[_SESSION] = _Session(config, settings)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION, None)
    if session is not None:
        session.close()
    if _OLD_ENV in config.stash:
        old = config.stash[_OLD_ENV]
        if old is None:
            os.environ.pop(_ENV_KEY, None)
        else:
            os.environ[_ENV_KEY] = old


def pytest_report_header(config: pytest.Config) -> str | None:
    session = config.stash.get(_SESSION, None)
    if session is None or not session.settings.lab:
        return None
    s = session.settings
    return (
        f"rto: --rto-lab: the lab comes up with {s.nodes} nodes, profile {s.profile}"
        f"{', VMIs' if s.vms else ', pods only (VMI experiments skipped)'}; results "
        f"{_shown(s.runs_dir / 'results.jsonl')}, timelines {_shown(s.out_dir)}"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Validate every marker at collection; a bad one fails that test's setup only."""
    for item in items:
        if item.get_closest_marker(MARKER) is None:
            continue
        try:
            if not isinstance(item, pytest.Function):
                raise SpecError(f"{item.nodeid}: @pytest.mark.rto applies to test functions only")
            item.stash[_MARKED] = _marked(item)
        except SpecError as exc:
            item.stash[_BAD_MARK] = str(exc)
            continue
        if "rto" not in item.fixturenames:
            item.fixturenames.append("rto")  # the marker's run goes through the rto fixture


def _vmis_off(session: _Session, spec: ExperimentSpec) -> bool:
    return session.settings.lab and not session.settings.vms and spec.rto.target.kind == "vmi"


_SKIP_VMI = "VMI experiment {}, and the lab was brought up without VMs: add --rto-lab-vms"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture (so before the lab comes up): bad marker, or a VMI
    experiment on a lab brought up without VMs."""
    if _BAD_MARK in item.stash:
        pytest.fail(item.stash[_BAD_MARK], pytrace=False)
    marked = item.stash.get(_MARKED, None)
    if marked is not None and _vmis_off(item.config.stash[_SESSION], marked.spec):
        pytest.skip(_SKIP_VMI.format(_shown(marked.spec.path)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A marked test: its experiment, then the body, then the budget."""
    marked = item.stash.get(_MARKED, None)
    if marked is None or not isinstance(item, pytest.Function):
        return (yield)
    rto = item.funcargs["rto"]
    assert isinstance(rto, Rto)
    result = rto._execute(marked.spec, marked.budget_s)
    body: BaseException | None = None
    try:
        outcome = yield
    except (KeyboardInterrupt, SystemExit, pytest.exit.Exception):
        raise
    except BaseException as exc:  # the body failed (or skipped): the budget comes first
        if result.failure() is None:
            raise
        body = exc
    failure = result.failure()
    if failure is None:
        return outcome
    also = "" if body is None else f". The test body also failed: {type(body).__name__}: {body}"
    pytest.fail(failure + also, pytrace=False)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = config.stash.get(_SESSION, None)
    if session is None or not session.results:
        return
    terminalreporter.section("rto: runs of this session")
    for nodeid, r in session.results:
        rto = "-" if r.rto_s is None else f"{r.rto_s:.3f} s"
        budget = "" if r.budget_s is None else f" (budget {r.budget_s:g} s)"
        terminalreporter.write_line(
            f"{r.cell} {r.status.value}: RTO {rto}{budget}, verdict {r.verdict}; "
            f"{nodeid}; {_shown(r.timeline_png)}"
        )


# --- the fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rto_backend(request: pytest.FixtureRequest) -> Backend:
    """The backend every run of this session uses; with ``--rto-lab`` the lab is
    brought up first (once) and taken down at the end of the session."""
    session = request.config.stash[_SESSION]

    def close() -> None:
        try:
            session.close()
        except HarnessError as exc:
            problem = f"rto: {exc}"  # failed outside the handler: pytest would show the chain
        else:
            return
        pytest.fail(problem, pytrace=False)

    request.addfinalizer(close)  # before open: a failed or interrupted up goes down too
    try:
        return session.open()
    except HarnessError as exc:
        problem = f"rto: {exc}"
    pytest.fail(problem, pytrace=False)


@pytest.fixture
def rto(request: pytest.FixtureRequest, rto_backend: Backend) -> Rto:
    """Runs experiments for this test: ``rto.run(FILE, ...)``; ``rto.last`` is the
    latest result (the marker's, in a marked test)."""
    return Rto(request.node, request.config.stash[_SESSION], rto_backend)


class Rto:
    """The ``rto`` fixture of one test."""

    def __init__(self, item: pytest.Item, session: _Session, backend: Backend) -> None:
        self._item = item
        self._session = session
        self._backend = backend
        self.results: list[RtoResult] = []

    @property
    def last(self) -> RtoResult | None:
        return self.results[-1] if self.results else None

    def run(
        self,
        file: str | os.PathLike[str],
        *,
        duration_s: float | None = None,
        healers: Sequence[str] | None = None,
        deadline_s: float | None = None,
        profile: str | None = None,
        budget_s: float | None = None,
    ) -> RtoResult:
        """Run the experiment ``file`` once (overrides as in a campaign) and return
        its result. Bad arguments or an aborted run fail the test with one message;
        a run that did not recover is returned (``result.failure()`` says why)."""
        where = f"{self._item.nodeid}: rto.run({str(file)!r})"
        kwargs = {
            "duration_s": duration_s,
            "healers": healers,
            "deadline_s": deadline_s,
            "profile": profile,
            "budget_s": budget_s,
        }
        try:
            args = _RunArgs.parse(where, kwargs)
            spec = _load(where, file, self._item, args)
        except SpecError as exc:
            bad = str(exc)  # failed outside the handler: pytest would show the chain
        else:
            bad = ""
        if bad:
            pytest.fail(bad, pytrace=False)
        if _vmis_off(self._session, spec):
            pytest.skip(_SKIP_VMI.format(_shown(spec.path)))
        result = self._execute(spec, args.budget_s)
        if result.status is RunStatus.ABORTED:
            pytest.fail(str(result.failure()), pytrace=False)
        return result

    def _execute(self, spec: ExperimentSpec, budget_s: float | None) -> RtoResult:
        """One run through the runner; its row, verdict, timeline files and JUnit figures."""
        s = self._session.settings
        store = _KeptStore(s.runs_dir)
        profile = spec.rto.profile
        error = ""
        try:
            # No profile named: the run records the one the backend says it runs (as `rto run`).
            apply_profile(self._backend, profile)
            run_experiment(spec, self._backend, store, profile=profile, options=OPTIONS_FACTORY())
        except HarnessError as exc:
            error = str(exc)  # the row says it (aborted); a run without a row injected nothing
        row = store.kept
        if row is None:
            pytest.fail(f"{self._item.nodeid}: {spec.path}: {error}", pytrace=False)
        result = self._result(spec, row, budget_s)
        self._item.user_properties.extend(_junit_properties(result))
        self.results.append(result)
        self._session.results.append((self._item.nodeid, result))
        return result

    def _result(self, spec: ExperimentSpec, row: RunResult, budget_s: float | None) -> RtoResult:
        # pandas and matplotlib load only once a run has a row to judge and plot,
        # not in every pytest run of an environment that has the harness installed
        from reports.analysis import runs_frame, summarise
        from reports.plots import plot_timeline  # matplotlib: as above

        (summary,) = summarise(runs_frame([row]), self._session.expectations())
        out = self._session.settings.out_dir
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{_safe(self._item.nodeid)}-{row.run_id}"
        timeline, png = out / f"{stem}.json", out / f"{stem}.png"
        timeline.write_text(
            json.dumps(row.model_dump(mode="json"), indent=1) + "\n", encoding="utf-8"
        )
        png.write_bytes(plot_timeline(row))
        return RtoResult(
            experiment=spec.path,
            cell=_cell_name(row),
            status=row.status,
            rto_s=row.rto_s if row.status is not RunStatus.NO_OUTAGE else (row.rto_s or 0.0),
            detection_s=row.detection_s,
            verdict=summary.verdict.value,
            verdict_detail=summary.detail,
            run_id=row.run_id,
            timeline=timeline,
            timeline_png=png,
            deadline_s=spec.rto.recovery.deadline_s,
            row=row,
            budget_s=budget_s,
        )


def _safe(nodeid: str) -> str:
    """A test id as a file name: ``tests/test_x.py::test_y[a]`` -> ``test_x.py__test_y_a_``."""
    name = nodeid.rsplit("/", 1)[-1].replace("::", "__")
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:120]


class _KeptStore(ResultsStore):
    """The results store, keeping the row the runner appends (also an aborted one,
    which ``run_experiment`` stores before it re-raises)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.kept: RunResult | None = None

    def append(self, result: RunResult) -> None:
        super().append(result)
        self.kept = result
