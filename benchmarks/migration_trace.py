"""Per-probe and per-packet trace of a lab VMI's live migrations (a helper process).

Started by ``benchmarks/migration_lab.py`` as a child process (its own GIL, so
it does not slow the recorder's prober that is being measured) with
``python benchmarks/migration_trace.py --out FILE --hub NS --node NODE=NS ...
--target IP:PORT --name VMI``; runs until SIGTERM/SIGINT, then writes FILE.

Three things, every stamp on the host's monotonic clock (the one the recorder,
the virt-handlers and libvirt's event callbacks use):

- a raw prober in the hub netns: a GET ``/healthz`` every ``--interval`` with
  the recorder's timeout, logging each probe's send, TCP connect, answer,
  outcome and local port (bound before the SYN leaves, so a probe whose
  connect never completed can still be matched with its SYN on a node);
- the host's CPU (``/proc/stat``) and the guest's QEMUs' (``/proc/PID/stat``)
  every interval: whether a slow guest lacked a core, and to whom;
- a sniffer on each node's ``cbr0`` (AF_PACKET with a kernel filter: ARP,
  RARP, ICMP and TCP segments with SYN set; kernel receive stamps): when a
  probe's SYN reached the node hosting the guest, when the guest answered it,
  when the node asked for the guest's MAC and got it, and when QEMU's
  post-migration announce (RARP) left the destination.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from chaos.netns import enter_netns  # noqa: E402

_ETH_P_ALL = 0x0003
_SO_ATTACH_FILTER = 26
_SO_TIMESTAMPNS = 35
_PACKET_OUTGOING = 4
# Classic BPF: accept ARP (0x0806), RARP (0x8035), IPv4 ICMP, and IPv4 TCP
# non-fragments with SYN set; drop the rest (the probes' data segments, which
# would cost this process a wake-up each on a 2-core host).
_FILTER = [
    (0x28, 0, 0, 12),  # ldh [12]            ethertype
    (0x15, 10, 0, 0x0806),  # jeq ARP   -> accept
    (0x15, 9, 0, 0x8035),  # jeq RARP  -> accept
    (0x15, 0, 9, 0x0800),  # jne IPv4  -> drop
    (0x30, 0, 0, 23),  # ldb [23]            IP protocol
    (0x15, 6, 0, 1),  # jeq ICMP  -> accept
    (0x15, 0, 6, 6),  # jne TCP   -> drop
    (0x28, 0, 0, 20),  # ldh [20]            fragment offset
    (0x45, 4, 0, 0x1FFF),  # jset frag -> drop
    (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf)   IP header length
    (0x50, 0, 0, 27),  # ldb [x+27]          TCP flags (14 + 13)
    (0x45, 0, 1, 0x02),  # jset SYN -> accept, else drop
    (0x06, 0, 0, 0x40000),  # accept
    (0x06, 0, 0, 0),  # drop
]


def _attach_filter(sock: socket.socket) -> None:
    # The kernel copies the program at attach time: the buffer may go after.
    code = b"".join(struct.pack("HBBI", *ins) for ins in _FILTER)
    buf = ctypes.create_string_buffer(code)
    prog = struct.pack("HL", len(_FILTER), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, prog)


def _mono_offset() -> float:
    """CLOCK_REALTIME - CLOCK_MONOTONIC now (kernel packet stamps are realtime)."""
    a = time.time()
    m = time.monotonic()
    b = time.time()
    return (a + b) / 2 - m


def _ip(b: bytes) -> str:
    return socket.inet_ntoa(b)


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def parse_frame(frame: bytes) -> dict[str, Any] | None:
    """What the filter let through, as a small record; None for anything else."""
    if len(frame) < 14:
        return None
    ethertype = struct.unpack("!H", frame[12:14])[0]
    src_mac = _mac(frame[6:12])
    if ethertype in (0x0806, 0x8035) and len(frame) >= 42:
        op = struct.unpack("!H", frame[20:22])[0]
        kind = "rarp" if ethertype == 0x8035 else ("arp_req" if op == 1 else "arp_rep")
        return {
            "kind": kind,
            "mac": src_mac,
            "sha": _mac(frame[22:28]),
            "spa": _ip(frame[28:32]),
            "tpa": _ip(frame[38:42]),
        }
    if ethertype != 0x0800 or len(frame) < 34:
        return None
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    src, dst = _ip(frame[26:30]), _ip(frame[30:34])
    if proto == 1:
        return {"kind": "icmp", "src": src, "dst": dst, "type": frame[14 + ihl]}
    t = 14 + ihl
    if proto != 6 or len(frame) < t + 14:
        return None
    sport, dport = struct.unpack("!HH", frame[t : t + 4])
    flags = frame[t + 13]
    kind = "synack" if flags & 0x10 else "syn"
    return {"kind": kind, "src": src, "dst": dst, "sport": sport, "dport": dport}


class Sniffer(threading.Thread):
    """Frames of one node's cbr0 (see the module doc) with kernel stamps."""

    def __init__(self, node: str, netns: str, ifname: str = "cbr0") -> None:
        super().__init__(name=f"sniff-{node}", daemon=True)
        self.node, self.netns, self.ifname = node, netns, ifname
        self.records: list[dict[str, Any]] = []
        self.error: str | None = None
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            enter_netns(self.netns)
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
            _attach_filter(sock)
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            sock.bind((self.ifname, 0))
            sock.settimeout(0.2)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.ready.set()
            return
        self.ready.set()
        offset = _mono_offset()
        with sock:
            while not self.stop.is_set():
                try:
                    frame, anc, _flags, addr = sock.recvmsg(2048, 64)
                except TimeoutError:
                    continue
                rec = parse_frame(frame)
                if rec is None:
                    continue
                at = time.monotonic()
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                        sec, nsec = struct.unpack("qq", data[:16])
                        at = sec + nsec / 1e9 - offset
                rec["t"] = round(at, 6)
                rec["out"] = addr[2] == _PACKET_OUTGOING
                self.records.append(rec)


class CpuSampler(threading.Thread):
    """The host's CPU and that of the guest's QEMUs (both ends of a migration),
    every ``interval``, in clock ticks: who had the 2 cores while the guest was slow."""

    def __init__(self, name: str, interval: float) -> None:
        super().__init__(name="cpu-sampler", daemon=True)
        self.marker = f"guest={name},".encode()
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self.first_seen: dict[int, float] = {}
        self.stop = threading.Event()

    def _qemus(self) -> list[int]:
        found = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        if self.marker in f.read():
                            found.append(int(d))
                except OSError:
                    continue
        return found

    @staticmethod
    def _ticks(pid: int) -> int | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return int(fields[11]) + int(fields[12])  # utime + stime

    def run(self) -> None:
        pids: list[int] = []
        rescan = 0.0
        while not self.stop.wait(self.interval):
            now = time.monotonic()
            if now >= rescan:
                pids = self._qemus()
                for pid in pids:
                    self.first_seen.setdefault(pid, now)
                rescan = now + 0.25
            with open("/proc/stat") as f:
                cpu = [int(x) for x in f.readline().split()[1:]]
            idle = cpu[3] + cpu[4]
            qemu = {pid: t for pid in pids if (t := self._ticks(pid)) is not None}
            self.samples.append(
                {"t": round(now, 4), "busy": sum(cpu) - idle, "all": sum(cpu), "qemu": qemu}
            )


class RawProber(threading.Thread):
    """The recorder's probe, sent by hand: every probe's timings and outcome."""

    def __init__(
        self, netns: str, host: str, port: int, name: str, interval: float, timeout: float
    ) -> None:
        super().__init__(name="raw-prober", daemon=True)
        self.netns, self.host, self.port, self.name = netns, host, port, name
        self.interval, self.timeout = interval, timeout
        self.records: list[dict[str, Any]] = []
        self.error: str | None = None
        self.stop = threading.Event()
        self.request = (
            f"GET /healthz HTTP/1.0\r\nHost: {host}\r\nUser-Agent: rto-trace\r\n\r\n".encode()
        )

    def run(self) -> None:
        try:
            enter_netns(self.netns)
            asyncio.run(self._main())
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        t0 = loop.time()
        k = 0
        while not self.stop.is_set():
            delay = t0 + k * self.interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._probe())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k = max(k + 1, int((loop.time() - t0) / self.interval))
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        rec: dict[str, Any] = {"sent": round(time.monotonic(), 6)}
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind(("0.0.0.0", 0))
        rec["sport"] = sock.getsockname()[1]
        body = b""
        try:
            async with asyncio.timeout(self.timeout):
                await loop.sock_connect(sock, (self.host, self.port))
                rec["connected"] = round(time.monotonic(), 6)
                await loop.sock_sendall(sock, self.request)
                while len(body) < 65536:
                    chunk = await loop.sock_recv(sock, 4096)
                    if not chunk:
                        break
                    body += chunk
            rec["answered"] = round(time.monotonic(), 6)
            words = body.partition(b"\r\n\r\n")[2].split()
            good = body.startswith(b"HTTP/1.0 200") or body.startswith(b"HTTP/1.1 200")
            rec["ok"] = good and bool(words) and words[0].decode(errors="replace") == self.name
            rec["reason"] = "" if rec["ok"] else body.split(b"\r\n", 1)[0].decode(errors="replace")
        except TimeoutError:
            rec["ok"], rec["reason"] = False, "timeout"
        except OSError as exc:
            rec["ok"], rec["reason"] = False, type(exc).__name__
        finally:
            sock.close()
        rec["done"] = round(time.monotonic(), 6)
        self.records.append(rec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--hub", required=True)
    ap.add_argument("--node", action="append", default=[], help="NODE=NETNS")
    ap.add_argument("--target", required=True, help="IP:PORT")
    ap.add_argument("--name", required=True)
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--timeout", type=float, default=0.25)
    args = ap.parse_args()
    host, _, port = args.target.rpartition(":")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sniffers = [Sniffer(*spec.split("=", 1)) for spec in args.node]
    for s in sniffers:
        s.start()
        s.ready.wait(5)
    prober = RawProber(args.hub, host, int(port), args.name, args.interval, args.timeout)
    prober.start()
    cpu = CpuSampler(args.name, args.interval)
    cpu.start()
    print("tracing", flush=True)  # the parent waits for this line
    while not stop.wait(0.5):
        pass
    prober.stop.set()
    prober.join(args.timeout + 2)
    cpu.stop.set()
    cpu.join(2)
    for s in sniffers:
        s.stop.set()
        s.join(2)
    out = {
        "config": {"interval_s": args.interval, "timeout_s": args.timeout, "pid": os.getpid()},
        "probes": sorted(prober.records, key=lambda r: r["sent"]),
        "prober_error": prober.error,
        "frames": {s.node: s.records for s in sniffers},
        "sniffer_errors": {s.node: s.error for s in sniffers if s.error},
        "cpu": {
            "ticks_per_s": os.sysconf("SC_CLK_TCK"),
            "cpus": os.cpu_count(),
            "qemu_first_seen": {str(k): v for k, v in cpu.first_seen.items()},
            "samples": cpu.samples,
        },
    }
    args.out.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
