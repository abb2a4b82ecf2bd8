"""A lab-workload stand-in in its own process, whose switches stamp themselves.

Started by ``benchmarks/edge_truth.py`` (and ``tests/test_edge_truth_bench.py``)
as a child process, so that its latency is not the benchmark's: an in-process
server would share the GIL with the probers it is measuring. It listens on
127.0.0.1 only and answers like a lab pod, ``HTTP/1.0 200`` with the body
``"<name> <instance>\\n"`` (what ``chaos.prober`` counts as good).

Control is line-based: one command per line on stdin, one JSON line back on
stdout once the switch took effect:

- ``ok``: answer 200 (listening again if it was refusing);
- ``500``: answer ``HTTP/1.0 500``;
- ``refuse``: close the listening socket, so connects are refused;
- ``quit``: exit.

Each reply carries ``before`` and ``after``: ``time.monotonic()`` (the
system-wide CLOCK_MONOTONIC, the probers' clock too) read just before and just
after the act that makes the switch (the assignment of the mode; the close or
listen(2) of the socket). The switch took effect between the two: that
interval is the ground truth. The first line, before any command, is
``{"port": N, "pid": P}``.

One thread, one ``selectors`` loop: a request is answered as soon as its header
is in, with the mode current at that moment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from child_process import quit_child

__all__ = ["MODES", "Server", "Stamp", "TruthServer", "main"]

MODES = ("ok", "500", "refuse")
_BACKLOG = 512


class Server:
    """The loopback workload and its switches (see the module doc)."""

    def __init__(self, name: str, instance: str, port: int = 0) -> None:
        self.name = name
        self.instance = instance
        self.port = port
        self.mode = "ok"
        self.requests = 0
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self._buffers: dict[socket.socket, bytes] = {}
        self._listen()

    # --- switches ---------------------------------------------------------------
    def switch(self, mode: str) -> dict[str, float | str]:
        """Make ``mode`` current; the monotonic stamps around the act that does it."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} not in {MODES}")
        old = self.mode
        before = time.monotonic()
        if mode == "refuse" and old != "refuse":
            self._unlisten()
        elif old == "refuse" and mode != "refuse":
            self._listen()
        self.mode = mode
        after = time.monotonic()
        return {"mode": mode, "before": before, "after": after}

    def _listen(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # The same port again after a refusal: the probers keep their target.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(_BACKLOG)
        s.setblocking(False)
        self.port = s.getsockname()[1]
        self.listener = s
        self.sel.register(s, selectors.EVENT_READ, self._accept)

    def _unlisten(self) -> None:
        s, self.listener = self.listener, None
        if s is not None:
            self.sel.unregister(s)
            # Connections still in the backlog are reset by the close: refused too.
            s.close()

    # --- serving ----------------------------------------------------------------
    def _accept(self, s: socket.socket) -> None:
        try:
            conn, _ = s.accept()
        except (BlockingIOError, OSError):
            return
        conn.setblocking(False)
        self._buffers[conn] = b""
        self.sel.register(conn, selectors.EVENT_READ, self._read)

    def _read(self, conn: socket.socket) -> None:
        try:
            chunk = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        data = self._buffers.get(conn, b"") + chunk
        if chunk and b"\r\n\r\n" not in data:
            self._buffers[conn] = data
            return
        if chunk:
            self.requests += 1
            with contextlib.suppress(OSError):
                conn.send(self.answer())  # a few dozen bytes: one send, never blocks
        self._close(conn)

    def answer(self) -> bytes:
        if self.mode == "500":
            return b"HTTP/1.0 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nfail\n"
        body = f"{self.name} {self.instance}\n".encode()
        return b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body

    def _close(self, conn: socket.socket) -> None:
        self._buffers.pop(conn, None)
        self.sel.unregister(conn)
        conn.close()

    # --- control ----------------------------------------------------------------
    def serve(self, control: int, reply: int) -> None:
        """Serve until ``quit`` (or EOF) on the ``control`` fd; replies on ``reply``."""
        pending = b""

        def on_control(_: object) -> None:
            nonlocal pending
            chunk = _read_fd(control)
            if not chunk:
                raise _Quit
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                cmd = line.decode().strip()
                if cmd == "quit":
                    raise _Quit
                if cmd:
                    _write_line(reply, self.switch(cmd))

        self.sel.register(control, selectors.EVENT_READ, on_control)
        _write_line(reply, {"port": self.port, "pid": os.getpid()})
        try:
            while True:
                for key, _ in self.sel.select():
                    key.data(key.fileobj)
        except _Quit:
            pass
        finally:
            self._unlisten()
            for conn in list(self._buffers):
                self._close(conn)


class _Quit(Exception):
    pass


def _read_fd(fd: int) -> bytes:
    return os.read(fd, 4096)


def _write_line(fd: int, obj: object) -> None:
    os.write(fd, (json.dumps(obj) + "\n").encode())


@dataclass(frozen=True)
class Stamp:
    """When a switch took effect: between ``before`` and ``after`` (monotonic s)."""

    mode: str
    before: float
    after: float

    @property
    def mid(self) -> float:
        return (self.before + self.after) / 2

    @property
    def half(self) -> float:
        return (self.after - self.before) / 2


class TruthServer:
    """The parent's handle on a ``Server`` running in a child process."""

    def __init__(self, name: str = "bench", instance: str = "i1") -> None:
        self.name = name
        self.instance = instance
        self.port = 0
        self.pid = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> TruthServer:
        argv = [sys.executable, str(Path(__file__).resolve()), "--name", self.name]
        argv += ["--instance", self.instance]
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        hello = self._reply()
        self.port, self.pid = int(str(hello["port"])), int(str(hello["pid"]))
        return self

    def _reply(self) -> dict[str, object]:
        assert self._proc is not None and self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"truth server exited (rc {self._proc.poll()})")
        out: dict[str, object] = json.loads(line)
        return out

    def switch(self, mode: str) -> Stamp:
        """Switch the server to ``mode``; returns its own stamps of the act."""
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(f"{mode}\n".encode())
        r = self._reply()
        if r.get("mode") != mode:
            raise RuntimeError(f"truth server answered {r} to {mode!r}")
        return Stamp(mode, float(str(r["before"])), float(str(r["after"])))

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            quit_child(proc, 5)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def __enter__(self) -> TruthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="bench")
    ap.add_argument("--instance", default="i1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    Server(args.name, args.instance, args.port).serve(sys.stdin.fileno(), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
