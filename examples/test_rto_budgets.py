"""RTO budgets as pytest tests: copy this file into your repo's tests.

It needs nothing else in your repo: the harness's pytest plugin (installed with
it) finds ``experiments/...`` next to this file, then in your rootdir, then
among the experiment files the harness ships.

    pip install /path/to/rto-harness       # a checkout of the harness (root's venv)
    pytest --rto-lab                       # as root: the lab up for the session, down at the end
    pytest --rto-lab --rto-lab-vms --junitxml=rto.xml   # the VMI test too, figures in JUnit

``@pytest.mark.rto(FILE, budget_s=N)`` runs the experiment before the test body
and fails the test when the measured RTO is over N seconds, the workload did
not recover, or the run aborted; the ``rto`` fixture runs experiments from the
body and returns their results (``rto_s``, ``detection_s``, ``verdict``,
``timeline``). Every run appends its row to ``./runs/results.jsonl`` (``rto
report`` reads it), writes its timeline to ``./runs/timelines/`` and puts its
figures in the JUnit XML as properties of its test case. Without
``--rto-lab-vms`` VMI experiments are skipped. On your own cluster instead of
the lab: ``pytest --rto-backend kube --rto-context CONTEXT`` (the context
allowlisted in rto-kube.yaml). ``pytest --help`` lists every ``--rto-`` option.

The budgets below leave room for the lab's ``fast`` profile on a 2-core
machine; set your own.
"""

import pytest

from chaos.pytest_plugin import Rto


# The container's main process is killed: the node restarts it.
@pytest.mark.rto("experiments/pods/process-crash.yaml", budget_s=10)
def test_pod_restarts_after_a_crash(rto: Rto) -> None:
    # The body runs after the experiment and may look at its result.
    assert rto.last is not None and rto.last.recovered


# The node is drained: the pod is evicted and starts again on another node.
@pytest.mark.rto("experiments/pods/node-drain.yaml", budget_s=10)
def test_pod_comes_back_after_a_drain(rto: Rto) -> None:
    pass


# The same crash with only the watchdog healer, run from the test body.
def test_pod_crash_with_the_watchdog_alone(rto: Rto) -> None:
    result = rto.run("experiments/pods/process-crash.yaml", healers=["watchdog"])
    assert result.recovered, result.failure()
    assert result.rto_s is not None and result.rto_s < 10, result.timeline_png


# A VMI on a drained node live-migrates (the handbook: no outage). Needs --rto-lab-vms.
@pytest.mark.rto("experiments/vmis/node-drain.yaml", budget_s=10)
def test_vmi_live_migrates_off_a_drained_node(rto: Rto) -> None:
    pass
