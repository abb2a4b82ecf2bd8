"""Where a power driver cut a workload off the network, kept in the cluster.

Used by ``KubeFaults`` for pod and VMI cuts made through a ``PartitionDriver``:
the driver cuts one address on one node (a per-IP rule), so the heal must know
that address. The harness's fault journal knows only the workload's name, and
the workload may have moved since (an eviction gives the pod a new node and
IP), so before it cuts, the harness writes the (node, IP) into a ConfigMap
``rto-cut-<workload>`` in the first target namespace; every heal, including
``rto revert`` after a SIGKILL of the harness, reads it back, heals each
address, and deletes it. RBAC: get, create, update, delete configmaps there.
"""

from __future__ import annotations

import json

from cluster.kube.client import KubeClient, Obj
from core.errors import BackendError

__all__ = ["CutRecords"]


class CutRecords:
    """The (node, IP) cuts recorded for each workload, as ConfigMaps."""

    def __init__(self, k: KubeClient) -> None:
        self.k = k

    def _name(self, workload: str) -> str:
        return f"rto-cut-{workload}"

    def _read(self, workload: str) -> Obj | None:
        ns, name = self.k.config.namespaces[0], self._name(workload)
        try:
            cm = self.k.call("get", "configmaps", self.k.core.read_namespaced_config_map, name, ns)
        except BackendError as exc:
            if "(404)" in str(exc):
                return None
            raise
        obj: Obj = self.k.core.api_client.sanitize_for_serialization(cm)
        return obj

    def cuts(self, workload: str) -> list[tuple[str, str]]:
        """The recorded cuts of ``workload``, oldest first; [] when none."""
        return self._parse(workload, self._read(workload))

    def _parse(self, workload: str, cm: Obj | None) -> list[tuple[str, str]]:
        if cm is None:
            return []
        try:
            raw = json.loads((cm.get("data") or {}).get("cuts", "[]"))
            return [(str(node), str(ip)) for node, ip in raw]
        except (ValueError, TypeError) as exc:
            raise BackendError(
                f"ConfigMap {self.k.config.namespaces[0]}/{self._name(workload)} field "
                f"data.cuts is not a list of [node, ip] pairs ({exc}); heal the cut of "
                f"{workload} by hand and delete it"
            ) from None

    def add(self, workload: str, node: str, ip: str) -> None:
        """Record a cut before it is made (a crash right after it still finds it)."""
        ns, name = self.k.config.namespaces[0], self._name(workload)
        cm = self._read(workload)
        cuts = list(dict.fromkeys([*self._parse(workload, cm), (node, ip)]))
        body: Obj = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "labels": self.k.labels(workload)},
            "data": {"cuts": json.dumps([list(c) for c in cuts])},
        }
        if cm is None:
            self.k.call("create", "configmaps", self.k.core.create_namespaced_config_map, ns, body)
        else:
            body["metadata"]["resourceVersion"] = cm["metadata"]["resourceVersion"]
            self.k.call(
                "update", "configmaps", self.k.core.replace_namespaced_config_map, name, ns, body
            )

    def forget(self, workload: str) -> None:
        """After every recorded cut of ``workload`` is healed."""
        ns, name = self.k.config.namespaces[0], self._name(workload)
        delete = self.k.core.delete_namespaced_config_map
        self.k.ignore_404("delete", "configmaps", delete, name, ns)
