"""Certificates and kubeconfigs of the lab's real cluster, made with Debian's openssl.

Called by ``cluster.lab.kube.hub`` at ``rto lab up``: one CA per lab, a serving
certificate for the API server (every address it is reached at), client
certificates for the admin (``system:masters``), the controller-manager, the
scheduler and the API server's calls to kubelets, and per node a kubelet client
certificate (``system:node:<node>`` in ``system:nodes``, so the Node authorizer
and NodeRestriction treat it as that node) and a kubelet serving certificate.
EC P-256 keys: a lab's PKI is made in about a second on two cores.

Files live in ``paths.kube_dir()/pki``; they are valid for 30 days, which a
lab never outlives (every ``lab up`` makes new ones).
"""

from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cluster.lab.kube import paths
from core.errors import LabError

__all__ = ["ADMIN_USER", "Pki", "kubeconfig", "make_ca", "make_cert"]

FRONT_PROXY_USER = "rto-front-proxy"  # --requestheader-allowed-names of the API server
ADMIN_USER = "rto-admin"
_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
_DAYS = "30"


def _openssl(*args: str, cwd: Path) -> None:
    try:
        subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)
    except FileNotFoundError:
        raise LabError("openssl is not installed (scripts/install.sh installs it)") from None
    except subprocess.CalledProcessError as exc:
        err = exc.stderr.decode(errors="replace").strip().splitlines()
        raise LabError(f"openssl {args[0]} failed: {err[-1] if err else exc}") from None


def make_ca(d: Path, name: str) -> None:
    """``ca.crt``/``ca.key`` in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.crt",
        "-days", _DAYS, "-subj", f"/CN={name}", cwd=d,
    )  # fmt: skip


def make_cert(d: Path, name: str, subject: str, sans: list[str] | None = None) -> None:
    """``<name>.crt``/``<name>.key`` signed by ``d``'s CA; ``sans`` like ``IP:1.2.3.4``."""
    _openssl("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)
    ext = (
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        + (f"subjectAltName={','.join(sans)}\n" if sans else "")
    )
    (d / f"{name}.ext").write_text(ext)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", _DAYS, "-extfile", f"{name}.ext", "-out", f"{name}.crt",
        cwd=d,
    )  # fmt: skip
    (d / f"{name}.csr").unlink()
    (d / f"{name}.ext").unlink()


def kubeconfig(
    path: Path, server: str, ca: Path, cert: Path, key: Path, user: str, *, inline: bool = False
) -> None:
    """A kubeconfig with one context ``rto-lab``.

    ``inline``: certificates as base64 data, so the file works wherever it is
    copied to (the one ``rto lab kubeconfig`` hands out); otherwise by path.
    """
    if inline:
        b64 = {p: base64.b64encode(p.read_bytes()).decode() for p in (ca, cert, key)}
        cluster = {"server": server, "certificate-authority-data": b64[ca]}
        creds = {"client-certificate-data": b64[cert], "client-key-data": b64[key]}
    else:
        cluster = {"server": server, "certificate-authority": str(ca)}
        creds = {"client-certificate": str(cert), "client-key": str(key)}
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "rto-lab", "cluster": cluster}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": "rto-lab", "context": {"cluster": "rto-lab", "user": user}}],
        "current-context": "rto-lab",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")  # JSON is YAML
    path.chmod(0o600)


@dataclass(frozen=True)
class Pki:
    """Where the lab's certificates are (``paths.kube_dir()/pki``)."""

    dir: Path

    @classmethod
    def default(cls) -> Pki:
        return cls(paths.kube_dir() / "pki")

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    def crt(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def make_hub(self, api_addresses: list[str], service_ip: str) -> None:
        """CA, API server serving cert, component client certs, service-account key."""
        make_ca(self.dir, "rto-lab-ca")
        dns = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
               "kubernetes.default.svc.cluster.local"]  # fmt: skip
        sans = [f"IP:{a}" for a in [*api_addresses, service_ip, "127.0.0.1"]] + [
            f"DNS:{n}" for n in dns
        ]
        make_cert(self.dir, "apiserver", "/CN=kube-apiserver", sans)
        for name, subject in (
            ("admin", f"/O=system:masters/CN={ADMIN_USER}"),
            ("controller-manager", "/CN=system:kube-controller-manager"),
            ("scheduler", "/CN=system:kube-scheduler"),
            # The API server's own calls to kubelets (logs, exec, port-forward).
            ("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client"),
            # The aggregator's calls to extension API servers (the lab's virt-api).
            ("front-proxy-client", f"/CN={FRONT_PROXY_USER}"),
        ):
            make_cert(self.dir, name, subject)
        _openssl(
            "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=self.dir
        )
        _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=self.dir)

    def make_node(self, node: str, node_ip: str) -> None:
        """Kubelet client (``system:node:<node>``) and serving certificates of ``node``."""
        make_cert(self.dir, f"{node}-kubelet", f"/O=system:nodes/CN=system:node:{node}")
        make_cert(self.dir, f"{node}-serving", f"/CN={node}", [f"IP:{node_ip}", f"DNS:{node}"])
