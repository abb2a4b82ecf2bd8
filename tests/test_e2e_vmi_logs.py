"""End to end: a VMI run's timeline holds what the guest printed on its serial console.

One private 2-node lab with VMs (its real cluster, VMIs as kubevirt.io/v1
objects; own state/run dirs, netns prefix ``rtovl``, nodes ``vln1``/``vln2``,
own journal), always torn down in finally. One run of
``experiments/vmis/process-crash.yaml`` (QEMU SIGKILLed: the VMI fails, the VM
makes a new one, which boots from the same disk) through ``run_experiment`` on
the lab's backend: the recorder tails ``backend.log_path`` (the serial console
log) and the row must carry the new boot's ``RTO-GUEST-BOOT <instance> boot=2``
line as a LOG event, after the injection and naming the boot that then answers
the probes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from private_lab import PrivateLab, probe

from chaos.journal import Journal
from chaos.results import ResultsStore, RunStatus
from chaos.runner import RunOptions, run_experiment
from chaos.spec import load_experiment
from core.timeline import EventKind
from core.wait import poll_until

pytest.importorskip("libvirt", reason="libvirt-python (extra 'vm') is not installed")

from cluster.lab_cluster import LabClusterBackend

__all__: list[str] = []

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
LAB = PrivateLab("vlogs", "rtovl", "vln")
HOME = LAB.node(1)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabClusterBackend, Path]]:
    tmp = tmp_path_factory.mktemp("e2e-vmi-logs")
    with LAB.up(2, vms=True, journal=tmp / "journal.jsonl") as backend:
        yield backend, tmp


def _serving(backend: LabClusterBackend, name: str) -> str | None:
    """The boot instance the guest answers /healthz with (None: no answer)."""
    try:
        code, body = probe(backend, name, timeout=0.5)
    except OSError:
        return None
    words = body.split()
    return words[1] if code == 200 and len(words) > 1 else None


def test_vmi_restart_console_lines_land_in_the_run(lab: tuple[LabClusterBackend, Path]) -> None:
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
        console = LAB.state_dir / "logs" / "vmi" / "vm-crash.console.log"
        assert backend.log_path(target.workload) == console
        injected = next(e.t for e in result.timeline if e.kind is EventKind.FAULT_INJECTED)
        logs = [e for e in result.timeline if e.kind is EventKind.LOG]
        # Only this run's output: the first boot (before the recorder started) is
        # not in. The new boot's first marker comes seconds before it serves;
        # its READY line may come just after the run ended (the probes saw it
        # answer first), so it is not required here.
        boots = [e for e in logs if e.message.startswith("RTO-GUEST-BOOT")]
        assert len(boots) == 1 and boots[0].t > injected, [e.message for e in logs]
        assert boots[0].source == "workload" and boots[0].data["workload"] == "vm-crash"
        assert boots[0].message.endswith("boot=2")
        ready = [e for e in logs if e.message.startswith("RTO-GUEST-READY")]
        assert len(ready) <= 1 and all(e.t > boots[0].t for e in ready)
        # The marker names the boot that serves now: the guest's own answer
        # carries its instance (the VMI's status names the VMI object, not
        # the boot). Waited for, boundedly, in case the run ended first.
        instance = boots[0].message.split()[1]
        poll_until(
            lambda: _serving(backend, target.workload) == instance,
            30,
            f"the guest that answers to be boot {instance}",
            interval=0.1,
        )
    finally:
        if any(w.name == target.workload for w in backend.workloads()):
            backend.delete_workload(target.workload)
