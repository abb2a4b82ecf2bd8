"""The lab's accelerator choice: KVM only after the lab's guest booted on it.

Unit tests drive ``choose_accelerator`` with a stand-in probe and a private
cache file; the lab tests boot the real guest under real QEMU: each override
forced (the guest boots, or the lab refuses in one line), and a guest that
never reaches its marker under KVM falling back to TCG, which then boots.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from chaos import cli
from cluster.lab import accel, lifecycle
from cluster.lab.accel import KvmProbe, choose_accelerator, probe_kvm
from cluster.lab.guest.build import build_guest
from cluster.lab.guest.qemu import GuestOptions, QemuGuest
from core.errors import LabError


class CountingProbe:
    """A KVM probe with a fixed answer that counts how often it was asked."""

    def __init__(self, booted: bool, reason: str = "stand-in") -> None:
        self.answer = KvmProbe(booted, reason, 1.5 if booted else None)
        self.calls = 0

    def __call__(self) -> KvmProbe:
        self.calls += 1
        return self.answer


@pytest.fixture(autouse=True)
def _fresh_choice() -> Iterator[None]:
    accel.accelerator.cache_clear()
    yield
    accel.accelerator.cache_clear()


def _choose(tmp_path: Path, probe: CountingProbe, env: dict[str, str] | None = None,
            key: str = "k1") -> accel.AccelChoice:  # fmt: skip
    return choose_accelerator(
        env=env or {}, cache=tmp_path / "accel.json", probe=probe, key=lambda: key
    )


def test_a_guest_that_booted_under_kvm_chooses_kvm_once_then_the_cache(tmp_path: Path) -> None:
    probe = CountingProbe(booted=True, reason="booted")
    first = _choose(tmp_path, probe)
    assert (first.accel, first.source, first.libvirt_type) == ("kvm", "probed", "kvm")
    second = _choose(tmp_path, probe)
    assert (second.accel, second.source) == ("kvm", "cached")
    assert probe.calls == 1
    doc = json.loads((tmp_path / "accel.json").read_text())
    assert [e["key"] for e in doc.values()] == ["k1"]


def test_no_boot_under_kvm_chooses_tcg_with_the_reason(tmp_path: Path) -> None:
    choice = _choose(tmp_path, CountingProbe(booted=False, reason="printed nothing"))
    assert (choice.accel, choice.libvirt_type) == ("tcg", "qemu")
    assert "printed nothing" in choice.describe()


def test_the_verdict_is_per_machine_key(tmp_path: Path) -> None:
    probe = CountingProbe(booted=False)
    _choose(tmp_path, probe, key="kernel-a | cpu | qemu 7.2")
    _choose(tmp_path, probe, key="kernel-b | cpu | qemu 7.2")  # a new kernel: ask again
    _choose(tmp_path, probe, key="kernel-a | cpu | qemu 7.2")
    assert probe.calls == 2


def test_an_unreadable_cache_is_probed_again(tmp_path: Path) -> None:
    (tmp_path / "accel.json").write_bytes(b"\x00\xff not json")
    probe = CountingProbe(booted=False)
    assert _choose(tmp_path, probe).source == "probed"
    assert probe.calls == 1


def test_forced_tcg_never_boots_a_kvm_guest(tmp_path: Path) -> None:
    probe = CountingProbe(booted=True)
    choice = _choose(tmp_path, probe, env={"RTO_LAB_ACCEL": "tcg"})
    assert (choice.accel, choice.source) == ("tcg", "forced")
    assert probe.calls == 0


def test_forced_kvm_is_used_when_the_guest_booted(tmp_path: Path) -> None:
    choice = _choose(tmp_path, CountingProbe(booted=True), env={"RTO_LAB_ACCEL": "KVM"})
    assert (choice.accel, choice.source) == ("kvm", "forced")


def test_forced_kvm_that_cannot_boot_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(LabError) as err:
        _choose(tmp_path, CountingProbe(booted=False, reason="hung"), env={"RTO_LAB_ACCEL": "kvm"})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("RTO_LAB_ACCEL=kvm, but KVM cannot run the lab's guest")
    assert "hung" in message


def test_a_bad_override_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(LabError, match=r"RTO_LAB_ACCEL='hvf' is not an accelerator"):
        _choose(tmp_path, CountingProbe(booted=True), env={"RTO_LAB_ACCEL": "hvf"})


# --- real QEMU ---------------------------------------------------------------------


def _boots(accel_name: str, workdir: Path) -> None:
    with QemuGuest(build_guest(), workdir, GuestOptions(accel=accel_name), disk_mib=None) as g:
        ready = g.wait_ready(60)
    assert ready.boot == 1


@pytest.mark.lab
@pytest.mark.slow
def test_forced_tcg_boots_the_guest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTO_LAB_ACCEL", "tcg")
    choice = choose_accelerator(cache=tmp_path / "accel.json")
    assert choice.accel == "tcg"
    _boots(choice.accel, tmp_path / "guest")


@pytest.mark.lab
@pytest.mark.slow
def test_forced_kvm_boots_the_guest_or_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever this machine's KVM does, the lab never starts a guest that hangs."""
    monkeypatch.setenv("RTO_LAB_ACCEL", "kvm")
    try:
        choice = choose_accelerator(cache=tmp_path / "accel.json")  # a real KVM boot
    except LabError as exc:
        assert "\n" not in str(exc)
        assert "RTO_LAB_ACCEL=kvm, but KVM cannot run the lab's guest" in str(exc)
        return
    assert choice.accel == "kvm"
    _boots("kvm", tmp_path / "guest")


@pytest.mark.lab
@pytest.mark.slow
def test_a_guest_that_never_reaches_its_marker_under_kvm_falls_back_to_tcg(
    tmp_path: Path,
) -> None:
    # rdinit=/bin/false: the kernel finds no init it can keep, panics and hangs
    # (panic=0), so no READY marker whatever KVM does on this machine.
    def hanging() -> KvmProbe:
        return probe_kvm(timeout=8, extra_cmdline=("rdinit=/bin/false",))

    choice = choose_accelerator(env={}, cache=tmp_path / "accel.json", probe=hanging)
    assert (choice.accel, choice.source) == ("tcg", "probed")
    assert "RTO-GUEST-READY" in choice.reason or "/dev/kvm" in choice.reason
    _boots(choice.accel, tmp_path / "guest")  # and the fallback does boot


@pytest.mark.lab
def test_lab_up_refuses_forced_kvm_before_creating_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "accel.json"
    choose_accelerator(  # this machine's verdict, recorded as "does not boot"
        env={}, cache=cache, probe=lambda: KvmProbe(False, "seeded: hangs")
    )
    monkeypatch.setattr(accel, "cache_path", lambda: cache)
    monkeypatch.setenv("RTO_LAB_ACCEL", "kvm")
    result = CliRunner().invoke(cli.cli, ["lab", "up", "--vms", "--nodes", "2"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: RTO_LAB_ACCEL=kvm, but KVM cannot run")
    assert not lifecycle.lab_status()["up"]
    assert lifecycle.lab_status()["nodes"] == []
