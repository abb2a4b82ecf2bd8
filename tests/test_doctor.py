"""``rto lab doctor``: every check runs for real and leaves nothing behind.

The session's leftover check (conftest) fails the run if the doctor's scratch
netns, loop device or cgroup outlived it.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from chaos import cli
from cluster.lab.doctor import Check, format_checks, run_checks
from core.errors import LabError


@pytest.mark.lab
def test_doctor_answers_every_check_on_a_lab_machine() -> None:
    result = CliRunner().invoke(cli.cli, ["lab", "doctor"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("lab doctor: kernel ")
    names = [line.split()[1] for line in lines[1:]]
    assert names == [
        "accelerator", "cgroups", "netns", "loop", "libvirt", "runtimes", "images", "kubernetes",
    ]  # fmt: skip
    levels = {line.split()[1]: line.split()[0] for line in lines[1:]}
    # What the lab itself needs must work on the machine that runs its tests.
    assert {levels[n] for n in ("cgroups", "netns", "loop", "libvirt", "runtimes")} == {"ok"}
    accel_line = next(line for line in lines if " accelerator " in line)
    assert " kvm (" in accel_line or " tcg (" in accel_line


def test_a_check_that_raises_is_a_fail_line_and_the_rest_still_run() -> None:
    def check_broken() -> Check:
        raise LabError("no such thing\nsecond line")

    def check_fine() -> Check:
        return Check("fine", "ok", "yes")

    checks = run_checks((check_broken, check_fine))
    assert [(c.name, c.level) for c in checks] == [("broken", "fail"), ("fine", "ok")]
    assert checks[0].detail == "LabError: no such thing"
    assert format_checks(checks)[1:] == [
        "  fail broken  LabError: no such thing",
        "  ok   fine    yes",
    ]
