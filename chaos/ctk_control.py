"""The Chaos Toolkit control that turns a ``chaos run`` into a harness run.

Declared in every experiment file (``controls: [{name: rto, provider: {type:
python, module: chaos.ctk_control}}]``); chaoslib calls its hooks. Before the
experiment it validates the ``rto`` extension, opens a ``chaos.runner.Run``
(workload, recorder, healers, steady state); after it, it reverts and appends
the ``RunResult`` to the results store, so ``chaos run FILE`` and ``rto run FILE``
record the same row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chaoslib.exceptions import InterruptExecution

from chaos import ctk
from chaos.backends import apply_profile
from chaos.errors import HarnessError
from chaos.results import ResultsStore
from chaos.runner import Run
from chaos.spec import load_experiment_document

__all__ = ["after_experiment_control", "before_experiment_control", "configure_control"]


def configure_control(runs_dir: str = "runs", backend: str = "lab") -> None:
    """Nothing to set up ahead: the run is opened per experiment."""
    return None


def before_experiment_control(
    context: dict[str, Any], runs_dir: str = "runs", backend: str = "lab", **_: Any
) -> None:
    title = str(context.get("title", "experiment"))
    try:
        spec = load_experiment_document(Path(f"<chaos toolkit: {title}>"), context)
        be = ctk.BACKEND_FACTORY(backend)
        apply_profile(be, spec.rto.profile)
        run = Run(spec, be, ResultsStore(Path(runs_dir)), ctk.OPTIONS_FACTORY())
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
