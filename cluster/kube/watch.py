"""Follow one Kubernetes resource through list + watch, for as long as asked.

Filled by ``KubeBackend`` (one follower per resource: nodes, pods, VMIs,
migrations); its callbacks feed ``cluster.kube.timeline``, which the recorder
reads through ``Backend.events``. The protocol as kube-apiserver speaks it: list
to get a resourceVersion, watch from it (bookmarks on), carry the version of the
last event into the next watch when the server ends a stream, re-list when the
version is too old (410 Gone: an ERROR event or an HTTP 410), and reconnect with
exponential back-off (tenacity, injectable sleep) when the connection drops. A
re-list reports objects that vanished meanwhile as DELETED, so no deletion is
lost across a gap. Raw JSON is parsed with ``json`` only: deserialising every
event into client models would cost more than the whole budget of the recorder.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from tenacity import Retrying, retry_if_exception, wait_exponential

__all__ = ["ResourceRef", "WatchFollower", "raw_request", "resource_path", "shutdown_stream"]

OnEvent = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class ResourceRef:
    group: str  # "" for the core group
    version: str
    plural: str
    namespace: str | None = None


def shutdown_stream(resp: Any) -> None:
    """Wake the thread reading a streaming response (watch, log follow).

    Closing the response from another thread would wait for the reader's
    lock; shutting its socket down ends a quiet stream's read at once.
    """
    fp = getattr(getattr(resp, "_fp", None), "fp", None)
    sock = getattr(getattr(fp, "raw", None), "_sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def resource_path(ref: ResourceRef, name: str | None = None, sub: str | None = None) -> str:
    base = "/api/v1" if ref.group == "" else f"/apis/{ref.group}/{ref.version}"
    if ref.namespace:
        base += f"/namespaces/{ref.namespace}"
    path = f"{base}/{ref.plural}"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


def raw_request(
    api: ApiClient,
    method: str,
    path: str,
    query: list[tuple[str, Any]] | None = None,
    body: Any = None,
    timeout: Any = 30,
) -> Any:
    """One request through the client's auth and TLS; the raw urllib3 response.

    Non-2xx answers raise ``ApiException`` as the generated API methods do.
    """
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    req = api.param_serialize(
        method=method,
        resource_path=path,
        query_params=query or [],
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    resp = api.call_api(*req, _request_timeout=timeout)
    if not 200 <= resp.status <= 299:
        resp.read()  # type: ignore[no-untyped-call]
        raise ApiException.from_response(http_resp=resp, body=None, data=None)
    return resp.response


class _Gone(Exception):
    """The watched resourceVersion was compacted away: re-list."""


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiException):
        return exc.status is None or exc.status == 0 or exc.status >= 500 or exc.status == 429
    return isinstance(exc, urllib3.exceptions.HTTPError | OSError | ConnectionError)


class WatchFollower:
    """List + watch one resource in a thread; ``on_event(type, raw_object)`` per change."""

    def __init__(
        self,
        api: ApiClient,
        ref: ResourceRef,
        on_event: OnEvent,
        label_selector: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        timeout_seconds: int = 300,
        max_backoff: float = 30.0,
    ) -> None:
        self.api = api
        self.ref = ref
        self.on_event = on_event
        self.label_selector = label_selector
        self.timeout_seconds = timeout_seconds
        self.resource_version: str | None = None
        self.known: dict[str, str] = {}  # "ns/name" -> resourceVersion
        self.stats = {"events": 0, "lists": 0, "relists_410": 0, "reconnects": 0, "streams": 0}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._resp: Any = None
        self._thread: threading.Thread | None = None
        self._retrying = Retrying(
            retry=retry_if_exception(_transient),
            wait=wait_exponential(multiplier=0.1, max=max_backoff),
            sleep=self._sleep_unless_stopped(sleep),
            before_sleep=lambda _: self._count("reconnects"),
            reraise=True,
        )

    def _sleep_unless_stopped(self, sleep: Callable[[float], None]) -> Callable[[float], None]:
        def do(seconds: float) -> None:
            if not self._stop.is_set():
                sleep(seconds)

        return do

    def _count(self, key: str) -> None:
        self.stats[key] += 1

    # --- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"watch-{self.ref.plural}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._resp is not None:
            shutdown_stream(self._resp)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        # A daemon loop over a blocking stream, not a polling loop: each pass
        # waits on the server and returns when it ends the stream.
        try:
            while not self._stop.is_set():
                self._retrying(self.step)
        except BaseException as exc:  # surfaced by the backend's events()
            if not self._stop.is_set():
                self.error = exc

    # --- one pass --------------------------------------------------------------
    def step(self) -> None:
        """List if needed, then follow one watch stream until the server ends it."""
        if self.resource_version is None:
            self.relist()
        try:
            self.watch_once()
        except _Gone:
            self.stats["relists_410"] += 1
            self.resource_version = None

    def _get(self, query: list[tuple[str, Any]], stream: bool) -> Any:
        if self.label_selector:
            query.append(("labelSelector", self.label_selector))
        timeout = (5, self.timeout_seconds + 10) if stream else 30
        return raw_request(self.api, "GET", resource_path(self.ref), query, timeout=timeout)

    def relist(self) -> None:
        resp = self._get([], stream=False)
        try:
            data = json.loads(resp.data)
        finally:
            resp.release_conn()
        self.stats["lists"] += 1
        seen: dict[str, str] = {}
        for obj in data.get("items", []):
            meta = obj.get("metadata", {})
            key = f"{meta.get('namespace', '')}/{meta['name']}"
            seen[key] = meta.get("resourceVersion", "")
            if self.known.get(key) != seen[key]:
                self._emit("ADDED" if key not in self.known else "MODIFIED", obj)
        for key in set(self.known) - set(seen):
            ns, _, name = key.partition("/")
            self._emit("DELETED", {"metadata": {"name": name, "namespace": ns or None}})
        self.known = seen
        self.resource_version = data.get("metadata", {}).get("resourceVersion")

    def watch_once(self) -> None:
        query: list[tuple[str, Any]] = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", self.timeout_seconds),
        ]
        if self.resource_version:
            query.append(("resourceVersion", self.resource_version))
        try:
            resp = self._get(query, stream=True)
        except ApiException as exc:
            if exc.status == 410:
                raise _Gone() from exc
            raise
        self._resp = resp
        self.stats["streams"] += 1
        try:
            for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                if self._stop.is_set():
                    return
                if not line:
                    continue
                ev = json.loads(line)
                etype, obj = ev.get("type"), ev.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                rv = obj.get("metadata", {}).get("resourceVersion")
                if rv:
                    self.resource_version = rv
                if etype == "BOOKMARK":
                    continue
                meta = obj.get("metadata", {})
                key = f"{meta.get('namespace', '')}/{meta.get('name')}"
                if etype == "DELETED":
                    self.known.pop(key, None)
                else:
                    self.known[key] = rv or ""
                self._emit(etype, obj)
        except (urllib3.exceptions.ProtocolError, ValueError) as exc:
            if self._stop.is_set():
                return
            raise ConnectionError(f"watch stream of {self.ref.plural} broke: {exc}") from exc
        finally:
            self._resp = None
            resp.release_conn()

    def _emit(self, etype: str, obj: dict[str, Any]) -> None:
        self.stats["events"] += 1
        self.on_event(etype, obj)
