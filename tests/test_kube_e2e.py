"""End-to-end tests of the kube backend on a real cluster (opt-in: ``--with-e2e``).

Run by ``nox -s kind`` against the kind cluster of kind-config.yaml with KubeVirt
(config: ``$RTO_KUBE_CONFIG``, experiments/kube/kind.yaml). Never run here or by CI:
these machines have no Docker host and no internet access. Without the option
every test is skipped with that reason.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from cluster.api import WorkloadKind
from cluster.kube.backend import KubeBackend
from cluster.kube.config import load_kube_config


@pytest.fixture
def kube(request: pytest.FixtureRequest) -> Iterator[KubeBackend]:
    if not request.config.getoption("--with-e2e", default=False):
        pytest.skip("real-cluster e2e: pass --with-e2e (nox -s kind)")
    b = KubeBackend(load_kube_config())
    try:
        yield b
    finally:
        for name in ("e2e-pod", "e2e-vm"):
            b.delete_workload(name)
        b.close()


def until(check, timeout: float = 300):  # type: ignore[no-untyped-def]
    return Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(2),
                    retry=retry_if_result(lambda v: not v), reraise=True)(check)  # fmt: skip


def test_pod_crash_restarts(kube: KubeBackend) -> None:
    kube.create_workload("e2e-pod", WorkloadKind.POD)
    until(lambda: kube.workload("e2e-pod").condition("Ready").status)  # type: ignore[union-attr]
    before = kube.workload("e2e-pod").restarts
    kube.kill_main_process("e2e-pod")
    until(lambda: kube.workload("e2e-pod").restarts > before)


def test_cordon_fence_roundtrip(kube: KubeBackend) -> None:
    node = kube.nodes()[0].name
    try:
        kube.cordon(node)
        kube.fence(node)
        assert kube.node(node).fenced and not kube.node(node).schedulable
    finally:
        kube.unfence(node)
        kube.uncordon(node)


def test_vmi_live_migration(kube: KubeBackend) -> None:
    kube.create_workload("e2e-vm", WorkloadKind.VMI)
    until(lambda: kube.workload("e2e-vm").phase == "Running", timeout=900)
    figures = kube.migrate("e2e-vm")
    assert figures["target"] and figures["target"] != figures["source"]
