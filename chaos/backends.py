"""Pick a backend by name, and apply a timing profile to it.

Read by the CLI, the campaign, the journal replay (``rto revert`` rebuilds the
backend each record names) and the Chaos Toolkit functions. ``lab`` is the
embedded lab; ``kube`` is a real cluster (cluster/kube, configured by
``$RTO_KUBE_CONFIG`` or ./rto-kube.yaml; ``$RTO_KUBE_CONTEXT`` and
``$RTO_KUBE_DRY_RUN=1`` are set by the CLI's --context and --dry-run).
"""

from __future__ import annotations

from cluster.api import Backend
from core.errors import BackendError

__all__ = ["BACKENDS", "apply_profile", "get_backend"]

BACKENDS = ("lab", "kube")


def get_backend(name: str) -> Backend:
    """A fresh backend of that name; ``BackendError`` for an unknown or missing one."""
    if name == "lab":
        from cluster.lab.backend import LabBackend

        backend: Backend = LabBackend()
        return backend
    if name == "kube":
        import os

        from cluster.kube.backend import KubeBackend
        from cluster.kube.config import load_kube_config

        # The CLI's --context/--dry-run land in the environment so that `rto
        # revert` (which rebuilds backends by name) sees the same cluster.
        kube: Backend = KubeBackend(
            load_kube_config(),
            context=os.environ.get("RTO_KUBE_CONTEXT") or None,
            dry_run=os.environ.get("RTO_KUBE_DRY_RUN") == "1",
        )
        return kube
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
