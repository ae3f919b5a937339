"""What one call measured: plain data, JSON-able, mergeable across processes (the load test's workers).

Computed by :func:`agent.testkit.analysis.call.analyze_call` (with :mod:`agent.testkit.analysis.measures`),
printed by :mod:`agent.testkit.analysis.timeline`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

FailureCause = Literal[
    "answer_failed",
    "rejected",
    "stream_failed",
    "simulator_error",
    "protocol_error",
    "no_greeting",
    "stream_dropped",
    "no_response",
    "barge_in_missed",
    "scenario_failed",
    "timeout",
]
# Ends of the stream that mean the line went dead under the caller, not a deliberate hang-up or goodbye.
_DROPPED_ENDS = frozenset({"agent_closed", "network_drop", "stream_timeout", "error"})


@dataclass(frozen=True)
class AnalysisOptions:
    """Thresholds of the analysis; the defaults suit phone speech, tones and eSpeak lines alike."""

    speech_rms: float = 300.0  # int16 RMS of a 20 ms caller frame that counts as speech (about -40 dBFS)
    utterance_merge_ms: float = 300.0  # pauses shorter than this stay inside one caller utterance
    min_utterance_ms: float = 100.0  # shorter bursts are clicks, not turns
    max_gap_ms: float = 1000.0  # silence inside one bot answer longer than this starts a new answer
    response_timeout_ms: float = 8000.0  # a caller turn with no bot answer within this is unanswered
    barge_window_ms: float = 2000.0  # a clearAudio later than this after the caller started is not a reaction
    barge_missed_ms: float = 1500.0  # bot still talking this long after being interrupted, with no clear


@dataclass(frozen=True)
class Truncation:
    """What the agent told the model was heard when it cut an answer short (engine or agent side)."""

    t: float  # time.monotonic() when the truncate happened (same clock as the carrier timeline)
    audio_end_ms: float


class Span(BaseModel):
    start_ms: float
    end_ms: float
    label: str = ""

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms


class Answer(BaseModel):
    """One bot answer as the caller heard it; ``gaps_ms`` are the silences inside it."""

    start_ms: float
    end_ms: float
    kind: Literal["greeting", "response", "unprompted"]
    response_ms: float | None = None
    heard_ms: float = 0.0
    interrupted: bool = False
    gaps_ms: list[float] = Field(default_factory=list)
    text: str | None = None  # filled by a recogniser when one is used


class BargeIn(BaseModel):
    speech_ms: float  # the caller started talking over the bot
    clear_ms: float | None  # the carrier got clearAudio (None: missed)
    time_to_silence_ms: float | None
    heard_ms: float | None = None  # of the interrupted answer, per the carrier
    truncated_ms: float | None = None  # per the agent/model
    truncation_error_ms: float | None = None


class CallMetrics(BaseModel):
    """Everything measured on one call; plain data, JSON-able, mergeable across processes and machines."""

    call_uuid: str
    scenario: str = ""
    index: int | None = None  # position in a load test
    started_at: float | None = None  # epoch seconds when the call was placed
    ok: bool = True
    failure: FailureCause | None = None
    failure_detail: str = ""
    end_reason: str | None = None
    duration_ms: float = 0.0
    answer_ms: float | None = None
    greeting_ms: float | None = None
    response_ms: list[float] = Field(default_factory=list)
    barge_in_ms: list[float] = Field(default_factory=list)
    truncation_error_ms: list[float] = Field(default_factory=list)
    playout_gaps_ms: list[float] = Field(default_factory=list)
    queue_max_ms: float | None = None
    queue_avg_ms: float | None = None
    bot_heard_ms: float = 0.0
    unanswered_turns: int = 0
    missed_barge_ins: int = 0
    caller: list[Span] = Field(default_factory=list)
    answers: list[Answer] = Field(default_factory=list)
    barge_ins: list[BargeIn] = Field(default_factory=list)
    clears_ms: list[float] = Field(default_factory=list)
    end_ms: float | None = None  # the stream closed
    after_stream: list[str] = Field(default_factory=list)  # XML verbs Vobiz ran after the stream
    protocol_errors: list[str] = Field(default_factory=list)
    webhook_errors: list[str] = Field(default_factory=list)  # the agent answered a webhook with an error
    warnings: list[str] = Field(default_factory=list)
    # From the agent's own record of the call, when it could be read (in-process, or through the console).
    agent_response_ms: list[float] | None = None
    agent_end_reason: str | None = None


def apply_agent_record(m: CallMetrics, record: Mapping[str, Any]) -> None:
    """Take the agent's stored figures (a `CallRecord.to_dict()`, or the console's JSON of one): its response
    latency per answer and its end reason, which are what the console shows for this call."""
    turns = record.get("turns") or []
    m.agent_response_ms = [
        round(float(t["latency_ms"]), 1)
        for t in turns
        if isinstance(t, Mapping) and t.get("speaker") == "assistant" and t.get("latency_ms") is not None
    ]
    reason = record.get("end_reason")
    m.agent_end_reason = str(reason) if reason else None


def failed_call(call_uuid: str, cause: FailureCause, detail: str, scenario: str = "") -> CallMetrics:
    """A call that never got as far as a stream (or broke the simulator): only the cause is known."""
    return CallMetrics(call_uuid=call_uuid, scenario=scenario, ok=False, failure=cause, failure_detail=detail)
