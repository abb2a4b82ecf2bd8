"""The virt-handler's domain half against races with a live migration.

The handler (``cluster.lab.vmis.VmiHandler``) decides from the VMIs it was
handed at the start of a pass and from libvirt's answer a moment later. When a
live migration off the node starts and ends in between, the domain is gone
while the VMI still names the node and no migration: reporting it Failed there
would make the VM replace a VMI that runs fine on the destination. A domain
that really stopped is Failed (KubeVirt's virt-handler never starts it again).
Only libvirt is faked here (the domain lookup and the start/stop that would
talk to it), with the state the handler would see.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("libvirt", reason="libvirt-python (extra 'vm') is not installed")

import libvirt

from cluster.lab.vmis import VmiHandler, VmiRun
from core.clock import FakeClock


class _Dom:
    def __init__(self, state: int, reason: int) -> None:
        self._state = (state, reason)

    def state(self) -> tuple[int, int]:
        return self._state


class Handler(VmiHandler):
    """A handler whose libvirtd holds ``self.domains`` (name -> _Dom)."""

    def __init__(self) -> None:
        super().__init__("n1", 1, FakeClock())
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
    h.sync(WANTED)
    assert h.started == ["v1"]
    return h


@pytest.mark.parametrize(
    "gone",
    [None, _Dom(libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED)],
    ids=["undefined", "shutoff-migrated"],
)
def test_a_domain_that_migrated_away_on_stale_rows_is_not_failed(gone: _Dom | None) -> None:
    h = _running()
    # Rows of this pass still name n1 (read before the migration began); the
    # domain has left by the time libvirt is asked.
    if gone is None:
        h.domains.pop("v1")
    else:
        h.domains["v1"] = gone
    h.sync(WANTED)
    assert h.vmis["v1"].phase != "Failed", "failed a domain that may have migrated away"
    # The next pass reads fresh rows: the VMI is the destination's now.
    h.sync({})
    assert h.started == ["v1"] and h.stopped == ["v1"]


def test_a_domain_gone_for_two_passes_on_rows_naming_this_node_is_failed() -> None:
    h = _running()
    h.domains.pop("v1")
    h.sync(WANTED)
    h.sync(WANTED)  # fresh rows still say n1, no migration
    assert h.started == ["v1"]  # never started again here: the VM makes a new VMI
    assert (h.vmis["v1"].phase, h.vmis["v1"].reason) == ("Failed", "Stopped")


def test_a_crashed_qemu_is_failed_in_the_same_pass() -> None:
    h = _running()
    h.domains["v1"] = _Dom(libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED)
    h.sync(WANTED)
    assert h.started == ["v1"]
    assert (h.vmis["v1"].phase, h.vmis["v1"].reason) == ("Failed", "Stopped")
