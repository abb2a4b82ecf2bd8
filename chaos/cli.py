"""``rto``: the command line of the harness (entry point ``chaos.cli:main``).

Commands: ``run FILE``, ``campaign FILE``, ``report``, ``revert``, plus the
groups backend packages contribute through ``rto.commands`` entry points (the
lab's ``lab up|down|doctor|images|status``, ``cluster.lab.commands``). Every
input is validated before anything touches a cluster; a ``HarnessError`` is
printed in red and exits 2; a report with failing cells exits 1. ``lab down``
and ``revert`` first revert every fault still pending in the journal (a
contributed group gets that replay handed in), so nothing is ever left behind
after a crash of the harness.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from chaos.backends import BACKENDS, apply_profile, get_backend
from chaos.campaign import dry_run_campaign, plan_campaign, result_outcome, run_campaign
from chaos.faults import revert_pending
from chaos.gameday_cli import gameday_cmd
from chaos.journal import Journal
from chaos.progress import make_progress
from chaos.provenance import new_invocation
from chaos.results import ResultsStore, RunResult
from chaos.runner import RunOptions, run_experiment
from chaos.spec import load_experiment
from cluster.api import Backend, CommandFactory
from core.errors import HarnessError, SpecError

__all__ = ["cli", "main", "parse_budgets"]

console = Console(stderr=True)
out = Console()

# Injection points for tests (FakeBackend, fake recorder and clock); read at call
# time, so a test can monkeypatch them. Production never changes them.
BACKEND_FACTORY: Callable[[str], Backend] = get_backend
OPTIONS_FACTORY: Callable[[], RunOptions] = RunOptions


def _backend(name: str) -> Backend:
    return BACKEND_FACTORY(name)


class _HarnessGroup(click.Group):
    """Turns a HarnessError anywhere below into a red message and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HarnessError as exc:
            console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            ctx.exit(2)


@click.group(
    cls=_HarnessGroup, help="Fault injection and self-healing harness: measures pod/VMI RTO."
)
def cli() -> None:
    pass


# --- runs ----------------------------------------------------------------------------


def _print_result(r: RunResult) -> None:
    colour = {"recovered": "green", "no_outage": "green", "not_recovered": "yellow"}.get(
        r.status.value, "red"
    )
    rto = "-" if r.rto_s is None else f"{r.rto_s:.3f} s"
    out.print(
        f"[{colour}]{r.status.value}[/] {r.experiment} ({r.fault} {r.variant} {r.kind}, "
        f"{r.profile}, healers {','.join(r.healers) or 'none'}): RTO {rto}"
        + (f" - {r.error}" if r.error else ""),
        highlight=False,
    )


def _kube_flags(backend_name: str, context: str | None, dry_run: bool) -> None:
    """--context/--dry-run: kube only; handed to get_backend through the environment.

    The environment, not an argument, so that a journal replay (``rto revert``
    rebuilding backends by name) in this process sees the same cluster.
    """
    if not (context or dry_run):
        return
    import os

    if backend_name != "kube":
        raise SpecError(
            f"--context and --dry-run apply to the kube backend only (this is {backend_name!r})"
        )
    if context:
        os.environ["RTO_KUBE_CONTEXT"] = context
    if dry_run:
        os.environ["RTO_KUBE_DRY_RUN"] = "1"


# One results store per working directory, whichever command writes or reads it.
runs_dir_option = click.option(
    "--runs-dir",
    default=Path("runs"),
    show_default=True,
    type=click.Path(path_type=Path),
    help="the results store (results.jsonl); `chaos run` writes ./runs of its working directory",
)


@cli.command("run", help="Run one experiment file.")
@click.argument("file", type=click.Path(path_type=Path))
@runs_dir_option
@click.option("--repeat", default=1, show_default=True, type=click.IntRange(1, 1000))
@click.option("--backend", "backend_name", default="lab", type=click.Choice(BACKENDS))
@click.option("--context", default=None, help="kube: kubeconfig context (must be allowlisted)")
@click.option("--dry-run", is_flag=True, help="kube: print the plan, touch nothing")
def run_cmd(
    file: Path,
    runs_dir: Path,
    repeat: int,
    backend_name: str,
    context: str | None = None,
    dry_run: bool = False,
) -> None:
    spec = load_experiment(file)  # SpecError -> exit 2, nothing injected
    _kube_flags(backend_name, context, dry_run)
    backend = _backend(backend_name)
    # No profile named: the run records the one the backend says it runs.
    profile = spec.rto.profile
    apply_profile(backend, profile)
    store = ResultsStore(runs_dir)
    invocation = new_invocation(None)  # one id for this invocation's repetitions
    with make_progress(console, spec.title, repeat) as progress:
        opts = OPTIONS_FACTORY()
        opts.status = progress.status
        for rep in range(repeat):
            progress.start_run(f"{file} #{rep}")
            try:
                result = run_experiment(
                    spec,
                    backend,
                    store,
                    repetition=rep,
                    profile=profile,
                    options=opts,
                    invocation=invocation,
                )
            except HarnessError as exc:
                progress.end_run(f"aborted: {str(exc).splitlines()[0]}")
                raise
            progress.end_run(result_outcome(result))
            _print_result(result)


@cli.command("campaign", help="Run a campaign file (repetitions, overrides, profiles).")
@click.argument("file", type=click.Path(path_type=Path))
@runs_dir_option
@click.option("--with-lab", is_flag=True, help="bring the lab up before and down after")
@click.option("--report", "report_dir", default=None, type=click.Path(path_type=Path))
@click.option("--context", default=None, help="kube: kubeconfig context (must be allowlisted)")
@click.option("--dry-run", is_flag=True, help="kube: print every run's plan, touch nothing")
def campaign_cmd(
    file: Path,
    runs_dir: Path,
    with_lab: bool,
    report_dir: Path | None,
    context: str | None = None,
    dry_run: bool = False,
) -> None:

    plan = plan_campaign(file)  # every experiment validated before the first run
    _kube_flags(plan.spec.backend, context, dry_run)
    if dry_run:
        # Plain echo: rich would read "[dry-run]" in the plan lines as markup.
        n = dry_run_campaign(plan, backend_factory=_backend, echo=click.echo)
        click.echo(f"dry run: {n} runs planned; nothing was changed, journaled or stored")
        return
    store = ResultsStore(runs_dir)
    try:
        results = run_campaign(
            plan,
            store,
            backend_factory=_backend,
            options=OPTIONS_FACTORY(),
            lab_lifecycle=with_lab,
            console=console,
        )
        for r in results:
            _print_result(r)
    finally:
        if report_dir is not None:
            _build_report(runs_dir, report_dir)


def _build_report(runs_dir: Path, out_dir: Path) -> Any:
    # pandas and matplotlib load only for the commands that report
    from reports.build import build_report

    summary = build_report(runs_dir, out_dir)
    out.print(f"report written to {out_dir}")
    return summary


def parse_budgets(values: tuple[str, ...]) -> dict[str, float]:
    """``fault:kind=seconds`` (or ``fault/kind``, ``fault``, ``kind``, ``*``) -> dict."""
    budgets: dict[str, float] = {}
    for v in values:
        key, sep, seconds = v.partition("=")
        try:
            if not sep or not key:
                raise ValueError
            budgets[key.strip().replace(":", "/")] = float(seconds)
        except ValueError:
            raise SpecError(
                f"--budget {v!r}: expected fault:kind=seconds, e.g. process-crash:pod=15"
            ) from None
    return budgets


@cli.command("report", help="Build the RTO report from the results store.")
@runs_dir_option
@click.option("--out", "out_dir", default=Path("reports/latest"), type=click.Path(path_type=Path))
@click.option(
    "--fail-on",
    default="contradicted,no-recovery,aborted",  # reports.analysis.FAIL_ON_DEFAULT
    show_default=True,
    help="what exits 1: verdicts (contradicted, no-recovery, holds, ...), "
    "aborted (a cell with an aborted run), or none",
)
@click.option("--budget", multiple=True, help="RTO budget fault:kind=seconds (repeatable)")
@click.option(
    "--openmetrics",
    "metrics_file",
    default=None,
    type=click.Path(path_type=Path, dir_okay=False),
    help="also write the figures as metrics: FILE.prom in classic text for node-exporter's "
    "textfile collector, any other name in OpenMetrics text (replaced atomically)",
)
@click.option(
    "--pushgateway",
    default=None,
    metavar="URL",
    help="also push the figures to this Prometheus Pushgateway (job rto-harness, "
    "grouped by campaign), e.g. http://127.0.0.1:9091",
)
def report_cmd(
    runs_dir: Path,
    out_dir: Path,
    fail_on: str,
    budget: tuple[str, ...],
    metrics_file: Path | None = None,
    pushgateway: str | None = None,
) -> None:
    # pandas and matplotlib load only for the commands that report
    from reports.analysis import failing_cells, load_runs

    # with them, prometheus-client (the metrics of --openmetrics and --pushgateway)
    from reports.openmetrics import (
        check_pushgateway_url,
        push_metrics,
        report_metrics,
        write_metrics_file,
    )

    budgets = parse_budgets(budget)
    # A bad URL stops the command before anything is built, written or pushed.
    gateway = None if pushgateway is None else check_pushgateway_url(pushgateway)
    wanted = {s.strip() for s in fail_on.split(",") if s.strip()}
    summary = _build_report(runs_dir, out_dir)
    failing = failing_cells(summary, wanted, budgets)
    for f in failing:
        cell = f.cell
        console.print(f"[red]FAIL[/] {cell.fault}/{cell.kind}: {f.reason}")
    # Failing cells are published too: a dashboard is where a bad night shows.
    if metrics_file is not None or gateway is not None:
        metrics = report_metrics(summary, load_runs(runs_dir))
        if metrics_file is not None:
            write_metrics_file(metrics.registry, metrics_file)
            out.print(f"metrics written to {metrics_file}", markup=False, highlight=False)
        if gateway is not None:
            group = push_metrics(metrics, gateway)
            out.print(f"metrics pushed to {group}", markup=False, highlight=False)
    if failing:
        sys.exit(1)


@cli.command(
    "history",
    help="Each cell's RTO across the last campaigns; flag the cells the newest one regressed.",
)
@runs_dir_option
@click.option(
    "--last", default=10, show_default=True, type=click.IntRange(2, 1000), help="campaigns per cell"
)
@click.option(
    "--fail-on",
    default="none",
    show_default=True,
    type=click.Choice(["regression", "none"]),
    help="regression: exit 1 when a cell regressed or no longer recovers",
)
@click.option(
    "--campaign",
    "campaign_name",
    default=None,
    metavar="NAME",
    help="only the campaigns of this name (e.g. the nightly's), so an ad-hoc `rto run` or "
    "game day measuring the same cell is not taken for tonight",
)
@click.option("--out", "out_dir", default=None, type=click.Path(path_type=Path))
def history_cmd(
    runs_dir: Path, last: int, fail_on: str, out_dir: Path | None, campaign_name: str | None = None
) -> None:
    # pandas and matplotlib load only for the commands that report
    from reports.analysis import load_runs

    # matplotlib too: only for the commands that report
    from reports.history import history_table, regressed_cells, summarise_history, write_history

    rows = load_runs(runs_dir)
    if campaign_name is not None:
        rows = [r for r in rows if r.campaign == campaign_name]
    summary = summarise_history(rows, last=last)
    if not summary.cells:
        which = "" if campaign_name is None else f" of campaign {campaign_name!r}"
        out.print(
            f"no runs{which} recorded in {runs_dir}: no history yet",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
    else:
        out.print(history_table(summary))
        out.print(f"rule: {summary.rule_text}", soft_wrap=True, highlight=False, markup=False)
    if out_dir is not None:
        write_history(summary, out_dir)
        out.print(f"history written to {out_dir}", soft_wrap=True)
    regressed = regressed_cells(summary)
    if fail_on == "regression" and regressed:
        for c in regressed:
            console.print(
                f"[red]REGRESSED[/] {escape(c.name)}: {c.verdict.value}: {escape(c.detail)}",
                highlight=False,
                soft_wrap=True,
            )
        sys.exit(1)


@cli.command("revert", help="Revert every fault still pending in the journal.")
def revert_cmd() -> None:
    _revert_journal()


def _revert_journal() -> None:
    journal = Journal()
    pending = journal.pending()
    if not pending:
        out.print(f"nothing to revert ({journal.path})")
        return
    done = revert_pending(journal, _backend)
    for rec in done:
        out.print(f"[green]reverted[/] {rec.fault} on {rec.target} ({rec.id})")


def _add_contributed_commands() -> None:
    """Add the command groups of the ``rto.commands`` entry points (the lab's)."""
    for ep in entry_points(group="rto.commands"):
        make: CommandFactory = ep.load()
        command = make(_revert_journal)
        if not isinstance(command, click.Command):
            raise HarnessError(f"rto.commands entry point {ep.value} made no click command")
        cli.add_command(command, ep.name)


_add_contributed_commands()
cli.add_command(gameday_cmd)


def main() -> None:
    cli()
