"""libvirt domain events of lab VMIs reach the lab backend's ``events`` and a run's timeline.

Brings up its own one-node lab with VMs (its real cluster, VMIs as
kubevirt.io/v1 objects) under private names (state/run dirs
``rto-lab-virtev``, netns prefix ``rtove``, node ``ven1``) so it never touches
another lab on the machine, and takes it down in finally. A VMI's guest is hung
(2 s i6300esb watchdog, action reset): the node libvirtd's Watchdog event must
come out of ``backend.events`` (source ``vmi``, name ``vmi/<vmi>``) on the
backend's monotonic clock, and a ``Recorder`` over the same period must have it
as a CONTROL event. Measured figures are printed (``-s``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from private_lab import PrivateLab, probe

from chaos.recorder import Recorder
from cluster.api import Event, WorkloadKind
from core.timeline import EventKind, Timeline
from core.wait import poll_until

pytest.importorskip("libvirt", reason="libvirt-python (extra 'vm') is not installed")

from cluster.lab_cluster import LabClusterBackend

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(240)]

LAB = PrivateLab("virtev", "rtove", "ven")
NODE = LAB.node(1)
VMI = "vmev"


@pytest.fixture(scope="module")
def lab() -> Iterator[LabClusterBackend]:
    with LAB.up(1, vms=True) as backend:
        yield backend


def _answering(lab: LabClusterBackend, old: str | None) -> str | None:
    """The guest's boot instance once /healthz answers with one other than ``old``."""
    try:
        code, body = probe(lab, VMI, timeout=0.5)
    except OSError:
        return None
    words = body.split()
    if code != 200 or words[:1] != [VMI] or len(words) < 2 or words[1] == old:
        return None
    return words[1]


def _vmi_events(lab: LabClusterBackend, since: float) -> list[Event]:
    return [e for e in lab.events(since) if e.source == "vmi" and e.name == f"vmi/{VMI}"]


def test_watchdog_reaches_events_and_recorder_timeline(lab: LabClusterBackend) -> None:
    t0 = time.monotonic()
    # The first events() call starts the node's listener (the recorder's
    # first tick does the same in a run).
    list(lab.events(t0))
    lab.create_workload(VMI, WorkloadKind.VMI, NODE)
    try:
        booted = poll_until(lambda: _answering(lab, None), 90, f"{VMI} to answer", interval=0.1)
        print(f"\nFIGURE VMI create -> first good probe: {time.monotonic() - t0:.2f} s")
        started = _vmi_events(lab, t0)
        assert "Started" in [e.reason for e in started], started

        timeline = Timeline(origin=lab.clock.now())
        rec = Recorder(lab, VMI, timeline, interval=0.1, timeout=1.0, good_needed=3)
        rec.start()
        try:
            t_hang = lab.clock.now()
            lab.hang_workload(VMI)

            def watchdog() -> list[Event] | None:
                got = _vmi_events(lab, t_hang)
                return got if any(e.reason == "Watchdog" for e in got) else None

            got = poll_until(watchdog, 30, f"a Watchdog event of {VMI}", interval=0.05)
            fired = next(e for e in got if e.reason == "Watchdog")
            print(f"FIGURE hang -> Watchdog event: {fired.at - t_hang:.2f} s "
                  f"(events: {[(e.reason, e.message) for e in got]})")  # fmt: skip
            # Same monotonic clock as the rest: after the hang, not in the future
            # (the 2 s timer runs from the guest's last ping, so it may fire < 2 s
            # after the hang).
            assert t_hang < fired.at <= lab.clock.now()
            assert fired.data == {"node": NODE, "detail": "reset", "vmi": VMI}
            assert fired.message == f"reset on {NODE}"
            merged = list(lab.events(t0))
            assert [e.at for e in merged] == sorted(e.at for e in merged)
            poll_until(lambda: _answering(lab, booted), 90, f"{VMI} back", interval=0.1)
            print(f"FIGURE hang -> good probe (new instance): {lab.clock.now() - t_hang:.2f} s")
            # QEMU's RESET of the watchdog action comes out of libvirt as Reboot.
            after = _vmi_events(lab, t_hang)
            reboots = [e for e in after if e.reason == "Reboot" and e.at >= fired.at]
            assert reboots, after
            print(f"FIGURE hang -> Reboot event: {reboots[0].at - t_hang:.2f} s")
        finally:
            rec.stop()
        control = [e for e in timeline.events() if e.kind is EventKind.CONTROL]
        libvirt_events = [e for e in control if e.data.get("name") == f"vmi/{VMI}"]
        reasons = [e.data["reason"] for e in libvirt_events]
        print(f"FIGURE recorder libvirt events: {[(e.t, e.message) for e in libvirt_events]}")
        assert "Watchdog" in reasons, control
        rec_fired = next(e for e in libvirt_events if e.data["reason"] == "Watchdog")
        assert rec_fired.source == "vmi" and rec_fired.data["node"] == NODE
        assert rec_fired.t == pytest.approx(fired.at - timeline.origin, abs=1e-5)
        assert "Reboot" in reasons[reasons.index("Watchdog") :], reasons
    finally:
        lab.delete_workload(VMI)


def test_listener_survives_node_power_cycle(
    lab: LabClusterBackend, capfd: pytest.CaptureFixture[str]
) -> None:
    """A powered-off node's libvirtd is dropped and re-heard once it is back, quietly."""
    name = "vmev2"
    list(lab.events(lab.clock.now()))  # listening before the power-off
    lab.power_off(NODE)
    try:
        for _ in range(3):  # dead connection dropped, reconnects refused: no noise
            list(lab.events(lab.clock.now()))
            lab.clock.sleep(0.2)
    finally:
        lab.power_on(NODE)
    t_on = lab.clock.now()
    lab.create_workload(name, WorkloadKind.VMI, NODE)
    try:

        def started() -> list[Event] | None:
            got = [e for e in lab.events(t_on) if e.name == f"vmi/{name}"]
            return got if any(e.reason == "Started" for e in got) else None

        got = poll_until(started, 90, f"a libvirt Started event of {name}", interval=0.1)
    finally:
        lab.delete_workload(name)
    err = capfd.readouterr().err
    with capfd.disabled():
        print(f"\nFIGURE power-on -> libvirt Started heard: {got[-1].at - t_on:.2f} s")
    assert "libvirt" not in err.lower(), err
