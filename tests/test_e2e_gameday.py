"""End to end: ``rto gameday`` on a real lab, as a rehearsal and through a terminal.

One private lab for the module (its real cluster on the ``fast`` flags, 2
nodes, pods only, own state/run dirs, netns prefix ``rtogd``, nodes
``node1..2`` as the experiment files place them), always torn down. Two
tests, each the real ``rto`` console script in a child process:

1. ``rto gameday experiments/gamedays/storage-outage.yaml --yes`` exits 0 and
   leaves gameday.json and the report (gameday.html, gameday.md); both run
   steps recovered and stored their rows; nothing is left pending or frozen.
2. ``tests/gamedays/abort-mid-fault.yaml`` on a pseudo-terminal (rich's live
   panel, cbreak keys): Enter at the checkpoint, then, once the volume is
   hung, the abort key. The game day exits 130 with the run's fault reverted
   through the journal (nothing pending), the volume neither frozen nor shut
   down, the pod answering again, and the step after the run never run.
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from private_lab import PrivateLab, probe

from chaos.gameday.record import GAMEDAY_FILE, GameDayOutcome, GameDayRecord, StepStatus
from chaos.journal import Journal
from chaos.results import ResultsStore, RunStatus
from cluster.lab import volumes
from cluster.lab_cluster import LabClusterBackend
from core.timeline import EventKind
from core.wait import poll_until

__all__: list[str] = []

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
STORAGE = ROOT / "experiments" / "gamedays" / "storage-outage.yaml"
ABORT_BOOK = ROOT / "tests" / "gamedays" / "abort-mid-fault.yaml"
LAB = PrivateLab("gameday", "rtogd", "node")
RTO = str(Path(sys.executable).parent / "rto")


@dataclass
class Lab:
    backend: LabClusterBackend
    journal: Journal
    tmp: Path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("e2e-gameday")
    journal = tmp / "journal.jsonl"
    # isolate() exports the lab's dirs, netns prefix and RTO_JOURNAL: the
    # child `rto` processes find this lab and this journal.
    with LAB.up(2, journal=journal) as backend:
        yield Lab(backend, Journal(journal), tmp)


def _assert_nothing_left(lab: Lab, workload: str) -> None:
    assert lab.journal.pending() == []
    assert not volumes.is_frozen(workload), f"{workload}'s volume left frozen"
    assert not volumes.is_shut_down(workload), f"{workload}'s volume left shut down"


def _record(out: Path) -> GameDayRecord:
    return GameDayRecord.model_validate_json((out / GAMEDAY_FILE).read_text())


def test_storage_game_day_rehearsal_leaves_a_report(lab: Lab) -> None:
    out, runs = lab.tmp / "storage-report", lab.tmp / "runs"
    t0 = time.monotonic()
    proc = subprocess.run(
        [RTO, "gameday", str(STORAGE), "--yes", "--out", str(out), "--runs-dir", str(runs)],
        capture_output=True, text=True, timeout=240, cwd=lab.tmp, check=False,
    )  # fmt: skip
    wall = time.monotonic() - t0
    print("\n" + proc.stdout)  # what the room (here: a CI log) saw, plain lines
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    for name in (GAMEDAY_FILE, "gameday.html", "gameday.md"):
        assert (out / name).is_file(), name
    record = _record(out)
    assert record.outcome is GameDayOutcome.COMPLETED and record.rehearsal
    assert record.backend == "lab"
    assert all(s.status is StepStatus.DONE for s in record.steps)
    runs_done = [s for s in record.steps if s.kind == "run"]
    rows = ResultsStore(runs).load()
    assert [r.run_id for r in rows] == [s.result.run_id for s in runs_done if s.result]
    assert [r.variant for r in rows] == ["eio", "hang"]
    assert all(r.status is RunStatus.RECOVERED for r in rows), [(r.status, r.error) for r in rows]
    assert [(r.by, r.target) for r in record.reverts] == [("run", "web-eio"), ("run", "web-hang")]
    # The observe step watched the repaired pod: probes, and no outage.
    observed = [e for e in record.events if e.step == 2]
    assert any(e.kind == EventKind.PROBE_OK for e in observed)
    assert str(out / GAMEDAY_FILE) in proc.stdout.replace("\n", "")
    for s, r in zip(runs_done, rows, strict=True):
        print(
            f"\nFIGURE gameday storage-outage step {s.index + 1} {r.fault} {r.variant}: "
            f"status {r.status.value} rto {r.rto_s} detection {r.detection_s} "
            f"step {s.ended_t - s.started_t:.2f} s"  # type: ignore[operator]
        )
    print(f"\nFIGURE gameday storage-outage --yes: {wall:.1f} s wall, {len(record.events)} events")
    for w in ("web-eio", "web-hang"):
        _assert_nothing_left(lab, w)
    # One pod at a time on 2 cores: the abort test reuses web-hang.
    lab.backend.delete_workload("web-eio")


class _Terminal:
    """A pseudo-terminal the child runs on; everything it prints is kept."""

    def __init__(self, cols: int = 200, rows: int = 50) -> None:
        self.master, self.slave = pty.openpty()
        # A wide terminal: rich wraps at its width, and the test reads lines.
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)

    def start(self) -> None:
        os.close(self.slave)  # the child holds it now; EOF/EIO when it exits
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            with self._lock:
                self._buf += data

    def text(self) -> str:
        with self._lock:
            return self._buf.decode(errors="replace")

    def wait_for(self, needle: str, timeout: float) -> None:
        try:
            poll_until(lambda: needle in self.text(), timeout, f"{needle!r} on the terminal")
        except Exception:
            print(self.text()[-4000:])
            raise

    def press(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        self._reader.join(timeout=10)
        os.close(self.master)


def test_abort_key_on_a_terminal_mid_fault_leaves_nothing(lab: Lab) -> None:
    out, runs = lab.tmp / "abort-report", lab.tmp / "runs"
    term = _Terminal()
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(
        [RTO, "gameday", str(ABORT_BOOK), "--out", str(out), "--runs-dir", str(runs)],
        stdin=term.slave, stdout=term.slave, stderr=term.slave,
        cwd=lab.tmp, env=env, start_new_session=True,
    )  # fmt: skip
    term.start()
    try:
        term.wait_for("Enter to go on", 60)
        term.press(b"\n")  # a person confirms the checkpoint
        # The runner prints this once inject() returned: the volume is hung.
        term.wait_for("holding the fault", 90)
        assert volumes.is_frozen("web-hang")
        t0 = time.monotonic()
        term.press(b"a")
        rc = proc.wait(timeout=90)
        abort_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        term.close()
    text = term.text()
    assert rc == 130, text[-4000:]
    assert "ABORT (abort key)" in text and "[a] abort" in text
    record = _record(out)
    assert record.outcome is GameDayOutcome.ABORTED
    assert [s.status for s in record.steps] == [
        StepStatus.DONE,
        StepStatus.DONE,
        StepStatus.ABORTED,
        StepStatus.SKIPPED,
    ]
    assert [(r.fault, r.target, r.by) for r in record.reverts] == [
        ("storage-lost", "web-hang", "abort")
    ]
    aborted = record.steps[2].result
    assert aborted is not None and aborted.status is RunStatus.ABORTED
    assert (out / "gameday.md").is_file() and (out / "gameday.html").is_file()
    _assert_nothing_left(lab, "web-hang")
    # Thawed: the pod answers its health endpoint again.
    poll_until(
        lambda: probe(lab.backend, "web-hang")[0] == 200,
        30.0,
        "web-hang answering 200",
        retry_on=(OSError,),
    )
    print(f"\nFIGURE gameday abort key -> exit 130 with every fault reverted: {abort_s:.2f} s")
