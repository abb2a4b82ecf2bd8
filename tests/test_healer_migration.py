"""The migration healer on a FakeClock with the stateful FakeBackend (tests/fakes.py).

The healer is driven step by step (``prepare`` + ``step``), so the rules
(cordoned, early warning, lost, retry after a failure) are checked without a
thread or a real sleep.
"""

from __future__ import annotations

from typing import cast

import pytest
from fakes import FakeBackend

from cluster.api import Backend, NodeStatus, WorkloadKind
from cluster.profiles import get_profile
from core.clock import FakeClock
from core.errors import HarnessError
from healers.base import HealerContext
from healers.migration import MigrationHealer, default_warn_after
from healers.registry import build_healers

FAST = get_profile("fast")


class Actions:
    def __init__(self) -> None:
        self.data: list[dict[str, str]] = []

    def __call__(self, healer: str, message: str, data: dict[str, str]) -> None:
        assert healer == "migration"
        self.data.append(data)


def _setup(
    targets: tuple[str, ...] = ("vm",),
) -> tuple[FakeBackend, MigrationHealer, Actions, FakeClock]:
    clock = FakeClock(100.0)
    be = FakeBackend(clock=clock, nodes=("n1", "n2"))
    be.create_workload("vm", WorkloadKind.VMI, "n1")
    be.create_workload("pod", WorkloadKind.POD, "n1")
    be.create_workload("other", WorkloadKind.VMI, "n1")
    actions = Actions()
    healer = MigrationHealer.for_profile(FAST)
    # FakeBackend is structurally a Backend for everything the healer calls.
    healer.prepare(HealerContext(cast(Backend, be), list(targets), actions, clock))
    return be, healer, actions, clock


def test_defaults_scale_with_the_profile() -> None:
    h = MigrationHealer.for_profile(get_profile("kubernetes-defaults"))
    assert h.warn_after == pytest.approx(17.5)  # half of 3.5 x 10 s heartbeats
    assert h.confirm_after == pytest.approx(35.0)
    assert default_warn_after(FAST) == pytest.approx(0.4375)  # half of 3.5 x 0.25 s
    assert [x.name for x in build_healers(["migration"], "fast")] == ["migration"]


def test_bad_thresholds_are_refused() -> None:
    with pytest.raises(HarnessError, match="warn_after"):
        MigrationHealer(period=0.1, warn_after=1.0, confirm_after=1.0, retry_after=1.0)


def test_healthy_nodes_leave_everything_alone() -> None:
    be, healer, actions, _ = _setup()
    be.set_heartbeat_age("n1", 0.1)
    healer.step()
    assert actions.data == [] and be.workload("vm").node == "n1"


def test_cordon_migrates_only_target_vmis_keeping_the_instance() -> None:
    be, healer, actions, _ = _setup(("vm", "pod"))
    before = be.workload("vm").instance
    be.cordon("n1")
    healer.step()
    assert be.workload("vm").node == "n2"
    assert be.workload("vm").instance == before  # live: the same guest
    assert be.workload("pod").node == "n1"  # pods do not migrate
    assert be.workload("other").node == "n1"  # not a target
    assert [a["action"] for a in actions.data] == ["migrate"]
    assert actions.data[0]["trigger"] == "cordoned"
    assert actions.data[0]["downtime_ms"] == "0.0" and actions.data[0]["target"] == "n2"
    healer.step()  # nothing left on a cordoned node: no second act
    assert len(actions.data) == 1


@pytest.mark.parametrize(
    ("age", "moved"),
    [(0.4, False), (0.5, True), (0.87, True), (0.88, False), (None, False)],
)
def test_early_warning_window(age: float | None, moved: bool) -> None:
    """fast: warn after 0.4375 s of silence, lost (eviction's case) beyond 0.875 s."""
    be, healer, actions, _ = _setup()
    be.set_heartbeat_age("n1", age)
    healer.step()
    assert (be.workload("vm").node == "n2") is moved
    if moved:
        assert actions.data[0]["trigger"] == "early-warning"
        assert actions.data[0]["heartbeat_age"] == f"{age:.3f}"


def test_trigger_ignores_dead_and_fenced_nodes() -> None:
    h = MigrationHealer.for_profile(FAST)
    off = NodeStatus("n", ready=False, schedulable=False, powered=False)
    fenced = NodeStatus("n", ready=True, schedulable=False, fenced=True)
    assert h.trigger(off) is None and h.trigger(fenced) is None


def test_failure_is_recorded_and_retried_after_the_pause() -> None:
    be, healer, actions, clock = _setup()
    be.cordon("n1")
    be.fail_on["migrate"] = "target refused the migration"
    real_migrate = be.migrate

    def flaky(workload: str, node: str | None = None) -> dict[str, str]:
        if "migrate" in be.fail_on:
            from core.errors import BackendError

            raise BackendError(be.fail_on["migrate"])
        return real_migrate(workload, node)

    be.migrate = flaky  # type: ignore[method-assign]
    healer.step()
    assert [a["action"] for a in actions.data] == ["migrate-failed"]
    assert "refused" in actions.data[0]["error"]
    del be.fail_on["migrate"]
    clock.advance(healer.retry_after / 2)
    healer.step()  # still pausing after the failure
    assert len(actions.data) == 1
    clock.advance(healer.retry_after)
    healer.step()
    assert [a["action"] for a in actions.data] == ["migrate-failed", "migrate"]
    assert be.workload("vm").node == "n2"
