"""Result rows shaped like a run of a real campaign file, for report tests.

Read by ``tests/test_report_standard.py`` (and by hand, to render a report and
look at it): :func:`campaign_rows` plans ``experiments/campaigns/standard.yaml``
(or another campaign) with the harness's own loader and writes one
:class:`chaos.results.RunResult` per planned run, with the fault, variant, kind,
healers and profile the runner would record. Pod runs recover with RTOs of
the size the lab measured; VMI runs either recover (under TCG) or abort before
the fault as on a machine where no VMI became Ready. Nothing here runs a lab.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from chaos.campaign import plan_campaign
from chaos.results import RunResult, RunStatus
from chaos.spec import fault_variant
from core.timeline import EventKind, TimelineEvent

__all__ = ["STANDARD", "VMI_NOT_READY", "campaign_rows"]

ROOT = Path(__file__).resolve().parents[1]
STANDARD = ROOT / "experiments" / "campaigns" / "standard.yaml"
VMI_NOT_READY = "timed out after 120.0 s waiting for workload {name} to be Ready and answer"

# Plausible medians (s) per (fault, kind, profile): the sizes the lab measured.
_RTO = {
    ("process-crash", "kubernetes-defaults"): {"pod": 0.08, "vmi": 37.0},
    ("node-drain", "kubernetes-defaults"): {"pod": 2.5, "vmi": 0.1},
    ("node-power-off", "kubernetes-defaults"): {"pod": 62.0, "vmi": 75.0},
    ("network-partition", "kubernetes-defaults"): {"pod": 55.0, "vmi": 60.0},
    ("storage-lost", "kubernetes-defaults"): {"pod": 3.0, "vmi": 6.0},
}


def _timeline(rto: float) -> list[TimelineEvent]:
    return [
        TimelineEvent(t=0.4, kind=EventKind.MARK, source="runner", message="workload ready"),
        TimelineEvent(t=1.0, kind=EventKind.FAULT_INJECTED, source="runner", message="inject"),
        TimelineEvent(t=1.1, kind=EventKind.PROBE_FAIL, source="probe"),
        TimelineEvent(t=1.4, kind=EventKind.CONTROL, source="control", message="NotReady"),
        TimelineEvent(t=1.6, kind=EventKind.HEALER_ACTION, source="watchdog", message="restart"),
        TimelineEvent(t=1.1 + rto, kind=EventKind.PROBE_OK, source="probe"),
        TimelineEvent(t=1.1 + rto + 0.5, kind=EventKind.FAULT_REVERTED, source="runner"),
    ]


def campaign_rows(
    campaign: Path = STANDARD,
    *,
    vmi: Literal["recovered", "aborted"] = "recovered",
    repetitions: int | None = None,
) -> list[RunResult]:
    """One row per run the campaign plans (``repetitions`` overrides the file's)."""
    plan = plan_campaign(campaign)
    rows: list[RunResult] = []
    for experiment, reps in plan.entries:
        rto = experiment.rto
        kind = rto.target.kind
        profile = rto.profile or "fast"
        for rep in range(repetitions or reps):
            base = _RTO.get((rto.fault.type, "kubernetes-defaults"), {}).get(kind, 5.0)
            seconds = base * (0.1 if profile == "fast" else 1.0) * (1 + 0.07 * rep)
            common = {
                "run_id": f"r{len(rows):03d}",
                "campaign": plan.spec.name,
                "experiment": experiment.path.name,
                "fault": rto.fault.type,
                "variant": fault_variant(rto.fault, rto.target),
                "kind": kind,
                "backend": plan.spec.backend,
                "profile": profile,
                "healers": list(rto.healers),
                "repetition": rep,
                "started_at": "2026-12-01T10:00:00+00:00",
                "accelerator": "tcg" if kind == "vmi" else None,
            }
            if kind == "vmi" and vmi == "aborted":
                rows.append(
                    RunResult(
                        **common,
                        status=RunStatus.ABORTED,
                        error=VMI_NOT_READY.format(name=rto.target.workload),
                        timeline=[
                            TimelineEvent(
                                t=120.0,
                                kind=EventKind.MARK,
                                source="runner",
                                message="workload not ready",
                            )
                        ],
                    )
                )
                continue
            rows.append(
                RunResult(
                    **common,
                    status=RunStatus.RECOVERED,
                    rto_s=round(seconds, 3),
                    detection_s=0.3,
                    healer_action_s=0.6,
                    outage_start_s=0.1,
                    same_instance=kind == "vmi",
                    probes_sent=int(50 * (seconds + 3)),
                    probes_failed=int(50 * seconds),
                    timeline=_timeline(seconds),
                )
            )
    return rows
