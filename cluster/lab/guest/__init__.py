"""The lab's VM guest: a Debian kernel and a busybox initramfs built on the host.

``build_guest()`` (filled from the host's linux-image-amd64 and busybox-static
packages) returns a cached :class:`GuestImage`; lab VM backends read its
``kernel``, ``initrd`` and ``cmdline(...)``. The guest answers GET /healthz on
port 80, feeds an i6300esb watchdog, counts boots on its virtio data disk and
takes ``ping``/``hang``/``crash`` on its second serial port. See ``build.py``
for the image, ``qemu.py`` for booting it under plain QEMU.
"""

from __future__ import annotations

from cluster.lab.guest.build import (
    DEFAULT_GUEST_GW,
    DEFAULT_GUEST_IP,
    READY_MARKER,
    GuestImage,
    build_guest,
    extract_vmlinux,
)

__all__ = [
    "DEFAULT_GUEST_GW",
    "DEFAULT_GUEST_IP",
    "READY_MARKER",
    "GuestImage",
    "build_guest",
    "extract_vmlinux",
]
