"""Benchmark: the two ways the kube backend probes a pod, side by side on the real lab.

Fills benchmarks/results/probe_path.json. On the embedded lab with its real
cluster (2 nodes, ``fast``), one pod workload made by the lab's backend is
probed the way the recorder probes it (``chaos.prober.http_probe``, 50 probes
a second, each with the 250 ms timeout), in alternating blocks:

- ``pod-ip``: straight to the pod IP from the lab's hub netns (what the lab's
  kube config says since the service-proxy probes loaded its control plane);
- ``service-proxy``: HTTPS through the API server's service proxy to the
  workload's Service (the kube backend's default, for a harness outside the
  cluster network).

Per path: latency p50/p95/p99/max of the answered probes, failures (timeouts
and errors) and the API server's CPU seconds per second of probing (its
utime+stime from /proc), which is the load a path puts on the control plane
the harness measures. Blocks alternate so both paths see the same machine.
Brings the default lab up and takes it down: do not run it with a lab you use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chaos.netns import enter_netns  # noqa: E402
from chaos.prober import http_probe  # noqa: E402
from cluster.api import ProbeTarget, WorkloadKind  # noqa: E402
from cluster.kube.backend import KubeBackend  # noqa: E402
from cluster.lab.kube import hub  # noqa: E402
from cluster.lab.lifecycle import lab_down, lab_up  # noqa: E402
from cluster.lab_cluster import LabClusterBackend, LabClusterProvider  # noqa: E402
from core.errors import BackendError  # noqa: E402
from core.wait import poll_until  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "probe_path.json"
POD = "bench-probe"
INTERVAL, TIMEOUT = 0.02, 0.25


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _block(target: ProbeTarget, seconds: float) -> list[tuple[bool, float]]:
    """Probes every INTERVAL for ``seconds``, overlapping as the recorder's do."""
    out: list[tuple[bool, float]] = []

    async def one() -> None:
        t0 = time.perf_counter()
        good, _, _ = await http_probe(target, TIMEOUT, expect_name=POD)
        out.append((good, time.perf_counter() - t0))

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < seconds:
        tasks.append(asyncio.create_task(one()))
        n += 1
        await asyncio.sleep(max(0.0, start + n * INTERVAL - time.perf_counter()))
    await asyncio.gather(*tasks)
    return out


def _run_block(target: ProbeTarget, seconds: float) -> list[tuple[bool, float]]:
    """One block in a thread of its own (it enters the target's netns, if any)."""
    result: list[list[tuple[bool, float]]] = []

    def body() -> None:
        if target.netns is not None:
            enter_netns(target.netns)
        result.append(asyncio.run(_block(target, seconds)))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return result[0]


def _summary(samples: list[tuple[bool, float]], cpu_s: float, seconds: float) -> dict[str, object]:
    ok = sorted(lat for good, lat in samples if good)
    q = statistics.quantiles(ok, n=100) if len(ok) >= 2 else [float("nan")] * 99
    return {
        "probes": len(samples),
        "failed": sum(1 for good, _ in samples if not good),
        "latency_ms": {
            "p50": round(q[49] * 1000, 2),
            "p95": round(q[94] * 1000, 2),
            "p99": round(q[98] * 1000, 2),
            "max": round(max(ok) * 1000, 2) if ok else None,
        },
        "apiserver_cpu_s_per_s": round(cpu_s / seconds, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--blocks", type=int, default=6, help="blocks per path")
    ap.add_argument("--block-s", type=float, default=10.0)
    args = ap.parse_args()

    lab_down()
    lab_up("fast", 2)
    backend = LabClusterProvider().backend()
    assert isinstance(backend, LabClusterBackend)
    proxied: KubeBackend | None = None
    try:
        backend.create_workload(POD, WorkloadKind.POD, "node1")
        if backend.wait_ready(POD, 120) is None:
            raise BackendError(f"{POD} was not Ready within 120 s")
        direct = poll_until(lambda: backend.probe_target(POD), 30, f"a pod IP for {POD}")
        proxied = KubeBackend(
            backend.kube.client.config.model_copy(update={"probe": "service-proxy"})
        )
        via_api = proxied.probe_target(POD)
        assert direct is not None and via_api is not None
        api_pid = hub.component_pid("kube-apiserver")
        assert api_pid is not None, "the lab's kube-apiserver is not running"
        paths = {"pod-ip": direct, "service-proxy": via_api}
        samples: dict[str, list[tuple[bool, float]]] = {p: [] for p in paths}
        cpu: dict[str, float] = dict.fromkeys(paths, 0.0)
        for _ in range(args.blocks):
            for name, target in paths.items():  # alternating: the same machine for both
                c0 = _cpu_s(api_pid)
                samples[name] += _run_block(target, args.block_s)
                cpu[name] += _cpu_s(api_pid) - c0
        total_s = args.blocks * args.block_s
        result = {
            "what": "pod probes on the lab's real cluster: pod IP from the hub vs the API "
            "server's service proxy, 50/s each with a 250 ms timeout, alternating blocks",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cores": os.cpu_count(),
            "blocks": args.blocks,
            "block_s": args.block_s,
            "paths": {n: _summary(samples[n], cpu[n], total_s) for n in paths},
        }
        summaries = {n: _summary(samples[n], cpu[n], total_s) for n in paths}
        p50 = {n: summaries[n]["latency_ms"]["p50"] for n in paths}  # type: ignore[index]
        result["p50_ratio_service_proxy_to_pod_ip"] = round(p50["service-proxy"] / p50["pod-ip"], 1)
        OUT.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        if proxied is not None:
            proxied.close()
        try:
            backend.delete_workload(POD)
        finally:
            backend.close()
            lab_down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
