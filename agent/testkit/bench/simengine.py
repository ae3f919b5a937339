"""The local Realtime engine in a process of its own, instrumented for the bench.

Run by the bench as ``python -m agent.testkit.bench.simengine --port P ...``. It serves the GA protocol with
:class:`agent.engine.RealtimeServer` and, when a session closes, boils its traffic down to
what the bench needs (timestamps, frame digests, response starts, truncations, errors) and drops the raw
events and audio. Plain HTTP on the same port:

* ``GET /bench/health``: ``ok`` once serving;
* ``GET /bench/status``: JSON with the number of open sessions;
* ``GET /bench/drain``: JSON with every closed (and still open) session's summary, then forgets them.

Replies are a tone plus low-level noise drawn fresh for every response, so each response's first audio bytes
are unique and can be found again on the simulated carrier.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import functools
import gc
import json
import resource
import signal
import sys
from collections import Counter
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from agent.audio.codecs import Int16Array, float_to_pcm16
from agent.engine import (
    RealtimeServer,
    RealtimeSimConfig,
    Reply,
    ReplyRequest,
    SimSession,
    describe_audio,
    sine_tone,
)
from agent.heap import freeze_startup_heap
from agent.testkit.bench.tool import LOAD_GC_THRESHOLDS, run_async
from agent.testkit.bench.wire import MULAW_FRAME_BYTES, PREFIX_CHARS, LoopLag, frame_key
from agent.waiting import within


@functools.lru_cache(maxsize=16)
def _tone(hz: float, amplitude: float, duration_ms: int, sample_rate: int) -> npt.NDArray[np.float64]:
    """The tone under every reply, synthesised once per shape (only the noise on top is fresh per response)."""
    tone: npt.NDArray[np.float64] = sine_tone(hz, amplitude, duration_ms, sample_rate).astype(np.float64)
    tone.setflags(write=False)
    return tone


class NoisyToneReplies:
    """A tone with a little fresh noise on top: sounds like the default tone, but no two responses match."""

    def __init__(self, noise_amplitude: float) -> None:
        self._rng = np.random.default_rng()
        self._noise = noise_amplitude

    async def transcribe(self, audio: Int16Array, sample_rate: int) -> str:
        return describe_audio(audio, sample_rate)

    async def reply(self, request: ReplyRequest) -> Reply:
        cfg = request.session.sim_config
        text = request.transcript or f"Reply number {request.number}."
        fmt = request.audio_format
        if fmt is None or request.reply_ms <= 0:
            return Reply(transcript=text)
        tone = _tone(cfg.tone_hz, cfg.tone_amplitude, request.reply_ms, fmt.sample_rate)
        noise = self._rng.uniform(-self._noise, self._noise, len(tone)) * 32767.0
        return Reply(transcript=text, audio=float_to_pcm16((tone + noise) / 32767.0))


def _response(rid: str, t_created: float | None) -> dict[str, Any]:
    # audio_sent: (engine send time, the response's audio ms sent so far) per delta
    return {"id": rid, "t_created": t_created, "t_first_delta": None, "item_id": None, "prefix": None, "audio_sent": []}


def _b64_len(text: str) -> int:
    """Decoded size of a base64 string, without decoding it."""
    return len(text) // 4 * 3 - text[-2:].count("=")


def summarize(session: SimSession) -> dict[str, Any]:
    """Everything the bench matches on, without audio: a few hundred KB for a 20 s call at most.

    Its many small rows are tuples (JSON arrays all the same): the collector stops tracking tuples of numbers and
    strings, where lists would be walked by every full collection for as long as the summary waits to be drained
    (hundreds of ms each once 100 calls had closed)."""
    pcmu = session.input_format.type == "audio/pcmu"
    appends: list[tuple[float, int, tuple[str, ...]]] = []
    truncates: list[dict[str, Any]] = []
    client_counts: Counter[str] = Counter()
    for event in session.client_events:
        kind = str(event.get("type"))
        client_counts[kind] += 1
        t = float(event["_t"])
        if kind == "input_audio_buffer.append":
            try:
                data = base64.b64decode(event.get("audio", ""), validate=True)
            except (binascii.Error, ValueError):
                continue
            keys = (
                tuple(frame_key(data[i : i + MULAW_FRAME_BYTES]) for i in range(0, len(data), MULAW_FRAME_BYTES))
                if pcmu
                else ()
            )
            appends.append((t, len(data), keys))
        elif kind == "conversation.item.truncate":
            truncates.append({"t": t, "item_id": event.get("item_id"), "audio_end_ms": event.get("audio_end_ms")})
    responses: dict[str, dict[str, Any]] = {}
    out_bytes_per_ms = 8.0 if session.output_format.type in ("audio/pcmu", "audio/pcma") else 48.0
    speech_started: list[float] = []
    speech_stopped: list[float] = []
    errors: list[str] = []
    server_counts: Counter[str] = Counter()
    for event in session.server_events:
        kind = str(event.get("type"))
        server_counts[kind] += 1
        t = float(event["_t"])
        if kind == "input_audio_buffer.speech_started":
            speech_started.append(t)
        elif kind == "input_audio_buffer.speech_stopped":
            speech_stopped.append(t)
        elif kind == "response.created":
            rid = str(event["response"]["id"])
            responses[rid] = _response(rid, t)
        elif kind == "response.output_audio.delta":
            rid = str(event.get("response_id"))
            resp = responses.setdefault(rid, _response(rid, None))
            delta = str(event.get("delta", ""))
            if resp["t_first_delta"] is None:
                resp["t_first_delta"] = t
                resp["item_id"] = event.get("item_id")
                resp["prefix"] = delta[:PREFIX_CHARS]
            # When each stretch of the answer left the engine: a playout gap is the engine's doing when the audio
            # the carrier ran out of had not been sent yet.
            ends = resp["audio_sent"]
            end_ms = (ends[-1][1] if ends else 0.0) + _b64_len(delta) / out_bytes_per_ms
            ends.append((t, round(end_ms, 3)))
        elif kind == "response.done":
            rid = str(event["response"]["id"])
            if rid in responses:
                responses[rid]["status"] = event["response"].get("status")
                responses[rid]["t_done"] = t
        elif kind == "error":
            err = event.get("error") or {}
            errors.append(f"{err.get('code')}: {err.get('message')}")
    td = session.session_config["audio"]["input"].get("turn_detection")
    return {
        "id": session.id,
        "opened": float(session.server_events[0]["_t"]) if session.server_events else None,
        "input_format": session.input_format.type,
        "output_format": session.output_format.type,
        "extensions": session.headers.get("sec-websocket-extensions", ""),
        "turn_detection": td if isinstance(td, dict) else None,
        "appends": appends,
        "truncates": truncates,
        "truncations_ok": [
            {"t": x["_t"], "item_id": x["item_id"], "audio_end_ms": x["audio_end_ms"]} for x in session.truncations
        ],
        "speech_started": speech_started,
        "speech_stopped": speech_stopped,
        "responses": list(responses.values()),
        "errors": errors,
        "protocol_errors": list(session.protocol_errors),
        "client_counts": dict(client_counts),
        "server_counts": dict(server_counts),
        "close_code": session.close_code,
    }


class BenchEngine(RealtimeServer):
    """RealtimeServer that summarizes each session when it closes and answers the bench over plain HTTP, through
    the server's public hooks (``on_session``, ``on_session_closed``, ``http_handler``)."""

    def __init__(self, config: RealtimeSimConfig, host: str, port: int, reply_noise: float) -> None:
        super().__init__(config, host, port)
        self._reply_noise = reply_noise
        self._open: list[SimSession] = []
        self._summaries: list[dict[str, Any]] = []
        self.loop_lag = LoopLag()  # how late this engine's loop wakes up: a busy engine stamps events late
        self.on_session = self._register
        self.on_session_closed = self._retire
        self.http_handler = self._bench_request

    def _register(self, session: SimSession) -> None:
        session.reply_source = NoisyToneReplies(self._reply_noise)
        self._open.append(session)

    def _retire(self, session: SimSession) -> None:
        with contextlib.suppress(ValueError):
            self._open.remove(session)
        try:
            self._summaries.append(summarize(session))
        except Exception as exc:  # a summary bug must not take the engine down mid-run
            self.internal_errors.append(f"summary of {session.id}: {type(exc).__name__}: {exc}")
        session.client_events.clear()
        session.server_events.clear()
        session.user_audio.clear()
        with contextlib.suppress(ValueError):
            self.sessions.remove(session)

    def _bench_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/bench/health":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/bench/status":
            body: dict[str, Any] = {"open": self.connections_open, "closed": len(self._summaries)}
            return connection.respond(HTTPStatus.OK, json.dumps(body))
        if path == "/bench/drain":
            summaries, self._summaries = self._summaries, []
            live = [summarize(s) | {"open_at_drain": True} for s in list(self._open)]
            lag, spikes = sorted(self.loop_lag.samples_ms), list(self.loop_lag.spikes)
            self.loop_lag.samples_ms.clear()
            self.loop_lag.spikes.clear()
            body = {
                "sessions": summaries + live,
                "still_open": len(live),
                "internal_errors": list(self.internal_errors),
                "loop_lag_ms": lag,
                "loop_lag_spikes": spikes,
                "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            }
            return connection.respond(HTTPStatus.OK, json.dumps(body, separators=(",", ":")))
        return None


async def _main(args: argparse.Namespace) -> None:
    config = RealtimeSimConfig(
        reply_ms=args.reply_ms,
        speed=args.speed,
        chunk_ms=args.chunk_ms,
        first_audio_delay_ms=args.first_audio_delay_ms,
        vad_start_ms=args.vad_start_ms,
        vad_threshold_rms=args.vad_threshold_rms,
        sdk_check="per_shape",  # each event shape checked once: the bench measures the server, not this check
    )
    engine = BenchEngine(config, "127.0.0.1", args.port, args.reply_noise)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await engine.start()
    # Start-up leaves ~100,000 long-lived objects (the SDK's event models above all) that every full collection
    # would walk, tens of ms each time, stalling every session's stream at once.
    freeze_startup_heap()
    gc.set_threshold(*LOAD_GC_THRESHOLDS)  # for its life, as the bench's caller side while it runs calls
    lag = asyncio.create_task(engine.loop_lag.watch())
    try:
        await stop.wait()
    finally:
        lag.cancel()
        with contextlib.suppress(TimeoutError):
            await within(3, engine.stop())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reply-ms", type=int, default=2500)
    parser.add_argument("--speed", type=float, default=2.0)
    parser.add_argument("--chunk-ms", type=int, default=100)
    parser.add_argument("--first-audio-delay-ms", type=int, default=50)
    parser.add_argument("--vad-start-ms", type=int, default=60)
    parser.add_argument("--vad-threshold-rms", type=float, default=500.0)
    parser.add_argument("--reply-noise", type=float, default=0.01)
    args = parser.parse_args(argv)
    run_async(lambda: _main(args), "engine")
    sys.exit(0)


if __name__ == "__main__":
    main()
