"""Chaos Toolkit discovery of the harness: what ``chaos discover rto-harness`` lists.

Imported by chaoslib only (``chaoslib.discovery.discover``), never by the
harness. chaoslib maps the distribution ``rto-harness`` to *one* import name:
the first top-level name its metadata lists (``top_level.txt``, which
setuptools writes sorted), then calls that module's ``discover``. The harness
has several top-level packages (``chaos``, ``cluster``, ``core``, ...), so this
module's name starts with an underscore to sort before all of them
(``tests/test_ctk_discover.py`` runs the real ``chaos discover`` and fails if
another name ever comes first). Registered as a ``py-modules`` entry in
pyproject.toml.

The activities are the functions of :mod:`chaos.ctk` that experiment files
call (``experiments/**/*.yaml``), each typed probe or action here as the files
use it; the control of :mod:`chaos.ctk_control`, which every experiment must
declare for them to work, is listed under ``controls`` (chaoslib's discovery
knows activities only, and ``chaos init`` would put any "control" activity
into the method).
"""

from __future__ import annotations

import inspect
import typing
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from chaoslib.discovery.discover import (
    discover_actions,
    discover_probes,
    initialize_discovery_result,
    portable_type_name,
)
from chaoslib.types import DiscoveredActivities, Discovery

from chaos import ctk, ctk_control
from chaos.backends import BACKENDS

__all__ = ["ACTIONS", "DISTRIBUTION", "NOT_ACTIVITIES", "PROBES", "discover"]

DISTRIBUTION = "rto-harness"
# How experiment files use each chaos.ctk function: probes answer a question
# (steady state, recovery), actions change the system.
PROBES: tuple[str, ...] = ("workload_answers", "wait_recovered")
ACTIONS: tuple[str, ...] = ("inject_fault", "hold_fault", "revert_fault", "revert_all")
# Public in chaos.ctk for the control and for tests, not callable from a file:
# current_run returns the open harness run, backend_profile takes a Backend.
NOT_ACTIVITIES: tuple[str, ...] = ("current_run", "backend_profile")
_CTK = ctk.__name__


def _typed(activity: DiscoveredActivities) -> DiscoveredActivities:
    """The activity with its argument and return types read from the evaluated
    annotations: chaos.ctk postpones them (``from __future__ import annotations``),
    and chaoslib, reading the strings, would call every type "object"."""
    func = getattr(ctk, activity["name"])
    hints = typing.get_type_hints(func)
    for arg in activity["arguments"]:
        if arg["name"] in hints:
            arg["type"] = portable_type_name(hints[arg["name"]])
    if inspect.signature(func).return_annotation is not inspect.Signature.empty:
        returns = hints.get("return")
        # get_type_hints turns "-> None" into NoneType; chaoslib names None "null".
        activity["return_type"] = portable_type_name(None if returns is type(None) else returns)
    return activity


def _activities() -> list[DiscoveredActivities]:
    found = [
        *(a for a in discover_probes(_CTK) if a["name"] in PROBES),
        *(a for a in discover_actions(_CTK) if a["name"] in ACTIONS),
    ]
    order = {name: i for i, name in enumerate((*PROBES, *ACTIONS))}
    return [_typed(a) for a in sorted(found, key=lambda a: order[a["name"]])]


def _controls() -> list[dict[str, Any]]:
    """The control an experiment declares so that the activities run a harness run."""
    params = inspect.signature(ctk_control.configure_control).parameters.values()
    return [
        {
            "name": "rto",
            "provider": {"type": "python", "module": ctk_control.__name__},
            "arguments": [{"name": p.name, "default": p.default} for p in params],
            "doc": inspect.getdoc(ctk_control),
        }
    ]


def discover(discover_system: bool = True) -> Discovery:
    """chaoslib's entry point: the harness's activities, its control and, with
    ``discover_system``, the backends installed (nothing touches a cluster)."""
    try:
        harness_version = version(DISTRIBUTION)
    except PackageNotFoundError:  # imported from a checkout that was never installed
        harness_version = "unknown"
    discovery: Discovery = initialize_discovery_result(DISTRIBUTION, harness_version, "rto")
    discovery["activities"].extend(_activities())
    discovery["controls"] = _controls()
    if discover_system:
        discovery["system"] = {"backends": list(BACKENDS)}
    return discovery
