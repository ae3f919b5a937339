"""The interruption bench's calls, and the stacks (engine + relay or agent) they run against.

Each call: the greeting plays out; then for each of its events the caller asks a question (the engine answers
with ~7-9 s of speech), waits until ``at_ms`` of the answer has played, and makes its sound (or, for echo, the
line starts feeding the bot's audio back); then waits for 1.2 s of bot silence before the next question. The
caller's line carries low noise (-58 dBFS) throughout, different in every call, so each session at the engine
is paired with its call by the frames it received.

Echo: :class:`Line` sits between the carrier and the server (``SimCall.wrap_socket``) and adds, to caller frame
k (call-clock samples [kN, (k+1)N)), the bot audio the carrier played at [kN - D, (k+1)N - D), attenuated, read
from ``SimCall.bot_pieces``. D >= 40 ms, so that audio has always finished playing when frame k is sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from websockets.asyncio.client import ClientConnection

from agent.audio.codecs import Int16Array, mulaw_to_pcm16, pcm16_to_mulaw
from agent.testkit import procs
from agent.testkit.bench.sides import drain_engine
from agent.testkit.bench.wire import MULAW_8K, frame_key
from agent.testkit.carrier import CallerAudio, SimCall, SimCallOptions
from agent.testkit.interruptions.engine import KEY_FRAMES
from agent.testkit.interruptions.sounds import QUESTIONS, RATE, Event, caller_sounds, line_noise
from agent.testkit.runner import TimedCarrier, run_call, run_ramp

Mode = Literal["relay", "immediate", "early", "adaptive"]
MODES: tuple[Mode, ...] = ("relay", "immediate", "early", "adaptive")
FRAME = RATE // 50  # samples per 20 ms caller frame
QUIET_AFTER_MS = 1200.0  # bot silence that ends an event
STAGGER_S = 0.5
REACTION_S = 5.0  # after an event, the caller waits this long for the bot to say something before moving on


# ----------------------------------------------------------------------------------------------------------
# The line: noise and echo on the caller's frames
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Echo:
    first_k: int
    last_k: int
    delay: int  # samples
    gain: float


class Line:
    """The caller's outgoing frames with the line's noise and, while on, the bot's echo mixed in."""

    def __init__(self, ws: ClientConnection, call: SimCall, noise: Int16Array) -> None:
        self._ws = ws
        self._call = call
        self._noise = noise.astype(np.int32)
        self._echo: _Echo | None = None
        self.keys: list[str] = []  # of the first frames sent, as the engine keys what it received
        self.echo_frames = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    def __aiter__(self) -> Any:
        return self._ws.__aiter__()

    def echo(self, delay_ms: float, level_db: float, ms: float) -> float:
        """Feed the bot's audio back from the next frame on, for ``ms``; returns the call-clock ms it starts at."""
        first = math.ceil(self._call.call_ms / 20) + 1
        delay = max(2 * FRAME, round(delay_ms * RATE / 1000))  # what has not finished playing cannot echo yet
        self._echo = _Echo(first, first + round(ms / 20), delay, 10 ** (level_db / 20))
        return first * 20.0

    @property
    def echoing(self) -> bool:
        return self._echo is not None and self._call.call_ms < self._echo.last_k * 20 + 40

    def _bot_audio(self, start: int, end: int) -> Int16Array:
        out = np.zeros(end - start, dtype=np.int16)
        for offset, samples in reversed(self._call.bot_pieces):
            if offset + len(samples) <= start:
                break
            lo, hi = max(start, offset), min(end, offset + len(samples))
            if lo < hi:
                out[lo - start : hi - start] = samples[lo - offset : hi - offset]
        return out

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, str) and '"event":"media"' in message:
            message = self._mix(message)
        await self._ws.send(message)

    def _mix(self, text: str) -> str:
        msg = json.loads(text)
        media = msg["media"]
        k = int(media["chunk"]) - 1  # one stream per call here: chunk k+1 carries call-clock frame k
        frame = mulaw_to_pcm16(base64.b64decode(media["payload"])).astype(np.int32)
        start = (k * FRAME) % (len(self._noise) - FRAME)
        mixed = frame + self._noise[start : start + len(frame)]
        echo = self._echo
        if echo is not None and echo.first_k <= k < echo.last_k:
            back = self._bot_audio(k * FRAME - echo.delay, (k + 1) * FRAME - echo.delay)
            mixed = mixed + np.round(back * echo.gain).astype(np.int32)
            self.echo_frames += 1
        data = pcm16_to_mulaw(np.clip(mixed, -32767, 32767).astype(np.int16))
        if len(self.keys) < KEY_FRAMES:
            self.keys.append(frame_key(data))
        media["payload"] = base64.b64encode(data).decode("ascii")
        return json.dumps(msg, separators=(",", ":"))


# ----------------------------------------------------------------------------------------------------------
# One call
# ----------------------------------------------------------------------------------------------------------


@dataclass
class EventRun:
    event: Event
    onset_ms: float | None = None  # call clock; None when the event never happened (no answer to land in)
    note: str = ""


@dataclass
class CallRun:
    """One call as the carrier saw it, boiled down for the analysis."""

    index: int
    events: list[EventRun]
    pieces: list[tuple[int, Int16Array]] = field(default_factory=list)
    clears_ms: list[float] = field(default_factory=list)  # call clock
    keys: list[str] = field(default_factory=list)
    error: str | None = None
    protocol_errors: list[str] = field(default_factory=list)
    t0: float | None = None  # time.monotonic() of the call clock's 0 (the engine's records use the same clock)


async def _event(call: SimCall, line: Line, run: EventRun, question: str) -> None:
    sounds = caller_sounds()
    ev = run.event
    call.say(CallerAudio.pcm(sounds[f"question: {question}"].pcm, RATE, label=question))
    await call.wait_script_done(timeout=15)
    base = call.played_ms
    try:
        await call.wait_for(lambda: call.played_ms - base >= ev.at_ms, 15, f"{ev.at_ms:.0f} ms into the answer")
    except TimeoutError:
        run.note = "the bot did not answer the question"
        return
    if ev.kind == "echo":
        run.onset_ms = line.echo(ev.delay_ms, ev.level_db, ev.echo_ms)
        await call.wait_for(lambda: not line.echoing, ev.echo_ms / 1000 + 5, "echo over")
    else:
        label = f"{ev.sound} (event {ev.index})"
        call.say(CallerAudio.pcm(sounds[ev.sound].pcm, RATE, label=label))
        await call.wait_script_done(timeout=15)
        starts = [e for e in call.events("caller_segment_started") if e.detail.get("label") == label]
        run.onset_ms = float(starts[-1].detail["call_ms"])


async def _reaction(call: SimCall) -> None:
    """Until the bot says something (or REACTION_S pass)."""
    base = call.played_ms
    with contextlib.suppress(TimeoutError):
        await call.wait_for(lambda: call.played_ms > base + 20, REACTION_S, "the bot's reaction")


async def _drive(call: SimCall, line: Line, runs: list[EventRun], index: int) -> None:
    await call.wait_for(lambda: call.played_ms > 0, 20, "the greeting")
    await call.wait_bot_silence(QUIET_AFTER_MS, timeout=30)
    for i, run in enumerate(runs):
        await _event(call, line, run, QUESTIONS[(index + i) % len(QUESTIONS)])
        # The caller lets the bot react (resume, reply to what they said) and finish before the next question.
        await _reaction(call)
        await call.wait_bot_silence(QUIET_AFTER_MS, timeout=40)
    await call.hangup()


async def one_call(timed: TimedCarrier, index: int, events: list[Event], seed: int) -> CallRun:
    runs = [EventRun(e) for e in events]
    result = CallRun(index, runs)
    noise = line_noise(np.random.default_rng([seed, index]), 10.0)
    lines: list[Line] = []

    def connected(call: SimCall) -> None:
        def wrap(ws: ClientConnection) -> ClientConnection:
            line = Line(ws, call, noise)
            lines.append(line)
            return cast(ClientConnection, line)

        call.wrap_socket(wrap)

    async def drive(call: SimCall) -> None:
        await _drive(call, lines[-1], runs, index)

    seconds = 12 + 16 * len(events)
    placed = await run_call(
        timed,
        [],
        options=SimCallOptions(content_type=MULAW_8K, record_frames=False),
        drive=drive,
        max_duration_s=seconds,
        place_timeout_s=15,
        on_connected=connected,
    )
    call = placed.call
    if placed.failure is not None:
        result.error = f"{placed.failure[0]}: {placed.failure[1]}"
    if call is None:
        return result
    t0 = next(e.t for e in call.timeline if e.kind == "start_sent")
    result.t0 = t0
    result.pieces = list(call.bot_pieces)
    result.clears_ms = [(c.t - t0) * 1000 for c in call.clears]
    result.keys = lines[0].keys if lines else []
    result.protocol_errors = list(call.protocol_errors)
    if result.error is None and call.end_reason != "caller_hangup":
        result.error = f"call ended early: {call.end_reason}"
    return result


async def run_calls(base_url: str, answer_path: str, per_call: list[list[Event]], seed: int) -> list[CallRun]:
    """All calls at once, ``STAGGER_S`` apart."""

    async def guarded(timed: TimedCarrier, i: int) -> CallRun:
        try:
            return await one_call(timed, i, per_call[i], seed)
        except Exception as exc:  # one broken call must not sink the run
            return CallRun(i, [EventRun(e) for e in per_call[i]], error=f"call task failed: {exc!r}")

    async with TimedCarrier(base_url, answer_path) as timed:
        limit = STAGGER_S * len(per_call) + max(12 + 16 * len(e) for e in per_call) + 60
        done = await run_ramp(
            range(len(per_call)),
            lambda i: guarded(timed, i),
            start_at=time.monotonic() + 0.2,
            interval_s=STAGGER_S,
            concurrency=len(per_call),
            clock=time.monotonic,
            limit_s=limit,
        )
    return [
        done.get(i) or CallRun(i, [EventRun(e) for e in per_call[i]], error="call timed out")
        for i in range(len(per_call))
    ]


# ----------------------------------------------------------------------------------------------------------
# A stack: the engine and the server under test
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineOptions:
    vad_ms: int = 300
    vad_threshold_rms: float = 250.0
    speed: float = 2.0
    transcript_ms: int = 20  # the engine's commit -> transcript delay (on top of its recognition's own time)
    agent_path: Path | None = None  # the checkout the agent runs from (its working directory), for an A/B
    agent_env: tuple[tuple[str, str], ...] = ()  # settings for the agent (AGENT_...), for a sweep


@dataclass
class Stack:
    mode: Mode
    base_url: str
    answer_path: str
    engine_port: int
    notes: list[str] = field(default_factory=list)

    async def collect(self) -> dict[str, Any]:
        """The engine's session records (waiting up to 10 s for the server to close its sockets)."""
        return await drain_engine(self.engine_port, wait_idle_s=10.0)


@contextlib.asynccontextmanager
async def running_stack(mode: Mode, opts: EngineOptions, stem: Path, manifest: Path) -> AsyncIterator[Stack]:
    """A fresh engine and the server under test (the bare relay, or the agent in ``mode``); always stopped."""
    env_extra: dict[str, str] = {} if mode == "relay" else {"AGENT_INTERRUPTIONS": mode}
    if mode != "relay":
        env_extra |= dict(opts.agent_env)
    engine_port = procs.free_port()
    engine_args = ["-m", "agent.testkit.interruptions.engine", "--port", str(engine_port), "--manifest", str(manifest)]
    engine_args += ["--vad-ms", str(opts.vad_ms), "--vad-threshold-rms", str(opts.vad_threshold_rms)]
    engine_args += ["--speed", str(opts.speed), "--transcript-ms", str(opts.transcript_ms)]
    engine = procs.start("engine", engine_args, procs.clean_env({}), Path(f"{stem}-engine-{mode}.log"))
    server: procs.Child | None = None
    workdir = Path(tempfile.mkdtemp(prefix="bench-interruptions-"))
    notes: list[str] = []
    try:
        await procs.wait_ready(engine, f"http://127.0.0.1:{engine_port}/bench/health")
        port = procs.free_port()
        log = Path(f"{stem}-{mode}.log")
        if mode == "relay":
            args = ["-m", "agent.testkit.bench.relay", "--port", str(port)]
            args += ["--engine", f"ws://127.0.0.1:{engine_port}/v1/realtime", "--content-type", MULAW_8K]
            server, answer_path = procs.start("baseline relay", args, procs.clean_env({}), log), "/answer"
        else:
            env = procs.agent_env(
                workdir,
                port,
                {
                    "OPENAI_API_KEY": "dummy",
                    "OPENAI_BASE_URL": f"http://127.0.0.1:{engine_port}/v1",
                    "AGENT_LOG_LEVEL": "WARNING",
                    "AGENT_STREAM_CONTENT_TYPE": MULAW_8K,
                    "AGENT_PROMPTS_DIR": str(procs.ROOT / "prompts"),
                }
                | env_extra,
            )
            args = ["-m", "agent", "serve", "--host", "127.0.0.1", "--port", str(port)]
            server = procs.start(f"agent ({mode})", args, env, log, cwd=opts.agent_path)
            answer_path = "/vobiz/answer"
        base_url = f"http://127.0.0.1:{port}"
        await procs.wait_ready(server, f"{base_url}/healthz")
        yield Stack(mode, base_url, answer_path, engine_port, notes)
    finally:
        try:
            if server is not None and procs.stop(server):
                notes.append(f"the {server.name} did not exit within 5 s of SIGTERM and was killed")
        finally:
            if procs.stop(engine):
                notes.append("the engine did not exit within 5 s of SIGTERM and was killed")
            shutil.rmtree(workdir, ignore_errors=True)


async def run_mode(
    mode: Mode, opts: EngineOptions, stem: Path, manifest: Path, per_call: list[list[Event]], seed: int
) -> tuple[list[CallRun], dict[str, Any], list[str]]:
    """One side of the run: (the calls, the engine's records, notes)."""
    async with running_stack(mode, opts, stem, manifest) as stack:
        await asyncio.sleep(0.3)
        calls = await run_calls(stack.base_url, stack.answer_path, per_call, seed)
        engine = await stack.collect()
        notes = stack.notes
    return calls, engine, notes
