"""Test-suite wiring: root/lab gating and the machine leftover check.

Lab tests (``@pytest.mark.lab``) need root, network namespaces, runc and the
lab images that ``scripts/install.sh`` builds; CI runs them as root. On a
non-root developer machine they are skipped with a reason, never silently passed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from leftovers import UNCHECKED, diff, format_leftovers, snapshot


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--with-e2e",
        action="store_true",
        default=False,
        help="run real-cluster e2e tests (tests/test_kube_e2e.py; nox -s kind)",
    )


def pytest_report_header(config: pytest.Config) -> list[str]:
    """`rto lab doctor` at the top of every run: what this machine can do for the
    lab (accelerator chosen by a real boot, cgroups, netns, loop, libvirt), so a
    failure on a new machine starts with what differs there."""
    if os.geteuid() != 0:
        return ["lab doctor: not root, lab tests are skipped"]
    from cluster.lab.doctor import format_checks, run_checks

    return format_checks(run_checks())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="lab tests need root (namespaces, cgroups, mounts)")
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _no_lab_leftovers() -> Iterator[None]:
    """Fail the run if the session left a lab object on this machine.

    Snapshot before the first test and after the last session fixture was torn
    down, and fail with every new netns, nft table, iptables rule, mount, frozen
    filesystem, cgroup, loop device or process (tests/leftovers.py). Non-root runs
    make no lab objects: skipped. RTO_SKIP_LEFTOVER_CHECK=1 turns it off where
    several suites share one machine at once.
    """
    if os.geteuid() != 0 or os.environ.get("RTO_SKIP_LEFTOVER_CHECK") == "1":
        yield
        return
    before = snapshot()
    yield
    after = snapshot()
    left = diff(before, after)
    if left:
        pytest.fail(
            "the test session left lab objects behind:\n"
            + format_leftovers(left, unchecked=after[UNCHECKED]),
            pytrace=False,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a ``Popen`` of this process was never waited for.

    Python would otherwise end the run with "ResourceWarning: subprocess N is
    still running" from ``Popen.__del__``, naming no owner; this names the
    command line, so the code that started it can be found and fixed.
    """
    import gc
    import subprocess

    unwaited = [
        p for p in gc.get_objects() if isinstance(p, subprocess.Popen) and p.returncode is None
    ]
    if not unwaited:
        return
    lines = []
    for p in unwaited:
        state = "still running" if p.poll() is None else "exited, never waited for"
        lines.append(f"  pid {p.pid} ({state}): {p.args!r}"[:300])
    print("\nsubprocesses this test run started and never waited for:\n" + "\n".join(lines))
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
