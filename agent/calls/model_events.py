"""What a call does with each model event: play the answer, keep the transcript, hand barge-ins to the
interruption machine, collect tool calls, count the tokens against the cost cap."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable

from agent.calls.caller_audio import CallerAudio
from agent.calls.context import CallContext
from agent.calls.interruption import Audio, Interruption
from agent.calls.model_session import ModelSession
from agent.calls.tools import ToolCall
from agent.protocol.realtime import server_events as ev


class ModelEvents:
    def __init__(
        self,
        ctx: CallContext,
        interruption: Interruption,
        caller: CallerAudio,
        session: ModelSession,
        *,
        started: float,
        start_tool: Callable[[ToolCall], None],
        over_budget: Callable[[], None],
    ) -> None:
        self._ctx = ctx
        self._interruption = interruption
        self._caller = caller
        self._session = session
        self._start_tool = start_tool
        self._over_budget = over_budget  # the cost cap is reached: wrap the call up
        self._tool_calls: list[ToolCall] = []
        self._started = started  # when the call started (monotonic): the greeting's latency counts from it
        self._greeted = False

    async def handle(self, event: ev.ServerEvent) -> None:
        ctx, interruption = self._ctx, self._interruption
        ctx.responses.progress()
        match event:
            case ev.AudioDelta():
                self._on_audio(event)
            case ev.TranscriptDelta():
                if interruption.wants_words(event.item_id):
                    ctx.record.assistant_text(event.item_id, event.delta)
            case ev.SpeechStarted():
                ctx.record.caller_started(event.item_id)
                self._caller.active(speaking=True)
                await interruption.on_speech_started(event.item_id, event.audio_start_ms)
            case ev.ResponseCreated():
                ctx.responses.created(event.response.id, event.response.metadata)
                ctx.activity.set()
                ctx.record.event("response_created", response_id=event.response.id)
            case ev.AudioDone():
                if interruption.audio_done(event.item_id):
                    ctx.playout.finish_item(event.item_id, ctx.bot_audio.finish_item())
            case ev.TranscriptDone():
                if interruption.wants_words(event.item_id):
                    received = interruption.received_ms(event.item_id)
                    ctx.record.assistant_done(event.item_id, event.transcript, received)
            case ev.OutputItemDone():
                self._collect_tool(event.item, event.response_id)
            case ev.ResponseDone():
                await self._on_response_done(event.response)
            case ev.SpeechStopped():
                ctx.record.caller_stopped(event.item_id)
                self._caller.active(speaking=False)
                ctx.latency.caller_stopped(event.audio_end_ms, ctx.playout.clock())
                interruption.on_speech_stopped(event.item_id, event.audio_end_ms)
            case ev.InputCommitted():
                ctx.turns.committed(event.item_id)
                await interruption.on_committed(event.item_id)
            case ev.CallerTranscript():
                ctx.record.caller_said(event.item_id, event.transcript)
                ctx.record.event("caller_transcript", item_id=event.item_id, text=event.transcript)
                interruption.on_caller_transcript(event.item_id, event.transcript)
            case ev.ItemTruncated():
                ctx.record.event("truncated", item_id=event.item_id, audio_end_ms=event.audio_end_ms)
            case ev.Error():
                await self._on_error(event.error)
            case ev.SessionChanged():
                ctx.record.event(event.type)

    def _on_audio(self, event: ev.AudioDelta) -> None:
        ctx = self._ctx
        audio = base64.b64decode(event.delta)
        admitted = self._interruption.audio(
            event.item_id, event.response_id, len(audio) / ctx.format.model_bytes_per_ms
        )
        if admitted is Audio.DROP:
            return  # late audio of an interrupted answer: the caller must never hear it
        if admitted is Audio.FIRST:
            ctx.bot_audio.reset()
            ctx.record.event("bot_audio_started", item_id=event.item_id)
            ctx.latency.answer_started(event.item_id)
            ctx.turns.answered()
        ctx.playout.enqueue(event.item_id, ctx.bot_audio.convert(audio))

    def on_line(self, item_id: str, at: float) -> None:
        """An item's first audio starts on the phone line: the greeting's and each answer's latency are known."""
        ctx = self._ctx
        if not self._greeted:
            self._greeted = True
            ctx.metrics.greeting_latency.observe(max(0.0, at - self._started))
        latency_ms = ctx.latency.on_line(item_id, at)
        if latency_ms is not None:
            ctx.record.assistant_latency(item_id, latency_ms)
            ctx.metrics.response_latency.observe(latency_ms / 1000)

    def _collect_tool(self, item: ev.OutputItem, response_id: str) -> None:
        if item.type == "function_call" and item.status == "completed":
            self._tool_calls.append(
                ToolCall.parse(item.call_id or "", item.name or "", item.arguments or "", response_id)
            )
            self._session.calls.add(item.call_id or "")

    async def _on_error(self, error: ev.ErrorDetail) -> None:
        ctx = self._ctx
        code = error.code or error.type or "unknown"
        ctx.metrics.model_errors.labels(code).inc()
        ctx.record.event("model_error", code=code, message=error.message)
        if await ctx.responses.refused(error.event_id, code):
            if code != "conversation_already_has_active_response":
                ctx.log.warning("model refused response.create (%s): %s", code, error.message)
            return
        if code == "response_cancel_not_active":
            ctx.log.debug("model: %s", error.message)
            return
        if await self._interruption.on_truncate_refused(error.message or ""):
            return
        ctx.log.warning("model error %s: %s", code, error.message)

    def _count_usage(self, usage: ev.Usage | None) -> None:
        ctx = self._ctx
        before = dataclasses.replace(ctx.record.usage)
        ctx.record.usage.add(usage)
        for kind, value in dataclasses.asdict(ctx.record.usage).items():
            grown = value - getattr(before, kind)
            if grown:
                ctx.metrics.tokens.labels(kind).inc(grown)
        cap = ctx.settings.max_call_cost_usd
        if cap is not None and ctx.record.usage.cost_usd(ctx.settings.prices) >= cap and not ctx.ending.closing:
            ctx.record.event("max_cost_reached", cap_usd=cap)
            self._over_budget()

    async def _on_response_done(self, response: ev.ResponseSummary) -> None:
        ctx = self._ctx
        response_id = response.id
        ctx.record.event("response_done", response_id=response_id, status=response.status)
        self._count_usage(response.usage)
        known = {t.call_id for t in self._tool_calls}
        for item in response.output:  # the output list has every function call, should an item event be lost
            if item.call_id not in known:
                self._collect_tool(item, response_id)
        tools = [t for t in self._tool_calls if t.response_id == response_id]
        self._tool_calls = [t for t in self._tool_calls if t.response_id != response_id]
        ctx.playout.forget(keep=set(self._interruption.items_of(response_id)))
        if response.status == "completed":
            ctx.turns.answered()  # with words (heard already) or with a tool call
            for tool in tools:
                self._start_tool(tool)
        await ctx.responses.finished(response_id)
        ctx.activity.set()
