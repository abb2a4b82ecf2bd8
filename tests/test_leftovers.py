"""The leftover check must be able to fail: create real leftovers, see them reported.

Each lab test makes a real object of the kind the lab leaves behind (a netns with
an nft table and an iptables rule, a cgroup with a process in it, a loop-mounted
ext4 image that is then frozen, a process started on a lab path), checks that
``snapshot``/``diff`` name it, removes it in ``finally`` and checks it is gone
from the report. Only the objects a test made are asserted on: other lab tests
may run on the same machine at the same time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from leftovers import (
    CGROUPS,
    FROZEN,
    IPTABLES,
    LOOP_DEVICES,
    MOUNTS,
    NETNS,
    NFT_TABLES,
    PROCESSES,
    UNCHECKED,
    diff,
    format_leftovers,
    snapshot,
)

TAG = f"leftover-test-{os.getpid()}"


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def test_diff_lists_only_new_objects() -> None:
    before = {NETNS: {"rto-old"}, MOUNTS: {"/m1"}, UNCHECKED: {"nft: not installed"}}
    after = {
        NETNS: {"rto-old", "rto-new"},
        MOUNTS: set(),
        UNCHECKED: {"nft: not installed", "x"},
    }
    assert diff(before, after) == {NETNS: {"rto-new"}}
    assert diff(after, after) == {}
    text = format_leftovers(diff(before, after), unchecked=after[UNCHECKED])
    assert "netns:\n  rto-new" in text and "not checked:" in text


def test_missing_tools_are_reported_not_skipped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nft, no iptables-save, no ip
    snap = snapshot(lab_dirs=[tmp_path])
    assert {"nft: not installed", "iptables-save: not installed"} <= snap[UNCHECKED]


@pytest.mark.lab
def test_detects_netns_nft_table_and_iptables_rule(tmp_path: Path) -> None:
    netns = f"rto-{TAG}"
    before = snapshot(lab_dirs=[tmp_path])
    assert netns not in before[NETNS]
    sh("ip", "netns", "add", netns)
    try:
        sh("ip", "netns", "exec", netns, "nft", "add", "table", "inet", "rto_leftover")
        # A rule in our own namespace only, naming an address of the lab's range.
        sh(
            "ip",
            "netns",
            "exec",
            netns,
            "iptables",
            "-A",
            "INPUT",
            "-s",
            "198.18.250.1",
            "-j",
            "DROP",
        )

        left = diff(before, snapshot(lab_dirs=[tmp_path]))
        assert netns in left[NETNS]
        assert f"{netns}: inet rto_leftover" in left[NFT_TABLES]
        assert any(i.startswith(f"{netns}: ") and "198.18.250.1" in i for i in left[IPTABLES])
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)

    after = diff(before, snapshot(lab_dirs=[tmp_path]))
    assert netns not in after.get(NETNS, set())
    assert not any(netns in i for i in after.get(NFT_TABLES, set()) | after.get(IPTABLES, set()))


def _cgroup_root() -> Path:
    for root in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        if (root / "cgroup.procs").exists():
            return root
    pytest.skip("no writable cgroup hierarchy (pids v1 or v2) here")


@pytest.mark.lab
def test_detects_cgroup_and_processes_in_it_or_on_lab_paths(tmp_path: Path) -> None:
    lab = tmp_path / "rto-lab"
    lab.mkdir()
    group = _cgroup_root() / f"rto-lab-{TAG}"
    before = snapshot(lab_dirs=[lab])
    with ExitStack() as undo:
        group.mkdir()
        undo.callback(group.rmdir)  # runs last: the processes are gone by then
        in_group = subprocess.Popen(["sleep", "60"])
        undo.callback(in_group.wait)
        undo.callback(in_group.kill)
        (group / "cgroup.procs").write_text(str(in_group.pid))
        on_path = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(lab)])
        undo.callback(on_path.wait)
        undo.callback(on_path.kill)

        left = diff(before, snapshot(lab_dirs=[lab]))
        assert str(group) in left[CGROUPS]
        procs = left[PROCESSES]
        assert any(p.startswith(f"pid {in_group.pid} [lab cgroup]") for p in procs), procs
        assert any(p.startswith(f"pid {on_path.pid} [lab path]") for p in procs), procs

    after = diff(before, snapshot(lab_dirs=[lab]))
    assert str(group) not in after.get(CGROUPS, set())
    assert not any(f"pid {in_group.pid} " in p for p in after.get(PROCESSES, set()))


@pytest.mark.lab
def test_detects_loop_mount_and_frozen_volume(tmp_path: Path) -> None:
    lab = tmp_path / "rto-lab"  # stands in for /var/lib/rto-lab
    image = lab / "volumes" / "leftover.img"
    mnt = lab / "volumes" / "leftover" / "mnt"
    mnt.mkdir(parents=True)
    with image.open("wb") as f:
        f.truncate(8 << 20)
    sh("mkfs.ext4", "-q", "-F", str(image))
    before = snapshot(lab_dirs=[lab])

    with ExitStack() as undo:
        dev = sh("losetup", "--find", "--show", str(image))
        undo.callback(subprocess.run, ["losetup", "-d", dev], check=False)
        sh("mount", dev, str(mnt))
        undo.callback(subprocess.run, ["umount", str(mnt)], check=False)

        left = diff(before, snapshot(lab_dirs=[lab]))
        assert f"{dev} -> {image}" in left[LOOP_DEVICES]
        assert f"{mnt} (ext4 from {dev})" in left[MOUNTS]
        assert FROZEN not in left  # the probe saw it thawed ...

        # Thaw registered first: cleanup must never meet a frozen mount. Not a
        # write to check the probe thawed it (that would hang if it did not):
        # fsfreeze -f fails with EBUSY on a mount that is still frozen.
        undo.callback(subprocess.run, ["fsfreeze", "-u", str(mnt)], check=False)
        sh("fsfreeze", "-f", str(mnt))  # ... and left it thawed
        assert str(mnt) in diff(before, snapshot(lab_dirs=[lab]))[FROZEN]
        sh("fsfreeze", "-u", str(mnt))
        assert FROZEN not in diff(before, snapshot(lab_dirs=[lab]))

    after = diff(before, snapshot(lab_dirs=[lab]))
    assert not {MOUNTS, LOOP_DEVICES, FROZEN} & after.keys(), after
