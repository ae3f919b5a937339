"""What happened on a call, kept as turns and timestamped events, ready to be stored.

Assistant turns are cut to what the caller actually heard, so the record (and any conversation rebuilt from
it after a model reconnect) never claims the caller heard words that were interrupted away.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Speaker = Literal["caller", "assistant", "system"]

_WHO_HUNG_UP = {
    "caller_hangup": "caller",
    "carrier_closed": "caller",
    "carrier_stop": "carrier",
    "agent_end_call": "agent",
    "agent_transfer": "agent",
    "idle_timeout": "agent",
    "max_duration": "agent",
}


@dataclass
class Turn:
    speaker: Speaker
    text: str
    started_at: float
    ended_at: float | None = None
    item_id: str | None = None
    interrupted: bool = False
    heard_ms: float | None = None
    audio_ms: float | None = None
    latency_ms: float | None = None  # assistant: caller stopped speaking -> first bot audio on the line
    backchannel: bool = False  # caller: said over the bot and not an interruption ("mm-hmm"); the model forgot it


@dataclass
class BargeIn:
    t: float
    item_id: str | None
    heard_ms: float
    clear_ms: float  # speech_started received -> clearAudio sent
    kept: bool = True  # the bot was cut (False: it resumed where it stopped, nothing lost)
    reason: str = "vad"  # vad (immediate/early) | stop_word | words | duration | timeout; resumed: backchannel,
    # noise, no_speech, echo, timeout
    paused_ms: float = 0.0  # how long the line was quiet before the decision
    transcript: str | None = None  # what the caller said, when known at the decision


@dataclass
class ToolUse:
    name: str
    arguments: dict[str, Any]
    started_at: float
    ended_at: float | None = None
    ok: bool | None = None
    result: str | None = None


@dataclass
class Usage:
    """Token counts summed over the call's responses (`response.done.usage`)."""

    input_text: int = 0
    input_audio: int = 0
    input_cached: int = 0
    output_text: int = 0
    output_audio: int = 0

    def add(self, usage: Any) -> None:
        if usage is None:
            return
        details_in = getattr(usage, "input_token_details", None)
        details_out = getattr(usage, "output_token_details", None)
        self.input_text += getattr(details_in, "text_tokens", 0) or 0
        self.input_audio += getattr(details_in, "audio_tokens", 0) or 0
        self.input_cached += getattr(details_in, "cached_tokens", 0) or 0
        self.output_text += getattr(details_out, "text_tokens", 0) or 0
        self.output_audio += getattr(details_out, "audio_tokens", 0) or 0

    def cost_usd(self, prices: dict[str, float]) -> float:
        """Estimated cost; `prices` are USD per million tokens by the field names above."""
        fresh_text = max(self.input_text - self.input_cached, 0)
        total = (
            fresh_text * prices.get("input_text", 0)
            + self.input_audio * prices.get("input_audio", 0)
            + self.input_cached * prices.get("input_cached", 0)
            + self.output_text * prices.get("output_text", 0)
            + self.output_audio * prices.get("output_audio", 0)
        )
        return round(total / 1_000_000, 6)


@dataclass
class CallEvent:
    t: float
    kind: str
    detail: dict[str, Any]


@dataclass
class CallRecord:
    call_id: str
    from_number: str = ""
    to_number: str = ""
    direction: str = ""
    prompt_name: str = ""
    prompt_hash: str = ""
    stream_id: str = ""
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    end_reason: str | None = None
    hung_up_by: str | None = None  # caller | agent | carrier | system
    turns: list[Turn] = field(default_factory=list)
    events: list[CallEvent] = field(default_factory=list)
    barge_ins: list[BargeIn] = field(default_factory=list)
    tools: list[ToolUse] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    recording_path: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    max_events: int = 5000

    def event(self, kind: str, **detail: Any) -> None:
        if len(self.events) < self.max_events:
            self.events.append(CallEvent(time.time(), kind, detail))
        elif len(self.events) == self.max_events:
            self.events.append(CallEvent(time.time(), "events_truncated", {}))

    def turn_for_item(self, item_id: str) -> Turn | None:
        for turn in reversed(self.turns):
            if turn.item_id == item_id:
                return turn
        return None

    def caller_said(self, item_id: str, text: str) -> None:
        """Transcriptions arrive late and out of order; place each by its item, creating the turn if needed."""
        turn = self.turn_for_item(item_id)
        if turn is None:
            self.turns.append(Turn("caller", text, time.time(), time.time(), item_id))
        else:
            turn.text = text

    def dismiss(self, item_id: str) -> None:
        """The caller's words were a backchannel over the bot, removed from the model's conversation: they are kept
        for the operator but never re-told to a new model session."""
        turn = self.turn_for_item(item_id)
        if turn is None:
            turn = Turn("caller", "", time.time(), time.time(), item_id)
            self.turns.append(turn)
        turn.backchannel = True

    def caller_started(self, item_id: str) -> None:
        if self.turn_for_item(item_id) is None:
            self.turns.append(Turn("caller", "", time.time(), None, item_id))

    def caller_stopped(self, item_id: str) -> None:
        turn = self.turn_for_item(item_id)
        if turn is not None:
            turn.ended_at = time.time()

    def assistant_text(self, item_id: str, delta: str) -> Turn:
        turn = self.turn_for_item(item_id)
        if turn is None:
            turn = Turn("assistant", "", time.time(), None, item_id)
            self.turns.append(turn)
        turn.text += delta
        return turn

    def assistant_latency(self, item_id: str, latency_ms: float) -> None:
        self.assistant_text(item_id, "").latency_ms = round(latency_ms, 1)

    def assistant_done(self, item_id: str, transcript: str | None, audio_ms: float) -> None:
        turn = self.turn_for_item(item_id)
        if turn is None:
            return
        if transcript is not None and not turn.interrupted:
            turn.text = transcript
        turn.audio_ms = audio_ms
        turn.ended_at = time.time()

    def chars_per_ms(self, default: float = 0.015) -> float:
        """How fast this call's bot speaks, from its answers heard in full (default ~15 characters a second)."""
        finished = [t for t in self.turns if t.speaker == "assistant" and not t.interrupted and t.audio_ms]
        chars, ms = sum(len(t.text) for t in finished), sum(t.audio_ms or 0 for t in finished)
        return chars / ms if chars and ms > 1000 else default

    def assistant_interrupted(self, item_id: str, heard_ms: float, audio_ms: float) -> None:
        """Cut the transcript in proportion to the audio heard: the best estimate without word timings."""
        turn = self.turn_for_item(item_id)
        if turn is None:
            return
        turn.interrupted = True
        turn.heard_ms = heard_ms
        turn.audio_ms = audio_ms
        turn.ended_at = time.time()
        if audio_ms > 0 and heard_ms < audio_ms:
            keep = int(len(turn.text) * max(heard_ms, 0) / audio_ms)
            cut = turn.text[:keep]
            turn.text = cut.rsplit(" ", 1)[0] if " " in cut and keep < len(turn.text) else cut

    def system_note(self, text: str) -> None:
        now = time.time()
        self.turns.append(Turn("system", f"[{text}]", now, now))

    def finish(self, reason: str) -> None:
        if self.ended_at is None:
            self.ended_at = time.time()
            self.end_reason = reason
            self.hung_up_by = _WHO_HUNG_UP.get(reason, "system")
            self.event("call_ended", reason=reason)

    def hangup_reported(self, source: str) -> None:
        """Vobiz's hangup webhook names who hung up. A stream that just closed, with nothing said, is the caller
        hanging up when Vobiz says so: record it as such, as the CLI and carrier see it."""
        if self.end_reason == "carrier_closed" and source.strip().lower() in ("", "caller"):
            self.end_reason = "caller_hangup"
            self.hung_up_by = _WHO_HUNG_UP[self.end_reason]

    def history(self) -> list[Turn]:
        """Turns worth re-telling a fresh model session: non-empty, in order."""
        return [t for t in self.turns if t.text.strip() and not t.backchannel]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
