"""What a game day leaves behind: one record, written as ``gameday.json``.

Filled by ``chaos.gameday.session`` while the game day runs (rewritten after
every step, so a game day that dies still leaves what it did); read by
``reports.gameday``, which renders it as HTML and Markdown. The record holds
one timeline for the whole game day: every step, every note typed in the
room, and the events of every experiment run (probe transitions, control-plane
events, faults injected and reverted, healer actions), shifted onto the game
day's own clock. Each ``run`` step also keeps its result row, so the report
can put the step's RTO next to the handbook's claim for its cell.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from chaos.results import RunResult

__all__ = [
    "GAMEDAY_FILE",
    "GameDayEvent",
    "GameDayEventKind",
    "GameDayOutcome",
    "GameDayRecord",
    "RevertRecord",
    "StepRecord",
    "StepStatus",
]

GAMEDAY_FILE = "gameday.json"


class GameDayEventKind(StrEnum):
    """The game day's own events, beside the run events (``core.timeline.EventKind``)."""

    STEP_STARTED = "step_started"
    STEP_ENDED = "step_ended"
    SAY = "say"  # text read out to the room
    CHECKPOINT = "checkpoint"  # a person confirmed (or --yes skipped it)
    NOTE = "note"  # text typed during the game day
    ABORT = "abort"  # Ctrl-C or the abort key


class GameDayEvent(BaseModel):
    """One line of the game day's timeline.

    ``kind`` is a ``GameDayEventKind`` value or a ``core.timeline.EventKind``
    value (a run's event, kept as it was recorded). ``t`` is seconds since the
    game day started (monotonic); ``at`` the wall clock, ISO 8601 UTC with
    milliseconds. ``step`` is the 0-based index of the step it belongs to
    (None before the first step or after the last).
    """

    model_config = ConfigDict(frozen=True)

    t: float
    at: str
    kind: str
    source: str = ""
    message: str = ""
    step: int | None = None
    data: dict[str, str] = Field(default_factory=dict)


class StepStatus(StrEnum):
    DONE = "done"
    SKIPPED = "skipped"  # never reached (an earlier step aborted the game day)
    ABORTED = "aborted"  # the abort came during this step
    FAILED = "failed"  # the step raised (a run that aborted on an error)


class StepRecord(BaseModel):
    """One step of the runbook as it happened."""

    model_config = ConfigDict(frozen=True)

    index: int
    kind: str  # say | run | checkpoint | observe | note
    title: str  # one line: the text said, the experiment file, the prompt
    status: StepStatus
    started_t: float | None = None  # game-day seconds; None when skipped
    ended_t: float | None = None
    result: RunResult | None = None  # run steps: the row the runner stored
    error: str | None = None


class RevertRecord(BaseModel):
    """A fault reverted, and when: by its run (the normal end) or by the abort."""

    model_config = ConfigDict(frozen=True)

    t: float
    at: str
    fault: str  # chaos.faults type name
    target: str
    fault_id: str
    by: str  # "run" (the runner's own revert) | "abort" (the journal replay)


class GameDayOutcome(StrEnum):
    COMPLETED = "completed"
    ABORTED = "aborted"
    FAILED = "failed"


class GameDayRecord(BaseModel):
    """The whole game day: the runbook, its steps, one timeline, what was reverted."""

    model_config = ConfigDict(frozen=True)

    name: str  # the runbook's name
    runbook: str  # its path
    started_at: str  # wall clock, ISO 8601 UTC
    ended_at: str | None = None
    backend: str
    profile: str | None = None
    rehearsal: bool = False  # --yes: checkpoints were skipped
    outcome: GameDayOutcome | None = None  # None while it runs
    steps: list[StepRecord] = Field(default_factory=list)
    events: list[GameDayEvent] = Field(default_factory=list)
    reverts: list[RevertRecord] = Field(default_factory=list)
    journal: str = ""  # the fault journal used (what `rto revert` reads)
    # Ids of the faults the journal still held pending when the game day ended,
    # read back after the last revert: [] is a clean journal, None "not checked".
    pending_after: list[str] | None = None
