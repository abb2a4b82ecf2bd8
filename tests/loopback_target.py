"""A workload stand-in on 127.0.0.1 whose availability is switched on cue.

Used by tests/test_prober.py, tests/test_recorder.py and
benchmarks/recorder_precision.py as the ground truth for the prober: the server
answers like a lab pod (``200 "<name> <instance>\\n"``) and can be made
unavailable in the ways a real workload fails:

- ``"503"``: answers 503 (a shut-down volume in the lab);
- ``"refuse"``: stops listening, connects are refused (a crashed process);
- ``"hang"``: accepts, never answers; held connections are closed unanswered
  when the window ends (a dead guest behind a live socket);
- ``"freeze"``: accepts and answers only when the window ends (a frozen cgroup
  being thawed: queued requests are served at once).

``set_mode`` returns the monotonic time the switch took effect: the ground truth
the measured outage is compared with.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from cluster.api import ProbeTarget

__all__ = ["LoopbackTarget"]

MODES = ("ok", "503", "refuse", "hang", "freeze")


class LoopbackTarget:
    def __init__(self, name: str = "web", instance: str = "i1") -> None:
        self.name = name
        self.instance = instance
        self.mode = "ok"
        self.port = 0
        self.requests = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None

    # --- control ----------------------------------------------------------------
    def start(self) -> LoopbackTarget:
        self._listen()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._unlisten()

    def target(self) -> ProbeTarget:
        return ProbeTarget(host="127.0.0.1", port=self.port, path="/healthz")

    def set_mode(self, mode: str) -> float:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} not in {MODES}")
        with self._cond:
            old, self.mode = self.mode, mode
            self._cond.notify_all()
        if mode == "refuse" and old != "refuse":
            self._unlisten()
        elif old == "refuse" and mode != "refuse":
            self._listen()
        return time.monotonic()

    def __enter__(self) -> LoopbackTarget:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- server -----------------------------------------------------------------
    def _listen(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(256)
        self.port = s.getsockname()[1]
        self._listener = s
        self._accept_thread = threading.Thread(target=self._accept, args=(s,), daemon=True)
        self._accept_thread.start()

    def _unlisten(self) -> None:
        s, self._listener = self._listener, None
        if s is None:
            return
        # shutdown wakes the blocked accept(); close alone does not on Linux.
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
        if self._accept_thread is not None:
            self._accept_thread.join()

    def _accept(self, s: socket.socket) -> None:
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
            except OSError:
                return
            with self._cond:
                self.requests += 1
                mode = self.mode
                if mode in ("hang", "freeze"):
                    self._cond.wait_for(lambda: self.mode != mode or self._stopped)
                    if mode == "hang" or self._stopped:
                        return
                    mode = self.mode
            if mode == "503":
                answer = b"HTTP/1.0 503 Service Unavailable\r\n\r\nunavailable\n"
            else:
                body = f"{self.name} {self.instance}\n".encode()
                answer = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body
            try:
                conn.sendall(answer)
            except OSError:
                return
