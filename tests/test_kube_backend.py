"""KubeBackend against the stateful API emulator (tests/kube_emulator.py).

The real ``kubernetes`` client speaks HTTP to the emulator on 127.0.0.1: every
test checks the calls the backend makes and the state they leave, including
watch handling (410 Gone, reconnect), RBAC errors and the safety rules. No real
cluster is involved here (see README, Real clusters).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_emulator import KubeEmulator, emulator, eventually, write_kubeconfig

from cluster.api import VolumeFailure, WorkloadKind
from cluster.kube.backend import OUT_OF_SERVICE, KubeBackend
from cluster.kube.config import KubeConfig, load_kube_config
from cluster.kube.watch import ResourceRef, WatchFollower
from core.errors import BackendError, SpecError

NS = "rto"
TARGET = {"rto.harness/target": "true"}


def wl(name: str) -> dict[str, str]:
    return {**TARGET, "rto.harness/workload": name}


class RecordingExec:
    def __init__(self, emu: KubeEmulator) -> None:
        self.emu, self.calls = emu, []  # type: list[tuple[str, str, str, list[str]]]

    def __call__(self, api: object, ns: str, pod: str, container: str, argv: list[str]) -> str:
        self.calls.append((ns, pod, container, argv))
        return ""


class FakePower:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def power_off(self, node: str) -> None:
        self.calls.append(("off", node))

    def power_on(self, node: str) -> None:
        self.calls.append(("on", node))


@pytest.fixture
def emu() -> Iterator[KubeEmulator]:
    with emulator() as e:
        for n in ("w1", "w2", "w3"):
            e.add_node(n, TARGET)
        cp = e.add_node("cp", {"node-role.kubernetes.io/control-plane": ""})
        cp["spec"]["taints"] = [
            {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
        ]
        e.put("", "nodes", cp)
        e.add_pod(NS, "web-a1", "w1", wl("web"), owner="web-rs")
        e.add_vmi(NS, "vm1", "w1", wl("vm1"))
        yield e


def make(emu: KubeEmulator, tmp_path: Path, **kw: object) -> KubeBackend:
    cfg_path = write_kubeconfig(
        str(tmp_path / "kubeconfig"), {"emu": emu.url, "prod": emu.url}, "emu"
    )
    cfg = KubeConfig(contexts=("emu",), kubeconfig=cfg_path, namespaces=(NS,))
    return KubeBackend(cfg, sleep=lambda s: None, echo=lambda m: None, **kw)  # type: ignore[arg-type]


def test_reads_nodes_pods_vmis_with_conditions(emu: KubeEmulator, tmp_path: Path) -> None:
    b = make(emu, tmp_path)
    assert sorted(n.name for n in b.nodes()) == ["w1", "w2", "w3"]  # cp is not a target
    assert b.node("w1").ready and b.node("w1").schedulable
    pod, vmi = b.workload("web"), b.workload("vm1")
    assert (pod.kind, pod.node, pod.phase) == (WorkloadKind.POD, "w1", "Running")
    assert vmi.kind is WorkloadKind.VMI and vmi.node == "w1"
    v = emu.objects[("kubevirt.io", "virtualmachineinstances", NS, "vm1")]
    v["status"]["conditions"].append(
        {"type": "Paused", "status": "True", "reason": "PausedIOError"}
    )
    cond = b.workload("vm1").condition("Paused")
    assert cond is not None and cond.status and cond.reason == "PausedIOError"
    # probe: pod-ip (a harness inside the cluster network): the guest's own address.
    direct = KubeBackend(b.config.model_copy(update={"probe": "pod-ip"}), sleep=lambda s: None)
    assert direct.probe_target("vm1") is not None
    assert direct.probe_target("vm1").host == "198.18.60.1"  # type: ignore[union-attr]


def test_context_allowlist_refuses_unlisted(emu: KubeEmulator, tmp_path: Path) -> None:
    cfg_path = write_kubeconfig(str(tmp_path / "kc"), {"emu": emu.url, "prod": emu.url}, "prod")
    cfg = KubeConfig(contexts=("emu",), kubeconfig=cfg_path, namespaces=(NS,))
    with pytest.raises(BackendError, match="'prod' is not in the allowlist"):
        KubeBackend(cfg, context="prod")
    assert emu.requests == [] or all("prod" not in p for _, p in emu.requests)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no config"):
        load_kube_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("contexts: []\n")
    with pytest.raises(SpecError, match="contexts"):
        load_kube_config(tmp_path / "bad.yaml")


def test_untargeted_node_refused(emu: KubeEmulator, tmp_path: Path) -> None:
    b = make(emu, tmp_path)
    with pytest.raises(BackendError, match="not a target"):
        b.cordon("cp")
    assert not emu.get("", "nodes", None, "cp")["spec"].get("unschedulable")


def test_dry_run_touches_nothing(emu: KubeEmulator, tmp_path: Path) -> None:
    b = make(emu, tmp_path, dry_run=True)
    before = emu.rv
    b.cordon("w1")
    b.fence("w1")
    b.partition_workload("web")
    b.reschedule("web")
    assert emu.rv == before
    assert not [m for m, _ in emu.requests if m != "GET"]
    assert b.plan[0] == "cordon node w1" and len(b.plan) == 4


def test_unreachable_api(tmp_path: Path) -> None:
    cfg_path = write_kubeconfig(str(tmp_path / "kc"), {"emu": "http://127.0.0.1:9"}, "emu")
    cfg = KubeConfig(contexts=("emu",), kubeconfig=cfg_path, namespaces=(NS,))
    b = KubeBackend(cfg)
    b.api.configuration.retries = 0
    with pytest.raises(BackendError, match="unreachable"):
        b.nodes()


def test_rbac_denial_names_verb_and_resource(emu: KubeEmulator, tmp_path: Path) -> None:
    emu.deny.add(("create", "pods/eviction"))
    b = make(emu, tmp_path)
    with pytest.raises(BackendError, match=r"RBAC: the harness may not 'create' 'pods/eviction'"):
        b.evict("web")


def test_missing_kubevirt(tmp_path: Path) -> None:
    with emulator(kubevirt=False) as e:
        e.add_node("w1", TARGET)
        b = make(e, tmp_path)
        with pytest.raises(BackendError, match="KubeVirt is not installed"):
            b.create_workload("vmx", WorkloadKind.VMI)
        assert b.workloads() == []


def test_cordon_drain_eviction_with_pdb(emu: KubeEmulator, tmp_path: Path) -> None:
    b = make(emu, tmp_path)
    emu.put(
        "policy",
        "poddisruptionbudgets",
        {
            "metadata": {"name": "web", "namespace": NS},
            "spec": {
                "minAvailable": 1,
                "selector": {"matchLabels": {"rto.harness/workload": "web"}},
            },
        },
    )
    with pytest.raises(BackendError, match="blocked by a PodDisruptionBudget"):
        b._evict_pod(NS, "web-a1", patience=0.2)
    assert emu.get("", "pods", NS, "web-a1") is not None
    emu.remove("policy", "poddisruptionbudgets", NS, "web")
    # A drain as the node-drain fault does it: cordon, then evict each workload.
    b.cordon("w1")
    b.evict("web")
    assert emu.get("", "nodes", None, "w1")["spec"]["unschedulable"] is True
    assert emu.get("", "pods", NS, "web-a1") is None
    assert ("POST", f"/api/v1/namespaces/{NS}/pods/web-a1/eviction") in emu.requests
    pod = eventually(lambda: b._current_pods().get("web"))
    assert pod["spec"]["nodeName"] != "w1"  # the controller put it elsewhere
    b.uncordon("w1")
    assert not emu.get("", "nodes", None, "w1")["spec"].get("unschedulable")


def test_fence_reschedule_unfence(emu: KubeEmulator, tmp_path: Path) -> None:
    b = make(emu, tmp_path)
    emu.set_node_ready("w1", False)
    b.fence("w1")
    b.fence("w1")  # idempotent
    assert emu.get("", "nodes", None, "w1")["spec"]["taints"] == [OUT_OF_SERVICE]
    assert b.node("w1").fenced and not b.node("w1").ready
    b.reschedule("web")
    b.reschedule("vm1")
    assert eventually(lambda: b.workload("web").node not in (None, "w1"))
    assert eventually(lambda: b.workload("vm1").node not in (None, "w1"))
    b.unfence("w1")
    assert not emu.get("", "nodes", None, "w1")["spec"].get("taints")


def test_network_partition_policy(emu: KubeEmulator, tmp_path: Path) -> None:
    b = make(emu, tmp_path)
    b.partition_workload("web")
    pol = emu.get("networking.k8s.io", "networkpolicies", NS, "rto-partition-web")
    assert pol["spec"]["podSelector"]["matchLabels"] == {"rto.harness/workload": "web"}
    assert pol["spec"]["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in pol["spec"]
    b.heal_workload_partition("web")
    b.heal_workload_partition("web")  # idempotent (journal replay)
    assert emu.get("networking.k8s.io", "networkpolicies", NS, "rto-partition-web") is None


def test_node_partition_and_pod_freeze_use_node_pods(emu: KubeEmulator, tmp_path: Path) -> None:
    b = make(emu, tmp_path)
    b.partition_node("w1")
    pod = emu.get("", "pods", NS, "rto-node-partition-w1")
    assert pod["spec"]["nodeName"] == "w1" and pod["spec"]["hostNetwork"]
    assert "iptables" in pod["spec"]["containers"][0]["command"][-1]
    b.heal_node_partition("w1")
    assert emu.get("", "pods", NS, "rto-node-partition-w1") is None
    b.fail_volume("web", VolumeFailure.HANG)
    assert (
        "fsfreeze -f"
        in emu.get("", "pods", NS, "rto-node-freeze-w1")["spec"]["containers"][0]["command"][-1]
    )
    b.repair_volume("web", VolumeFailure.HANG)
    assert emu.get("", "pods", NS, "rto-node-thaw-w1") is not None


def test_vmi_volume_unplug_and_replug(emu: KubeEmulator, tmp_path: Path) -> None:
    b = make(emu, tmp_path)
    b.fail_volume("vm1", VolumeFailure.EIO)
    vmi = emu.get("kubevirt.io", "virtualmachineinstances", NS, "vm1")
    assert vmi["spec"]["volumes"] == []
    assert (
        "PUT",
        f"/apis/subresources.kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances/vm1/removevolume",
    ) in emu.requests
    b.repair_volume("vm1", VolumeFailure.EIO)  # from the VM template alone (journal replay)
    vmi = emu.get("kubevirt.io", "virtualmachineinstances", NS, "vm1")
    assert [v["name"] for v in vmi["spec"]["volumes"]] == ["data"]


def test_live_migration_follows_phases(emu: KubeEmulator, tmp_path: Path) -> None:
    b = make(emu, tmp_path)
    b.cordon("w1")
    name = b.start_migration("vm1")  # as migrate() starts it
    assert name is not None
    assert b.wait_migration(name, timeout=10) == "Succeeded"
    assert b.workload("vm1").node in ("w2", "w3")
    figures = b.migrate("vm1")  # the Backend contract: start and wait
    assert figures["source"] in ("w2", "w3") and figures["target"] != figures["source"]


def test_kill_through_exec(emu: KubeEmulator, tmp_path: Path) -> None:
    ex = RecordingExec(emu)
    b = make(emu, tmp_path, executor=ex)
    b.kill_main_process("vm1")
    b.hang_guest("vm1")
    assert ex.calls[0][1].startswith("virt-launcher-vm1-") and ex.calls[0][2] == "compute"
    assert "qemu" in ex.calls[0][3][-1]
    assert ex.calls[1][3] == ["virsh", "inject-nmi", f"{NS}_vm1"]


def test_pod_kill_is_a_node_pod_that_is_removed_when_done(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    """A pod's pid 1 is killed from the node's PID namespace (not by exec: the
    kernel drops a SIGKILL to a namespace's init sent from inside it); the
    emulator stands in for the kubelet by finishing the node pod."""
    b = make(emu, tmp_path)
    web = emu.objects[("", "pods", NS, "web-a1")]
    cid = web["status"]["containerStatuses"][0]["containerID"].rpartition("://")[2]
    node = web["spec"]["nodeName"]
    key = ("", "pods", NS, f"rto-node-kill-{node}")
    t = threading.Thread(target=b.kill_main_process, args=("web",))
    t.start()
    assert eventually(lambda: key in emu.objects)
    spec = emu.objects[key]["spec"]
    assert spec["hostPID"] and spec["nodeName"] == node
    script = spec["containers"][0]["command"][-1]
    assert cid in script and "NSpid" in script and "kill -9" in script
    emu.objects[key].setdefault("status", {})["phase"] = "Succeeded"
    t.join(10)
    assert not t.is_alive() and key not in emu.objects


def test_power_driver_and_watchdog_checks(emu: KubeEmulator, tmp_path: Path) -> None:
    power = FakePower()
    b = make(emu, tmp_path, power=power)
    b.power_off("w2")
    b.power_on("w2")
    assert power.calls == [("off", "w2"), ("on", "w2")]
    # The VMs the harness creates carry the watchdog device the watchdog healer needs.
    b.create_workload("wd", WorkloadKind.VMI)
    vm = emu.get("kubevirt.io", "virtualmachines", NS, "wd")
    assert "watchdog" in vm["spec"]["template"]["spec"]["domain"]["devices"]
    v = emu.objects[("kubevirt.io", "virtualmachineinstances", NS, "vm1")]
    v["status"]["conditions"].append(
        {"type": "Paused", "status": "True", "reason": "PausedIOError"}
    )
    b.resume_workload("vm1")  # as the watchdog healer resumes a VMI paused on I/O
    unpause = (
        f"/apis/subresources.kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances/vm1/unpause"
    )
    assert ("PUT", unpause) in emu.requests


def test_events_from_watches(emu: KubeEmulator, tmp_path: Path) -> None:
    b = make(emu, tmp_path)
    try:
        assert eventually(lambda: any(e.source == "vmi" for e in b.events(0.0)))
        t0 = max(e.at for e in b.events(0.0))
        emu.set_node_ready("w2", False)
        v = emu.objects[("kubevirt.io", "virtualmachineinstances", NS, "vm1")]
        v["status"]["conditions"] = [
            {"type": "Paused", "status": "True", "reason": "PausedIOError"}
        ]
        emu.put("kubevirt.io", "virtualmachineinstances", v)
        got = eventually(
            lambda: (
                {(e.source, e.reason) for e in b.events(t0)}
                >= {("node", "NodeNotReady"), ("vmi", "PausedIOError")}
            )
        )
        assert got
    finally:
        b.close()


def test_watch_relists_on_410_and_reconnects(emu: KubeEmulator, tmp_path: Path) -> None:
    b = make(emu, tmp_path)
    seen: list[tuple[str, str]] = []
    f = WatchFollower(
        b.api,
        ResourceRef("", "v1", "pods", NS),
        lambda t, o: seen.append((t, o["metadata"]["name"])),
        sleep=lambda s: None,
    )
    f.relist()
    assert ("ADDED", "web-a1") in seen
    emu.add_pod(NS, "p2", "w2", wl("p2"))
    emu.compact()  # the version the follower holds is now too old
    emu.remove("", "pods", NS, "web-a1")
    f.step()  # watch answers 410 -> forget the version
    assert f.stats["relists_410"] == 1 and f.resource_version is None
    seen.clear()
    f.relist()  # a re-list reports the gap: p2 added, web-a1 gone
    assert ("ADDED", "p2") in seen and ("DELETED", "web-a1") in seen
    # reconnect: the server drops the stream, the follower resumes from its version
    f.start()
    try:
        eventually(lambda: emu.open_watches() == 1)
        emu.drop_watches()
        eventually(lambda: f.stats["streams"] >= 2)
        emu.add_pod(NS, "p3", "w3", wl("p3"))
        assert eventually(lambda: ("ADDED", "p3") in seen)
        assert f.stats["relists_410"] == 1
    finally:
        f.stop()


def test_watch_backs_off_when_server_gone(tmp_path: Path) -> None:
    cfg_path = write_kubeconfig(str(tmp_path / "kc"), {"emu": "http://127.0.0.1:9"}, "emu")
    cfg = KubeConfig(contexts=("emu",), kubeconfig=cfg_path, namespaces=(NS,))
    b = KubeBackend(cfg)
    b.api.configuration.retries = 0
    sleeps: list[float] = []
    f = WatchFollower(b.api, ResourceRef("", "v1", "nodes"), lambda t, o: None, sleep=sleeps.append)
    f._retrying.stop = lambda state: state.attempt_number >= 4  # type: ignore[assignment]
    with pytest.raises(Exception):  # noqa: B017
        f._retrying(f.step)
    assert len(sleeps) == 3 and sleeps == sorted(sleeps) and f.stats["reconnects"] == 3
