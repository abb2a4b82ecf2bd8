"""The results store: one row per run, appended to ``runs/results.jsonl``.

Filled by the runner at the end of every run (completed, no recovery, or
aborted); read by ``reports`` with pandas. A row carries everything a report
needs, the timeline included, so a report can be rebuilt from the store alone.
"""

from __future__ import annotations

import fcntl
import json
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from chaos.metrics import MetricsSummary
from core.errors import SpecError
from core.timeline import TimelineEvent

__all__ = ["ResultsStore", "RunResult", "RunStatus"]


class RunStatus(StrEnum):
    RECOVERED = "recovered"  # outage seen and recovered within the deadline
    NO_OUTAGE = "no_outage"  # no failed probe at all: RTO 0
    NOT_RECOVERED = "not_recovered"  # still failing at the deadline
    ABORTED = "aborted"  # Ctrl-C or an error; fault reverted


class RunResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    campaign: str | None = None
    experiment: str  # experiment file title or path
    fault: str  # process-crash | node-drain | node-power-off | network-partition | storage-lost
    variant: str = ""  # e.g. "hang"/"eio" for storage, "node"/"workload" for partition
    kind: str  # pod | vmi
    backend: str  # lab | kube
    profile: str  # kubernetes-defaults | fast | (cluster name on kube)
    healers: list[str] = Field(default_factory=list)
    repetition: int = 0
    started_at: str  # wall clock, ISO 8601 UTC
    status: RunStatus
    rto_s: float | None = None  # first failed probe .. first of N good probes
    detection_s: float | None = None  # injection .. first control-plane reaction
    healer_action_s: float | None = None  # injection .. first healer action
    outage_start_s: float | None = None  # injection .. first failed probe
    same_instance: bool | None = None  # came back as the same instance?
    probes_sent: int = 0
    probes_failed: int = 0
    error: str | None = None
    timeline: list[TimelineEvent] = Field(default_factory=list)
    # Resource metrics sampled during the run (None: not sampled, e.g. rows
    # written before metrics existed, or a backend without metrics()).
    metrics: MetricsSummary | None = None
    # What ran the VMs of this run's backend: "kvm" or "tcg" on the lab (the
    # choice made at `rto lab up`, see cluster.lab.accel), None for a pod run
    # or a backend that cannot tell. VM figures under TCG are not KVM figures.
    accelerator: str | None = None
    # What the run was measured on: "Kubernetes v1.34.4" (a real API server's
    # version), "lab model" (rows measured on the lab's former imitation of the
    # control plane and kubelets), None when unknown (rows written before this existed).
    platform: str | None = None
    # Provenance (chaos.provenance), None on rows written before it existed.
    # campaign_id: a fresh id per `rto campaign` or `rto run` invocation, so a
    # history (reports.history) can tell tonight's campaign from last night's
    # even when both carry the same name; campaign_started_at: its wall clock.
    campaign_id: str | None = None
    campaign_started_at: str | None = None
    harness_version: str | None = None  # the installed rto-harness version
    git_commit: str | None = None  # HEAD of the checkout it ran from ("-dirty"), None without git
    # The host facts that change figures: the cores this process may use, and
    # what the backend's VMs run on ("kvm"/"tcg", the lab's choice at `lab up`;
    # None without VMs or on kube), recorded for pod rows too: a pod night next
    # to TCG guests is not one next to KVM guests. VMI rows: equal to `accelerator`.
    host_cores: int | None = None
    host_accelerator: str | None = None
    # Resolution (chaos.rto, "Resolution"), None on rows written before it
    # existed: the prober's grid and edge intervals, edge probes among
    # probes_sent, and the widths of the intervals the outage's start and end
    # are known to lie in; rto_uncertainty_s is their sum, the width of the
    # interval the true RTO lies in.
    probe_interval_s: float | None = None
    edge_probe_interval_s: float | None = None
    probes_edge: int | None = None
    outage_start_bracket_s: float | None = None
    recovery_bracket_s: float | None = None
    rto_uncertainty_s: float | None = None


class ResultsStore:
    """Append-only JSON-lines file; safe against concurrent writers (flock)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "results.jsonl"

    def append(self, result: RunResult) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = result.model_dump_json() + "\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(line)

    def load(self) -> list[RunResult]:
        if not self.path.exists():
            return []
        rows = []
        for n, line in enumerate(
            self.path.read_text(encoding="utf-8", errors="replace").splitlines(), 1
        ):
            if not line.strip():
                continue
            try:
                rows.append(RunResult.model_validate(json.loads(line)))
            except ValueError as exc:  # pydantic ValidationError is a ValueError
                raise SpecError(f"{self.path}: line {n} is not a valid run result: {exc}") from exc
        return rows
