"""How fast does the lab VM guest boot, and come back from a hang via its watchdog?

Run by hand as root (``.venv/bin/python benchmarks/guest_boot.py``); writes
``benchmarks/results/guest_boot.json`` and prints a summary. Per trial it boots
the guest (``cluster.lab.guest``) under plain QEMU TCG with an i6300esb
(action reset) and a blank virtio data disk, and measures from the host, over
the loopback port forward, probing GET /healthz every 100 ms:

* ``boot_s``: QEMU started -> first 200 from /healthz (target <= 6 s);
* ``hang_to_healthy_s``: the guest acknowledged ``hang`` (its userland is
  stopped, the feeder too) -> first 200 from the *new* instance (target <= 10
  s with a 2 s i6300esb timeout); ``boot`` must have gone up by one.

TCG is CPU-bound: the figures move with the machine's load, which is recorded
(load average before and after) next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from cluster.lab.guest.build import GuestImage, build_guest  # noqa: E402
from cluster.lab.guest.qemu import GuestOptions, QemuGuest  # noqa: E402
from core.clock import RealClock  # noqa: E402
from core.errors import LabError  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "guest_boot.json"
BOOT_TARGET_S = 6.0
HANG_TARGET_S = 10.0


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "min": round(ordered[0], 2),
        "median": round(statistics.median(ordered), 2),
        "mean": round(statistics.fmean(ordered), 2),
        "max": round(ordered[-1], 2),
    }


def trial(
    index: int, image: GuestImage, workdir: Path, options: GuestOptions, timeout: float
) -> dict[str, Any]:
    clock = RealClock()
    guest = QemuGuest(image, workdir / f"trial-{index}", options, disk_mib=8, clock=clock)
    load = os.getloadavg()[0]
    try:
        t0 = clock.now()
        guest.start()
        body = guest.wait_healthy(timeout, interval=0.1)
        boot_s = clock.now() - t0
        first = guest.wait_ready(timeout)
        guest.command("ping")
        ack = guest.command("hang")
        t_hang = clock.now()
        if ack != "hung":
            raise LabError(f"guest answered {ack!r} to hang")
        body2 = guest.wait_healthy(timeout, not_instance=first.instance, interval=0.1)
        hang_s = clock.now() - t_hang
        second = guest.wait_ready(timeout, count=2)
    finally:
        guest.stop()
    row = {
        "trial": index,
        "boot_s": round(boot_s, 3),
        "hang_to_healthy_s": round(hang_s, 3),
        "first": body,
        "after_reset": body2,
        "boot_count_incremented": second.boot == first.boot + 1,
        "loadavg_1m_at_start": round(load, 2),
    }
    print(
        f"trial {index}: boot {boot_s:.2f} s, hang->healthy {hang_s:.2f} s "
        f"({first.instance} boot={first.boot} -> {second.instance} boot={second.boot}), "
        f"load {load:.1f}",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--wdt-timeout", type=int, default=2, help="i6300esb timeout (s)")
    parser.add_argument("--driver-default", action="store_true", help="leave the 30 s default")
    parser.add_argument("--feed", type=float, default=1.0, help="feed interval (s)")
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    wdt = None if args.driver_default else args.wdt_timeout
    options = GuestOptions(name="bench-guest", wdt_timeout=wdt, feed_interval=args.feed)
    image = build_guest()
    load_before = list(os.getloadavg())
    rows = []
    with tempfile.TemporaryDirectory(prefix="rto-guest-bench-") as tmp:
        for i in range(1, args.trials + 1):
            rows.append(trial(i, image, Path(tmp), options, args.timeout))
    boot = [r["boot_s"] for r in rows]
    hang = [r["hang_to_healthy_s"] for r in rows]
    qemu_version = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    result = {
        "benchmark": "guest_boot",
        "config": {
            "trials": args.trials,
            "wdt_timeout_s": wdt if wdt is not None else "driver default (30)",
            "feed_interval_s": args.feed,
            "probe_interval_s": 0.1,
            "cmdline": image.cmdline(
                options.name, wdt_timeout=wdt, feed_interval=args.feed, panic=options.panic
            ),
            "inputs_hash": image.inputs_hash,
            "accel": "tcg",
            "machine": options.machine,
            "memory_mib": options.memory_mib,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "qemu": qemu_version,
            "loadavg_before": load_before,
            "loadavg_after": list(os.getloadavg()),
        },
        "summary": {
            "boot_to_healthz_s": _stats(boot),
            "hang_to_healthz_s": _stats(hang),
            "boot_target_s": BOOT_TARGET_S,
            "hang_target_s": HANG_TARGET_S,
            "boot_within_target": sum(b <= BOOT_TARGET_S for b in boot),
            "hang_within_target": sum(h <= HANG_TARGET_S for h in hang),
            "boot_count_incremented": all(r["boot_count_incremented"] for r in rows),
        },
        "trials": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
