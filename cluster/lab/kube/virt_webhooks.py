"""The lab's virt-api webhooks: a launcher pod's eviction becomes a live migration.

Served by the lab's virt-controller process (``virt_controller.main``) over
HTTPS on the hub's bridge address, registered with the real API server as a
ValidatingWebhookConfiguration, reading the controller's caches. The two
admission checks of KubeVirt's virt-api that decide what the harness measures:

- **pods/eviction** (what ``kubectl drain`` and the harness's drain send): the
  eviction of a VMI's virt-launcher pod whose ``evictionStrategy`` is
  LiveMigrate (or LiveMigrateIfPossible, on a migratable VMI) is refused with
  429 and the VMI's ``status.evacuationNodeName`` set to the pod's node; the
  controller then migrates the VMI away (an evacuation migration) and deletes
  the source pod, and the drain's retried eviction finds nothing left. Any other
  pod is allowed (the webhook fails open: ``failurePolicy: Ignore``).
- **VirtualMachineInstanceMigration create**: refused while the VMI does not
  run, or while another migration of it is in flight, as virt-api refuses them.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubernetes.client.exceptions import ApiException

from cluster.lab.kube.pki import FRONT_PROXY_USER
from cluster.lab.kube.virt_api import (
    CREATED_BY,
    LAUNCHER,
    Obj,
    VirtApi,
    custom_path,
    migration_in_flight,
)
from cluster.lab.kube.virt_api import metadata as _md
from cluster.lab.kube.virt_subresources import Subresources, headers_identity

__all__ = ["WEBHOOK_NAME", "Decision", "Webhooks", "register", "serve"]

log = logging.getLogger("virt-api")

WEBHOOK_NAME = "virt-api.lab.rto-harness.io"
Decision = tuple[bool, int, str]  # allowed, HTTP code when refused, message
_LIVE = ("LiveMigrate", "LiveMigrateIfPossible")


class Webhooks:
    """The decisions: an eviction on the controller's caches (pods, VMIs), a migration live."""

    def __init__(
        self, api: VirtApi, pod: Callable[[str, str], Obj | None], vmis: Callable[[], list[Obj]]
    ) -> None:
        self.api, self._pod, self._vmis = api, pod, vmis

    def _vmi_of_launcher(self, pod: Obj) -> Obj | None:
        labels = _md(pod).get("labels") or {}
        if any(labels.get(k) != v for k, v in LAUNCHER.items()):
            return None
        uid = labels.get(CREATED_BY)
        return next((v for v in self._vmis() if _md(v).get("uid") == uid), None)

    def eviction(self, ns: str, name: str) -> Decision:
        pod = self._pod(ns, name)
        vmi = None if pod is None else self._vmi_of_launcher(pod)
        if pod is None or vmi is None:
            return True, 0, ""
        st, spec = vmi.get("status") or {}, vmi.get("spec") or {}
        strategy = spec.get("evictionStrategy") or "None"
        node = (pod.get("spec") or {}).get("nodeName")
        if strategy not in _LIVE or st.get("phase") != "Running" or node != st.get("nodeName"):
            return True, 0, ""  # not the running guest's pod, or no live migration asked for
        migratable = any(
            c.get("type") == "LiveMigratable" and c.get("status") == "True"
            for c in st.get("conditions") or ()
        )
        if strategy == "LiveMigrateIfPossible" and not migratable:
            return True, 0, ""
        vmd = _md(vmi)
        if st.get("evacuationNodeName") != node:
            self.api.patch(
                custom_path("virtualmachineinstances", vmd["namespace"], vmd["name"]),
                {"status": {"evacuationNodeName": node}},
            )
            log.info("eviction of %s/%s: evacuation of VMI %s from %s", ns, name,
                     vmd["name"], node)  # fmt: skip
        return (
            False,
            429,
            f"Eviction triggered evacuation of VMI {vmd['namespace']}/{vmd['name']}",
        )

    def migration_create(self, ns: str, obj: Obj) -> Decision:
        """Read live, not from the caches: two migrations created a few ms apart
        must not both pass because neither is in a cache yet."""
        target = str((obj.get("spec") or {}).get("vmiName", ""))
        try:
            vmi = self.api.json("GET", custom_path("virtualmachineinstances", ns, target))
        except ApiException as exc:
            if exc.status == 404:
                return True, 0, ""  # the controller fails it: the VMI may be made later
            raise
        phase = (vmi.get("status") or {}).get("phase")
        if phase != "Running":
            return False, 422, f"Cannot migrate VMI {ns}/{target}: it is {phase or 'not running'}"
        listed = self.api.json("GET", custom_path("virtualmachineinstancemigrations", ns))
        others = [
            m
            for m in listed.get("items") or ()
            if (m.get("spec") or {}).get("vmiName") == target
            and ((m.get("status") or {}).get("phase") or "") not in ("Succeeded", "Failed")
            and not _md(m).get("deletionTimestamp")
        ]
        if migration_in_flight(vmi) or others:
            name = _md(others[0]).get("name") if others else "?"
            return (
                False,
                422,
                f"in-flight migration detected. Active migration job ({name}) is currently "
                f"already in progress for VMI {target}.",
            )
        return True, 0, ""

    def review(self, path: str, review: Obj) -> Obj:
        req = review.get("request") or {}
        ns = str(req.get("namespace") or "")
        path = urlsplit(path).path  # the API server adds ?timeout=5s
        if path == "/evict":
            allowed, code, msg = self.eviction(ns, str(req.get("name") or ""))
        elif path == "/migration-create":
            allowed, code, msg = self.migration_create(ns, req.get("object") or {})
        else:
            allowed, code, msg = True, 0, ""
        resp: Obj = {"uid": req.get("uid", ""), "allowed": allowed}
        log.info("%s %s/%s: %s%s", path, ns, req.get("name") or "-",
                 "allowed" if allowed else "refused", f" ({msg})" if msg else "")  # fmt: skip
        if not allowed:
            resp["status"] = {"code": code, "message": msg, "reason": "TooManyRequests"
                              if code == 429 else "Invalid"}  # fmt: skip
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}


def serve(
    hooks: Webhooks,
    host: str,
    port: int,
    tls: tuple[Path, Path, Path],
    subresources: Subresources | None = None,
) -> ThreadingHTTPServer:
    """Serve ``hooks`` (POST, from the API server's admission) and ``subresources``
    (GET/PUT under /apis, from its aggregator only) over HTTPS in a daemon
    thread; the server (``shutdown()`` stops it). ``tls``: cert, key, CA."""
    cert, key, ca = tls

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, out: object) -> None:
            body = json.dumps(out).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            try:
                n = int(self.headers.get("Content-Length") or 0)
                out, code = hooks.review(self.path, json.loads(self.rfile.read(n) or b"{}")), 200
            except Exception as exc:  # a bad review must not kill the server
                log.exception("webhook %s failed", self.path)
                out, code = {"error": str(exc)}, 500
            self._send(code, out)

        def _aggregated(self, method: str) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            peer = (
                self.connection.getpeercert() if hasattr(self.connection, "getpeercert") else None
            )
            cn = dict(x[0] for x in (peer or {}).get("subject", ()))
            if subresources is None or cn.get("commonName") != FRONT_PROXY_USER:
                # Only the aggregator, with its front-proxy certificate, speaks for a user.
                self._send(401, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "code": 401, "reason": "Unauthorized"})  # fmt: skip
                return
            try:
                user, groups = headers_identity(self.headers.get_all)
                body = json.loads(raw) if raw.strip() else {}
                code, out = subresources.handle(
                    method, urlsplit(self.path).path, user, groups, body
                )
            except Exception as exc:
                log.exception("%s %s failed", method, self.path)
                code, out = 500, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "code": 500, "message": str(exc)}  # fmt: skip
            log.info("%s %s as %s: %d", method, self.path, user if code != 401 else "-", code)
            self._send(code, out)

        def do_GET(self) -> None:
            self._aggregated("GET")

        def do_PUT(self) -> None:
            self._aggregated("PUT")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per admission would drown the controller's log

    server = ThreadingHTTPServer((host, port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    # Client certificates are optional (the admission webhooks' caller sends
    # none); the aggregator's is checked against the lab's CA when sent.
    ctx.load_verify_locations(str(ca))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="virt-api", daemon=True).start()
    return server


def register(api: VirtApi, url: str, ca: Path) -> None:
    """Create (or replace) the ValidatingWebhookConfiguration pointing at ``url``."""
    import base64

    bundle = base64.b64encode(ca.read_bytes()).decode()

    def hook(name: str, path: str, rule: Obj) -> Obj:
        return {
            "name": f"{name}.{WEBHOOK_NAME}",
            "clientConfig": {"url": f"{url}{path}", "caBundle": bundle},
            "rules": [rule],
            "failurePolicy": "Ignore",
            "sideEffects": "NoneOnDryRun",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }

    body: Obj = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_NAME},
        "webhooks": [
            hook(
                "eviction",
                "/evict",
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE"],
                    "resources": ["pods/eviction"],
                },
            ),
            hook(
                "migration-create",
                "/migration-create",
                {
                    "apiGroups": ["kubevirt.io"],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE"],
                    "resources": ["virtualmachineinstancemigrations"],
                },
            ),
        ],
    }
    path = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
    api.delete(f"{path}/{WEBHOOK_NAME}")
    api.create(path, body)
