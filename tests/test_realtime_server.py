"""The Realtime stand-in, driven by the unmodified openai SDK exactly as the agent will drive it.

These tests pin the fake to the GA protocol (notes §4/§8): if they pass, agent tests that run against the fake
exercise the same event names, order, ids and error codes as production.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import numpy as np
import pytest
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from agent.audio.codecs import Int16Array, float_to_pcm16, mulaw_to_pcm16, pcm16_to_mulaw
from agent.engine import RealtimeServer, RealtimeSimConfig, SimSession, describe_audio
from agent.waiting import within

pytestmark = pytest.mark.timeout(30)

ServerFactory = Callable[..., Awaitable[RealtimeServer]]
Ev = dict[str, Any]

PCMU = {"type": "audio/pcmu"}
PCM24 = {"type": "audio/pcm", "rate": 24000}


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """Start servers on demand (fast defaults) and prove each one tears down cleanly."""
    servers: list[RealtimeServer] = []

    async def factory(**overrides: Any) -> RealtimeServer:
        server = RealtimeServer(RealtimeSimConfig(**{"speed": 0, "reply_ms": 500, **overrides}))
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.wait_idle()
        assert server.connections_open == 0
        await server.stop()
        assert server.internal_errors == []
    leaked = [t for t in asyncio.all_tasks() if t.get_name().startswith("sess_")]
    assert leaked == []


@asynccontextmanager
async def open_conn(server: RealtimeServer) -> AsyncIterator[AsyncRealtimeConnection]:
    """The exact call the agent makes, pointed at the fake."""
    async with (
        AsyncOpenAI(api_key="x", base_url=server.http_base_url) as client,
        client.realtime.connect(model="gpt-realtime") as conn,
    ):
        yield conn


async def send(conn: AsyncRealtimeConnection, event: Ev) -> None:
    """Send a plain dict; the cast lets tests send deliberately invalid events too."""
    await conn.send(cast(Any, event))


async def recv(conn: AsyncRealtimeConnection) -> Ev:
    async with asyncio.timeout(5):
        event = await conn.recv()
    return cast(Ev, event.to_dict())


async def recv_until(conn: AsyncRealtimeConnection, *types: str) -> list[Ev]:
    """Receive until every type in ``types`` has been seen (in any order); returns all events received."""
    missing = set(types)
    events: list[Ev] = []
    while missing:
        event = await recv(conn)
        events.append(event)
        missing.discard(event["type"])
    return events


async def configure(conn: AsyncRealtimeConnection, **audio: Any) -> Ev:
    """session.update with GA audio settings; returns the session.updated payload."""
    await send(conn, {"type": "session.update", "session": {"type": "realtime", "audio": audio}})
    events = await recv_until(conn, "session.updated")
    return cast(Ev, events[-1]["session"])


def index_of(events: list[Ev], type_: str) -> int:
    return next(i for i, e in enumerate(events) if e["type"] == type_)


def only(events: list[Ev], type_: str) -> list[Ev]:
    return [e for e in events if e["type"] == type_]


def tone(hz: float, ms: int, rate: int, amplitude: float = 0.3) -> Int16Array:
    t = np.arange(rate * ms // 1000) / rate
    return float_to_pcm16(amplitude * np.sin(2 * np.pi * hz * t))


def mulaw_b64(samples: Int16Array) -> str:
    return base64.b64encode(pcm16_to_mulaw(samples)).decode()


def peak_hz(samples: Int16Array, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def decode_output(events: list[Ev], fmt: str) -> Int16Array:
    raw = b"".join(base64.b64decode(e["delta"]) for e in only(events, "response.output_audio.delta"))
    return mulaw_to_pcm16(raw) if fmt == "audio/pcmu" else np.frombuffer(raw, dtype="<i2").astype(np.int16)


def collapse(types: list[str]) -> list[str]:
    """Event types with runs of interleaved deltas folded into one marker."""
    deltas = {"response.output_audio.delta", "response.output_audio_transcript.delta"}
    out: list[str] = []
    for t in types:
        name = "<deltas>" if t in deltas else t
        if not out or out[-1] != name or name != "<deltas>":
            out.append(name)
    return out


RESPONSE_ORDER = [
    "response.created",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    "<deltas>",
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
    "rate_limits.updated",
]


# ---------------------------------------------------------------------------------------------------------------


async def test_session_created_then_update_merges(make_server: ServerFactory) -> None:
    server = await make_server()
    async with open_conn(server) as conn:
        created = await recv(conn)
        assert created["type"] == "session.created"
        session = created["session"]
        assert session["id"].startswith("sess_")
        assert session["object"] == "realtime.session"
        assert session["model"] == "gpt-realtime"
        assert session["expires_at"] > time.time()
        assert session["audio"]["input"]["format"] == PCM24
        assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"

        await send(
            conn,
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "instructions": "Be brief.",
                    "audio": {
                        "input": {
                            "format": PCMU,
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 400},
                        },
                        "output": {"format": PCMU, "voice": "marin"},
                    },
                },
            },
        )
        updated = (await recv_until(conn, "session.updated"))[-1]["session"]
        assert updated["id"] == session["id"]
        assert updated["instructions"] == "Be brief."
        assert updated["audio"]["input"]["format"] == PCMU
        assert updated["audio"]["output"] == {"format": PCMU, "voice": "marin", "speed": 1.0}
        turn = updated["audio"]["input"]["turn_detection"]
        assert turn["silence_duration_ms"] == 400
        assert (turn["threshold"], turn["prefix_padding_ms"], turn["interrupt_response"]) == (0.5, 300, True)
        assert updated["tools"] == [] and updated["tool_choice"] == "auto"

        sim = await server.wait_for_session()
        assert sim.session_config["audio"]["input"]["turn_detection"] == turn
        assert sim.input_format.type == sim.output_format.type == "audio/pcmu"
        assert sim.protocol_errors == [] and sim.error_events == []
        assert all("_t" in e for e in sim.server_events + sim.client_events)
        assert "_t" not in created
        ids = [e["event_id"] for e in sim.server_events]
        assert len(set(ids)) == len(ids) and all(i.startswith("event_") for i in ids)


async def test_beta_handshake_is_refused_with_4000(make_server: ServerFactory) -> None:
    server = await make_server()
    async with (
        AsyncOpenAI(api_key="x", websocket_base_url=server.ws_base_url) as client,
        client.beta.realtime.connect(model="gpt-4o-realtime-preview") as conn,
    ):
        event = await conn.recv()
        assert event.type == "error"
        assert event.error.code == "beta_api_shape_disabled"
        assert event.error.type == "invalid_request_error"
        with pytest.raises(ConnectionClosedError) as closed:
            await conn.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    assert server.sessions[0].beta


async def test_invalid_client_events_get_errors(make_server: ServerFactory) -> None:
    server = await make_server()
    async with open_conn(server) as conn:
        await recv(conn)
        bad_events: list[tuple[Ev, str, str]] = [
            (
                {
                    "type": "session.update",
                    "session": {"type": "realtime", "voice": "alloy", "input_audio_format": "x"},
                },
                "unknown_parameter",
                "session.input_audio_format",
            ),
            (
                {"type": "session.update", "session": {"instructions": "x"}},
                "missing_required_parameter",
                "session.type",
            ),
            ({"type": "conversation.item.created", "item": {}}, "invalid_value", "type"),
            (
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 8000}}},
                    },
                },
                "invalid_value",
                "session.audio.input.format.rate",
            ),
            ({"type": "output_audio_buffer.clear"}, "invalid_value", "type"),
        ]
        for n, (event, code, param) in enumerate(bad_events):
            await send(conn, {**event, "event_id": f"evt_bad_{n}"})
            error = (await recv_until(conn, "error"))[-1]["error"]
            assert (error["code"], error["param"], error["event_id"]) == (code, param, f"evt_bad_{n}"), error
            assert error["type"] == "invalid_request_error"
        sim = server.sessions[0]
        assert len(sim.protocol_errors) == len(bad_events)
        assert sim.session_config["instructions"] != "x"
        assert sim.session_config["audio"]["input"]["format"] == PCM24


@pytest.mark.parametrize("fmt", [PCMU, PCM24], ids=["pcmu", "pcm24k"])
async def test_response_streams_tone_in_wire_order(make_server: ServerFactory, fmt: Ev) -> None:
    server = await make_server(reply_ms=1000, chunk_ms=100, first_audio_delay_ms=0)
    async with open_conn(server) as conn:
        await recv(conn)
        await configure(conn, input={"format": fmt, "turn_detection": None}, output={"format": fmt})
        await send(conn, {"type": "response.create"})
        events = await recv_until(conn, "rate_limits.updated")

    assert collapse([e["type"] for e in events]) == RESPONSE_ORDER
    response_id = events[0]["response"]["id"]
    assert response_id.startswith("resp_") and events[0]["response"]["status"] == "in_progress"
    assert all(e["response_id"] == response_id for e in events if "response_id" in e)
    part = only(events, "response.content_part.added")[0]["part"]
    assert part == {"type": "audio", "transcript": ""}
    # transcript and audio deltas interleave: each transcript delta is followed by an audio delta
    middle = [e["type"] for e in events[4:-7]]
    assert middle.count("response.output_audio.delta") == 10
    assert all(
        middle[i + 1] == "response.output_audio.delta"
        for i, t in enumerate(middle)
        if t == "response.output_audio_transcript.delta"
    )

    audio = decode_output(events, fmt["type"])
    rate = 8000 if fmt["type"] == "audio/pcmu" else 24000
    assert len(audio) == rate  # 1000 ms
    assert abs(peak_hz(audio, rate) - 600.0) <= 5

    transcript = "".join(e["delta"] for e in only(events, "response.output_audio_transcript.delta"))
    assert transcript == only(events, "response.output_audio_transcript.done")[0]["transcript"] == "Reply number 1."
    done = only(events, "response.done")[0]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["status"] == "completed"
    assert done["output"][0]["content"] == [{"type": "output_audio", "transcript": "Reply number 1."}]
    assert done["usage"]["total_tokens"] > 0
    assert done["audio"]["output"]["format"] == fmt

    sim = server.sessions[0]
    item_id = done["output"][0]["id"]
    assert sim.assistant_audio_ms[item_id] == 1000
    assert [i["id"] for i in sim.items] == [item_id]
    assert sim.error_events == []


async def test_text_only_response(make_server: ServerFactory) -> None:
    server = await make_server(reply_ms=300)
    async with open_conn(server) as conn:
        await recv(conn)
        await send(conn, {"type": "response.create", "response": {"output_modalities": ["text"]}})
        events = await recv_until(conn, "rate_limits.updated")
    assert not only(events, "response.output_audio.delta")
    text = "".join(e["delta"] for e in only(events, "response.output_text.delta"))
    assert text == only(events, "response.output_text.done")[0]["text"] == "Reply number 1."
    assert only(events, "response.content_part.added")[0]["part"]["type"] == "text"


async def test_server_vad_turn_commits_transcribes_and_responds(make_server: ServerFactory) -> None:
    server = await make_server(reply_ms=300, first_audio_delay_ms=50)
    async with open_conn(server) as conn:
        await recv(conn)
        await configure(
            conn,
            input={
                "format": PCMU,
                "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
                "turn_detection": {"type": "server_vad", "prefix_padding_ms": 300, "silence_duration_ms": 200},
            },
            output={"format": PCMU},
        )
        # 1000 ms silence, 600 ms of speech-like tone, 500 ms silence, in 20 ms frames like a carrier.
        caller = np.concatenate([np.zeros(8000, np.int16), tone(440, 600, 8000), np.zeros(4000, np.int16)]).astype(
            np.int16
        )
        for start in range(0, len(caller), 160):
            await send(conn, {"type": "input_audio_buffer.append", "audio": mulaw_b64(caller[start : start + 160])})
        events = await recv_until(conn, "rate_limits.updated", "conversation.item.input_audio_transcription.completed")

    started = only(events, "input_audio_buffer.speech_started")[0]
    stopped = only(events, "input_audio_buffer.speech_stopped")[0]
    committed = only(events, "input_audio_buffer.committed")[0]
    assert abs(started["audio_start_ms"] - (1000 - 300)) <= 40
    assert abs(stopped["audio_end_ms"] - (1600 + 200)) <= 40
    item_id = started["item_id"]
    assert item_id.startswith("item_")
    assert stopped["item_id"] == committed["item_id"] == item_id
    assert committed["previous_item_id"] is None

    added, item_done = only(events, "conversation.item.added")[0], only(events, "conversation.item.done")[0]
    for ev in (added, item_done):
        assert ev["item"]["id"] == item_id and ev["item"]["role"] == "user"
        assert ev["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    order = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
        "conversation.item.input_audio_transcription.completed",
    ]
    positions = [index_of(events, t) for t in order]
    assert positions == sorted(positions)

    sim = server.sessions[0]
    user_audio, rate = sim.user_audio[item_id]
    completed = only(events, "conversation.item.input_audio_transcription.completed")[0]
    assert completed["item_id"] == item_id and completed["content_index"] == 0
    assert completed["transcript"] == describe_audio(user_audio, rate)
    assert completed["usage"]["type"] == "tokens"
    assert only(events, "response.done")[0]["response"]["status"] == "completed"

    appended, rate = sim.input_pcm16()
    assert rate == 8000 and len(appended) == len(caller)
    assert np.array_equal(appended, mulaw_to_pcm16(pcm16_to_mulaw(caller)))
    assert [i["role"] for i in sim.items] == ["user", "assistant"]
    assert sim.items[0]["content"][0]["transcript"] == completed["transcript"]
    assert sim.protocol_errors == [] and sim.error_events == []


async def test_barge_in_cancels_response_then_truncate(make_server: ServerFactory) -> None:
    server = await make_server(speed=4, reply_ms=2000, chunk_ms=100)
    async with open_conn(server) as conn:
        await recv(conn)
        await configure(
            conn,
            input={"format": PCMU, "turn_detection": {"type": "server_vad", "silence_duration_ms": 200}},
            output={"format": PCMU},
        )
        await send(conn, {"type": "response.create"})
        before = await recv_until(conn, "response.output_audio.delta")
        await send(conn, {"type": "input_audio_buffer.append", "audio": mulaw_b64(tone(440, 200, 8000))})
        events = before + await recv_until(conn, "response.done", "input_audio_buffer.speech_started")

        assert index_of(events, "input_audio_buffer.speech_started") < index_of(events, "response.done")
        done = only(events, "response.done")[0]["response"]
        assert done["status"] == "cancelled"
        assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
        message = done["output"][0]
        assert message["status"] == "incomplete"
        deltas = only(events, "response.output_audio.delta")
        assert 1 <= len(deltas) < 20
        spoken = only(events, "response.output_audio_transcript.done")[0]["transcript"]
        assert len(spoken) < len("Reply number 1.")
        sim = server.sessions[0]
        sent_ms = sim.assistant_audio_ms[message["id"]]
        assert sent_ms == 100 * len(deltas)

        # The agent truncates to what the caller heard.
        heard = min(sent_ms, 50)
        await send(
            conn,
            {"type": "conversation.item.truncate", "item_id": message["id"], "content_index": 0, "audio_end_ms": heard},
        )
        truncated = (await recv_until(conn, "conversation.item.truncated"))[-1]
        assert (truncated["item_id"], truncated["audio_end_ms"], truncated["content_index"]) == (
            message["id"],
            heard,
            0,
        )
        assert sim.truncations[0]["item_audio_ms"] == sent_ms

        # The caller stops talking: the VAD turn produces a fresh response, which the client then cancels.
        await send(conn, {"type": "input_audio_buffer.append", "audio": mulaw_b64(np.zeros(2400, np.int16))})
        await recv_until(conn, "input_audio_buffer.committed", "response.created")
        await send(conn, {"type": "response.cancel"})
        second = (await recv_until(conn, "response.done"))[-1]["response"]
        assert second["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert sim.protocol_errors == [] and sim.error_events == []


async def test_truncate_success_and_errors(make_server: ServerFactory) -> None:
    server = await make_server(reply_ms=500)
    async with open_conn(server) as conn:
        await recv(conn)
        await configure(conn, input={"format": PCMU, "turn_detection": None}, output={"format": PCMU})
        await send(conn, {"type": "response.create"})
        events = await recv_until(conn, "rate_limits.updated")
        item_id = only(events, "response.done")[0]["response"]["output"][0]["id"]

        async def truncate(target: str, audio_end_ms: int, event_id: str) -> Ev:
            await send(
                conn,
                {
                    "type": "conversation.item.truncate",
                    "event_id": event_id,
                    "item_id": target,
                    "content_index": 0,
                    "audio_end_ms": audio_end_ms,
                },
            )
            return (await recv_until(conn, "conversation.item.truncated" if event_id == "ok" else "error"))[-1]

        ok = await truncate(item_id, 400, "ok")
        assert ok["type"] == "conversation.item.truncated" and ok["audio_end_ms"] == 400
        sim = server.sessions[0]
        full = "Reply number 1."
        assert sim.items[0]["content"][0]["transcript"] == full[: round(len(full) * 400 / 500)]

        too_long = (await truncate(item_id, 450, "evt_long"))["error"]
        assert too_long["code"] == "invalid_value"
        assert too_long["message"] == "Audio content of 400ms is already shorter than 450ms"
        assert too_long["event_id"] == "evt_long"

        user_item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
        await send(conn, {"type": "conversation.item.create", "item": user_item})
        user_id = (await recv_until(conn, "conversation.item.done"))[-1]["item"]["id"]
        not_audio = (await truncate(user_id, 0, "evt_user"))["error"]
        assert not_audio["message"] == "Only model output audio messages can be truncated"
        assert not_audio["event_id"] == "evt_user"

        unknown = (await truncate("item_nope", 0, "evt_unknown"))["error"]
        assert unknown["code"] == "item_truncate_invalid_item_id" and unknown["event_id"] == "evt_unknown"
        assert [t["audio_end_ms"] for t in sim.truncations] == [400]
        assert sim.protocol_errors == []  # timing/state errors are not schema violations


async def test_cancel_and_active_response_errors(make_server: ServerFactory) -> None:
    server = await make_server(speed=4, reply_ms=2000)
    async with open_conn(server) as conn:
        await recv(conn)
        await send(conn, {"type": "response.cancel", "event_id": "evt_cancel_idle"})
        error = (await recv_until(conn, "error"))[-1]["error"]
        assert error["code"] == "response_cancel_not_active"
        assert error["message"] == "Cancellation failed: no active response found"
        assert error["event_id"] == "evt_cancel_idle"

        await send(conn, {"type": "response.create"})
        created = (await recv_until(conn, "response.created"))[-1]["response"]
        await send(conn, {"type": "response.create", "event_id": "evt_second"})
        error = (await recv_until(conn, "error"))[-1]["error"]
        assert error["code"] == "conversation_already_has_active_response"
        assert created["id"] in error["message"] and error["event_id"] == "evt_second"

        await send(conn, {"type": "response.cancel", "response_id": created["id"]})
        done = (await recv_until(conn, "response.done"))[-1]["response"]
        assert done["id"] == created["id"] and done["status"] == "cancelled"
        assert done["status_details"]["reason"] == "client_cancelled"
        # Once done, a new response is accepted straight away.
        await send(conn, {"type": "response.create"})
        await recv_until(conn, "response.created")
        await send(conn, {"type": "response.cancel"})
        await recv_until(conn, "response.done")


async def test_queued_tool_call_and_function_output(make_server: ServerFactory) -> None:
    server = await make_server(reply_ms=300)
    async with open_conn(server) as conn:
        await recv(conn)
        sim = await server.wait_for_session()
        sim.queue_tool_call("lookup_order", {"order_id": "A1"})
        await send(conn, {"type": "response.create"})
        events = await recv_until(conn, "rate_limits.updated")

        types = [e["type"] for e in events]
        call_added = next(e for e in only(events, "response.output_item.added") if e["item"]["type"] == "function_call")
        assert call_added["output_index"] == 1 and call_added["item"]["status"] == "in_progress"
        assert types.index("response.output_audio.done") < events.index(call_added)
        call = call_added["item"]
        assert call["call_id"].startswith("call_") and call["name"] == "lookup_order"
        args_done = only(events, "response.function_call_arguments.done")[0]
        streamed = "".join(e["delta"] for e in only(events, "response.function_call_arguments.delta"))
        assert streamed == args_done["arguments"]
        assert json.loads(args_done["arguments"]) == {"order_id": "A1"}
        assert args_done["call_id"] == call["call_id"] and args_done["name"] == "lookup_order"
        item_done = only(events, "response.output_item.done")[-1]["item"]
        assert item_done["type"] == "function_call" and item_done["status"] == "completed"
        response = only(events, "response.done")[0]["response"]
        assert response["status"] == "completed"
        assert [o["type"] for o in response["output"]] == ["message", "function_call"]

        output = {"type": "function_call_output", "call_id": call["call_id"], "output": json.dumps({"ok": True})}
        await send(conn, {"type": "conversation.item.create", "item": output})
        created = await recv_until(conn, "conversation.item.added", "conversation.item.done")
        assert created[0]["previous_item_id"] == call["id"]
        # No automatic response for a tool result: a cancel finds nothing active.
        await send(conn, {"type": "response.cancel"})
        trailing = await recv_until(conn, "error")
        assert [e["type"] for e in trailing] == ["error"]
        assert [i["type"] for i in sim.items] == ["message", "function_call", "function_call_output"]

        # A tool-call-only response (no audio).
        sim.queue_tool_call("hang_up", {})
        sim.queue_reply(reply_ms=0)
        await send(conn, {"type": "response.create"})
        events = await recv_until(conn, "rate_limits.updated")
        assert not only(events, "response.output_audio.delta")
        response = only(events, "response.done")[0]["response"]
        assert [(o["type"], o["status"]) for o in response["output"]] == [("function_call", "completed")]


async def test_conversation_items_create_delete(make_server: ServerFactory) -> None:
    server = await make_server()
    async with open_conn(server) as conn:
        await recv(conn)
        ids: list[str] = []
        for text in ("first", "second"):
            item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
            await send(conn, {"type": "conversation.item.create", "item": item})
            added, done = await recv_until(conn, "conversation.item.added", "conversation.item.done")
            assert added["item"] == done["item"] and added["item"]["id"].startswith("item_")
            assert added["previous_item_id"] == (ids[-1] if ids else None)
            ids.append(added["item"]["id"])
        sim = server.sessions[0]
        assert [i["content"][0]["text"] for i in sim.items] == ["first", "second"]
        await send(conn, {"type": "conversation.item.delete", "item_id": ids[0]})
        deleted = (await recv_until(conn, "conversation.item.deleted"))[-1]
        assert deleted["item_id"] == ids[0]
        assert [i["id"] for i in sim.items] == [ids[1]]
        assert (await sim.wait_for_client_event("conversation.item.delete"))["item_id"] == ids[0]


async def test_manual_commit_and_clear(make_server: ServerFactory) -> None:
    server = await make_server()
    async with open_conn(server) as conn:
        await recv(conn)
        await configure(conn, input={"format": PCMU, "turn_detection": None})
        await send(conn, {"type": "input_audio_buffer.commit", "event_id": "evt_empty"})
        error = (await recv_until(conn, "error"))[-1]["error"]
        assert (error["code"], error["event_id"]) == ("input_audio_buffer_commit_empty", "evt_empty")

        await send(conn, {"type": "input_audio_buffer.append", "audio": mulaw_b64(tone(300, 200, 8000))})
        await send(conn, {"type": "input_audio_buffer.commit"})
        events = await recv_until(conn, "conversation.item.done")
        assert [e["type"] for e in events] == [
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
        ]
        sim = server.sessions[0]
        assert len(sim.user_audio[events[0]["item_id"]][0]) == 1600

        await send(conn, {"type": "input_audio_buffer.append", "audio": mulaw_b64(tone(300, 200, 8000))})
        await send(conn, {"type": "input_audio_buffer.clear"})
        assert [e["type"] for e in await recv_until(conn, "input_audio_buffer.cleared")] == [
            "input_audio_buffer.cleared"
        ]
        assert len(sim.input_pcm16()[0]) == 3200
        assert sim.protocol_errors == []


@pytest.mark.parametrize("code", [None, 1011], ids=["abort", "close-1011"])
async def test_drop_ends_sdk_iteration(make_server: ServerFactory, code: int | None) -> None:
    server = await make_server()
    async with open_conn(server) as conn:
        await recv(conn)
        sim: SimSession = await server.wait_for_session()
        await sim.drop(code)
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                async for _ in conn:
                    pass
    if code is not None:
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    await server.wait_idle()
    assert server.connections_open == 0


async def test_stop_closes_open_connections(make_server: ServerFactory) -> None:
    server = await make_server(speed=4, reply_ms=2000)
    async with open_conn(server) as conn:
        await recv(conn)
        await send(conn, {"type": "response.create"})
        await recv_until(conn, "response.output_audio.delta")
        assert server.connections_open == 1
        await server.stop()
        assert server.connections_open == 0
        async with asyncio.timeout(5):
            async for _ in conn:  # 1001 going away ends the SDK iteration cleanly
                pass


async def test_http_level_routing_and_compression(make_server: ServerFactory) -> None:
    server = await make_server()
    base = f"ws://127.0.0.1:{server.port}"
    with pytest.raises(InvalidStatus) as not_found:
        async with ws_connect(f"{base}/v1/elsewhere?model=gpt-realtime"):
            pass
    assert not_found.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as no_model:
        async with ws_connect(f"{base}/v1/realtime"):
            pass
    assert no_model.value.response.status_code == 400
    # A permessage-deflate offer (the websockets client default) is accepted.
    async with ws_connect(f"{base}/v1/realtime?model=gpt-realtime-mini", compression="deflate") as ws:
        assert ws.response is not None
        assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
        first = json.loads(await ws.recv())
        assert first["type"] == "session.created" and first["session"]["model"] == "gpt-realtime-mini"
        await ws.send("not json")
        error = json.loads(await ws.recv())
        assert error["error"]["code"] == "invalid_json"
    assert server.sessions[0].protocol_errors


async def test_on_session_hook_scripts_replies_and_auth(make_server: ServerFactory) -> None:
    server = await make_server(api_key="sk-test", reply_text=lambda s: f"Hello from {s.model}.")

    async def script(session: SimSession) -> None:
        session.sim_config.reply_ms = 200  # this session only
        session.queue_reply(transcript="Welcome to the shop.")

    server.on_session = script
    async with (
        AsyncOpenAI(api_key="sk-test", base_url=server.http_base_url) as client,
        client.realtime.connect(model="gpt-realtime") as conn,
    ):
        await recv(conn)
        for expected in ("Welcome to the shop.", "Hello from gpt-realtime."):
            await send(conn, {"type": "response.create"})
            events = await recv_until(conn, "rate_limits.updated")
            assert only(events, "response.output_audio_transcript.done")[0]["transcript"] == expected
            assert len(decode_output(events, "audio/pcm")) == 24000 * 200 // 1000
    assert server.config.reply_ms == 500  # the server-wide config is untouched
    assert server.sessions[0].headers["authorization"] == "Bearer sk-test"

    with pytest.raises(InvalidStatus) as denied:
        async with open_conn(server):  # api_key="x"
            pass
    assert denied.value.response.status_code == 401


async def test_a_reachability_probe_is_not_logged_as_a_failed_handshake(make_server: ServerFactory) -> None:
    """The agent's /readyz probe connects and hangs up; a malformed request is still an error worth a line."""
    server = await make_server()
    errors: list[logging.LogRecord] = []
    logged = asyncio.Event()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record)
            logged.set()

    async def send_and_hang_up(data: bytes) -> None:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(data)
        writer.write_eof()
        await reader.read()  # until the server closes its side
        writer.close()

    handler = Collect(logging.ERROR)
    ws_log = logging.getLogger("agent.engine.server.ws")
    ws_log.addHandler(handler)
    try:
        await send_and_hang_up(b"")  # the probe: logged first, if at all
        await send_and_hang_up(b"GARBAGE / NOPE\r\n\r\n")
        await within(2, logged.wait())
    finally:
        ws_log.removeHandler(handler)
    assert [(r.getMessage(), type(r.exc_info[1]).__name__ if r.exc_info else None) for r in errors] == [
        ("opening handshake failed", "InvalidMessage")
    ]
