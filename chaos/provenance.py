"""Where a result row came from: the invocation that wrote it, the harness, the host.

Filled once per ``rto campaign`` or ``rto run`` invocation (:func:`new_invocation`)
and read by the runner, which copies it onto every :class:`chaos.results.RunResult`
it writes; ``reports.history`` then groups rows by invocation (one point per
campaign on a trend) and shows the facts that change figures next to them. Every
fact is best effort: a harness installed without git metadata or a failing
``git`` give None, never a failed run.

What VMs run on (KVM or TCG) is not a fact of this module: ``/dev/kvm`` being
there proves nothing (``cluster.lab.accel``: KVM may run the BIOS and hang the
guest), and the real test boots a guest. The runner asks the backend instead
(``vm_accelerator()``, the lab's recorded choice: one settings read), for pod
rows too, into ``RunResult.host_accelerator``.
"""

from __future__ import annotations

import functools
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = [
    "DIST_NAME",
    "Invocation",
    "git_commit",
    "harness_version",
    "host_cores",
    "new_invocation",
]

DIST_NAME = "rto-harness"
_REPO = Path(__file__).resolve().parents[1]


@functools.cache
def harness_version() -> str | None:
    """The installed distribution's version, None when it is not installed."""
    try:
        return version(DIST_NAME)
    except PackageNotFoundError:
        return None


@functools.cache
def git_commit(repo: Path = _REPO) -> str | None:
    """HEAD of the checkout the harness runs from (+ "-dirty" with local changes).

    None when the harness is not in a git checkout (a wheel install), git is
    missing or says anything unexpected: provenance never fails a run.
    """
    if not (repo / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )  # fmt: skip
        if head.returncode != 0 or not head.stdout.strip():
            return None
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return f"{commit}-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else commit


def host_cores() -> int | None:
    """Cores this process may run on (its affinity; a container's cpuset), else cpu_count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


@dataclass(frozen=True)
class Invocation:
    """One ``rto campaign``/``rto run``: a fresh id, its name, when it started."""

    name: str | None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    harness_version: str | None = field(default_factory=harness_version)
    git_commit: str | None = field(default_factory=git_commit)
    host_cores: int | None = field(default_factory=host_cores)


def new_invocation(name: str | None) -> Invocation:
    """Provenance of one invocation named ``name`` (a campaign's; None for ``rto run``)."""
    return Invocation(name=name)
