"""``rto lab ...``: the lab's own commands, contributed to the ``rto`` CLI.

Declared as the ``lab`` entry of ``rto.commands`` (pyproject.toml); ``chaos.cli``
calls :func:`lab_commands` with its journal replay and adds the group it
returns. Commands: ``up``, ``down``, ``doctor``, ``images``, ``kubeconfig``,
``status``. A
``HarnessError`` raised here is printed and exits 2 by the ``rto`` group, as
for every command. ``lab down`` first reverts every fault still pending in the
journal (the function ``chaos.cli`` hands in: the journal is the harness's, not
the lab's), then removes every lab object.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import click
from rich.console import Console

from cluster.lab import accel
from cluster.lab.doctor import format_checks, run_checks
from cluster.lab.guest.build import build_guest
from cluster.lab.kube.flags import component_flags
from cluster.lab.kube.hub import admin_kubeconfig
from cluster.lab.kube.paths import KUBE_VERSION
from cluster.lab.lifecycle import lab_down, lab_status, lab_up
from cluster.lab.rootfs import ensure_rootfs
from cluster.profiles import get_profile
from core.errors import LabError

__all__ = ["lab_commands"]

console = Console(stderr=True)
out = Console()


def lab_commands(revert_pending: Callable[[], None]) -> click.Group:
    """The ``lab`` group; ``revert_pending`` runs before ``lab down`` tears down."""

    @click.group(help="The embedded lab (needs root).")
    def lab() -> None:
        pass

    @lab.command(
        "up",
        help="Create the lab: nodes, and the real Kubernetes cluster on them (etcd, "
        "kube-apiserver, controller-manager, scheduler on the hub; a containerd and a "
        "kubelet per node).",
    )
    @click.option("--profile", default="fast", show_default=True, help="timing profile")
    @click.option("--nodes", default=3, show_default=True, type=click.IntRange(2, 8))
    @click.option(
        "--vms",
        is_flag=True,
        help="also a libvirtd per node: VMIs are kubevirt.io/v1 objects of the API server "
        "(KubeVirt's own CRDs), reconciled by the lab's virt-controller and virt-handlers",
    )
    def lab_up_cmd(profile: str, nodes: int, vms: bool) -> None:

        get_profile(profile)  # bad input fails before anything is created
        what = "with VMs (kubevirt.io/v1 objects)" if vms else "pods only"
        with console.status(f"bringing the lab up ({nodes} nodes, {what}, profile {profile})"):
            choice = lab_up(profile=profile, nodes=nodes, vms=vms)
        out.print(f"[green]lab up[/]: {nodes} nodes, {what}, profile {profile}", highlight=False)
        if choice is not None:
            out.print(f"VM accelerator: {choice.describe()}", highlight=False, soft_wrap=True)
        flags = component_flags(profile).as_dict()
        out.print(
            f"Kubernetes {KUBE_VERSION}: `rto lab kubeconfig > lab.kubeconfig`; "
            f"profile {profile} sets {json.dumps(flags)}",
            highlight=False,
            soft_wrap=True,
        )

    @lab.command("kubeconfig", help="Print the admin kubeconfig of the lab's real cluster.")
    @click.option("--path", "as_path", is_flag=True, help="print where the file is instead")
    def lab_kubeconfig_cmd(as_path: bool) -> None:

        path = admin_kubeconfig()
        if not path.exists():
            raise LabError("the lab's real cluster is not up: `rto lab up` starts it")
        click.echo(str(path) if as_path else path.read_text(), nl=as_path)

    @lab.command("doctor", help="What this machine can do for the lab (each check done for real).")
    @click.option("--recheck", is_flag=True, help="forget the cached KVM verdict and boot again")
    def lab_doctor_cmd(recheck: bool) -> None:

        if recheck:
            accel.cache_path().unlink(missing_ok=True)
        with console.status("checking (a first run boots a guest under KVM, up to 15 s)"):
            checks = run_checks()
        for line in format_checks(checks):
            click.echo(line)
        if any(c.level == "fail" for c in checks):
            sys.exit(1)

    @lab.command("down", help="Revert pending faults, then remove every lab object.")
    def lab_down_cmd() -> None:

        try:
            revert_pending()
        finally:
            with console.status("tearing the lab down"):
                lab_down()
        out.print("[green]lab down[/]")

    @lab.command("images", help="Build (or check) the lab's cached images: pod rootfs, VM guest.")
    def lab_images_cmd() -> None:

        with console.status("building the pod rootfs"):
            rootfs = ensure_rootfs()
        out.print(f"pod rootfs: {rootfs}")
        with console.status("building the VM guest (kernel + initramfs)"):
            guest = build_guest()
        out.print(f"VM guest: {guest.kernel.parent}")

    @lab.command("status", help="What is up (JSON).")
    def lab_status_cmd() -> None:

        out.print_json(json.dumps(lab_status(), default=str))

    return lab
