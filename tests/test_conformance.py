"""Conformance with the published contracts, written from the published material and not from our code.

Every example here is copied from (or built to the letter of) Vobiz's documentation, as collected with its
sources in ../shared/vobiz-protocol.md, and the openai SDK's GA Realtime types, including the variants those
documents disagree on and values a newer server sends before the SDK lists them. The product must accept each
one; the offline engine and the carrier simulator must send only what the documents allow, and must not borrow
the product's protocol code to do it.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from agent.engine import RealtimeSimConfig
from agent.engine.sdk_types import SERVER_EVENT_TYPES, validate_server_event
from agent.protocol.realtime import server_events
from agent.protocol.vobiz.messages import (
    ClearedAudioEvent,
    DtmfEvent,
    MediaEvent,
    PlayedStreamEvent,
    StartEvent,
    StopEvent,
    parse_inbound,
)
from agent.protocol.vobiz.signature import verify_signature
from agent.testkit.carrier import CallerAudio, SimCallOptions, vobiz_signature_headers
from tests.harness import ROOT, running_stack

# --- Vobiz stream events (Vobiz -> app), every documented revision ---------------------------------------------

VOBIZ_INBOUND: list[tuple[str, dict[str, Any], type]] = [
    (
        "start, R2 nested (events@R2)",
        {
            "sequenceNumber": 0,
            "event": "start",
            "start": {
                "callId": "5401fd2e-0000",
                "streamId": "c4dfd815-0000",
                "accountId": "500025",
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 16000},
            },
            "extra_headers": "{}",
        },
        StartEvent,
    ),
    (
        "start, R2 mu-law",
        {
            "sequenceNumber": 0,
            "event": "start",
            "start": {
                "callId": "c1",
                "streamId": "s1",
                "accountId": "528191",
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
            },
            "extra_headers": "{}",
        },
        StartEvent,
    ),
    (
        "start, R0 flat (initiate@R0)",
        {
            "event": "start",
            "streamId": "s1",
            "accountId": "MA_XXXX",
            "callId": "c1",
            "from": "918071387423",
            "to": "919624705678",
            "direction": "inbound",
            "contentType": "audio/x-mulaw;rate=8000",
            "audioTrack": "inbound",
        },
        StartEvent,
    ),
    (
        "media, R2 (string timestamp)",
        {
            "sequenceNumber": 2,
            "streamId": "c4dfd815-0000",
            "event": "media",
            "media": {"track": "inbound", "timestamp": "1778597597091", "chunk": 2, "payload": "//8="},
            "extra_headers": "{}",
        },
        MediaEvent,
    ),
    (
        "media, R0 (numeric timestamp, format repeated)",
        {
            "event": "media",
            "streamId": "s1",
            "media": {
                "track": "inbound",
                "timestamp": 1778597597091,
                "chunk": 3,
                "payload": "//8=",
                "contentType": "audio/x-mulaw",
                "sampleRate": 8000,
            },
        },
        MediaEvent,
    ),
    ("playedStream, R2 (event and name only)", {"event": "playedStream", "name": "response-3"}, PlayedStreamEvent),
    (
        "playedStream, older R1 (with streamId)",
        {"event": "playedStream", "streamId": "s1", "name": "turn-7"},
        PlayedStreamEvent,
    ),
    ("clearedAudio, R2", {"event": "clearedAudio", "streamId": "s1"}, ClearedAudioEvent),
    (
        "clearedAudio, R0 (sequenceNumber)",
        {"event": "clearedAudio", "streamId": "s1", "sequenceNumber": 0},
        ClearedAudioEvent,
    ),
    ("dtmf, Plivo shape", {"event": "dtmf", "streamId": "s1", "dtmf": {"digit": "5"}}, DtmfEvent),
    ("dtmf, top-level digit", {"event": "dtmf", "streamId": "s1", "digit": "#"}, DtmfEvent),
    ("stop, R0 inbound", {"event": "stop", "streamId": "s1"}, StopEvent),
]


@pytest.mark.parametrize(("name", "message", "kind"), VOBIZ_INBOUND, ids=[n for n, _, _ in VOBIZ_INBOUND])
def test_every_documented_vobiz_stream_event_is_understood(name: str, message: dict[str, Any], kind: type) -> None:
    event = parse_inbound(json.dumps(message))
    assert isinstance(event, kind), name
    if isinstance(event, StartEvent):
        assert event.start.callId and event.start.streamId
    if isinstance(event, DtmfEvent):
        assert event.digit in ("5", "#")


# --- Vobiz webhooks --------------------------------------------------------------------------------------------

ANSWER_EXAMPLE = "CallUUID=abc123&From=14155551234&To=14155556789&Direction=inbound&CallStatus=ringing"  # applications
STREAM_STATUS_EXAMPLE = (  # stream@R2, StartStream
    "From=918071387423&To=919624705678&CallUUID=9a0e0208-0000&Event=StartStream&StreamID=227d997a-0000"
    "&ServiceURL=wss://your-server.com/ws&ParentAuthID=MA_PU0XU668&status_callback_url=https://x/status"
    "&status_callback_method=POST&Timestamp=2025-11-06 09:58:40"
)
HANGUP_EXAMPLE = (  # request, events@R2: what reaches the answer URL when no hangup_url is set
    "CallUUID=abc123&From=14155551234&To=14155556789&Direction=inbound&CallStatus=completed&Event=Hangup"
    "&HangupCause=NORMAL_CLEARING&HangupCauseCode=4010&HangupSource=Vobiz&Duration=42&BillDuration=60"
)


async def test_the_documented_webhook_examples_are_answered_as_vobiz_expects() -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with running_stack(RealtimeSimConfig(reply_ms=300)) as stack, httpx.AsyncClient() as http:
        base = stack.base_url
        # The oldest example carries no Event at all: it is an answered call and gets a <Stream>.
        answer = await http.post(f"{base}/vobiz/answer", content=ANSWER_EXAMPLE, headers=form)
        assert answer.status_code == 200 and "<Stream" in answer.text
        assert answer.headers["content-type"].startswith(("application/xml", "text/xml"))
        # The same fields as a GET query (answer_method=GET).
        got = await http.get(f"{base}/vobiz/answer", params=dict(x.split("=") for x in ANSWER_EXAMPLE.split("&")))
        assert got.status_code == 200 and "<Stream" in got.text
        ring = await http.post(f"{base}/vobiz/answer", content=ANSWER_EXAMPLE + "&Event=Ring", headers=form)
        assert "<Stream" not in ring.text
        status = await http.post(f"{base}/vobiz/stream-status", content=STREAM_STATUS_EXAMPLE, headers=form)
        assert status.status_code == 200
        hangup = await http.post(f"{base}/vobiz/answer", content=HANGUP_EXAMPLE, headers=form)
        assert hangup.status_code == 200 and "<Stream" not in hangup.text
        await stack.state.registry.shutdown()


def _doc_signature(token: str, message: str) -> str:
    return base64.b64encode(hmac.new(token.encode(), message.encode(), hashlib.sha256).digest()).decode()


def test_signatures_computed_as_the_docs_say_are_accepted() -> None:
    token, main, nonce = "auth-token", "main-account-token", "12345678901234567890"
    url = "https://agent.example/vobiz/answer?prompt=clinic"
    base_url = "https://agent.example/vobiz/answer"  # the query is not signed
    v2 = {"X-Vobiz-Signature-V2": _doc_signature(token, base_url + nonce), "X-Vobiz-Signature-V2-Nonce": nonce}
    v3 = {"X-Vobiz-Signature-V3": _doc_signature(token, f"{base_url}.{nonce}"), "X-Vobiz-Signature-V3-Nonce": nonce}
    ma3 = {"X-Vobiz-Signature-MA-V3": _doc_signature(main, f"{base_url}.{nonce}"), "X-Vobiz-Signature-V3-Nonce": nonce}
    for headers in (v2, v3):
        assert verify_signature(headers, url, [token]).ok
    assert verify_signature(ma3, url, [token], [main]).ok
    assert not verify_signature(v3, url, ["another-token"]).ok
    # The carrier simulator signs from the docs on its own, and the agent accepts what it signs.
    assert verify_signature(vobiz_signature_headers(token, url, main_token=main), url, [token], [main]).ok


# --- OpenAI GA server events (SDK types), including what a newer server adds -----------------------------------

RESPONSE: dict[str, Any] = {
    "id": "resp_1",
    "object": "realtime.response",
    "status": "completed",
    "output": [],
    "usage": None,
}
FUNCTION_CALL = {
    "type": "function_call",
    "id": "item_9",
    "call_id": "call_1",
    "name": "end_call",
    "arguments": "{}",
    "status": "completed",
    "object": "realtime.item",
}
GA_EVENTS: list[dict[str, Any]] = [
    {"type": "session.created", "event_id": "e", "session": {"type": "realtime"}},
    {"type": "session.updated", "event_id": "e", "session": {"type": "realtime"}},
    {"type": "input_audio_buffer.speech_started", "event_id": "e", "audio_start_ms": 1000, "item_id": "item_1"},
    {"type": "input_audio_buffer.speech_stopped", "event_id": "e", "audio_end_ms": 2000, "item_id": "item_1"},
    {"type": "input_audio_buffer.committed", "event_id": "e", "item_id": "item_1", "previous_item_id": None},
    {
        "type": "conversation.item.input_audio_transcription.completed",
        "event_id": "e",
        "item_id": "item_1",
        "content_index": 0,
        "transcript": "hello",
        "usage": {"type": "duration", "seconds": 1.2},
    },
    {"type": "response.created", "event_id": "e", "response": RESPONSE | {"status": "in_progress"}},
    {
        "type": "response.output_audio.delta",
        "event_id": "e",
        "response_id": "resp_1",
        "item_id": "item_2",
        "output_index": 0,
        "content_index": 0,
        "delta": "//8=",
    },
    {
        "type": "response.output_audio_transcript.delta",
        "event_id": "e",
        "response_id": "resp_1",
        "item_id": "item_2",
        "output_index": 0,
        "content_index": 0,
        "delta": "Hel",
    },
    {
        "type": "response.output_audio.done",
        "event_id": "e",
        "response_id": "resp_1",
        "item_id": "item_2",
        "output_index": 0,
        "content_index": 0,
    },
    {
        "type": "response.output_audio_transcript.done",
        "event_id": "e",
        "response_id": "resp_1",
        "item_id": "item_2",
        "output_index": 0,
        "content_index": 0,
        "transcript": "Hello",
    },
    {
        "type": "response.output_item.done",
        "event_id": "e",
        "response_id": "resp_1",
        "output_index": 1,
        "item": FUNCTION_CALL,
    },
    {"type": "response.done", "event_id": "e", "response": RESPONSE | {"output": [FUNCTION_CALL]}},
    {
        "type": "conversation.item.truncated",
        "event_id": "e",
        "item_id": "item_2",
        "content_index": 0,
        "audio_end_ms": 900,
    },
    {
        "type": "error",
        "event_id": "e",
        "error": {
            "type": "invalid_request_error",
            "code": "response_cancel_not_active",
            "message": "x",
            "event_id": None,
        },
    },
]


def _newer(event: dict[str, Any]) -> dict[str, Any]:
    """What a server newer than the SDK sends: an unlisted field everywhere, unlisted enum values where it has them."""
    newer: dict[str, Any] = json.loads(json.dumps(event)) | {"new_field": {"nested": True}}
    if "response" in newer:
        newer["response"]["status_details"] = {"type": "completed", "reason": "server_shutdown"}
    if newer["type"] == "error":
        newer["error"]["type"] = "brand_new_error_type"
    return newer


@pytest.mark.parametrize("event", GA_EVENTS, ids=[e["type"] for e in GA_EVENTS])
def test_every_ga_event_the_agent_acts_on_is_read_strict_and_newer(event: dict[str, Any]) -> None:
    validate_server_event(event)  # the example itself is what the SDK documents
    strict = server_events.parse(json.dumps(event))
    assert strict.type == event["type"] and server_events.conforms(strict, json.dumps(event))
    raw = json.dumps(_newer(event))
    newer = server_events.parse(raw)
    assert newer.type == strict.type
    if isinstance(newer, server_events.ResponseDone):
        assert [item.call_id for item in newer.response.output] == ["call_1"]  # its end_call still runs
    if event["type"] in ("response.done", "response.created"):
        with pytest.raises(ValidationError):
            validate_server_event(json.loads(raw))  # the SDK would have dropped it...
        assert not server_events.conforms(newer, raw)  # ...and the agent notices, counts it, and still acts on it


@pytest.mark.parametrize("kind", [*sorted(SERVER_EVENT_TYPES), "response.some_future_event", "totally.new"])
def test_every_other_server_event_type_is_skipped_without_harm(kind: str) -> None:
    try:
        event = server_events.parse(json.dumps({"type": kind, "event_id": "e"}))
    except server_events.Unhandled as unhandled:
        assert unhandled.kind == kind
        return
    assert event.type == kind  # a type the agent acts on, with nothing it needs missing


# --- The stand-ins send only what the documents allow ----------------------------------------------------------

_FRAME_KEYS = {
    "start": {"event", "sequenceNumber", "start", "extra_headers", "streamId"},
    "media": {"event", "sequenceNumber", "streamId", "media", "extra_headers"},
    "playedStream": {"event", "name", "streamId", "sequenceNumber"},
    "clearedAudio": {"event", "streamId", "sequenceNumber"},
    "dtmf": {"event", "streamId", "dtmf", "sequenceNumber", "extra_headers"},
}


def _check_vobiz_frame(frame: dict[str, Any]) -> None:
    kind = frame["event"]
    assert kind in _FRAME_KEYS, f"Vobiz documents no {kind!r} event"
    assert set(frame) <= _FRAME_KEYS[kind], f"{kind}: undocumented keys {set(frame) - _FRAME_KEYS[kind]}"
    if kind == "start":
        start = frame["start"]
        assert {"callId", "streamId", "mediaFormat"} <= set(start)
        assert start["mediaFormat"]["encoding"] in ("audio/x-l16", "audio/x-mulaw")
        assert start["mediaFormat"]["sampleRate"] in (8000, 16000)
    if kind == "media":
        media = frame["media"]
        assert set(media) <= {"track", "timestamp", "chunk", "payload"} and isinstance(media["timestamp"], str)
        base64.b64decode(media["payload"], validate=True)


async def test_the_simulators_send_only_documented_shapes() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=600)) as stack:
        call = await stack.carrier.place_call(
            [CallerAudio.silence(700), CallerAudio.tone(300, 500, 0.4), CallerAudio.silence(1500)],
            SimCallOptions(direction="outbound", keep_sent_frames=True),
        )
        session = await stack.engine.wait_for_session()
        await call.wait_bot_audio(900, timeout=8)
        await call.send_dtmf("7")
        await call.wait_script_done(timeout=8)
        await call.hangup()
        frames = [json.loads(text) for text in call.sent_frames]
        assert {f["event"] for f in frames} >= {"start", "media", "playedStream"}
        for frame in frames:
            _check_vobiz_frame(frame)
        documented = {"CallUUID", "From", "To", "Direction", "CallStatus", "Event", "StreamID", "ServiceURL"}
        documented |= {"ParentAuthID", "Timestamp", "Name", "Error", "status_callback_url", "status_callback_method"}
        documented |= {"HangupCause", "HangupCauseCode", "HangupSource", "Duration", "BillDuration", "EndTime"}
        documented |= {"StartTime", "AnswerTime"}
        for webhook in call.webhooks:
            assert set(webhook.fields) <= documented, set(webhook.fields) - documented
        for event in session.server_events:
            validate_server_event({k: v for k, v in event.items() if k != "_t"})


_PRODUCT_PROTOCOL = ("agent.carrier", "agent.model", "agent.calls", "agent.web", "agent.protocol")


@pytest.mark.parametrize(
    "module",
    sorted(
        str(p.relative_to(ROOT)) for d in ("agent/testkit/carrier", "agent/engine") for p in (ROOT / d).rglob("*.py")
    ),
)
def test_the_stand_ins_do_not_borrow_the_products_protocol_code(module: str) -> None:
    tree = ast.parse(Path(ROOT / module).read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    borrowed = [name for name in imported if name and name.startswith(_PRODUCT_PROTOCOL)]
    assert borrowed == [], f"{module} imports the product's protocol code: {borrowed}"
