"""The pods' image: a busybox-static root filesystem built (and cached) by the lab.

Called by ``lifecycle.lab_up`` and packed into the pod image by
``cluster.lab.kube.images`` (``rto.local/pod``), which the kubelets run.
The container's pid 1 is ``/bin/start``: it copies the site into the tmpfs
``/www`` and then execs busybox httpd in the foreground, so httpd *is* pid 1 and
a SIGKILL of it ends the container. ``/cgi-bin/healthz`` writes and reads back a
small file on the pod's volume (``/data``): 200 "<pod> <instance>" when that
works, 503 on an I/O error, and it hangs while the volume is frozen, which is
exactly what a storage fault should look like to a prober.

The image is rebuilt only when its inputs change (the busybox binary and the
scripts below), tracked by a stamp file holding their hash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from cluster.lab import state
from core.errors import LabError

__all__ = ["BUSYBOX", "HEALTHZ_PATH", "ensure_rootfs", "rootfs_dir"]

BUSYBOX = Path("/bin/busybox")
HEALTHZ_PATH = "/cgi-bin/healthz"

_START = """#!/bin/sh
# pid 1 of a lab pod: the site goes to the writable tmpfs /www, then httpd
# replaces this shell (exec) so that killing httpd ends the container.
cp -r /srv/www/. /www/
exec httpd -f -p 80 -h /www
"""

# One file per request ($$) so concurrent probes do not trip over each other.
_HEALTHZ = """#!/bin/sh
f=/data/.healthz.$$
if echo "$$" > "$f" 2>/dev/null && read -r got < "$f" 2>/dev/null && [ "$got" = "$$" ]; then
    rm -f "$f" 2>/dev/null
    printf 'Status: 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\n%s %s\\n' \\
        "$POD_NAME" "$INSTANCE"
else
    rm -f "$f" 2>/dev/null
    printf 'Status: 503 Service Unavailable\\r\\nContent-Type: text/plain\\r\\n\\r\\n'
    printf '%s %s volume I/O error\\n' "$POD_NAME" "$INSTANCE"
fi
"""

_APPLETS = (
    "sh", "httpd", "cp", "cat", "echo", "printf", "rm", "mkdir", "ls", "sleep",
    "sync", "true", "false", "test", "[", "ps", "kill", "wget", "id", "env",
)  # fmt: skip

_DIRS = ("bin", "proc", "dev", "sys", "tmp", "www", "data", "etc", "srv/www/cgi-bin", "root")

_VERSION = "1"  # bump when the layout changes in a way the hash does not see


def rootfs_dir() -> Path:
    return state.STATE_DIR / "images" / "busybox-rootfs"


def _inputs_hash() -> str:
    if not BUSYBOX.is_file():
        raise LabError(
            f"{BUSYBOX} is missing: install busybox-static (apt-get install busybox-static)"
        )
    h = hashlib.sha256()
    h.update(_VERSION.encode())
    h.update(_START.encode())
    h.update(_HEALTHZ.encode())
    h.update(" ".join(_APPLETS).encode())
    st = BUSYBOX.stat()
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _build(dest: Path) -> None:
    for d in _DIRS:
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    for applet in _APPLETS:
        (dest / "bin" / applet).symlink_to("busybox")
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (dest / "etc" / "group").write_text("root:x:0:\n")
    (dest / "srv" / "www" / "index.html").write_text("rto lab pod\n")
    for path, text in (
        (dest / "bin" / "start", _START),
        (dest / "srv/www/cgi-bin/healthz", _HEALTHZ),
    ):
        path.write_text(text)
        path.chmod(0o755)
    (dest / "tmp").chmod(0o1777)


def ensure_rootfs() -> Path:
    """The cached rootfs directory, (re)built if missing or out of date."""
    root = rootfs_dir()
    stamp = root.parent / "busybox-rootfs.stamp"
    want = _inputs_hash()
    if root.is_dir() and stamp.is_file() and stamp.read_text().strip() == want:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # Build beside it and swap in, so a container starting meanwhile never sees
    # a half-built image. The old one may still be in use by running
    # containers (bind-mounted): moving it away is fine, they keep their mount.
    tmp = Path(tempfile.mkdtemp(prefix=".rootfs-", dir=root.parent))
    try:
        _build(tmp)
        tmp.chmod(0o755)
        if root.exists():
            old = root.parent / f".old-rootfs-{os.getpid()}"
            root.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LabError(f"cannot build the pod rootfs in {root}: {exc}") from exc
    stamp.write_text(want + "\n")
    return root
