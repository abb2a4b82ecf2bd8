"""What the lab's virt-handler writes into a VMI's status for each state of its guest.

``cluster.lab.kube.virt_handler.desired_status`` maps the lab's view of one
domain (``VmiRun``: started, booted, paused by an I/O error, QEMU gone) onto
KubeVirt's status fields; the recorder and the healers read exactly these
(phase, Ready, Paused with its reason, the guest address). ``_comparable``
decides whether a write is needed, so it must ignore what the API server adds
(timestamps) and see every change that matters.
"""

from __future__ import annotations

from cluster.lab.kube.virt_handler import _comparable, desired_status
from cluster.lab.vmis import VmiRun


def _run(**kw: object) -> VmiRun:
    run = VmiRun("vm1", 1, "198.18.100.150")
    for k, v in kw.items():
        setattr(run, k, v)
    return run


def _cond(status: dict[str, object], type_: str) -> dict[str, object] | None:
    return next((c for c in status["conditions"] if c["type"] == type_), None)  # type: ignore[attr-defined]


def test_a_booting_guest_is_scheduled_not_ready_with_its_address() -> None:
    status, instance = desired_status(_run(phase="Scheduled", active=True, reason="Booting"))
    assert status["phase"] == "Scheduled"
    assert _cond(status, "Ready") == {"type": "Ready", "status": "False", "reason": "Booting"}
    assert status["interfaces"] == [
        {"name": "default", "ipAddress": "198.18.100.150", "ipAddresses": ["198.18.100.150"]}
    ]
    assert instance is None


def test_a_ready_guest_is_running_and_ready_with_its_boot_instance() -> None:
    status, instance = desired_status(_run(phase="Running", active=True, instance="abc123"))
    assert status["phase"] == "Running"
    assert _cond(status, "Ready")["status"] == "True"  # type: ignore[index]
    assert _cond(status, "LiveMigratable")["status"] == "True"  # type: ignore[index]
    assert _cond(status, "Paused") is None
    assert instance == "abc123"


def test_an_io_error_pause_is_paused_io_error_and_not_ready() -> None:
    status, _ = desired_status(_run(phase="Running", active=True, paused=(True, "IOError")))
    assert status["phase"] == "Running"  # KubeVirt keeps the phase; the condition tells
    assert _cond(status, "Paused") == {
        "type": "Paused",
        "status": "True",
        "reason": "PausedIOError",
    }
    assert _cond(status, "Ready")["status"] == "False"  # type: ignore[index]
    paused, _ = desired_status(_run(phase="Running", active=True, paused=(True, "Paused")))
    assert _cond(paused, "Paused")["reason"] == "PausedByUser"  # type: ignore[index]


def test_a_dead_qemu_is_failed_without_an_address() -> None:
    status, _ = desired_status(_run(phase="Failed", active=False, reason="Stopped"))
    assert status == {
        "phase": "Failed",
        "reason": "Stopped",
        "conditions": [{"type": "Ready", "status": "False", "reason": "Stopped"}],
    }


def test_a_write_is_needed_only_when_something_that_matters_changed() -> None:
    booting, _ = desired_status(_run(phase="Scheduled", active=True, reason="Booting"))
    running, _ = desired_status(_run(phase="Running", active=True))
    # What the API server gives back: the same fields plus timestamps, in another order.
    stored = {
        **booting,
        "conditions": [
            {**c, "lastTransitionTime": "2026-12-03T00:00:00Z"}
            for c in reversed(booting["conditions"])
        ],
        "nodeName": "node1",
    }
    assert _comparable(stored) == _comparable(booting)
    assert _comparable(stored) != _comparable(running)
