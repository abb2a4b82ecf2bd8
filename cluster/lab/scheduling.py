"""Where the lab's scheduler puts a workload: the usable node with the fewest pods.

Read by the store (``Store.schedule_pending``), the control plane daemon and the
lab backend (live-migration targets). Policy only, on anything shaped like a
node row, so the store can use it without importing the control plane.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar

__all__ = ["choose_node", "usable"]


class NodeLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def idx(self) -> int: ...

    @property
    def ready(self) -> bool: ...

    @property
    def schedulable(self) -> bool: ...

    @property
    def fenced(self) -> bool: ...

    @property
    def powered(self) -> bool: ...


N = TypeVar("N", bound=NodeLike)


def usable(node: NodeLike) -> bool:
    """May the scheduler put a new pod here?"""
    return node.ready and node.schedulable and not node.fenced and node.powered


def choose_node(nodes: Sequence[N], pod_counts: Mapping[str, int]) -> N | None:
    """The usable node with the fewest pods (ties: lowest index), or None."""
    candidates = [n for n in nodes if usable(n)]
    if not candidates:
        return None
    return min(candidates, key=lambda n: (pod_counts.get(n.name, 0), n.idx))
