"""The network-flap fault, added as one module: cuts and heals in turn, always healed.

On the FakeBackend with short real intervals (the flapping is a thread that
waits on an Event, not on the run's clock); the lab e2e run is in
tests/test_e2e_faults.py style: a real pod loses and regains its network.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from fakes import FakeBackend

from chaos.faults import FAULT_TYPES, build_fault, from_record, revert_pending
from chaos.faults.network_flap import NetworkFlap, NetworkFlapSpec
from chaos.journal import Journal
from chaos.spec import TargetSpec, fault_variant, load_experiment
from cluster.api import WorkloadKind
from core.errors import BackendError, SpecError

ROOT = Path(__file__).resolve().parents[1]


def _toggles(backend: FakeBackend) -> list[str]:
    return [c.split("(")[0] for c in backend.calls if "partition" in c]


def test_flaps_until_reverted_then_stays_healed(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.create_workload("web", WorkloadKind.POD, "node1")
    spec = NetworkFlapSpec(type="network-flap", down_s=0.05, period_s=0.15)
    journal = Journal(tmp_path / "journal.jsonl")
    fault = build_fault(spec, TargetSpec(workload="web"), backend, journal)
    assert isinstance(fault, NetworkFlap)
    fault.inject()
    assert not backend.answers("web")[0]  # the first cut is part of the injection
    time.sleep(0.7)
    fault.revert()
    seen = _toggles(backend)
    assert seen[0] == "partition_workload" and seen[-1] == "heal_workload_partition"
    cuts = seen.count("partition_workload")
    assert 3 <= cuts <= 6, seen  # ~0.7 s / 0.15 s
    # Strictly alternating, apart from the revert's own (idempotent) heal at the end.
    body = seen[:-1]
    assert all(a != b for a, b in itertools.pairwise(body)), seen
    assert backend.answers("web")[0]
    time.sleep(0.2)
    assert _toggles(backend) == seen  # nothing flaps after the revert
    assert journal.pending() == []


def test_a_cut_the_backend_cannot_make_is_skipped_and_flapping_goes_on(tmp_path: Path) -> None:
    """Mid-flap the workload is being replaced and has no address: that cut is
    skipped, the next period cuts again, and the revert still heals."""
    backend = FakeBackend()
    backend.create_workload("web", WorkloadKind.POD, "node1")
    fault = NetworkFlap(backend, "workload", "web", 0.05, 0.15, Journal(tmp_path / "j.jsonl"))
    real = backend.partition_workload
    refused = iter([False, True])  # the injection's cut works, the second does not

    def partition(workload: str) -> None:
        if next(refused, False):
            raise BackendError(f"VMI {workload} has no address yet: nothing to cut off")
        real(workload)

    backend.partition_workload = partition  # type: ignore[method-assign]
    fault.inject()
    time.sleep(0.6)
    fault.revert()  # no error: the skipped cut is not a failure
    assert fault.skipped == ["VMI web has no address yet: nothing to cut off"]
    assert fault.flaps >= 2  # cut again after the skipped one
    assert backend.answers("web")[0]


def test_a_harness_killed_mid_flap_is_healed_by_the_journal(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.create_workload("web", WorkloadKind.POD, "node1")
    journal = Journal(tmp_path / "journal.jsonl")
    fault = NetworkFlap(backend, "workload", "web", 0.05, 0.15, journal)
    fault.inject()
    fault._stop.set()  # the harness dies: its thread is gone, the cut may stay
    backend.partition_workload("web")
    rebuilt = from_record(journal.pending()[0], backend, journal)
    assert isinstance(rebuilt, NetworkFlap) and rebuilt.period_s == 0.15
    assert [r.fault for r in revert_pending(journal, lambda _name: backend)] == ["network-flap"]
    assert backend.answers("web")[0]


def test_declared_once_and_loaded_from_its_experiment_files() -> None:
    declared = FAULT_TYPES["network-flap"]
    assert declared.variants == ("node", "workload") and not declared.held_until_recovery
    for kind in ("pods", "vmis"):
        spec = load_experiment(ROOT / "experiments" / kind / "network-flap.yaml")
        assert spec.rto.fault.type == "network-flap"
        assert fault_variant(spec.rto.fault, spec.rto.target) == "workload"


def test_a_cut_as_long_as_the_period_is_refused(tmp_path: Path) -> None:
    text = (ROOT / "experiments/pods/network-flap.yaml").read_text()
    bad = tmp_path / "flap.yaml"
    bad.write_text(text.replace("down_s: 2, period_s: 5", "down_s: 5, period_s: 5"))
    with pytest.raises(SpecError, match=r"down_s \(5\) must be shorter than period_s \(5\)"):
        load_experiment(bad)
