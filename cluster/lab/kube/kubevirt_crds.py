"""KubeVirt's own CRDs (VirtualMachine, VirtualMachineInstance, migration) for an API server.

Filled by ``scripts/build-kube.sh``: its crdgen program (cluster/lab/kube/crdgen)
prints the CRDs the kubevirt.io/kubevirt module (``KUBEVIRT_VERSION``) generates
in pkg/virt-operator/resource/generate/components, with KubeVirt's own OpenAPI
schemas, into ``crds_path()``. Read by the lab's cluster and by the tests'
real API server (tests/real_apiserver.py), which call ``install_crds``: then
kubevirt.io/v1 is served, VMIs and migrations are validated by KubeVirt's
schema, stored, listed and watched, and the kube backend finds KubeVirt by
discovery. What CRDs cannot give is virt-api's part: the
subresources.kubevirt.io group (pause/unpause, add/removevolume, migrate),
its defaulting and validating webhooks, and the controllers that act on the
objects (virt-controller, virt-handler).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from cluster.lab.kube.paths import KUBE_VERSION
from core.errors import LabError
from core.wait import poll_until

__all__ = ["KUBEVIRT_VERSION", "crds_path", "install_crds", "load_crds"]

KUBEVIRT_VERSION = "v1.8.4"  # the pin of scripts/build-kube.sh (KUBEVIRT_VERSION)

Obj = dict[str, Any]


def crds_path() -> Path:
    """Where scripts/build-kube.sh wrote the CRDs (``$RTO_KUBEVIRT_CRDS`` overrides)."""
    default = f"/var/cache/rto-harness/kube/{KUBE_VERSION}/kubevirt-crds.yaml"
    return Path(os.environ.get("RTO_KUBEVIRT_CRDS", default))


def load_crds(path: Path | None = None) -> list[Obj]:
    """The CRD objects of ``path`` (default ``crds_path()``), checked to be this pin's."""
    path = path or crds_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise LabError(f"no KubeVirt CRDs at {path}: run bash scripts/build-kube.sh") from None
    # crdgen's first line names the module version it was built against: a file
    # left by an older pin would install another release's schemas.
    first = text.split("\n", 1)[0]
    if f"KubeVirt {KUBEVIRT_VERSION} " not in first:
        raise LabError(
            f"{path} is not KubeVirt {KUBEVIRT_VERSION}'s ({first!r}): "
            "run bash scripts/build-kube.sh"
        )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 1.2 MB of schemas
    docs = [d for d in yaml.load_all(text, Loader=loader) if d]
    if not docs or any(d.get("kind") != "CustomResourceDefinition" for d in docs):
        raise LabError(f"{path} holds no CustomResourceDefinitions: run bash scripts/build-kube.sh")
    return docs


def _raw(fn: Any, *args: Any) -> Obj:
    """One generated client call, its answer as parsed JSON. Raw, not the client's
    models: building those for a schema this size takes seconds, and the typed
    signatures want models where a CRD read from a file is a plain mapping."""
    out: Obj = json.loads(fn(*args, _preload_content=False).data)
    return out


def _create_or_replace(ext: k8s.ApiextensionsV1Api, crd: Obj) -> None:
    name = crd["metadata"]["name"]
    try:
        _raw(ext.create_custom_resource_definition, crd)
        return
    except ApiException as exc:
        if exc.status != 409:
            raise LabError(f"creating CRD {name} failed ({exc.status}): {exc.reason}") from exc
    current = _raw(ext.read_custom_resource_definition, name)
    meta = {**crd["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}
    try:
        _raw(ext.replace_custom_resource_definition, name, {**crd, "metadata": meta})
    except ApiException as exc:
        raise LabError(f"replacing CRD {name} failed ({exc.status}): {exc.reason}") from exc


def _ready(ext: k8s.ApiextensionsV1Api, custom: k8s.CustomObjectsApi, crd: Obj) -> bool:
    """Established, and every served version is in API discovery (what clients,
    the kube backend's has_kubevirt among them, ask before they use it)."""
    raw = _raw(ext.read_custom_resource_definition, crd["metadata"]["name"])
    conds = (raw.get("status") or {}).get("conditions") or []
    if not any(c.get("type") == "Established" and c.get("status") == "True" for c in conds):
        return False
    group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
    for v in crd["spec"]["versions"]:
        if not v.get("served"):
            continue
        try:
            found = _raw(custom.get_api_resources, group, v["name"])
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        if plural not in {r["name"] for r in found["resources"]}:
            return False
    return True


def install_crds(api: k8s.ApiClient, timeout: float = 60) -> list[str]:
    """Create (or replace) KubeVirt's CRDs through apiextensions.k8s.io/v1 and wait
    until each is Established and discoverable; their names, in file order."""
    crds = load_crds()
    ext, custom = k8s.ApiextensionsV1Api(api), k8s.CustomObjectsApi(api)
    for crd in crds:
        _create_or_replace(ext, crd)
    names = [c["metadata"]["name"] for c in crds]
    poll_until(
        lambda: all(_ready(ext, custom, c) for c in crds),
        timeout,
        f"CRDs {', '.join(names)} to be Established",
        interval=0.1,
    )
    return names
