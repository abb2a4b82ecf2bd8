"""Benchmark: the kube recorder following 1,000 pods and 200 VMIs through watches.

Fills benchmarks/results/kube_watch.json; read by the README's figures. Against
the stateful API emulator (tests/kube_emulator.py) on 127.0.0.1, with the real
``kubernetes`` client: list + watch followers for pods and VMIs feed the
timeline while the emulator replays status changes (phases, restarts, VMI
conditions). Measures events processed per second by the follower + timeline
(one thread each, the server in the same process competing for the same cores)
and the process's peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from kube_emulator import emulator, write_kubeconfig  # type: ignore[import-not-found]

from cluster.kube.backend import KubeBackend
from cluster.kube.config import KubeConfig

PODS, VMIS, ROUNDS = 1000, 200, 8
TARGET = {"rto.harness/target": "true"}


def _thread_cpu(f: object) -> float:
    """utime + stime of one follower thread (its own parsing and timeline work)."""
    tid = f._thread.native_id  # type: ignore[attr-defined]
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    with emulator() as emu:
        for n in ("w1", "w2", "w3"):
            emu.add_node(n, TARGET)
        for i in range(PODS):
            emu.add_pod(
                "rto", f"p{i}", f"w{i % 3 + 1}", {**TARGET, "rto.harness/workload": f"p{i}"}
            )
        for i in range(VMIS):
            emu.add_vmi(
                "rto", f"v{i}", f"w{i % 3 + 1}", {**TARGET, "rto.harness/workload": f"v{i}"}
            )
        kc = write_kubeconfig("/tmp/rto-bench-kubeconfig", {"emu": emu.url}, "emu")
        b = KubeBackend(KubeConfig(contexts=("emu",), kubeconfig=kc, namespaces=("rto",)))
        b.start_watches()
        tl = b.timeline
        t_list = time.perf_counter()
        while tl.processed < PODS + VMIS + 3:  # initial lists
            time.sleep(0.01)
        list_s = time.perf_counter() - t_list
        base = tl.processed
        pods = [
            o
            for k, o in list(emu.objects.items())
            if k[1] == "pods" and "rto.harness/target" in o["metadata"]["labels"]
        ]
        vmis = [emu.objects[k] for k in list(emu.objects) if k[1] == "virtualmachineinstances"]
        expected = 0
        cpu0, t0 = time.process_time(), time.perf_counter()
        follower_cpu0 = sum(_thread_cpu(f) for f in b.followers)
        for r in range(ROUNDS):
            for p in pods:
                p["status"]["containerStatuses"][0]["restartCount"] = r + 1
                emu.put("", "pods", p)
            for v in vmis:
                v["status"]["conditions"] = [
                    {"type": "Paused", "status": str(r % 2 == 0), "reason": "PausedIOError"}
                ]
                emu.put("kubevirt.io", "virtualmachineinstances", v)
            expected += len(pods) + len(vmis)
        while tl.processed - base < expected:
            time.sleep(0.005)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        follower_cpu = sum(_thread_cpu(f) for f in b.followers) - follower_cpu0
        b.close()
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "pods": PODS,
        "vmis": VMIS,
        "events": expected,
        "initial_list_s": round(list_s, 3),
        "wall_s": round(wall, 3),
        "events_per_s_wall": round(expected / wall),
        "process_cpu_s": round(cpu, 3),
        "events_per_cpu_s_incl_server": round(expected / cpu),
        "follower_threads_cpu_s": round(follower_cpu, 3),
        "events_per_follower_cpu_s": round(expected / follower_cpu) if follower_cpu else None,
        "peak_rss_mib": round(rss_mib, 1),
        "timeline_events": len(list(tl.since(0.0))),
        "note": "emulator server runs in the same process: CPU figures include serving",
    }
    Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
    Path("benchmarks/results/kube_watch.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
