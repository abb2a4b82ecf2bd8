"""Backends and command groups come from entry points, not from imports in chaos/.

``chaos.backends`` finds providers through ``rto.backends``; ``chaos.cli`` adds
the groups of ``rto.commands``. No lab is needed: nothing here brings one up.
"""

from __future__ import annotations

import pytest

from chaos import cli
from chaos.backends import BACKENDS, get_provider
from cluster.kube.provider import KubeProvider
from cluster.lab_cluster import LabClusterProvider
from core.errors import BackendError, SpecError


def test_both_backends_are_declared() -> None:
    assert BACKENDS == ("kube", "lab")
    assert isinstance(get_provider("lab"), LabClusterProvider)
    assert isinstance(get_provider("kube"), KubeProvider)


def test_an_unknown_backend_names_the_known_ones() -> None:
    with pytest.raises(BackendError, match="unknown backend 'nope'; choose one of kube, lab"):
        get_provider("nope")


def test_a_kube_cluster_is_never_brought_up_by_the_harness() -> None:
    with pytest.raises(SpecError, match="--with-lab brings up the embedded lab only"):
        KubeProvider().up("fast", 3, vms=False)


def test_the_lab_contributes_its_command_group() -> None:
    lab = cli.cli.commands["lab"]
    assert sorted(lab.commands) == ["doctor", "down", "images", "kubeconfig", "status", "up"]  # type: ignore[attr-defined]
