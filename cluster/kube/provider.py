"""Real clusters as a backend provider: the ``kube`` entry of ``rto.backends``.

Found by name by ``chaos.backends``. The cluster is configured by
``$RTO_KUBE_CONFIG`` or ./rto-kube.yaml (``cluster.kube.config``); the CLI's
``--context`` and ``--dry-run`` arrive as ``$RTO_KUBE_CONTEXT`` and
``$RTO_KUBE_DRY_RUN=1``, so that ``rto revert`` (which rebuilds backends by
name) sees the same cluster. A real cluster belongs to its owner: this provider
never brings one up or down.
"""

from __future__ import annotations

import os

from cluster.api import Backend
from cluster.kube.backend import KubeBackend
from cluster.kube.config import load_kube_config
from core.errors import SpecError

__all__ = ["KubeProvider"]


class KubeProvider:
    """``cluster.api.BackendProvider`` for a real cluster (``KubeBackend``)."""

    name = "kube"

    def backend(self) -> Backend:
        return KubeBackend(
            load_kube_config(),
            context=os.environ.get("RTO_KUBE_CONTEXT") or None,
            dry_run=os.environ.get("RTO_KUBE_DRY_RUN") == "1",
        )

    def up(self, profile: str, nodes: int, vms: bool) -> str | None:
        raise SpecError(
            "--with-lab brings up the embedded lab only; a kube campaign runs on a cluster "
            "that is already up (drop --with-lab, or set backend: lab in the campaign)"
        )

    def down(self) -> None:
        """Nothing was brought up (``up`` refuses)."""
