"""The scheduling examples in deploy/ are checked, not just written.

- ``deploy/systemd/rto-nightly.{service,timer}``: ``systemd-analyze verify``
  (installed by scripts/install.sh's apt list; it needs no running systemd, so
  it works offline in a container), on copies whose install path
  ``/opt/rto-harness`` is this checkout, so the ExecStart binary it checks is
  the real ``.venv/bin/rto``.
- ``deploy/ci/nightly-kind.yml``: actionlint (built by scripts/build-tools.sh
  from the Go module proxy into /var/cache/rto-harness/tools).
- Both: every ``rto ...`` command line parses with the real click CLI (its
  options and arguments, without running it), and every repository path they
  name exists.

Each checker is also shown a broken copy, so a check that passes everything
would fail here.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import click
import pytest
import yaml

from chaos import cli

__all__: list[str] = []

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "deploy" / "systemd" / "rto-nightly.service"
TIMER = ROOT / "deploy" / "systemd" / "rto-nightly.timer"
WORKFLOW = ROOT / "deploy" / "ci" / "nightly-kind.yml"
INSTALL_PATH = "/opt/rto-harness"
ACTIONLINT = Path("/var/cache/rto-harness/tools/actionlint")


def _verify(*units: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze missing: scripts/install.sh installs systemd"
    # --man=no: Documentation= is not looked up (no man pages offline).
    return subprocess.run(
        [exe, "verify", "--man=no", *map(str, units)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _installed_copies(tmp_path: Path, service_text: str | None = None) -> tuple[Path, Path]:
    """The units as installed at this checkout (systemd checks ExecStart exists)."""
    service = tmp_path / SERVICE.name
    service.write_text((service_text or SERVICE.read_text()).replace(INSTALL_PATH, str(ROOT)))
    timer = tmp_path / TIMER.name
    timer.write_text(TIMER.read_text())
    return service, timer


def test_systemd_units_verify(tmp_path: Path) -> None:
    assert (ROOT / ".venv" / "bin" / "rto").exists(), "run scripts/install.sh first"
    proc = _verify(*_installed_copies(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (proc.stdout + proc.stderr).strip() == ""


def test_systemd_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    broken = SERVICE.read_text().replace("Type=oneshot", "Typo=oneshot")
    proc = _verify(*_installed_copies(tmp_path, broken))
    assert "Unknown key" in proc.stdout + proc.stderr


def test_the_timer_starts_the_service() -> None:
    timer = TIMER.read_text()
    assert f"Unit={SERVICE.name}" in timer and "OnCalendar=" in timer


def _actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    assert ACTIONLINT.exists(), f"{ACTIONLINT} missing: run scripts/build-tools.sh"
    return subprocess.run(
        [str(ACTIONLINT), "-no-color", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_ci_workflow_passes_actionlint() -> None:
    proc = _actionlint(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-latest", "runs_on: x"))
    proc = _actionlint(broken)
    assert proc.returncode == 1 and "runs-on" in proc.stdout


# ------------------------------------------------------------ rto command lines


def _service_commands() -> list[list[str]]:
    lines = []
    for line in SERVICE.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.startswith("Exec") and value:
            argv = shlex.split(value.lstrip("-+!@:"))
            if Path(argv[0]).name == "rto":
                lines.append(argv[1:])
    return lines


def _workflow_commands() -> list[list[str]]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    lines = []
    for job in doc["jobs"].values():
        for step in job["steps"]:
            script = str(step.get("run", "")).replace("\\\n", " ")  # continuation lines
            for line in script.splitlines():
                if line.strip().startswith("rto "):
                    lines.append(shlex.split(line)[1:])
    return lines


def _parse(argv: list[str]) -> click.Context:
    """What `rto ARGV` would be given: parsed by the real CLI, nothing run."""
    group = cli.cli.make_context("rto", list(argv))
    name, command, rest = group.command.resolve_command(group, list(argv))  # type: ignore[attr-defined]
    assert command is not None and name is not None
    return command.make_context(name, rest, parent=group)


@pytest.mark.parametrize(
    "argv",
    _service_commands() + _workflow_commands(),
    ids=lambda argv: " ".join(argv[:2]),
)
def test_every_rto_command_line_parses(argv: list[str]) -> None:
    ctx = _parse(argv)
    assert ctx.command.name == argv[0]


def test_the_examples_run_campaign_and_history() -> None:
    service = [a[0] for a in _service_commands()]
    workflow = [a[0] for a in _workflow_commands()]
    assert service == ["campaign", "history"]
    assert workflow.count("campaign") >= 1 and "history" in workflow
    for argv in (*_service_commands(), *_workflow_commands()):
        if argv[0] == "history":
            assert _parse(argv).params["fail_on"] == "regression"
    campaign = next(a for a in _service_commands() if a[0] == "campaign")
    assert _parse(campaign).params["with_lab"] is True


def test_a_bad_command_line_is_caught() -> None:
    with pytest.raises(click.UsageError):
        _parse(["history", "--fail-on", "sometimes"])
    with pytest.raises(click.UsageError):
        _parse(["campaign", "x.yaml", "--with-labs"])


# ------------------------------------------------------------------- repo paths

# A relative path with an extension, not part of a URL or a shell variable's path.
_PATH = re.compile(r"(?<![\w./:$-])((?:[\w-]+/)*[\w.-]+\.(?:ya?ml|md|toml|sh|py))\b")


def _named_paths(text: str) -> set[str]:
    text = text.replace(INSTALL_PATH + "/", " ")  # the checkout: a path relative to it
    found = set()
    for m in _PATH.finditer(text):
        path = m.group(1)
        if path.startswith(("runs/", "reports/")) or ("/" not in path and path.endswith(".py")):
            continue  # written by the job, not part of the repository
        found.add(path)
    return found


def test_every_repo_path_the_examples_name_exists() -> None:
    service = _named_paths(SERVICE.read_text() + TIMER.read_text())
    workflow = _named_paths(WORKFLOW.read_text())
    assert {"experiments/campaigns/standard-pods.yaml", "README.md"} <= service
    assert {
        "kind-config.yaml",
        "experiments/kube/standard-kind.yaml",
        "experiments/kube/kind.yaml",
    } <= workflow
    assert sorted(p for p in service | workflow if not (ROOT / p).exists()) == []
