"""Fuzzing the parsers that face the network: whatever arrives, they answer with a clean error, never a crash."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.audio.formats import MediaFormat
from agent.audio.transcode import CallerAudioConverter
from agent.prompts.loader import PromptError, parse_prompt
from agent.protocol.vobiz import stream_token
from agent.protocol.vobiz.messages import InboundError, parse_inbound
from agent.protocol.vobiz.signature import verify_signature

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
events = st.sampled_from(["start", "media", "playedStream", "clearedAudio", "dtmf", "stop", "other", ""])


def frame_like() -> st.SearchStrategy[dict[str, Any]]:
    """Dicts shaped like Vobiz frames, with any field possibly wrong."""
    return st.fixed_dictionaries(
        {"event": events},
        optional={
            "start": st.dictionaries(
                st.sampled_from(["callId", "streamId", "mediaFormat", "tracks", "accountId"]), json_values
            ),
            "media": st.dictionaries(st.sampled_from(["payload", "track", "timestamp", "chunk"]), json_values),
            "dtmf": st.dictionaries(st.sampled_from(["digit", "track"]), json_values),
            "digit": json_values,
            "name": json_values,
            "streamId": json_values,
            "callId": json_values,
            "contentType": st.text(max_size=40),
            "sequenceNumber": json_values,
        },
    )


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_inbound_parser_survives_arbitrary_text(text: str) -> None:
    try:
        parse_inbound(text)
    except InboundError as exc:
        assert exc.reason in {"malformed_json", "unknown_event", "invalid_event"}


@settings(max_examples=120, deadline=None)
@given(frame_like())
def test_inbound_parser_survives_frame_shaped_garbage(frame: dict[str, Any]) -> None:
    try:
        event = parse_inbound(json.dumps(frame))
    except InboundError as exc:
        assert exc.reason in {"malformed_json", "unknown_event", "invalid_event"}
        return
    if event.event == "start":
        assert event.start.media_format.rate in (8000, 16000, 24000)


@settings(max_examples=120, deadline=None)
@given(
    st.binary(max_size=2000),
    st.sampled_from(["audio/x-mulaw;rate=8000", "audio/x-l16;rate=8000", "audio/x-l16;rate=16000"]),
)
def test_caller_audio_converter_accepts_or_refuses_cleanly(payload: bytes, content_type: str) -> None:
    converter = CallerAudioConverter(MediaFormat.parse(content_type))
    try:
        out = converter.convert(payload)
    except ValueError:
        assert len(payload) % 2 == 1 and not content_type.startswith("audio/x-mulaw")
        return
    assert isinstance(out, bytes) and len(out) % (1 if content_type.startswith("audio/x-mulaw") else 2) == 0
    base64.b64encode(out)


@settings(max_examples=120, deadline=None)
@given(st.dictionaries(st.text(max_size=30), st.text(max_size=60), max_size=6), st.text(max_size=80))
def test_signature_check_never_raises_on_hostile_headers(headers: dict[str, str], url: str) -> None:
    result = verify_signature(headers, "https://agent.example.com/vobiz/answer" + url, ["token"])
    assert result.ok is False


@settings(max_examples=120, deadline=None)
@given(st.text(max_size=60), st.text(max_size=60))
def test_stream_token_check_never_raises(call_id: str, token: str) -> None:
    assert stream_token.verify("secret", call_id, token).ok is False


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=400))
def test_prompt_parser_reports_problems_instead_of_crashing(text: str) -> None:
    try:
        parse_prompt("p", "---\n" + text + "\n---\nHello {{caller}}", "p.md")
    except PromptError as exc:
        assert str(exc).startswith("p.md:")
