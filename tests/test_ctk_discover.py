"""``chaos discover rto-harness``: Chaos Toolkit's own CLI lists the harness's probes,
actions and control.

Runs the real ``chaos`` of the venv as a subprocess (no install, no log file)
and reads the discovery file it writes. What it must list comes from elsewhere:
the functions of ``chaos.ctk`` (every public one is an activity or named as not
one) and how ``experiments/**/*.yaml`` use them (probe or action, and with
which arguments).
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import typing
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml

import _rto_harness
from chaos import ctk

ROOT = Path(__file__).resolve().parents[1]
CHAOS = Path(sys.executable).parent / "chaos"
# The portable names chaoslib gives the types chaos.ctk's signatures use.
PORTABLE = {str: "string", float: "number", int: "integer", bool: "boolean", type(None): "null"}


@pytest.fixture(scope="module")
def discovery(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("discover")
    path = work / "discovery.json"
    proc = subprocess.run(
        [
            str(CHAOS),
            "--no-log-file",
            "discover",
            "rto-harness",
            "--no-install",
            "--discovery-path",
            str(path),
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # chaos exits 0 even when discovery fails; the file is written only on success.
    assert proc.returncode == 0 and path.exists(), proc.stdout + proc.stderr
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _experiment_uses() -> dict[str, tuple[set[str], set[str]]]:
    """chaos.ctk function -> (types it is used as, argument names given) in experiments/."""
    uses: dict[str, tuple[set[str], set[str]]] = {}
    for f in sorted((ROOT / "experiments").rglob("*.yaml")):
        doc = yaml.safe_load(f.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            continue
        hypothesis = doc.get("steady-state-hypothesis") or {}
        for activity in [
            *hypothesis.get("probes", []),
            *doc.get("method", []),
            *doc.get("rollbacks", []),
        ]:
            provider = activity.get("provider", {})
            if provider.get("module") != ctk.__name__:
                continue
            types, args = uses.setdefault(provider["func"], (set(), set()))
            types.add(activity["type"])
            args.update(provider.get("arguments", {}))
    return uses


def test_chaoslib_imports_the_discovery_module_for_the_distribution() -> None:
    from chaoslib.discovery.package import get_importname_from_package

    # The first top-level name of the distribution, sorted (see _rto_harness).
    assert get_importname_from_package("rto-harness") == _rto_harness.__name__


def test_every_ctk_function_is_an_activity_or_said_not_to_be(discovery: dict[str, Any]) -> None:
    public = {n for n in ctk.__all__ if inspect.isfunction(getattr(ctk, n))}
    listed = [a["name"] for a in discovery["activities"]]
    assert len(listed) == len(set(listed))
    assert set(listed) | set(_rto_harness.NOT_ACTIVITIES) == public
    assert not set(listed) & set(_rto_harness.NOT_ACTIVITIES)
    assert {a["mod"] for a in discovery["activities"]} == {ctk.__name__}
    assert discovery["extension"] == {"name": "rto-harness", "version": version("rto-harness")}


def test_types_match_how_the_experiment_files_use_them(discovery: dict[str, Any]) -> None:
    by_name = {a["name"]: a for a in discovery["activities"]}
    uses = _experiment_uses()
    assert uses, "no experiment file calls chaos.ctk"
    for func, (types, args) in uses.items():
        assert func in by_name, f"experiments call chaos.ctk.{func}; discovery does not list it"
        assert types == {by_name[func]["type"]}, (func, types)
        assert args <= {a["name"] for a in by_name[func]["arguments"]}, (func, args)
    # Not used by a file, still listed: the action that clears every pending fault.
    assert by_name["revert_all"]["type"] == "action"


def test_arguments_and_return_types_are_the_signatures(discovery: dict[str, Any]) -> None:
    for activity in discovery["activities"]:
        func = getattr(ctk, activity["name"])
        hints = typing.get_type_hints(func)
        params = inspect.signature(func).parameters.values()
        want = []
        for p in params:
            arg: dict[str, Any] = {"name": p.name, "type": PORTABLE[hints[p.name]]}
            if p.default is not inspect.Parameter.empty:
                arg["default"] = p.default
            want.append(arg)
        assert activity["arguments"] == want, activity["name"]
        assert activity["return_type"] == PORTABLE[hints["return"]], activity["name"]
        assert activity["doc"] == inspect.getdoc(func)


def test_the_control_every_experiment_declares_is_listed(discovery: dict[str, Any]) -> None:
    modules = set()
    for f in (ROOT / "experiments").rglob("*.yaml"):
        doc = yaml.safe_load(f.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and "method" in doc:
            modules.update(c["provider"]["module"] for c in doc.get("controls", []))
    assert modules == {c["provider"]["module"] for c in discovery["controls"]}
    assert "activities" in discovery and all(
        a["type"] in ("probe", "action") for a in discovery["activities"]
    )
    assert discovery["system"]["backends"]
