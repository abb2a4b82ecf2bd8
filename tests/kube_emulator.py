"""A small stateful Kubernetes + KubeVirt API server, for what a real one cannot serve here.

Everything a real kube-apiserver can answer is tested against one: the etcd +
kube-apiserver + kube-controller-manager of tests/real_apiserver.py, with
KubeVirt's CRDs where VMIs are needed (tests/test_kube_real_apiserver.py,
test_kube_real_kubevirt.py, test_kube_node_driver.py, test_kube_cli.py,
test_kube_probe.py): Nodes, Pods, RBAC refusals, Eviction with a PDB, 410 Gone,
watches, the service proxy, NetworkPolicies, node pods, dry runs checked in the
API server's audit log. This emulator is left with exactly these users, each
for something that control plane cannot do because a component it lacks would
have to answer:

- tests/test_kube_observe.py: metrics.k8s.io PodMetrics (``set_usage``; the
  group answering 404 with ``metrics_server`` False; an RBAC denial of
  ``metrics.k8s.io/pods``): metrics-server serves that group through the
  aggregation layer from what it scrapes off kubelets, and neither runs here.
  ``pods/NAME/log`` (``append_log``, ``follow=true`` streams, their end on
  ``drop_watches``, an RBAC denial of ``pods/log``): the API server forwards a
  log request to the node's kubelet, and there is none; the re-attach test also
  has the Deployment stand-in below replace the pod it deletes.
- tests/test_kube_backend.py: KubeVirt's ``unpause`` and
  ``removevolume``/``addvolume`` of subresources.kubevirt.io, which only virt-api
  serves (an aggregated API server; KubeVirt's CRDs alone answer 404, see
  test_kube_real_kubevirt.py); and the VMI whose virt-launcher pod the exec
  paths aim at (``pods/exec`` itself goes to the node's kubelet: the test
  injects an executor that records the call, and the emulator does not serve it).
- benchmarks/kube_watch.py: the watch followers' throughput over 1,000 pods and
  200 VMIs replayed in-process. Not moved with the tests; a real apiserver could
  serve it.

Filled by those tests (they seed nodes, pods, VMIs and deny rules); read by the
real ``kubernetes`` client through real HTTP on 127.0.0.1. Written by hand
because the package-index emulator (kmock 0.8) falls short where the backend
needs the wire protocol most: its lists carry the literal resourceVersion "...",
watches ignore resourceVersion and never answer 410 Gone, label and field
selectors are not applied, and it has no subresources and no RBAC. See the
README, "Real clusters". PDBs, 410 Gone, migrations and an absent KubeVirt are
not modelled here.

What it models: list/get/create/merge-patch/json-patch/delete of namespaced and
cluster objects with a global resourceVersion; label and field selectors; watch
streams (chunked JSON lines) from a resourceVersion, server-side close
(``drop_watches``) to test reconnects; KubeVirt's pause/unpause and
removevolume/addvolume; RBAC denials by (verb, resource) rule answering 403
like kube-apiserver. A small controller stands in for the Deployment's
ReplicaSet: a deleted pod with an owner comes back on another schedulable node.
There is no kubelet: exec is not served. What a kubelet and metrics-server
would publish, tests set by hand: ``set_usage`` fills ``metrics.k8s.io/v1beta1``
PodMetrics (the whole group answers 404 while ``metrics_server`` is False, as
when metrics-server is not installed), ``append_log`` appends a container log
line that ``pods/NAME/log`` serves (``follow=true``: a chunked stream of new
lines that ends when the pod is deleted or the emulator stops; ``timestamps``,
``sinceSeconds``, ``tailLines``; 400 for a container the pod does not have).

Still in the code but used by no test since theirs moved to the real apiserver
(left for whoever removes them): the Eviction subresource (it deletes the pod),
the VM controller (a deleted VMI of a VM with runStrategy Always comes back),
and the service proxy (``services/NAME:PORT/proxy/...`` forwarded to a ready
pod behind the Service at its podIP and the Service's targetPort, loopback pod
IPs only; 503 without one).
"""

from __future__ import annotations

import bisect
import copy
import datetime as dt
import http.client
import ipaddress
import json
import re
import select
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

__all__ = ["KubeEmulator", "emulator", "eventually", "write_kubeconfig"]

Obj = dict[str, Any]
# (group, plural) -> namespaced?
RESOURCES: dict[tuple[str, str], bool] = {
    ("", "nodes"): False,
    ("", "namespaces"): False,
    ("", "pods"): True,
    ("", "services"): True,
    ("", "configmaps"): True,
    ("apps", "deployments"): True,
    ("networking.k8s.io", "networkpolicies"): True,
    ("kubevirt.io", "virtualmachines"): True,
    ("kubevirt.io", "virtualmachineinstances"): True,
    ("kubevirt.io", "virtualmachineinstancemigrations"): True,
}
# The API server's service proxy: /api/v1/namespaces/NS/services/[SCHEME:]NAME[:PORT]/proxy/...
_SERVICE_PROXY = re.compile(
    r"^/api/v1/namespaces/(?P<ns>[^/]+)/services/(?:https?:)?(?P<svc>[^/:]+)(?::(?P<port>[^/]+))?"
    r"/proxy(?P<rest>/.*)?$"
)
_PATH = re.compile(
    r"^/(?:api/(?P<cv>v1)|apis/(?P<g>[^/]+)/(?P<v>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$"
)


@dataclass
class _Watch:
    group: str
    plural: str
    namespace: str | None
    selector: Callable[[Obj], bool]
    closed: bool = False


@dataclass
class KubeEmulator:
    """The server state; every method is thread-safe (one lock, one condition)."""

    objects: dict[tuple[str, str, str | None, str], Obj] = field(default_factory=dict)
    log: list[tuple[int, tuple[str, str], str, Obj]] = field(default_factory=list)
    rv: int = 100
    deny: set[tuple[str, str]] = field(default_factory=set)  # (verb, "pods/eviction")
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    # Service-proxy requests: (Authorization header seen, upstream "ip:port" or
    # "" when none was dialled, upstream path, status answered).
    proxied: list[tuple[str, str, str, int]] = field(default_factory=list)
    # metrics-server: installed or not; (ns, pod) -> container -> (cpu, memory)
    # quantities as metrics-server writes them ("12345n", "1234Ki").
    metrics_server: bool = True
    usage: dict[tuple[str, str], dict[str, tuple[str, str]]] = field(default_factory=dict)
    # Container logs: (ns, pod uid, container) -> [(time written, line)]; keyed by
    # uid so a pod re-created under the same name starts with an empty log.
    logs: dict[tuple[str, str, str], list[tuple[dt.datetime, str]]] = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _watches: list[_Watch] = field(default_factory=list)
    _log_streams: list[_Watch] = field(default_factory=list)
    url: str = ""

    # --- state ---------------------------------------------------------------
    def _bump(self, kind: tuple[str, str], etype: str, obj: Obj) -> None:
        self.rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        self.log.append((self.rv, kind, etype, copy.deepcopy(obj)))
        self._cond.notify_all()

    def put(self, group: str, plural: str, obj: Obj) -> Obj:
        """Create or replace an object (test seeding and controllers)."""
        with self._cond:
            meta = obj.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("labels", {})
            ns = meta.get("namespace") if RESOURCES[(group, plural)] else None
            key = (group, plural, ns, meta["name"])
            etype = "MODIFIED" if key in self.objects else "ADDED"
            self.objects[key] = obj
            self._bump((group, plural), etype, obj)
            return copy.deepcopy(obj)

    def get(self, group: str, plural: str, ns: str | None, name: str) -> Obj | None:
        with self._cond:
            obj = self.objects.get((group, plural, ns, name))
            return copy.deepcopy(obj) if obj is not None else None

    def remove(self, group: str, plural: str, ns: str | None, name: str) -> Obj | None:
        with self._cond:
            obj = self.objects.pop((group, plural, ns, name), None)
            if obj is not None:
                self._bump((group, plural), "DELETED", obj)
                self._after_delete(group, plural, obj)
            return obj

    def items(self, group: str, plural: str) -> list[Obj]:
        with self._cond:
            return [
                copy.deepcopy(o)
                for (g, p, _, _), o in self.objects.items()
                if (g, p) == (group, plural)
            ]

    def drop_watches(self) -> None:
        """Close every open watch stream server-side (as an apiserver restart does)."""
        with self._cond:
            for w in self._watches + self._log_streams:
                w.closed = True
            self._cond.notify_all()

    def open_log_streams(self) -> int:
        """Followed container logs (``pods/NAME/log?follow=true``) being served now."""
        with self._cond:
            return sum(1 for w in self._log_streams if not w.closed)

    # --- kubelet and metrics-server stand-ins ----------------------------------
    def set_usage(self, ns: str, pod: str, containers: dict[str, tuple[str, str]]) -> None:
        """What metrics-server reports for a pod: container -> (cpu, memory)."""
        with self._cond:
            self.usage[(ns, pod)] = dict(containers)

    def append_log(self, ns: str, pod: str, line: str, container: str = "main") -> None:
        """The container writes one line (stamped now, as the kubelet stamps it)."""
        with self._cond:
            uid = self.objects[("", "pods", ns, pod)]["metadata"]["uid"]
            entry = (dt.datetime.now(dt.UTC), line)
            self.logs.setdefault((ns, uid, container), []).append(entry)
            self._cond.notify_all()

    # --- seeding helpers -----------------------------------------------------
    def add_node(self, name: str, labels: dict[str, str] | None = None) -> Obj:
        return self.put(
            "",
            "nodes",
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels or {}},
                "spec": {},
                "status": {
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                        }
                    ]
                },
            },
        )

    def set_pod_ready(self, ns: str, name: str, ready: bool, pod_ip: str | None = None) -> None:
        """The kubelet's readiness verdict (and optionally the pod's IP)."""
        with self._cond:
            pod = self.objects[("", "pods", ns, name)]
            for c in pod["status"]["containerStatuses"]:
                c["ready"] = ready
            pod["status"]["conditions"] = [
                {"type": "Ready", "status": "True" if ready else "False"}
            ]
            if pod_ip is not None:
                pod["status"]["podIP"] = pod_ip
            self._bump(("", "pods"), "MODIFIED", pod)

    def endpoint(self, ns: str, svc: str, port: str | None) -> tuple[str, int] | str:
        """(pod IP, target port) of a ready pod behind the Service, or why there is none.

        The endpoints controller's rule: a Running pod matching the selector,
        not terminating, with an IP and its Ready condition true (the container
        statuses when the pod has no conditions). First by name: deterministic.
        """
        with self._cond:
            service = self.objects.get(("", "services", ns, svc))
            if service is None:
                return f'services "{svc}" not found'
            ports = service.get("spec", {}).get("ports") or []
            spec = next(
                (p for p in ports if port is None or port in (str(p.get("port")), p.get("name"))),
                None,
            )
            if spec is None:
                return f'no service port "{port}" on service "{svc}"'
            want = service.get("spec", {}).get("selector") or {}
            for (g, p, n, _), pod in sorted(self.objects.items(), key=lambda kv: str(kv[0])):
                if (g, p, n) != ("", "pods", ns) or not want:
                    continue
                labels = pod["metadata"].get("labels") or {}
                if any(labels.get(k) != v for k, v in want.items()):
                    continue
                st = pod.get("status") or {}
                conds = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
                ready = (
                    conds["Ready"] == "True"
                    if "Ready" in conds
                    else all(c.get("ready") for c in st.get("containerStatuses") or [{}])
                )
                if (
                    st.get("phase") != "Running"
                    or pod["metadata"].get("deletionTimestamp")
                    or not st.get("podIP")
                    or not ready
                ):
                    continue
                target = spec.get("targetPort", spec.get("port"))
                if isinstance(target, str) and not target.isdigit():
                    named = [
                        cp.get("containerPort")
                        for c in pod["spec"].get("containers") or []
                        for cp in c.get("ports") or []
                        if cp.get("name") == target
                    ]
                    if not named:
                        continue
                    target = named[0]
                return str(st["podIP"]), int(target)
            return f'no endpoints available for service "{svc}"'

    def add_pod(
        self,
        ns: str,
        name: str,
        node: str,
        labels: dict[str, str] | None = None,
        owner: str | None = None,
        containers: tuple[str, ...] = ("main",),
    ) -> Obj:
        meta: Obj = {"name": name, "namespace": ns, "labels": labels or {}}
        if owner:
            meta["ownerReferences"] = [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": owner,
                    "uid": owner,
                    "controller": True,
                }
            ]
        return self.put(
            "",
            "pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": meta,
                "spec": {
                    "nodeName": node,
                    "containers": [{"name": c, "image": "busybox"} for c in containers],
                },
                "status": {
                    "phase": "Running",
                    "podIP": "198.18.50.1",
                    "containerStatuses": [
                        {
                            "name": c,
                            "ready": True,
                            "restartCount": 0,
                            "image": "busybox",
                            "imageID": "busybox@sha256:0",
                            "containerID": f"containerd://{uuid.uuid4().hex}",
                        }
                        for c in containers
                    ],
                },
            },
        )

    def add_vmi(
        self,
        ns: str,
        name: str,
        node: str,
        labels: dict[str, str] | None = None,
        vm: bool = True,
        watchdog: bool = True,
        console_log: bool = True,
    ) -> Obj:
        labels = labels or {}
        domain: Obj = {"devices": {"disks": [{"name": "data", "disk": {"bus": "virtio"}}]}}
        if watchdog:
            domain["devices"]["watchdog"] = {"name": "wd", "i6300esb": {"action": "reset"}}
        if vm:
            self.put(
                "kubevirt.io",
                "virtualmachines",
                {
                    "apiVersion": "kubevirt.io/v1",
                    "kind": "VirtualMachine",
                    "metadata": {"name": name, "namespace": ns, "labels": labels},
                    "spec": {
                        "runStrategy": "Always",
                        "template": {
                            "metadata": {"labels": labels},
                            "spec": {
                                "domain": domain,
                                "volumes": [
                                    {
                                        "name": "data",
                                        "persistentVolumeClaim": {"claimName": f"{name}-data"},
                                    }
                                ],
                            },
                        },
                    },
                },
            )
        # virt-controller copies the VMI's labels onto its virt-launcher pod:
        # that is how a Service selecting the VMI's labels reaches the guest.
        self.add_pod(
            ns,
            f"virt-launcher-{name}-{uuid.uuid4().hex[:5]}",
            node,
            {**labels, "kubevirt.io": "virt-launcher", "vm.kubevirt.io/name": name},
            # KubeVirt >= 1.1 adds the serial console's log container by default.
            containers=("compute", "guest-console-log") if console_log else ("compute",),
        )
        return self.put(
            "kubevirt.io",
            "virtualmachineinstances",
            {
                "apiVersion": "kubevirt.io/v1",
                "kind": "VirtualMachineInstance",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {
                    "domain": domain,
                    "volumes": [
                        {"name": "data", "persistentVolumeClaim": {"claimName": f"{name}-data"}}
                    ],
                },
                "status": {
                    "phase": "Running",
                    "nodeName": node,
                    "interfaces": [{"ipAddress": "198.18.60.1"}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            },
        )

    # --- controllers standing in for the real ones ---------------------------
    def _schedulable(self, avoid: str | None) -> str | None:
        for (g, p, _, name), node in sorted(self.objects.items()):
            if (g, p) != ("", "nodes") or name == avoid or node["spec"].get("unschedulable"):
                continue
            if node["spec"].get("taints"):
                continue
            if node["status"]["conditions"][0]["status"] != "True":
                continue
            return name
        return None

    def _after_delete(self, group: str, plural: str, obj: Obj) -> None:
        meta = obj["metadata"]
        if (group, plural) == ("", "pods") and meta.get("ownerReferences"):
            node = self._schedulable(obj["spec"].get("nodeName"))
            new = copy.deepcopy(obj)
            new["metadata"] = {
                "name": f"{meta['ownerReferences'][0]['name']}-{uuid.uuid4().hex[:5]}",
                "namespace": meta["namespace"],
                "labels": meta.get("labels", {}),
                "ownerReferences": meta["ownerReferences"],
            }
            new["spec"]["nodeName"] = node
            new["status"]["phase"] = "Running" if node else "Pending"
            threading.Thread(target=self.put, args=("", "pods", new), daemon=True).start()
        if (group, plural) == ("kubevirt.io", "virtualmachineinstances"):
            vm = self.objects.get(
                ("kubevirt.io", "virtualmachines", meta["namespace"], meta["name"])
            )
            if vm is not None and vm["spec"].get("runStrategy") == "Always":
                node = self._schedulable(obj["status"].get("nodeName"))
                new = copy.deepcopy(obj)
                new["metadata"] = {
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "labels": meta.get("labels", {}),
                }
                new["status"]["nodeName"] = node
                threading.Thread(
                    target=self.put, args=("kubevirt.io", plural, new), daemon=True
                ).start()


# --- selectors -------------------------------------------------------------------
def _rv_of(entry: tuple[int, tuple[str, str], str, Obj]) -> int:
    return entry[0]


def _label_selector(text: str) -> Callable[[Obj], bool]:
    terms = [t.strip() for t in text.split(",") if t.strip()]

    def match(obj: Obj) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        for term in terms:
            if "!=" in term:
                k, v = term.split("!=", 1)
                if labels.get(k) == v:
                    return False
            elif "=" in term:
                k, v = term.replace("==", "=").split("=", 1)
                if labels.get(k) != v:
                    return False
            elif term.startswith("!"):
                if term[1:] in labels:
                    return False
            elif term not in labels:
                return False
        return True

    return match


def _field_selector(text: str) -> Callable[[Obj], bool]:
    terms = [t.split("=", 1) for t in text.split(",") if t.strip()]

    def match(obj: Obj) -> bool:
        for path, want in terms:
            cur: Any = obj
            for part in path.split("."):
                cur = cur.get(part) if isinstance(cur, dict) else None
            if (cur or "") != want:
                return False
        return True

    return match


def _merge(base: Obj, patch: Obj) -> Obj:
    for k, v in patch.items():
        if v is None:
            base.pop(k, None)
        elif isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def _json_patch(base: Obj, ops: list[Obj]) -> Obj:
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent: Any = base
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.setdefault(p, {})
        last = parts[-1]
        if op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                else:
                    parent.insert(int(last), op["value"])
            else:
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
    return base


def _status(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n)) if n else {}

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def _route(self, method: str) -> None:
        emu = self.server.emu
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        emu.requests.append((method, url.path))
        body = self._body() if method in ("POST", "PATCH", "PUT") else None
        if url.path in ("/api", "/apis", "/version"):
            return self._send(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0-emu"})
        if url.path == "/apis/kubevirt.io/v1":
            return self._send(
                200,
                {
                    "kind": "APIResourceList",
                    "groupVersion": "kubevirt.io/v1",
                    "resources": [{"name": p} for g, p in RESOURCES if g == "kubevirt.io"],
                },
            )
        if url.path.startswith("/apis/metrics.k8s.io"):
            return self._metrics(emu, url.path)
        proxy = _SERVICE_PROXY.match(url.path)
        if proxy is not None:
            return self._proxy(emu, method, proxy, url.query)
        m = _PATH.match(url.path)
        if m is None:
            return self._send(404, _status(404, "NotFound", f"no route {url.path}"))
        group = m["g"] or ""
        if group == "subresources.kubevirt.io":
            group = "kubevirt.io"
        plural, ns, name, sub = m["plural"], m["ns"], m["name"], m["sub"]
        if (group, plural) not in RESOURCES:
            return self._send(404, _status(404, "NotFound", f"unknown resource {plural}"))
        watching = query.get("watch") in ("true", "1")
        verb = {
            "GET": "watch" if watching else ("get" if name else "list"),
            "POST": "create",
            "PATCH": "patch",
            "PUT": "update",
            "DELETE": "delete",
        }[method]
        if sub == "eviction" or (method == "POST" and name and sub is None and plural == "pods"):
            verb = "create"
        resource = f"{plural}/{sub}" if sub else plural
        if (verb, resource) in emu.deny:
            where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
            return self._send(
                403,
                _status(
                    403,
                    "Forbidden",
                    f'{resource} "{name or ""}" is forbidden: '
                    'User "system:serviceaccount:rto:harness"'
                    f' cannot {verb} resource "{resource}" in API group "{group}"{where}',
                    {"name": name or "", "group": group, "kind": plural},
                ),
            )
        if watching:
            return self._watch(group, plural, ns, query)
        if sub == "log" and plural == "pods" and method == "GET":
            return self._pod_log(emu, ns or "", name or "", query)
        with emu._cond:
            self._serve(emu, method, group, plural, ns, name, sub, query, body)

    def _serve(
        self,
        emu: KubeEmulator,
        method: str,
        group: str,
        plural: str,
        ns: str | None,
        name: str | None,
        sub: str | None,
        query: dict[str, str],
        body: Any,
    ) -> None:
        key = (group, plural, ns, name or "")
        if name is None and method == "GET":
            sel_l = _label_selector(query.get("labelSelector", ""))
            sel_f = _field_selector(query.get("fieldSelector", ""))
            items = [
                o
                for (g, p, n, _), o in sorted(emu.objects.items(), key=lambda kv: str(kv[0]))
                if (g, p) == (group, plural) and (ns is None or n == ns) and sel_l(o) and sel_f(o)
            ]
            return self._send(
                200,
                {
                    "kind": "List",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(emu.rv)},
                    "items": items,
                },
            )
        if method == "POST" and name is None:
            meta = body.setdefault("metadata", {})
            if "generateName" in meta and "name" not in meta:
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta["namespace"] = ns if ns else meta.get("namespace")
            if ns is None:
                meta.pop("namespace", None)
            if (group, plural, ns, meta["name"]) in emu.objects:
                return self._send(
                    409, _status(409, "AlreadyExists", f'{plural} "{meta["name"]}" already exists')
                )
            created = emu.put(group, plural, body)
            self._send(201, created)
            return None
        obj = emu.objects.get(key)
        if obj is None:
            return self._send(
                404,
                _status(
                    404, "NotFound", f'{plural} "{name}" not found', {"name": name, "kind": plural}
                ),
            )
        if sub == "eviction" and method == "POST":
            return self._evict(emu, obj)
        if sub in ("pause", "unpause") and method == "PUT":
            conds = obj["status"].setdefault("conditions", [])
            obj["status"]["conditions"] = [c for c in conds if c["type"] != "Paused"]
            if sub == "pause":
                obj["status"]["conditions"].append({"type": "Paused", "status": "True"})
            emu._bump((group, plural), "MODIFIED", obj)
            return self._send(202, {})
        if sub in ("removevolume", "addvolume") and method == "PUT":
            vols = obj["spec"].setdefault("volumes", [])
            if sub == "removevolume":
                if not any(v["name"] == body["name"] for v in vols):
                    return self._send(
                        400, _status(400, "BadRequest", f"volume {body['name']} not found")
                    )
                obj["spec"]["volumes"] = [v for v in vols if v["name"] != body["name"]]
            else:
                vols.append({"name": body["name"], **body.get("volumeSource", {})})
            emu._bump((group, plural), "MODIFIED", obj)
            return self._send(202, {})
        if method == "GET":
            return self._send(200, obj)
        if method == "PATCH":
            ctype = self.headers.get("Content-Type", "")
            if "json-patch" in ctype:
                _json_patch(obj, body)
            else:
                _merge(obj, body)
            emu._bump((group, plural), "MODIFIED", obj)
            return self._send(200, obj)
        if method == "PUT":
            body["metadata"]["uid"] = obj["metadata"]["uid"]
            emu.objects[key] = body
            emu._bump((group, plural), "MODIFIED", body)
            return self._send(200, body)
        if method == "DELETE":
            gone = emu.remove(group, plural, ns, name or "")
            return self._send(200, gone or {})
        return self._send(405, _status(405, "MethodNotAllowed", method))

    def _send_raw(self, code: int, data: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _proxy(self, emu: KubeEmulator, method: str, m: re.Match[str], query: str) -> None:
        """services/NAME:PORT/proxy/PATH: forward to a ready endpoint, as kube-apiserver does.

        RBAC is "get services/proxy". The API server authenticates the caller and
        drops its Authorization header before proxying (the backend never sees
        the token). No ready endpoint: 503; endpoint refusing or silent: 503
        "error trying to reach service". Only loopback endpoints are dialled (a
        test's server on 127.0.0.1): any other pod IP is answered 503 unreached,
        so the emulator never sends traffic off the machine.
        """
        ns, svc, port = m["ns"], m["svc"], m["port"]
        auth = self.headers.get("Authorization", "")
        if ("get", "services/proxy") in emu.deny:
            emu.proxied.append((auth, "", "", 403))
            return self._send(
                403,
                _status(
                    403,
                    "Forbidden",
                    f'services "{svc}" is forbidden: User "system:serviceaccount:rto:harness" '
                    f'cannot get resource "services/proxy" in API group "" in the namespace "{ns}"',
                ),
            )
        if method != "GET":
            return self._send(405, _status(405, "MethodNotAllowed", f"{method} not proxied"))
        where = emu.endpoint(ns, svc, port)
        if isinstance(where, str):
            code = 404 if where.endswith("not found") else 503
            emu.proxied.append((auth, "", "", code))
            return self._send(code, _status(code, "ServiceUnavailable", where))
        ip, target = where
        path = (m["rest"] or "/") + (f"?{query}" if query else "")
        if not ipaddress.ip_address(ip).is_loopback:
            emu.proxied.append((auth, f"{ip}:{target}", path, 503))
            return self._send(
                503,
                _status(503, "ServiceUnavailable", f"error trying to reach service: {ip} is not "
                        "loopback (the emulator only dials 127.0.0.0/8)"),
            )  # fmt: skip
        conn = http.client.HTTPConnection(ip, target, timeout=10)
        try:
            conn.request("GET", path, headers={"Host": f"{ip}:{target}"})
            resp = conn.getresponse()
            code, ctype, data = resp.status, resp.getheader("Content-Type", ""), resp.read()
        except OSError as exc:
            code, ctype = 503, "application/json"
            data = json.dumps(
                _status(503, "ServiceUnavailable", f"error trying to reach service: {exc}")
            ).encode()
        finally:
            conn.close()
        emu.proxied.append((auth, f"{ip}:{target}", path, code))
        try:
            return self._send_raw(code, data, ctype or "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            return None  # the client gave up (its probe timed out): nothing to answer

    def _metrics(self, emu: KubeEmulator, path: str) -> None:
        """metrics.k8s.io/v1beta1 as metrics-server serves it (pods only).

        Not installed: the API server has no such group (404 for every path).
        RBAC: deny ``("get", "metrics.k8s.io/pods")``. A pod without a reading
        yet (metrics-server scrapes every 15 s or so): 404 NotFound.
        """
        if not emu.metrics_server:
            return self._send(
                404, _status(404, "NotFound", "the server could not find the requested resource")
            )
        if path == "/apis/metrics.k8s.io/v1beta1":
            return self._send(
                200,
                {
                    "kind": "APIResourceList",
                    "groupVersion": "metrics.k8s.io/v1beta1",
                    "resources": [{"name": "pods"}, {"name": "nodes"}],
                },
            )
        m = re.match(r"^/apis/metrics\.k8s\.io/v1beta1/namespaces/([^/]+)/pods/([^/]+)$", path)
        if m is None:
            return self._send(404, _status(404, "NotFound", f"no route {path}"))
        ns, pod = m[1], m[2]
        if ("get", "metrics.k8s.io/pods") in emu.deny:
            return self._send(
                403,
                _status(
                    403,
                    "Forbidden",
                    f'pods.metrics.k8s.io "{pod}" is forbidden: User '
                    '"system:serviceaccount:rto:harness" cannot get resource "pods" in API '
                    f'group "metrics.k8s.io" in the namespace "{ns}"',
                ),
            )
        with emu._cond:
            usage = emu.usage.get((ns, pod))
            exists = ("", "pods", ns, pod) in emu.objects
        if usage is None or not exists:
            return self._send(
                404, _status(404, "NotFound", f'podmetrics.metrics.k8s.io "{ns}/{pod}" not found')
            )
        return self._send(
            200,
            {
                "kind": "PodMetrics",
                "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": {"name": pod, "namespace": ns},
                "timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "window": "15s",
                "containers": [
                    {"name": c, "usage": {"cpu": cpu, "memory": mem}}
                    for c, (cpu, mem) in usage.items()
                ],
            },
        )

    def _pod_log(self, emu: KubeEmulator, ns: str, name: str, query: dict[str, str]) -> None:
        """pods/NAME/log as the kubelet serves it through the API server."""
        with emu._cond:
            pod = emu.objects.get(("", "pods", ns, name))
            if pod is None:
                return self._send(404, _status(404, "NotFound", f'pods "{name}" not found'))
            uid = pod["metadata"]["uid"]
            names = [c["name"] for c in pod["spec"]["containers"]]
        container = query.get("container") or (names[0] if len(names) == 1 else "")
        if container not in names:
            return self._send(
                400,
                _status(
                    400,
                    "BadRequest",
                    f"container {container} is not valid for pod {name}"
                    if container
                    else f"a container name must be specified for pod {name}, "
                    f"choose one of: [{' '.join(names)}]",
                ),
            )
        stamps = query.get("timestamps") in ("true", "1")
        since = dt.datetime.min.replace(tzinfo=dt.UTC)
        if query.get("sinceSeconds"):
            since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=int(query["sinceSeconds"]))
        key = (ns, uid, container)
        tail = int(query["tailLines"]) if query.get("tailLines") else None

        def render(entries: list[tuple[dt.datetime, str]]) -> bytes:
            out = []
            for t, line in entries:
                if t < since:
                    continue
                # RFC3339Nano as Go writes it: trailing zeros of the fraction trimmed.
                ts = t.strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".") + "Z"
                out.append(f"{ts} {line}\n" if stamps else f"{line}\n")
            return "".join(out).encode()

        if query.get("follow") not in ("true", "1"):
            with emu._cond:
                entries = list(emu.logs.get(key, []))
            return self._send_raw(200, render(entries[-tail:] if tail else entries), "text/plain")
        w = _Watch("", "pods/log", ns, lambda o: True)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        pos = 0
        try:
            with emu._cond:
                emu._log_streams.append(w)
                if tail is not None:  # the stream starts with the last tailLines lines
                    pos = max(0, len(emu.logs.get(key, [])) - tail)
            while True:
                with emu._cond:
                    entries = emu.logs.get(key, [])
                    batch, pos = entries[pos:], len(entries)
                    current = emu.objects.get(("", "pods", ns, name))
                    gone = current is None or current["metadata"]["uid"] != uid
                    if not batch:
                        if gone or w.closed or self._client_left():
                            break
                        emu._cond.wait(0.2)
                        continue
                data = render(batch)
                if data:
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        finally:
            with emu._cond:
                emu._log_streams.remove(w)
            self.close_connection = True
        return None

    def _client_left(self) -> bool:
        """The client closed its end (a follower stopped): a quiet stream ends."""
        readable, _, _ = select.select([self.connection], [], [], 0)
        try:
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _evict(self, emu: KubeEmulator, pod: Obj) -> None:
        ns = pod["metadata"]["namespace"]
        emu.remove("", "pods", ns, pod["metadata"]["name"])
        return self._send(201, {"kind": "Status", "status": "Success", "code": 201})

    def _watch(self, group: str, plural: str, ns: str | None, query: dict[str, str]) -> None:
        emu = self.server.emu
        sel_l = _label_selector(query.get("labelSelector", ""))
        sel_f = _field_selector(query.get("fieldSelector", ""))
        since = int(query.get("resourceVersion") or 0)
        timeout = float(query.get("timeoutSeconds") or 30)
        w = _Watch(group, plural, ns, lambda o: sel_l(o) and sel_f(o))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(obj: Obj) -> None:
            data = json.dumps(obj).encode() + b"\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        try:
            with emu._cond:
                emu._watches.append(w)
            for batch in self._follow(emu, w, since, timeout):
                for ev in batch:
                    chunk(ev)
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with emu._cond:
                emu._watches.remove(w)
            self.close_connection = True

    def _follow(
        self, emu: KubeEmulator, w: _Watch, since: int, timeout: float
    ) -> Iterator[list[Obj]]:
        import time

        deadline = time.monotonic() + timeout
        pos = since
        while True:
            with emu._cond:
                if since == 0 and pos == 0:
                    # No version: the current state as ADDED events, then changes.
                    batch = [
                        {"type": "ADDED", "object": copy.deepcopy(o)}
                        for (g, p, n, _), o in emu.objects.items()
                        if (g, p) == (w.group, w.plural)
                        and (w.namespace in (None, n))
                        and w.selector(o)
                    ]
                    pos = emu.rv
                else:
                    batch = [
                        {"type": t, "object": o}
                        # The log is in version order: start where this watch left off.
                        for _, k, t, o in emu.log[bisect.bisect_right(emu.log, pos, key=_rv_of) :]
                        if k == (w.group, w.plural)
                        and (w.namespace in (None, o["metadata"].get("namespace")))
                        and w.selector(o)
                    ]
                    pos = emu.rv
                if not batch:
                    left = deadline - time.monotonic()
                    if w.closed or left <= 0:
                        return
                    emu._cond.wait(min(left, 0.5))
                    continue
            yield batch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    emu: KubeEmulator


@contextmanager
def emulator() -> Iterator[KubeEmulator]:
    """Serve a fresh emulator on 127.0.0.1 (a free port) for the block's duration."""
    emu = KubeEmulator()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.emu = emu
    emu.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield emu
    finally:
        emu.drop_watches()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def write_kubeconfig(path: str, contexts: dict[str, str], current: str) -> str:
    """A kubeconfig naming each context -> server URL (no auth: the emulator has none)."""
    import yaml

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": current,
        "clusters": [{"name": c, "cluster": {"server": url}} for c, url in contexts.items()],
        "users": [{"name": "harness", "user": {"token": "emulator"}}],
        "contexts": [{"name": c, "context": {"cluster": c, "user": "harness"}} for c in contexts],
    }
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return path


def eventually(check, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    """Poll ``check`` (every 20 ms, tenacity) until truthy; its last value."""
    r = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(0.02),
        retry=retry_if_result(lambda v: not v),
        reraise=True,
    )
    return r(check)
