"""End to end on the real lab: the smoke campaign through rto's runner, the lab's backend.

Needs root, namespaces, the built Kubernetes binaries and the lab images; the
campaign brings the lab (its real cluster) up and always down again. The lab is
a private one (own state/run dirs, netns prefix ``rtoel``, see
tests/private_lab.py) so the suite never touches the default lab a user may
have up; its nodes keep the default names ``node1..3`` because the smoke
campaign places workloads there (their cgroups and netns carry the private
prefix). One run per fault type of the smoke campaign; every run must record a
row, and nothing may be left in the journal.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from private_lab import PrivateLab

from chaos.campaign import plan_campaign, run_campaign
from chaos.journal import Journal
from chaos.results import ResultsStore, RunStatus
from cluster.lab import lifecycle

__all__: list[str] = []

ROOT = Path(__file__).resolve().parents[1]
LAB = PrivateLab("e2elab", "rtoel", "node")  # node names as the smoke campaign places them

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(600)]


def test_smoke_campaign_on_the_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    LAB.isolate(monkeypatch, journal=tmp_path / "journal.jsonl")
    plan = plan_campaign(ROOT / "experiments/campaigns/smoke.yaml")
    store = ResultsStore(tmp_path / "runs")
    try:
        lifecycle.lab_down()  # an earlier aborted run of this test
        results = run_campaign(plan, store, lab_lifecycle=True)
    finally:
        lifecycle.lab_down()  # the campaign takes it down; this covers a crash before that
    assert LAB.our_objects() == {}
    assert len(results) == plan.total_runs == len(store.load())
    by_fault = {r.fault: r for r in results}
    crash = by_fault["process-crash"]
    assert crash.status is RunStatus.RECOVERED, crash.error
    assert crash.rto_s is not None and crash.rto_s < 10
    power = by_fault["node-power-off"]
    assert power.status is RunStatus.RECOVERED, power.error
    part = by_fault["network-partition"]
    assert part.status is RunStatus.RECOVERED, part.error
    assert part.rto_s is not None and part.rto_s >= 1.5  # held 2 s
    assert Journal().pending() == []
