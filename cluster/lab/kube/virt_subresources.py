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
handler then reports the Paused condition), ``removevolume`` and ``addvolume``
of the VMI's data disk: the hotpluggable PVC volume the kube backend gives a
VMI (``KubeConfig.vmi_data_volume_size``), whose PersistentVolume is the VMI's
lab volume, where its disk file is. ``removevolume {name}`` detaches the disk
from the live domain and takes the volume and its disk out of the VMI's spec;
``addvolume {name, disk, volumeSource}`` attaches it again and puts them back,
as KubeVirt's virt-api and virt-handler do between them. A volume that is not
hotpluggable cannot be removed (422), one the VMI has cannot be added (422).
The VirtualMachine's own subresources (which also persist the change in the
VM) are not served.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Callable
from pathlib import Path

from kubernetes.client.exceptions import ApiException
from tenacity import Retrying, retry_if_exception, stop_after_attempt

from cluster.lab import state
from cluster.lab.kube.virt_api import Obj, VirtApi, custom_path

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
        {
            "name": f"virtualmachineinstances/{sub}",
            "namespaced": True,
            "kind": "VirtualMachineInstance",
            "verbs": ["update"],
        }
        for sub in _VERBS
    ]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{GROUP}/v1",
        "resources": resources,
    }


class Subresources:
    """Answers the aggregator's requests; ``act(node, vmi, verb)`` does what the
    verb does to the domain (``libvirt_act``)."""

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

    def handle(
        self, method: str, path: str, user: str, groups: list[str], body: Obj | None = None
    ) -> Reply:
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
        st = vmi.get("status") or {}
        if plural != "virtualmachineinstances":
            return _status(404, "NotFound", f"{plural}/{sub} is not served by the lab's virt-api")
        if st.get("phase") != "Running" or not st.get("nodeName"):
            return _status(409, "Conflict", f"VMI {name} is not running")
        if sub in ("addvolume", "removevolume"):
            return self._volume(vmi, str(st["nodeName"]), sub, body or {})
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

    def _volume(self, cached: Obj, node: str, sub: str, body: Obj) -> Reply:
        md = cached["metadata"]
        # Read afresh, not from the cache: the spec may have just been patched.
        path = custom_path("virtualmachineinstances", md["namespace"], md["name"])
        vol_name = body.get("name")
        if not isinstance(vol_name, str) or not vol_name:
            return _status(400, "BadRequest", f"{sub} needs the volume's name")
        have = next((v for v in _volumes(self.api.json("GET", path)) if v.get("name") == vol_name),
                    None)  # fmt: skip
        volume = disk = None
        if sub == "removevolume":
            if have is None:
                return _status(422, "Invalid", f"VMI {md['name']} has no volume {vol_name}")
            source = have.get("persistentVolumeClaim") or have.get("dataVolume") or {}
            if not source.get("hotpluggable"):
                return _status(422, "Invalid", f"Unable to remove volume [{vol_name}] because "
                               "it is not hotpluggable")  # fmt: skip
        else:
            if have is not None:
                return _status(422, "Invalid", f"Unable to add volume [{vol_name}] because "
                               "it already exists")  # fmt: skip
            source = body.get("volumeSource")
            if not isinstance(source, dict) or not source:
                return _status(400, "BadRequest", "addvolume needs a volumeSource")
            volume = {"name": vol_name, **source}
            disk = {"name": vol_name, **(body.get("disk") or {"disk": {"bus": "scsi"}})}
        self._act(node, md["name"], sub)
        self._write_volumes(path, vol_name, volume, disk)
        return 200, {}

    def _write_volumes(self, path: str, name: str, volume: Obj | None, disk: Obj | None) -> None:
        """The VMI's spec without volume ``name`` (and its disk), plus ``volume``
        and ``disk`` when given. The handler writes the status meanwhile, so the
        patch carries the resourceVersion it read and is redone on a 409."""

        def attempt() -> None:
            vmi = self.api.json("GET", path)
            devices = ((vmi.get("spec") or {}).get("domain") or {}).get("devices") or {}
            vols = [v for v in _volumes(vmi) if v.get("name") != name]
            disks = [d for d in devices.get("disks") or () if d.get("name") != name]
            if volume is not None and disk is not None:
                vols.append(volume)
                disks.append(disk)
            # A merge patch replaces both lists whole: the spec says what is plugged in.
            patch = {
                "metadata": {"resourceVersion": vmi["metadata"]["resourceVersion"]},
                "spec": {"volumes": vols, "domain": {"devices": {"disks": disks}}},
            }
            self.api.json("PATCH", path, body=patch, content_type="application/merge-patch+json")

        Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, ApiException) and e.status == 409),
            stop=stop_after_attempt(10),
            reraise=True,
        )(attempt)


def _volumes(vmi: Obj) -> list[Obj]:
    return list((vmi.get("spec") or {}).get("volumes") or ())


def libvirt_act(node: str, name: str, sub: str) -> None:
    """Suspend or resume the VMI's domain on ``node``'s libvirtd, or detach or
    attach its data disk again (``cluster.lab.vmi_faults``)."""
    # libvirt: the optional 'vm' extra
    from cluster.lab import virt, virtd, vmi_faults

    if sub == "removevolume":
        vmi_faults.unplug_disk(node, name)
        return
    if sub == "addvolume":
        vmi_faults.replug_disk(node, name)
        return
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
