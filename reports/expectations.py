"""The handbook's documented table as typed, frozen, validated data.

Filled from ``reports/expectations.yaml`` (shipped with the package; a team may
pass its own file); read by ``reports.analysis`` to give every measured cell a
verdict and by ``reports.render`` to print the documented table next to the
measured one. A bad file raises :class:`core.errors.SpecError` with one
paragraph naming the file, the field and what is wrong.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from chaos.faults import FAULT_TYPES
from chaos.faults import KINDS as FAULT_KINDS
from core.errors import SpecError

__all__ = [
    "DEFAULT_EXPECTATIONS",
    "FAULTS",
    "KINDS",
    "Claim",
    "Expectations",
    "InformationalClaim",
    "MetricExpectation",
    "RangeClaim",
    "RatioRange",
    "RtoExpectation",
    "SameBehaviourClaim",
    "load_expectations",
]

DEFAULT_EXPECTATIONS = Path(__file__).with_name("expectations.yaml")

# The harness's fault vocabulary (chaos.results.RunResult.fault) and kinds, as
# the fault modules declare them (chaos.faults): a new fault needs its rows here.
FAULTS: tuple[str, ...] = tuple(FAULT_TYPES)
KINDS: tuple[str, ...] = FAULT_KINDS

Kind = Literal["pod", "vmi"]


class _Frozen(BaseModel):
    # extra="forbid": a misspelt key in a hand-edited YAML file must be an error,
    # not a silently ignored claim.
    model_config = ConfigDict(frozen=True, extra="forbid")


def _fmt(seconds: float) -> str:
    return f"{seconds:g} s"


class RangeClaim(_Frozen):
    """Documented RTO in seconds: ``min_s <= median <= max_s``."""

    type: Literal["range"]
    min_s: float = Field(ge=0)
    max_s: float | None = Field(default=None, description="null or .inf: no upper bound")

    @model_validator(mode="after")
    def _ordered(self) -> RangeClaim:
        if self.max_s is not None and self.max_s < self.min_s:
            raise ValueError(f"max_s ({self.max_s}) is below min_s ({self.min_s})")
        return self

    @property
    def upper(self) -> float:
        return math.inf if self.max_s is None else self.max_s

    def describe(self) -> str:
        if math.isinf(self.upper):
            return f">= {_fmt(self.min_s)}"
        if self.min_s == 0:
            return f"<= {_fmt(self.upper)}"
        return f"{self.min_s:g}-{self.upper:g} s"


class SameBehaviourClaim(_Frozen):
    """Pod and VMI medians agree: ratio <= ``factor`` or difference <= ``tolerance_s``."""

    type: Literal["same-behaviour"]
    factor: float = Field(gt=1.0)
    tolerance_s: float = Field(ge=0)

    def describe(self) -> str:
        return f"pod and vmi medians within {self.factor:g}x or {_fmt(self.tolerance_s)}"


class InformationalClaim(_Frozen):
    """No machine-checkable claim: the report shows the numbers, no verdict."""

    type: Literal["informational"]

    def describe(self) -> str:
        return "no verdict (informational)"


Claim = Annotated[RangeClaim | SameBehaviourClaim | InformationalClaim, Field(discriminator="type")]


class RtoExpectation(_Frozen):
    """One documented (fault, kind) row of the handbook."""

    fault: str
    kind: Kind
    handbook_row: str = Field(min_length=1)
    mechanism: str = Field(min_length=1)
    claim_text: str = Field(min_length=1)
    claim: Claim
    note: str = ""
    # Variants (chaos.spec.fault_variant) the claim's mechanism does not cover:
    # their cells are shown, informational, not judged against it.
    not_for_variants: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _known_fault(self) -> RtoExpectation:
        declared = FAULT_TYPES.get(self.fault)
        if declared is None:
            raise ValueError(
                f"fault {self.fault!r} is not a fault of the harness; known: {', '.join(FAULTS)}"
            )
        unknown = [v for v in self.not_for_variants if v not in declared.variants]
        if unknown:
            raise ValueError(
                f"not_for_variants: {', '.join(map(repr, unknown))} is not a variant of "
                f"{self.fault}; its variants: {', '.join(map(repr, declared.variants)) or 'none'}"
            )
        return self


class RatioRange(_Frozen):
    min: float = Field(gt=0)
    max: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> RatioRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


class MetricExpectation(_Frozen):
    """A handbook metric claim (throughput, latency); judged once metric rows exist."""

    id: str = Field(min_length=1)
    area: Literal["cpu", "memory", "disk", "network"]
    claim_text: str = Field(min_length=1)
    metric: str = Field(min_length=1)
    expected: RatioRange | None = None
    note: str = ""


class Expectations(_Frozen):
    version: Literal[1]
    source: str = ""
    rto: tuple[RtoExpectation, ...]
    metrics: tuple[MetricExpectation, ...] = ()

    @model_validator(mode="after")
    def _complete(self) -> Expectations:
        seen: set[tuple[str, str]] = set()
        for e in self.rto:
            key = (e.fault, e.kind)
            if key in seen:
                raise ValueError(f"rto: two entries for fault={e.fault} kind={e.kind}; keep one")
            seen.add(key)
        missing = [f"{f}/{k}" for f in FAULTS for k in KINDS if (f, k) not in seen]
        if missing:
            raise ValueError(
                f"rto: no entry for {', '.join(missing)}; every fault needs pod and vmi"
            )
        # A relational claim compares the pod cell with the vmi cell, so both
        # rows of the fault must say the same thing or the verdict is ambiguous.
        for f in FAULTS:
            pod, vmi = self.get(f, "pod"), self.get(f, "vmi")
            if pod is None or vmi is None:
                continue
            if (pod.claim.type == "same-behaviour") != (vmi.claim.type == "same-behaviour"):
                raise ValueError(
                    f"rto: fault {f}: a same-behaviour claim must be on both the pod and "
                    "the vmi entry"
                )
            if pod.claim.type == "same-behaviour" and pod.claim != vmi.claim:
                raise ValueError(
                    f"rto: fault {f}: pod and vmi same-behaviour claims differ; use the same "
                    "factor and tolerance_s"
                )
        ids = [m.id for m in self.metrics]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"metrics: ids must be unique; repeated: {', '.join(dup)}")
        return self

    def get(self, fault: str, kind: str) -> RtoExpectation | None:
        return next((e for e in self.rto if e.fault == fault and e.kind == kind), None)


def _field_path(loc: tuple[int | str, ...], raw: Any) -> str:
    """Turn a pydantic location into ``rto[3] (process-crash/vmi).claim.max_s``."""
    out = ""
    node: Any = raw
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and "fault" in node and "kind" in node:
                out += f" ({node.get('fault')}/{node.get('kind')})"
        else:
            # Discriminated unions add the tag ("range") to the location: not a key.
            if isinstance(node, dict) and part not in node and node.get("type") == part:
                continue
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(whole file)"


def load_expectations(path: Path | None = None) -> Expectations:
    """Load and validate an expectations file (the shipped one by default)."""
    path = path or DEFAULT_EXPECTATIONS
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"expectations file {path} cannot be read: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(
            f"expectations file {path} is not valid YAML{where}: "
            f"{getattr(exc, 'problem', None) or exc}"
        ) from exc
    if not isinstance(raw, dict):
        raise SpecError(
            f"expectations file {path}: the top level must be a mapping with keys "
            "version, rto, metrics"
        )
    try:
        return Expectations.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"field {_field_path(err['loc'], raw)}: {err['msg']}"
            + (f" (got {err['input']!r})" if err["type"] != "missing" and err["loc"] else "")
            for err in exc.errors()[:5]
        )
        more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        raise SpecError(
            f"expectations file {path} is invalid: {problems}{more}. Fix the field(s) and "
            f"compare with the shipped {DEFAULT_EXPECTATIONS.name}."
        ) from None
