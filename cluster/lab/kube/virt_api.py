"""What the lab's virt-controller and virt-handlers share: their client, names, and a cache.

Used by ``virt_controller`` (one, in the hub) and ``virt_handler`` (one per
node), the lab's stand-ins for KubeVirt's components of the same names: they
reconcile the ``kubevirt.io/v1`` objects of the lab's real API server
(VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration, with
KubeVirt's own CRDs) into virt-launcher pods, which the real scheduler places
and the real kubelets run, and libvirt domains on the nodes' libvirtds.

``ObjectCache`` is a small informer: one list, then a watch from its
resourceVersion, relisted after an error or a 410; both components read their
objects from it and act level-triggered, so a missed event costs one pass, not
a wrong state. Writes go straight to the API server and are idempotent (fixed
names, 409 and 404 taken as done); a status write carries the object's
resourceVersion, so one based on a stale read is refused instead of undoing
another component's newer write.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from cluster.lab import state
from cluster.lab.kube import paths
from cluster.lab.kube.pki import ADMIN_USER, Pki, kubeconfig, make_cert

__all__ = [
    "ADDRESS_ANNOTATION",
    "CREATED_BY",
    "INSTANCE_ANNOTATION",
    "LAUNCHER",
    "MIGRATION_UID",
    "NODE_LABEL",
    "Obj",
    "ObjectCache",
    "VirtApi",
    "now_iso",
    "virt_kubeconfig",
    "webhook_tls",
    "write_virt_kubeconfig",
]

log = logging.getLogger(__name__)

Obj = dict[str, Any]
GROUP, VERSION = "kubevirt.io", "v1"
# KubeVirt's own labels on a VMI and its virt-launcher pods (the kube backend
# finds launchers by the first two).
LAUNCHER = {"kubevirt.io": "virt-launcher"}
VM_NAME = "vm.kubevirt.io/name"
CREATED_BY = "kubevirt.io/created-by"  # the VMI's uid
NODE_LABEL = "kubevirt.io/nodeName"
MIGRATION_UID = "kubevirt.io/migrationJobUID"
# The lab's own: the guest address it gave the VMI (kept through migrations),
# and the boot instance the guest printed (a watchdog reset makes a new one).
ADDRESS_ANNOTATION = "lab.rto-harness.io/address"
INSTANCE_ANNOTATION = "lab.rto-harness.io/instance"


def metadata(obj: Obj) -> dict[str, Any]:
    md: dict[str, Any] = obj.get("metadata") or {}
    return md


def status_of(obj: Obj) -> dict[str, Any]:
    st: dict[str, Any] = obj.get("status") or {}
    return st


def migration_in_flight(vmi: Obj) -> dict[str, Any]:
    """The VMI's ``migrationState`` while a migration is under way, else {}."""
    mig: dict[str, Any] = status_of(vmi).get("migrationState") or {}
    return mig if mig and not mig.get("completed") and not mig.get("failed") else {}


def daemon_stop_event() -> threading.Event:
    """Log lines with a time and the component's name; an event SIGTERM/SIGINT set."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    return stop


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def virt_kubeconfig() -> Path:
    return paths.kube_dir() / "kubeconfigs" / "kubevirt.kubeconfig"


def webhook_tls() -> tuple[Path, Path, Path]:
    """(cert, key, CA) of the virt-api webhooks' serving certificate (``write_virt_kubeconfig``)."""
    pki = Pki.default()
    return pki.crt("virt-api"), pki.key("virt-api"), pki.ca


def write_virt_kubeconfig() -> Path:
    """The lab's virt components' kubeconfig: the admin identity, over the lab bridge.

    The bridge address, because handlers run in the nodes' network namespaces,
    where the host link the admin kubeconfig names is not routed. Admin, not an
    identity of their own: they stand in for KubeVirt's service accounts, whose
    RBAC is KubeVirt's operator's to make, and nothing outside the lab uses it.
    """
    pki = Pki.default()
    path = virt_kubeconfig()
    path.parent.mkdir(parents=True, exist_ok=True)
    url = f"https://{state.HUB_IP}:{paths.API_PORT}"
    kubeconfig(path, url, pki.ca, pki.crt("admin"), pki.key("admin"), ADMIN_USER)
    # The webhooks' serving certificate: the API server calls them on the hub.
    # The aggregator checks it for the APIService's Service name.
    sans = [f"IP:{state.HUB_IP}", "DNS:virt-api.kubevirt.svc"]
    make_cert(pki.dir, "virt-api", "/CN=virt-api", sans)
    return path


class VirtApi:
    """Raw JSON calls on the lab's API server (dicts in, dicts out: no client models)."""

    def __init__(self, api: k8s.ApiClient | None = None) -> None:
        """On ``api``, or on the lab's ``virt_kubeconfig()``."""
        self.api: k8s.ApiClient = api or k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(virt_kubeconfig())
        )

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]

    def request(
        self,
        method: str,
        path: str,
        *,
        params: list[tuple[str, Any]] | None = None,
        body: Obj | None = None,
        content_type: str = "application/json",
        timeout: Any = 10,
    ) -> Any:
        """The urllib3 response of one call (``ApiException`` on an HTTP error)."""
        req = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=params or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(*req, _request_timeout=timeout)
        if not 200 <= resp.status <= 299:
            resp.read()  # type: ignore[no-untyped-call]
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        return resp.response

    def json(self, method: str, path: str, **kw: Any) -> Obj:
        resp = self.request(method, path, **kw)
        try:
            doc: Obj = json.loads(resp.data or b"{}")
        finally:
            resp.release_conn()
        return doc

    # --- idempotent writes ---------------------------------------------------------
    def create(self, path: str, body: Obj) -> bool:
        """POST; False if it exists already (409)."""
        try:
            self.json("POST", path, body=body)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def delete(self, path: str, grace: int | None = None) -> bool:
        """DELETE, dependents left to the garbage collector (background); False if gone."""
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if grace is not None:
            body["gracePeriodSeconds"] = grace
        try:
            self.json("DELETE", path, body=body)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def patch(self, path: str, body: Obj) -> bool:
        """Merge-patch; False if refused as stale (409: its resourceVersion moved on) or gone."""
        try:
            self.json("PATCH", path, body=body, content_type="application/merge-patch+json")
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True


def custom_path(plural: str, ns: str | None = None, name: str | None = None) -> str:
    base = f"/apis/{GROUP}/{VERSION}"
    if ns is not None:
        base += f"/namespaces/{ns}"
    base += f"/{plural}"
    return base if name is None else f"{base}/{name}"


def pods_path(ns: str | None = None, name: str | None = None) -> str:
    base = "/api/v1" + (f"/namespaces/{ns}" if ns is not None else "") + "/pods"
    return base if name is None else f"{base}/{name}"


Key = tuple[str, str]  # (namespace, name)


class ObjectCache:
    """One resource's objects, kept current by list + watch in a daemon thread."""

    def __init__(
        self,
        api: VirtApi,
        path: str,
        label_selector: str | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.api, self.path, self.selector = api, path, label_selector
        self.on_change = on_change
        self._items: dict[Key, Obj] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._resp: Any = None
        self._thread = threading.Thread(target=self._run, name=f"cache {path}", daemon=True)

    def start(self) -> ObjectCache:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            if self._resp is not None:
                # Interrupts the watch thread's blocking read; close() would
                # wait for the server to end the watch (up to timeoutSeconds).
                self._resp.shutdown()

    def items(self) -> list[Obj]:
        with self._lock:
            return list(self._items.values())

    def get(self, ns: str, name: str) -> Obj | None:
        with self._lock:
            return self._items.get((ns, name))

    def _params(self) -> list[tuple[str, Any]]:
        return [("labelSelector", self.selector)] if self.selector else []

    @staticmethod
    def _key(obj: Obj) -> Key:
        md = obj.get("metadata") or {}
        return (str(md.get("namespace", "")), str(md.get("name", "")))

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rv = self._list()
                self._watch(rv)
            except Exception as exc:  # the API server restarts at a profile switch
                if not self._stop.is_set():
                    log.info("cache %s: %s; listing again", self.path, exc)
                    self._stop.wait(0.5)

    def _list(self) -> str:
        doc = self.api.json("GET", self.path, params=self._params())
        with self._lock:
            self._items = {self._key(o): o for o in doc.get("items") or ()}
        self.synced.set()
        self._changed()
        return str((doc.get("metadata") or {}).get("resourceVersion", ""))

    def _events(self, rv: str) -> Iterator[Obj]:
        params = [
            *self._params(),
            ("watch", "true"),
            ("resourceVersion", rv),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", 60),
        ]
        self._resp = self.api.request("GET", self.path, params=params, timeout=(5, 75))
        try:
            for line in iter_resp_lines(self._resp):  # type: ignore[no-untyped-call]
                if line:
                    yield json.loads(line)
        finally:
            with contextlib.suppress(Exception):
                self._resp.release_conn()

    def _watch(self, rv: str) -> None:
        while not self._stop.is_set():
            for ev in self._events(rv):
                kind, obj = ev.get("type"), ev.get("object") or {}
                if kind == "ERROR":
                    return  # 410 Gone and the like: list again
                rv = str((obj.get("metadata") or {}).get("resourceVersion", rv))
                if kind == "BOOKMARK":
                    continue
                with self._lock:
                    if kind == "DELETED":
                        self._items.pop(self._key(obj), None)
                    else:
                        self._items[self._key(obj)] = obj
                self._changed()
