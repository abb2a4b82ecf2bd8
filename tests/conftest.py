"""Test-suite wiring: root/lab gating and the machine leftover check.

Lab tests (``@pytest.mark.lab``) need root, network namespaces, runc and the
lab images that ``scripts/install.sh`` builds; CI runs them as root. On a
non-root developer machine they are skipped with a reason, never silently passed.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="lab tests need root (namespaces, cgroups, mounts)")
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)
