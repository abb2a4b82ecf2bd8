"""The lab's virt-api subresources: ``subresources.kubevirt.io/v1`` behind the real aggregator.

Served by the lab's virt-controller process on the same HTTPS port as its
webhooks (``virt_webhooks.serve``) and registered with the real API server as
the APIService ``v1.subresources.kubevirt.io`` (a selectorless Service
``kubevirt/virt-api`` whose Endpoints name the hub), so ``PUT
/apis/subresources.kubevirt.io/v1/namespaces/NS/virtualmachineinstances/NAME/pause``
reaches it through the aggregator, as on KubeVirt. Requests are taken only
from the aggregator (its front-proxy client certificate, checked against the
lab's CA), and the user the aggregator names in X-Remote-User/X-Remote-Group
is authorized with a SubjectAccessReview, as KubeVirt's virt-api does: RBAC
of the real API server decides who may pause a VMI.

Served: discovery of the group version, ``pause`` and ``unpause`` (libvirt's
suspend and resume of the domain on the node the VMI's status names; its
handler then reports the Paused condition). ``addvolume`` and
``removevolume`` answer 422 as KubeVirt does for a volume the VMI does not
have: the lab's guests declare no hotpluggable volume (their data disk is the
lab's, unplugged by the lab itself).
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Callable
from pathlib import Path

from cluster.lab import state
from cluster.lab.kube.virt_api import Obj, VirtApi

__all__ = [
    "GROUP",
    "Reply",
    "Subresources",
    "headers_identity",
    "libvirt_act",
    "register_apiservice",
]

GROUP = "subresources.kubevirt.io"
NAMESPACE, SERVICE = "kubevirt", "virt-api"
Reply = tuple[int, Obj]  # HTTP status, JSON body

_VERBS = ("pause", "unpause", "addvolume", "removevolume")
_PATH = re.compile(
    rf"^/apis/{re.escape(GROUP)}/v1/namespaces/(?P<ns>[^/]+)/"
    r"(?P<plural>virtualmachineinstances|virtualmachines)/(?P<name>[^/]+)/(?P<sub>[a-z]+)$"
)


def _status(code: int, reason: str, message: str) -> Reply:
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


def discovery() -> Obj:
    resources = [
        {"name": f"{plural}/{sub}", "namespaced": True, "kind": kind, "verbs": ["update"]}
        for plural, kind in (
            ("virtualmachineinstances", "VirtualMachineInstance"),
            ("virtualmachines", "VirtualMachine"),
        )
        for sub in _VERBS
        if plural == "virtualmachineinstances" or sub in ("addvolume", "removevolume")
    ]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{GROUP}/v1",
        "resources": resources,
    }


class Subresources:
    """Answers the aggregator's requests; ``act(node, vmi, verb)`` does pause/unpause."""

    def __init__(
        self,
        api: VirtApi,
        vmi: Callable[[str, str], Obj | None],
        act: Callable[[str, str, str], None],
    ) -> None:
        self.api, self._vmi, self._act = api, vmi, act

    def _allowed(self, user: str, groups: list[str], ns: str, plural: str, name: str,
                 sub: str) -> bool:  # fmt: skip
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": groups,
                "resourceAttributes": {
                    "group": GROUP,
                    "version": "v1",
                    "resource": plural,
                    "subresource": sub,
                    "verb": "update",
                    "namespace": ns,
                    "name": name,
                },
            },
        }
        out = self.api.json(
            "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body=review
        )
        return bool((out.get("status") or {}).get("allowed"))

    def handle(self, method: str, path: str, user: str, groups: list[str]) -> Reply:
        if method == "GET" and path.rstrip("/") == f"/apis/{GROUP}/v1":
            return 200, discovery()
        if method == "GET" and path.rstrip("/") == f"/apis/{GROUP}":
            v = {"groupVersion": f"{GROUP}/v1", "version": "v1"}
            return 200, {"kind": "APIGroup", "apiVersion": "v1", "name": GROUP,
                         "versions": [v], "preferredVersion": v}  # fmt: skip
        m = _PATH.match(path)
        if m is None or m["sub"] not in _VERBS:
            return _status(404, "NotFound", f"{path} is not served by the lab's virt-api")
        if method != "PUT":
            return _status(405, "MethodNotAllowed", f"{m['sub']} takes PUT, not {method}")
        ns, plural, name, sub = m["ns"], m["plural"], m["name"], m["sub"]
        if not self._allowed(user, groups, ns, plural, name, sub):
            what = f'"{plural}/{sub}" in API group "{GROUP}" in namespace "{ns}"'
            return _status(403, "Forbidden", f'User "{user}" cannot update resource {what}')
        vmi = self._vmi(ns, name)
        if vmi is None:
            return _status(
                404, "NotFound", f'virtualmachineinstance.kubevirt.io "{name}" not found'
            )
        if sub in ("addvolume", "removevolume"):
            return _status(422, "Invalid", f"VMI {name} has no hotpluggable volume to {sub[:-6]} "
                           "(the lab's guests declare none)")  # fmt: skip
        st = vmi.get("status") or {}
        if st.get("phase") != "Running" or not st.get("nodeName"):
            return _status(409, "Conflict", f"VMI {name} is not running")
        paused = any(
            c.get("type") == "Paused" and c.get("status") == "True"
            for c in st.get("conditions") or ()
        )
        if sub == "pause" and paused:
            return _status(409, "Conflict", f"VMI {name} is already paused")
        if sub == "unpause" and not paused:
            return _status(409, "Conflict", f"VMI {name} is not paused")
        self._act(str(st["nodeName"]), name, sub)
        return 200, {}


def libvirt_act(node: str, name: str, sub: str) -> None:
    """Suspend or resume the VMI's domain on ``node``'s libvirtd."""
    # libvirt: the optional 'vm' extra
    from cluster.lab import virt, virtd

    conn = virt.connect(virtd.node_uri(node))
    try:
        dom = conn.lookupByName(name)
        if sub == "pause":
            dom.suspend()
        else:
            dom.resume()
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def register_apiservice(api: VirtApi, ca: Path, port: int) -> None:
    """Namespace, selectorless Service + Endpoints on the hub, APIService (replaced)."""
    api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": NAMESPACE}})  # fmt: skip
    svc_path = f"/api/v1/namespaces/{NAMESPACE}/services"
    api.create(svc_path, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE},
        "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]},
    })  # fmt: skip
    ep_path = f"/api/v1/namespaces/{NAMESPACE}/endpoints"
    api.delete(f"{ep_path}/{SERVICE}")
    api.create(ep_path, {
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": SERVICE},
        "subsets": [{"addresses": [{"ip": state.HUB_IP}],
                     "ports": [{"name": "https", "port": port}]}],
    })  # fmt: skip
    path = "/apis/apiregistration.k8s.io/v1/apiservices"
    name = f"v1.{GROUP}"
    api.delete(f"{path}/{name}")
    api.create(path, {
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": name},
        "spec": {
            "group": GROUP, "version": "v1",
            "service": {"namespace": NAMESPACE, "name": SERVICE, "port": 443},
            "caBundle": base64.b64encode(ca.read_bytes()).decode(),
            "groupPriorityMinimum": 1000, "versionPriority": 15,
        },
    })  # fmt: skip


def headers_identity(get_all: Callable[[str], list[str] | None]) -> tuple[str, list[str]]:
    """The user and groups the aggregator names (X-Remote-User, X-Remote-Group)."""
    user = next(iter(get_all("X-Remote-User") or []), "")
    groups = [g for g in get_all("X-Remote-Group") or [] if g]
    return user, groups
