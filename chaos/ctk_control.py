"""The Chaos Toolkit control that turns a ``chaos run`` into a harness run.

Declared in every experiment file (``controls: [{name: rto, provider: {type:
python, module: chaos.ctk_control}}]``); chaoslib calls its hooks. Before the
experiment it validates the ``rto`` extension, opens a ``chaos.runner.Run``
(workload, recorder, healers, steady state); after it, it reverts and appends
the ``RunResult`` to the results store, so ``chaos run FILE`` and ``rto run FILE``
record the same row in the same place: the store is ``./runs`` of the working
directory, the default of ``rto run``, ``rto campaign`` and ``rto report``, and
the profile is the lab's current one when the experiment names none (as ``rto
run`` records it). A control argument ``runs_dir`` naming another directory
stops the run before anything is created: two stores would each hold half.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chaoslib.exceptions import InterruptExecution

from chaos import ctk
from chaos.backends import apply_profile
from chaos.results import ResultsStore
from chaos.runner import Run
from chaos.spec import load_experiment_document
from core.errors import HarnessError

__all__ = [
    "RUNS_DIR",
    "after_experiment_control",
    "before_experiment_control",
    "configure_control",
    "results_store",
]

# The results store, relative to the working directory: what `rto run`,
# `rto campaign` and `rto report` read and write without --runs-dir.
RUNS_DIR = Path("runs")


def results_store(runs_dir: str | None = None) -> ResultsStore:
    """The store of ``./runs``; ``runs_dir`` (the control's argument) must name it."""
    if runs_dir is not None and Path(runs_dir).resolve() != RUNS_DIR.resolve():
        raise HarnessError(
            f"the control's runs_dir {runs_dir!r} is not the results store "
            f"{RUNS_DIR.resolve()} that `rto run` and `rto report` use; drop runs_dir from "
            "the control's arguments and run `chaos run` in the directory whose runs/ "
            "should hold the row (or use `rto run FILE --runs-dir DIR`)"
        )
    return ResultsStore(RUNS_DIR)


def configure_control(runs_dir: str | None = None, backend: str = "lab") -> None:
    """Nothing to set up ahead: the run is opened per experiment."""
    return None


def before_experiment_control(
    context: dict[str, Any], runs_dir: str | None = None, backend: str = "lab", **_: Any
) -> None:
    title = str(context.get("title", "experiment"))
    try:
        spec = load_experiment_document(Path(f"<chaos toolkit: {title}>"), context)
        store = results_store(runs_dir)
        be = ctk.BACKEND_FACTORY(backend)
        apply_profile(be, spec.rto.profile)
        # The backend's current profile (the lab's) when the experiment names none, as `rto run`
        # records it; never "unknown" for a lab that says what it runs.
        profile = spec.rto.profile or ctk.PROFILE_OF(be)
        run = Run(spec, be, store, ctk.OPTIONS_FACTORY(), profile=profile)
        ctk._set_run(run)
        run.prepare()
    except HarnessError as exc:
        # chaoslib swallows plain exceptions from controls; this one stops the run.
        raise InterruptExecution(f"rto: {exc}") from exc


def after_experiment_control(
    context: dict[str, Any], state: dict[str, Any] | None = None, **_: Any
) -> None:
    if not ctk._ACTIVE:
        return
    run = ctk.current_run()
    try:
        status = (state or {}).get("status", "completed")
        error: BaseException | None = None
        # A deviated steady state after the method is a measurement (the row says
        # not_recovered), not an abort; an interruption or a failed gate is.
        if status in ("interrupted", "aborted") or (status == "failed" and run.fault is None):
            error = HarnessError(f"Chaos Toolkit ended the experiment with status {status}")
        run.finish(error)
    finally:
        ctk._set_run(None)
