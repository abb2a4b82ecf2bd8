"""The Chaos Toolkit extension: the functions experiment files call.

Referenced by ``experiments/**/*.yaml`` in ``steady-state-hypothesis``, ``method``
and ``rollbacks`` as python providers of module ``chaos.ctk``. They act on the
run the ``chaos.ctk_control`` control opened in ``before_experiment_control``
(the same ``chaos.runner.Run`` that ``rto run`` uses, so both paths record the
same row). ``BACKEND_FACTORY``, ``OPTIONS_FACTORY`` and ``PROFILE_OF`` (the
platform profile a backend runs, recorded when the experiment names none) are
the injection points tests override to run experiments on the FakeBackend.
"""

from __future__ import annotations

from collections.abc import Callable

from chaos.backends import get_backend
from chaos.faults import revert_pending
from chaos.journal import Journal
from chaos.runner import Run, RunOptions
from cluster.api import Backend
from core.errors import HarnessError

__all__ = [
    "backend_profile",
    "current_run",
    "hold_fault",
    "inject_fault",
    "revert_all",
    "revert_fault",
    "wait_recovered",
    "workload_answers",
]


def backend_profile(backend: Backend) -> str | None:
    """The profile the backend says it runs (as ``rto run`` records it); None when
    it cannot tell (a real cluster)."""
    return backend.profile


# Injection points (module level so a test can swap them; production never does).
BACKEND_FACTORY: Callable[[str], Backend] = get_backend
OPTIONS_FACTORY: Callable[[], RunOptions] = RunOptions
PROFILE_OF: Callable[[Backend], str | None] = backend_profile

_ACTIVE: list[Run] = []  # the run the control opened (at most one)


def _set_run(run: Run | None) -> None:
    _ACTIVE.clear()
    if run is not None:
        _ACTIVE.append(run)


def current_run() -> Run:
    if not _ACTIVE:
        raise HarnessError(
            "no harness run is open: declare the control "
            "`{name: rto, provider: {type: python, module: chaos.ctk_control}}` "
            "in the experiment's controls"
        )
    return _ACTIVE[0]


def workload_answers(workload: str, timeout_s: float = 30.0) -> bool:
    """Steady-state probe: the workload answers its health endpoint (waits up to timeout)."""
    run = current_run()
    if run.recorder is None or workload != run.spec.rto.target.workload:
        raise HarnessError(
            f"workload_answers({workload!r}): this run targets {run.spec.rto.target.workload!r}"
        )
    return run.recorder.wait_until_up(timeout_s)


def inject_fault() -> str:
    """Inject the fault the experiment's ``rto`` extension describes (journaled)."""
    run = current_run()
    run.inject()
    assert run.fault is not None
    return run.fault.describe()


def hold_fault() -> None:
    """Keep the fault for ``duration_s`` (or until recovery for crash and drain)."""
    current_run().hold()


def revert_fault() -> None:
    """Revert the fault (idempotent; also the experiment's rollback)."""
    if _ACTIVE:
        current_run().revert()


def wait_recovered() -> bool:
    """Wait for recovery up to the experiment's deadline (counted from injection)."""
    return current_run().wait_recovery()


def revert_all() -> int:
    """Revert every fault still pending in the journal; returns how many."""
    return len(revert_pending(Journal(), BACKEND_FACTORY))
