"""Per-experiment probe settings: ``recovery.probe_interval_ms`` and
``recovery.probe_timeout_ms`` of an experiment reach the recorder's prober.

Reads chaos/spec.py (RecoverySpec) and chaos/runner.py (default_recorder).
"""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml
from fakes import FakeBackend

from chaos.runner import default_recorder
from chaos.spec import RecoverySpec, load_experiment
from core.clock import FakeClock
from core.errors import SpecError
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


def test_edge_probes_default_to_2_ms_and_reach_the_prober() -> None:
    clock = FakeClock()
    for edge_ms, expect in ((2.0, 0.002), (5.0, 0.005), (None, None)):
        recovery = RecoverySpec(edge_probe_interval_ms=edge_ms)
        rec = default_recorder(
            FakeBackend(clock=clock), "web", Timeline(clock.now()), clock, recovery
        )
        assert rec.prober.edge_interval == (None if expect is None else pytest.approx(expect))  # type: ignore[attr-defined]
    assert RecoverySpec().edge_probe_interval_ms == 2.0


def test_edge_interval_not_below_the_grid_is_one_paragraph_naming_both_fields(
    tmp_path: Path,
) -> None:
    doc = {
        "title": "t",
        "description": "d",
        "method": [],
        "extensions": [
            {
                "name": "rto",
                "target": {"workload": "web", "kind": "pod"},
                "fault": {"type": "process-crash"},
                "recovery": {"probe_interval_ms": 20, "edge_probe_interval_ms": 20},
            }
        ],
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(SpecError) as err:
        load_experiment(path)
    text = str(err.value)
    assert str(path) in text and "edge_probe_interval_ms" in text and "probe_interval_ms" in text
    assert "\n" not in text.strip() and "Traceback" not in text
