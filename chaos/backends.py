"""Pick a backend by name, and apply a timing profile to it.

Read by the CLI, the campaign, the journal replay (``rto revert`` rebuilds the
backend each record names) and the Chaos Toolkit functions. ``lab`` is the
embedded lab; ``kube`` (real clusters) arrives with issue 4.
"""

from __future__ import annotations

from chaos.errors import BackendError
from cluster.api import Backend

__all__ = ["BACKENDS", "apply_profile", "get_backend"]

BACKENDS = ("lab", "kube")


def get_backend(name: str) -> Backend:
    """A fresh backend of that name; ``BackendError`` for an unknown or missing one."""
    if name == "lab":
        from cluster.lab.backend import LabBackend

        backend: Backend = LabBackend()
        return backend
    if name == "kube":
        raise BackendError(
            "the kube backend (real clusters) arrives with issue 4; use --backend lab for now"
        )
    raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def apply_profile(backend: Backend, profile: str | None) -> None:
    """Switch the platform timings before a run (lab only; a real cluster has its own)."""
    if profile is None:
        return
    setter = getattr(backend, "set_profile", None)
    if callable(setter):
        setter(profile)
    elif backend.name == "lab":
        from cluster.lab.lifecycle import set_profile

        set_profile(profile)
