"""The harness's own cluster changes (restarts off, fences) are journaled like faults.

A SIGKILLed harness must not leave node-side restarts switched off or a node
fenced: both are written to the journal before they act and `revert_pending`
(what `rto revert` runs) undoes them.
"""

from __future__ import annotations

from pathlib import Path

from fakes import FakeBackend

from chaos.faults import revert_pending
from chaos.faults.harness_state import NodeFence, RestartHealingOff
from chaos.journal import Journal


def test_restart_off_and_fence_left_by_a_dead_harness_are_reverted(tmp_path: Path) -> None:
    state = tmp_path / "cluster.json"
    journal = Journal(tmp_path / "journal.jsonl")
    backend = FakeBackend(state_file=state)
    RestartHealingOff(backend, journal).inject()
    NodeFence(backend, "node2", journal).inject()
    # The harness "dies" here: nothing reverts. A new process sees the damage...
    fresh = FakeBackend(state_file=state)
    assert fresh.restart_healing() is False
    assert fresh.node("node2").fenced
    assert {r.fault for r in journal.pending()} == {"restart-healing-off", "node-fence"}
    # ...and `rto revert` repairs it from the journal alone.
    revert_pending(Journal(tmp_path / "journal.jsonl"), lambda _name: FakeBackend(state_file=state))
    after = FakeBackend(state_file=state)
    assert after.restart_healing() is True
    assert not after.node("node2").fenced
    assert journal.pending() == []
