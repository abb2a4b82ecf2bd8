"""Benchmark: VMI RTO figures on a private lab with VMs -> benchmarks/results/vmi_rto.json.

Measures, on this machine (root, TCG guests), through the same runner as ``rto run``
and the lab's backend (``LabClusterBackend``: VMIs are kubevirt.io/v1 objects of
the lab's real API server, run by its virt-controller and virt-handlers):
- VMI create -> first good probe, over ``--boots`` fresh VMIs (target <= 6 s): from
  the VirtualMachine's create call to the first answer of the guest itself, probed
  as the recorder probes (``chaos.prober.http_probe`` from the hub netns, 20 ms);
- watchdog RTO (guest hang, i6300esb heartbeat 2 s, watchdog healer), ``--hangs``
  runs on one VMI (target <= 10 s), and once with the driver's 30 s default;
- node power-off RTO with the eviction healer, ``fast`` profile, ``--power-runs``
  runs (target <= 20 s): live migration cannot rescue a dead node, so this is a
  fence + cold boot on another node.

It brings up its own lab (own state/run dirs, netns prefix ``rtovb``, nodes
``vbn1..3``, own journal) and always takes it down, so it never touches a lab
someone else has up; only one guest runs at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# A private lab: set before cluster.lab reads them (and inherited by its daemons).
os.environ["RTO_LAB_STATE_DIR"] = "/var/lib/rto-lab-vmibench"
os.environ["RTO_LAB_RUN_DIR"] = "/run/rto-lab-vmibench"
os.environ["RTO_LAB_NS_PREFIX"] = "rtovb"
_TMP = Path(tempfile.mkdtemp(prefix="rto-vmi-bench-"))
os.environ["RTO_JOURNAL"] = str(_TMP / "journal.jsonl")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chaos.backends import apply_profile  # noqa: E402
from chaos.journal import Journal  # noqa: E402
from chaos.prober import http_probe  # noqa: E402
from chaos.results import ResultsStore, RunResult  # noqa: E402
from chaos.runner import RunOptions, run_experiment  # noqa: E402
from chaos.spec import ExperimentSpec, load_experiment  # noqa: E402
from cluster.api import ProbeTarget, WorkloadKind  # noqa: E402
from cluster.lab.lifecycle import lab_down, lab_up  # noqa: E402
from cluster.lab.net import in_netns  # noqa: E402
from cluster.lab_cluster import LabClusterBackend, LabClusterProvider  # noqa: E402
from core.errors import BackendError  # noqa: E402
from core.wait import poll_until  # noqa: E402

__all__ = ["main"]

OUT = ROOT / "benchmarks" / "results" / "vmi_rto.json"
VMIS = ROOT / "experiments" / "vmis"
NODE_PREFIX = "vbn"
HOME = f"{NODE_PREFIX}1"
TARGETS = {"create_to_probe_s": 6.0, "watchdog_2s_rto_s": 10.0, "power_off_eviction_rto_s": 20.0}


def _placed(spec: ExperimentSpec, **target: object) -> ExperimentSpec:
    """``spec`` with its workload placed on HOME (and other target fields changed)."""
    new = spec.rto.target.model_copy(update={"node": HOME, **target})
    return spec.model_copy(update={"rto": spec.rto.model_copy(update={"target": new})})


def _summary(rows: list[RunResult], target: float | None = None) -> dict[str, object]:
    rtos = [r.rto_s for r in rows if r.rto_s is not None]
    out: dict[str, object] = {
        "runs": len(rows),
        "statuses": [r.status.value for r in rows],
        "rto_s": [round(x, 3) for x in rtos],
        "median_rto_s": round(statistics.median(rtos), 3) if rtos else None,
        "max_rto_s": round(max(rtos), 3) if rtos else None,
        "same_instance": [r.same_instance for r in rows],
        "detection_s": [r.detection_s for r in rows],
        "healer_action_s": [r.healer_action_s for r in rows],
        "log_lines": [sum(1 for e in r.timeline if e.kind.value == "log") for r in rows],
        "errors": [r.error for r in rows if r.error],
    }
    if target is not None:
        out["target_s"] = target
        out["meets_target"] = bool(rtos) and len(rtos) == len(rows) and max(rtos) <= target
    return out


def _probe(target: ProbeTarget, name: str, timeout: float) -> bool:
    """One probe as the recorder sends it (200 with ``name`` first in the body),
    from the target's netns (the lab's hub), in a thread of its own."""

    def probe() -> bool:
        good, _instance, _reason = asyncio.run(http_probe(target, timeout, expect_name=name))
        return good

    return in_netns(target.netns, probe) if target.netns is not None else probe()


def _boot_once(backend: LabClusterBackend, name: str) -> float:
    """Wall seconds from create to the first 200 from the guest itself."""
    t0 = time.monotonic()
    backend.create_workload(name, WorkloadKind.VMI, HOME)

    def answered() -> bool:
        target = backend.probe_target(name)  # None until the VMI has an address
        return target is not None and _probe(target, name, 0.5)

    poll_until(
        answered, 120.0, f"VMI {name} to answer", backend.clock,
        interval=0.02, retry_on=(BackendError,),
    )  # fmt: skip
    took = time.monotonic() - t0
    backend.delete_workload(name)
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--boots", type=int, default=5)
    ap.add_argument("--hangs", type=int, default=5)
    ap.add_argument("--power-runs", type=int, default=3)
    ap.add_argument("--no-default-heartbeat", action="store_true", help="skip the 30 s run")
    args = ap.parse_args()

    figures: dict[str, object] = {"machine": {"cores": os.cpu_count()}, "targets": TARGETS}
    store = ResultsStore(_TMP / "runs")
    opts = RunOptions(journal=Journal(_TMP / "journal.jsonl"), ready_timeout_s=120.0)

    lab_down()  # an earlier aborted run of this benchmark
    t0 = time.monotonic()
    lab_up(profile="fast", nodes=3, node_prefix=NODE_PREFIX, vms=True)
    figures["lab_up_vms_s"] = round(time.monotonic() - t0, 3)
    try:
        backend = LabClusterProvider().backend()
        assert isinstance(backend, LabClusterBackend)
    except BaseException:
        lab_down()
        raise
    failed: BaseException | None = None
    try:
        apply_profile(backend, "fast")

        boots = [round(_boot_once(backend, f"vb-boot{i}"), 3) for i in range(args.boots)]
        figures["vmi_create_to_first_good_probe"] = {
            "runs": len(boots),
            "seconds": boots,
            "median_s": statistics.median(boots),
            "max_s": max(boots),
            "target_s": TARGETS["create_to_probe_s"],
            "meets_target": max(boots) <= TARGETS["create_to_probe_s"],
        }

        hang = _placed(load_experiment(VMIS / "process-crash-hang.yaml"), watchdog_heartbeat_s=2)
        spec = hang.with_overrides(profile="fast", healers=["watchdog"], deadline_s=40)
        rows = [
            run_experiment(spec, backend, store, repetition=i, profile="fast", options=opts)
            for i in range(args.hangs)
        ]
        figures["vmi_watchdog_hang_heartbeat_2s"] = _summary(rows, TARGETS["watchdog_2s_rto_s"])
        backend.delete_workload(spec.rto.target.workload)

        if not args.no_default_heartbeat:
            spec = _placed(hang, workload="vm-hang30", watchdog_heartbeat_s=None).with_overrides(
                profile="fast", healers=["watchdog"], deadline_s=90
            )
            rows = [run_experiment(spec, backend, store, profile="fast", options=opts)]
            figures["vmi_watchdog_hang_driver_default_30s"] = _summary(rows)
            backend.delete_workload(spec.rto.target.workload)

        power = _placed(load_experiment(VMIS / "node-power-off.yaml"))
        spec = power.with_overrides(
            profile="fast", healers=["watchdog", "eviction"], duration_s=10, deadline_s=45
        )
        rows = [
            run_experiment(spec, backend, store, repetition=i, profile="fast", options=opts)
            for i in range(args.power_runs)
        ]
        figures["vmi_power_off_eviction_fast"] = _summary(rows, TARGETS["power_off_eviction_rto_s"])
    except Exception as exc:  # the figures so far are still written, with the error
        failed = exc
        figures["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        backend.close()
        t1 = time.monotonic()
        lab_down()
        figures["lab_down_s"] = round(time.monotonic() - t1, 3)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    if failed is not None:
        raise failed
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
