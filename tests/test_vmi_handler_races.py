"""The node agent's VMI handler against races with a live migration.

The handler (``cluster.lab.vmis.VmiHandler``) decides from rows it read at the
start of a pass and from libvirt's answer a moment later. When a live migration
off the node starts and ends in between, the domain is gone while the rows
still name the node without ``migrating_to``: a restart there would take the
hub route from the destination and the stop that follows drops it (a VMI that
never answers again). Only libvirt is faked here (the domain lookup and the
start/stop that would talk to it), with the state the handler would see.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("libvirt", reason="libvirt-python (extra 'vm') is not installed")

import libvirt

from cluster.lab.vmis import VmiHandler, VmiRun
from cluster.profiles import get_profile
from core.clock import FakeClock


class _Dom:
    def __init__(self, state: int, reason: int) -> None:
        self._state = (state, reason)

    def state(self) -> tuple[int, int]:
        return self._state


class Handler(VmiHandler):
    """A handler whose libvirtd holds ``self.domains`` (name -> _Dom)."""

    def __init__(self) -> None:
        super().__init__("n1", 1, FakeClock(), get_profile("fast"))
        self.domains: dict[str, _Dom] = {}
        self.started: list[str] = []
        self.stopped: list[str] = []

    def _domain(self, name: str) -> Any:
        return self.domains.get(name)

    def _read_console(self, vmi: VmiRun) -> None:
        pass

    def _adopt(self, vmi: VmiRun) -> bool:
        return False

    def _start(self, vmi: VmiRun) -> None:
        self.started.append(vmi.name)
        vmi.active = True
        vmi.starts += 1
        self.domains[vmi.name] = _Dom(libvirt.VIR_DOMAIN_RUNNING, 1)

    def _stop(self, vmi: VmiRun) -> None:
        self.stopped.append(vmi.name)
        self.domains.pop(vmi.name, None)


WANTED: dict[str, tuple[int, str | None]] = {"v1": (1, "198.19.1.10")}


def _running() -> Handler:
    h = Handler()
    h.sync(WANTED, restart_healing=True)
    assert h.started == ["v1"]
    return h


@pytest.mark.parametrize(
    "gone",
    [None, _Dom(libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED)],
    ids=["undefined", "shutoff-migrated"],
)
def test_a_domain_that_migrated_away_on_stale_rows_is_not_restarted(gone: _Dom | None) -> None:
    h = _running()
    # Rows of this pass still name n1 (read before the migration began); the
    # domain has left by the time libvirt is asked.
    if gone is None:
        h.domains.pop("v1")
    else:
        h.domains["v1"] = gone
    h.sync(WANTED, restart_healing=True)
    assert h.started == ["v1"], "restarted a domain that may have migrated away"
    # The next pass reads fresh rows: the VMI is the destination's now.
    h.sync({}, restart_healing=True)
    assert h.started == ["v1"] and h.stopped == ["v1"]


def test_a_domain_gone_for_two_passes_on_rows_naming_this_node_is_restarted() -> None:
    h = _running()
    h.domains.pop("v1")
    h.sync(WANTED, restart_healing=True)
    h.sync(WANTED, restart_healing=True)  # fresh rows still say n1, no migration
    assert h.started == ["v1", "v1"]


def test_a_crashed_qemu_is_restarted_in_the_same_pass() -> None:
    h = _running()
    h.domains["v1"] = _Dom(libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED)
    h.sync(WANTED, restart_healing=True)
    assert h.started == ["v1", "v1"]
