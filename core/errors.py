"""The one exception tree of the harness.

Raised everywhere, caught only by the CLI (which prints the message and exits
non-zero) and by the runner (which reverts faults and records the run as
aborted). Messages are written for the user: what failed, where, what to do.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "FaultError",
    "HarnessError",
    "JournalError",
    "LabError",
    "SpecError",
]


class HarnessError(Exception):
    """Base of every error the harness raises on purpose."""


class SpecError(HarnessError):
    """An experiment, campaign or expectations file is invalid (names file and field)."""


class BackendError(HarnessError):
    """A backend could not read or act on the cluster."""


class LabError(BackendError):
    """The embedded lab could not be set up, used or torn down."""


class FaultError(HarnessError):
    """A fault could not be injected or reverted."""


class JournalError(HarnessError):
    """The fault journal is unreadable or a recorded fault cannot be reverted."""
