"""Game-day runbooks: load, validate, and turn into typed, frozen specs.

Filled from disk by ``load_runbook`` (called by ``rto gameday``, before
anything touches a cluster); read by ``chaos.gameday.session``, which runs the
steps in order, and by ``plan_lines`` (``rto gameday --dry-run``). A runbook
is a YAML (or JSON) file: a name, the backend and lab it runs on (``backend``,
``profile``, ``nodes``, ``vms``, as a campaign's), then ordered ``steps``, each
a mapping with exactly one key:

- ``say: TEXT``: read out to the room;
- ``run: {path, profile, healers, duration_s, deadline_s}``: one experiment
  file (relative to the runbook) with a campaign entry's overrides;
- ``checkpoint: TEXT``: a person confirms before the next step;
- ``observe: {workload, seconds}``: the live view on a workload, no fault;
- ``note: PROMPT``: text typed in the room, stamped into the timeline.

Every experiment of every ``run`` step is loaded and its overrides applied at
load, so a typo in the last step fails the game day before the first one.
Bad input raises ``SpecError`` with one paragraph naming the file and the
field (``steps[3].run.healers``), like experiments and campaigns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chaos.spec import (
    ExperimentRef,
    ExperimentSpec,
    _check_profile,
    _explain,
    fault_variant,
    load_experiment,
)
from core.documents import read_document
from core.errors import SpecError

__all__ = [
    "STEP_KINDS",
    "ObserveStep",
    "RunStep",
    "Runbook",
    "RunbookSpec",
    "Step",
    "load_runbook",
    "plan_lines",
]

STEP_KINDS = ("say", "run", "checkpoint", "observe", "note")

# Text for the room is read on a terminal: a paragraph, not a file.
_TEXT_MAX = 2000


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RunStep(ExperimentRef):
    """``run:``: an experiment file and the overrides a campaign entry may carry."""


class ObserveStep(_Frozen):
    """``observe:``: watch a workload live for ``seconds``, no fault injected."""

    workload: str = Field(min_length=1, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    seconds: float = Field(gt=0, le=3600)


class Step(_Frozen):
    """One step: exactly one of the five keys."""

    say: str | None = Field(default=None, min_length=1, max_length=_TEXT_MAX)
    run: RunStep | None = None
    checkpoint: str | None = Field(default=None, min_length=1, max_length=_TEXT_MAX)
    observe: ObserveStep | None = None
    note: str | None = Field(default=None, min_length=1, max_length=_TEXT_MAX)

    @model_validator(mode="after")
    def _exactly_one(self) -> Step:
        given = [k for k in STEP_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a step has exactly one of {', '.join(STEP_KINDS)} "
                f"(found {', '.join(given) or 'none'})"
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in STEP_KINDS if getattr(self, k) is not None)

    @property
    def title(self) -> str:
        """One line: the text said, the experiment file, the prompt."""
        if self.run is not None:
            return self.run.path
        if self.observe is not None:
            return f"{self.observe.workload} for {self.observe.seconds:g} s"
        text = str(getattr(self, self.kind))
        return " ".join(text.split())


class RunbookSpec(_Frozen):
    """The runbook file: name, where it runs, its steps."""

    # Part of the report's directory name: no slashes, no spaces.
    name: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")
    description: str = ""
    backend: Literal["lab", "kube"] = "lab"
    profile: str | None = None
    nodes: int = Field(default=3, ge=2, le=8)
    # The lab also runs VMIs (needed by any run step whose target is a vmi),
    # as a campaign's `vms`; `--with-lab` brings the lab up so.
    vms: bool = False
    steps: list[Step] = Field(min_length=1, max_length=200)

    _profile = field_validator("profile")(_check_profile)


@dataclass(frozen=True)
class Runbook:
    """A loaded runbook: the spec, its file, and each run step's experiment
    (overrides applied), keyed by step index."""

    spec: RunbookSpec
    path: Path
    experiments: Mapping[int, ExperimentSpec]

    @property
    def name(self) -> str:
        return self.spec.name


def _check_step_shapes(path: Path, steps: object) -> None:
    """A clearer paragraph than pydantic's for steps that are not mappings at all."""
    if not isinstance(steps, list):
        return  # pydantic says "steps: Input should be a valid list"
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping):
            raise SpecError(
                f"{path}: invalid: steps[{i}]: a step is a mapping with exactly one of "
                f"{', '.join(STEP_KINDS)} (got {type(step).__name__} {step!r:.60})."
            )


def load_runbook(path: Path | str) -> Runbook:
    """Read and validate a runbook and every experiment it runs; ``SpecError`` on bad input.

    Nothing is built or touched: a bad runbook fails before any backend exists.
    """
    p = Path(path)
    doc = read_document(p, what="a game-day runbook")
    if not isinstance(doc, Mapping):
        raise SpecError(
            f"{p}: a game-day runbook must be a mapping with name and steps "
            f"(got {type(doc).__name__})."
        )
    _check_step_shapes(p, doc.get("steps"))
    try:
        spec = RunbookSpec.model_validate(dict(doc))
    except ValidationError as exc:
        raise SpecError(_explain(p, exc, prefix="")) from None
    experiments: dict[int, ExperimentSpec] = {}
    for i, step in enumerate(spec.steps):
        if step.run is None:
            continue
        entry = step.run
        exp_path = (p.parent / entry.path).resolve()
        if not exp_path.is_file():
            raise SpecError(f"{p}: steps[{i}].run.path: {entry.path} does not exist ({exp_path}).")
        exp = load_experiment(exp_path)
        if exp.rto.target.kind == "vmi" and spec.backend == "lab" and not spec.vms:
            raise SpecError(
                f"{p}: steps[{i}].run: {entry.path} targets a vmi but the runbook's lab "
                "runs without VMs; add `vms: true` to the runbook."
            )
        try:
            experiments[i] = exp.with_overrides(
                profile=entry.profile or spec.profile,
                healers=entry.healers,
                duration_s=entry.duration_s,
                deadline_s=entry.deadline_s,
            )
        except SpecError as exc:
            # The experiment's own message names the experiment file; say which step.
            raise SpecError(f"{p}: steps[{i}].run: {exc}") from None
    return Runbook(spec=spec, path=p, experiments=experiments)


def plan_lines(runbook: Runbook) -> list[str]:
    """The whole plan, one or two lines per step (``rto gameday --dry-run``)."""
    spec = runbook.spec
    lines = [
        f"game day {spec.name} ({runbook.path}): {len(spec.steps)} steps on backend "
        f"{spec.backend}, profile {spec.profile or 'as is'}, {spec.nodes} nodes"
        + (", with VMs" if spec.vms else "")
    ]
    if spec.description.strip():
        lines.append("  " + " ".join(spec.description.split()))
    n = len(spec.steps)
    for i, step in enumerate(spec.steps):
        head = f"step {i + 1}/{n} {step.kind}"
        exp = runbook.experiments.get(i)
        if exp is not None:
            rto = exp.rto
            held = rto.fault.held_for()
            sub = fault_variant(rto.fault, rto.target)
            variant = f" ({sub})" if sub else ""
            target = f"{rto.target.kind} {rto.target.workload}" + (
                f" (placed on {rto.target.node})" if rto.target.node else ""
            )
            lines.append(f"{head}: {exp.path.name}: {exp.title}")
            lines.append(
                f"    fault {rto.fault.type}{variant} on {target}, healers "
                f"{','.join(rto.healers) or 'none'}, held "
                + ("until recovery" if held is None else f"{held:g} s")
                + f", deadline {rto.recovery.deadline_s:g} s, profile {rto.profile or 'as is'}"
            )
        elif step.observe is not None:
            lines.append(
                f"{head}: watch {step.observe.workload} for {step.observe.seconds:g} s, no fault"
            )
        elif step.kind == "checkpoint":
            lines.append(f"{head}: wait for a person to confirm: {step.title}")
        elif step.kind == "note":
            lines.append(f"{head}: ask the room: {step.title}")
        else:
            lines.append(f"{head}: {step.title}")
    return lines
