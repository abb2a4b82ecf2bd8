"""Backends by name, through the providers backend packages declare.

Each ``rto.backends`` entry point (pyproject.toml) names a
``cluster.api.BackendProvider`` class: ``lab`` is the embedded lab
(``cluster.lab_cluster``: its pods on its real cluster), ``kube`` a real
cluster (``cluster.kube.provider``).
Read by the CLI, the campaign (which also brings a cluster up and down through
the provider), the journal replay (``rto revert`` rebuilds the backend each
record names) and the Chaos Toolkit functions. Nothing here imports a backend
package: a new backend is a new entry point.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from cluster.api import Backend, BackendProvider
from core.errors import BackendError

__all__ = ["BACKENDS", "GROUP", "apply_profile", "get_backend", "get_provider"]

GROUP = "rto.backends"


def _declared() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


# The names the CLI offers (--backend); read once, at import.
BACKENDS: tuple[str, ...] = tuple(sorted(_declared()))


def get_provider(name: str) -> BackendProvider:
    """The provider of backend ``name``; ``BackendError`` for an unknown one."""
    declared = _declared()
    ep = declared.get(name)
    if ep is None:
        known = ", ".join(sorted(declared)) or (
            f"none: no {GROUP} entry points are installed; reinstall the harness (pip install -e .)"
        )
        raise BackendError(f"unknown backend {name!r}; choose one of {known}")
    provider: BackendProvider = ep.load()()
    return provider


def get_backend(name: str) -> Backend:
    """A fresh backend of that name; ``BackendError`` for an unknown or missing one."""
    return get_provider(name).backend()


def apply_profile(backend: Backend, profile: str | None) -> None:
    """Switch the platform timings before a run (None: leave them as they are)."""
    if profile is not None:
        backend.set_profile(profile)
