"""A harness SIGKILLed mid-fault leaves the fault in place; ``rto revert`` and
``rto lab down`` take it away from the journal alone.

One private lab for the module (its real cluster on the ``fast`` flags, 2
nodes, own state/run dirs, netns prefix ``rtohk``, nodes ``hkn1..2``), torn
down in finally. Each test writes an overridden copy of an ``experiments/pods``
file (placed on ``hkn1``, held for 5 minutes, watchdog healer only so a dead
harness leaves no healer state),
starts ``rto run`` on it as a subprocess with the lab's environment and its
own journal, waits until the journal says injected and the fault really acts,
SIGKILLs the process, checks the fault is still there, then runs the CLI that
must clean up and checks the lab is healed and the journal has nothing pending.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from private_lab import PrivateLab, probe

from chaos.journal import FaultRecord, Journal
from cluster.lab import lifecycle, net, volumes
from cluster.lab.kube import node as kube_node
from cluster.lab_cluster import LabClusterBackend
from cluster.profiles import get_profile
from core.wait import poll_until

__all__: list[str] = []

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[1]
PODS = ROOT / "experiments" / "pods"
RTO = Path(sys.executable).parent / "rto"  # the console script of this venv
LAB = PrivateLab("hkill9", "rtohk", "hkn")
HOME = LAB.node(1)
FAST = get_profile("fast")
LAB_ENV = {
    "RTO_LAB_STATE_DIR": str(LAB.state_dir),
    "RTO_LAB_RUN_DIR": str(LAB.run_dir),
    "RTO_LAB_NS_PREFIX": LAB.prefix,
}


@pytest.fixture(scope="module")
def lab() -> Iterator[LabClusterBackend]:
    with LAB.up(2) as backend:
        yield backend


def _experiment(
    tmp_path: Path, name: str, healers: tuple[str, ...] = ("watchdog",)
) -> tuple[Path, str]:
    """An overridden copy of a pod experiment file: (path, workload)."""
    doc: dict[str, Any] = yaml.safe_load((PODS / f"{name}.yaml").read_text())
    ext = next(e for e in doc["extensions"] if e["name"] == "rto")
    ext["target"]["node"] = HOME
    ext["fault"]["duration_s"] = 300
    ext["recovery"]["deadline_s"] = 400
    # The eviction healer would fence the node (a taint) and a SIGKILLed
    # harness could never unfence it; the watchdog only records restarts.
    ext["healers"] = list(healers)
    ext["profile"] = "fast"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, str(ext["target"]["workload"])


def _env(journal: Path) -> dict[str, str]:
    return {**os.environ, **LAB_ENV, "RTO_JOURNAL": str(journal)}


def _rto(journal: Path, *args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [str(RTO), *args],
        env=_env(journal),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert res.returncode == 0, f"rto {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res


def _injected(journal: Journal, fault: str) -> FaultRecord | None:
    return next((r for r in journal.pending() if r.fault == fault and r.state == "injected"), None)


def _probe_fails(lab: LabClusterBackend, workload: str) -> bool:
    try:
        code, _ = probe(lab, workload, timeout=0.3)
    except OSError:
        return True  # no answer: the fault acts
    return code != 200


def _kill_mid_fault(
    lab: LabClusterBackend,
    tmp_path: Path,
    name: str,
    fault: str,
    healers: tuple[str, ...] = ("watchdog",),
    also: str | None = None,
) -> tuple[Journal, str, FaultRecord]:
    """Start `rto run` on the file, wait for the fault to act (and for a record
    of ``also`` to be journaled injected, if given), SIGKILL it."""
    exp, workload = _experiment(tmp_path, name, healers)
    journal_path = tmp_path / "journal.jsonl"
    journal = Journal(journal_path)
    log = (tmp_path / "rto-run.log").open("w")
    proc = subprocess.Popen(
        [str(RTO), "run", str(exp), "--runs-dir", str(tmp_path / "runs")],
        env=_env(journal_path),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        record = poll_until(
            lambda: _injected(journal, fault) if proc.poll() is None else "exited",
            60.0,
            f"`rto run {exp.name}` to journal {fault} injected",
        )
        assert isinstance(record, FaultRecord), (tmp_path / "rto-run.log").read_text()
        poll_until(lambda: _probe_fails(lab, workload), 10.0, f"{workload} to stop answering")
        if also is not None:
            poll_until(
                lambda: _injected(journal, also) if proc.poll() is None else "exited",
                30.0,
                f"`rto run {exp.name}` to journal {also} injected",
            )
        assert proc.poll() is None, "rto run ended on its own"
        t0 = time.monotonic()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # the harness dies mid-fault
        proc.wait(10)
        log.close()
    print(f"\nFIGURE {name}: harness SIGKILLed {time.monotonic() - t0:.3f} s after the outage")
    assert proc.returncode == -signal.SIGKILL
    pending = [r.id for r in journal.pending()]
    assert pending[0] == record.id and len(pending) == (1 if also is None else 2), pending
    return journal, workload, record


def test_revert_heals_a_node_partition_after_sigkill(
    lab: LabClusterBackend, tmp_path: Path
) -> None:
    journal, workload, _ = _kill_mid_fault(
        lab, tmp_path, "network-partition-node", "network-partition"
    )
    # The partition outlived the harness: rules there, the node silent.
    assert net.is_partitioned(HOME)
    poll_until(
        lambda: (lab.node(HOME).heartbeat_age or 0) > FAST.grace_period,
        10.0,
        f"{HOME} to go silent",
    )
    assert _probe_fails(lab, workload)
    res = _rto(tmp_path / "journal.jsonl", "revert")
    assert "reverted" in res.stdout and "network-partition" in res.stdout
    assert not net.is_partitioned(HOME)
    poll_until(
        lambda: lab.node(HOME).ready and (lab.node(HOME).heartbeat_age or 99) < FAST.grace_period,
        30.0,
        f"the Lease renewals of {HOME} to come back",
    )
    lab.wait_ready(workload, 30)
    assert journal.pending() == []
    # A second revert finds nothing (and says so).
    assert "nothing to revert" in _rto(tmp_path / "journal.jsonl", "revert").stdout
    lab.delete_workload(workload)


def test_revert_thaws_a_frozen_volume_after_sigkill(lab: LabClusterBackend, tmp_path: Path) -> None:
    journal, workload, _ = _kill_mid_fault(lab, tmp_path, "storage-hang", "storage-lost")
    assert volumes.is_frozen(workload)
    assert _probe_fails(lab, workload)  # still hangs with the harness gone
    res = _rto(tmp_path / "journal.jsonl", "revert")
    assert "reverted" in res.stdout and "storage-lost" in res.stdout
    assert not volumes.is_frozen(workload)
    lab.wait_ready(workload, 30)
    assert journal.pending() == []
    lab.delete_workload(workload)


def test_revert_powers_a_node_on_after_sigkill(lab: LabClusterBackend, tmp_path: Path) -> None:
    """Power-off killed the node's kubelet and containerd; the harness dies with
    the node off. ``rto revert`` boots it: kubelet and containerd run again, the
    Node is Ready, and the workload answers (moved by the platform, or back)."""
    journal, workload, _ = _kill_mid_fault(lab, tmp_path, "node-power-off", "node-power-off")
    assert kube_node.component_pid(HOME, "kubelet") is None
    assert kube_node.component_pid(HOME, "containerd") is None
    assert not lab.node(HOME).powered
    res = _rto(tmp_path / "journal.jsonl", "revert")
    assert "reverted" in res.stdout and "node-power-off" in res.stdout
    assert kube_node.component_pid(HOME, "kubelet") is not None
    assert kube_node.component_pid(HOME, "containerd") is not None
    assert lab.node(HOME).powered
    poll_until(lambda: lab.node(HOME).ready, 60.0, f"{HOME} Ready after the revert")
    lab.wait_ready(workload, 90)
    assert journal.pending() == []
    lab.delete_workload(workload)


def test_revert_unfences_and_powers_on_after_sigkill(
    lab: LabClusterBackend, tmp_path: Path
) -> None:
    """The eviction healer fenced the powered-off node (the real
    out-of-service taint, journaled before it was put) and the harness died:
    ``rto revert`` takes the taint off and boots the node."""
    journal, workload, _ = _kill_mid_fault(
        lab,
        tmp_path,
        "node-power-off",
        "node-power-off",
        healers=("watchdog", "eviction"),
        also="node-fence",
    )
    assert lab.node(HOME).fenced  # the taint outlived the harness
    res = _rto(tmp_path / "journal.jsonl", "revert")
    assert "node-fence" in res.stdout and "node-power-off" in res.stdout
    assert not lab.node(HOME).fenced
    assert lab.node(HOME).powered
    poll_until(lambda: lab.node(HOME).ready, 60.0, f"{HOME} Ready after the revert")
    lab.wait_ready(workload, 90)
    assert journal.pending() == []
    lab.delete_workload(workload)


def test_lab_down_reverts_a_pending_fault_first(lab: LabClusterBackend, tmp_path: Path) -> None:
    nodes = {n.name for n in lab.nodes()}
    journal, _, record = _kill_mid_fault(
        lab, tmp_path, "network-partition-node", "network-partition"
    )
    assert net.is_partitioned(HOME)
    res = _rto(tmp_path / "journal.jsonl", "lab", "down")
    assert "reverted" in res.stdout and "lab down" in res.stdout
    assert journal.pending() == []
    # Reverted (the undo ran while the node still existed), not just torn down.
    last = journal.get(record.id)
    assert last is not None and last.state == "reverted"
    assert lifecycle.leftovers(nodes) == {}
