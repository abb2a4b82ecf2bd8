"""The kube backend's own workloads answer the prober's contract.

The Deployment's container script and the VM's user-data script are run here
for real with the machine's busybox (the images' shells are busybox too), with
the paths and port moved into a temp dir and a free loopback port, and probed
with the harness's own ``http_probe``: ``<workload> <instance>``, a new
instance on a restart. What cannot run here is the cluster around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from chaos.prober import http_probe
from cluster.api import ProbeTarget
from cluster.kube import workloads

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answer(port: int, path: str, name: str) -> tuple[bool, str | None, str]:
    """Probe until it answers (the server is starting), at most 10 s."""
    target = ProbeTarget("127.0.0.1", port, path)
    retrying = Retrying(
        stop=stop_after_delay(10),
        wait=wait_fixed(0.1),
        retry=retry_if_result(lambda r: not r[0]),
        # Out of time: the last (failed) answer, whose reason the test shows.
        retry_error_callback=lambda state: state.outcome.result(),  # type: ignore[union-attr]
    )
    result: tuple[bool, str | None, str] = retrying(
        lambda: asyncio.run(http_probe(target, 1.0, expect_name=name))
    )
    return result


def _run(script: str, tmp: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    path = tmp / "script.sh"
    path.write_text(script)
    return subprocess.Popen(
        [str(BUSYBOX), "sh", str(path)],
        env={"PATH": str(tmp / "bin"), **env},
        start_new_session=True,  # the guest script backgrounds its loop: killpg
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A PATH of busybox applets only, as in the images."""
    d = tmp_path / "bin"
    d.mkdir()
    for applet in ("sh", "mkdir", "cat", "chmod", "printf", "httpd", "nc", "rm"):
        (d / applet).symlink_to(str(BUSYBOX))
    return d


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(5)


def _pod_script(tmp: Path, port: int, volume: str | None = None) -> str:
    body = workloads.deployment("web", {"app": "web"}, "busybox", None, volume)
    container = body["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == workloads.HEALTHZ_PATH
    script = str(container["command"][2])
    # What the container runs is the command after Kubernetes' expansion:
    # "$$" becomes "$", "$(WORKLOAD)" the variable's value. The script has
    # neither, so it runs here as it runs there.
    assert "$$" not in script and "$(WORKLOAD)" not in script
    script = script.replace(workloads.DATA_DIR, str(tmp / "data"))
    return script.replace("/www", str(tmp / "www")).replace("8080", str(port))


def test_pod_answers_name_and_a_new_instance_per_container_start(
    tmp_path: Path, bin_dir: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    port = _free_port()
    script = _pod_script(tmp_path, port)
    first = _run(script, tmp_path, {"WORKLOAD": "web"})
    procs.append(first)
    ok, inst1, why = _answer(port, workloads.HEALTHZ_PATH, "web")
    assert ok, why
    # The process crash fault kills the container's main process; the kubelet
    # runs the command again in the same pod.
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(5)
    procs.append(_run(script, tmp_path, {"WORKLOAD": "web"}))
    ok, inst2, why = _answer(port, workloads.HEALTHZ_PATH, "web")
    assert ok, why
    assert inst1 and inst2 and inst1 != inst2


def test_without_a_volume_the_pod_mounts_none_and_touches_no_storage(tmp_path: Path) -> None:
    pod = workloads.deployment("web", {"app": "web"}, "busybox", None)["spec"]["template"]
    assert "volumes" not in pod["spec"]
    assert "volumeMounts" not in pod["spec"]["containers"][0]
    assert workloads.DATA_DIR not in _pod_script(tmp_path, 1)


def test_with_a_volume_the_health_check_writes_it_and_fails_when_it_cannot(
    tmp_path: Path, bin_dir: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    body = workloads.deployment("web", {"app": "web"}, "busybox", None, "/srv/vol/web/mnt")
    pod = body["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {"name": "data", "hostPath": {"path": "/srv/vol/web/mnt", "type": "Directory"}}
    ]
    mounts = pod["containers"][0]["volumeMounts"]
    assert mounts == [{"name": "data", "mountPath": workloads.DATA_DIR}]

    port = _free_port()
    data = tmp_path / "data"
    data.mkdir()
    procs.append(
        _run(_pod_script(tmp_path, port, "/srv/vol/web/mnt"), tmp_path, {"WORKLOAD": "web"})
    )
    ok, inst, why = _answer(port, workloads.HEALTHZ_PATH, "web")
    assert ok, why
    assert list(data.iterdir()) == []  # the check cleans up after itself
    # Probes at once (the prober's, the kubelet's; all of a thawed volume's
    # hung checks) each write their own file: none sees another's rm.
    target = ProbeTarget("127.0.0.1", port, workloads.HEALTHZ_PATH)

    async def burst() -> list[tuple[bool, str | None, str]]:
        return await asyncio.gather(
            *(http_probe(target, 5.0, expect_name="web") for _ in range(20))
        )

    answers = asyncio.run(burst())
    assert all(ok for ok, _, _ in answers), answers
    # A write that fails (here: the directory is gone; on the lab, an I/O
    # error of the shut-down volume) answers 503, with the same instance.
    data.rmdir()
    ok, _, why = asyncio.run(http_probe(target, 1.0, expect_name="web"))
    assert not ok and "503" in why, why
    data.mkdir()
    ok, inst2, why = _answer(port, workloads.HEALTHZ_PATH, "web")
    assert ok and inst2 == inst, why


def test_guest_user_data_answers_name_and_boot_id_on_any_path(
    tmp_path: Path, bin_dir: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    port = _free_port()
    vm = workloads.virtual_machine("vm1", {"app": "vm1"}, "cirros", None, "LiveMigrate")
    spec = vm["spec"]["template"]["spec"]
    # Masquerade on the pod network: what live migration needs.
    assert spec["domain"]["devices"]["interfaces"] == [{"name": "default", "masquerade": {}}]
    user_data = next(v for v in spec["volumes"] if "cloudInitNoCloud" in v)
    script = str(user_data["cloudInitNoCloud"]["userData"])
    assert script.startswith("#!/bin/sh\n")  # CirrOS runs such user data
    # The watchdog/NMI half changes kernel settings: checked, never run here.
    assert script.endswith(workloads.GUEST_ARM_WATCHDOG)
    assert "unknown_nmi_panic" in script and "> /dev/watchdog" in script
    assert spec["domain"]["devices"]["watchdog"]["i6300esb"] == {"action": "reset"}
    script = script.removesuffix(workloads.GUEST_ARM_WATCHDOG)
    script = script.replace("/tmp/rto-healthz", str(tmp_path / "healthz")).replace(
        "8080", str(port)
    )
    procs.append(_run(script, tmp_path, {}))
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    for path in (workloads.HEALTHZ_PATH, "/healthz"):  # one answer per connection
        ok, inst, why = _answer(port, path, "vm1")
        assert ok, why
        assert inst == boot_id
