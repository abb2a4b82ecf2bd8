"""``KubeClient``: the plumbing every part of ``KubeBackend`` shares.

Filled by ``KubeBackend.__init__`` (cluster/kube/backend.py) with the config,
the context's API client and the dry-run switch; read by the collaborators in
reading.py, faults.py and healing.py and by the facade itself. Every call goes
through ``call`` so a refusal names what to fix: RBAC (verb and resource), a
missing KubeVirt, an unreachable API server (``explain``). Every change goes
through ``act`` so dry-run prints the plan and touches nothing. Every node
target is checked against the config (``target_node``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from cluster.kube.config import KubeConfig
from cluster.kube.watch import raw_request
from core.clock import Clock
from core.errors import BackendError

__all__ = ["KV", "OUT_OF_SERVICE", "Executor", "KubeClient", "Obj", "kube_exec"]

OUT_OF_SERVICE = {
    "key": "node.kubernetes.io/out-of-service",
    "value": "nodeshutdown",
    "effect": "NoExecute",
}
KV = ("kubevirt.io", "v1")
Obj = dict[str, Any]
# (api client, namespace, pod, container, argv) -> combined output
Executor = Callable[[k8s.ApiClient, str, str, str, list[str]], str]


def kube_exec(api: k8s.ApiClient, ns: str, pod: str, container: str, argv: list[str]) -> str:
    """Run argv in a container through the exec subresource (a websocket)."""
    from kubernetes.stream import stream

    out: str = stream(
        k8s.CoreV1Api(api).connect_get_namespaced_pod_exec,
        pod,
        ns,
        container=container,
        command=argv,
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )
    return out


def _done(resp: Any) -> None:
    """Read a raw response to its end before its connection goes back to the pool.

    Released unread, the body stays in the socket and the next request on
    that pooled connection reads it as its own status line.
    """
    resp.drain_conn()
    resp.release_conn()


class KubeClient:
    """The API clients of one context, with the error translation and dry-run."""

    def __init__(
        self,
        config: KubeConfig,
        context: str,
        api: k8s.ApiClient,
        *,
        dry_run: bool,
        echo: Callable[[str], None],
        executor: Executor,
        clock: Clock,
        sleep: Callable[[float], None],
    ) -> None:
        self.config, self.context, self.api = config, context, api
        self.core = k8s.CoreV1Api(api)
        self.apps = k8s.AppsV1Api(api)
        self.net = k8s.NetworkingV1Api(api)
        self.coord = k8s.CoordinationV1Api(api)
        self.custom = k8s.CustomObjectsApi(api)
        self.dry_run, self.echo = dry_run, echo
        self.plan: list[str] = []
        self.executor, self.clock, self.sleep = executor, clock, sleep
        self.kubevirt: bool | None = None  # has_kubevirt's answer, asked once

    # --- plumbing -----------------------------------------------------------------
    def call(self, verb: str, resource: str, fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except ApiException as exc:
            raise self.explain(exc, verb, resource) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise BackendError(
                f"kube API server of context {self.context!r} unreachable "
                f"({self.api.configuration.host}): {exc}; is the cluster up?"
            ) from exc

    def explain(self, exc: ApiException, verb: str, resource: str) -> BackendError:
        try:
            message = json.loads(exc.body or "{}").get("message", exc.reason)
        except ValueError:
            message = exc.reason
        if exc.status == 403 and " cannot " not in message:
            # Not the authorizer (its refusals read 'User "u" cannot VERB resource
            # ...'): an admission plugin, such as a ResourceQuota or Pod Security.
            return BackendError(
                f"{verb} {resource} refused by the cluster's admission (403, context "
                f"{self.context!r}): {message}"
            )
        if exc.status == 403:
            return BackendError(
                f"RBAC: the harness may not '{verb}' '{resource}' (context {self.context!r}): "
                f"{message}; grant verbs [{verb}] on resources [{resource}] to its account"
            )
        if exc.status == 404 and resource.startswith(("virtualmachine", "kubevirt")):
            return BackendError(f"KubeVirt is not installed or lacks {resource}: {message}")
        if exc.status == 429:
            return BackendError(f"{verb} {resource} refused (429): {message}")
        return BackendError(f"{verb} {resource} failed ({exc.status}): {message}")

    def act(self, description: str, fn: Callable[[], Any]) -> Any:
        """Every change to the cluster: in dry-run, recorded and printed instead."""
        if self.dry_run:
            self.plan.append(description)
            self.echo(f"[dry-run] {description}")
            return None
        return fn()

    def has_kubevirt(self) -> bool:
        """Does the cluster serve kubevirt.io/v1? Asked once, by API discovery.

        Discovery, not a list of VMIs: every authenticated user may read it, and
        a real API server checks RBAC before it notices a group is not served,
        so an account without VMI rights would get 403 where "no KubeVirt" is
        the answer (seen against kube-apiserver 1.34).
        """
        if self.kubevirt is None:
            try:
                _done(raw_request(self.api, "GET", "/apis/kubevirt.io/v1"))
                self.kubevirt = True
            except ApiException as exc:
                if exc.status != 404:
                    raise self.explain(exc, "get", "kubevirt.io/v1") from exc
                self.kubevirt = False
            except urllib3.exceptions.HTTPError as exc:
                raise BackendError(f"kube API server unreachable: {exc}") from exc
        return self.kubevirt

    def require_kubevirt(self) -> None:
        if not self.has_kubevirt():
            raise BackendError(
                f"KubeVirt is not installed on context {self.context!r} (no kubevirt.io/v1 "
                "API): VMI experiments need it (see README, Real clusters)"
            )

    def sub(self, ns: str, vmi: str, sub: str, body: Obj | None = None) -> None:
        """PUT one of virt-api's VMI subresources (pause, unpause, add/removevolume)."""
        path = (
            f"/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{vmi}/{sub}"
        )
        resource = f"virtualmachineinstances/{sub}"
        try:
            _done(
                self.call("update", resource, raw_request, self.api, "PUT", path, body=body or {})
            )
        except BackendError as exc:
            cause = exc.__cause__
            # 404: the aggregated group is not registered, 503: registered but
            # virt-api does not answer. KubeVirt's CRDs alone (kubevirt.io/v1
            # served) give neither, so "not installed" would mislead.
            if not isinstance(cause, ApiException) or cause.status not in (404, 503):
                raise
            if cause.status == 404 and self.has_kubevirt() and not self._serves_subresources():
                raise BackendError(
                    f"update {resource}: virt-api does not serve subresources.kubevirt.io/v1 on "
                    f"context {self.context!r} (404), though kubevirt.io/v1 is served: pause, "
                    "unpause and volume hotplug need virt-api (check the APIService "
                    "v1.subresources.kubevirt.io)"
                ) from cause
            if cause.status == 503:
                raise BackendError(
                    f"update {resource}: virt-api is unavailable on context {self.context!r} "
                    f"(503): {exc}; check the virt-api pods and the APIService "
                    "v1.subresources.kubevirt.io"
                ) from cause
            raise

    def _serves_subresources(self) -> bool:
        """Is virt-api's group in discovery? (A missing VMI answers 404 too.)"""
        try:
            _done(raw_request(self.api, "GET", "/apis/subresources.kubevirt.io/v1"))
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise self.explain(exc, "get", "subresources.kubevirt.io/v1") from exc
        return True

    # --- safety --------------------------------------------------------------------
    def is_target_node(self, node: Obj) -> bool:
        key, value = self.config.target_pair
        labels = node["metadata"].get("labels") or {}
        return node["metadata"]["name"] in self.config.nodes or labels.get(key) == value

    def target_node(self, name: str) -> Obj:
        resp = self.call("get", "nodes", self.core.read_node, name, _preload_content=False)
        raw: Obj = json.loads(resp.data)
        if not self.is_target_node(raw):
            raise BackendError(
                f"node {name!r} is not a target: label it {self.config.target_label} or name it "
                "in 'nodes' of the kube config"
            )
        return raw

    def selector(self) -> str:
        return f"{self.config.target_label},{self.config.workload_label}"

    def labels(self, name: str) -> dict[str, str]:
        key, value = self.config.target_pair
        return {key: value, self.config.workload_label: name}

    def ignore_404(
        self, verb: str, resource: str, fn: Callable[..., Any], *a: Any, **kw: Any
    ) -> None:
        try:
            self.call(verb, resource, fn, *a, **kw)
        except BackendError as exc:
            if "(404)" not in str(exc):
                raise
