"""Follow what a workload prints during a run: container log or VM serial console.

Driven by the recorder (``chaos.recorder.Recorder`` polls it on its control-plane
tick); the file comes from ``backend.log_path(workload)`` (the lab: the pod's
container log or the VMI's serial console log; ``None`` where a backend has no
file). Every new line lands in the run's ``Timeline`` as a ``LOG`` event (source
``workload``, message the trimmed line), so a report shows, beside probes and
control-plane events, what the workload itself said (``RTO-GUEST-READY`` after
a watchdog reset, an I/O error, a panic). Read by ``reports`` (the run's event
table) and by people reading a row.

A chatty workload must not bloat the row: lines are trimmed to ``max_chars``,
admitted through a token bucket (``rate_per_s``, ``burst``) and capped at
``max_lines`` per run. Lines matching one of ``keep`` (the guest's ``RTO-``
markers, panics, watchdog messages) skip the bucket and the cap, up to a hard
ceiling of ``2 * max_lines``, so the line that explains a recovery survives a
flood. What was dropped is counted and written as ``MARK`` events (once when
dropping starts, once with the totals at ``finish``).

Only lines written after ``start`` are read (the console log of a VMI is
appended across restarts and earlier runs). A file that appears later is read
from its beginning; a file replaced or truncated is read again from the start.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from core.clock import Clock, RealClock
from core.timeline import EventKind, Timeline

__all__ = ["DEFAULT_KEEP", "LogFollower"]

# Lines that explain a recovery: kept even when the workload floods its log.
DEFAULT_KEEP: tuple[str, ...] = (
    "RTO-",
    "rto-guest:",
    "panic",
    "watchdog",
    "I/O error",
)

# More than this much new output in one tick: skip to the end (the bytes count
# as dropped) instead of reading megabytes on the recorder's thread.
_MAX_READ = 1 << 20
# Terminal escapes and control characters a serial console is full of.
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


class LogFollower:
    """Tail one workload's log file into ``timeline`` as ``LOG`` events.

    Not a thread: the owner calls ``start`` once, ``poll`` on its own schedule
    (from one thread at a time; a lock makes a late ``poll`` from ``stop`` safe)
    and ``finish`` at the end.
    """

    def __init__(
        self,
        path_of: Callable[[], Path | None],
        timeline: Timeline,
        *,
        workload: str = "",
        clock: Clock | None = None,
        source: str = "workload",
        max_lines: int = 200,
        rate_per_s: float = 20.0,
        burst: int = 50,
        max_chars: int = 200,
        keep: Sequence[str] = DEFAULT_KEEP,
    ) -> None:
        self.path_of = path_of
        self.timeline = timeline
        self.workload = workload
        self.clock: Clock = clock or RealClock()
        self.source = source
        self.max_lines = max_lines
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_chars = max_chars
        self.keep = tuple(keep)
        self.lines = 0  # admitted into the timeline
        self.dropped = 0  # lines not admitted (rate, cap)
        self.skipped_bytes = 0  # output skipped without reading (too much at once)
        self._path: Path | None = None
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        # Held open between polls: while we hold it, a replacement file cannot get
        # the same inode number, so (st_dev, st_ino) tells a new file from ours.
        self._file: BinaryIO | None = None
        self._offset = 0
        self._partial = b""
        self._tokens = float(burst)
        self._refilled_at: float | None = None
        self._announced_drop = False
        self._lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Remember where the file ends now: only later lines belong to this run."""
        with self._lock:
            self._refilled_at = self.clock.now()
            path = self.path_of()
            self._path = path
            if path is None or not self._open(path):
                return  # appears later: then read from its beginning
            assert self._file is not None
            self._offset = os.fstat(self._file.fileno()).st_size

    def poll(self) -> int:
        """Read what was appended since the last call; return the lines admitted."""
        with self._lock:
            before = self.lines
            path = self.path_of()
            if path is None:
                return 0
            if path != self._path:
                # The workload's log moved (another node, another file): a new file
                # is all new output.
                self._close()
                self._path, self._ident, self._offset, self._partial = path, None, 0, b""
            data = self._read(path)
            if data:
                chunk = self._partial + data
                *complete, self._partial = chunk.split(b"\n")
                for raw in complete:
                    self._admit(raw)
            return self.lines - before

    def finish(self) -> None:
        """Flush a last unterminated line and write the drop totals, if any."""
        self.poll()
        with self._lock:
            if self._partial.strip():
                self._admit(self._partial)
            self._partial = b""
            self._close()
            if self.dropped or self.skipped_bytes:
                self.timeline.add(
                    self.clock.now(),
                    EventKind.MARK,
                    "logs",
                    f"{self.workload} log: {self.lines} lines kept, {self.dropped} dropped"
                    + (f", {self.skipped_bytes} bytes skipped" if self.skipped_bytes else "")
                    + f" (cap {self.max_lines} lines, {self.rate_per_s:g} lines/s)",
                    {
                        "event": "log_dropped",
                        "kept": str(self.lines),
                        "dropped": str(self.dropped),
                        "skipped_bytes": str(self.skipped_bytes),
                    },
                )

    # --- internals -------------------------------------------------------------------
    def _open(self, path: Path) -> bool:
        """Hold ``path`` open; True if it exists. A different file than before
        (replaced, re-created) is read from its start."""
        try:
            f = path.open("rb")
        except FileNotFoundError:
            return False
        st = os.fstat(f.fileno())
        ident = (st.st_dev, st.st_ino)
        self._close()
        if self._ident is not None and ident != self._ident:
            self._offset, self._partial = 0, b""
        self._file, self._ident = f, ident
        return True

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _read(self, path: Path) -> bytes:
        try:
            st = path.stat()
        except FileNotFoundError:
            return b""  # gone for now; what we hold is finished
        if (self._file is None or (st.st_dev, st.st_ino) != self._ident) and not self._open(path):
            return b""
        assert self._file is not None
        size = os.fstat(self._file.fileno()).st_size
        if size < self._offset:
            self._offset, self._partial = 0, b""  # truncated in place
        if size - self._offset > _MAX_READ:
            self.skipped_bytes += size - _MAX_READ - self._offset
            self._offset, self._partial = size - _MAX_READ, b""
        if size <= self._offset:
            return b""
        self._file.seek(self._offset)
        data = self._file.read(size - self._offset)
        self._offset += len(data)
        return data

    def _clean(self, raw: bytes) -> str:
        text = _CONTROL.sub("", raw.decode("utf-8", errors="replace")).strip()
        if len(text) > self.max_chars:
            text = text[: self.max_chars - 1] + "\u2026"
        return text

    def _allowed(self, text: str, now: float) -> bool:
        if any(k in text for k in self.keep):
            return self.lines < 2 * self.max_lines
        if self.lines >= self.max_lines:
            return False
        if self._refilled_at is not None:
            self._tokens = min(
                float(self.burst), self._tokens + (now - self._refilled_at) * self.rate_per_s
            )
        self._refilled_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _admit(self, raw: bytes) -> None:
        text = self._clean(raw)
        if not text:
            return
        now = self.clock.now()
        if not self._allowed(text, now):
            self.dropped += 1
            if not self._announced_drop:
                self._announced_drop = True
                self.timeline.add(
                    now,
                    EventKind.MARK,
                    "logs",
                    f"{self.workload} log is chatty: dropping lines over "
                    f"{self.rate_per_s:g}/s or past {self.max_lines} per run (markers kept)",
                    {"event": "log_throttled"},
                )
            return
        self.lines += 1
        data = {"workload": self.workload} if self.workload else {}
        self.timeline.add(now, EventKind.LOG, self.source, text, data)
