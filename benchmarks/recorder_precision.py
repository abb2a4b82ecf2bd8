"""How precisely does the recorder measure an outage of known length?

Run by hand or by CI (``.venv/bin/python benchmarks/recorder_precision.py``);
writes ``benchmarks/results/recorder_precision.json`` and prints a table. Each
trial makes a workload unavailable for exactly X (log-spaced from 100 ms to 5 s,
shuffled), lets the prober (``chaos.prober``) watch it, computes the RTO with
``chaos.rto.measure`` and compares it with the ground truth (the monotonic
times at which the outage was switched on and off).

Targets:

(a) ``loopback``: ``tests/loopback_target.py`` on 127.0.0.1, made unavailable in
    turn by 503 answers, refused connects, hung connections, and a "freeze"
    (answers held until the end of the window, like a thawed cgroup);
(b) ``lab`` (``--lab``; needs a lab that is up, or ``--lab-up`` to start one and
    tear it down after): a pod of the lab's real cluster (``LabClusterBackend``)
    whose lab volume is frozen for X (``cluster.lab.volumes.freeze``/``thaw``,
    fsfreeze, what the storage-hang fault does): the pod's health check writes
    and reads back a file on that volume, so every answer is held until the
    thaw (mode ``volume-freeze``).

The figure of merit is |measured - X| at p50/p95; the aim is <= 40 ms at p95
with 20 ms probing. For the freeze cases the table also shows what stamping
PROBE_OK at the *send* time of the first good probe (instead of its answer time)
would have given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from chaos.prober import Prober, Transition  # noqa: E402
from chaos.rto import measure  # noqa: E402
from cluster.api import ProbeTarget  # noqa: E402
from core.timeline import EventKind, Timeline  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "recorder_precision.json"
LOOPBACK_MODES = ("503", "refuse", "hang", "freeze")
# (mode, switch the outage on, switch it off): each returns when it took effect.
Outage = tuple[str, Callable[[], float], Callable[[], float]]


def durations(n: int, lo: float = 0.1, hi: float = 5.0, seed: int = 7) -> list[float]:
    xs = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    random.Random(seed).shuffle(xs)
    return [round(x, 3) for x in xs]


class Watch:
    """Prober transitions into a timeline, plus a condition to wait on."""

    def __init__(self, origin: float) -> None:
        self.timeline = Timeline(origin)
        self.cond = threading.Condition()
        self.items: list[Transition] = []

    def __call__(self, tr: Transition) -> None:
        self.timeline.add(tr.at, tr.kind, "prober", tr.message, tr.data)
        with self.cond:
            self.items.append(tr)
            self.cond.notify_all()

    def wait_ok_after_fail(self, mark: int, timeout: float) -> bool:
        def seen() -> bool:
            kinds = [t.kind for t in self.items[mark:]]
            return EventKind.PROBE_FAIL in kinds and kinds[-1] is EventKind.PROBE_OK

        with self.cond:
            return self.cond.wait_for(seen, timeout)

    def wait_fail(self, mark: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(
                lambda: any(t.kind is EventKind.PROBE_FAIL for t in self.items[mark:]), timeout
            )

    def wait_up(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(
                lambda: bool(self.items) and self.items[-1].kind is EventKind.PROBE_OK, timeout
            )


def run_trials(
    label: str,
    target: Callable[[], ProbeTarget | None],
    expect_name: str,
    outages: list[Outage],
    xs: list[float],
    interval: float,
    timeout: float,
    good_needed: int,
) -> list[dict[str, Any]]:
    """One prober for all trials; ``outages`` cycles (mode, go_down, go_up)."""
    watch = Watch(time.monotonic())
    prober = Prober(
        target,
        watch,
        interval=interval,
        timeout=timeout,
        good_needed=good_needed,
        expect_name=expect_name,
    )
    prober.start()
    rows: list[dict[str, Any]] = []
    try:
        if not watch.wait_up(30):
            raise SystemExit(f"{label}: the target never answered; nothing measured")
        for i, x in enumerate(xs):
            mode, go_down, go_up = outages[i % len(outages)]
            # Let the prober settle (N good probes) between trials.
            if not watch.wait_up(10):
                raise SystemExit(f"{label}: target not back before trial {i}")
            time.sleep(0.2)
            mark = len(watch.items)
            down_at = go_down()
            time.sleep(x)  # the outage itself: its length is the ground truth
            up_at = go_up()
            truth = up_at - down_at
            # A stall shorter than the probe timeout is only a slow answer: by the
            # prober's definition there was no outage. Count it, do not score it.
            if not watch.wait_fail(mark, timeout + 0.5):
                rows.append(
                    {
                        "trial": i,
                        "mode": mode,
                        "x_s": x,
                        "truth_s": round(truth, 6),
                        "visible": False,
                        "recovered": True,
                        "rto_s": None,
                        "error_s": None,
                    }
                )
                print(
                    f"{label:8} {i:3} {mode:7} X={x * 1000:7.1f} ms  no failed probe "
                    f"(stall < timeout {timeout * 1000:g} ms)",
                    flush=True,
                )
                continue
            ok = watch.wait_ok_after_fail(mark, 10)
            time.sleep(0.15)  # let a flap show up before measuring
            m = measure(watch.timeline.events(), down_at - watch.timeline.origin)
            row: dict[str, Any] = {
                "trial": i,
                "mode": mode,
                "x_s": x,
                "truth_s": round(truth, 6),
                "visible": True,
                "recovered": ok and m.recovered,
                "rto_s": m.rto_s,
                "error_s": None if m.rto_s is None else round(m.rto_s - truth, 6),
                "outage_start_s": m.outage_start_s,
                "flaps": m.flaps,
                "up_at_injection": m.up_at_injection,
            }
            last_ok = [e for e in watch.timeline.events() if e.kind is EventKind.PROBE_OK][-1]
            latency = float(last_ok.data.get("latency_ms", "0")) / 1000
            if m.rto_s is not None:
                row["error_sent_stamp_s"] = round(m.rto_s - latency - truth, 6)
            rows.append(row)
            err = row["error_s"]
            print(
                f"{label:8} {i:3} {mode:7} X={x * 1000:7.1f} ms  truth={truth * 1000:7.1f}"
                f"  measured={'-' if m.rto_s is None else f'{m.rto_s * 1000:7.1f}'}"
                f"  err={'-' if err is None else f'{err * 1000:+6.1f}'} ms",
                flush=True,
            )
    finally:
        prober.stop()
    return rows


def summary(rows: list[dict[str, Any]], key: str = "error_s") -> dict[str, Any]:
    scored = [r for r in rows if r["visible"] and r["recovered"] and r.get(key) is not None]
    errs = [abs(r[key]) for r in scored]
    signed = [r[key] for r in scored]
    counts = {
        "n": len(errs),
        "invisible": sum(1 for r in rows if not r["visible"]),
        "not_recovered": sum(1 for r in rows if r["visible"] and not r["recovered"]),
    }
    if not errs:
        return counts
    q = statistics.quantiles(errs, n=100, method="inclusive") if len(errs) > 1 else errs * 99
    return {
        **counts,
        "p50_abs_ms": round(statistics.median(errs) * 1000, 1),
        "p95_abs_ms": round(q[94] * 1000, 1),
        "max_abs_ms": round(max(errs) * 1000, 1),
        "mean_signed_ms": round(statistics.mean(signed) * 1000, 1),
    }


def loopback(
    xs: list[float], interval: float, timeout: float, good_needed: int
) -> list[dict[str, Any]]:
    from loopback_target import LoopbackTarget  # type: ignore[import-not-found]

    srv = LoopbackTarget(name="bench", instance="i1").start()
    try:

        def outage(mode: str) -> Outage:
            return (mode, lambda: srv.set_mode(mode), lambda: srv.set_mode("ok"))

        outages = [outage(m) for m in LOOPBACK_MODES]
        return run_trials(
            "loopback", srv.target, "bench", outages, xs, interval, timeout, good_needed
        )
    finally:
        srv.stop()


def lab(
    xs: list[float], interval: float, timeout: float, good_needed: int, bring_up: bool
) -> list[dict[str, Any]]:
    if bring_up:
        # A private lab (own dirs, netns prefix, node names) so that it never
        # touches a lab a user or a test has up on the same machine. Set before
        # the lab modules are imported: they read these once, and so do the
        # daemons they start.
        os.environ.setdefault("RTO_LAB_STATE_DIR", "/var/lib/rto-lab-bench")
        os.environ.setdefault("RTO_LAB_RUN_DIR", "/run/rto-lab-bench")
        os.environ.setdefault("RTO_LAB_NS_PREFIX", "rtobn")
    # Imported lazily: the loopback half must run where no lab code works.
    from cluster.api import WorkloadKind
    from cluster.lab import volumes
    from cluster.lab.lifecycle import lab_down, lab_status, lab_up
    from cluster.lab_cluster import LabClusterBackend, LabClusterProvider

    if bring_up:
        lab_up("fast", nodes=1, node_prefix="bn")
    elif not lab_status().get("up"):
        raise SystemExit("--lab: the lab is not up (run `rto lab up` or pass --lab-up)")
    try:
        be = LabClusterProvider().backend()
        assert isinstance(be, LabClusterBackend)
    except BaseException:
        if bring_up:
            lab_down()
        raise
    name = "rto-bench"
    try:
        be.create_workload(name, WorkloadKind.POD)  # with its lab volume at /data
        if be.wait_ready(name, timeout=60) is None:
            raise SystemExit(f"lab: pod {name} was not Ready within 60 s; nothing measured")

        # The ground-truth switch: fsfreeze on the pod's volume. The health check
        # (cluster.kube.workloads: write, read back on /data) blocks from the
        # freeze on and answers when the volume thaws; the kubelet's readiness
        # probe hangs too, but the prober goes to the pod IP, which stays.
        def freeze() -> float:
            t0 = time.monotonic()
            volumes.freeze(name)
            return (t0 + time.monotonic()) / 2  # frozen somewhere inside the call

        def thaw() -> float:
            t0 = time.monotonic()
            volumes.thaw(name)
            return (t0 + time.monotonic()) / 2

        return run_trials(
            "lab",
            lambda: be.probe_target(name),
            name,
            [("volume-freeze", freeze, thaw)],
            xs,
            interval,
            timeout,
            good_needed,
        )
    finally:
        try:
            volumes.thaw(name)  # a no-op unless a trial was cut short while frozen
        finally:
            try:
                be.delete_workload(name)
            finally:
                be.close()
                if bring_up:
                    lab_down()


def print_table(results: dict[str, Any]) -> None:
    print()
    print(
        f"{'target':10} {'mode':8} {'n':>3} {'inv':>3} {'p50|err|':>9} {'p95|err|':>9} {'max':>7} "
        f"{'mean err':>9} {'p95 sent-stamp':>15}"
    )
    for target, block in results["targets"].items():
        for mode, s in block["by_mode"].items():
            sent = block["by_mode_sent_stamp"].get(mode, {})
            print(
                f"{target:10} {mode:8} {s['n']:3} {s['invisible']:3} {s.get('p50_abs_ms', '-'):>9} "
                f"{s.get('p95_abs_ms', '-'):>9} {s.get('max_abs_ms', '-'):>7} "
                f"{s.get('mean_signed_ms', '-'):>9} {sent.get('p95_abs_ms', '-'):>15}"
            )
    print("(ms; err = measured RTO - ground truth; inv = stall shorter than the probe timeout,")
    print(" no failed probe, not scored; sent-stamp = PROBE_OK stamped at the send time)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--timeout", type=float, default=0.25)
    ap.add_argument("--good-needed", type=int, default=5)
    ap.add_argument(
        "--lab", action="store_true", help="also measure a real lab pod (volume freeze)"
    )
    ap.add_argument("--lab-up", action="store_true", help="bring a 1-node lab up and down")
    ap.add_argument("--no-loopback", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    xs = durations(args.trials)
    load_before = list(os.getloadavg())
    cfg = (args.interval, args.timeout, args.good_needed)
    targets: dict[str, list[dict[str, Any]]] = {}
    if not args.no_loopback:
        targets["loopback"] = loopback(xs, *cfg)
    if args.lab or args.lab_up:
        targets["lab"] = lab(xs, *cfg, bring_up=args.lab_up)

    results: dict[str, Any] = {
        "config": {
            "trials": args.trials,
            "interval_s": args.interval,
            "timeout_s": args.timeout,
            "good_needed": args.good_needed,
            "x_range_s": [min(xs), max(xs)],
            "host": platform.node(),
            "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            # Other work on the machine shows up as error: keep it on record.
            "loadavg_before": load_before,
            "loadavg_after": list(os.getloadavg()),
            "cpus": os.cpu_count(),
        },
        "targets": {},
    }
    for name, rows in targets.items():
        modes = sorted({r["mode"] for r in rows})
        results["targets"][name] = {
            "all": summary(rows),
            "by_mode": {m: summary([r for r in rows if r["mode"] == m]) for m in modes},
            "by_mode_sent_stamp": {
                m: summary([r for r in rows if r["mode"] == m], "error_sent_stamp_s") for m in modes
            },
            "trials": rows,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print_table(results)
    for name, block in results["targets"].items():
        s = block["all"]
        print(f"{name}: p50 {s.get('p50_abs_ms')} ms, p95 {s.get('p95_abs_ms')} ms over {s['n']}")
    print(f"written {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
