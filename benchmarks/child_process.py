"""Ending the benchmarks' helper processes: ask politely, then kill.

The truth server and the prober arms are child processes that read commands
on stdin; ``quit`` ends them. One that does not answer within the timeout is
killed, so a benchmark never leaves a process behind.
"""

from __future__ import annotations

import subprocess


def quit_child(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Send ``quit`` on stdin and wait for the child; kill it if it lingers."""
    try:
        if proc.stdin is not None:
            proc.stdin.write(b"quit\n")
            proc.stdin.close()
        proc.wait(timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
