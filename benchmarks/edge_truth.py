"""Edge refinement against ground truth: old grid prober and new side by side.

Run by hand or by the ``bench`` nox session (``.venv/bin/python
benchmarks/edge_truth.py``; ``--quick`` for a short run, ``--lab-up`` to add a
real lab pod); writes ``benchmarks/results/edge_truth.json`` and prints a table.

Every outage is watched by three probers at once (``chaos.prober`` defaults: 20
ms interval, 250 ms timeout, 5 good probes), each in a process of its own
(``benchmarks/prober_arm.py``, as in a real run: one prober per harness process)
and each computing its RTO with ``chaos.rto.measure`` on its own timeline:

- ``old``: ``edge_interval=None``, the plain grid;
- ``new-nohint``: edge refinement, never hinted (only the bursts after a change);
- ``new``: edge refinement with ``expect_edge()`` called ``--lead`` (5 ms) before
  the switch-off and before the switch-on, as ``chaos.runner`` does.

Targets and their ground truth:

- ``loopback`` (modes ``refused`` and ``http500``): ``benchmarks/truth_server.py``
  in a child process (not sharing this process's GIL), which stamps each switch
  itself with ``time.monotonic()`` around the act (the close/listen(2) of its
  socket, the assignment of its mode) and sends the stamps back on a pipe;
- ``lab`` (mode ``cgi500``; ``--lab``/``--lab-up``): a busybox-httpd pod of the
  lab's real cluster whose CGI ``/www/cgi-bin/healthz`` is atomically replaced,
  through ``/proc/<container pid>/root``, by one answering 500 and back (the
  server is switched off from inside the container, not frozen). The ground
  truth is the rename(2), stamped before and after: midpoint, half-width.

Outage lengths are log-spaced (0.3..5 s), shuffled, with a random sleep (up to
one interval) before each switch so the edges fall at random phases of the
grid. Errors: measured - truth, for the RTO and for each edge; *coverage* is the
fraction of edges whose truth (+- its half-width) lay inside the prober's
``bracket_ms``. Probe load: probes per second while the trials ran.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from prober_arm import ProcessArm  # noqa: E402
from truth_server import Stamp, TruthServer  # noqa: E402

from chaos.prober import Prober  # noqa: E402
from chaos.rto import measure  # noqa: E402
from cluster.api import ProbeTarget  # noqa: E402
from core.timeline import EventKind, Timeline, TimelineEvent  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "edge_truth.json"
ARMS = ("old", "new-nohint", "new")
HINTED = "new"
LOOPBACK_MODES = {"refused": "refuse", "http500": "500"}  # our mode -> server command
# The timeline keeps stamps to 1 us and bracket_ms is written to 10 us: an edge
# that far outside its bracket is rounding, not a miss.
ROUNDING_S = 2e-5
SETTLE_S = 0.2  # quiet time before each trial, after all probers are up

# (switch off, switch on): each returns the stamps of the act.
Switches = tuple[Callable[[], Stamp], Callable[[], Stamp]]


def durations(n: int, lo: float = 0.3, hi: float = 5.0) -> list[float]:
    """``n`` lengths log-spaced from ``lo`` to ``hi`` (unshuffled)."""
    if n == 1:
        return [lo]
    return [round(lo * (hi / lo) ** (i / (n - 1)), 3) for i in range(n)]


def schedule(per_mode: dict[str, int], seed: int) -> list[tuple[str, float]]:
    """(mode, length) for every trial: each mode over the whole range, all shuffled."""
    plan = [(mode, x) for mode, n in per_mode.items() for x in durations(n)]
    random.Random(seed).shuffle(plan)
    return plan


# --- the probers ------------------------------------------------------------------
class Arm(Protocol):
    """One of the three probers watching the target."""

    name: str
    timeline: Timeline

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def expect_edge(self) -> None: ...
    def wait_up(self, timeout: float) -> bool: ...
    def wait_recovered(self, since: float, timeout: float) -> bool: ...
    def counts(self) -> tuple[int, int]: ...  # (probes sent, edge probes) so far


@contextlib.contextmanager
def running(arms: Sequence[Arm]) -> Iterator[None]:
    started: list[Arm] = []
    try:
        for arm in arms:
            arm.start()
            started.append(arm)
        yield
    finally:
        for arm in started:
            arm.stop()


# --- one trial --------------------------------------------------------------------
def _bracket_s(e: TimelineEvent | None) -> float | None:
    raw = None if e is None else e.data.get("bracket_ms")
    return None if raw is None else float(raw) / 1000


def covered(edge_at: float, bracket: float | None, truth: float, half: float) -> bool | None:
    """Did ``truth`` (+- ``half``) lie in ``[edge_at - bracket, edge_at]``? None: no bracket."""
    if bracket is None:
        return None
    slack = half + ROUNDING_S
    return edge_at - bracket - slack <= truth <= edge_at + slack


def outside(edge_at: float, bracket: float | None, truth: float, half: float) -> float | None:
    """How far ``truth`` lay outside its bracket (s): + after its end, - before its start."""
    if bracket is None:
        return None
    slack = half + ROUNDING_S
    if truth > edge_at + slack:
        return truth - edge_at
    if truth < edge_at - bracket - slack:
        return truth - (edge_at - bracket)
    return 0.0


def score(
    arm: str, events: Sequence[TimelineEvent], origin: float, injected: float, off: Stamp, on: Stamp
) -> dict[str, Any]:
    """One prober's figures for one outage, against the truth ``off``..``on``."""
    m = measure(events, injected - origin)
    truth = on.mid - off.mid
    row: dict[str, Any] = {
        "arm": arm,
        "truth_s": round(truth, 6),
        "visible": m.outage_start_s is not None,
        "recovered": m.recovered,
        "up_at_injection": m.up_at_injection,
        "flaps": m.flaps,
        "rto_s": m.rto_s,
    }
    if m.outage_start_s is None or m.rto_s is None:
        return row
    start = injected + m.outage_start_s
    end = start + m.rto_s
    after = [e for e in events if e.t >= injected - origin - 1e-6]
    fail = next((e for e in after if e.kind is EventKind.PROBE_FAIL), None)
    oks = [e for e in after if e.kind is EventKind.PROBE_OK]
    row.update(
        error_s=round(m.rto_s - truth, 6),
        start_error_s=round(start - off.mid, 6),
        end_error_s=round(end - on.mid, 6),
        start_bracket_s=m.start_bracket_s,
        end_bracket_s=m.end_bracket_s,
        start_covered=covered(start, m.start_bracket_s, off.mid, off.half),
        end_covered=covered(end, m.end_bracket_s, on.mid, on.half),
        start_outside_s=outside(start, m.start_bracket_s, off.mid, off.half),
        end_outside_s=outside(end, m.end_bracket_s, on.mid, on.half),
        fail_reason=None if fail is None else fail.data.get("reason"),
    )
    if oks and "latency_ms" in oks[-1].data:
        # The recovery is stamped at the first good probe's answer; at its send
        # (ok_stamp="sent") the RTO would be shorter by that probe's latency.
        latency = float(oks[-1].data["latency_ms"]) / 1000
        row.update(
            ok_latency_ms=round(latency * 1000, 2),
            error_sent_stamp_s=round(m.rto_s - latency - truth, 6),
        )
    return row


@dataclass
class Trial:
    index: int
    mode: str
    x: float


def run_trial(
    trial: Trial,
    arms: Sequence[Arm],
    switches: Switches,
    rng: random.Random,
    interval: float,
    lead: float,
    recover_timeout: float,
) -> list[dict[str, Any]]:
    """One outage of about ``trial.x`` s, seen by every arm; one row per arm."""
    for arm in arms:
        if not arm.wait_up(10):
            raise SystemExit(f"{arm.name}: target not up before trial {trial.index}")
    counts0 = {a.name: a.counts() for a in arms}
    t0 = time.monotonic()
    hinted = [a for a in arms if a.name == HINTED]
    go_off, go_on = switches

    def hint_then(switch: Callable[[], Stamp]) -> tuple[float, Stamp]:
        time.sleep(rng.uniform(0, interval))  # a random phase against the grid
        hint_at = time.monotonic()
        for a in hinted:
            a.expect_edge()
        time.sleep(lead)
        return hint_at, switch()

    time.sleep(SETTLE_S)
    hint_off, off = hint_then(go_off)
    time.sleep(max(0.0, trial.x - (time.monotonic() - off.mid) - lead - interval / 2))
    hint_on, on = hint_then(go_on)
    for arm in arms:
        arm.wait_recovered(off.before, max(0.1, on.after + recover_timeout - time.monotonic()))
    time.sleep(0.15)  # a flap after the recovery would show by now
    dur = time.monotonic() - t0
    load1 = os.getloadavg()[0]  # other work on the machine becomes probe latency
    rows = []
    for arm in arms:
        # "Injected" when every arm was seen up, before the settle time: a probe
        # sent before the hint may be decided after the switch (lab CGI latency),
        # and its PROBE_FAIL is still this outage's start.
        row = score(arm.name, arm.timeline.events(), arm.timeline.origin, t0, off, on)
        sent0, edge0 = counts0[arm.name]
        sent, edge = arm.counts()
        row.update(
            trial=trial.index,
            mode=trial.mode,
            x_s=trial.x,
            off_half_s=round(off.half, 7),
            on_half_s=round(on.half, 7),
            lead_off_s=round(off.mid - hint_off, 6),
            lead_on_s=round(on.mid - hint_on, 6),
            sent=sent - sent0,
            edge_sent=edge - edge0,
            duration_s=round(dur, 4),
            loadavg_1m=round(load1, 2),
        )
        rows.append(row)
    return rows


def _tails(arms: Sequence[Arm], n: int = 4) -> str:
    """The last timeline events of each arm: why a target never came up."""
    parts = []
    for a in arms:
        evs = a.timeline.events()[-n:]
        parts.append(
            f"{a.name}: " + "; ".join(f"{e.t:.3f} {e.kind.value} {e.message}" for e in evs)
        )
    return " | ".join(parts)


def _fmt(v: float | None, scale: float = 1000, spec: str = "+7.1f") -> str:
    return "-" if v is None else format(v * scale, spec)


def run_trials(
    label: str,
    arms: Sequence[Arm],
    switches: dict[str, Switches],
    plan: list[tuple[str, float]],
    seed: int,
    interval: float,
    lead: float,
    recover_timeout: float,
) -> dict[str, Any]:
    """All trials of one target; the rows and each arm's load over the whole run."""
    rng = random.Random(seed + 1)
    rows: list[dict[str, Any]] = []
    with running(arms):
        start = time.monotonic()
        for a in arms:
            if not a.wait_up(60):
                raise SystemExit(
                    f"{label}: {a.name} never saw the target up; nothing measured. " + _tails(arms)
                )
        for i, (mode, x) in enumerate(plan):
            got = run_trial(
                Trial(i, mode, x), arms, switches[mode], rng, interval, lead, recover_timeout
            )
            rows.extend(got)
            cells = "  ".join(
                f"{r['arm']}={_fmt(r.get('error_s'))}" if r["visible"] else f"{r['arm']}=NONE"
                for r in got
            )
            truth = got[0]["truth_s"]
            print(f"{label:8} {i:3} {mode:8} truth={truth * 1000:7.1f} ms  err {cells}", flush=True)
        elapsed = time.monotonic() - start
        load = {}
        for a in arms:
            sent, edge = a.counts()
            load[a.name] = {
                "sent": sent,
                "edge_sent": edge,
                "seconds": round(elapsed, 3),
                "per_s": round(sent / elapsed, 2),
                "edge_per_s": round(edge / elapsed, 2),
            }
    old = load["old"]["per_s"] if "old" in load else None
    ratios = {k: None if not old else round(v["per_s"] / old, 3) for k, v in load.items()}
    return {"rows": rows, "load": load, "rate_ratio_to_old": ratios}


# --- summaries --------------------------------------------------------------------
def _quantile(xs: list[float], q: int) -> float:
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1]


def _dist(xs: list[float], prefix: str) -> dict[str, float]:
    """p50/p95/max of |x| and the signed mean, in ms."""
    if not xs:
        return {}
    ab = [abs(x) for x in xs]
    return {
        f"{prefix}p50_abs_ms": round(statistics.median(ab) * 1000, 2),
        f"{prefix}p95_abs_ms": round(_quantile(ab, 95) * 1000, 2),
        f"{prefix}max_abs_ms": round(max(ab) * 1000, 2),
        f"{prefix}mean_signed_ms": round(statistics.mean(xs) * 1000, 2),
    }


def _spread(xs: list[float], prefix: str) -> dict[str, float]:
    if not xs:
        return {}
    return {
        f"{prefix}p50_ms": round(statistics.median(xs) * 1000, 2),
        f"{prefix}p95_ms": round(_quantile(xs, 95) * 1000, 2),
    }


def _coverage(flags: list[bool | None]) -> float | None:
    known = [f for f in flags if f is not None]
    return None if not known else round(sum(known) / len(known), 3)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one (target, mode, arm) cell; rows not scored are counted."""
    scored = [r for r in rows if r["visible"] and r["recovered"] and r.get("error_s") is not None]
    clean = [r for r in scored if r["up_at_injection"]]
    sent = sum(r["sent"] for r in rows)
    edge = sum(r["edge_sent"] for r in rows)
    seconds = sum(r["duration_s"] for r in rows)
    out: dict[str, Any] = {
        "n": len(scored),
        "no_outage": sum(1 for r in rows if not r["visible"]),
        "not_recovered": sum(1 for r in rows if r["visible"] and not r["recovered"]),
        "not_up_at_injection": sum(1 for r in scored if not r["up_at_injection"]),
        "flapped": sum(1 for r in scored if r["flaps"]),
        "probes_per_s": round(sent / seconds, 2) if seconds else None,
        "edge_per_s": round(edge / seconds, 2) if seconds else None,
    }
    out.update(_dist([r["error_s"] for r in scored], ""))
    out.update(_dist([r["start_error_s"] for r in clean], "start_"))
    out.update(_dist([r["end_error_s"] for r in scored], "end_"))
    sent_stamp = [r["error_sent_stamp_s"] for r in scored if "error_sent_stamp_s" in r]
    out.update(_dist(sent_stamp, "sent_stamp_"))
    out.update(
        _spread([r["ok_latency_ms"] / 1000 for r in scored if "ok_latency_ms" in r], "ok_latency_")
    )
    for edge, mine in (("start", clean), ("end", scored)):
        misses = [r[f"{edge}_outside_s"] for r in mine if r.get(f"{edge}_outside_s")]
        if misses:
            out[f"{edge}_miss_max_abs_ms"] = round(max(abs(x) for x in misses) * 1000, 2)
            out[f"{edge}_miss_mean_signed_ms"] = round(statistics.mean(misses) * 1000, 2)
    sb = [r["start_bracket_s"] for r in clean if r.get("start_bracket_s") is not None]
    eb = [r["end_bracket_s"] for r in scored if r.get("end_bracket_s") is not None]
    out.update(_spread(sb, "start_bracket_"))
    out.update(_spread(eb, "end_bracket_"))
    out["start_coverage"] = _coverage([r.get("start_covered") for r in clean])
    out["end_coverage"] = _coverage([r.get("end_covered") for r in scored])
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """mode -> arm -> summary, with ``all`` over the modes and the rate ratio to old."""
    modes = sorted({r["mode"] for r in rows})
    out: dict[str, dict[str, Any]] = {}
    for mode in [*modes, "all"]:
        cell = {}
        for arm in ARMS:
            mine = [r for r in rows if r["arm"] == arm and mode in (r["mode"], "all")]
            if mine:
                cell[arm] = summary(mine)
        old = cell.get("old", {}).get("probes_per_s")
        for s in cell.values():
            s["rate_ratio_to_old"] = None if not old else round(s["probes_per_s"] / old, 3)
        out[mode] = cell
    return out


# --- targets ----------------------------------------------------------------------
def make_probers(
    target: ProbeTarget, name: str, origin: float, args: argparse.Namespace
) -> list[Arm]:
    """The three arms on one target, each prober in a process of its own.

    In one process they would share one GIL, and one prober's edge probes would
    delay the others' (and its own) answers: the figures would be that
    contention, not the prober. A real run has one prober per harness process.
    """
    edge = Prober(lambda: None, lambda _: None).edge_interval  # the prober's default
    return [
        ProcessArm(
            arm,
            target,
            origin,
            expect_name=name,
            edge_interval=None if arm == "old" else edge,
            interval=args.interval,
            timeout=args.timeout,
            good_needed=args.good,
        )
        for arm in ARMS
    ]


def loopback(args: argparse.Namespace, per_mode: int) -> dict[str, Any]:
    with TruthServer(name="bench", instance="i1") as srv:
        target = ProbeTarget(host="127.0.0.1", port=srv.port, path="/healthz")
        arms = make_probers(target, "bench", time.monotonic(), args)

        def switch_to(cmd: str) -> Callable[[], Stamp]:
            return lambda: srv.switch(cmd)

        switches: dict[str, Switches] = {
            mode: (switch_to(cmd), switch_to("ok")) for mode, cmd in LOOPBACK_MODES.items()
        }
        plan = schedule(dict.fromkeys(LOOPBACK_MODES, per_mode), args.seed)
        try:
            return run_trials(
                "loopback", arms, switches, plan, args.seed, args.interval, args.lead, 3.0
            )
        finally:
            srv.switch("ok")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=50, help="loopback outages per mode")
    ap.add_argument("--lab-trials", type=int, default=30, help="lab pod outages")
    ap.add_argument("--quick", action="store_true", help="6 per loopback mode, 4 on the lab")
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--timeout", type=float, default=0.25)
    ap.add_argument("--good", type=int, default=5, help="good probes needed")
    ap.add_argument("--lead", type=float, default=0.005, help="expect_edge before a switch, s")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--lab", action="store_true", help="also a pod of a lab that is up")
    ap.add_argument("--lab-up", action="store_true", help="bring a private 1-node lab up/down")
    ap.add_argument("--no-loopback", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    per_mode = 6 if args.quick else args.trials
    lab_n = 4 if args.quick else args.lab_trials

    config: dict[str, Any] = {
        "loopback_trials_per_mode": 0 if args.no_loopback else per_mode,
        "lab_trials": lab_n if (args.lab or args.lab_up) else 0,
        "interval_s": args.interval,
        "timeout_s": args.timeout,
        "good_needed": args.good,
        "edge_interval_s": Prober(lambda: None, lambda _: None).edge_interval,
        "hint_lead_s": args.lead,
        "x_range_s": [0.3, 5.0],
        "seed": args.seed,
        "host": platform.node(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # Other work on the machine shows up as error: keep it on record.
        "loadavg_before": list(os.getloadavg()),
        "argv": sys.argv[1:] if argv is None else argv,
    }
    results: dict[str, Any] = {"config": config, "targets": {}, "errors": {}}

    def record(name: str, run: Callable[[], dict[str, Any]]) -> None:
        # Written after each target: a lab that fails keeps the loopback figures.
        try:
            t = run()
        except (Exception, SystemExit) as exc:
            results["errors"][name] = f"{type(exc).__name__}: {exc}"
            print(f"{name} failed: {exc}", flush=True)
        else:
            results["targets"][name] = {
                "summary": summarise(t["rows"]),
                "load": t["load"],
                "rate_ratio_to_old": t["rate_ratio_to_old"],
                **({"pod": t["pod"]} if "pod" in t else {}),
                "trials": t["rows"],
            }
        config["loadavg_after"] = list(os.getloadavg())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    if not args.no_loopback:
        record("loopback", lambda: loopback(args, per_mode))
    if args.lab or args.lab_up:
        from edge_truth_lab import MODE, lab

        plan = schedule({MODE: lab_n}, args.seed + 2)
        record("lab", lambda: lab(args, make_probers, run_trials, plan))
    print_table(results)
    print(f"written {args.out}")
    return 1 if results["errors"] else 0


def _pair(s: dict[str, Any], a: str, b: str) -> str:
    return f"{s.get(a, '-')}/{s.get(b, '-')}"


def print_table(results: dict[str, Any]) -> None:
    cols = [
        ("n", "n", "{}"),
        ("none", "no_outage", "{}"),
        ("p50", "p50_abs_ms", "{:.1f}"),
        ("p95", "p95_abs_ms", "{:.1f}"),
        ("max", "max_abs_ms", "{:.1f}"),
        ("mean", "mean_signed_ms", "{:+.1f}"),
        ("st p95", "start_p95_abs_ms", "{:.1f}"),
        ("st mean", "start_mean_signed_ms", "{:+.1f}"),
        ("end p95", "end_p95_abs_ms", "{:.1f}"),
        ("end mean", "end_mean_signed_ms", "{:+.1f}"),
        ("sentst p95", "sent_stamp_p95_abs_ms", "{:.1f}"),
        ("sb p50/95", None, ""),
        ("eb p50/95", None, ""),
        ("cov s/e", None, ""),
        ("probe/s", "probes_per_s", "{:.1f}"),
        ("x old", "rate_ratio_to_old", "{:.2f}"),
    ]
    head = f"{'target':8} {'mode':8} {'arm':10} " + " ".join(f"{c[0]:>9}" for c in cols)
    print()
    print(head)
    for target, block in results["targets"].items():
        for mode, cell in block["summary"].items():
            for arm, s in cell.items():
                vals = []
                for label, key, spec in cols:
                    if label == "sb p50/95":
                        v = _pair(s, "start_bracket_p50_ms", "start_bracket_p95_ms")
                    elif label == "eb p50/95":
                        v = _pair(s, "end_bracket_p50_ms", "end_bracket_p95_ms")
                    elif label == "cov s/e":
                        v = _pair(s, "start_coverage", "end_coverage")
                    else:
                        raw = s.get(key) if key else None
                        v = "-" if raw is None else spec.format(raw)
                    vals.append(f"{v:>9}")
                print(f"{target:8} {mode:8} {arm:10} " + " ".join(vals))
        for arm, load in block["load"].items():
            print(
                f"{target:8} load     {arm:10} {load['per_s']:.1f} probes/s "
                f"({load['edge_per_s']:.1f} edge/s), x{block['rate_ratio_to_old'][arm]} of old"
            )
    print(
        "(ms; error = measured - truth; st/end = the outage-start / recovery edge; sb/eb ="
        " reported bracket of that edge; cov = fraction of edges whose truth lay in it;"
        "\n sentst = |RTO error| had PROBE_OK been stamped at its send, not its answer)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
