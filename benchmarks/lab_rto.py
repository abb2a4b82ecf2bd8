"""Benchmark: pod RTO figures on the real lab, written to benchmarks/results/lab_rto.json.

Measures, on this machine (root, the embedded lab: its real Kubernetes cluster,
pods as Deployments run by its kubelets, through ``LabClusterBackend``):
- lab up (3 nodes) and lab down wall time;
- pod process-crash RTO (first restart), ``fast`` profile, N runs;
- pod node-power-off RTO with the eviction healer, ``fast`` profile, M runs;
- with ``--defaults``: the same power-off once under ``kubernetes-defaults`` with the
  eviction healer, and with ``--baseline`` once without it (the platform's own
  grace + 300 s toleration, about 6 minutes).

Targets (issue 2): crash RTO <= 1 s median; power-off + eviction (fast) <= 10 s.
Every figure comes from real runs through the same runner as ``rto run``.
Brings the default lab up and takes it down: do not run it with a lab you use.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chaos.backends import apply_profile  # noqa: E402
from chaos.results import ResultsStore, RunResult  # noqa: E402
from chaos.runner import run_experiment  # noqa: E402
from chaos.spec import load_experiment  # noqa: E402
from cluster.lab.lifecycle import lab_down, lab_up  # noqa: E402
from cluster.lab_cluster import LabClusterBackend, LabClusterProvider  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "lab_rto.json"
PODS = ROOT / "experiments" / "pods"


def _summary(rows: list[RunResult]) -> dict[str, object]:
    rtos = [r.rto_s for r in rows if r.rto_s is not None]
    return {
        "runs": len(rows),
        "statuses": [r.status.value for r in rows],
        "rto_s": rtos,
        "median_rto_s": statistics.median(rtos) if rtos else None,
        "max_rto_s": max(rtos) if rtos else None,
        "same_instance": [r.same_instance for r in rows],
        "healer_action_s": [r.healer_action_s for r in rows],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--crash-runs", type=int, default=10)
    ap.add_argument("--power-runs", type=int, default=5)
    ap.add_argument(
        "--defaults", action="store_true", help="one power-off run under kubernetes-defaults"
    )
    ap.add_argument(
        "--baseline", action="store_true", help="also without the eviction healer (~6 min)"
    )
    args = ap.parse_args()

    figures: dict[str, object] = {"machine": {"cores": os.cpu_count()}}
    store = ResultsStore(Path(tempfile.mkdtemp(prefix="rto-bench-")))
    crash = load_experiment(PODS / "process-crash.yaml")
    power = load_experiment(PODS / "node-power-off.yaml")

    lab_down()
    t0 = time.monotonic()
    lab_up(profile="fast", nodes=3)
    figures["lab_up_s"] = round(time.monotonic() - t0, 3)
    backend: LabClusterBackend | None = None
    try:
        # What `rto run --backend lab` gets (the ``lab`` entry of rto.backends).
        made = LabClusterProvider().backend()
        assert isinstance(made, LabClusterBackend)
        backend = made
        apply_profile(backend, "fast")
        spec = crash.with_overrides(profile="fast", healers=["watchdog"], deadline_s=20)
        rows = []
        for i in range(args.crash_runs):
            # A fresh pod each time: the figure is the FIRST restart, which the
            # kubelet does at once; repeated crashes of one pod walk its
            # CrashLoopBackOff (capped at 8 s under ``fast``; measured below).
            if any(w.name == spec.rto.target.workload for w in backend.workloads()):
                backend.delete_workload(spec.rto.target.workload)
            rows.append(run_experiment(spec, backend, store, repetition=i, profile="fast"))
        figures["pod_process_crash_fast_first_restart"] = _summary(rows)
        rows = [
            run_experiment(spec, backend, store, repetition=i, profile="fast") for i in range(5)
        ]
        figures["pod_process_crash_fast_repeated_same_pod"] = _summary(rows)

        spec = power.with_overrides(
            profile="fast", healers=["watchdog", "eviction"], duration_s=5, deadline_s=20
        )
        rows = [
            run_experiment(spec, backend, store, repetition=i, profile="fast")
            for i in range(args.power_runs)
        ]
        figures["pod_power_off_eviction_fast"] = _summary(rows)

        if args.defaults:
            apply_profile(backend, "kubernetes-defaults")
            spec = power.with_overrides(
                profile="kubernetes-defaults",
                healers=["watchdog", "eviction"],
                duration_s=90,
                deadline_s=120,
            )
            rows = [run_experiment(spec, backend, store, profile="kubernetes-defaults")]
            figures["pod_power_off_eviction_defaults"] = _summary(rows)
        if args.baseline:
            apply_profile(backend, "kubernetes-defaults")
            spec = power.with_overrides(
                profile="kubernetes-defaults", healers=["watchdog"], duration_s=420, deadline_s=440
            )
            rows = [run_experiment(spec, backend, store, profile="kubernetes-defaults")]
            figures["pod_power_off_no_healer_defaults"] = _summary(rows)
    finally:
        if backend is not None:
            backend.close()
        t1 = time.monotonic()
        lab_down()
        figures["lab_down_s"] = round(time.monotonic() - t1, 3)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
