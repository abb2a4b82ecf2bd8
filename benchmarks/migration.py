"""How long is a live-migrated lab VMI really unavailable, vs what QEMU reports?

Run by hand as root (``.venv/bin/python benchmarks/migration.py``); writes
``benchmarks/results/migration.json`` and prints a table. It builds a throw-away
two-node network (``virtd.ScratchNet`` with prefix ``rtovb``, a private runtime
directory), starts the two node libvirtds, boots the lab guest on node 1 and
live-migrates it back and forth ``--count`` times (20), while from the hub
netns:

* an ICMP echo every ``--interval`` (10 ms): answered by the guest kernel, so
  it sees exactly when the guest's network stops and starts again;
* the harness's own HTTP prober (``chaos.prober``) on ``/healthz`` every 50 ms
  (the guest's handler is a shell script that takes 0.1-0.3 s under TCG, so
  probing it every 10 ms would measure the overload, not the migration).

The hub's /32 route to the guest is moved to the destination node when the
destination libvirtd reports "Resumed/Migrated" (a CNI/Service endpoint update
in real life; both nodes' cbr0 carry the same anycast gateway IP and MAC).
Per migration: QEMU's downtime (VIR_DOMAIN_JOB_DOWNTIME) and total time, the
migrate call's wall time, ICMP probes lost and the longest ICMP gap minus one
interval, and HTTP unavailability (PROBE_FAIL..PROBE_OK). Everything is torn
down at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import platform
import shutil
import socket
import statistics
import struct
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from chaos.netns import enter_netns  # noqa: E402
from chaos.prober import Prober, Transition  # noqa: E402
from cluster.api import ProbeTarget  # noqa: E402
from cluster.lab import state  # noqa: E402
from cluster.lab.accel import accelerator  # noqa: E402
from core.clock import RealClock  # noqa: E402
from core.timeline import EventKind  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "migration.json"
VMI = "vb-mig"
NODES = ("vt1", "vt2")


class Pinger:
    """ICMP echo every ``interval`` from a netns; records send and reply times."""

    def __init__(self, netns: str, dst: str, interval: float) -> None:
        self.netns, self.dst, self.interval = netns, dst, interval
        self.clock = RealClock()
        self.sent: list[float] = []
        self.replied: dict[int, float] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._ident = os.getpid() & 0xFFFF
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None

    def start(self) -> None:
        t = threading.Thread(target=self._send_loop, name="pinger", daemon=True)
        t.start()
        self._threads.append(t)
        self._ready.wait()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        if self._sock is not None:
            self._sock.close()

    @staticmethod
    def _checksum(data: bytes) -> int:
        if len(data) % 2:
            data += b"\0"
        s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
        s = (s >> 16) + (s & 0xFFFF)
        s += s >> 16
        return ~s & 0xFFFF

    def _packet(self, seq: int) -> bytes:
        head = struct.pack("!BBHHH", 8, 0, 0, self._ident, seq & 0xFFFF)
        payload = b"rto-migration-bench"
        csum = self._checksum(head + payload)
        return struct.pack("!BBHHH", 8, 0, csum, self._ident, seq & 0xFFFF) + payload

    def _send_loop(self) -> None:
        try:
            enter_netns(self.netns)
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            self._sock.settimeout(0.2)
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            return
        recv = threading.Thread(target=self._recv_loop, name="pinger-recv", daemon=True)
        recv.start()
        self._threads.append(recv)
        self._ready.set()
        t0 = self.clock.now()
        k = 0
        while not self._stop.is_set():  # the pinger's daemon loop, on a fixed grid
            self.clock.sleep(t0 + k * self.interval - self.clock.now())
            self.sent.append(self.clock.now())
            # No route during the switch is a lost probe, which is the measurement.
            with contextlib.suppress(OSError):
                self._sock.sendto(self._packet(k), (self.dst, 0))
            k += 1

    def _recv_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data = self._sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            now = self.clock.now()
            ihl = (data[0] & 0x0F) * 4
            typ, _, _, ident, seq16 = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            if typ != 0 or ident != self._ident:
                continue
            # The newest probe with this 16-bit sequence number.
            idx = len(self.sent) - 1
            idx -= (idx - seq16) % 65536
            if idx >= 0 and idx not in self.replied:
                self.replied[idx] = now

    def window(self, start: float, end: float, stop_at: float | None = None) -> dict[str, Any]:
        """Probes sent in [start, end]; the outage is the gap around ``stop_at``.

        ``unavailable_ms``: send time of the first answered probe after the
        guest stopped minus that of the last answered one before it, minus one
        interval (no loss gives 0). A TCG guest under load also drops probes
        away from the migration; those are counted, not taken as the outage.
        """
        idxs = [i for i, t in enumerate(self.sent) if start <= t <= end]
        ok = [i for i in idxs if i in self.replied]
        rtts = sorted(self.replied[i] - self.sent[i] for i in ok)
        gap = 0.0
        if stop_at is not None:
            before = [i for i in ok if self.sent[i] <= stop_at]
            after = [i for i in ok if self.sent[i] > stop_at]
            if before and after:
                gap = self.sent[after[0]] - self.sent[before[-1]]
            elif before or after:
                gap = end - start  # never answered on one side: the whole window
        else:
            gap = max((self.sent[b] - self.sent[a] for a, b in itertools.pairwise(ok)), default=0.0)
        return {
            "probes": len(idxs),
            "lost": len(idxs) - len(ok),
            "unavailable_ms": round(max(0.0, gap - self.interval) * 1000, 1),
            "rtt_median_ms": round(statistics.median(rtts) * 1000, 1) if rtts else None,
            "rtt_max_ms": round(rtts[-1] * 1000, 1) if rtts else None,
        }


def _call(fn: Any, index: int, ev: Any) -> None:
    fn(ev, index)


def _http_window(transitions: list[Transition], start: float, end: float) -> float:
    """Summed PROBE_FAIL..PROBE_OK time (ms) inside the window."""
    total, down = 0.0, None
    for tr in transitions:
        if not start <= tr.at <= end:
            continue
        if tr.kind == EventKind.PROBE_FAIL and down is None:
            down = tr.at
        elif tr.kind == EventKind.PROBE_OK and down is not None:
            total += tr.at - down
            down = None
    if down is not None:
        total += end - down
    return round(total * 1000, 1)


def _valid(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["icmp"]["lost"] <= 0.2 * r["icmp"]["probes"]]


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "min": round(ordered[0], 1),
        "median": round(statistics.median(ordered), 1),
        "p95": round(p95, 1),
        "max": round(ordered[-1], 1),
    }


def run(count: int, interval: float, http_interval: float, settle: float) -> dict[str, Any]:
    state.RUN_DIR = Path("/run/rtovb")  # private: a lab clean-up cannot take it
    from cluster.lab import virt, virtd
    from cluster.lab.guest.build import READY_MARKER, build_guest

    net = virtd.ScratchNet(prefix="rtovb")
    ip = net.vmi_ip(10)
    clock = RealClock()
    conns: dict[str, Any] = {}
    events: list[virt.VirtEvents] = []
    disk = Path(state.STATE_DIR) / "bench-migration-disk.img"  # ext4: O_DIRECT works
    pinger: Pinger | None = None
    prober: Prober | None = None
    transitions: list[Transition] = []
    switched: list[tuple[float, str]] = []
    rows: list[dict[str, Any]] = []
    try:
        net.create()
        for i, node in enumerate(NODES, start=1):
            uri = virtd.start_node_libvirtd(
                node, i, listen_ip=net.node_ip(i), netns=net.node_ns(node), cgroup=False
            )
            conns[node] = virt.connect(uri)

        def on_event(ev: virt.VirtEvent, index: int) -> None:
            if ev.domain == VMI and (ev.reason, ev.detail) == ("Resumed", "Migrated"):
                net.route_vmi(ip, index)  # the endpoint update, as soon as it runs there
                switched.append((clock.now(), ev.node))

        for i, node in enumerate(NODES, start=1):
            events.append(
                virt.VirtEvents(conns[node], node, listener=functools.partial(_call, on_event, i))
            )
        guest = build_guest()
        disk.parent.mkdir(parents=True, exist_ok=True)
        disk.write_bytes(b"\0" * (4 << 20))
        dom = virt.define_vmi(conns["vt1"], VMI, "vt1", f"{ip}/24", net.vmi_gw, guest, disk)
        log = virt.console_log(VMI)
        after = log.stat().st_size if log.exists() else 0
        t_boot = clock.now()
        dom.create()
        ready = virt.wait_console(VMI, READY_MARKER, after=after, timeout=120)
        boot_s = clock.now() - t_boot
        print(f"guest up in {boot_s:.1f} s: {ready}", flush=True)
        net.route_vmi(ip, 1)

        pinger = Pinger(net.hub_ns, ip, interval)
        pinger.start()
        prober = Prober(
            lambda: ProbeTarget(ip, 80, "/healthz", netns=net.hub_ns),
            transitions.append,
            interval=http_interval,
            timeout=1.0,
            good_needed=3,
            ok_stamp="sent",
            expect_name=VMI,
            name="http-prober",
        )
        prober.start()
        clock.sleep(settle * 2)
        t_base = clock.now()
        clock.sleep(settle * 2)
        baseline = pinger.window(t_base, clock.now())
        print(f"baseline (no migration): icmp {baseline}", flush=True)
        here = 0
        for n in range(count):
            src, dst = NODES[here], NODES[1 - here]
            dst_ip = net.node_ip(2 - here)
            t0 = clock.now()
            stats = virt.migrate_vmi(conns[src], virtd.node_tcp_uri(dst_ip), dst_ip, VMI)
            t1 = clock.now()
            clock.sleep(settle)
            src_ev = next(
                (e.at for e in events[here].events()
                 if e.at >= t0 and (e.reason, e.detail) == ("Suspended", "Migrated")),
                None,
            )  # fmt: skip
            dst_ev = next(
                (e.at for e in events[1 - here].events()
                 if e.at >= t0 and (e.reason, e.detail) == ("Resumed", "Migrated")),
                None,
            )  # fmt: skip
            icmp = pinger.window(t0 - 0.1, t1 + settle - 0.1, stop_at=src_ev)
            route = next((t for t, node in reversed(switched) if node == dst and t >= t0), None)
            row = {
                "n": n + 1,
                "from": src,
                "to": dst,
                "qemu_downtime_ms": stats.downtime_ms,
                "qemu_total_ms": stats.total_ms,
                "wall_ms": round(stats.wall_s * 1000, 1),
                "memory_iterations": stats.memory_iterations,
                "libvirt_paused_to_resumed_ms": (
                    None if src_ev is None or dst_ev is None else round((dst_ev - src_ev) * 1000, 1)
                ),
                "data_mib": round((stats.data_total or 0) / 2**20, 1),
                "route_switch_after_call_start_ms": (
                    None if route is None else round((route - t0) * 1000, 1)
                ),
                "icmp": icmp,
                "http_unavailable_ms": _http_window(transitions, t0 - 0.1, t1 + settle - 0.1),
            }
            rows.append(row)
            print(
                f"{n + 1:2d} {src}->{dst} qemu downtime {stats.downtime_ms} ms, "
                f"total {stats.total_ms} ms, wall {row['wall_ms']} ms, events "
                f"{row['libvirt_paused_to_resumed_ms']} ms | icmp lost "
                f"{icmp['lost']}/{icmp['probes']}, gap {icmp['unavailable_ms']} ms | "
                f"http down {row['http_unavailable_ms']} ms",
                flush=True,
            )
            here = 1 - here
        return {
            "benchmark": "migration",
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg": os.getloadavg(),
                "kernel": platform.release(),
                "accel": accelerator().accel,
            },
            "config": {
                "count": count,
                "icmp_interval_s": interval,
                "http_interval_s": http_interval,
                "settle_s": settle,
                "guest_memory_mib": virt.MEMORY_MIB,
                "boot_s": round(boot_s, 2),
            },
            "baseline_icmp": baseline,
            "migrations": rows,
            "summary": {
                "qemu_downtime_ms": _stats(
                    [r["qemu_downtime_ms"] for r in rows if r["qemu_downtime_ms"] is not None]
                ),
                # Only windows where the pinger was heard at all: under TCG load the
                # guest sometimes answers no ICMP for seconds while HTTP still works.
                "icmp_unavailable_ms": _stats([r["icmp"]["unavailable_ms"] for r in _valid(rows)]),
                "icmp_valid_windows": len(_valid(rows)),
                "qemu_downtime_ms_same_windows": _stats(
                    [
                        r["qemu_downtime_ms"]
                        for r in _valid(rows)
                        if r["qemu_downtime_ms"] is not None
                    ]
                ),
                "http_unavailable_ms": _stats([r["http_unavailable_ms"] for r in rows]),
                "libvirt_paused_to_resumed_ms": _stats(
                    [
                        r["libvirt_paused_to_resumed_ms"]
                        for r in rows
                        if r["libvirt_paused_to_resumed_ms"] is not None
                    ]
                ),
                "wall_ms": _stats([r["wall_ms"] for r in rows]),
                "qemu_total_ms": _stats(
                    [r["qemu_total_ms"] for r in rows if r["qemu_total_ms"] is not None]
                ),
            },
        }
    finally:
        if prober is not None:
            prober.stop()
        if pinger is not None:
            pinger.stop()
        for ev in events:
            ev.close()
        for conn in conns.values():
            virt.destroy_vmi(conn, VMI)
            conn.close()
        for node in NODES:
            virtd.purge_node_libvirtd(node)
        net.delete()
        disk.unlink(missing_ok=True)
        virt.console_log(VMI).unlink(missing_ok=True)
        shutil.rmtree(state.RUN_DIR, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--interval", type=float, default=0.02, help="ICMP probe interval (s)")
    ap.add_argument("--http-interval", type=float, default=0.05)
    ap.add_argument("--settle", type=float, default=1.5, help="seconds after each migration")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    result = run(args.count, args.interval, args.http_interval, args.settle)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
