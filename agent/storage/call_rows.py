"""Converting between a call record and its database rows, both ways.

Writing takes one synchronous pass over the record (a consistent snapshot even while a live call mutates it) and
cleans every value on the way; reading rebuilds the record as the call kept it, and the line the call list shows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Row

from agent.records import record as rec
from agent.storage.call_results import CallSummary
from agent.storage.cleaning import clean_text, cut, epoch, finite, json_object, utc_time
from agent.storage.tables import ID_LEN, NUMBER_LEN, SHORT_LEN, TAG_VALUE_LEN


@dataclass
class StoredRows:
    """A stored call as read back: its `calls` row, its child rows in order, and its tags."""

    call: Row[Any]
    turns: list[Row[Any]]
    barge_ins: list[Row[Any]]
    tool_uses: list[Row[Any]]
    events: list[Row[Any]]
    tags: dict[str, str]


@dataclass
class CallRows:
    call: dict[str, Any]
    turns: list[dict[str, Any]] = field(default_factory=list)
    barge_ins: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    tags: list[dict[str, Any]] = field(default_factory=list)


def record_rows(record: rec.CallRecord) -> CallRows:
    call_id = cut(record.call_id, ID_LEN)
    started = utc_time(record.started_at)
    ended = utc_time(record.ended_at) if record.ended_at is not None else None
    usage = record.usage
    turns = [
        {
            "call_id": call_id,
            "seq": seq,
            "speaker": cut(t.speaker, 16),
            "text": clean_text(t.text),
            "started_at": utc_time(t.started_at),
            "ended_at": utc_time(t.ended_at) if t.ended_at is not None else None,
            "item_id": cut(t.item_id, ID_LEN) if t.item_id is not None else None,
            "interrupted": bool(t.interrupted),
            "heard_ms": finite(t.heard_ms),
            "audio_ms": finite(t.audio_ms),
            "latency_ms": finite(t.latency_ms),
        }
        for seq, t in enumerate(record.turns)
    ]
    call = {
        "call_id": call_id,
        "from_number": cut(record.from_number, NUMBER_LEN),
        "to_number": cut(record.to_number, NUMBER_LEN),
        "direction": cut(record.direction, SHORT_LEN),
        "stream_id": cut(record.stream_id, ID_LEN),
        "prompt_name": cut(record.prompt_name, SHORT_LEN),
        "prompt_hash": cut(record.prompt_hash, SHORT_LEN),
        "started_at": started,
        "ended_at": ended,
        "duration_s": round(record.ended_at - record.started_at, 3) if record.ended_at is not None else None,
        "end_reason": cut(record.end_reason, SHORT_LEN) if record.end_reason is not None else None,
        "hung_up_by": cut(record.hung_up_by, SHORT_LEN) if record.hung_up_by is not None else None,
        "input_text_tokens": usage.input_text,
        "input_audio_tokens": usage.input_audio,
        "input_cached_tokens": usage.input_cached,
        "output_text_tokens": usage.output_text,
        "output_audio_tokens": usage.output_audio,
        "cost_usd": finite(record.cost_usd) or 0.0,
        "recording_path": clean_text(record.recording_path) if record.recording_path else None,
        "turn_count": len(record.turns),
        "assistant_turns": sum(1 for t in record.turns if t.speaker == "assistant"),
        "interrupted_turns": sum(1 for t in record.turns if t.interrupted),
        "barge_in_count": len(record.barge_ins),
        "tool_count": len(record.tools),
        "tool_failures": sum(1 for u in record.tools if u.ok is False),
        "event_count": len(record.events),
    }
    return CallRows(
        call=call,
        turns=turns,
        barge_ins=[
            {
                "call_id": call_id,
                "seq": seq,
                "t": utc_time(b.t),
                "item_id": cut(b.item_id, ID_LEN) if b.item_id is not None else None,
                "heard_ms": finite(b.heard_ms) or 0.0,
                "clear_ms": finite(b.clear_ms) or 0.0,
            }
            for seq, b in enumerate(record.barge_ins)
        ],
        tools=[
            {
                "call_id": call_id,
                "seq": seq,
                "name": cut(u.name, ID_LEN),
                "arguments": json_object(u.arguments),
                "started_at": utc_time(u.started_at),
                "ended_at": utc_time(u.ended_at) if u.ended_at is not None else None,
                "ok": u.ok,
                "result": clean_text(u.result) if u.result is not None else None,
            }
            for seq, u in enumerate(record.tools)
        ],
        events=[
            {
                "call_id": call_id,
                "seq": seq,
                "t": utc_time(e.t),
                "kind": cut(e.kind, SHORT_LEN),
                "detail": json_object(e.detail),
            }
            for seq, e in enumerate(list(record.events))
        ],
        tags=[
            {"call_id": call_id, "key": cut(str(k), SHORT_LEN), "value": cut(str(v), TAG_VALUE_LEN)}
            for k, v in dict(record.tags).items()
        ],
    )


def stored_record(rows: StoredRows) -> rec.CallRecord:
    """The record as the call kept it, from its stored rows."""
    call = rows.call
    return rec.CallRecord(
        call_id=call.call_id,
        from_number=call.from_number,
        to_number=call.to_number,
        direction=call.direction,
        prompt_name=call.prompt_name,
        prompt_hash=call.prompt_hash,
        stream_id=call.stream_id,
        started_at=call.started_at.timestamp(),
        ended_at=epoch(call.ended_at),
        end_reason=call.end_reason,
        hung_up_by=call.hung_up_by,
        turns=[
            rec.Turn(
                speaker=cast(rec.Speaker, t.speaker),
                text=t.text,
                started_at=t.started_at.timestamp(),
                ended_at=epoch(t.ended_at),
                item_id=t.item_id,
                interrupted=t.interrupted,
                heard_ms=t.heard_ms,
                audio_ms=t.audio_ms,
                latency_ms=t.latency_ms,
            )
            for t in rows.turns
        ],
        events=[rec.CallEvent(_at(e), e.kind, e.detail) for e in rows.events],
        barge_ins=[rec.BargeIn(_at(b), b.item_id, b.heard_ms, b.clear_ms) for b in rows.barge_ins],
        tools=[
            rec.ToolUse(
                name=u.name,
                arguments=u.arguments,
                started_at=u.started_at.timestamp(),
                ended_at=epoch(u.ended_at),
                ok=u.ok,
                result=u.result,
            )
            for u in rows.tool_uses
        ],
        usage=rec.Usage(
            input_text=call.input_text_tokens,
            input_audio=call.input_audio_tokens,
            input_cached=call.input_cached_tokens,
            output_text=call.output_text_tokens,
            output_audio=call.output_audio_tokens,
        ),
        cost_usd=call.cost_usd,
        recording_path=call.recording_path,
        tags=dict(rows.tags),
    )


def _at(row: Row[Any]) -> float:
    """A barge-in's or event's time: its column is `t`, which on a Row is the row's own tuple view."""
    at: dt.datetime = row._mapping["t"]
    return at.timestamp()


def call_summary(call: Row[Any], tags: Mapping[str, str]) -> CallSummary:
    return CallSummary(
        call_id=call.call_id,
        from_number=call.from_number,
        to_number=call.to_number,
        direction=call.direction,
        prompt_name=call.prompt_name,
        prompt_hash=call.prompt_hash,
        started_at=call.started_at,
        ended_at=call.ended_at,
        duration_s=call.duration_s,
        end_reason=call.end_reason,
        hung_up_by=call.hung_up_by,
        turn_count=call.turn_count,
        assistant_turns=call.assistant_turns,
        interrupted_turns=call.interrupted_turns,
        barge_in_count=call.barge_in_count,
        tool_count=call.tool_count,
        tool_failures=call.tool_failures,
        cost_usd=call.cost_usd,
        recording_path=call.recording_path,
        tags=dict(tags),
    )
