"""A private lab for one test module: own state/run dirs, netns prefix and node names.

Filled by nobody: each lab test module builds one ``PrivateLab`` with its own
name, namespace prefix and node prefix. Read by the lab test modules (their
module fixtures are ``with PrivateLab(...).up(...) as backend: yield ...``) and
by ``tests/test_e2e_lab.py``, which only ``isolate``s before the campaign brings
the lab up itself. A private lab never touches the default lab a user (or a
README campaign) may have up on the same machine: the state and run dirs are
``/var/lib/rto-lab-<name>`` and ``/run/rto-lab-<name>``, the netns are
``<prefix>-*``, and node cgroups are ``rto-lab/<prefix>-<node>`` (see
``cluster.lab.cgroups.node_dir``). ``up`` always takes the lab down again and
then fails if anything of it is left on the machine.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import leftovers as machine
import pytest
import yaml
from lab_node_kit import in_netns

from cluster.lab import lifecycle, net, state
from cluster.lab_cluster import LabClusterBackend, LabClusterProvider

__all__ = ["PrivateLab", "probe"]


@dataclass(frozen=True)
class PrivateLab:
    """Names of one private lab: ``name`` for its dirs, ``prefix`` for netns
    (and node cgroups), ``node_prefix`` for node names (``<node_prefix><i>``)."""

    name: str
    prefix: str
    node_prefix: str

    @property
    def state_dir(self) -> Path:
        return Path(f"/var/lib/rto-lab-{self.name}")

    @property
    def run_dir(self) -> Path:
        return Path(f"/run/rto-lab-{self.name}")

    def node(self, i: int) -> str:
        """The name of node ``i`` (1-based, as lab_up numbers them)."""
        return f"{self.node_prefix}{i}"

    def isolate(self, mp: pytest.MonkeyPatch, journal: Path | None = None) -> None:
        """Point this process (module globals) and the processes it starts (env)
        at the private lab; ``journal`` also moves the fault journal. All undone
        by ``mp.undo()``."""
        mp.setattr(state, "STATE_DIR", self.state_dir)
        mp.setattr(state, "RUN_DIR", self.run_dir)
        # Same effect as net.set_prefix, but undone by the monkeypatch.
        mp.setattr(net, "NS_PREFIX", self.prefix)
        mp.setattr(net, "HUB_NS", f"{self.prefix}-hub")
        # Child processes (the rto CLI, agents) read these at import.
        mp.setenv("RTO_LAB_STATE_DIR", str(self.state_dir))
        mp.setenv("RTO_LAB_RUN_DIR", str(self.run_dir))
        mp.setenv("RTO_LAB_NS_PREFIX", self.prefix)
        if journal is not None:
            mp.setenv("RTO_JOURNAL", str(journal))

    def our_objects(self) -> dict[str, set[str]]:
        """The tests/leftovers.py snapshot of this lab only (non-empty categories).

        Other labs on the machine (the default one, other modules') have other
        dirs, netns and cgroups: processes and cgroups are filtered by name.
        iptables rules name only addresses, which all labs share, so they are
        left out; ``unchecked`` is not an object.
        """
        snap = machine.snapshot(
            lab_dirs=(self.state_dir, self.run_dir),
            netns_prefix=f"{self.prefix}-",
            probe_frozen=False,
        )
        snap[machine.CGROUPS] = {
            c for c in snap[machine.CGROUPS] if f"/{self.prefix}-{self.node_prefix}" in c
        }
        run, st = str(self.run_dir), str(self.state_dir)
        snap[machine.PROCESSES] = {p for p in snap[machine.PROCESSES] if run in p or st in p}
        snap.pop(machine.UNCHECKED, None)
        snap.pop(machine.IPTABLES, None)
        return {k: v for k, v in snap.items() if v}

    @contextmanager
    def up(
        self,
        nodes: int,
        *,
        profile: str = "fast",
        vms: bool = False,
        journal: Path | None = None,
    ) -> Iterator[LabClusterBackend]:
        """The private lab up with ``nodes`` nodes (its real cluster; with
        ``vms`` its VMIs as kubevirt.io/v1 objects); the lab's backend on it.

        Always closes the backend, takes the lab down and undoes the patches;
        then (only if nothing failed already) asserts nothing of it is left.
        """
        mp = pytest.MonkeyPatch()
        self.isolate(mp, journal)
        try:
            lifecycle.lab_down()  # an earlier aborted run of this module
            t0 = time.monotonic()
            lifecycle.lab_up(profile, nodes, node_prefix=self.node_prefix, vms=vms)
            what = f"{nodes} node{'s' if nodes != 1 else ''}, {profile}{', vms' if vms else ''}"
            print(f"\nFIGURE lab_up({what}): {time.monotonic() - t0:.2f} s")
            backend = LabClusterProvider().backend()
            assert isinstance(backend, LabClusterBackend)
            try:
                yield backend
            finally:
                backend.close()
        finally:
            try:
                lifecycle.lab_down()
                left = self.our_objects()
            finally:
                mp.undo()
        assert not left, f"private lab {self.name} left objects behind: {left}"


def probe(backend: LabClusterBackend, workload: str, timeout: float = 1.0) -> tuple[int, str]:
    """One GET of the workload's health endpoint from where the recorder probes
    (the hub's netns): (status, body). OSError when nothing answers."""
    target = backend.probe_target(workload)
    if target is None:
        raise OSError(f"{workload} has no address yet")

    def get() -> tuple[int, str]:
        c = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
        try:
            c.request("GET", target.path)
            r = c.getresponse()
            return r.status, r.read().decode(errors="replace")
        finally:
            c.close()

    return in_netns(target.netns or net.HUB_NS, get)


def run_rto_campaign(campaign: dict[str, object], tmp_path: Path) -> list[dict[str, object]]:
    """``rto campaign`` (this venv's console script) on ``campaign``; its result rows.

    The exit code must be 0 (the output is the assertion's message)."""
    spec = tmp_path / "campaign.yaml"
    spec.write_text(yaml.safe_dump(campaign))
    runs = tmp_path / "runs"
    rto = str(Path(sys.executable).parent / "rto")
    proc = subprocess.run(
        [rto, "campaign", str(spec), "--runs-dir", str(runs)],
        capture_output=True, text=True, timeout=400, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads(line) for line in (runs / "results.jsonl").read_text().splitlines()]
