"""Verdicts come only from measured sides: every combination of measured, aborted,
no-recovery and missing on the pod and the VMI side of a same-behaviour claim,
and what CI (failing_cells, JUnit) makes of aborted runs."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET

import pytest

from chaos.results import RunResult, RunStatus
from core.errors import SpecError
from core.timeline import EventKind, TimelineEvent
from reports.analysis import (
    FAIL_ON_DEFAULT,
    CellSummary,
    Side,
    Verdict,
    failing_cells,
    summarise,
)
from reports.build import ReportSummary
from reports.expectations import load_expectations
from reports.render import render_junit

STATES = ("measured", "aborted", "no-recovery", "missing")
# storage-lost is documented "same behaviour" (pod and vmi within 2x or 2 s).
RTO = {"pod": 3.0, "vmi": 6.0}
_ids = itertools.count()


def _rows(kind: str, state: str, *, injected: bool = False) -> list[RunResult]:
    if state == "missing":
        return []
    common = {
        "experiment": f"storage-hang-{kind}",
        "fault": "storage-lost",
        "variant": "hang",
        "kind": kind,
        "backend": "lab",
        "profile": "kubernetes-defaults",
        "started_at": "2026-12-01T00:00:00+00:00",
    }
    out = []
    for _ in range(2):
        run_id = f"{kind}-{state}-{next(_ids)}"
        if state == "measured":
            out.append(
                RunResult(**common, run_id=run_id, status=RunStatus.RECOVERED, rto_s=RTO[kind])
            )
        elif state == "aborted":
            timeline = (
                [TimelineEvent(t=1.0, kind=EventKind.FAULT_INJECTED, source="runner")]
                if injected
                else []
            )
            out.append(
                RunResult(
                    **common,
                    run_id=run_id,
                    status=RunStatus.ABORTED,
                    error=f"timed out waiting for {kind} to be Ready",
                    timeline=timeline,
                )
            )
        else:
            out.append(
                RunResult(**common, run_id=run_id, status=RunStatus.NOT_RECOVERED, rto_s=120.0)
            )
    return out


def _cells(pod: str, vmi: str) -> dict[str, CellSummary]:
    cells = summarise([*_rows("pod", pod), *_rows("vmi", vmi)], load_expectations())
    return {c.kind: c for c in cells}


_WHY = {
    "aborted": "aborted before the fault",
    "no-recovery": "did not recover within the deadline",
    "missing": "no runs recorded",
}


@pytest.mark.parametrize(("pod", "vmi"), list(itertools.product(STATES, STATES)))
def test_every_combination_of_sides(pod: str, vmi: str) -> None:
    cells = _cells(pod, vmi)
    assert set(cells) == {k for k, s in (("pod", pod), ("vmi", vmi)) if s != "missing"}
    for kind, own, other in (("pod", pod, vmi), ("vmi", vmi, pod)):
        if own == "missing":
            continue
        cell = cells[kind]
        other_kind = "vmi" if kind == "pod" else "pod"
        assert cell.verdict is not Verdict.CONTRADICTED  # 3 s vs 6 s is within 2x
        if own == "aborted":
            assert (cell.verdict, cell.side) == (Verdict.NOT_MEASURED, Side.ABORTED)
            assert "aborted before the fault" in cell.detail
            assert f"waiting for {kind}" in cell.detail  # the run's own reason
        elif own == "no-recovery":
            assert (cell.verdict, cell.side) == (Verdict.NO_RECOVERY, Side.NO_RECOVERY)
        elif other == "measured":
            assert cell.verdict is Verdict.HOLDS, cell.detail
        else:
            assert cell.verdict is Verdict.NOT_MEASURED, cell.detail
            assert f"{other_kind} side" in cell.detail and _WHY[other] in cell.detail


def test_measured_sides_that_differ_are_still_contradicted() -> None:
    rows = [*_rows("pod", "measured"), *_rows("vmi", "measured")]
    slow = [r.model_copy(update={"rto_s": 60.0}) for r in rows if r.kind == "vmi"]
    cells = summarise([r for r in rows if r.kind == "pod"] + slow, load_expectations())
    assert {c.verdict for c in cells} == {Verdict.CONTRADICTED}


def test_aborted_after_the_fault_says_so_and_partial_aborts_are_not_counted() -> None:
    after = _rows("vmi", "aborted", injected=True)
    [cell] = summarise(after, load_expectations())
    assert "aborted after the fault was injected" in cell.detail
    assert cell.aborted_before_fault == 0
    mixed = [*_rows("pod", "measured"), *_rows("pod", "aborted"), *_rows("vmi", "measured")]
    pod = next(c for c in summarise(mixed, load_expectations()) if c.kind == "pod")
    assert pod.verdict is Verdict.HOLDS and pod.aborted == 2
    assert "2 run(s) aborted before the fault" in pod.detail and "not counted" in pod.detail


def test_fail_on_aborted_names_each_run_and_is_a_default() -> None:
    assert set(FAIL_ON_DEFAULT) == {"contradicted", "no-recovery", "aborted"}
    cells = summarise([*_rows("pod", "measured"), *_rows("vmi", "aborted")], load_expectations())
    assert failing_cells(cells, {"contradicted", "no-recovery"}) == []
    [failing] = failing_cells(cells, set(FAIL_ON_DEFAULT))
    assert failing.cell.kind == "vmi"
    assert "2 of 2 run(s) aborted" in failing.reason and "vmi-aborted-" in failing.reason
    assert failing_cells(cells, {"none"}) == []
    with pytest.raises(SpecError, match="aborted"):
        failing_cells(cells, {"abortedd"})


def test_junit_counts_each_aborted_run_as_an_error_with_its_reason() -> None:
    exp = load_expectations()
    rows = [*_rows("pod", "measured"), *_rows("vmi", "aborted"), *_rows("pod", "no-recovery")]
    summary = ReportSummary(
        results_path="runs",
        expectations_path="e.yaml",
        generated_at="2026-12-01T00:00:00+00:00",
        runs=len(rows),
        cells=summarise(rows, exp),
        metrics=(),
        expectations=exp,
    )
    root = ET.fromstring(render_junit(summary))
    suite = root.find("testsuite")
    assert suite is not None
    errors = suite.findall("testcase/error")
    assert suite.get("errors") == root.get("errors") == "2" == str(len(errors))
    assert {e.get("type") for e in errors} == {"aborted"}
    assert all("timed out waiting for vmi to be Ready" in (e.get("message") or "") for e in errors)
    assert suite.get("failures") == "1"  # the pod cell with no recovery
