"""End to end on the lab: three nightly campaigns, the third with a slowed healer,
make ``rto history --fail-on regression`` fail on that cell and only that cell.

One private lab for the module (2 nodes, fast profile, pods; own dirs, netns
prefix ``rtohh``; node names ``node1..2`` because the experiment files place
their workloads there). Each campaign is the real ``rto campaign`` console
script in a child process, on a campaign file written here with two cells:

- a pod node partition healed by the eviction healer (fence + reschedule), the
  cell whose healer the third campaign slows with the test-only
  ``$RTO_TEST_HEALER_DELAY=eviction=...``;
- a pod workload partition with no healer, which nothing slows.

The pod watchdog is not the slowed one here: on the lab's real kubelet the
restart of a crashed container is the kubelet's, the watchdog only records it,
so slowing it would not change any RTO. The eviction healer's fence is what
ends a node partition's outage before the platform's own eviction.

Then ``rto history --fail-on regression`` (a child process too) must exit 1
and name exactly the node-partition cell; ``FIGURE`` lines give each
campaign's medians for the README.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from private_lab import PrivateLab, run_rto_campaign

from chaos.journal import Journal
from cluster.lab_cluster import LabClusterBackend

__all__: list[str] = []

ROOT = Path(__file__).resolve().parents[1]
LAB = PrivateLab("hhist", "rtohh", "node")  # node names as the experiment files place them
RTO = str(Path(sys.executable).parent / "rto")
SLOW_S = 3.0  # what the third campaign adds before each of the eviction healer's acts
REPS = 3

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(600)]

PARTITION_CELL = "network-partition[node]/pod lab/fast healers=eviction"
WORKLOAD_CELL = "network-partition[workload]/pod lab/fast healers=none"

CAMPAIGN = {
    "name": "nightly-history",
    "backend": "lab",
    "nodes": 2,
    "profile": "fast",
    "repetitions": REPS,
    "experiments": [
        {
            "path": str(ROOT / "experiments/pods/network-partition-node.yaml"),
            "healers": ["eviction"],
            "duration_s": 4,
            "deadline_s": 30,
        },
        {
            "path": str(ROOT / "experiments/pods/network-partition-workload.yaml"),
            "healers": [],
            "duration_s": 1.5,
            "deadline_s": 20,
        },
    ],
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabClusterBackend]:
    journal = tmp_path_factory.mktemp("hhist") / "journal.jsonl"
    with LAB.up(2, profile="fast", journal=journal) as backend:
        yield backend


def _cell(row: dict[str, object]) -> str:
    variant = f"[{row['variant']}]" if row["variant"] else ""
    healers = "+".join(sorted(row["healers"])) or "none"  # type: ignore[call-overload]
    return (
        f"{row['fault']}{variant}/{row['kind']} {row['backend']}/{row['profile']} healers={healers}"
    )


def test_three_campaigns_flag_the_slowed_healers_cell_only(
    lab: LabClusterBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RTO_TEST_HEALER_DELAY", raising=False)
    seen = 0
    ids = []
    for night in range(3):
        if night == 2:
            monkeypatch.setenv("RTO_TEST_HEALER_DELAY", f"eviction={SLOW_S:g}")
        t0 = time.monotonic()
        rows = run_rto_campaign(CAMPAIGN, tmp_path)
        took = time.monotonic() - t0
        tonight = rows[seen:]
        seen = len(rows)
        assert len(tonight) == 2 * REPS
        # One id per campaign invocation, every provenance fact filled.
        (cid,) = {r["campaign_id"] for r in tonight}
        ids.append(cid)
        for r in tonight:
            assert r["status"] == "recovered", r["error"]
            assert r["campaign"] == "nightly-history" and r["campaign_started_at"]
            assert r["host_cores"] and r["host_accelerator"] == lab.vm_accelerator()
            assert r["harness_version"]
        medians = {
            cell: statistics.median(
                float(r["rto_s"])  # type: ignore[arg-type]
                for r in tonight
                if _cell(r) == cell
            )
            for cell in (PARTITION_CELL, WORKLOAD_CELL)
        }
        print(
            f"\nFIGURE campaign {night + 1}{' (eviction slowed)' if night == 2 else ''}: "
            + ", ".join(f"{c}: median {m:.3f} s" for c, m in medians.items())
            + f" ({took:.1f} s)"
        )
        slowed = [
            e
            for r in tonight
            for e in r["timeline"]  # type: ignore[attr-defined]
            if "test-only delay" in e["message"]
        ]
        assert len(slowed) == (REPS if night == 2 else 0)
    assert len(set(ids)) == 3
    assert Journal().pending() == []

    proc = subprocess.run(
        [RTO, "history", "--runs-dir", str(tmp_path / "runs"), "--fail-on", "regression",
         "--out", str(tmp_path / "history")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )  # fmt: skip
    print(proc.stdout)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    flagged = [line for line in proc.stderr.splitlines() if line.startswith("REGRESSED")]
    assert len(flagged) == 1, proc.stderr
    assert flagged[0].startswith(f"REGRESSED {PARTITION_CELL}: regressed"), flagged[0]
    print(f"FIGURE verdict: {flagged[0]}")
    md = (tmp_path / "history" / "history.md").read_text()
    assert f"| {WORKLOAD_CELL} |" in md
    workload_line = next(line for line in md.splitlines() if line.startswith(f"| {WORKLOAD_CELL}"))
    assert "**ok**" in workload_line or "**improved**" in workload_line, workload_line
    rows = [
        json.loads(line) for line in (tmp_path / "runs" / "results.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 3 * 2 * REPS
