"""`voice-agent call`: one synthetic phone call against any running agent, measured and recorded.

It goes through the agent's real answer webhook and stream WebSocket, with the simulated Vobiz carrier playing
the bot's audio in real time (checkpoint -> playedStream, clearAudio -> clearedAudio). The caller says a WAV
file, spoken lines (eSpeak NG) or tones, each after the bot has finished its previous answer, or barges in at
a given offset. Afterwards it prints the timeline, writes a stereo WAV (caller left, bot as heard right) and a
JSON record.

The pieces here (timed carrier, turn-taking cues, place-and-measure, recording) are shared with the load test
and the demo, so every tool measures a call the same way (see :mod:`agent.simulation.call_metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import time
import uuid
import wave
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import click
import httpx
import numpy as np

from agent.audio.codecs import Int16Array
from agent.simulation.call_metrics import (
    CallMetrics,
    FailureCause,
    Truncation,
    analyze_call,
    apply_agent_record,
    failed_call,
    format_timeline,
)
from agent.simulation.carrier import (
    CallEndedWithoutStream,
    CallerAudio,
    CarrierProtocolError,
    CarrierSim,
    Cue,
    ScriptItem,
    Segment,
    SimCall,
    SimCallOptions,
    SimulationError,
)
from agent.simulation.output import run_folder

__all__ = [
    "RECORD_VERSION",
    "Driver",
    "Measured",
    "TimedCarrier",
    "after_answer",
    "build_utterances",
    "call_command",
    "conversation",
    "during_answer",
    "fetch_agent_record",
    "finish_conversation",
    "place_and_measure",
    "run_synthetic_call",
    "save_and_report",
    "spoken_line",
    "tone_line",
    "write_call_json",
    "write_stereo_wav",
]

RECORD_VERSION = 1
ANSWER_QUIET_MS = 600.0  # the bot counts as done with an answer after this much silence
GIVE_UP_MS = 8000.0  # a caller waiting for an answer that never comes speaks anyway after this long

Driver = Callable[[SimCall], Awaitable[None]]


# ----------------------------------------------------------------------------------------------------------
# Caller audio and turn-taking
# ----------------------------------------------------------------------------------------------------------


def _speech(module: str, name: str) -> Callable[..., Any]:
    """A function of the optional speech package, loaded on first use (ImportError when it is not there)."""
    func: Callable[..., Any] = getattr(importlib.import_module(f"agent.simulation.speech.{module}"), name)
    return func


def spoken_line(text: str, *, rate: int = 16000, voice: str = "en-us", words_per_minute: int = 165) -> Segment:
    """A line of caller speech from eSpeak NG; imported lazily so the rest works without the speech module."""
    synthesize = _speech("tts", "synthesize")
    samples = synthesize(text, rate, voice=voice, words_per_minute=words_per_minute)
    return CallerAudio.pcm(np.asarray(samples, dtype=np.int16), rate, label=text)


def tone_line(hz: float, ms: float) -> Segment:
    """Tones are 'speech' to an energy VAD (the offline engine) and need nothing installed."""
    return CallerAudio.tone(hz, ms, amplitude=0.4)


def after_answer(segment: Segment, quiet_ms: float = ANSWER_QUIET_MS, give_up_ms: float = GIVE_UP_MS) -> Cue:
    """Speak once the bot has said something since this cue was reached and then been quiet for ``quiet_ms``.

    A polite caller: waits for the answer to finish. If no answer comes within ``give_up_ms`` it speaks anyway,
    so a silent agent shows up as unanswered turns instead of a stuck call.
    """

    def arm(call: SimCall) -> Callable[[], bool]:
        base, armed_at = call.played_ms, call.call_ms
        quiet_since: list[float] = []

        def ready() -> bool:
            now = call.call_ms
            if now - armed_at >= give_up_ms:
                return True
            if call.played_ms <= base or call.bot_playing or call.queued_ms > 0:
                quiet_since.clear()
                return False
            if not quiet_since:
                quiet_since.append(now)
            return now - quiet_since[0] >= quiet_ms

        return ready

    return Cue(arm, segment, f"after the bot's answer ({quiet_ms:g} ms quiet)")


def during_answer(segment: Segment, ms_into_answer: float, give_up_ms: float = GIVE_UP_MS) -> Cue:
    """Barge in ``ms_into_answer`` ms into the bot's next answer (or after ``give_up_ms`` without one)."""

    def arm(call: SimCall) -> Callable[[], bool]:
        base, armed_at = call.played_ms, call.call_ms
        return lambda: call.played_ms - base >= ms_into_answer or call.call_ms - armed_at >= give_up_ms

    return Cue(arm, segment, f"barge in {ms_into_answer:g} ms into the bot's answer")


def conversation(utterances: Sequence[Segment], barge_in_ms: float | None = None) -> list[ScriptItem]:
    """Say each utterance after the bot's previous answer; the first one interrupts it when ``barge_in_ms``."""
    script: list[ScriptItem] = []
    for i, segment in enumerate(utterances):
        if i == 0 and barge_in_ms is not None:
            script.append(during_answer(segment, barge_in_ms))
        else:
            script.append(after_answer(segment))
    return script


async def finish_conversation(call: SimCall, quiet_ms: float = 1500.0, answer_timeout_s: float = 10.0) -> None:
    """Default ending: once the caller has said everything, wait for the bot's last answer, then hang up."""
    await call.wait_for(lambda: call.script_done or call.ended.is_set(), timeout=3600, what="caller script done")
    base = call.played_ms
    with contextlib.suppress(TimeoutError):
        await call.wait_for(
            lambda: call.played_ms > base or call.ended.is_set(), timeout=answer_timeout_s, what="the last answer"
        )
    if not call.ended.is_set():
        with contextlib.suppress(TimeoutError):
            await call.wait_bot_silence(quiet_ms, timeout=60)
    await call.hangup()


# ----------------------------------------------------------------------------------------------------------
# Placing and measuring one call
# ----------------------------------------------------------------------------------------------------------


class TimedCarrier:
    """Shared HTTP client for simulated carriers that notes when each answer webhook's response arrived.

    The carrier records when a webhook was sent; this adds the other end, so answer time is webhook -> 200.
    One client serves many calls (connection reuse, like a real carrier's webhook sender).
    """

    def __init__(self, base_url: str, answer_path: str = "/vobiz/answer") -> None:
        self.base_url = base_url.rstrip("/")
        self.answer_path = answer_path
        self._answered: dict[str, float] = {}
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=100)
        self.http = httpx.AsyncClient(event_hooks={"response": [self._on_response]}, limits=limits)

    async def _on_response(self, response: httpx.Response) -> None:
        request = response.request
        raw = request.content.decode("utf-8", "replace") if request.method == "POST" else request.url.query.decode()
        fields = parse_qs(raw)
        if fields.get("Event") == ["StartApp"] and fields.get("CallUUID"):
            self._answered[fields["CallUUID"][0]] = time.monotonic()

    def carrier(self) -> CarrierSim:
        """A fresh carrier per call, so finished calls (and their audio) are not kept alive by the carrier."""
        return CarrierSim(self.base_url, self.answer_path, http=self.http)

    def answer_ms(self, call_uuid: str, sent_at: float | None) -> float | None:
        answered = self._answered.pop(call_uuid, None)
        return None if answered is None or sent_at is None else (answered - sent_at) * 1000

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> TimedCarrier:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


@dataclass
class Measured:
    metrics: CallMetrics
    call: SimCall | None


def _pre_stream_failure(exc: Exception) -> tuple[FailureCause, str]:
    """The carrier raises one error type for webhook and socket trouble; its message tells them apart."""
    if isinstance(exc, CallEndedWithoutStream):
        return "rejected", str(exc)
    text = str(exc)
    if "stream WebSocket" in text or "before `start`" in text:
        return "stream_failed", text
    return "answer_failed", text


async def place_and_measure(
    timed: TimedCarrier,
    script: Sequence[ScriptItem],
    *,
    options: SimCallOptions | None = None,
    drive: Driver = finish_conversation,
    scenario: str = "",
    max_duration_s: float = 600.0,
    on_connected: Callable[[SimCall], None] | None = None,
    check: Callable[[SimCall], tuple[FailureCause, str] | None] | None = None,
    truncations: Callable[[SimCall], Sequence[Truncation]] | None = None,
) -> Measured:
    """Place one call, let ``drive`` run it, make sure it has ended, and measure it.

    ``on_connected`` runs synchronously as soon as the stream is up, before the first caller frame (e.g. to
    impair the network); ``check`` adds a scenario-specific verdict; ``truncations`` tells what the agent
    or the model believed was heard at each interruption, when that is visible.
    """
    carrier = timed.carrier()
    call_uuid = str(uuid.uuid4())
    try:
        try:
            call = await carrier.place_call(script, options, call_uuid=call_uuid)
        except (CarrierProtocolError, CallEndedWithoutStream) as exc:
            cause, detail = _pre_stream_failure(exc)
            metrics = failed_call(call_uuid, cause, detail, scenario)
            metrics.answer_ms = timed.answer_ms(call_uuid, None)  # also forgets the call's timestamp
            return Measured(metrics, None)
        if on_connected is not None:
            on_connected(call)
        verdict: tuple[FailureCause, str] | None = None
        try:
            async with asyncio.timeout(max_duration_s):
                await drive(call)
                await call.wait_ended(timeout=15)
        except TimeoutError:
            verdict = ("timeout", f"call still running after {max_duration_s:g} s")
        except SimulationError as exc:
            verdict = ("simulator_error", str(exc))
        if not call.ended.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(15):
                    await call.hangup()
        if verdict is None and check is not None:
            verdict = check(call)
        sent_at = next((w.t for w in call.webhooks if w.event == "StartApp"), None)
        metrics = analyze_call(
            call,
            answer_ms=timed.answer_ms(call_uuid, sent_at),
            truncations=truncations(call) if truncations is not None else (),
            scenario=scenario,
            failure=verdict,
        )
        return Measured(metrics, call)
    finally:
        await carrier.aclose()


# ----------------------------------------------------------------------------------------------------------
# Recording
# ----------------------------------------------------------------------------------------------------------


def write_stereo_wav(call: SimCall, path: Path) -> int:
    """Caller on the left, bot as the caller heard it on the right, on the call clock; returns the rate."""
    rate = max(call.media_format.rate, call.played_rate or 0)
    left, right = call.caller_track(rate), call.bot_track(rate)
    n = max(len(left), len(right))
    frames = np.zeros((n, 2), dtype="<i2")
    frames[: len(left), 0] = left
    frames[: len(right), 1] = right
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames.tobytes())
    return rate


def _timeline_json(call: SimCall) -> Iterator[dict[str, Any]]:
    """Raw carrier events on the call clock, without the 50-a-second media frames."""
    start = next((e.t for e in call.timeline if e.kind == "start_sent"), call.timeline[0].t if call.timeline else 0)
    for e in call.timeline:
        if e.kind != "frame_sent":
            yield {"ms": round((e.t - start) * 1000, 1), "kind": e.kind, **e.detail}


def call_record(metrics: CallMetrics, call: SimCall | None) -> dict[str, Any]:
    record: dict[str, Any] = {"version": RECORD_VERSION, "metrics": metrics.model_dump(mode="json")}
    if call is not None:
        record |= {
            "stream": {
                "url": call.stream_url,
                "attributes": call.stream_attrs,
                "media_format": call.media_format.content_type,
                "played_rate": call.played_rate,
            },
            "webhooks": [
                {"event": w.event, "method": w.method, "url": w.url, "status": w.status, "error": w.error}
                for w in call.webhooks
            ],
            "checkpoints": {"acked": call.acked_checkpoints, "dropped": call.dropped_checkpoints},
            "timeline": list(_timeline_json(call)),
        }
    return record


def write_call_json(metrics: CallMetrics, call: SimCall | None, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(call_record(metrics, call), indent=2, default=str) + "\n")


def transcribe_answers(call: SimCall, metrics: CallMetrics) -> None:
    """Fill each answer's text with what a recogniser hears in the bot's audio (best effort, lazy import)."""
    recognize = _speech("asr", "recognize")
    rate = call.played_rate or call.media_format.rate
    track: Int16Array = call.bot_track()
    for answer in metrics.answers:
        piece = track[int(answer.start_ms * rate / 1000) : int(answer.end_ms * rate / 1000)]
        if len(piece):
            answer.text = recognize(piece, rate).strip() or None


# ----------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------


def _parse_tone(spec: str) -> Segment:
    hz, _, ms = spec.partition(":")
    try:
        return tone_line(float(hz), float(ms or 800))
    except ValueError:
        raise click.BadParameter(f"{spec!r}: expected HZ or HZ:MS, e.g. 440:800", param_hint="--tone") from None


def build_utterances(wavs: Sequence[Path], lines: Sequence[str], tones: Sequence[str]) -> list[Segment]:
    """What the caller says, in order: WAV files, then spoken lines, then tones."""
    segments = [CallerAudio.wav(p) for p in wavs]
    if lines:
        try:
            segments += [spoken_line(line) for line in lines]
        except ImportError as exc:
            raise click.UsageError(f"spoken lines need agent.simulation.speech.tts ({exc})") from None
    return segments + [_parse_tone(t) for t in tones]


def print_report(metrics: CallMetrics, wav: Path | None, record: Path | None) -> None:
    for line in format_timeline(metrics):
        click.echo(line)
    if wav is not None:
        click.echo(f"  recording         {wav} (left: caller, right: bot as heard)")
    if record is not None:
        click.echo(f"  record            {record}")


async def run_synthetic_call(
    url: str,
    utterances: Sequence[Segment],
    *,
    barge_in_ms: float | None,
    auth_token: str | None,
    max_duration_s: float,
    truncations: Callable[[SimCall], Sequence[Truncation]] | None = None,
) -> Measured:
    options = SimCallOptions(auth_token=auth_token)
    async with TimedCarrier(url) as timed:
        return await place_and_measure(
            timed,
            conversation(utterances, barge_in_ms),
            options=options,
            max_duration_s=max_duration_s,
            truncations=truncations,
        )


async def fetch_agent_record(
    url: str, call_uuid: str, operator_token: str, *, timeout_s: float = 15.0
) -> dict[str, Any] | str:
    """The agent's stored record of a call from its console's JSON (`/console/api/calls/ID`), once the call
    has ended there (the agent finishes its record a moment after the carrier hangs up); a reason when not."""
    endpoint = f"{url.rstrip('/')}/console/api/calls/{quote(call_uuid, safe='')}"
    headers = {"Authorization": f"Bearer {operator_token}"}
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5.0) as http:
        while True:
            try:
                response = await http.get(endpoint, headers=headers)
            except httpx.HTTPError as exc:
                return f"cannot read it ({type(exc).__name__})"
            if response.status_code in (401, 403, 429):
                return f"refused (HTTP {response.status_code}): check --operator-token"
            if response.status_code == 200:
                record = response.json()
                if isinstance(record, dict) and record.get("ended_at") is not None:
                    return record
            elif response.status_code != 404:
                return f"HTTP {response.status_code}"
            if time.monotonic() >= deadline:
                return f"not finished after {timeout_s:g} s"
            await asyncio.sleep(0.25)  # polling a remote agent; nothing to wait on from here


def save_and_report(measured: Measured, out: Path, transcribe: bool) -> None:
    """The tail shared by `call` and `demo`: transcribe (optional), write WAV + JSON, print the timeline."""
    wav = None
    if measured.call is not None:
        if transcribe:
            try:
                transcribe_answers(measured.call, measured.metrics)
            except ImportError as exc:
                click.echo(f"(not transcribing the bot: {exc})", err=True)
        wav = out.with_suffix(".wav")
        write_stereo_wav(measured.call, wav)
    record = out.with_suffix(".json")
    write_call_json(measured.metrics, measured.call, record)
    print_report(measured.metrics, wav, record)


@click.command("call")
@click.option("--url", required=True, help="Base URL of a running agent, e.g. http://127.0.0.1:8080.")
@click.option(
    "--wav",
    "wavs",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A 16-bit WAV file the caller says; repeat for more turns.",
)
@click.option("--say", "lines", multiple=True, help="A line the caller speaks (eSpeak NG); repeat for more turns.")
@click.option("--tone", "tones", multiple=True, help="A tone turn, HZ or HZ:MS (default 800 ms).")
@click.option("--barge-in", "barge_in_ms", type=float, help="Interrupt the greeting this many ms into it.")
@click.option("--auth-token", help="Vobiz auth token: sign the webhooks like Vobiz does.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Writes OUT.wav and OUT.json (default: var/out/call-<time>/call).",
)
@click.option("--transcribe/--no-transcribe", default=False, help="Recognise what the bot said (pocketsphinx).")
@click.option("--max-duration", type=float, default=300.0, show_default=True, help="Give up after this many s.")
@click.option(
    "--operator-token",
    envvar="AGENT_OPERATOR_TOKEN",
    help="The agent's console token: print the agent's own latency and end reason (what its console shows).",
)
def call_command(
    url: str,
    wavs: tuple[Path, ...],
    lines: tuple[str, ...],
    tones: tuple[str, ...],
    barge_in_ms: float | None,
    auth_token: str | None,
    out: Path | None,
    transcribe: bool,
    max_duration: float,
    operator_token: str | None,
) -> None:
    """Place one synthetic call against a running agent; print its timeline and record it.

    Writes OUT.wav (stereo: caller left, bot as heard right) and OUT.json (metrics and carrier events).
    Without --wav/--say/--tone the caller says one 800 ms tone after the greeting. Exits 1 when the call
    failed (no answer, no greeting, a dropped stream, a protocol error...), with the reason printed.
    """
    utterances = build_utterances(wavs, lines, tones) or [tone_line(440, 800)]
    measured = asyncio.run(
        run_synthetic_call(url, utterances, barge_in_ms=barge_in_ms, auth_token=auth_token, max_duration_s=max_duration)
    )
    if measured.call is not None and operator_token:
        record = asyncio.run(fetch_agent_record(url, measured.metrics.call_uuid, operator_token))
        if isinstance(record, str):
            click.echo(f"(the agent's own record: {record}; showing the carrier's figures)", err=True)
        else:
            apply_agent_record(measured.metrics, record)
    save_and_report(measured, out or run_folder("call") / "call", transcribe)
    if not measured.metrics.ok:
        raise SystemExit(1)
