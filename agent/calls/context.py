"""What the parts of one call share: the process services it borrows and its own per-call pieces.

Each part of a call (caller audio, the carrier stream, the model session, the interruption machine, the event
dispatch) takes this instead of the `Call`, so none of them imports `call.py` and the wiring stays one-way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from agent.audio.codecs import Int16Array, l16_to_pcm16, mulaw_to_pcm16
from agent.audio.echo import EchoEstimator
from agent.audio.formats import MediaFormat
from agent.audio.transcode import BotAudioConverter
from agent.calls.handover import CallerTurns
from agent.calls.latency import ResponseLatency
from agent.calls.outcome import Ending, Outcome
from agent.calls.responses import ResponseQueue
from agent.carrier.playout import Playout
from agent.carrier.rest import VobizClient
from agent.config import Settings
from agent.model.connection import ModelConnector, ModelLink
from agent.observability.metrics import Metrics
from agent.observability.tracing import CallTracer
from agent.prompts.loader import Prompt
from agent.protocol.realtime import session_config
from agent.records.record import CallRecord
from agent.storage.recordings import CallRecorder
from agent.storage.writer import RecordWriter

Log = logging.LoggerAdapter[logging.Logger]


@dataclass
class CallDeps:
    """Process-wide services a call borrows; none of them hold per-call state."""

    settings: Settings
    connector: ModelConnector
    metrics: Metrics
    vobiz: VobizClient | None
    http: httpx.AsyncClient
    records: RecordWriter | None
    tracer: CallTracer | None
    transfer_url: Callable[[str], str]
    on_outcome: Callable[[str, Outcome], Awaitable[None]]


@dataclass
class CallContext:
    """One call's shared pieces. `activity` is set whenever something the watchers wait on may have changed."""

    call_id: str
    prompt: Prompt
    format: MediaFormat
    deps: CallDeps
    record: CallRecord
    log: Log
    ending: Ending
    link: ModelLink
    playout: Playout
    responses: ResponseQueue
    turns: CallerTurns
    latency: ResponseLatency
    bot_audio: BotAudioConverter
    recorder: CallRecorder | None
    activity: asyncio.Event
    echo: EchoEstimator | None = None  # the adaptive policy's echo model: the bot's playout and the caller's line
    sound: LineSound = field(default_factory=lambda: LineSound())

    @property
    def settings(self) -> Settings:
        return self.deps.settings

    @property
    def metrics(self) -> Metrics:
        return self.deps.metrics

    async def ask(self, guidance: str, **response: Any) -> asyncio.Future[str | None]:
        """Ask for a reply steered by `guidance`, in the prompt's persona (see `session_config.guided`)."""
        return await self.responses.request(session_config.guided(self.prompt, guidance, **response))


@dataclass
class LineSound:
    """When the caller's line last carried sound of its own, and sound that was only the bot's echo (monotonic)."""

    caller_at: float = float("-inf")
    echo_at: float = float("-inf")

    def echo_only(self, now: float, within_s: float = 1.0) -> bool:
        """Lately the line carried the bot's echo and nothing of the caller's own."""
        return self.echo_at > now - within_s and self.caller_at <= now - within_s


_KEEP_UTTERANCE_MS = 15_000  # caller audio kept for a session switch: the longest utterance carried over


def new_context(
    call_id: str,
    prompt: Prompt,
    fmt: MediaFormat,
    deps: CallDeps,
    record: CallRecord,
    log: Log,
    ending: Ending,
    stream_id: str,
    send_carrier: Callable[[str], Awaitable[None]],
) -> CallContext:
    """A new call's pieces, wired to each other (the playout to the carrier and the recorder, the responses to
    the model link)."""
    settings, metrics = deps.settings, deps.metrics
    playout = Playout(
        send_carrier,
        stream_id,
        fmt,
        chunk_ms=settings.playout_chunk_ms,
        lead_ms=settings.playout_lead_ms,
        checkpoint_interval_ms=settings.checkpoint_interval_ms,
    )
    recorder = CallRecorder(fmt.rate) if settings.record_calls else None
    adaptive = settings.interruption_mode == "adaptive"
    echo = EchoEstimator(fmt.rate) if adaptive and settings.echo_detection else None
    if recorder is not None or echo is not None:

        def scheduled(data: bytes, start: float) -> None:
            samples = pcm16(fmt, data)
            if recorder is not None:
                recorder.bot(samples, fmt.rate, start)
            if echo is not None:
                echo.played(samples, start)

        def late(expected_at: float, delay: float) -> None:
            if recorder is not None:
                recorder.shift(expected_at, delay)
            if echo is not None:
                echo.shift(expected_at, delay)

        playout.on_scheduled = scheduled
        playout.on_late = late
    link = ModelLink(log)
    responses = ResponseQueue(
        link.send,
        start_timeout_s=settings.model_response_start_timeout_s,
        stall_timeout_s=settings.model_response_stall_timeout_s,
        on_abandon=lambda stage: metrics.responses_abandoned.labels(stage).inc(),
    )
    return CallContext(
        call_id=call_id,
        prompt=prompt,
        format=fmt,
        deps=deps,
        record=record,
        log=log,
        ending=ending,
        link=link,
        playout=playout,
        responses=responses,
        turns=CallerTurns(keep_bytes=int(_KEEP_UTTERANCE_MS * fmt.model_bytes_per_ms)),
        latency=ResponseLatency(session_config.vad_silence_ms(prompt)),
        bot_audio=BotAudioConverter(fmt),
        recorder=recorder,
        activity=asyncio.Event(),
        echo=echo,
    )


def pcm16(fmt: MediaFormat, data: bytes, big_endian: bool = False) -> Int16Array:
    """Carrier audio as samples (for the recording and the onset detector)."""
    return mulaw_to_pcm16(data) if fmt.is_mulaw else l16_to_pcm16(data, big_endian=big_endian)
