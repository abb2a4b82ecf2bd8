"""One prober in a process of its own, for benchmarks that run several side by side.

Used by ``benchmarks/edge_truth.py``: the old (grid only) and new (edge probes)
probers watch the same outage at once. In one process they would share one
GIL, and each one's edge probes would stall the others' event loops: the
benchmark would measure that contention, not the prober. Here each prober
(``chaos.prober.Prober``) runs in its own process, as it does in a real run (one
prober per harness process).

The child (``python benchmarks/prober_arm.py --host H --port P ...``) writes one
JSON line per transition (``at`` on CLOCK_MONOTONIC, shared by every process of
the host) and reads commands on stdin: ``hint`` (``expect_edge``), ``counts``
(answers ``{"counts": [sent, edge]}``), ``quit``. ``ProcessArm`` is the parent's
handle: it rebuilds the transitions into a ``Timeline`` and waits on them.
"""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from child_process import quit_child  # noqa: E402

from chaos.prober import Prober, Transition  # noqa: E402
from cluster.api import ProbeTarget  # noqa: E402
from core.timeline import EventKind, Timeline  # noqa: E402

__all__ = ["ProcessArm"]


class ProcessArm:
    """A prober in a child process; transitions land in ``timeline``."""

    def __init__(
        self,
        name: str,
        target: ProbeTarget,
        origin: float,
        *,
        expect_name: str,
        edge_interval: float | None,
        interval: float = 0.02,
        timeout: float = 0.25,
        good_needed: int = 5,
    ) -> None:
        self.name = name
        self.timeline = Timeline(origin)
        self._argv = [sys.executable, str(Path(__file__).resolve())]
        self._argv += ["--host", target.host, "--port", str(target.port), "--path", target.path]
        self._argv += ["--name", expect_name, "--interval", str(interval)]
        self._argv += ["--timeout", str(timeout), "--good", str(good_needed)]
        if target.netns:
            self._argv += ["--netns", target.netns]
        if edge_interval is not None:
            self._argv += ["--edge", str(edge_interval)]
        self._proc: subprocess.Popen[bytes] | None = None
        self._cond = threading.Condition()
        self._last: tuple[EventKind, float] | None = None
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        self._reader = threading.Thread(target=self._read, name=f"arm-{self.name}", daemon=True)
        self._reader.start()
        if self._replies.get(timeout=30).get("started") is not True:
            raise RuntimeError(f"arm {self.name}: the prober did not start")

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            msg = json.loads(line)
            if "kind" not in msg:
                self._replies.put(msg)
                continue
            kind = EventKind(msg["kind"])
            self.timeline.add(msg["at"], kind, "prober", msg["message"], msg["data"])
            with self._cond:
                if kind in (EventKind.PROBE_OK, EventKind.PROBE_FAIL):
                    self._last = (kind, msg["at"])
                self._cond.notify_all()

    def _send(self, command: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(f"{command}\n".encode())

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        quit_child(proc, 10)
        if self._reader is not None:
            self._reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()

    def expect_edge(self) -> None:
        self._send("hint")

    def _up_since(self, since: float) -> bool:
        last = self._last
        return last is not None and last[0] is EventKind.PROBE_OK and last[1] >= since

    def wait_up(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._up_since(-float("inf")), timeout)

    def wait_recovered(self, since: float, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._up_since(since), timeout)

    def counts(self) -> tuple[int, int]:
        self._send("counts")
        sent, edge = self._replies.get(timeout=10)["counts"]
        return int(sent), int(edge)


def _child(args: argparse.Namespace) -> int:
    lock = threading.Lock()

    def write(obj: dict[str, Any]) -> None:
        with lock:  # transitions come from the prober's thread, replies from this one
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    def on_transition(tr: Transition) -> None:
        write({"at": tr.at, "kind": tr.kind.value, "message": tr.message, "data": tr.data})

    target = ProbeTarget(args.host, args.port, args.path, netns=args.netns)
    prober = Prober(
        lambda: target,
        on_transition,
        interval=args.interval,
        timeout=args.timeout,
        good_needed=args.good,
        expect_name=args.name,
        edge_interval=args.edge,
        name=f"prober-{args.name}",
    )
    prober.start()
    write({"started": True})
    try:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "hint":
                prober.expect_edge()
            elif cmd == "counts":
                write({"counts": [prober.sent, prober.edge_sent]})
            elif cmd == "quit":
                break
    finally:
        prober.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/healthz")
    ap.add_argument("--netns")
    ap.add_argument("--name", required=True, help="the workload name the answer must carry")
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--timeout", type=float, default=0.25)
    ap.add_argument("--good", type=int, default=5)
    ap.add_argument("--edge", type=float, default=None, help="edge probe interval; none: grid only")
    return _child(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
