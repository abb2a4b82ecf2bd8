"""End to end: a VMI run's timeline holds what the guest printed on its serial console.

One private 2-node lab with VMs (own state/run dirs, netns prefix ``rtovl``,
nodes ``vln1``/``vln2``, own journal), always torn down in finally. One run of
``experiments/vmis/process-crash.yaml`` (QEMU SIGKILLed, the node agent starts
the domain again) through ``run_experiment`` on ``LabBackend``: the recorder tails
``backend.log_path`` (the console log) and the row must carry the new boot's
``RTO-GUEST-READY <instance>`` line as a LOG event, after the injection and
with the new instance the control plane reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.journal import Journal
from chaos.results import ResultsStore, RunStatus
from chaos.runner import RunOptions, run_experiment
from chaos.spec import load_experiment
from chaos.timeline import EventKind
from cluster.lab import lifecycle, net, state

pytest.importorskip("libvirt", reason="libvirt-python (extra 'vm') is not installed")

from cluster.lab.backend import LabBackend

__all__: list[str] = []

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
STATE = Path("/var/lib/rto-lab-vlogs")
RUN = Path("/run/rto-lab-vlogs")
PREFIX = "rtovl"
NODE_PREFIX = "vln"
HOME = f"{NODE_PREFIX}1"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabBackend, Path]]:
    tmp = tmp_path_factory.mktemp("e2e-vmi-logs")
    mp = pytest.MonkeyPatch()
    mp.setattr(state, "STATE_DIR", STATE)
    mp.setattr(state, "RUN_DIR", RUN)
    mp.setattr(net, "NS_PREFIX", PREFIX)
    mp.setattr(net, "HUB_NS", f"{PREFIX}-hub")
    mp.setenv("RTO_LAB_STATE_DIR", str(STATE))
    mp.setenv("RTO_LAB_RUN_DIR", str(RUN))
    mp.setenv("RTO_LAB_NS_PREFIX", PREFIX)
    mp.setenv("RTO_JOURNAL", str(tmp / "journal.jsonl"))
    try:
        lifecycle.lab_down()  # an earlier aborted run of this module
        lifecycle.lab_up("fast", 2, node_prefix=NODE_PREFIX, vms=True)
        backend = LabBackend()
        try:
            yield backend, tmp
        finally:
            backend.close()
    finally:
        try:
            lifecycle.lab_down()
        finally:
            mp.undo()


def test_vmi_restart_console_lines_land_in_the_run(lab: tuple[LabBackend, Path]) -> None:
    backend, tmp = lab
    spec = load_experiment(ROOT / "experiments/vmis/process-crash.yaml")
    target = spec.rto.target.model_copy(update={"node": HOME})
    spec = spec.model_copy(update={"rto": spec.rto.model_copy(update={"target": target})})
    spec = spec.with_overrides(profile="fast", healers=["watchdog"], deadline_s=60)
    journal = Journal(tmp / "journal.jsonl")
    options = RunOptions(journal=journal, ready_timeout_s=90.0, steady_timeout_s=30.0)
    try:
        result = run_experiment(spec, backend, ResultsStore(tmp / "runs"), options=options)
        # The recovery verdict is the prober's business (tested elsewhere); here the
        # guest's own output must be in the row whatever the prober saw.
        assert result.status is not RunStatus.ABORTED, result.error
        assert journal.pending() == []
        assert backend.log_path(target.workload) == STATE / "logs" / "vmi" / "vm-crash.console.log"
        injected = next(e.t for e in result.timeline if e.kind is EventKind.FAULT_INJECTED)
        logs = [e for e in result.timeline if e.kind is EventKind.LOG]
        # Only this run's output: the first boot (before the recorder started) is not in.
        ready = [e for e in logs if e.message.startswith("RTO-GUEST-READY")]
        assert len(ready) == 1 and ready[0].t > injected, [e.message for e in logs]
        assert ready[0].source == "workload" and ready[0].data["workload"] == "vm-crash"
        # The marker names the new instance the control plane reports.
        instance = ready[0].message.split()[1]
        assert backend.workload(target.workload).instance == instance
    finally:
        if any(w.name == target.workload for w in backend.workloads()):
            backend.delete_workload(target.workload)
