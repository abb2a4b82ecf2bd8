"""The real cluster's images, packed here as OCI archives: no registry is reachable.

Called by ``cluster.lab.kube.node`` when it starts a node's containerd
(``import_images``) and read by whoever writes workloads for the real cluster
(``pod_image``, used with ``imagePullPolicy: Never``). Three one-layer images:

- ``rto.local/pause:<tag>``, the pod sandbox: the static ``pause`` program of
  scripts/build-kube.sh (``paths.bin_dir()``);
- ``rto.local/pod:<tag>``, the lab's pod: the busybox root filesystem of
  ``cluster.lab.rootfs`` (entrypoint ``/bin/start``: busybox httpd on port 80,
  ``/cgi-bin/healthz``), whose health check writes and reads back a file on the pod's volume;
- ``rto.local/busybox:<tag>``, Debian's static busybox with every applet
  linked: the ``pod_image`` of the kube config the lab writes, in which the
  kube backend runs its own workload script as it would in docker.io's busybox.

The tag is a hash of the image's content, so a changed binary or rootfs makes a
new reference that every node imports at its next start. Layers are written
deterministically (sorted entries, owner root, mtime 0), so the same inputs
give the same tag on every machine. Archives are cached in
``state.STATE_DIR/images``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster.lab import rootfs, state
from cluster.lab.kube import paths
from core.errors import LabError

__all__ = [
    "CTR_NAMESPACE",
    "Image",
    "all_images",
    "busybox_image",
    "import_images",
    "pause_image",
    "pod_image",
]

CTR_NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin serves
_REGISTRY = "rto.local"
_VERSION = "1"  # bump when the packing changes in a way the content hash does not see
_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class Image:
    """One packed image: its reference and its archive on disk."""

    ref: str
    archive: Path


# Packed images of this process, by what their inputs looked like: a node start
# re-tars nothing unless the pause binary or the rootfs changed.
_packed: dict[tuple[str, str], Image] = {}


def _memo(key: tuple[str, str], build: Callable[[], Image]) -> Image:
    """The packed image of ``key``, built once per state directory.

    The state directory is part of the key, and a cached archive that is gone
    is packed again: a process that ran one lab and then another (a private
    lab of a test, whose directory was removed) must not hand the second lab
    the first one's archive.
    """
    full = (key[0], f"{state.STATE_DIR}:{key[1]}")
    image = _packed.get(full)
    if image is None or not image.archive.is_file():
        image = _packed[full] = build()
    return image


def _info(name: str, mode: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = 0
    return ti


def _layer_of_dir(root: Path) -> bytes:
    """A tar of the tree under ``root`` (dirs, files, symlinks), deterministic."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                path = Path(dirpath) / name
                arc = str(path.relative_to(root))
                st = path.lstat()
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISLNK(st.st_mode):
                    ti = _info(arc, 0o777, tarfile.SYMTYPE)
                    ti.linkname = os.readlink(path)
                    tar.addfile(ti)
                elif stat.S_ISDIR(st.st_mode):
                    tar.addfile(_info(arc, mode, tarfile.DIRTYPE))
                elif stat.S_ISREG(st.st_mode):
                    ti = _info(arc, mode)
                    ti.size = st.st_size
                    with open(path, "rb") as f:
                        tar.addfile(ti, f)
    return buf.getvalue()


def _layer_of_files(files: dict[str, Path], dirs: tuple[str, ...]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d in dirs:
            tar.addfile(_info(d, 0o1777 if d == "tmp" else 0o755, tarfile.DIRTYPE))
        for arc, src in sorted(files.items()):
            data = src.read_bytes()
            ti = _info(arc, 0o755)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _pack(repo: str, layer: bytes, config: dict[str, object]) -> Image:
    """Write (once) the OCI archive of a one-layer image; its reference carries the tag."""
    image_config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": _OCI_MANIFEST,
            "config": {
                "mediaType": _OCI_CONFIG,
                "digest": _digest(image_config),
                "size": len(image_config),
            },
            "layers": [{"mediaType": _OCI_LAYER, "digest": _digest(layer), "size": len(layer)}],
        },
        sort_keys=True,
    ).encode()
    tag = _digest(manifest)[len("sha256:") :][:12]
    ref = f"{_REGISTRY}/{repo}:{tag}"
    archive = Path(state.STATE_DIR) / "images" / f"kube-{repo}-{tag}.oci.tar"
    if archive.is_file():
        return Image(ref, archive)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": _OCI_INDEX,
            "manifests": [
                {
                    "mediaType": _OCI_MANIFEST,
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    # ctr names the imported image after this annotation.
                    "annotations": {
                        "io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        }
    ).encode()
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(f".{archive.name}.{os.getpid()}")
    try:
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
            blobs = {
                "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
                "index.json": index,
            }
            for blob in (layer, image_config, manifest):
                blobs[f"blobs/sha256/{_digest(blob)[len('sha256:') :]}"] = blob
            for name, blob in blobs.items():
                ti = _info(name, 0o644)
                ti.size = len(blob)
                tar.addfile(ti, io.BytesIO(blob))
        tmp.rename(archive)  # whole or absent: a concurrent start never reads half
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LabError(f"cannot write image archive {archive}: {exc}") from exc
    return Image(ref, archive)


def _pause() -> Image:
    binary = paths.bin_dir() / "pause"
    try:
        st = binary.stat()
    except FileNotFoundError:
        raise LabError(f"{binary} is missing: run `bash scripts/build-kube.sh`") from None
    key = ("pause", f"{_VERSION}:{binary}:{st.st_size}:{st.st_mtime_ns}")

    def build() -> Image:
        layer = _layer_of_files({"pause": binary}, ("dev", "proc", "sys", "etc", "tmp"))
        return _pack("pause", layer, {"Entrypoint": ["/pause"]})

    return _memo(key, build)


def _pod() -> Image:
    root = rootfs.ensure_rootfs()
    stamp = root.parent / "busybox-rootfs.stamp"  # written by ensure_rootfs: its inputs' hash
    key = ("pod", f"{_VERSION}:{root}:{stamp.read_text().strip()}")
    config: dict[str, object] = {
        "Entrypoint": ["/bin/start"],
        "Env": ["PATH=/bin"],
        "WorkingDir": "/",
        "ExposedPorts": {"80/tcp": {}},
    }
    return _memo(key, lambda: _pack("pod", _layer_of_dir(root), config))


def pause_image() -> str:
    """The sandbox image reference (containerd's ``pinned_images.sandbox``)."""
    return _pause().ref


def pod_image() -> str:
    """The lab pod's image reference, for workloads with ``imagePullPolicy: Never``."""
    return _pod().ref


def _busybox() -> Image:
    """Debian's static busybox with a link per applet, as the registry's busybox image is.

    The kube backend's own workload (cluster/kube/workloads.py) runs a shell
    script (mkdir, cat, chmod, httpd) in whatever ``pod_image`` its config names;
    on a real cluster that is docker.io/library/busybox, here this image.
    """
    st = rootfs.BUSYBOX.stat()
    key = ("busybox", f"{_VERSION}:{st.st_size}:{st.st_mtime_ns}")

    def build() -> Image:
        listed = subprocess.run(
            [str(rootfs.BUSYBOX), "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for d in ("bin", "dev", "proc", "sys", "etc", "tmp", "root", "www"):
                tar.addfile(_info(d, 0o1777 if d == "tmp" else 0o755, tarfile.DIRTYPE))
            data = rootfs.BUSYBOX.read_bytes()
            ti = _info("bin/busybox", 0o755)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
            for applet in sorted(set(listed) - {"busybox"}):
                link = _info(f"bin/{applet}", 0o777, tarfile.SYMTYPE)
                link.linkname = "busybox"
                tar.addfile(link)
        config: dict[str, object] = {"Cmd": ["sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"}
        return _pack("busybox", buf.getvalue(), config)

    return _memo(key, build)


def busybox_image() -> str:
    """A general busybox image (every applet), the kube backend's ``pod_image`` on the lab."""
    return _busybox().ref


def all_images() -> list[Image]:
    """Every image a node needs, packed (cached) and ready to import."""
    return [_pause(), _pod(), _busybox()]


def _ctr(address: Path, *args: str, timeout: float = 120) -> str:
    argv = [str(paths.bin_dir() / "ctr"), "--address", str(address), "-n", CTR_NAMESPACE, *args]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise LabError(f"`ctr {' '.join(args)}` at {address} took over {timeout:.0f} s") from None
    if res.returncode != 0:
        err = (res.stderr or res.stdout).strip().splitlines()
        raise LabError(f"`ctr {' '.join(args)}` at {address} failed: {err[-1] if err else '?'}")
    return res.stdout


def import_images(address: Path) -> list[str]:
    """Import into the containerd at ``address`` what it lacks; the references imported.

    Listing first keeps a restart fast: a node whose containerd root survived
    (a power-off keeps the disk) imports nothing.
    """
    have = set(_ctr(address, "images", "ls", "-q").split())
    imported: list[str] = []
    for image in all_images():
        if image.ref in have:
            continue
        _ctr(address, "images", "import", str(image.archive))
        imported.append(image.ref)
    return imported
