"""The rerun healer, added as one module plus its registry entry.

Timing on a FakeClock (``step`` driven by hand, no thread); the lab run in
tests/test_e2e_faults.py shows a crashed pod with node-side restarts off
started anew by it.
"""

from __future__ import annotations

from fakes import FakeBackend

from chaos.spec import KNOWN_HEALERS
from cluster.api import Phase, WorkloadKind
from core.clock import FakeClock
from healers.base import HealerContext
from healers.registry import build_healers
from healers.rerun import RerunHealer


def _ctx(backend: FakeBackend, clock: FakeClock, seen: list[str]) -> HealerContext:
    return HealerContext(
        backend=backend,
        workloads=["web"],
        record=lambda _healer, message, _data: seen.append(message),
        clock=clock,
    )


def test_a_failed_target_is_rerun_once_after_its_grace() -> None:
    clock = FakeClock(100.0)
    backend = FakeBackend(clock)
    backend.create_workload("web", WorkloadKind.POD, "node1")
    backend.create_workload("db", WorkloadKind.POD, "node2")
    backend.set_restart_healing(False)
    seen: list[str] = []
    healer = RerunHealer(period=0.5, grace=2.0)
    healer.prepare(_ctx(backend, clock, seen))
    backend.kill_main_process("web")
    backend.kill_main_process("db")  # not a target: never touched
    assert backend.workload("web").phase is Phase.FAILED
    healer.step()
    clock.advance(1.9)
    healer.step()
    assert seen == [] and backend.workload("web").phase is Phase.FAILED
    clock.advance(0.2)
    healer.step()
    assert seen == ["rerun web: Failed for 2.1 s"]
    assert "reschedule(web)" in backend.calls and "reschedule(db)" not in backend.calls
    clock.advance(5)
    healer.step()
    assert len(seen) == 1  # once per failure
    assert backend.workload("db").phase is Phase.FAILED


def test_a_target_that_recovers_within_its_grace_is_left_alone() -> None:
    clock = FakeClock(0.0)
    backend = FakeBackend(clock, restart_delay=1.0)
    backend.create_workload("web", WorkloadKind.POD, "node1")
    backend.set_restart_healing(False)
    seen: list[str] = []
    healer = RerunHealer(period=0.5, grace=2.0)
    healer.prepare(_ctx(backend, clock, seen))
    backend.kill_main_process("web")
    healer.step()
    backend.set_restart_healing(True)
    backend.reschedule("web")  # someone else brought it back
    clock.advance(3)
    healer.step()
    assert seen == []


def test_registered_once_and_built_from_the_profile() -> None:
    assert "rerun" in KNOWN_HEALERS
    (fast,) = build_healers(["rerun"], "fast")
    (slow,) = build_healers(["rerun"], "kubernetes-defaults")
    assert isinstance(fast, RerunHealer) and isinstance(slow, RerunHealer)
    assert fast.grace < slow.grace
