"""Stream-socket message validation, per-call stream tokens and the answer XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from agent.protocol.vobiz import messages, stream_token, xml
from agent.protocol.vobiz.messages import InboundError, parse_inbound

NESTED_START: dict[str, Any] = {
    "sequenceNumber": 0,
    "event": "start",
    "start": {
        "callId": "c-1",
        "streamId": "s-1",
        "accountId": "500025",
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 16000},
    },
    "extra_headers": "{}",
}


def test_nested_and_flat_start_normalise_to_one_shape() -> None:
    nested = parse_inbound(json.dumps(NESTED_START))
    flat = parse_inbound(
        json.dumps(
            {
                "event": "start",
                "streamId": "s-1",
                "accountId": "MA_X",
                "callId": "c-1",
                "contentType": "audio/x-l16;rate=16000",
                "audioTrack": "inbound",
            }
        )
    )
    for event in (nested, flat):
        assert isinstance(event, messages.StartEvent)
        assert (event.start.callId, event.start.streamId) == ("c-1", "s-1")
        assert event.start.media_format.content_type == "audio/x-l16;rate=16000"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "malformed_json"),
        ('{"event": "transcript"}', "unknown_event"),
        ('{"event": "media"}', "invalid_event"),
        ('{"event": "media", "media": {"payload": 5}}', "invalid_event"),
        ("[]", "invalid_event"),
        ('{"no_event": 1}', "invalid_event"),
        (
            json.dumps(
                {
                    **NESTED_START,
                    "start": {**NESTED_START["start"], "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 44100}},
                }
            ),
            "invalid_event",
        ),
        ('{"event": "dtmf", "dtmf": {"digit": "55"}}', "invalid_event"),
    ],
)
def test_bad_messages_get_a_reason(text: str, reason: str) -> None:
    with pytest.raises(InboundError) as info:
        parse_inbound(text)
    assert info.value.reason == reason


def test_dtmf_both_shapes_and_acks_with_or_without_stream_id() -> None:
    nested = parse_inbound('{"event":"dtmf","streamId":"s","dtmf":{"digit":"5","track":"inbound"}}')
    flat = parse_inbound('{"event":"dtmf","digit":"#"}')
    assert isinstance(nested, messages.DtmfEvent) and nested.digit == "5"
    assert isinstance(flat, messages.DtmfEvent) and flat.digit == "#"
    played = parse_inbound('{"event":"playedStream","name":"item_1.200.3"}')
    assert isinstance(played, messages.PlayedStreamEvent) and played.name == "item_1.200.3"
    cleared = parse_inbound('{"event":"clearedAudio","streamId":"s","sequenceNumber":0}')
    assert isinstance(cleared, messages.ClearedAudioEvent)
    media = parse_inbound(
        '{"event":"media","media":{"track":"inbound","timestamp":"1778597597091","chunk":2,"payload":"//8="}}'
    )
    assert isinstance(media, messages.MediaEvent) and media.media.timestamp == "1778597597091"


def test_commands_are_valid_json_with_stream_id() -> None:
    from agent.audio.formats import MediaFormat

    play = json.loads(messages.play_audio('s"1', MediaFormat("audio/x-l16", 16000), "AAA="))
    assert play == {
        "event": "playAudio",
        "streamId": 's"1',
        "media": {"contentType": "audio/x-l16", "sampleRate": 16000, "payload": "AAA="},
    }
    assert json.loads(messages.clear_audio("s")) == {"event": "clearAudio", "streamId": "s"}
    assert json.loads(messages.checkpoint("s", "n")) == {"event": "checkpoint", "streamId": "s", "name": "n"}
    assert json.loads(messages.stop("s")) == {"event": "stop", "streamId": "s"}


def test_stream_token_binds_call_and_expires() -> None:
    token = stream_token.issue("secret", "call-a", 60, now=1000)
    assert stream_token.verify("secret", "call-a", token, now=1030).ok
    assert stream_token.verify("secret", "call-b", token, now=1030).reason == "bad signature"
    assert stream_token.verify("other", "call-a", token, now=1030).reason == "bad signature"
    assert stream_token.verify("secret", "call-a", token, now=1061).reason == "expired"
    assert stream_token.verify("secret", "call-a", None).reason == "missing token or call id"
    assert stream_token.verify("secret", "call-a", "garbage").reason == "malformed token"
    forged = str(int(token.split(".")[0]) + 3600) + "." + token.split(".")[1]
    assert not stream_token.verify("secret", "call-a", forged, now=1030).ok


def test_answer_xml_escapes_url_and_keeps_call_alive() -> None:
    spec = xml.StreamSpec("wss://h/vobiz/stream?call=a&token=b<c", "audio/x-mulaw;rate=8000", "https://h/status")
    text = xml.stream_response(spec, after_stream_url="https://h/after?call=a&x=1")
    assert "?call=a&amp;token=b&lt;c</Stream>" in text
    root = ET.fromstring(text.split("?>", 1)[1])
    assert root.tag == "Response"
    stream, redirect = list(root)
    assert stream.tag == "Stream" and stream.text == "wss://h/vobiz/stream?call=a&token=b<c"
    assert stream.attrib == {
        "bidirectional": "true",
        "audioTrack": "inbound",
        "keepCallAlive": "true",
        "contentType": "audio/x-mulaw;rate=8000",
        "statusCallbackUrl": "https://h/status",
        "statusCallbackMethod": "POST",
    }
    assert redirect.tag == "Redirect" and redirect.text == "https://h/after?call=a&x=1"


def test_speak_dial_and_hangup_documents() -> None:
    root = ET.fromstring(xml.speak_then("Sorry & bye", dial="+911234").split("?>", 1)[1])
    assert [c.tag for c in root] == ["Speak", "Dial"]
    assert root[0].text == "Sorry & bye" and root[1][0].tag == "Number" and root[1][0].text == "+911234"
    assert [c.tag for c in ET.fromstring(xml.hangup().split("?>", 1)[1])] == ["Hangup"]
    assert list(ET.fromstring(xml.empty().split("?>", 1)[1])) == []
