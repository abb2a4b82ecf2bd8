"""VMIs as kubevirt.io/v1 objects on the lab's real cluster: ``lab_up(vms=True)``.

A private 2-node lab on ``fast`` with the real cluster and VMs, whose VMIs are
VirtualMachines of the lab's API server (KubeVirt's own CRDs), reconciled by
the lab's virt-controller (hub) and virt-handlers (one per node,
``cluster.lab.kube.virt_controller``, ``virt_handler``). The harness drives
them through ``LabClusterBackend``, whose VMI calls now go to the kube
backend: a VirtualMachine is created, its virt-launcher pod is placed by the
real scheduler and run by the real kubelet, the guest boots under the node's
libvirtd, and its status (phase, node, Ready, the guest address) is read back
from the API server. A SIGKILL of its QEMU makes a new VMI (KubeVirt does not
restart in place); a VirtualMachineInstanceMigration live-migrates it; a
powered-off node's VMI comes back elsewhere once the eviction healer fences
the node (the real out-of-service taint lets the pod GC delete the launcher).
"""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from lab_node_kit import in_netns
from private_lab import PrivateLab

from cluster.api import Phase, VolumeFailure, WorkloadKind
from cluster.kube.watch import raw_request
from cluster.lab import lifecycle, net, vmi_faults
from cluster.lab.kube import cluster as kube_cluster
from cluster.lab.kube import hub
from cluster.lab.kube.pki import Pki, kubeconfig, make_cert
from cluster.lab_cluster import LabClusterBackend
from core.errors import BackendError
from core.wait import poll_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB = PrivateLab("kvirt", "rtokv", "kvn")
KV = ("kubevirt.io", "v1")


@pytest.fixture(scope="module")
def backend() -> Iterator[LabClusterBackend]:
    with LAB.up(2, profile="fast", vms=True) as b:
        try:
            yield b
        finally:
            for w in b.workloads():
                b.delete_workload(w.name)


def _get(path: str, host: str, port: int) -> int:
    def call() -> int:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=2) as resp:
            return int(resp.status)

    return in_netns(net.HUB_NS, call)


def _answers(b: LabClusterBackend, name: str) -> bool:
    target = b.probe_target(name)
    if target is None:
        return False
    try:
        return _get(target.path, target.host, target.port) == 200
    except OSError:
        return False


def _vmi_obj(name: str) -> dict[str, object]:
    api = kube_cluster.api_client()
    try:
        got: dict[str, object] = k8s.CustomObjectsApi(api).get_namespaced_custom_object(
            *KV, kube_cluster.NAMESPACE, "virtualmachineinstances", name
        )
        return got
    finally:
        api.close()  # type: ignore[no-untyped-call]


def _launchers(name: str) -> list[k8s.V1Pod]:
    api = kube_cluster.api_client()
    try:
        return list(
            k8s.CoreV1Api(api)
            .list_namespaced_pod(
                kube_cluster.NAMESPACE,
                label_selector=f"kubevirt.io=virt-launcher,vm.kubevirt.io/name={name}",
            )
            .items
        )
    finally:
        api.close()  # type: ignore[no-untyped-call]


def _up(b: LabClusterBackend, name: str, timeout: float = 180) -> None:
    """Ready in the API (the handler saw the guest's ready line) and answering."""
    assert b.wait_ready(name, timeout) is not None, f"VMI {name} not Ready in {timeout} s"
    poll_until(lambda: _answers(b, name), timeout, f"VMI {name} answering", interval=0.5)


def test_a_vm_runs_as_a_kubevirt_vmi_on_a_real_launcher_pod(backend: LabClusterBackend) -> None:
    b = backend
    t0 = time.monotonic()
    b.create_workload("kv-a", WorkloadKind.VMI, LAB.node(1))
    _up(b, "kv-a")
    print(f"\nFIGURE kubevirt VM created -> guest answering: {time.monotonic() - t0:.2f} s")
    st = b.workload("kv-a")
    assert st.kind is WorkloadKind.VMI and st.phase is Phase.RUNNING
    assert st.node == LAB.node(1)
    ready = st.condition("Ready")
    assert ready is not None and ready.status
    vmi = _vmi_obj("kv-a")
    assert vmi["status"]["nodeName"] == LAB.node(1)  # type: ignore[index]
    pods = [p for p in _launchers("kv-a") if p.status.phase == "Running"]
    assert [p.spec.node_name for p in pods] == [LAB.node(1)]
    assert b.platform_version(WorkloadKind.VMI).startswith("Kubernetes v1.34")  # type: ignore[union-attr]
    virt = lifecycle.lab_status()["kubevirt"]
    assert (len(virt["virt-controller"]), len(virt["virt-handler"])) == (1, 2), virt


def test_a_vmi_s_qemu_is_measured_and_its_console_followed(backend: LabClusterBackend) -> None:
    """What the lab reads of a VMI besides the API: its QEMU's counters (guest
    vCPU apart from QEMU's own work, guest memory apart from QEMU's overhead)
    and the serial console the guest prints its boots on."""
    b = backend
    _up(b, "kv-a")
    first = b.metrics("kv-a")
    assert first is not None and first.kind == "vmi"
    for _ in range(3):
        _answers(b, "kv-a")
    s = b.metrics("kv-a")
    assert s is not None
    print(
        f"\nFIGURE vmi: vCPU {s.cpu_s:.2f} s, QEMU {s.host_cpu_s:.2f} s, guest mem "
        f"{s.mem_bytes >> 20} MiB, QEMU overhead {s.overhead_bytes >> 20} MiB, "
        f"disk wr {s.disk_wr_ops} ops, net rx {s.net_rx_packets} pkts"
    )
    assert 0 < s.cpu_s < s.host_cpu_s  # QEMU pays for the vCPU and for emulation
    assert s.overhead_bytes > 0 and s.mem_bytes > 0
    assert s.net_rx_packets > first.net_rx_packets
    assert s.disk_wr_ops > first.disk_wr_ops  # healthz fsyncs a record per probe
    console = b.log_path("kv-a")
    assert console == LAB.state_dir / "logs" / "vmi" / "kv-a.console.log"
    assert "RTO-GUEST-READY" in console.read_text(errors="replace")


def test_a_killed_qemu_makes_a_new_vmi(backend: LabClusterBackend) -> None:
    b = backend
    _up(b, "kv-a")
    before = b.workload("kv-a").instance
    t0 = time.monotonic()
    b.kill_main_process("kv-a")
    poll_until(lambda: b.workload("kv-a").instance != before, 60, "a new VMI", interval=0.2)
    _up(b, "kv-a")
    print(f"\nFIGURE kubevirt QEMU killed -> new VMI answering: {time.monotonic() - t0:.2f} s")
    assert b.workload("kv-a").phase is Phase.RUNNING


def test_a_live_migration_moves_the_vmi(backend: LabClusterBackend) -> None:
    b = backend
    _up(b, "kv-a")
    src = b.workload("kv-a").node
    figures = b.migrate("kv-a")
    assert figures["source"] == src and figures["target"] not in ("", src), figures
    st = b.workload("kv-a")
    assert st.node == figures["target"] and st.phase is Phase.RUNNING
    assert _answers(b, "kv-a")
    poll_until(
        lambda: (
            [p.spec.node_name for p in _launchers("kv-a") if not p.metadata.deletion_timestamp]
            == [figures["target"]]
        ),
        30,
        "only the target's launcher pod left",
    )
    print(f"\nFIGURE kubevirt migration total {figures['total_ms']} ms (from migrationState)")


def test_a_second_migration_in_flight_is_refused_by_the_webhook(
    backend: LabClusterBackend,
) -> None:
    b = backend
    _up(b, "kv-a")
    first = b.kube.start_migration("kv-a")
    assert first is not None
    with pytest.raises(BackendError, match="in-flight migration"):
        b.kube.start_migration("kv-a")
    assert b.kube.wait_migration(first, timeout=60) == "Succeeded"


def test_a_drain_s_eviction_becomes_a_live_migration(backend: LabClusterBackend) -> None:
    """KubeVirt's eviction webhook: 429 and an evacuation, then the pod is gone."""
    b = backend
    _up(b, "kv-a")
    before = b.workload("kv-a")
    assert before.node is not None
    b.cordon(before.node)
    try:
        t0 = time.monotonic()
        b.evict("kv-a")  # returns once the launcher pod is gone: the VMI moved
        print(f"\nFIGURE kubevirt eviction -> evacuated: {time.monotonic() - t0:.2f} s")
        after = b.workload("kv-a")
        assert after.node not in (None, before.node)
        assert after.instance == before.instance  # the same VMI, migrated, not a new one
        assert _answers(b, "kv-a")
        poll_until(
            lambda: not (_vmi_obj("kv-a").get("status") or {}).get("evacuationNodeName"),  # type: ignore[attr-defined]
            10,
            "evacuationNodeName cleared",
        )
    finally:
        b.uncordon(before.node)


def test_pause_and_unpause_through_the_aggregated_virt_api(backend: LabClusterBackend) -> None:
    """cluster/kube's subresource calls reach the lab's virt-api through the real aggregator."""
    b = backend
    _up(b, "kv-a")
    b.kube.client.sub(kube_cluster.NAMESPACE, "kv-a", "pause")

    def paused() -> bool:
        c = b.workload("kv-a").condition("Paused")
        return c is not None and c.status

    poll_until(paused, 30, "the Paused condition", interval=0.2)
    assert not _answers(b, "kv-a")
    b.resume_workload("kv-a")  # sees Paused: the unpause subresource
    poll_until(lambda: not paused() and _answers(b, "kv-a"), 30, "unpaused", interval=0.2)
    # A volume the VMI does not declare: 422, as KubeVirt answers.
    with pytest.raises(BackendError, match="422"):
        b.kube.client.sub(kube_cluster.NAMESPACE, "kv-a", "removevolume", {"name": "nosuch"})


def test_the_data_disk_is_unplugged_and_plugged_back_through_virt_api(
    backend: LabClusterBackend,
) -> None:
    """The VM's hotpluggable data volume: a claim bound (by the real PV
    controller) to the PersistentVolume on the VMI's lab volume; removevolume
    detaches the disk from the live guest and takes it out of the VMI's spec,
    addvolume (the repair, replayed twice as a journal may) puts it back."""
    b = backend
    _up(b, "kv-a")
    api = kube_cluster.api_client()
    core = k8s.CoreV1Api(api)
    try:

        def bound() -> bool:
            pvc = core.read_namespaced_persistent_volume_claim("kv-a-data", kube_cluster.NAMESPACE)
            return pvc.status.phase == "Bound" and pvc.spec.volume_name == "rto-lab-kv-a-data"

        poll_until(bound, 30, "the data claim Bound to the lab's volume", interval=0.5)
    finally:
        api.close()  # type: ignore[no-untyped-call]
    node = b.workload("kv-a").node
    assert node is not None and vmi_faults.has_data_disk(node, "kv-a")

    def spec_volumes() -> set[str]:
        return {v["name"] for v in _vmi_obj("kv-a")["spec"]["volumes"]}  # type: ignore[index]

    b.fail_volume("kv-a", VolumeFailure.UNPLUG)
    assert not vmi_faults.has_data_disk(node, "kv-a")
    assert "data" not in spec_volumes()
    b.repair_volume("kv-a", VolumeFailure.UNPLUG)
    b.repair_volume("kv-a", VolumeFailure.UNPLUG)  # a replayed revert: nothing more
    assert vmi_faults.has_data_disk(node, "kv-a")
    assert "data" in spec_volumes()
    assert sorted(spec_volumes()) == ["cloudinit", "data", "root"]
    with pytest.raises(BackendError, match=r"422.*not hotpluggable"):
        b.kube.client.sub(kube_cluster.NAMESPACE, "kv-a", "removevolume", {"name": "root"})
    poll_until(lambda: _answers(b, "kv-a"), 30, "kv-a answering", interval=0.5)


def test_virt_api_authorizes_the_user_with_rbac(backend: LabClusterBackend, tmp_path: Path) -> None:
    """A user the API server authenticates but RBAC grants nothing: 403 from virt-api."""
    pki = Pki(tmp_path)
    shutil.copy(Pki.default().ca, pki.ca)
    shutil.copy(Pki.default().dir / "ca.key", pki.dir / "ca.key")
    make_cert(pki.dir, "nobody", "/CN=rto-kv-nobody")
    kubeconfig(tmp_path / "kc", hub.api_server_url(), pki.ca, pki.crt("nobody"),
               pki.key("nobody"), "rto-kv-nobody")  # fmt: skip
    api = k8s_config.new_client_from_config(config_file=str(tmp_path / "kc"))  # type: ignore[no-untyped-call]
    try:
        path = (f"/apis/subresources.kubevirt.io/v1/namespaces/{kube_cluster.NAMESPACE}"
                "/virtualmachineinstances/kv-a/pause")  # fmt: skip
        with pytest.raises(ApiException) as err:
            raw_request(api, "PUT", path, body={})
        assert err.value.status == 403
        assert "rto-kv-nobody" in str(err.value.body)
    finally:
        api.close()
    assert _answers(backend, "kv-a")  # refused before it touched the guest


def test_a_powered_off_node_s_vmi_comes_back_after_the_fence(backend: LabClusterBackend) -> None:
    b = backend
    _up(b, "kv-a")
    node = b.workload("kv-a").node
    assert node is not None
    t0 = time.monotonic()
    b.power_off(node)
    try:
        poll_until(lambda: not b.node(node).ready, 60, f"{node} NotReady", interval=0.5)
        b.fence(node)
        poll_until(lambda: b.workload("kv-a").node not in (None, node), 120,
                   "the VMI on the other node", interval=0.5)  # fmt: skip
        _up(b, "kv-a")
        print(f"\nFIGURE kubevirt power-off -> fenced -> answering elsewhere: "
              f"{time.monotonic() - t0:.2f} s")  # fmt: skip
    finally:
        b.unfence(node)
        b.power_on(node)
        poll_until(lambda: b.node(node).ready, 120, f"{node} Ready again", interval=0.5)
