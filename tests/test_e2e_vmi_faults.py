"""End to end, VMI fault by fault: the experiments/vmis files through the runner on a real lab.

One private lab for the module (its real cluster on the ``fast`` flags, 2
nodes, VMs on: VMIs are kubevirt.io/v1 objects reconciled by the lab's
virt-controller and virt-handlers; own state/run dirs, netns prefix ``rtovf``,
nodes ``vfn1``/``vfn2``), always torn down in finally. One VirtualMachine
(``vmf`` on ``vfn1``, 2 s guest watchdog) is reused by every test, because a
guest boot costs 5-10 s under TCG. Each test loads a
file of ``experiments/vmis/``, points it at that VMI, shortens it and runs it
through ``run_experiment`` with the watchdog healer; then it asserts on what
really happened (status, RTO, instance, timeline: healer actions, Paused
condition) and that nothing is left: journal empty, no VMI partition table,
volume neither frozen nor shut down, the data disk plugged in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from private_lab import PrivateLab

from chaos.journal import Journal
from chaos.recorder import Recorder
from chaos.results import ResultsStore, RunResult, RunStatus
from chaos.runner import RecorderLike, RunOptions, run_experiment
from chaos.spec import ExperimentSpec, RecoverySpec, load_experiment
from cluster.api import Backend, WorkloadKind
from cluster.lab import net, volumes
from core.clock import Clock
from core.timeline import EventKind, Timeline, TimelineEvent

pytest.importorskip("libvirt", reason="libvirt-python (extra 'vm') is not installed")

from cluster.lab import vmi_faults  # needs libvirt (importorskip above)
from cluster.lab_cluster import LabClusterBackend

__all__: list[str] = []

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
VMIS = ROOT / "experiments" / "vmis"
LAB = PrivateLab("vfaults", "rtovf", "vfn")
NODES = (LAB.node(1), LAB.node(2))
HOME = NODES[0]
VMI = "vmf"


@dataclass
class Lab:
    backend: LabClusterBackend
    journal: Journal
    store: ResultsStore


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("e2e-vmi-faults")
    journal = tmp / "journal.jsonl"
    with LAB.up(len(NODES), vms=True, journal=journal) as backend:
        yield Lab(backend, Journal(journal), ResultsStore(tmp / "runs"))


def _spec(
    name: str, *, duration_s: float | None = None, deadline_s: float = 40.0
) -> ExperimentSpec:
    """The file's spec, aimed at the shared VMI on HOME, watchdog healer only."""
    spec = load_experiment(VMIS / f"{name}.yaml")
    target = spec.rto.target.model_copy(
        update={"workload": VMI, "node": HOME, "watchdog_heartbeat_s": 2}
    )
    # 100 ms probes: each probe forks a handler and fsyncs in the guest; at 20 ms
    # a TCG guest on a loaded 2-core machine starved its watchdog feeder (2 s)
    # and was reset before any fault was injected.
    recovery = spec.rto.recovery.model_copy(update={"probe_interval_ms": 100})
    rto = spec.rto.model_copy(update={"target": target, "recovery": recovery})
    spec = spec.model_copy(update={"rto": rto})
    return spec.with_overrides(
        profile="fast", healers=["watchdog"], duration_s=duration_s, deadline_s=deadline_s
    )


def _recorder(
    backend: Backend, workload: str, timeline: Timeline, clock: Clock, recovery: RecoverySpec
) -> RecorderLike:
    # A 1 s probe timeout instead of the recorder's 250 ms: a TCG guest forks a
    # handler and fsyncs per probe, and on a loaded 2-core machine an answer
    # now and then takes longer than 250 ms, which reads as a flap before the
    # fault and aborts the run.
    rec: RecorderLike = Recorder(
        backend,
        workload,
        timeline,
        clock=clock,
        interval=recovery.probe_interval_ms / 1000.0,
        timeout=1.0,
        good_needed=recovery.good_probes,
    )
    return rec


def _run(lab: Lab, spec: ExperimentSpec) -> RunResult:
    options = RunOptions(
        journal=lab.journal,
        ready_timeout_s=90.0,
        steady_timeout_s=60.0,
        metrics_period_s=None,
        recorder_factory=_recorder,
    )
    result = run_experiment(spec, lab.backend, lab.store, profile="fast", options=options)
    print(
        f"\nFIGURE vmi {result.fault} {result.variant}: status {result.status.value} "
        f"rto {result.rto_s} detection {result.detection_s} same_instance "
        f"{result.same_instance} probes {result.probes_failed}/{result.probes_sent}"
    )
    return result


def _actions(result: RunResult) -> list[TimelineEvent]:
    return [e for e in result.timeline if e.kind is EventKind.HEALER_ACTION]


def _assert_clean(lab: Lab) -> None:
    assert lab.journal.pending() == []
    for node in NODES:
        assert not vmi_faults.is_vmi_partitioned(node, VMI), f"VMI left cut off on {node}"
        assert not net.is_partitioned(node)
    assert not volumes.is_frozen(VMI)
    assert not volumes.is_shut_down(VMI)
    w = lab.backend.workload(VMI)
    assert w.node is not None
    assert vmi_faults.has_data_disk(w.node, VMI), "data disk left unplugged"
    assert vmi_faults.domain_state(w.node, VMI)[0] == "running"


@pytest.fixture(scope="module")
def vmi(lab: Lab) -> Iterator[str]:
    """The shared VMI, made before the first run (so each run finds the VMI
    object it started with), deleted at the end."""
    lab.backend.create_workload(VMI, WorkloadKind.VMI, HOME, watchdog_heartbeat_s=2)
    try:
        lab.backend.wait_ready(VMI, 180)
        yield VMI
    finally:
        if VMI in {w.name for w in lab.backend.workloads()}:
            lab.backend.delete_workload(VMI)


def test_hang_watchdog_resets_guest_in_place(lab: Lab, vmi: str) -> None:
    """The i6300esb resets the hung guest inside the same QEMU: the guest that
    answers afterwards is a new boot (the probes read its instance), the VMI
    object is the same one (KubeVirt's status does not carry the guest's boot,
    so the watchdog healer has nothing to record on this backend)."""
    uid = lab.backend.workload(vmi).instance
    result = _run(lab, _spec("process-crash-hang"))
    try:
        assert result.status is RunStatus.RECOVERED, result.error
        assert result.same_instance is False  # the guest rebooted
        assert result.rto_s is not None and result.rto_s < 20.0
        assert lab.backend.workload(vmi).instance == uid  # not a new VMI
        assert not any(a.data.get("action") == "restarted" for a in _actions(result))
    finally:
        _assert_clean(lab)


def test_kill_qemu_makes_a_new_vmi(lab: Lab, vmi: str) -> None:
    """KubeVirt's way: the handler reports the VMI Failed, the VM controller
    (runStrategy Always) makes a new one, which boots anew."""
    result = _run(lab, _spec("process-crash"))
    try:
        assert result.status is RunStatus.RECOVERED, result.error
        assert result.same_instance is False
        assert result.rto_s is not None and result.rto_s < 40.0
    finally:
        _assert_clean(lab)


def test_storage_eio_pauses_then_healer_resumes_or_restarts(lab: Lab, vmi: str) -> None:
    result = _run(lab, _spec("storage-eio", duration_s=3.0))
    try:
        assert result.status is RunStatus.RECOVERED, result.error
        controls = [e for e in result.timeline if e.kind is EventKind.CONTROL]
        assert any("Paused=True:PausedIOError" in e.message for e in controls), [
            e.message for e in controls
        ]
        acts = {a.data.get("action") for a in _actions(result)}
        # QEMU's fd stayed on the dead filesystem: the resume cannot hold and
        # the healer restarts the VMI.
        assert "resume" in acts, acts
        assert "restart" in acts, acts
    finally:
        _assert_clean(lab)


def test_disk_unplug_is_an_outage_and_replug_recovers(lab: Lab, vmi: str) -> None:
    result = _run(lab, _spec("storage-unplug", duration_s=3.0))
    try:
        assert result.status is RunStatus.RECOVERED, result.error
        assert result.same_instance is True  # no reboot: the disk came back live
        assert result.rto_s is not None and result.rto_s >= 2.0
    finally:
        _assert_clean(lab)


def test_vmi_partition_is_an_outage_and_heals(lab: Lab, vmi: str) -> None:
    result = _run(lab, _spec("network-partition-workload", duration_s=3.0))
    try:
        assert result.status is RunStatus.RECOVERED, result.error
        assert result.same_instance is True
        assert result.rto_s is not None and 2.5 <= result.rto_s < 10.0
    finally:
        _assert_clean(lab)


def test_storage_hang_is_an_outage_and_thaw_recovers(lab: Lab, vmi: str) -> None:
    result = _run(lab, _spec("storage-hang", duration_s=3.0))
    try:
        assert result.status is RunStatus.RECOVERED, result.error
        assert result.same_instance is True
        assert result.rto_s is not None and result.rto_s >= 2.0
    finally:
        _assert_clean(lab)
