"""Live migration of a lab VMI on the lab's real cluster: probe-seen outage vs QEMU downtime.

Run by hand as root (``.venv/bin/python benchmarks/migration_lab.py``); writes
``benchmarks/results/migration_lab.json`` (``--out``) and prints a table.
Unlike ``benchmarks/migration.py`` (raw libvirt on a scratch network), this
goes through the harness: an isolated two-node lab with VMs (own state/run
dirs, netns prefix ``rtomb``, nodes ``mbn1``/``mbn2``) whose VMIs are
kubevirt.io/v1 objects, ``LabClusterBackend.migrate`` (a
VirtualMachineInstanceMigration: the lab's virt-controller picks it up, the
source node's virt-handler live-migrates the domain between the nodes'
libvirtds and moves the hub's /32 route to the destination on its
Resumed/Migrated event, or when the migrate call returns if that event never
came) and the harness's own ``chaos.recorder.Recorder`` probing the guest's
``/healthz`` every 20 ms with a 250 ms timeout, as in a run (its prober's
settings as this checkout has them are in ``config.recorder_prober``).

First the guest's normal /healthz latency is measured (probed as the recorder
probes, from the hub netns). Then ``--count`` (20) migrations back and forth.
Per migration: QEMU's downtime (the source virt-handler logs libvirt's
VIR_DOMAIN_JOB_DOWNTIME; KubeVirt's API does not carry it), the migration's
start..end in its VMI status (whole seconds, as KubeVirt stamps them), the
migrate call's wall time (API round trips and both controllers included), the
recorder's unavailability (PROBE_FAIL send time .. PROBE_OK answer time, and
the same with the OK stamped at its send time, which removes one healthz
latency), failed probes, and the differences. Everything is torn down at the
end, also on error or Ctrl-C.

Attribution (``attribution`` per migration, its summary in
``summary.attribution``; ``--no-trace`` turns it off): a child process
(``migration_trace.py``) runs a raw prober of its own in the hub (the same
GET, grid and timeout; every probe's send, connect, answer and local port), a
sniffer on each node's cbr0 (the probes' SYN and SYN-ACK, ARP, QEMU's RARP
announce; kernel stamps) and a CPU sampler (host and QEMUs); the source
virt-handler logs its monotonic stamps of the switch-over (source pause,
destination resume, route switch). All on the host's one monotonic clock, so
per migration: the pause, resume -> route switched, the ARP wait of the first
good probe (its SYN leaving the destination's cbr0), the guest's SYN -> SYN-ACK
and the rest of its answer, the raw outage send- and answer-stamped, other
outages in the window, cores used. After the migrations ``--pauses`` (10)
plain suspend/resume cycles of the VMI in its own QEMU, as long as the median
QEMU downtime, are the control (``pause_control``): the same stop of the vCPU
without a new QEMU nor a route change. ``--baseline FILE`` puts an earlier
result's summary beside this one (``compared_with``); ``--trace-out`` keeps
the raw trace, ``--reattribute RESULT TRACE`` analyses it again without a lab.

Result files without a ``path`` field (``migration_lab_20ms*.json``,
``migration_lab_wdt2.json``) were measured on the lab's former model backend,
not on this path: QEMU downtime median 58.5 ms, probe-seen 99 ms send-stamped,
316 ms answer-stamped, p95 477/715 ms; with a 2 s i6300esb heartbeat a
pre-copy slower than ~3 s let the watchdog reset the guest, so the default
keeps the driver's 30 s (``--wdt``).

What this path showed (2-core TCG host shared with other labs; n = 20 each;
medians / p95 in ms; the load average of each run is in its ``machine``):

- Before the fix (``migration_lab_before_traced.json``, load ~3-5; without
  the tracer, ``migration_lab_before.json``: QEMU 97 / 170, recorder
  145 / 238 and 256 / 312): QEMU downtime 88 / 134;
  recorder 121 / 320 send-stamped, 223 / 523 answer-stamped; raw prober
  117 / 223 and 202 / 320. Of the send-stamped outage beyond the pause
  (29 / 93): the route switch, resume -> hub route replaced, 22 / 33 (max 41),
  all of it the ``route_vmi`` call, whose ``NetNS`` forks a helper process per
  use; then the 20 ms grid, 10 / 15, since every probe sent during the pause
  lost its SYN at the source (timeout) and the first good one was always sent
  after the switch (none failed after it); and in 4 of 20 migrations probes
  slower than the timeout up to 140 ms before the pause (the guest starved by
  the last pre-copy round). The first good answer took 93 / 127 (healthz
  normally 5): its SYN waited 9 / 33 for ARP (the destination had no entry,
  or a FAILED one, for the guest every time), the guest took 20 / 50 from SYN
  to SYN-ACK and 62 / 99 more to answer; the next answers sped up over ~10
  probes (~200 ms). Probes slower than the timeout again 160-580 ms after the
  pause (1-3 per migration, in 5 of 20) are further outages, which the
  recorder (5 good probes to recover) adds: its p95 is that much over the raw
  single outage.
- The fix (virt-handler): the hub socket opened before the copy on a thread
  of its own, the destination's neighbour entry for the guest seeded before
  the copy. After it (``migration_lab_after_load9.json``, load ~9-14):
  resume -> switched 1.5 / 4.8, the first SYN leaves the destination 0.2 / 0.2
  after its send (no ARP); raw send-stamped outage 110 / 184 against QEMU's
  105 / 165 (within 50 ms at p95), beyond the pause 11 / 32. The first answer
  (guest SYN->SYN-ACK 33 / 54, the rest 97 / 169) and the recorder's further
  outages grew with the load: recorder 153 / 410 send-, 387 / 782
  answer-stamped.
- Switching at the source's pause instead (``migration_lab_switch_at_pause.json``,
  rejected): the destination's tap holds the pause's requests until the guest
  runs, so 3 of 20 migrations had no failed probe at all, but the burst hits
  the cold guest at once: first answers 168 / 247, the outage p95 grew (raw
  446 send-stamped, recorder 759 / 1088).
- Why the first answers are late: the new QEMU, not the pause nor the
  network. In the control (same pause, same QEMU, same run) the guest's SYN ->
  SYN-ACK is 0.9 ms against 37 / 63 after a migration, the slowest of the 10
  probes after the resume 94 against 147 (``migration_lab.json``, the last
  run, load ~11-15); 36 against 198 at load ~37, 132 against 212 at load ~84
  (``migration_lab_after_load37.json``, ``..._load84.json``). TCG's translated
  code belongs to the QEMU process: the destination's starts empty. The CPU
  sampler shows 1.8-2.0 of the 2 cores busy before the pause and after the
  resume, the destination QEMU getting 0.4-0.7 core then (the lab's own API
  server, the probers and the other labs on this host take the rest): the
  more load, the longer the cold start. That, with the pre-copy starvation
  and the slow answers after it, is what keeps the answer-stamped outage and
  the recorder's further outages above QEMU's downtime; none of it is in the
  route or the network any more (``migration_lab_after_load20.json`` and the
  last run agree: resume -> switched 1.5-2.3 median, no ARP wait).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from chaos.netns import enter_netns  # noqa: E402
from chaos.prober import http_probe  # noqa: E402
from chaos.recorder import Recorder  # noqa: E402
from cluster.api import ProbeTarget, WorkloadKind  # noqa: E402
from cluster.lab import lifecycle, net, state  # noqa: E402
from cluster.lab_cluster import LabClusterBackend, LabClusterProvider  # noqa: E402
from core.clock import RealClock  # noqa: E402
from core.errors import HarnessError  # noqa: E402
from core.timeline import EventKind, Timeline, TimelineEvent  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "migration_lab.json"
STATE = Path("/var/lib/rto-lab-migbench")
RUN = Path("/run/rto-lab-migbench")
PREFIX = "rtomb"
NODE_PREFIX = "mbn"
NODES = ("mbn1", "mbn2")
VMI = "mb1"
# What the source node's virt-handler logs once libvirt finished the migration
# (cluster.lab.kube.virt_handler), with libvirt's VIR_DOMAIN_JOB_DOWNTIME.
_MIGRATED = re.compile(r"vmi (\S+): migrated to (\S+) \(QEMU downtime ([0-9.]+|None) ms\)")
# Its monotonic stamps of the switch-over (suspend, resume, route switch).
_TIMELINE = re.compile(r"vmi (\S+): migration timeline (\{.*\})")
TRACER = Path(__file__).with_name("migration_trace.py")


def _isolate() -> None:
    """This process (module globals) and the daemons it starts (env) on the private lab."""
    state.STATE_DIR = STATE
    state.RUN_DIR = RUN
    net.NS_PREFIX = PREFIX
    net.HUB_NS = f"{PREFIX}-hub"
    os.environ["RTO_LAB_STATE_DIR"] = str(STATE)
    os.environ["RTO_LAB_RUN_DIR"] = str(RUN)
    os.environ["RTO_LAB_NS_PREFIX"] = PREFIX


def _handler_log(node: str) -> Path:
    """The node's virt-handler log (``cluster.lab.lifecycle`` starts it there)."""
    return Path(state.STATE_DIR) / "logs" / f"{node}-virt-handler.log"


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _qemu_downtime(node: str, offset: int, target: str) -> float | None:
    """QEMU's downtime (ms) of VMI's migration to ``target``, as the source
    ``node``'s virt-handler logged it past ``offset``; None if it did not."""
    try:
        with open(_handler_log(node), "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    found = [m for m in _MIGRATED.finditer(text) if m.group(1) == VMI and m.group(2) == target]
    if not found or found[-1].group(3) == "None":
        return None
    return float(found[-1].group(3))


def _handler_timeline(node: str, offset: int) -> dict[str, Any] | None:
    """The source handler's switch-over stamps of VMI's migration past ``offset``."""
    try:
        with open(_handler_log(node), "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    found = [m for m in _TIMELINE.finditer(text) if m.group(1) == VMI]
    return json.loads(found[-1].group(2)) if found else None


def _neigh(ns: str, ip: str) -> str:
    """``ip neigh`` of ``ip`` in netns ``ns`` (one line, "" when there is none)."""
    out = subprocess.run(
        ["ip", "-n", ns, "neigh", "show", ip], capture_output=True, text=True, check=False
    )
    return " ".join(out.stdout.split())


def _prober_config(rec: Recorder) -> dict[str, Any]:
    """The recorder's prober settings as they are in this checkout (they evolve)."""
    p = rec.prober
    keys = sorted(k for k in vars(p) if not k.startswith("_"))
    out: dict[str, Any] = {"good_needed": p.machine.good_needed, "ok_stamp": p.machine.ok_stamp}
    for k in keys:
        v = getattr(p, k)
        if isinstance(v, bool | int | float | str) or v is None:
            out[k] = v
    for k in ("sent", "failed", "edge_sent", "edge_failed"):
        out.pop(k, None)  # counters, not settings
    return out


class Tracer:
    """``migration_trace.py`` as a child process: raw probes and cbr0 frames."""

    def __init__(self, target: ProbeTarget, interval: float, timeout: float) -> None:
        fd, name = tempfile.mkstemp(prefix="migtrace-", suffix=".json")
        os.close(fd)
        self.out = Path(name)
        cmd = [sys.executable, str(TRACER), "--out", str(self.out), "--hub", net.HUB_NS]
        cmd += [f"--node={n}={net.node_ns(n)}" for n in NODES]
        cmd += ["--target", f"{target.host}:{target.port}", "--name", VMI]
        cmd += ["--interval", str(interval), "--timeout", str(timeout)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "tracing":
            self.proc.kill()
            raise RuntimeError(f"the tracer did not start (exit {self.proc.wait()})")

    def stop(self) -> dict[str, Any]:
        """End it (also on error) and read what it saw."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            data: dict[str, Any] = json.loads(self.out.read_text() or "{}")
        finally:
            self.out.unlink(missing_ok=True)
        return data


def _r(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


def _first(items: list[dict[str, Any]], pred: Any) -> dict[str, Any] | None:
    return next((x for x in items if pred(x)), None)


def _attribute(
    tl: dict[str, Any] | None, trace: dict[str, Any], dst: str, ip: str, window: tuple[float, float]
) -> dict[str, Any]:
    """Where one migration's outage went, from the handler's stamps, the raw
    probes and the destination's cbr0 frames (ms; stamps relative to the
    guest's resume on the destination where that is the natural origin)."""
    marks = (tl or {}).get("marks") or {}
    susp, res = marks.get("src_suspended"), marks.get("dst_resumed")
    sw0, sw = marks.get("switch_start"), marks.get("switched")
    probes = [p for p in trace.get("probes") or () if window[0] <= p["sent"] <= window[1]]
    frames = [f for f in (trace.get("frames") or {}).get(dst) or () if window[0] <= f["t"]]
    out: dict[str, Any] = {
        "switched_by": (tl or {}).get("switched_by"),
        "pause_ms": _r(res - susp) if res and susp else None,
        "resume_to_switched_ms": _r(sw - res) if sw and res else None,
        "pause_to_switched_ms": _r(sw - susp) if sw and susp else None,
        "route_call_ms": _r(sw - sw0) if sw and sw0 else None,
    }
    rarp = _first(frames, lambda f: f["kind"] == "rarp")
    out |= _cpu(trace.get("cpu") or {}, marks.get("call"), susp, res)
    pre = [
        p["answered"] - p["sent"]
        for p in probes
        if p["ok"] and susp is not None and susp - _PRE_S <= p["sent"] < susp
    ]
    out["precopy_latency_max_ms"] = _r(max(pre)) if pre else None
    out["rarp_after_resume_ms"] = _r(rarp["t"] - res) if rarp and res else None
    arp = _first(frames, lambda f: f["kind"] == "arp_req" and f["tpa"] == ip)
    rep = _first(frames, lambda f: f["kind"] == "arp_rep" and f["spa"] == ip)
    out["arp_request_after_switch_ms"] = _r(arp["t"] - sw) if arp and sw else None
    out["arp_answer_ms"] = _r(rep["t"] - arp["t"]) if arp and rep else None
    if res is not None:
        # How the guest answers once it runs again, outage or not (the pause
        # control has none): latency of the next probes sent, None = failed.
        nxt = [p for p in probes if p["sent"] >= res][:_NEXT]
        out["latencies_after_resume_ms"] = [
            _r(p["answered"] - p["sent"]) if p["ok"] else None for p in nxt
        ]
        oks = [p["answered"] - p["sent"] for p in nxt if p["ok"]]
        out["next_latency_max_ms"] = _r(max(oks)) if oks else None
        out["next_failed"] = sum(1 for p in nxt if not p["ok"])
    outs = _outages(probes)
    if not outs:
        return out | {"raw_outage_sent_ms": 0.0, "raw_outage_answered_ms": 0.0}
    # The switch-over's outage: the one around the pause (the first, without stamps).
    pivot = susp if susp is not None else outs[0]["fail"]["sent"]
    main = min(outs, key=lambda o: abs(o["fail"]["sent"] - pivot))
    fail, good = main["fail"], main["good"]
    out["raw_outages"] = len(outs)
    out["raw_other_outages"] = [
        {
            "at_ms": _r(o["fail"]["sent"] - pivot),
            "sent_ms": _r(o["good"]["sent"] - o["fail"]["sent"]) if o["good"] else None,
            "failed": o["failed"],
            "reason": o["fail"]["reason"],
        }
        for o in outs
        if o is not main
    ]
    out["raw_other_outage_sent_ms"] = _r(
        sum(o["good"]["sent"] - o["fail"]["sent"] for o in outs if o is not main and o["good"])
    )
    out["first_fail_sent_after_suspend_ms"] = _r(fail["sent"] - susp) if susp else None
    out["failed_reasons"] = sorted(
        {
            p["reason"]
            for p in probes
            if not p["ok"]
            and p["sent"] >= fail["sent"]
            and (good is None or p["sent"] < good["sent"])
        }
    )
    if good is None:
        return out
    out["raw_outage_sent_ms"] = _r(good["sent"] - fail["sent"])
    if susp is not None and res is not None:
        out["raw_outage_sent_beyond_pause_ms"] = _r(good["sent"] - fail["sent"] - (res - susp))
    out["raw_outage_answered_ms"] = _r(good["answered"] - fail["sent"])
    after = [p for p in probes if sw and sw <= p["sent"] < good["sent"] and not p["ok"]]
    out["failed_sent_after_switch"] = len(after)
    out["first_good_sent_after_switch_ms"] = _r(good["sent"] - sw) if sw else None
    out["first_good_sent_after_resume_ms"] = _r(good["sent"] - res) if res else None
    out["first_good_latency_ms"] = _r(good["answered"] - good["sent"])
    # How the guest's answers speed up again after the resume (TCG starts cold).
    later = [p for p in probes if p["sent"] >= good["sent"] and p["ok"]][:10]
    out["good_latencies_after_ms"] = [_r(p["answered"] - p["sent"]) for p in later]
    out["first_good_connect_ms"] = _r(good["connected"] - good["sent"])
    out["first_good_http_ms"] = _r(good["answered"] - good["connected"])
    sport = good["sport"]
    syn = _first(frames, lambda f: f["kind"] == "syn" and f.get("sport") == sport)
    ack = _first(frames, lambda f: f["kind"] == "synack" and f.get("dport") == sport)
    out["first_good_syn_at_dst_ms"] = _r(syn["t"] - good["sent"]) if syn else None
    out["first_good_guest_synack_ms"] = _r(ack["t"] - syn["t"]) if syn and ack else None
    # The same for the probes sent after the switch that failed anyway.
    late = after[0] if after else None
    if late is not None:
        lsyn = _first(frames, lambda f: f["kind"] == "syn" and f.get("sport") == late["sport"])
        out["first_failed_after_switch"] = {
            "sent_after_switch_ms": _r(late["sent"] - sw) if sw else None,
            "reason": late["reason"],
            "syn_at_dst_ms": _r(lsyn["t"] - late["sent"]) if lsyn else None,
        }
    return out


_ATTRIBUTION_KEYS = (
    "pause_ms",
    "resume_to_switched_ms",
    "pause_to_switched_ms",
    "route_call_ms",
    "rarp_after_resume_ms",
    "arp_request_after_switch_ms",
    "arp_answer_ms",
    "first_fail_sent_after_suspend_ms",
    "raw_outages",
    "raw_other_outage_sent_ms",
    "raw_outage_sent_ms",
    "raw_outage_sent_beyond_pause_ms",
    "raw_outage_answered_ms",
    "next_latency_max_ms",
    "next_failed",
    "failed_sent_after_switch",
    "first_good_sent_after_switch_ms",
    "first_good_sent_after_resume_ms",
    "first_good_latency_ms",
    "first_good_connect_ms",
    "first_good_http_ms",
    "first_good_syn_at_dst_ms",
    "first_good_guest_synack_ms",
    "precopy_latency_max_ms",
    "host_busy_cores_precopy",
    "host_busy_cores_after_resume",
    "dst_qemu_cores_after_resume",
)
_PAUSE_KEYS = (
    "pause_ms",
    "raw_outage_sent_ms",
    "raw_outage_answered_ms",
    "next_latency_max_ms",
    "next_failed",
    "host_busy_cores_after_resume",
    "dst_qemu_cores_after_resume",
    "first_good_sent_after_resume_ms",
    "first_good_latency_ms",
    "first_good_connect_ms",
    "first_good_http_ms",
    "first_good_guest_synack_ms",
)
_COMPARED = (
    "qemu_downtime_ms",
    "probe_unavailable_ms",
    "probe_unavailable_sent_stamp_ms",
    "diff_ms",
    "diff_sent_stamp_ms",
)


def _compared(path: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """This run's headline figures beside those of the result file ``path``."""
    other = json.loads(path.read_text())
    theirs = other.get("summary") or {}
    out: dict[str, Any] = {
        "file": str(path.relative_to(ROOT) if path.is_absolute() else path),
        "path": other.get("path"),
        "migrations": {"baseline": theirs.get("migrations"), "this": summary.get("migrations")},
    }
    for key in _COMPARED:
        out[key] = {"baseline": theirs.get(key), "this": summary.get(key)}
    mine, base = summary.get("attribution") or {}, theirs.get("attribution") or {}
    for key in _ATTRIBUTION_KEYS:
        if key in mine or key in base:
            out[f"attribution.{key}"] = {"baseline": base.get(key), "this": mine.get(key)}
    return out


def _attribution_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def acol(key: str) -> list[float]:
        vals = (r.get("attribution", {}).get(key) for r in rows)
        return [v for v in vals if isinstance(v, int | float)]

    out: dict[str, Any] = {key: _summary(acol(key)) for key in _ATTRIBUTION_KEYS}
    out["switched_by"] = sorted({str(r.get("attribution", {}).get("switched_by")) for r in rows})
    return out


def _reattribute(result_path: Path, trace_path: Path) -> int:
    """Attribution of an earlier result file again, from the trace it kept
    (``--trace-out``), with this version's analysis; the file is rewritten."""
    result = json.loads(result_path.read_text())
    trace = json.loads(trace_path.read_text())
    settle = float(result["config"].get("settle_s", 1.5))
    ip = result["config"].get("guest_ip")
    for row in result["migrations"]:
        tl = row.get("handler_timeline")
        marks = (tl or {}).get("marks") or {}
        win = row.get("window") or [marks["call"] - 0.1, marks["returned"] + settle]
        guest = ip or row["neigh_after_dst"].split()[0]
        row["attribution"] = _attribute(tl, trace, str(row["to"]), guest, (win[0], win[1]))
    result["summary"]["attribution"] = _attribution_summary(result["migrations"])
    result["reattributed_from"] = str(trace_path)
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"]["attribution"], indent=2))
    return 0


def _pause_cycles(node: str, count: int, pause_s: float, settle: float) -> list[dict[str, Any]]:
    """Pause and resume the VMI ``count`` times in its own QEMU (libvirt, directly).

    The control for the migration's first answers: the same stop of the vCPU
    for as long, but in a QEMU that keeps its translated code and its memory
    mappings, and with no route or neighbour change.
    """
    import libvirt

    from cluster.lab import virt, virtd

    clock = RealClock()
    out: list[dict[str, Any]] = []
    conn = virt.connect(virtd.node_uri(node))
    try:
        dom = conn.lookupByName(VMI)
        for _ in range(count):
            t0 = clock.now()
            dom.suspend()
            suspended = clock.now()
            clock.sleep(pause_s)
            dom.resume()
            resumed = clock.now()
            clock.sleep(settle)
            out.append(
                {
                    "node": node,
                    "suspended": suspended,
                    "resumed": resumed,
                    "call_ms": _r(resumed - t0),
                    "window": (t0, clock.now()),
                }
            )
    except libvirt.libvirtError as exc:
        raise RuntimeError(f"pause/resume of {VMI} on {node} failed: {exc}") from exc
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
    return out


_NEXT = 10  # probes after the resume whose latency is kept
_PRE_S = 0.5  # the window before the pause and after the resume the CPU is read over
_POST_S = 0.3


def _cpu(
    cpu: dict[str, Any], call: float | None, susp: float | None, res: float | None
) -> dict[str, Any]:
    """Host busy cores and each QEMU's cores before the pause and after the resume."""
    samples = cpu.get("samples") or []
    if not samples or susp is None or res is None or call is None:
        return {}
    hz = float(cpu.get("ticks_per_s") or 100)
    first = {int(k): v for k, v in (cpu.get("qemu_first_seen") or {}).items()}
    # The destination's QEMU is the one that appeared after the migration began.
    new = [pid for pid, t in first.items() if t >= call - 0.3]
    dst = str(max(new, key=lambda p: first[p])) if new else None

    def window(a: float, b: float) -> tuple[float | None, float | None]:
        inside = [x for x in samples if a <= x["t"] <= b]
        if len(inside) < 2:
            return None, None
        x0, x1 = inside[0], inside[-1]
        dt = x1["t"] - x0["t"]
        cores = (x1["busy"] - x0["busy"]) / hz / dt
        both = set(x0["qemu"]) & set(x1["qemu"])
        # No migration (the pause control): the one QEMU that ran throughout.
        pid = dst if dst is not None else (next(iter(both)) if len(both) == 1 else None)
        q = None
        if pid is not None and pid in both:
            q = (x1["qemu"][pid] - x0["qemu"][pid]) / hz / dt
        return cores, q

    pre_host, _ = window(susp - _PRE_S, susp)
    post_host, post_dst = window(res, res + _POST_S)
    return {
        "host_busy_cores_precopy": _r2(pre_host),
        "host_busy_cores_after_resume": _r2(post_host),
        "dst_qemu_cores_after_resume": _r2(post_dst),
    }


def _r2(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _probe_ms(target: ProbeTarget, timeout: float) -> float | None:
    """One probe as the recorder sends it, from the target's netns (the hub):
    its latency in ms, None if it failed."""
    out: list[float | None] = []
    err: list[BaseException] = []

    def body() -> None:
        try:
            if target.netns is not None:
                enter_netns(target.netns)
            t0 = time.perf_counter()
            good, _instance, _reason = asyncio.run(http_probe(target, timeout, expect_name=VMI))
            out.append((time.perf_counter() - t0) * 1000 if good else None)
        except BaseException as exc:
            err.append(exc)

    t = threading.Thread(target=body, name="healthz-latency")
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, round(q * (len(s) - 1)))], 1)


def _summary(values: list[float]) -> dict[str, float | None]:
    return {
        "median": round(statistics.median(values), 1) if values else None,
        "p95": _pct(values, 0.95),
        "min": round(min(values), 1) if values else None,
        "max": round(max(values), 1) if values else None,
    }


def _outage(events: list[TimelineEvent], start: float, end: float) -> tuple[float, float, int]:
    """(ms answer-stamped, ms send-stamped, outages) of PROBE_FAIL..PROBE_OK in [start, end]."""
    total = sent = 0.0
    n = 0
    down: float | None = None
    for e in events:
        if not start <= e.t <= end:
            continue
        if e.kind is EventKind.PROBE_FAIL and down is None:
            down = e.t
        elif e.kind is EventKind.PROBE_OK and down is not None:
            latency = float(e.data.get("latency_ms", "0") or 0) / 1000
            total += e.t - down
            sent += max(0.0, e.t - latency - down)
            n += 1
            down = None
    return total * 1000, sent * 1000, n


def _transitions(timeline: Timeline, start: float, end: float) -> list[tuple[float, str, str]]:
    """PROBE_FAIL/PROBE_OK of [start, end] (timeline-relative): (monotonic s, kind, detail)."""
    out = []
    for e in timeline.events():
        if start <= e.t <= end and e.kind in (EventKind.PROBE_FAIL, EventKind.PROBE_OK):
            detail = e.data.get("latency_ms", "") if e.kind is EventKind.PROBE_OK else e.message
            out.append((e.t + timeline.origin, e.kind.value, detail))
    return out


def _outages(probes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Raw outages: first failed probe .. next good one (one good probe ends it)."""
    out: list[dict[str, Any]] = []
    fail: dict[str, Any] | None = None
    n = 0
    for p in probes:
        if not p["ok"]:
            fail = fail or p
            n += 1
        elif fail is not None:
            out.append({"fail": fail, "good": p, "failed": n})
            fail, n = None, 0
    if fail is not None:
        out.append({"fail": fail, "good": None, "failed": n})
    return out


def _ms(value: str) -> float | None:
    return float(value) if value else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--timeout", type=float, default=0.25)
    ap.add_argument("--settle", type=float, default=1.5)
    ap.add_argument("--out", type=Path, default=RESULTS)
    # The guest's i6300esb timeout: 0 keeps the driver default (30 s). With 2 s a
    # migration that slows the TCG guest for > 2 s gets it reset by its watchdog.
    ap.add_argument("--wdt", type=int, default=0)
    # The raw prober and the cbr0 sniffers (a child process): per-migration attribution.
    ap.add_argument("--no-trace", dest="trace", action="store_false")
    # An earlier result file to put side by side with this one ("compared_with").
    ap.add_argument("--baseline", type=Path)
    # Where to keep the raw trace (every probe and frame; large): not kept by default.
    ap.add_argument("--trace-out", type=Path)
    # After the migrations: this many plain pause/resume cycles of the VMI, as
    # long as the median QEMU downtime (the same QEMU: warm, no route change).
    ap.add_argument("--pauses", type=int, default=10)
    # Analyse an earlier result file again from its kept trace (no lab): FILE TRACE.
    ap.add_argument("--reattribute", nargs=2, type=Path, metavar=("RESULT", "TRACE"))
    args = ap.parse_args()
    if args.reattribute is not None:
        return _reattribute(*args.reattribute)
    if os.geteuid() != 0:
        print("needs root (namespaces, libvirtd)", file=sys.stderr)
        return 2
    _isolate()

    clock = RealClock()
    rows: list[dict[str, Any]] = []
    latency: list[float] = []
    lab: LabClusterBackend | None = None
    rec: Recorder | None = None
    tracer: Tracer | None = None
    trace: dict[str, Any] = {}
    windows: list[tuple[float, float]] = []
    timelines: list[dict[str, Any] | None] = []
    transitions: list[list[tuple[float, str, str]]] = []
    guest_ip = ""
    prober_cfg: dict[str, Any] = {}
    pauses: list[dict[str, Any]] = []

    def col(key: str) -> list[float]:
        return [r[key] for r in rows if r[key] is not None]

    error: str | None = None
    boot_s = 0.0
    baseline: dict[str, Any] = {}
    try:
        lifecycle.lab_down()
        lifecycle.lab_up("fast", len(NODES), node_prefix=NODE_PREFIX, vms=True)
        made = LabClusterProvider().backend()
        assert isinstance(made, LabClusterBackend)
        lab = made
        lab.create_workload(VMI, WorkloadKind.VMI, NODES[0], watchdog_heartbeat_s=args.wdt or None)
        t_boot = clock.now()
        first = lab.wait_ready(VMI, 180)
        if first is None:
            raise RuntimeError(f"VMI {VMI} was not Ready within 180 s")
        boot_s = clock.now() - t_boot
        print(f"VMI up in {boot_s:.1f} s (instance {first.instance})", flush=True)
        target = lab.probe_target(VMI)
        if target is None:
            raise RuntimeError(f"VMI {VMI} is Ready but has no address")
        for _ in range(40):  # the guest's /healthz latency without any migration
            ms = _probe_ms(target, 1.0)
            if ms is not None:
                latency.append(ms)
            clock.sleep(0.05)
        print(f"healthz latency: {_summary(latency)}", flush=True)
        guest_ip = target.host
        if args.trace:
            tracer = Tracer(target, args.interval, args.timeout)

        timeline = Timeline(origin=clock.now())
        rec = Recorder(lab, VMI, timeline, clock, interval=args.interval, timeout=args.timeout)
        rec.start()
        prober_cfg = _prober_config(rec)
        if not rec.wait_until_up(30):
            raise RuntimeError(
                f"the recorder ({args.interval * 1000:.0f} ms probes, {args.timeout * 1000:.0f}"
                " ms timeout) never saw the VMI up in 30 s: the guest's /healthz is slower"
                f" than that under this load (latency {_summary(latency)})"
            )
        clock.sleep(args.settle)
        base_start = clock.now() - timeline.origin
        failed0 = rec.probes_failed
        clock.sleep(2 * args.settle)
        base_ms, _, base_n = _outage(timeline.events(), base_start, clock.now() - timeline.origin)
        baseline = {
            "window_s": 2 * args.settle,
            "outages": base_n,
            "unavailable_ms": round(base_ms, 1),
            "probes_failed": rec.probes_failed - failed0,
        }
        print(f"baseline without migration: {baseline}", flush=True)
        for n in range(1, args.count + 1):
            here = lab.workload(VMI).node
            if here not in NODES:
                raise RuntimeError(f"VMI {VMI} is on {here!r}, not on one of {NODES}")
            dst = NODES[1] if here == NODES[0] else NODES[0]
            log_at = _log_size(_handler_log(here))
            neigh_before = {
                "dst": _neigh(net.node_ns(dst), guest_ip),
                "hub": _neigh(net.HUB_NS, guest_ip),
            }
            failed0 = rec.probes_failed
            t0 = clock.now() - timeline.origin
            out = lab.migrate(VMI, dst)
            t1 = clock.now() - timeline.origin
            clock.sleep(args.settle)
            rec.wait_until_recovered(t0 + timeline.origin, 30)
            windows.append((t0 + timeline.origin, clock.now()))
            timelines.append(_handler_timeline(here, log_at))
            t_end = clock.now() - timeline.origin
            ms, ms_sent, outages = _outage(timeline.events(), t0, t_end)
            transitions.append(_transitions(timeline, t0, t_end))
            qemu = _qemu_downtime(here, log_at, dst)
            w = lab.workload(VMI)
            row = {
                "n": n,
                "from": out["source"],
                "to": out["target"],
                "qemu_downtime_ms": qemu,
                "kubevirt_total_ms": _ms(out["total_ms"]),
                "call_ms": round((t1 - t0) * 1000, 1),
                "probe_unavailable_ms": round(ms, 1),
                "probe_unavailable_sent_stamp_ms": round(ms_sent, 1),
                "probe_outages": outages,
                "probes_failed": rec.probes_failed - failed0,
                "diff_ms": None if qemu is None else round(ms - qemu, 1),
                "diff_sent_stamp_ms": None if qemu is None else round(ms_sent - qemu, 1),
                "same_instance": w.instance == first.instance,
                "neigh_before": neigh_before,
                "neigh_after_dst": _neigh(net.node_ns(dst), guest_ip),
            }
            rows.append(row)
            print(
                f"{n:2d} {row['from']}->{row['to']} qemu {qemu} ms "
                f"(call {row['call_ms']} ms) probe {row['probe_unavailable_ms']} ms "
                f"(sent-stamped {row['probe_unavailable_sent_stamp_ms']}) "
                f"failed {row['probes_failed']} same {row['same_instance']}",
                flush=True,
            )
        if args.pauses and rows:
            # The control: the same pause, without a new QEMU (see _pause_cycles).
            qemu_ms = _summary(col("qemu_downtime_ms"))["median"]
            pause_s = (qemu_ms or 100.0) / 1000
            pauses = _pause_cycles(str(lab.workload(VMI).node), args.pauses, pause_s, args.settle)
    except (RuntimeError, HarnessError) as exc:
        error = str(exc)
        print(f"ERROR: {error}", file=sys.stderr, flush=True)
    finally:
        try:
            if rec is not None:
                rec.stop()
            if tracer is not None:
                trace = tracer.stop()
        finally:
            if lab is not None:
                lab.close()
            lifecycle.lab_down()

    for row, tl, win, trs in zip(rows, timelines, windows, transitions, strict=False):
        row["handler_timeline"] = tl
        row["window"] = [round(win[0], 6), round(win[1], 6)]
        susp = ((tl or {}).get("marks") or {}).get("src_suspended")
        # The recorder's transitions, ms from the source's pause (what made its outages).
        row["recorder_transitions"] = [
            [_r(t - susp) if susp else None, kind, what] for t, kind, what in trs
        ]
        if trace:
            row["attribution"] = _attribute(tl, trace, str(row["to"]), guest_ip, win)
    pause_rows = []
    for p in pauses:
        marks = {"call": p["window"][0], "src_suspended": p["suspended"]}
        marks["dst_resumed"] = p["resumed"]
        marks["switched"] = p["suspended"]  # no route change: the route is right all along
        a = _attribute({"marks": marks}, trace, p["node"], guest_ip, p["window"]) if trace else {}
        pause_rows.append(
            {
                "call_ms": p["call_ms"],
                "suspended": round(p["suspended"], 6),
                "resumed": round(p["resumed"], 6),
                "attribution": a,
            }
        )
    if trace and args.trace_out is not None:
        args.trace_out.write_text(json.dumps(trace))

    summary: dict[str, Any] = {
        key: _summary(col(key))
        for key in (
            "qemu_downtime_ms",
            "kubevirt_total_ms",
            "call_ms",
            "probe_unavailable_ms",
            "probe_unavailable_sent_stamp_ms",
            "diff_ms",
            "diff_sent_stamp_ms",
            "probes_failed",
        )
    } | {
        "migrations": len(rows),
        "same_instance_all": all(r["same_instance"] for r in rows),
    }
    if trace:
        summary["attribution"] = _attribution_summary(rows)
    med_probe = _summary(col("probe_unavailable_ms"))["median"]
    med_diff = _summary(col("diff_ms"))["median"]
    result = {
        "benchmark": "migration_lab",
        "path": "LabClusterBackend.migrate: VirtualMachineInstanceMigration on the lab's "
        "real API server, the lab's virt-controller and virt-handlers",
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg": list(os.getloadavg()),
            "kernel": platform.release(),
        },
        "config": {
            "probe_interval_s": args.interval,
            "probe_timeout_s": args.timeout,
            "settle_s": args.settle,
            "count": args.count,
            "boot_s": round(boot_s, 2),
            "watchdog_heartbeat_s": args.wdt or "driver default (30)",
            "recorder_prober": prober_cfg,
            "guest_ip": guest_ip,
            "trace": args.trace,
        },
        "error": error,
        "healthz_latency_ms": _summary(latency),
        "baseline": baseline,
        "summary": summary,
        "targets": {
            "probe_unavailable_median_le_200ms": None if med_probe is None else med_probe <= 200,
            "median_within_50ms_of_qemu": None if med_diff is None else abs(med_diff) <= 50,
        },
        "migrations": rows,
    }
    if trace:
        result["trace_errors"] = {
            "prober": trace.get("prober_error"),
            "sniffers": trace.get("sniffer_errors"),
        }
    if pause_rows:
        result["pause_control"] = {
            "what": "virDomainSuspend/Resume of the VMI in its QEMU, as long as the median "
            "QEMU downtime: the outage and the first answers without a migration",
            "summary": {
                key: _summary(
                    [
                        v
                        for r in pause_rows
                        if isinstance(v := r["attribution"].get(key), int | float)
                    ]
                )
                for key in _PAUSE_KEYS
            },
            "pauses": pause_rows,
        }
    if args.baseline is not None:
        result["compared_with"] = _compared(args.baseline, summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"healthz_latency_ms": result["healthz_latency_ms"], **summary}, indent=2))
    print(f"wrote {args.out}")
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
