"""Experiment and campaign files: load, validate, and turn into typed, frozen specs.

Filled from disk by ``load_experiment`` / ``load_campaign`` (called by the CLI, the
campaign runner and the Chaos Toolkit control); read by the runner, the faults and
the campaign. An experiment file is a Chaos Toolkit experiment (JSON or YAML) that
also carries an ``extensions`` entry named ``rto`` holding the harness spec: what to
target, which fault, which healers, when recovery counts. Bad input raises
``SpecError`` with one paragraph naming the file, the field path and what is
allowed, before anything touches a cluster.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chaos.faults import FAULT_TYPES, FaultSpecModel
from cluster.profiles import PROFILES
from core.documents import read_document
from core.errors import SpecError
from healers.registry import known_healers

__all__ = [
    "KNOWN_HEALERS",
    "CampaignEntry",
    "CampaignSpec",
    "ExperimentRef",
    "ExperimentSpec",
    "FaultSpec",
    "RecoverySpec",
    "RtoSpec",
    "TargetSpec",
    "fault_variant",
    "load_campaign",
    "load_experiment",
]

# The healers the harness ships (healers.registry declares and builds them);
# checked here so a typo fails at load time instead of half-way through a campaign.
KNOWN_HEALERS: frozenset[str] = frozenset(known_healers())

# Provider modules whose functions we check exist: a typo in an experiment's
# ``func`` would otherwise only show up when Chaos Toolkit reaches that activity.
_OUR_MODULES = ("chaos.ctk", "chaos.ctk_control")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TargetSpec(_Frozen):
    workload: str = Field(min_length=1, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    kind: Literal["pod", "vmi"] = "pod"
    node: str | None = None  # placement when the harness has to create the workload
    # VMI only. KubeVirt's evictionStrategy: what a drain does to the VMI.
    eviction_strategy: Literal["LiveMigrate", "None"] = "LiveMigrate"
    # VMI only. The guest's i6300esb timeout (the driver's "heartbeat") in s;
    # null keeps the driver default of 30 s, which is what a guest gets unless
    # someone sets it. Reaches the guest's kernel command line at creation.
    watchdog_heartbeat_s: int | None = Field(default=2, ge=2, le=2045)

    @model_validator(mode="after")
    def _vmi_only_fields(self) -> TargetSpec:
        if self.kind != "vmi":
            # Compared with the default, not "was it set": a spec copied through
            # model_dump (overrides) carries every field.
            for name in ("eviction_strategy", "watchdog_heartbeat_s"):
                if getattr(self, name) != type(self).model_fields[name].default:
                    raise ValueError(
                        f"target.{name} applies to kind vmi only (this target is a {self.kind}); "
                        "remove it or set kind: vmi"
                    )
        return self


# The fault: one model per fault module (chaos.faults.FAULT_TYPES), told apart
# by ``type``. mypy sees the common base; pydantic validates the union.
if TYPE_CHECKING:
    FaultSpec = FaultSpecModel
else:
    FaultSpec = Annotated[
        Union[tuple(t.spec for t in FAULT_TYPES.values())],  # noqa: UP007 - built at runtime
        Field(discriminator="type"),
    ]


def fault_variant(fault: FaultSpecModel, target: TargetSpec | None = None) -> str:
    """The sub-kind a report groups by (partition scope, storage mode, crash mode,
    a VMI drained without live migration...): the fault module says."""
    return FAULT_TYPES[fault.type].variant(fault, target or TargetSpec(workload="any"))


class RecoverySpec(_Frozen):
    good_probes: int = Field(default=5, ge=1, le=1000)
    deadline_s: float = Field(default=120.0, gt=0, le=7200)
    probe_interval_ms: int = Field(default=20, ge=5, le=10_000)
    # Each probe's own deadline; probes overlap, so it may exceed the interval.
    # A VMI guest under TCG answers in ~10 ms (p95 at 50 req/s), a pod in ~1 ms.
    probe_timeout_ms: int = Field(default=250, ge=10, le=60_000)
    # Edge probes this far apart near an edge (chaos.prober, "Edge refinement"):
    # they place the outage's start and end to a few ms at the grid's load
    # (benchmarks/edge_truth.py). null: the plain grid.
    edge_probe_interval_ms: float | None = Field(default=2.0, gt=0, le=1000)

    @model_validator(mode="after")
    def _edge_below_interval(self) -> RecoverySpec:
        edge = self.edge_probe_interval_ms
        if edge is not None and edge >= self.probe_interval_ms:
            raise ValueError(
                f"recovery.edge_probe_interval_ms ({edge:g}) must be below "
                f"recovery.probe_interval_ms ({self.probe_interval_ms}); "
                "set it lower, or null to switch edge probes off"
            )
        return self


def _check_healers(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in KNOWN_HEALERS]
    if unknown:
        raise ValueError(
            f"unknown healer(s) {', '.join(unknown)}; allowed: {', '.join(sorted(KNOWN_HEALERS))}"
        )
    if len(set(names)) != len(names):
        raise ValueError("a healer is listed twice")
    return names


def _check_profile(name: str | None) -> str | None:
    if name is None:
        return None

    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; allowed: {', '.join(sorted(PROFILES))}")
    return name


class RtoSpec(_Frozen):
    """The ``extensions: [{name: rto, ...}]`` entry of an experiment file."""

    name: Literal["rto"]
    target: TargetSpec
    fault: FaultSpec
    healers: list[str] = Field(default_factory=list)
    recovery: RecoverySpec = RecoverySpec()
    profile: str | None = None

    _healers = field_validator("healers")(_check_healers)
    _profile = field_validator("profile")(_check_profile)

    @model_validator(mode="after")
    def _fault_fits_kind(self) -> RtoSpec:
        problem = FAULT_TYPES[self.fault.type].fits(self.fault, self.target.kind)
        if problem is not None:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _fault_fits_deadline(self) -> RtoSpec:
        duration = self.fault.held_for()
        if duration is not None and duration >= self.recovery.deadline_s:
            raise ValueError(
                f"fault.duration_s ({duration:g}) must be shorter than recovery.deadline_s "
                f"({self.recovery.deadline_s:g}): the deadline counts from the injection"
            )
        return self


class ExperimentSpec(_Frozen):
    """One validated experiment file: its title, where it came from, the rto spec."""

    path: Path
    title: str
    rto: RtoSpec

    @property
    def fault(self) -> FaultSpec:
        return self.rto.fault

    def with_overrides(
        self,
        profile: str | None = None,
        healers: list[str] | None = None,
        duration_s: float | None = None,
        deadline_s: float | None = None,
    ) -> ExperimentSpec:
        """A copy with a campaign's overrides, validated like the file's own fields."""
        data = self.rto.model_dump()
        if profile is not None:
            data["profile"] = profile
        if healers is not None:
            data["healers"] = healers
        if duration_s is not None:
            if FAULT_TYPES[self.rto.fault.type].held_until_recovery:
                raise SpecError(
                    f"{self.path}: override duration_s: fault {self.rto.fault.type} has no "
                    "duration (it is held until recovery)"
                )
            data["fault"]["duration_s"] = duration_s
        if deadline_s is not None:
            data["recovery"]["deadline_s"] = deadline_s
        try:
            rto = RtoSpec.model_validate(data)
        except ValidationError as exc:
            raise SpecError(_explain(self.path, exc, prefix="override")) from None
        return self.model_copy(update={"rto": rto})


class ExperimentRef(_Frozen):
    """An experiment file named by a campaign or a runbook, with the overrides
    either may give it (applied by ``ExperimentSpec.with_overrides``)."""

    path: str = Field(min_length=1)
    profile: str | None = None
    healers: list[str] | None = None
    duration_s: float | None = Field(default=None, gt=0, le=3600)
    deadline_s: float | None = Field(default=None, gt=0, le=7200)

    _profile = field_validator("profile")(_check_profile)

    @field_validator("healers")
    @classmethod
    def _healers(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _check_healers(v)


class CampaignEntry(ExperimentRef):
    repetitions: int | None = Field(default=None, ge=1, le=1000)


class CampaignSpec(_Frozen):
    """A campaign file: which experiments, how often, on which backend/profile."""

    name: str = Field(min_length=1)
    backend: Literal["lab", "kube"] = "lab"
    profile: str | None = None
    repetitions: int = Field(default=1, ge=1, le=1000)
    healers: list[str] | None = None
    nodes: int = Field(default=3, ge=2, le=8)
    # The lab also runs VMIs (a libvirtd per node, the guest image): needed by
    # every experiment whose target is a vmi; `--with-lab` brings it up so.
    vms: bool = False
    # Delete each entry's workload after its runs (unless the next entry uses it):
    # one workload alive at a time, so idle VMIs do not skew the measured one.
    delete_workloads: bool = False
    # Also measure the handbook's metric claims (pod vs VMI latency, throughput,
    # disk) in this campaign's run, after its experiments: benchmarks/net_compare.py
    # on its own private one-node lab (needs vms), stored next to the results as
    # metric_claims.json (chaos.campaign.measure_metric_claims). Lab only.
    metric_claims: bool = False
    experiments: list[CampaignEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _metric_claims_on_the_lab(self) -> CampaignSpec:
        if self.metric_claims and (self.backend != "lab" or not self.vms):
            raise ValueError(
                "metric_claims: true measures pods against VMIs on the lab: it needs "
                "backend: lab and vms: true"
            )
        return self

    _profile = field_validator("profile")(_check_profile)

    @field_validator("healers")
    @classmethod
    def _healers(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _check_healers(v)


# --- loading -------------------------------------------------------------------


def _loc(parts: Sequence[int | str], prefix: str) -> str:
    out = prefix
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else p
    return out or "(top level)"


def _explain(path: Path, exc: ValidationError, prefix: str) -> str:
    """One paragraph: file, then every bad field with what is allowed."""
    problems = []
    for err in exc.errors(include_url=False):
        # Discriminated unions put the tag in the location; drop it so the path
        # reads like the file ("fault.duration_s", not "fault.node-power-off...").
        loc = [p for p in err["loc"] if p not in FAULT_TYPES]
        msg = err["msg"]
        if err["type"] == "union_tag_invalid":
            bad = err.get("ctx", {}).get("tag", "")
            msg = f"unknown fault type {bad!r}; allowed: {', '.join(FAULT_TYPES)}"
        elif err["type"] == "union_tag_not_found":
            msg = f"missing 'type'; allowed: {', '.join(FAULT_TYPES)}"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field (not allowed here; check the spelling)"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif err["type"] == "literal_error":
            msg = f"got {err.get('input')!r}; {msg.lower()}"
        problems.append(f"{_loc(loc, prefix)}: {msg}")
    return f"{path}: invalid: " + "; ".join(problems) + "."


def _check_activities(path: Path, section: str, activities: object) -> None:
    if not isinstance(activities, list):
        raise SpecError(f"{path}: {section} must be a list of activities.")
    for i, act in enumerate(activities):
        if not isinstance(act, Mapping):
            raise SpecError(f"{path}: {section}[{i}] must be a mapping (an activity).")
        provider = act.get("provider")
        if not isinstance(provider, Mapping):
            if "ref" in act:
                continue
            raise SpecError(f"{path}: {section}[{i}].provider is missing.")
        module = provider.get("module")
        if provider.get("type") != "python" or module not in _OUR_MODULES:
            continue
        func = provider.get("func")
        mod = importlib.import_module(str(module))
        if func not in getattr(mod, "__all__", ()):
            raise SpecError(
                f"{path}: {section}[{i}].provider.func: {module} has no function {func!r}; "
                f"allowed: {', '.join(sorted(getattr(mod, '__all__', ())))}."
            )


def _experiment_from_document(path: Path, doc: object) -> ExperimentSpec:
    if not isinstance(doc, Mapping):
        raise SpecError(f"{path}: an experiment must be a mapping with title, method, extensions.")
    title = doc.get("title")
    if not isinstance(title, str) or not title.strip():
        raise SpecError(f"{path}: title: required, a non-empty string.")
    if not isinstance(doc.get("description"), str):
        raise SpecError(f"{path}: description: required by Chaos Toolkit, a string.")
    if "method" not in doc:
        raise SpecError(f"{path}: method: required (a list of Chaos Toolkit activities).")
    _check_activities(path, "method", doc["method"])
    _check_activities(path, "rollbacks", doc.get("rollbacks", []))
    ssh = doc.get("steady-state-hypothesis")
    if ssh is not None:
        if not isinstance(ssh, Mapping):
            raise SpecError(f"{path}: steady-state-hypothesis must be a mapping.")
        _check_activities(path, "steady-state-hypothesis.probes", ssh.get("probes", []))
    extensions = doc.get("extensions", [])
    if not isinstance(extensions, list):
        raise SpecError(f"{path}: extensions must be a list of mappings with a name.")
    found = [
        (i, e)
        for i, e in enumerate(extensions)
        if isinstance(e, Mapping) and e.get("name") == "rto"
    ]
    if len(found) != 1:
        raise SpecError(
            f"{path}: extensions: exactly one entry with name: rto is required "
            f"(found {len(found)}); it holds target, fault, healers, recovery, profile."
        )
    idx, ext = found[0]
    try:
        rto = RtoSpec.model_validate(dict(ext))
    except ValidationError as exc:
        raise SpecError(_explain(path, exc, prefix=f"extensions[{idx}]")) from None
    return ExperimentSpec(path=path, title=title.strip(), rto=rto)


def load_experiment(path: Path | str) -> ExperimentSpec:
    """Read and validate one experiment file; raise ``SpecError`` on bad input."""
    p = Path(path)
    return _experiment_from_document(p, read_document(p))


def load_experiment_document(path: Path, doc: Mapping[str, Any]) -> ExperimentSpec:
    """Validate an already-parsed Chaos Toolkit experiment (the CTK control's view)."""
    return _experiment_from_document(path, doc)


def load_campaign(path: Path | str) -> tuple[CampaignSpec, list[ExperimentSpec]]:
    """Read a campaign and every experiment it lists (paths relative to the campaign).

    Everything is validated up front, so a typo in the last experiment fails the
    campaign before the first fault is injected.
    """
    p = Path(path)
    doc = read_document(p)
    if not isinstance(doc, Mapping):
        raise SpecError(f"{p}: a campaign must be a mapping with name and experiments.")
    try:
        campaign = CampaignSpec.model_validate(dict(doc))
    except ValidationError as exc:
        raise SpecError(_explain(p, exc, prefix="")) from None
    experiments = []
    for i, entry in enumerate(campaign.experiments):
        exp_path = (p.parent / entry.path).resolve()
        if not exp_path.is_file():
            raise SpecError(
                f"{p}: experiments[{i}].path: {entry.path} does not exist ({exp_path})."
            )
        # Apply the overrides now so a bad one fails before the first run.
        exp = load_experiment(exp_path)
        if exp.rto.target.kind == "vmi" and campaign.backend == "lab" and not campaign.vms:
            raise SpecError(
                f"{p}: experiments[{i}]: {entry.path} targets a vmi but the campaign's lab "
                "runs without VMs; add `vms: true` to the campaign."
            )
        experiments.append(
            exp.with_overrides(
                profile=entry.profile or campaign.profile,
                healers=entry.healers if entry.healers is not None else campaign.healers,
                duration_s=entry.duration_s,
                deadline_s=entry.deadline_s,
            )
        )
    return campaign, experiments
