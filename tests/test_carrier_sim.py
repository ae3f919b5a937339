"""The simulated Vobiz carrier against a tiny in-test agent over real HTTP and WebSocket on loopback.

The carrier sim is the yardstick for every agent timing test, so it is checked here against the protocol
itself: frame cadence and sizes, playout-paced checkpoint acks, clearAudio semantics, XML continuation and
the webhooks Vobiz sends.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI, Request, Response, WebSocket
from websockets.asyncio.client import ClientConnection

from agent.audio.codecs import (
    Int16Array,
    float_to_pcm16,
    l16_to_pcm16,
    mulaw_to_pcm16,
    pcm16_to_l16,
    pcm16_to_mulaw,
)
from agent.testkit.carrier import (
    CallEndedWithoutStream,
    CallerAudio,
    CarrierProtocolError,
    CarrierSim,
    SimCall,
    SimCallOptions,
)
from agent.testkit.carrier.callbacks import CallbackSender
from agent.waiting import within

# One uvicorn server for the module (its shutdown alone costs ~0.2 s); each test resets the fake agent.
pytestmark = [pytest.mark.timeout(30), pytest.mark.asyncio(loop_scope="module")]

TRANSFER_NUMBER = "+911234567890"


def tone(hz: float, ms: float, rate: int, amplitude: float = 0.3) -> Int16Array:
    t = np.arange(rate * ms / 1000) / rate
    return float_to_pcm16(amplitude * np.sin(2 * np.pi * hz * t))


def dominant_hz(samples: Int16Array, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


# ----------------------------------------------------------------------------------------------------------
# A minimal agent: answer XML, a scripted socket, webhook recorder
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Hook:
    path: str
    method: str
    url: str
    fields: dict[str, str]
    headers: dict[str, str]


@dataclass
class AgentSession:
    ws: WebSocket
    query: dict[str, str]
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    sent: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    stream_id: str = ""
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None
    done: bool = False
    state: dict[str, Any] = field(default_factory=dict)

    def events(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in self.received if m.get("event") == name]

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append((time.monotonic(), message))
        await self.ws.send_text(json.dumps(message))

    async def play(self, samples: Int16Array, content_type: str = "audio/x-mulaw", rate: int = 8000) -> None:
        """Unpaced 20 ms playAudio chunks, the way an agent forwards a TTS burst."""
        step = rate // 50
        for i in range(0, len(samples), step):
            chunk = samples[i : i + step]
            raw = pcm16_to_mulaw(chunk) if content_type == "audio/x-mulaw" else pcm16_to_l16(chunk)
            media = {"contentType": content_type, "sampleRate": rate, "payload": base64.b64encode(raw).decode()}
            await self.send({"event": "playAudio", "streamId": self.stream_id, "media": media})

    async def checkpoint(self, name: str) -> None:
        await self.send({"event": "checkpoint", "streamId": self.stream_id, "name": name})

    async def clear(self) -> None:
        await self.send({"event": "clearAudio", "streamId": self.stream_id})

    async def stop(self) -> None:
        await self.send({"event": "stop", "streamId": self.stream_id})


SessionHandler = Callable[[AgentSession], Awaitable[None]]
MessageHandler = Callable[[AgentSession, dict[str, Any]], Awaitable[None]]


class FakeAgent:
    def __init__(self) -> None:
        self.port = 0
        self.reset()
        self.app = self._build_app()

    def reset(self) -> None:
        self.stream_content_type = "audio/x-mulaw;rate=8000"
        self.xml_media_type = "application/xml"
        self.answer_override: str | None = None
        self.status_callback = False
        self.hooks: list[Hook] = []
        self.sessions: list[AgentSession] = []
        self.on_start: SessionHandler | None = None
        self.on_message: MessageHandler | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hooks_for(self, path: str | None = None, event: str | None = None) -> list[Hook]:
        return [
            h for h in self.hooks if (path is None or h.path == path) and (event is None or h.fields["Event"] == event)
        ]

    def session(self) -> AgentSession:
        return self.sessions[0]

    def media_count(self) -> int:
        return len(self.sessions[0].events("media")) if self.sessions else 0

    def answer_xml(self, call_uuid: str) -> str:
        # `&amp;` in the URL and whitespace around it: the sim must unescape and strip like Vobiz.
        status = (
            f' statusCallbackUrl="{self.base_url}/vobiz/stream-status" statusCallbackMethod="POST"'
            if self.status_callback
            else ""
        )
        return f"""<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Stream bidirectional="true" audioTrack="inbound" keepCallAlive="true"
          contentType="{self.stream_content_type}"{status}>
    ws://127.0.0.1:{self.port}/ws?call={call_uuid}&amp;token=t0k
  </Stream>
  <Redirect method="POST">{self.base_url}/vobiz/after</Redirect>
  <Speak>never reached</Speak>
</Response>"""

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        async def record(request: Request) -> Hook:
            if request.method == "GET":
                fields = dict(request.query_params)
            else:
                form = await request.form()
                fields = {k: str(v) for k, v in form.items()}
            hook = Hook(request.url.path, request.method, str(request.url), fields, dict(request.headers))
            self.hooks.append(hook)
            return hook

        def xml(body: str) -> Response:
            return Response(content=body, media_type=self.xml_media_type)

        @app.api_route("/vobiz/answer", methods=["GET", "POST"])
        async def answer(request: Request) -> Response:
            hook = await record(request)
            if hook.fields.get("Event") == "Hangup":
                return xml("<Response><Hangup/></Response>")
            return xml(self.answer_override or self.answer_xml(hook.fields["CallUUID"]))

        @app.post("/vobiz/after")
        async def after(request: Request) -> Response:
            await record(request)
            return xml('<Response><Speak voice="WOMAN">Goodbye</Speak><Hangup/></Response>')

        @app.post("/vobiz/transfer")
        async def transfer(request: Request) -> Response:
            await record(request)
            return xml(
                f"<Response><Speak>Connecting you</Speak><Dial><Number>{TRANSFER_NUMBER}</Number></Dial></Response>"
            )

        @app.post("/vobiz/stream-status")
        async def stream_status(request: Request) -> Response:
            await record(request)
            return Response(status_code=200)

        @app.websocket("/ws")
        async def stream(websocket: WebSocket) -> None:
            await websocket.accept()
            session = AgentSession(websocket, dict(websocket.query_params))
            self.sessions.append(session)
            try:
                while not session.done:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        session.close_code = message.get("code")
                        break
                    data = json.loads(message["text"])
                    session.received.append((time.monotonic(), data))
                    if data.get("event") == "start":
                        session.stream_id = data.get("start", {}).get("streamId") or data.get("streamId", "")
                        if self.on_start:
                            await self.on_start(session)
                    elif self.on_message:
                        await self.on_message(session, data)
            finally:
                session.closed.set()

        return app


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server() -> AsyncIterator[FakeAgent]:
    fake = FakeAgent()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # listening before uvicorn starts, so no readiness wait is needed
    fake.port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(fake.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield fake
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest_asyncio.fixture(loop_scope="module")
async def agent(server: FakeAgent) -> FakeAgent:
    server.reset()
    return server


@pytest_asyncio.fixture(loop_scope="module")
async def sim(agent: FakeAgent) -> AsyncIterator[CarrierSim]:
    carrier = CarrierSim(agent.base_url)
    try:
        yield carrier
    finally:
        await carrier.aclose()


async def until_media(call: SimCall, agent: FakeAgent, frames: int = 1) -> AgentSession:
    await call.wait_for(lambda: agent.media_count() >= frames, 3, f"{frames} media frames at the agent")
    return agent.session()


async def closed(session: AgentSession) -> int | None:
    await within(3, session.closed.wait())
    return session.close_code


# ----------------------------------------------------------------------------------------------------------
# Answer webhook, XML and start
# ----------------------------------------------------------------------------------------------------------


async def test_answer_webhook_unescaped_stream_url_and_nested_start(agent: FakeAgent, sim: CarrierSim) -> None:
    call = await sim.place_call(call_uuid="call-1")
    session = await until_media(call, agent)

    (answer,) = agent.hooks
    assert (answer.path, answer.method, answer.headers["user-agent"]) == ("/vobiz/answer", "POST", "Vobiz")
    assert answer.fields == {
        "CallUUID": "call-1",
        "From": "+919000000001",
        "To": "+918000000002",
        "Direction": "inbound",
        "CallStatus": "ringing",
        "Event": "StartApp",
    }
    assert session.query == {"call": "call-1", "token": "t0k"}
    assert call.stream_url == f"ws://127.0.0.1:{agent.port}/ws?call=call-1&token=t0k"
    uuid.UUID(call.stream_id)
    assert session.received[0][1] == {
        "sequenceNumber": 0,
        "event": "start",
        "start": {
            "callId": "call-1",
            "streamId": call.stream_id,
            "accountId": "500025",
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
        },
        "extra_headers": "{}",
    }
    assert call.protocol_errors == []


async def test_get_answer_and_legacy_flat_start(agent: FakeAgent, sim: CarrierSim) -> None:
    call = await sim.place_call(options=SimCallOptions(answer_method="GET", legacy_flat_start=True))
    session = await until_media(call, agent)

    assert agent.hooks[0].method == "GET"
    assert agent.hooks[0].fields["CallUUID"] == call.call_uuid
    assert session.received[0][1] == {
        "event": "start",
        "streamId": call.stream_id,
        "accountId": "MA_SIMULATED",
        "callId": call.call_uuid,
        "from": "+919000000001",
        "to": "+918000000002",
        "direction": "inbound",
        "contentType": "audio/x-mulaw;rate=8000",
        "audioTrack": "inbound",
    }
    assert session.events("media")[0][1]["sequenceNumber"] == 1


@pytest.mark.parametrize(
    ("mutation", "match"),
    [
        ({"xml_media_type": "text/html"}, "Content-Type"),
        (
            {"answer_override": '<Response><Stream bidirectional="true">ws://127.0.0.1:9/ws</Stream></Response>'},
            "keepCallAlive",
        ),
        (
            {
                "answer_override": '<Response><Stream bidirectional="true" audioTrack="both" keepCallAlive="true">'
                "ws://127.0.0.1:9/ws</Stream></Response>"
            },
            "audioTrack",
        ),
        (
            {"answer_override": '<Response><Stream keepCallAlive="true">ws://127.0.0.1:9/ws</Stream></Response>'},
            "bidirectional",
        ),
        ({"answer_override": "<Response><Stream>ws://h/ws?a=1&b=2</Stream></Response>"}, "Invalid Answer XML"),
        ({"answer_override": "<Response/><Response/>"}, "Invalid Answer XML"),
        ({"answer_override": "<Answer><Hangup/></Answer>"}, "exactly one <Response>"),
    ],
)
async def test_answer_rules_fail_loudly(
    agent: FakeAgent, sim: CarrierSim, mutation: dict[str, str], match: str
) -> None:
    for name, value in mutation.items():
        setattr(agent, name, value)
    with pytest.raises(CarrierProtocolError, match=match):
        await sim.place_call()
    assert agent.sessions == []


async def test_answer_without_stream_ends_the_call(agent: FakeAgent, sim: CarrierSim) -> None:
    agent.answer_override = '<Response><Speak>We are busy</Speak><Hangup reason="busy"/></Response>'
    with pytest.raises(CallEndedWithoutStream) as info:
        await sim.place_call()
    assert [a.verb for a in info.value.actions] == ["Speak", "Hangup"]
    (hangup,) = agent.hooks_for(event="Hangup")
    assert hangup.fields["HangupCause"] == "USER_BUSY"


# ----------------------------------------------------------------------------------------------------------
# Caller media
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "big_endian", "frame_bytes"),
    [
        ("audio/x-mulaw;rate=8000", False, 160),
        ("audio/x-l16;rate=8000", False, 320),
        ("audio/x-l16;rate=16000", False, 640),
        ("audio/x-l16;rate=16000", True, 640),
    ],
)
async def test_media_frames_real_time_sizes_and_numbering(
    agent: FakeAgent, sim: CarrierSim, content_type: str, big_endian: bool, frame_bytes: int
) -> None:
    agent.stream_content_type = content_type
    call = await sim.place_call([CallerAudio.tone(400, 1000)], SimCallOptions(l16_big_endian=big_endian))
    frames = (await until_media(call, agent, 26)).events("media")[:26]
    messages = [m for _, m in frames]

    payloads = [base64.b64decode(m["media"]["payload"]) for m in messages]
    assert {len(p) for p in payloads} == {frame_bytes}
    assert [m["sequenceNumber"] for m in messages] == list(range(1, 27))
    assert [m["media"]["chunk"] for m in messages] == list(range(1, 27))
    assert all(isinstance(m["media"]["timestamp"], str) for m in messages)
    assert set(np.diff([int(m["media"]["timestamp"]) for m in messages])) == {20}
    assert {(m["streamId"], m["media"]["track"], m["extra_headers"]) for m in messages} == {
        (call.stream_id, "inbound", "{}")
    }

    # Real time without drift: sent on t0 + (k+1)*20 ms, and received at ~50 frames/s.
    start = call.events("start_sent")[0].t
    lateness = np.array([e.t - start - (k + 1) * 0.020 for k, e in enumerate(call.events("frame_sent")[:26])])
    assert lateness.min() > -0.001 and np.median(lateness) < 0.015 and lateness.max() < 0.040
    assert lateness[-8:].mean() - lateness[:8].mean() < 0.010  # scheduler jitter, but no drift
    arrivals = np.array([t for t, _ in frames])
    assert abs((arrivals[-1] - arrivals[0]) - 25 * 0.020) < 0.035
    assert np.diff(arrivals).max() < 0.080

    rate = call.media_format.rate
    data = b"".join(payloads)
    if content_type.startswith("audio/x-mulaw"):
        pcm = mulaw_to_pcm16(data)
    else:
        pcm = l16_to_pcm16(data, big_endian=big_endian)
        assert abs(dominant_hz(l16_to_pcm16(data, big_endian=not big_endian), rate) - 400) > 50
    assert abs(dominant_hz(pcm, rate) - 400) < 15
    assert len(call.caller_track()) == call.frames_sent * rate // 50


async def test_dtmf_and_raw_frames_share_the_sequence(agent: FakeAgent, sim: CarrierSim) -> None:
    call = await sim.place_call()
    session = await until_media(call, agent, 2)
    await call.send_dtmf("5")
    await call.send_raw('{"event":"bogus"}')
    await call.wait_for(lambda: bool(session.events("dtmf") and session.events("bogus")), 3)

    dtmf = session.events("dtmf")[0][1]
    assert dtmf["streamId"] == call.stream_id
    assert dtmf["dtmf"]["digit"] == "5" and dtmf["dtmf"]["track"] == "inbound"
    assert isinstance(dtmf["dtmf"]["timestamp"], str)
    numbers = [m["sequenceNumber"] for _, m in session.received if "sequenceNumber" in m]
    assert numbers == list(range(len(numbers)))
    with pytest.raises(ValueError):
        await call.send_dtmf("x")


async def test_what_goes_on_the_wire_is_the_caller_track_even_when_a_frame_is_changed_after_it_was_taken(
    agent: FakeAgent, sim: CarrierSim
) -> None:
    """Caller audio is encoded for the wire when it is pushed; a frame someone changes afterwards (a test's echo
    mixer wraps _next_caller_frame) must go out as changed, and the caller track must say what went out."""
    call = await sim.place_call([CallerAudio.tone(400, 300), CallerAudio.tone(900, 300)])
    own = call._next_caller_frame
    call._next_caller_frame = lambda: (own() // 3).astype(np.int16)  # type: ignore[method-assign]
    session = await until_media(call, agent, 25)
    payloads = b"".join(base64.b64decode(m["media"]["payload"]) for _, m in session.events("media")[:25])
    assert payloads == pcm16_to_mulaw(call.caller_track()[: 25 * 160])
    assert abs(int(np.abs(mulaw_to_pcm16(payloads)).max()) - 0.3 * 32767 / 3) < 400


async def test_a_frame_listener_runs_after_each_frame_and_what_it_says_goes_out_next(
    agent: FakeAgent, sim: CarrierSim
) -> None:
    call = await sim.place_call()
    seen: list[int] = []

    def listener() -> None:
        seen.append(call.frames_sent)
        if call.frames_sent == 3:
            call.say(CallerAudio.tone(400, 40))  # frames 4 and 5

    call.frame_listeners.append(listener)
    session = await until_media(call, agent, 8)
    assert seen[:6] == [1, 2, 3, 4, 5, 6]
    payloads = [base64.b64decode(m["media"]["payload"]) for _, m in session.events("media")[:8]]
    loud = [int(np.abs(mulaw_to_pcm16(p)).max()) > 1000 for p in payloads]
    assert loud == [False, False, False, True, True, False, False, False]


class _YieldingSocket:
    """A pass-through wrapper whose every send yields to the loop first: the carrier cannot write frames straight
    to the socket and must take its queued path."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    def __aiter__(self) -> Any:
        return self._ws.__aiter__()

    async def send(self, message: str) -> None:
        await asyncio.sleep(0)
        await self._ws.send(message)


async def test_frames_through_a_wrapped_socket_keep_their_clock_and_numbering(
    agent: FakeAgent, sim: CarrierSim
) -> None:
    call = await sim.place_call([CallerAudio.tone(400, 600)])
    call.wrap_socket(lambda ws: cast(ClientConnection, _YieldingSocket(ws)))
    session = await until_media(call, agent, 2)
    await asyncio.gather(call.send_dtmf("1"), call.send_dtmf("2"))
    await until_media(call, agent, 20)
    numbers = [m["sequenceNumber"] for _, m in session.received if "sequenceNumber" in m]
    assert numbers == list(range(len(numbers)))
    chunks = [m["media"]["chunk"] for _, m in session.events("media")]
    assert chunks == list(range(1, len(chunks) + 1))
    assert [m["dtmf"]["digit"] for _, m in session.events("dtmf")] == ["1", "2"]
    start = call.events("start_sent")[0].t
    lateness = [e.t - start - (k + 1) * 0.020 for k, e in enumerate(call.events("frame_sent")[:20])]
    assert min(lateness) > -0.001 and max(lateness) < 0.040


# ----------------------------------------------------------------------------------------------------------
# Playout, checkpoints, clearAudio
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("content_type", "rate"), [("audio/x-mulaw", 8000), ("audio/x-l16", 24000)])
async def test_checkpoint_acked_only_after_real_time_playout(
    agent: FakeAgent, sim: CarrierSim, content_type: str, rate: int
) -> None:
    async def greet(session: AgentSession) -> None:
        await session.play(tone(440, 1000, rate), content_type, rate)
        await session.checkpoint("greeting")

    agent.on_start = greet
    call = await sim.place_call()
    await call.wait_checkpoint("greeting", timeout=3)

    first_audio = call.events("play_audio_received")[0].t
    acked = call.events("played_stream_sent")[0].t
    assert 0.9999 <= acked - first_audio <= 1.080
    assert call.played_ms == pytest.approx(1000, abs=0.5)
    assert (call.played_rate, len(call.played)) == (rate, rate)
    assert abs(dominant_hz(call.played, rate) - 440) < 5

    session = agent.session()
    await call.wait_for(lambda: bool(session.events("playedStream")), 2, "the ack at the agent")
    ((ack_at, ack),) = session.events("playedStream")
    assert ack == {"event": "playedStream", "name": "greeting", "streamId": call.stream_id}
    first_play_sent = next(t for t, m in session.sent if m["event"] == "playAudio")
    assert ack_at - first_play_sent >= 1.0

    # The bot track is on the call clock: playout starts on the first 20 ms tick after the audio arrived.
    start = call.events("start_sent")[0].t
    began_ms = np.flatnonzero(call.bot_track())[0] * 1000 / rate
    arrived_ms = (first_audio - start) * 1000
    assert arrived_ms - 0.5 <= began_ms <= arrived_ms + 21


async def test_clear_audio_drops_queue_and_pending_checkpoint(agent: FakeAgent, sim: CarrierSim) -> None:
    async def greet(session: AgentSession) -> None:
        await session.play(tone(440, 1000, 8000))
        await session.checkpoint("greeting")

    async def barge_in(session: AgentSession, message: dict[str, Any]) -> None:
        if message["event"] == "media" and not session.state.get("cleared"):
            pcm = mulaw_to_pcm16(base64.b64decode(message["media"]["payload"]))
            if np.abs(pcm).max() > 3000:
                session.state["cleared"] = True
                await session.clear()
        elif message["event"] == "clearedAudio":
            await session.play(tone(660, 100, 8000))
            await session.checkpoint("after")

    agent.on_start, agent.on_message = greet, barge_in
    call = await sim.place_call([CallerAudio.after_bot_audio(300, CallerAudio.tone(1000, 400, 0.5))])
    # FIFO acks: once "after" is acked, an ack for "greeting" could only have come earlier.
    await call.wait_checkpoint("after", timeout=4)

    (clear,) = call.clears
    assert 300 <= clear.played_ms_at_clear <= 380
    assert clear.played_ms_at_clear + clear.queued_ms_dropped == pytest.approx(1000, abs=0.2)
    assert clear.dropped_checkpoints == ("greeting",)
    assert call.acked_checkpoints == ["after"]
    assert call.played_ms == pytest.approx(clear.played_ms_at_clear + 100, abs=0.2)
    kinds = [e.kind for e in call.timeline]
    assert kinds.index("clear_received") < kinds.index("cleared_sent")

    session = agent.session()
    await call.wait_for(lambda: bool(session.events("playedStream")), 2, "the ack at the agent")
    assert [m for _, m in session.events("clearedAudio")] == [{"event": "clearedAudio", "streamId": call.stream_id}]
    assert [m["name"] for _, m in session.events("playedStream")] == ["after"]

    played = call.played
    assert abs(dominant_hz(played[:-800], 8000) - 440) < 10
    assert abs(dominant_hz(played[-800:], 8000) - 660) < 15

    # Caller and bot tracks share the call clock: the caller starts 300 ms into the bot's audio.
    bot_started = np.flatnonzero(call.bot_track())[0] / 8
    caller_started = np.flatnonzero(np.abs(call.caller_track()) > 3000)[0] / 8
    # (Cues are evaluated when the caller loop wakes, so an overloaded loop can shift this by a frame.)
    assert 280 <= caller_started - bot_started <= 345


async def test_malformed_commands_are_recorded(agent: FakeAgent, sim: CarrierSim) -> None:
    async def misbehave(session: AgentSession) -> None:
        sid = session.stream_id

        async def play(content_type: str, rate: int, payload: str = "AAAA", stream_id: str = sid) -> None:
            media = {"contentType": content_type, "sampleRate": rate, "payload": payload}
            await session.send({"event": "playAudio", "streamId": stream_id, "media": media})

        await play("audio/wav", 8000)
        await play("audio/x-mulaw", 16000)
        await play("audio/x-l16", 8000, payload="@@not base64@@")
        await play("audio/x-mulaw", 8000, stream_id="someone-else")
        await session.send({"event": "playAudio", "streamId": sid})
        await session.ws.send_text("not json {")
        await session.send({"event": "sendDTMF", "dtmf": "12"})
        await session.send({"event": "mark", "streamId": sid})
        await session.send({"event": "checkpoint", "streamId": sid})
        await session.checkpoint("done")

    agent.on_start = misbehave
    call = await sim.place_call()
    await call.wait_checkpoint("done", timeout=3)

    expected = [
        "contentType 'audio/wav'",
        "sampleRate 16000",
        "not valid base64",
        "streamId 'someone-else'",
        "without a media object",
        "not valid JSON",
        "sendDTMF",
        "unknown command event 'mark'",
        "checkpoint without a non-empty string name",
    ]
    assert len(call.protocol_errors) == len(expected)
    for error, fragment in zip(call.protocol_errors, expected, strict=True):
        assert fragment in error
    assert call.played_ms == 0 and call.events("play_audio_received") == []


# ----------------------------------------------------------------------------------------------------------
# How the stream ends
# ----------------------------------------------------------------------------------------------------------


async def test_caller_hangup_posts_hangup_webhook(agent: FakeAgent, sim: CarrierSim) -> None:
    call = await sim.place_call()
    session = await until_media(call, agent)
    await call.hangup()

    assert call.end_reason == "caller_hangup" and call.after_stream == []
    assert await closed(session) == 1000
    (hangup,) = agent.hooks_for("/vobiz/answer", "Hangup")  # no hangup_url: Vobiz uses the answer URL
    assert hangup.fields["CallUUID"] == call.call_uuid
    assert hangup.fields["HangupCause"] == "NORMAL_CLEARING" and hangup.fields["HangupSource"] == "Caller"
    assert hangup.fields["CallStatus"] == "completed" and hangup.fields["Duration"].isdigit()
    assert agent.hooks_for("/vobiz/after") == []


def greet_then_stop(agent: FakeAgent, greeting_ms: int) -> None:
    """The agent plays a greeting, checkpoints it as "bye" and sends `stop` once that played; status callbacks on."""

    async def greet(session: AgentSession) -> None:
        await session.play(tone(440, greeting_ms, 8000))
        await session.checkpoint("bye")

    async def stop_after_bye(session: AgentSession, message: dict[str, Any]) -> None:
        if message["event"] == "playedStream" and message["name"] == "bye":
            await session.stop()

    agent.on_start, agent.on_message, agent.status_callback = greet, stop_after_bye, True


async def test_stop_runs_the_xml_after_stream(agent: FakeAgent, sim: CarrierSim) -> None:
    greet_then_stop(agent, 200)
    call = await sim.place_call()
    await call.wait_ended(timeout=4)

    assert (call.end_reason, call.close_code) == ("agent_stop", 1000)
    assert call.played_ms == pytest.approx(200, abs=0.2)
    kinds = [e.kind for e in call.timeline]
    assert kinds.index("stop_received") < kinds.index("ws_closed")
    assert [a.verb for a in call.after_stream] == ["Redirect", "Speak", "Hangup"]
    assert call.after_stream[0].detail["url"] == f"{agent.base_url}/vobiz/after"
    assert call.after_stream[1].text == "Goodbye"
    assert await closed(agent.session()) == 1000

    (redirect,) = agent.hooks_for("/vobiz/after")
    assert redirect.fields["Event"] == "Redirect" and redirect.fields["CallStatus"] == "in-progress"
    assert redirect.fields["CallUUID"] == call.call_uuid
    (hangup,) = agent.hooks_for(event="Hangup")
    assert hangup.fields["HangupSource"] == "Answer XML"
    status = agent.hooks_for("/vobiz/stream-status")
    assert sorted(h.fields["Event"] for h in status) == ["PlayedStream", "StartStream", "StopStream"]
    assert {h.fields["StreamID"] for h in status} == {call.stream_id}


async def test_status_callbacks_through_the_shared_sender_are_the_requests_httpx_sends(agent: FakeAgent) -> None:
    """Load tests send stream status callbacks through a CallbackSender (kept-alive HTTP/1.1, no httpx): the agent
    gets the same signed form posts, and the call records their answers like any webhook's."""
    greet_then_stop(agent, 100)
    sender = CallbackSender()
    try:
        async with CarrierSim(agent.base_url, callbacks=sender) as carrier:
            call = await carrier.place_call(options=SimCallOptions(auth_token="s3cret"))
            await call.wait_ended(timeout=4)
    finally:
        await sender.aclose()
    status = agent.hooks_for("/vobiz/stream-status")
    assert [h.fields["Event"] for h in status] == ["StartStream", "PlayedStream", "StopStream"]
    assert status[1].fields["Name"] == "bye" and {h.fields["StreamID"] for h in status} == {call.stream_id}
    for hook in status:
        assert hook.method == "POST" and hook.headers["user-agent"] == "Vobiz"
        assert hook.headers["content-type"] == "application/x-www-form-urlencoded"
        assert {"x-vobiz-signature-v3", "x-vobiz-signature-v3-nonce", "x-vobiz-signature-v2"} <= set(hook.headers)
    recorded = [w for w in call.webhooks if w.event in ("StartStream", "PlayedStream", "StopStream")]
    assert [(w.event, w.status, w.error) for w in recorded] == [
        ("StartStream", 200, None),
        ("PlayedStream", 200, None),
        ("StopStream", 200, None),
    ]


async def test_agent_closing_the_socket_also_continues_the_xml(agent: FakeAgent, sim: CarrierSim) -> None:
    async def close_now(session: AgentSession) -> None:
        session.done = True
        await session.ws.close(1000)

    agent.on_start = close_now
    call = await sim.place_call()
    await call.wait_ended(timeout=3)
    assert (call.end_reason, call.close_code) == ("agent_closed", 1000)
    assert [a.verb for a in call.after_stream] == ["Redirect", "Speak", "Hangup"]


async def test_network_drop_aborts_without_close_frame(agent: FakeAgent, sim: CarrierSim) -> None:
    call = await sim.place_call()
    session = await until_media(call, agent)
    await call.drop()
    assert (call.end_reason, call.close_code) == ("network_drop", 1006)
    assert await closed(session) != 1000
    assert [a.verb for a in call.after_stream] == ["Redirect", "Speak", "Hangup"]


async def test_transfer_runs_the_target_xml(agent: FakeAgent, sim: CarrierSim) -> None:
    call = await sim.place_call()
    session = await until_media(call, agent)
    await call.transfer_to(f"{agent.base_url}/vobiz/transfer")

    assert call.end_reason == "transfer"
    assert await closed(session) == 1000
    assert [a.verb for a in call.after_stream] == ["Transfer", "Speak", "Dial"]
    assert call.after_stream[2].detail["number"] == TRANSFER_NUMBER
    (transfer,) = agent.hooks_for("/vobiz/transfer")
    assert transfer.fields["Event"] == "Transfer" and transfer.fields["CallUUID"] == call.call_uuid
    assert agent.hooks_for("/vobiz/after") == []
    assert agent.hooks_for(event="Hangup")[0].fields["HangupSource"] == "Callee"


async def test_webhooks_are_signed_when_a_token_is_set(agent: FakeAgent, sim: CarrierSim) -> None:
    try:
        from agent.protocol.vobiz.signature import verify_signature
    except ImportError:
        pytest.skip("agent.protocol.vobiz.signature is not available yet")
    call = await sim.place_call(options=SimCallOptions(auth_token="s3cret"))
    await until_media(call, agent)
    await call.hangup()

    assert [h.fields["Event"] for h in agent.hooks] == ["StartApp", "Hangup"]
    for hook in agent.hooks:
        assert verify_signature(hook.headers, hook.url, ["s3cret"]).matched == "v3"
        assert not verify_signature(hook.headers, hook.url, ["wrong"])
        assert "x-vobiz-signature-v2" in hook.headers
