"""End to end, fault by fault: every pod experiment file through the runner on a real lab.

One private lab for the module (its real cluster on the ``fast`` flags, 3
nodes, own state/run dirs, netns prefix ``rtohf``, nodes ``hfn1..3``), always
torn down in finally. Each test loads a file of ``experiments/pods/``, shortens
it (duration 2-10 s, deadline 20-40 s), places its workload on ``hfn1`` and runs
it through ``run_experiment`` on the lab's backend (a Deployment on the real
kubelets, driven through ``cluster.kube``); then it asserts on what really happened
(status, RTO, instance, node, probe failure reasons, timeline) and that the run
left nothing behind: nothing pending in the journal, every node schedulable,
unfenced, powered, Ready and unpartitioned, the pod unpartitioned, its volume
neither frozen nor shut down. The workload is deleted after each test so the
2-core machine only ever runs one test pod.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client as k8s
from private_lab import PrivateLab

from chaos.journal import Journal
from chaos.results import ResultsStore, RunResult, RunStatus
from chaos.runner import RunOptions, run_experiment
from chaos.spec import ExperimentSpec, load_experiment
from cluster.api import WorkloadKind
from cluster.lab import net, volumes
from cluster.lab.kube import cluster as kube_cluster
from cluster.lab_cluster import LabClusterBackend
from cluster.profiles import get_profile
from core.errors import FaultError
from core.timeline import EventKind, TimelineEvent
from core.wait import poll_until

__all__: list[str] = []

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
PODS = ROOT / "experiments" / "pods"
LAB = PrivateLab("hfaults", "rtohf", "hfn")
HOME = LAB.node(1)  # where every test workload starts
FAST = get_profile("fast")


@dataclass
class Lab:
    backend: LabClusterBackend
    journal: Journal
    store: ResultsStore


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("e2e-faults")
    journal = tmp / "journal.jsonl"
    with LAB.up(3, journal=journal) as backend:
        yield Lab(backend, Journal(journal), ResultsStore(tmp / "runs"))


def _spec(
    name: str,
    *,
    healers: list[str] | None = None,
    duration_s: float | None = None,
    deadline_s: float = 25.0,
) -> ExperimentSpec:
    """The file's spec, placed on HOME, shortened."""
    spec = load_experiment(PODS / f"{name}.yaml")
    target = spec.rto.target.model_copy(update={"node": HOME})
    spec = spec.model_copy(update={"rto": spec.rto.model_copy(update={"target": target})})
    return spec.with_overrides(
        profile="fast", healers=healers, duration_s=duration_s, deadline_s=deadline_s
    )


def _options(lab: Lab) -> RunOptions:
    return RunOptions(journal=lab.journal, ready_timeout_s=30.0, steady_timeout_s=15.0)


def _run(lab: Lab, spec: ExperimentSpec) -> RunResult:
    result = run_experiment(spec, lab.backend, lab.store, profile="fast", options=_options(lab))
    print(
        f"\nFIGURE {spec.rto.target.workload} {result.fault} {result.variant}: "
        f"status {result.status.value} rto {result.rto_s} same_instance "
        f"{result.same_instance} probes {result.probes_failed}/{result.probes_sent}"
    )
    return result


def _assert_clean(lab: Lab, workload: str) -> None:
    """Nothing of the run is left: journal, nodes, partitions, volume."""
    assert lab.journal.pending() == []
    # A powered-on node's kubelet starts again and must renew its Lease first.
    poll_until(lambda: all(n.ready for n in lab.backend.nodes()), 60.0, "every node Ready")
    for n in lab.backend.nodes():
        assert n.schedulable, f"{n.name} left cordoned"
        assert not n.fenced, f"{n.name} left fenced"
        assert n.powered, f"{n.name} left powered off"
        assert not net.is_partitioned(n.name), f"{n.name} left partitioned"
        assert not net.partitioned_ips(n.name), f"{n.name} still cuts {net.partitioned_ips(n.name)}"
    assert not volumes.is_frozen(workload)
    assert not volumes.is_shut_down(workload)


@pytest.fixture
def cleanup(lab: Lab) -> Iterator[list[str]]:
    """Workloads a test made; deleted afterwards (and their volumes with them)."""
    made: list[str] = []
    yield made
    existing = {w.name for w in lab.backend.workloads()}
    for name in made:
        if name in existing:  # a run that failed early may not have created it
            lab.backend.delete_workload(name)


def _events(result: RunResult, kind: EventKind) -> list[TimelineEvent]:
    return [e for e in result.timeline if e.kind is kind]


def _one(result: RunResult, kind: EventKind) -> TimelineEvent:
    found = _events(result, kind)
    assert len(found) == 1, f"expected one {kind.value}, got {found}"
    return found[0]


def _fails_after_injection(result: RunResult) -> list[TimelineEvent]:
    """The failed-probe transitions of the fault's outage.

    A PROBE_FAIL is stamped at its probe's send time, and a probe in flight
    while the fault acts (sent a few ms before the FAULT_INJECTED stamp) can
    be the first to fail: count every failure after the last good streak
    that began before the injection.
    """
    injected = _one(result, EventKind.FAULT_INJECTED)
    ok_before = [e.t for e in _events(result, EventKind.PROBE_OK) if e.t < injected.t]
    assert ok_before, "the workload was never up before the injection"
    return [e for e in _events(result, EventKind.PROBE_FAIL) if e.t > ok_before[-1]]


def _assert_down_until_revert(result: RunResult, duration_s: float) -> None:
    """Outage from the injection; nothing came back before the revert, then it did.

    The revert starts ``duration_s`` after the injection, and FAULT_REVERTED is
    stamped when it starts: no good answer comes before that stamp.
    """
    injected = _one(result, EventKind.FAULT_INJECTED)
    reverted = _one(result, EventKind.FAULT_REVERTED)
    assert reverted.t >= injected.t + duration_s
    assert float(reverted.data["revert_s"]) >= 0
    assert _fails_after_injection(result), "no outage seen"
    oks = [e for e in _events(result, EventKind.PROBE_OK) if e.t >= injected.t]
    assert oks, "never recovered"
    assert all(e.t >= reverted.t for e in oks), f"recovered before the revert: {oks}"


# --- process crash ------------------------------------------------------------------
def test_process_crash_recovers_with_a_new_instance(lab: Lab, cleanup: list[str]) -> None:
    spec = _spec("process-crash", healers=["watchdog", "eviction"], deadline_s=20)
    cleanup.append(spec.rto.target.workload)
    result = _run(lab, spec)
    assert result.status is RunStatus.RECOVERED, result.error
    assert result.same_instance is False
    assert result.rto_s is not None and 0 < result.rto_s < 5
    _assert_clean(lab, spec.rto.target.workload)


# --- node drain ------------------------------------------------------------------------
def test_node_drain_moves_the_pod(lab: Lab, cleanup: list[str]) -> None:
    spec = _spec("node-drain", healers=["watchdog", "eviction"], deadline_s=20)
    wl = spec.rto.target.workload
    cleanup.append(wl)
    result = _run(lab, spec)
    assert result.status is RunStatus.RECOVERED, result.error
    assert result.same_instance is False
    assert result.rto_s is not None and result.rto_s < 10
    moved_to = lab.backend.workload(wl).node
    assert moved_to is not None and moved_to != HOME
    _assert_clean(lab, wl)


def test_node_drain_refused_by_disruption_budget(lab: Lab, cleanup: list[str]) -> None:
    """A real PodDisruptionBudget (minAvailable 1 of 1 replica): the API server
    answers the drain's eviction 429 for as long as kubectl drain would wait
    (60 s); then the run aborts, the node is uncordoned, the pod stays."""
    spec = _spec("node-drain", healers=["watchdog", "eviction"], deadline_s=20)
    wl = spec.rto.target.workload
    cleanup.append(wl)
    lab.backend.create_workload(wl, WorkloadKind(spec.rto.target.kind), HOME)
    lab.backend.wait_ready(wl, 30)
    api = kube_cluster.api_client()
    policy = k8s.PolicyV1Api(api)
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": f"{wl}-budget"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"rto.harness/workload": wl}}},
    }
    policy.create_namespaced_pod_disruption_budget(kube_cluster.NAMESPACE, pdb)
    try:
        with pytest.raises(FaultError, match="blocked by a PodDisruptionBudget"):
            _run(lab, spec)
    finally:
        policy.delete_namespaced_pod_disruption_budget(f"{wl}-budget", kube_cluster.NAMESPACE)
        api.close()  # type: ignore[no-untyped-call]
    rows = [r for r in lab.store.load() if r.experiment == spec.title]
    assert rows[-1].status is RunStatus.ABORTED
    assert lab.backend.workload(wl).node == HOME  # not evicted
    _assert_clean(lab, wl)  # uncordoned again


# --- node power-off -----------------------------------------------------------------------
def test_node_power_off_eviction_healer_beats_the_toleration(lab: Lab, cleanup: list[str]) -> None:
    # Held longer than the platform alone takes (grace 2 s + toleration 6 s, and
    # a new pod): a recovery before the power-on can only be the healer's.
    duration = 12.0
    spec = _spec(
        "node-power-off", healers=["watchdog", "eviction"], duration_s=duration, deadline_s=30
    )
    wl = spec.rto.target.workload
    cleanup.append(wl)
    result = _run(lab, spec)
    assert result.status is RunStatus.RECOVERED, result.error
    assert result.rto_s is not None
    # Back while the node was still off, and sooner than the taint eviction
    # would have moved it: the healer's fence did it.
    assert result.rto_s < FAST.grace_period + FAST.toleration < duration
    assert result.same_instance is False
    actions = _events(result, EventKind.HEALER_ACTION)
    assert any(e.source == "eviction" and e.data.get("action") == "fence" for e in actions), actions
    assert lab.backend.workload(wl).node != HOME
    _assert_clean(lab, wl)


# --- network partition ------------------------------------------------------------------
def test_network_partition_node_recovers_after_revert(lab: Lab, cleanup: list[str]) -> None:
    # Without the eviction healer, and shorter than grace + toleration: only
    # the heal brings the pod back, on the same node, same instance.
    spec = _spec("network-partition-node", healers=["watchdog"], duration_s=3, deadline_s=20)
    wl = spec.rto.target.workload
    cleanup.append(wl)
    result = _run(lab, spec)
    assert result.status is RunStatus.RECOVERED, result.error
    _assert_down_until_revert(result, spec.rto.fault.duration_s)  # type: ignore[union-attr]
    assert result.same_instance is True
    assert lab.backend.workload(wl).node == HOME
    _assert_clean(lab, wl)


def test_network_partition_node_eviction_healer_moves_the_pod(lab: Lab, cleanup: list[str]) -> None:
    duration = 5.0
    spec = _spec(
        "network-partition-node",
        healers=["watchdog", "eviction"],
        duration_s=duration,
        deadline_s=20,
    )
    wl = spec.rto.target.workload
    cleanup.append(wl)
    result = _run(lab, spec)
    assert result.status is RunStatus.RECOVERED, result.error
    assert _fails_after_injection(result)
    assert result.rto_s is not None and result.rto_s < duration  # before the heal
    assert result.same_instance is False
    assert any(e.source == "eviction" for e in _events(result, EventKind.HEALER_ACTION))
    assert lab.backend.workload(wl).node != HOME
    _assert_clean(lab, wl)


def test_network_partition_workload_recovers_after_revert(lab: Lab, cleanup: list[str]) -> None:
    spec = _spec(
        "network-partition-workload", healers=["watchdog", "eviction"], duration_s=3, deadline_s=20
    )
    wl = spec.rto.target.workload
    cleanup.append(wl)
    result = _run(lab, spec)
    assert result.status is RunStatus.RECOVERED, result.error
    _assert_down_until_revert(result, spec.rto.fault.duration_s)  # type: ignore[union-attr]
    assert result.same_instance is True  # its node kept reporting it Running
    assert not _events(result, EventKind.HEALER_ACTION)
    _assert_clean(lab, wl)


# --- storage ------------------------------------------------------------------------------
def test_storage_hang_times_out_then_recovers_after_thaw(lab: Lab, cleanup: list[str]) -> None:
    spec = _spec("storage-hang", healers=["watchdog", "eviction"], duration_s=3, deadline_s=20)
    wl = spec.rto.target.workload
    cleanup.append(wl)
    result = _run(lab, spec)
    assert result.status is RunStatus.RECOVERED, result.error
    _assert_down_until_revert(result, spec.rto.fault.duration_s)  # type: ignore[union-attr]
    first = _fails_after_injection(result)[0]
    assert first.data.get("reason") == "timeout", first
    _assert_clean(lab, wl)


def test_storage_eio_503_then_recovers_after_repair(lab: Lab, cleanup: list[str]) -> None:
    spec = _spec("storage-eio", healers=["watchdog", "eviction"], duration_s=2, deadline_s=20)
    wl = spec.rto.target.workload
    cleanup.append(wl)
    result = _run(lab, spec)
    assert result.status is RunStatus.RECOVERED, result.error
    _assert_down_until_revert(result, spec.rto.fault.duration_s)  # type: ignore[union-attr]
    first = _fails_after_injection(result)[0]
    assert first.data.get("reason") == "http 503", first
    assert result.same_instance is False  # repaired = container restarted on the new mount
    _assert_clean(lab, wl)


# --- network flap (a fault added as one module) ----------------------------------------


def test_network_flap_cuts_the_pod_off_repeatedly_then_it_stays_up(
    lab: Lab, cleanup: list[str]
) -> None:
    spec = _spec("network-flap", healers=["watchdog", "eviction"], duration_s=6, deadline_s=20)
    wl = spec.rto.target.workload
    cleanup.append(wl)
    result = _run(lab, spec)
    assert result.status is RunStatus.RECOVERED, result.error
    outages = _events(result, EventKind.PROBE_FAIL)
    assert len(outages) >= 2, [e.message for e in outages]  # a cut at 0 s and at 5 s
    assert result.rto_s is not None and 5.0 < result.rto_s < 12.0  # first cut .. last heal
    assert result.same_instance is True  # only the network went, never the pod
    assert not _events(result, EventKind.HEALER_ACTION)
    _assert_clean(lab, wl)
