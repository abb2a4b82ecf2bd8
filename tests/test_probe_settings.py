"""Per-experiment probe settings: ``recovery.probe_interval_ms`` and
``recovery.probe_timeout_ms`` of an experiment reach the recorder's prober.

Reads chaos/spec.py (RecoverySpec) and chaos/runner.py (default_recorder).
"""

from __future__ import annotations

import pydantic
import pytest
from fakes import FakeBackend

from chaos.runner import default_recorder
from chaos.spec import RecoverySpec
from core.clock import FakeClock
from core.timeline import Timeline

__all__: list[str] = []


def test_probe_timeout_defaults_to_250_ms_beside_the_interval() -> None:
    spec = RecoverySpec()
    assert (spec.probe_interval_ms, spec.probe_timeout_ms) == (20, 250)
    assert RecoverySpec.model_validate({"probe_timeout_ms": 1000}).probe_timeout_ms == 1000


@pytest.mark.parametrize("bad", [0, 9, 60_001])
def test_probe_timeout_out_of_range_is_rejected(bad: int) -> None:
    with pytest.raises(pydantic.ValidationError, match="probe_timeout_ms"):
        RecoverySpec.model_validate({"probe_timeout_ms": bad})


def test_default_recorder_uses_the_experiments_interval_and_timeout() -> None:
    clock = FakeClock()
    recovery = RecoverySpec(probe_interval_ms=40, probe_timeout_ms=750, good_probes=3)
    rec = default_recorder(
        FakeBackend(clock=clock),
        "web",
        Timeline(clock.now()),
        clock,
        recovery,
    )
    prober = rec.prober  # type: ignore[attr-defined]
    assert prober.interval == pytest.approx(0.04)
    assert prober.timeout == pytest.approx(0.75)
    assert prober.machine.good_needed == 3
