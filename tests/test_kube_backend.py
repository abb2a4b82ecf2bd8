"""KubeBackend where no API server is needed, and where only the emulator will do.

Everything a real kube-apiserver can answer is tested against one in
tests/test_kube_real_apiserver.py (pods, nodes, RBAC, eviction with a PDB,
fencing, NetworkPolicies, node pods, watches with 410 Gone and an outage, the
service proxy) and tests/test_kube_real_kubevirt.py (VMIs, VMs and migrations
on KubeVirt's CRDs). Left here:

- no API server at all: the kube config file's errors, an unreachable API;
- on the API emulator (tests/kube_emulator.py), what that real control plane
  cannot serve, because it runs neither virt-api nor a kubelet:
  ``removevolume``/``addvolume`` and ``unpause``, subresources.kubevirt.io that
  only virt-api serves (CRDs answer 404, see the last test of
  test_kube_real_kubevirt.py), and ``pods/exec`` into the virt-launcher pod
  (the API server hands exec to the node's kubelet; here an injected executor
  records the call instead).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_emulator import KubeEmulator, emulator, write_kubeconfig

from cluster.api import VolumeFailure
from cluster.kube.backend import KubeBackend
from cluster.kube.config import KubeConfig, load_kube_config
from core.errors import BackendError, SpecError

NS = "rto"
TARGET = {"rto.harness/target": "true"}
SUBRESOURCES = f"/apis/subresources.kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances"


def wl(name: str) -> dict[str, str]:
    return {**TARGET, "rto.harness/workload": name}


class RecordingExec:
    """Stands in for ``kube_exec``: records (namespace, pod, container, argv)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, list[str]]] = []

    def __call__(self, api: object, ns: str, pod: str, container: str, argv: list[str]) -> str:
        self.calls.append((ns, pod, container, argv))
        return ""


@pytest.fixture
def emu() -> Iterator[KubeEmulator]:
    with emulator() as e:
        e.add_node("w1", TARGET)
        e.add_vmi(NS, "vm1", "w1", wl("vm1"))
        yield e


def make(emu: KubeEmulator, tmp_path: Path, **kw: object) -> KubeBackend:
    cfg_path = write_kubeconfig(str(tmp_path / "kubeconfig"), {"emu": emu.url}, "emu")
    cfg = KubeConfig(contexts=("emu",), kubeconfig=cfg_path, namespaces=(NS,))
    return KubeBackend(cfg, sleep=lambda s: None, echo=lambda m: None, **kw)  # type: ignore[arg-type]


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no config"):
        load_kube_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("contexts: []\n")
    with pytest.raises(SpecError, match="contexts"):
        load_kube_config(tmp_path / "bad.yaml")


def test_unreachable_api(tmp_path: Path) -> None:
    cfg_path = write_kubeconfig(str(tmp_path / "kc"), {"emu": "http://127.0.0.1:9"}, "emu")
    cfg = KubeConfig(contexts=("emu",), kubeconfig=cfg_path, namespaces=(NS,))
    b = KubeBackend(cfg)
    b.api.configuration.retries = 0
    with pytest.raises(BackendError, match="unreachable"):
        b.nodes()


def test_vmi_volume_unplug_and_replug(emu: KubeEmulator, tmp_path: Path) -> None:
    b = make(emu, tmp_path)
    b.fail_volume("vm1", VolumeFailure.EIO)
    vmi = emu.get("kubevirt.io", "virtualmachineinstances", NS, "vm1")
    assert vmi is not None and vmi["spec"]["volumes"] == []
    assert ("PUT", f"{SUBRESOURCES}/vm1/removevolume") in emu.requests
    b.repair_volume("vm1", VolumeFailure.EIO)  # from the VM template alone (journal replay)
    vmi = emu.get("kubevirt.io", "virtualmachineinstances", NS, "vm1")
    assert vmi is not None and [v["name"] for v in vmi["spec"]["volumes"]] == ["data"]
    assert ("PUT", f"{SUBRESOURCES}/vm1/addvolume") in emu.requests


def test_resume_paused_vmi_through_unpause(emu: KubeEmulator, tmp_path: Path) -> None:
    """As the watchdog healer resumes a VMI that QEMU paused on an I/O error."""
    b = make(emu, tmp_path)
    v = emu.objects[("kubevirt.io", "virtualmachineinstances", NS, "vm1")]
    v["status"]["conditions"].append(
        {"type": "Paused", "status": "True", "reason": "PausedIOError"}
    )
    b.resume_workload("vm1")
    assert ("PUT", f"{SUBRESOURCES}/vm1/unpause") in emu.requests


def test_kill_through_exec(emu: KubeEmulator, tmp_path: Path) -> None:
    ex = RecordingExec()
    b = make(emu, tmp_path, executor=ex)
    b.kill_main_process("vm1")
    b.hang_guest("vm1")
    assert ex.calls[0][1].startswith("virt-launcher-vm1-") and ex.calls[0][2] == "compute"
    assert "qemu" in ex.calls[0][3][-1]
    assert ex.calls[1][3] == ["virsh", "inject-nmi", f"{NS}_vm1"]
