"""The lab as a backend provider: the ``lab`` entry of ``rto.backends``.

Found by name by ``chaos.backends`` (the CLI, the campaign, the journal replay
of ``rto revert``); makes ``LabBackend``s on the lab that is up, and brings the
lab up and down around a campaign run with ``--with-lab``. Generic code never
imports the lab: it reaches it through this class.
"""

from __future__ import annotations

from cluster.api import Backend
from cluster.lab.backend import LabBackend
from cluster.lab.lifecycle import lab_down, lab_up

__all__ = ["LabProvider"]


class LabProvider:
    """``cluster.api.BackendProvider`` for the embedded lab."""

    name = "lab"

    def backend(self) -> Backend:
        return LabBackend()

    def up(self, profile: str, nodes: int, vms: bool) -> str | None:
        choice = lab_up(profile=profile, nodes=nodes, vms=vms)
        return None if choice is None else f"VM accelerator: {choice.describe()}"

    def down(self) -> None:
        lab_down()
