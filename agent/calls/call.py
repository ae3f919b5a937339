"""One phone call: the full-duplex bridge between a Vobiz stream socket and an OpenAI Realtime session.

Everything a call owns lives here and in one task group: the carrier reader, the caller-audio pump, the model
reader and the playout pacer. Calls share nothing mutable, so a bad frame or a dead socket touches only this
call. When either side ends, the task group is cancelled and both sockets are closed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import enum
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from openai import OpenAIError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.exceptions import ConnectionClosed

from agent.audio.codecs import Int16Array, l16_to_pcm16, mulaw_to_pcm16
from agent.audio.formats import MediaFormat
from agent.audio.speech_onset import SpeechOnset
from agent.audio.transcode import BotAudioConverter, CallerAudioConverter
from agent.calls import handover, voicemail
from agent.calls.latency import ResponseLatency
from agent.calls.playout import Playout
from agent.calls.record import BargeIn, CallRecord
from agent.calls.responses import ResponseQueue
from agent.calls.timers import watch_duration, watch_idle, watch_model_liveness, watch_session_age, wrap_up
from agent.calls.tools import ToolCall, run_tool
from agent.carrier import messages
from agent.carrier.clock import CarrierClock
from agent.carrier.frames import CarrierClosed, receive_text
from agent.carrier.inbound_rate import InboundRateLimiter
from agent.carrier.messages import InboundError, StartInfo, parse_inbound
from agent.carrier.rest import VobizApiError, VobizClient
from agent.config import Settings
from agent.model import server_events as ev
from agent.model import session_config
from agent.model.connection import ModelConnector, ModelSocket, discard
from agent.observability.metrics import Metrics
from agent.observability.tracing import CallTracer
from agent.prompts.loader import Prompt
from agent.storage.recordings import CallRecorder, recording_path
from agent.storage.writer import RecordWriter
from agent.waiting import wait_event, within

log = logging.getLogger("agent.call")

_EARLY_BACKOFF_S = 3.0  # after an early clear the VAD did not confirm
_KEEP_UTTERANCE_MS = 15_000  # caller audio kept for a session switch: the longest utterance carried over
_SHORTER_THAN = re.compile(r"Audio content of (\d+)ms is already shorter than (\d+)ms")


class EndAction(enum.Enum):
    """What Vobiz should do once the stream ends: the after-stream route turns this into XML."""

    HANGUP = "hangup"
    APOLOGY = "apology"
    TRANSFER = "transfer"


@dataclass
class Outcome:
    action: EndAction
    reason: str
    transfer_number: str | None = None


class _CallOver(Exception):
    """Raised inside the task group to end the call; carries no error."""


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


class Call:
    def __init__(
        self,
        start: StartInfo,
        prompt: Prompt,
        record: CallRecord,
        deps: CallDeps,
        model: asyncio.Future[ModelSocket] | None = None,
    ) -> None:
        self.call_id = start.callId
        self.stream_id = start.streamId
        self.format: MediaFormat = start.media_format
        self.prompt = prompt
        self.record = record
        self.deps = deps
        self.settings = deps.settings
        self.metrics = deps.metrics
        self._model_pending = model
        self.model: ModelSocket | None = None
        self.model_ready = asyncio.Event()
        self.log = logging.LoggerAdapter(log, {"call_id": self.call_id})
        self._ws: WebSocket | None = None
        self._tg: asyncio.TaskGroup | None = None
        self.caller_audio = CallerAudioConverter(self.format, deps.settings.l16_byte_order)
        self.bot_audio = BotAudioConverter(self.format)
        self.playout = Playout(
            self._send_carrier,
            self.stream_id,
            self.format,
            chunk_ms=deps.settings.playout_chunk_ms,
            lead_ms=deps.settings.playout_lead_ms,
            checkpoint_interval_ms=deps.settings.checkpoint_interval_ms,
        )
        self.carrier_clock = CarrierClock()
        settings = deps.settings
        # A token holder must not pump audio into the model session (and the bill) faster than a phone line can.
        self.inbound_rate = InboundRateLimiter(settings.inbound_audio_max_rate, settings.inbound_audio_burst_s)
        self.onset = SpeechOnset(onset_ms=settings.early_barge_in_onset_ms) if settings.early_barge_in else None
        self._early: _EarlyClear | None = None  # the bot was silenced on the caller's onset; VAD to confirm
        self._early_backoff_until = 0.0
        self.recorder = CallRecorder(self.format.rate) if deps.settings.record_calls else None
        if self.recorder is not None:
            recorder, fmt = self.recorder, self.format
            self.playout.on_scheduled = lambda data, start: recorder.bot(_decode(fmt, data), fmt.rate, start)
            self.playout.on_late = recorder.shift
        self._caller_queue: deque[bytes] = deque()
        self._caller_queued_ms = 0.0
        self._caller_data = asyncio.Event()
        self._caller_bytes_per_ms = self.format.model_bytes_per_ms
        self.transfer_number = prompt.meta.transfer_number or deps.settings.transfer_number
        self.server_cancels = session_config.server_cancels_on_barge_in(prompt)
        # Model-side state.
        self.responses = ResponseQueue(
            self.model_send,
            start_timeout_s=settings.model_response_start_timeout_s,
            stall_timeout_s=settings.model_response_stall_timeout_s,
            on_abandon=lambda stage: self.metrics.responses_abandoned.labels(stage).inc(),
        )
        self.response_audio_items: dict[str, list[str]] = {}
        self.received_ms: dict[str, float] = {}
        self.interrupted_items: set[str] = set()
        self.interrupted_responses: set[str] = set()
        self._tool_calls: list[ToolCall] = []
        self._truncate_retried: set[str] = set()
        self._dtmf: list[str] = []
        self._dtmf_task: asyncio.Task[None] | None = None
        self.closing = False
        self.outcome: Outcome | None = None
        self.end_reason = "unknown"
        self.barge_ins = 0
        self._drops: dict[str, int] = {}
        self._audio_done: set[str] = set()
        self._truncated: set[str] = set()
        self._carrier_lost: asyncio.Future[tuple[WebSocket, str]] | None = None
        self.done = asyncio.Event()
        self.ended_monotonic: float | None = None
        self.started_monotonic = time.monotonic()
        self.model_started = self.started_monotonic
        # What the idle watcher needs: who is talking, and when the caller last made a sound.
        self.activity = asyncio.Event()
        self.caller_speaking = False
        self.caller_activity = self.started_monotonic
        self.latency = ResponseLatency(session_config.vad_silence_ms(prompt))
        self.turns = handover.CallerTurns(keep_bytes=int(_KEEP_UTTERANCE_MS * self.format.model_bytes_per_ms))
        self.session_calls: set[str] = set()  # function calls the current model session knows
        self._tools_running = 0
        self.playout.on_item_started = self._on_line
        self._greeted = False
        self.voicemail = voicemail.for_call(self)  # [voicemail hook] an answering machine gets the prompt's message

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def run(self, ws: WebSocket) -> None:
        """Bridge until either side ends; returns once both sockets are closed and every task is done."""
        self._ws = ws
        self.record.stream_id = self.stream_id
        self.record.event("stream_started", stream_id=self.stream_id, format=self.format.content_type)
        self.metrics.active_calls.inc()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._read_carrier(), name="carrier-reader")
                tg.create_task(self._model_session(), name="model-session")
                tg.create_task(self._pump_caller_audio(), name="caller-pump")
                tg.create_task(self.playout.run(), name="playout")
                tg.create_task(watch_idle(self), name="idle-watch")
                tg.create_task(watch_duration(self), name="duration-watch")
                tg.create_task(watch_session_age(self), name="session-age-watch")
                tg.create_task(self.responses.watch(), name="response-watch")
                tg.create_task(watch_model_liveness(self), name="model-liveness")
                if self.voicemail is not None:  # [voicemail hook]
                    tg.create_task(self.voicemail.run(), name="voicemail")
        except* _CallOver:
            pass
        except* Exception as group:
            for exc in group.exceptions:
                self.log.error("call failed: %r", exc, exc_info=exc)
            self.end_reason = "internal_error"
        finally:
            self._tg = None
            self.metrics.active_calls.dec()
            await self._close_sockets()
            self.record.cost_usd = self.record.usage.cost_usd(self.settings.prices)
            self.record.finish(self.end_reason)
            self._store()
            self.metrics.calls.labels(self.end_reason).inc()
            self.log.info("call ended: %s", self.end_reason)
            self.ended_monotonic = time.monotonic()
            self.done.set()

    def _store(self) -> None:
        """Hand the record and recording to background writers: nothing here may block the loop."""
        if self.recorder is not None:
            path = recording_path(self.settings.recordings_dir, self.call_id, self.record.started_at)
            self.record.recording_path = str(path)
            self.recorder.write_in_background(path, end_at=time.monotonic())
        if self.deps.records is not None:
            self.deps.records.submit(self.record, self.prompt)
        if self.deps.tracer is not None:
            self.deps.tracer.record_call(self.record)  # spans are queued; a background thread exports them

    def hang_up(self, reason: str) -> None:
        """End the call from outside (hangup webhook, shutdown); harmless when it is already ending."""
        if self.done.is_set():
            return
        self.end_reason = reason
        self.closing = True
        if self._tg is None:
            return
        over = self._raise_over()
        try:
            self._tg.create_task(over)
        except RuntimeError:  # the task group is already shutting down: the call is ending anyway
            over.close()

    def wrap_up(self, reason: str) -> None:
        """End the call from outside, politely: a spoken wrap-up, then the stream stops."""
        if self._tg is None or self.closing:
            return
        self.closing = True
        job = wrap_up(self, reason)
        try:
            self._tg.create_task(job, name="wrap-up")
        except RuntimeError:
            job.close()

    @staticmethod
    async def _raise_over() -> None:
        raise _CallOver

    async def _close_sockets(self) -> None:
        model, self.model = self.model, None
        if model is None and self._model_pending is not None:
            # The call ended before the pre-warmed connection was claimed: close it in the background.
            discard(self._model_pending)
        if model is not None:
            await model.close()
        ws = self._ws
        if ws is not None and ws.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await within(1.0, ws.close())

    async def set_outcome(self, outcome: Outcome) -> None:
        """Remember how the call should end, for the after-stream route (any replica may be asked)."""
        self.outcome = outcome
        await self.deps.on_outcome(self.call_id, outcome)

    async def finish(self, action: EndAction, reason: str) -> None:
        """End the stream in-band: `stop` makes Vobiz run the XML after <Stream>, which asks us what to do."""
        if self.outcome is None:
            number = self.transfer_number if action in (EndAction.TRANSFER, EndAction.APOLOGY) else None
            await self.set_outcome(Outcome(action, reason, number))
        self.closing = True
        self.end_reason = reason
        self.record.event("call_finishing", action=action.value, reason=reason)
        try:
            await self._send_carrier(messages.stop(self.stream_id))
        except _CallOver:
            if self.deps.vobiz is not None and action is EndAction.HANGUP:
                with contextlib.suppress(VobizApiError):
                    await self.deps.vobiz.hangup_call(self.call_id)
        raise _CallOver

    # --- carrier side --------------------------------------------------------------------------------------

    async def _send_carrier(self, text: str) -> None:
        if self._carrier_lost is not None:
            return  # nothing to send to while Vobiz reconnects; playout keeps its audio queued
        ws = self._ws
        if ws is None or ws.client_state != WebSocketState.CONNECTED:
            raise _CallOver
        try:
            await ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError, ConnectionClosed):
            if self.closing:
                raise _CallOver from None
            # The reader decides: it gets the close code (a hang-up ends the call, a drop waits for Vobiz to
            # reconnect), and it gets it whichever of the two noticed first. Until then sends are dropped.
            return

    async def _read_carrier(self) -> None:
        while True:
            assert self._ws is not None
            try:
                text = await receive_text(self._ws)
            except CarrierClosed as closed:
                if not self.closing and closed.may_come_back and await self._await_new_stream():
                    continue
                if not self.closing:
                    self.end_reason = "carrier_closed"
                    self.record.event("carrier_closed", code=closed.code)
                raise _CallOver from None
            if text is None:
                self._drop("binary_frame", "binary WebSocket frame")
                continue
            try:
                event = parse_inbound(text)
            except InboundError as exc:
                self._drop(exc.reason, exc.detail)
                continue
            await self._on_carrier_event(event)

    async def _await_new_stream(self) -> bool:
        """The stream dropped without a close (network): with <Stream maxRetries> Vobiz reconnects with a new
        streamId. Keep the model session and wait a little; whatever the carrier had queued is lost, so the
        model is told only what was heard."""
        wait_s = self.settings.stream_resume_s
        if wait_s <= 0:
            return False
        self._carrier_lost = asyncio.get_running_loop().create_future()
        self.playout.paused = True
        heard = self.playout.clear()
        self._drop_early()
        cut = [item for item, ms in heard.items() if ms < self.received_ms.get(item, 0.0) - 1]
        for item_id, heard_ms in heard.items():
            await self._truncate(item_id, heard_ms)
        for item_id in self.response_audio_items.get(self.responses.active_id or "", []):
            self.interrupted_items.add(item_id)
        self.bot_audio.reset()
        self.record.event("carrier_lost", waiting_s=wait_s)
        self.log.warning("stream dropped; waiting %.1fs for Vobiz to reconnect", wait_s)
        lost = self._carrier_lost
        try:
            ws, stream_id = await within(wait_s, lost)
        except TimeoutError:
            if not lost.done() or lost.cancelled():
                self.record.event("carrier_not_back")
                return False
            ws, stream_id = lost.result()  # handed over in the very pass the wait ran out
        finally:
            self._carrier_lost = None
        self._ws, self.stream_id = ws, stream_id
        self.record.stream_id = stream_id
        self.playout.resume(stream_id)
        self.carrier_clock = CarrierClock()
        self.metrics.stream_resumes.inc()
        self.record.event("stream_resumed", stream_id=stream_id)
        if cut or self.responses.busy:
            # The caller lost the end of an answer: have the model pick it up rather than leave silence.
            await self.ask(
                "The caller's line dropped for a moment while you were speaking. Briefly continue where you left off."
            )
        return True

    @property
    def awaiting_stream(self) -> bool:
        return self._carrier_lost is not None and not self._carrier_lost.done()

    async def resume(self, ws: WebSocket, start: StartInfo) -> bool:
        """Hand a reconnected stream to this call; returns once the call is over (the socket's lifetime)."""
        if not self.awaiting_stream or start.media_format != self.format or self._carrier_lost is None:
            return False
        self._carrier_lost.set_result((ws, start.streamId))
        await self.done.wait()
        return True

    def _drop(self, reason: str, detail: str) -> None:
        """Count every dropped message; log the 1st, 2nd, 4th, 8th… of each kind so a flood cannot flood the log."""
        self.metrics.inbound_dropped.labels(reason).inc()
        count = self._drops[reason] = self._drops.get(reason, 0) + 1
        if count & (count - 1) == 0 or count % 1000 == 0:
            self.record.event("inbound_dropped", reason=reason, count=count)
            self.log.warning("dropped carrier message (%s, %d so far): %s", reason, count, detail[:200])

    async def _on_carrier_event(self, event: messages.InboundEvent) -> None:
        if isinstance(event, messages.MediaEvent):
            if event.media.track != "inbound":
                return
            self.carrier_clock.observe(event.media.timestamp, self.playout.clock())
            try:
                payload = base64.b64decode(event.media.payload, validate=True)
            except (binascii.Error, ValueError) as exc:
                self._drop("bad_audio", str(exc))
                return
            if not self.inbound_rate.admit(len(payload) / self.format.bytes_per_ms / 1000, time.monotonic()):
                self._drop("too_fast", "caller audio arriving faster than real time")
                return
            try:
                audio = self.caller_audio.convert(payload)
            except ValueError as exc:
                self._drop("bad_audio", str(exc))
                return
            if self.voicemail is not None:  # [voicemail hook] a machine's greeting is no turn for the model
                self.voicemail.feed(_decode(self.format, payload, self.caller_audio.big_endian))
            else:
                self._queue_caller_audio(audio)
            if self.recorder is not None or self.onset is not None:
                pcm = _decode(self.format, payload, self.caller_audio.big_endian)
                if self.recorder is not None:
                    self.recorder.caller(pcm, self.format.rate)
                if self.onset is not None and self.onset.feed(pcm, self.format.rate):
                    await self._on_caller_onset()
        elif isinstance(event, messages.PlayedStreamEvent):
            self.playout.on_played(event.name, self.carrier_clock.sent_at(self.playout.clock()))
        elif isinstance(event, messages.ClearedAudioEvent):
            self.record.event("cleared_audio")
        elif isinstance(event, messages.DtmfEvent):
            self._on_dtmf(event.digit)
        elif isinstance(event, messages.StopEvent):
            self.record.event("carrier_stop")
            if not self.closing:
                self.end_reason = "carrier_stop"
            raise _CallOver
        elif isinstance(event, messages.StartEvent):
            self._drop("duplicate_start", "start after the stream already started")

    def _queue_caller_audio(self, audio: bytes) -> None:
        """Bounded: if the model side stalls, the oldest caller audio goes first and is counted."""
        if not audio:
            return
        self._caller_queue.append(audio)
        ms = len(audio) / self._caller_bytes_per_ms
        self._caller_queued_ms += ms
        self.latency.caller_frame(ms, self.playout.clock())
        while self._caller_queued_ms > self.settings.caller_queue_ms and len(self._caller_queue) > 1:
            dropped = self._caller_queue.popleft()
            ms = len(dropped) / self._caller_bytes_per_ms
            self._caller_queued_ms -= ms
            self.metrics.caller_audio_dropped_ms.inc(ms)
        self._caller_data.set()

    async def _pump_caller_audio(self) -> None:
        """Forward caller audio as it arrives; frames that queued up during a stall go out together."""
        while True:
            await self._caller_data.wait()
            await self.model_ready.wait()
            model = self.model
            if model is None or not self._caller_queue:
                self._caller_data.clear()
                continue
            audio = b"".join(self._caller_queue)
            self._caller_queue.clear()
            self._caller_queued_ms = 0.0
            self._caller_data.clear()
            message = '{"type":"input_audio_buffer.append","audio":"' + base64.b64encode(audio).decode() + '"}'
            try:
                await model.send_text(message)
                self.turns.sent(audio)
            except (ConnectionClosed, OpenAIError, OSError):
                # The model reader notices the drop and reconnects; keep this audio for the new session.
                self._caller_queue.appendleft(audio)
                self._caller_queued_ms += len(audio) / self._caller_bytes_per_ms
                self.model_ready.clear()

    def _caller_active(self, *, speaking: bool | None = None) -> None:
        if speaking is not None:
            self.caller_speaking = speaking
        self.caller_activity = time.monotonic()
        self.activity.set()

    def _on_dtmf(self, digit: str) -> None:
        """Collect key presses and hand them to the model together, after a pause or on '#'."""
        self.record.event("dtmf", digit=digit)
        self._caller_active()
        self._dtmf.append(digit)
        if self._dtmf_task is not None:
            self._dtmf_task.cancel()
        if self._tg is None:
            return
        delay = 0.0 if digit == "#" else self.settings.dtmf_flush_s
        self._dtmf_task = self._tg.create_task(self._flush_dtmf(delay))

    async def _flush_dtmf(self, delay: float) -> None:
        await asyncio.sleep(delay)
        digits, self._dtmf = "".join(self._dtmf), []
        if not digits:
            return
        self.record.system_note(f"keypad: {digits}")
        await self.model_send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": f"[The caller pressed keypad keys: {digits}]"}],
                },
            }
        )
        await self.request_response()

    # --- model side ----------------------------------------------------------------------------------------

    async def model_send(self, event: dict[str, Any]) -> None:
        model = self.model
        if model is None:
            return
        try:
            await model.send(event)
        except (ConnectionClosed, OpenAIError, OSError) as exc:
            self.log.warning("model send failed (%s): %r", event.get("type"), exc)

    async def request_response(self, response: dict[str, Any] | None = None) -> asyncio.Future[str | None]:
        return await self.responses.request(response)

    async def ask(self, guidance: str, **response: Any) -> asyncio.Future[str | None]:
        """Ask for a reply steered by `guidance`, in the prompt's persona (see `session_config.guided`)."""
        return await self.request_response(session_config.guided(self.prompt, guidance, **response))

    async def say(self, guidance: str) -> bool:
        """Have the model say something (after whatever it is saying now); True once the caller heard it."""
        done = await self.ask(guidance, tool_choice="none")
        try:
            response_id = await within(self.settings.goodbye_timeout_s, done)
        except TimeoutError:
            return False
        return await self.wait_heard(self.response_audio_items.get(response_id or "", []))

    async def wait_heard(self, items: list[str]) -> bool:
        """Wait until the last of these items has played on the phone (its final checkpoint acknowledged)."""
        if not items:
            return False
        remaining = max(0.0, self.playout.idle_at() - time.monotonic())
        return await self.playout.wait_played(items[-1], remaining + self.settings.goodbye_timeout_s)

    async def _model_session(self) -> None:
        """Hold one model session for the call, reconnecting with history when the socket drops."""
        try:
            if self._model_pending is not None:
                pending, self._model_pending = self._model_pending, None
                self.model = await pending
            else:
                self.model = await self._open_model()
                if self.voicemail is None:  # [voicemail hook] no greeting for an answering machine
                    await self.request_response(session_config.greeting_response(self.prompt)["response"])
        except (ConnectionClosed, OpenAIError, OSError, TimeoutError) as exc:
            self.log.error("could not open the model session: %r", exc)
            self.record.event("model_connect_failed", error=repr(exc))
            if not await self._reconnect():
                await self.finish(self._failure_action(), "model_unavailable")
        self.record.event("model_connected")
        self.model_started = time.monotonic()
        self.model_ready.set()
        while True:
            model = self.model
            assert model is not None
            try:
                async for event in model.events():
                    if self.model is not model:
                        break  # replaced (rollover): its late events must not act twice
                    await self._on_model_event(event)
                if self.model is not model:
                    continue  # rolled over to a fresh session
                if self.closing:
                    return
                self.log.warning("model closed the session")
            except (ConnectionClosed, OpenAIError, OSError) as exc:
                if self.model is not model:
                    continue
                if self.closing:
                    return
                self.log.warning("model socket dropped: %r", exc)
            self.record.event("model_dropped")
            if not await self._reconnect():
                await self.finish(self._failure_action(), "model_unavailable")

    async def _seed(self, model: ModelSocket) -> list[Any]:
        """Tell a fresh session what was said and heard so far, in order."""
        history = self.record.history()
        for turn in history:
            role, kind = ("assistant", "output_text") if turn.speaker == "assistant" else ("user", "input_text")
            item = {"type": "message", "role": role, "content": [{"type": kind, "text": turn.text}]}
            await model.send({"type": "conversation.item.create", "item": item})
        return history

    def quiet(self) -> bool:
        """Nothing in flight: nobody talking, nothing being said, asked for or about to be, no turn waiting for
        its answer, no tool running. A seamless moment to switch sessions."""
        busy = self.caller_speaking or self.responses.busy or self.turns.open or self._tools_running
        return not (busy or self.playout.is_audible() or self._caller_queue)

    async def rollover(self) -> bool:
        """Move the conversation to a fresh model session before the current one hits its time cap.

        The new session is opened (the slow part) while the call goes on, then seeded and switched to at a
        quiet moment, so the caller hears no gap and the model forgets nothing that was heard. If no quiet moment
        comes in time, the switch happens anyway and carries over whatever was in flight (`_adopt`).
        """
        try:
            fresh = await self._open_model()
        except (ConnectionClosed, OpenAIError, OSError, TimeoutError) as exc:
            self.log.warning("could not open a session to roll over to: %r", exc)
            return False
        deadline = time.monotonic() + self.settings.rollover_quiet_wait_s
        while not self.quiet() and time.monotonic() < deadline:
            self.activity.clear()
            wait = self.playout.recheck_in(time.monotonic()) if self.playout.is_audible() else 1.0
            await wait_event(self.activity, min(wait, deadline - time.monotonic()))
        # No quiet moment came. An answer being generated is let finish (seconds, and well inside the cap): all of
        # its audio then plays on, where a continuation from the new session would leave a gap on the line.
        finish_by = time.monotonic() + self.settings.rollover_answer_wait_s
        while self.responses.active and time.monotonic() < finish_by:
            self.activity.clear()
            await wait_event(self.activity, finish_by - time.monotonic())
        quiet = self.quiet()
        self.model_ready.clear()  # the caller's audio waits in the queue while the sessions change hands
        in_flight = self._in_flight()
        try:
            history = await self._seed(fresh)
        except (ConnectionClosed, OpenAIError, OSError) as exc:
            self.log.warning("could not seed the new session: %r", exc)
            self.model_ready.set()
            await fresh.close()
            return False
        old = self.model
        await self._adopt(fresh, in_flight)
        self.metrics.model_reconnects.labels("rollover").inc()
        self.record.event("model_rollover", seeded_turns=len(history), quiet=quiet)
        if old is not None:
            await old.close()  # its reader notices the switch and moves to the fresh session
        return True

    def _failure_action(self) -> EndAction:
        return EndAction.APOLOGY

    async def _open_model(self) -> ModelSocket:
        model = await self.deps.connector.connect(self.prompt.meta.model)
        await model.send(self._session_update())
        return model

    def _session_update(self) -> dict[str, Any]:
        return session_config.session_update(self.prompt, self.format, can_transfer=bool(self.transfer_number))

    async def _reconnect(self) -> bool:
        """Open a fresh session, re-send the configuration and re-tell what the caller heard so far; whatever was
        in flight (an answer, an unanswered turn, an utterance) carries on there (`_adopt`)."""
        self.model_ready.clear()
        old, self.model = self.model, None
        if old is not None:
            await old.close()
        in_flight = self._in_flight()
        for attempt in range(self.settings.model_reconnect_attempts):
            try:
                model = await self._open_model()
                history = await self._seed(model)
            except (ConnectionClosed, OpenAIError, OSError, TimeoutError) as exc:
                self.log.warning("model reconnect attempt %d failed: %r", attempt + 1, exc)
                self.metrics.model_reconnects.labels("failed_attempt").inc()
                await asyncio.sleep(min(0.25 * 2**attempt, 2.0))
                continue
            self.metrics.model_reconnects.labels("ok").inc()
            self.record.event("model_reconnected", attempt=attempt + 1, seeded_turns=len(history))
            await self._adopt(model, in_flight)
            return True
        self.metrics.model_reconnects.labels("gave_up").inc()
        return False

    def _in_flight(self) -> _InFlight:
        """What the current session was doing, taken before it is replaced. An answer cut mid-audio keeps only the
        words its received audio holds, so the new session's history is what the caller heard."""
        items = self.response_audio_items.get(self.responses.active_id or "", [])
        mid_answer = any(item not in self._audio_done for item in items)
        if mid_answer:
            self._cut_unspoken()
        return _InFlight(mid_answer, requested=self.responses.busy and not items)

    async def _adopt(self, fresh: ModelSocket, in_flight: _InFlight) -> None:
        """Switch to a seeded session, carrying over what the old one had not finished: the caller's unanswered
        turn and utterance in progress (see `handover`), the answer it was speaking, the responses we had asked
        for. The old session's events are ignored from here on, so nothing is answered twice."""
        turn = self.record.turn_for_item(self.turns.turn_item) if self.turns.turn_item else None
        if self.turns.open and (turn is None or not turn.text.strip()) and self.turns.turn_audio:
            await fresh.send(handover.audio_turn_item(self.turns.turn_audio))  # its transcript never came
        carried_ms = 0.0
        if self.caller_speaking and self.turns.pending:
            await fresh.send(handover.append_audio(bytes(self.turns.pending)))
            carried_ms = len(self.turns.pending) / self.format.model_bytes_per_ms
        self.turns.new_session()
        self.session_calls.clear()
        self.model = fresh
        self.latency.new_session(self._caller_queued_ms + carried_ms)  # the new buffer starts with the carried audio
        self.model_started = time.monotonic()
        for item_id in list(self.received_ms):
            self.interrupted_items.add(item_id)  # a late delta from the old session must not play
        self.responses.reset(requeue_unheard=in_flight.requested)
        self.playout.finish_all()  # an answer the old session was still streaming ends with what arrived
        self.model_ready.set()
        if in_flight.mid_answer:
            await self.ask(
                "The line dropped for a moment while you were speaking. Briefly continue where you left off."
            )
        elif self.turns.open:
            await self.request_response()  # the caller's turn was never answered
        await self.responses.resume()

    def _cut_unspoken(self) -> None:
        """The session went away mid-answer: its received audio still plays in full, but the transcript runs
        ahead of the audio. Keep only the words that audio can hold, so the new session continues from what the
        caller actually heard rather than skipping what never arrived."""
        rate = self.record.chars_per_ms()
        for item_id, received in self.received_ms.items():
            turn = self.record.turn_for_item(item_id)
            if item_id in self._audio_done or item_id in self._truncated or turn is None or turn.interrupted:
                continue
            # At least the last word goes: the audio may have stopped in the middle of it.
            spoken_ms = max(len(turn.text) / rate, received + 1)
            self.record.assistant_interrupted(item_id, received, spoken_ms)

    async def _on_model_event(self, event: ev.ServerEvent) -> None:
        self.responses.progress()
        match event:
            case ev.AudioDelta():
                self._on_audio_delta(event)
            case ev.TranscriptDelta():
                if event.item_id not in self.interrupted_items:
                    self.record.assistant_text(event.item_id, event.delta)
            case ev.SpeechStarted():
                await self._on_speech_started(event)
            case ev.ResponseCreated():
                self.responses.created(event.response.id, event.response.metadata)
                self.activity.set()
                self.record.event("response_created", response_id=event.response.id)
            case ev.AudioDone():
                self._audio_done.add(event.item_id)
                if event.item_id not in self.interrupted_items:
                    self.playout.finish_item(event.item_id, self.bot_audio.finish_item())
            case ev.TranscriptDone():
                if event.item_id not in self.interrupted_items:
                    received = self.received_ms.get(event.item_id, 0.0)
                    self.record.assistant_done(event.item_id, event.transcript, received)
            case ev.OutputItemDone():
                item = event.item
                if item.type == "function_call" and item.status == "completed":
                    self._tool_calls.append(_tool_call(item, event.response_id))
                    self.session_calls.add(item.call_id or "")
            case ev.ResponseDone():
                await self._on_response_done(event.response)
            case ev.SpeechStopped():
                self.record.caller_stopped(event.item_id)
                self._caller_active(speaking=False)
                self.latency.caller_stopped(event.audio_end_ms, self.playout.clock())
            case ev.InputCommitted():
                self.turns.committed(event.item_id)
            case ev.CallerTranscript():
                self.record.caller_said(event.item_id, event.transcript)
                self.record.event("caller_transcript", item_id=event.item_id, text=event.transcript)
            case ev.ItemTruncated():
                self.record.event("truncated", item_id=event.item_id, audio_end_ms=event.audio_end_ms)
            case ev.Error():
                await self._on_model_error(event.error)
            case ev.SessionChanged():
                self.record.event(event.type)

    def _on_audio_delta(self, event: ev.AudioDelta) -> None:
        item_id: str = event.item_id
        if self.voicemail is not None and self.voicemail.mutes(event.response_id, item_id):  # [voicemail hook]
            return
        if item_id in self.interrupted_items or event.response_id in self.interrupted_responses:
            return  # late audio of an interrupted answer: the caller must never hear it
        audio = base64.b64decode(event.delta)
        if item_id not in self.received_ms:
            self.received_ms[item_id] = 0.0
            self.response_audio_items.setdefault(event.response_id, []).append(item_id)
            self.bot_audio.reset()
            self.record.event("bot_audio_started", item_id=item_id)
            self.latency.answer_started(item_id)
            self.turns.answered()
        self.received_ms[item_id] += len(audio) / self.format.model_bytes_per_ms
        self.playout.enqueue(item_id, self.bot_audio.convert(audio))

    def _on_line(self, item_id: str, at: float) -> None:
        """An item's first audio starts on the phone line: the greeting's and each answer's latency are known."""
        if not self._greeted:
            self._greeted = True
            self.metrics.greeting_latency.observe(max(0.0, at - self.started_monotonic))
        latency_ms = self.latency.on_line(item_id, at)
        if latency_ms is not None:
            self.record.assistant_latency(item_id, latency_ms)
            self.metrics.response_latency.observe(latency_ms / 1000)

    async def _on_caller_onset(self) -> None:
        """The caller seems to start talking over the bot: silence it now, keep what was not heard, and let the
        model's VAD confirm (a barge-in) or not (the bot carries on from where it stopped)."""
        busy = self.closing or self.caller_speaking or self._carrier_lost is not None or self._early is not None
        backing_off = self.playout.clock() < self._early_backoff_until
        if busy or backing_off or self.playout.held or not self.playout.is_audible():
            return
        started = self.playout.clock()
        # All bookkeeping first, with no await in between: a speech_started handled while the clear is being
        # sent must find this early clear.
        heard = self.playout.hold()
        if self.recorder is not None:
            self.recorder.cut(started)
        self._early = early = _EarlyClear()
        self.metrics.early_clears.inc()
        self.record.event("early_clear", heard={k: round(v) for k, v in heard.items()})
        if self._tg is not None:
            self._tg.create_task(self._confirm_early_clear(early), name="early-clear")
        await self._send_carrier(messages.clear_audio(self.stream_id))
        early.clear_ms = (self.playout.clock() - started) * 1000

    def _drop_early(self) -> None:
        """The held audio was cleared for good (a barge-in, a lost stream): no early clear is pending any more."""
        early, self._early = self._early, None
        if early is not None:
            early.confirmed.set()

    async def _confirm_early_clear(self, early: _EarlyClear) -> None:
        if await wait_event(early.confirmed, self.settings.early_barge_in_confirm_ms / 1000):
            return
        if self._early is early:  # no speech_started: a cough, a door, a click; the bot picks up where it was
            self._early = None
            self.playout.release()
            # Echo or a noisy line would cut the bot again and again: trust only the model's VAD for a while.
            self._early_backoff_until = self.playout.clock() + _EARLY_BACKOFF_S
            self.metrics.early_clear_false_alarms.inc()
            self.record.event("early_clear_released")

    async def _on_speech_started(self, event: ev.SpeechStarted) -> None:
        self.record.caller_started(event.item_id)
        self._caller_active(speaking=True)
        if self.closing:
            return
        started = time.monotonic()
        early = self._early if self.playout.held else None  # else it was already cleared for good
        self._drop_early()
        audible = early is not None or self.playout.is_audible(started)
        if early is not None:
            clear_ms = early.clear_ms  # the caller was already not hearing the bot: that clear was the barge-in
        elif audible:
            # First and before anything else: the caller must stop hearing the bot.
            await self._send_carrier(messages.clear_audio(self.stream_id))
            clear_ms = (time.monotonic() - started) * 1000
        if audible:
            self.metrics.clear_latency.observe(clear_ms / 1000)
            self.metrics.barge_ins.inc()
            self.barge_ins += 1
        heard = self.playout.clear() if audible else {}  # after an early clear: nothing has played since
        # The playout still knows items cut by earlier barge-ins; only the ones this barge-in cut count here.
        heard = {k: v for k, v in heard.items() if k not in self._truncated}
        if audible and self.recorder is not None:
            self.recorder.cut()  # queued bot audio that was never heard stays out of the recording
        self.bot_audio.reset()
        active = self.responses.active_id
        if active:
            self.interrupted_responses.add(active)
        for item_id in self.response_audio_items.get(active or "", []):
            self.interrupted_items.add(item_id)
        for item_id, heard_ms in heard.items():
            await self._truncate(item_id, heard_ms)
        if audible:
            self.record.event("barge_in", heard={k: round(v) for k, v in heard.items()})
            cut = next((k for k, v in reversed(heard.items()) if v < self.received_ms.get(k, 0.0) - 1), None)
            self.record.barge_ins.append(
                BargeIn(time.time(), cut, round(heard.get(cut, 0.0) if cut else 0.0), round(clear_ms, 2))
            )
        if active and not self.server_cancels:
            await self.model_send({"type": "response.cancel", "response_id": active})

    async def _run_tool(self, tool: ToolCall) -> None:
        self._tools_running += 1
        try:
            await run_tool(self, tool)
        finally:
            self._tools_running -= 1
            self.activity.set()

    async def _truncate(self, item_id: str, heard_ms: float) -> None:
        """Make the model's memory match what the caller heard of an item."""
        received = self.received_ms.get(item_id, 0.0)
        if received <= 0 or item_id in self._truncated:
            return  # no audio, or already cut to what was heard: nothing more to forget
        if heard_ms >= received - 1 and item_id in self._audio_done:
            return  # the whole item had played: nothing to forget
        self.interrupted_items.add(item_id)
        self._truncated.add(item_id)
        self.record.assistant_interrupted(item_id, heard_ms, received)
        if heard_ms < 1:
            # The caller heard none of it: remove it rather than keep words nobody heard.
            self.record.event("item_deleted", item_id=item_id)
            await self.model_send({"type": "conversation.item.delete", "item_id": item_id})
            return
        audio_end_ms = int(min(heard_ms, received))
        self.metrics.truncations.inc()
        self.record.event("truncate", item_id=item_id, audio_end_ms=audio_end_ms, received_ms=round(received))
        await self.model_send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": audio_end_ms,
            }
        )

    async def _on_model_error(self, error: ev.ErrorDetail) -> None:
        code = error.code or error.type or "unknown"
        self.metrics.model_errors.labels(code).inc()
        self.record.event("model_error", code=code, message=error.message)
        if await self.responses.refused(error.event_id, code):
            if code != "conversation_already_has_active_response":
                self.log.warning("model refused response.create (%s): %s", code, error.message)
            return
        if code in ("response_cancel_not_active",):
            self.log.debug("model: %s", error.message)
            return
        match = _SHORTER_THAN.search(error.message or "")
        if match:
            # Our byte count ran ahead of the server's: retry once at the length the server reports.
            await self._retry_truncate(int(match.group(1)))
            return
        self.log.warning("model error %s: %s", code, error.message)

    async def _retry_truncate(self, server_ms: int) -> None:
        for item_id in reversed(list(self.received_ms)):
            if item_id in self.interrupted_items and item_id not in self._truncate_retried:
                self._truncate_retried.add(item_id)
                await self.model_send(
                    {
                        "type": "conversation.item.truncate",
                        "item_id": item_id,
                        "content_index": 0,
                        "audio_end_ms": server_ms,
                    }
                )
                return

    def _count_usage(self, usage: Any) -> None:
        before = dataclasses.replace(self.record.usage)
        self.record.usage.add(usage)
        for kind, value in dataclasses.asdict(self.record.usage).items():
            grown = value - getattr(before, kind)
            if grown:
                self.metrics.tokens.labels(kind).inc(grown)
        cap = self.settings.max_call_cost_usd
        over = cap is not None and self.record.usage.cost_usd(self.settings.prices) >= cap
        if over and not self.closing:
            self.record.event("max_cost_reached", cap_usd=cap)
            self.wrap_up("max_cost")

    async def _on_response_done(self, response: ev.ResponseSummary) -> None:
        response_id: str = response.id
        self.record.event("response_done", response_id=response_id, status=response.status)
        self._count_usage(response.usage)
        known = {t.call_id for t in self._tool_calls}
        for item in response.output:  # the output list has every function call, should an item event be lost
            if item.type == "function_call" and item.status == "completed" and item.call_id not in known:
                self._tool_calls.append(_tool_call(item, response_id))
                self.session_calls.add(item.call_id or "")
        tools = [t for t in self._tool_calls if t.response_id == response_id]
        self._tool_calls = [t for t in self._tool_calls if t.response_id != response_id]
        self.playout.forget(keep=set(self.response_audio_items.get(response_id, [])))
        if response.status == "completed":
            self.turns.answered()  # with words (heard already) or with a tool call
        if response.status == "completed" and self._tg is not None:
            for tool in tools:
                self._tg.create_task(self._run_tool(tool), name=f"tool-{tool.name}")
        await self.responses.finished(response_id)
        self.activity.set()


@dataclass(frozen=True)
class _InFlight:
    mid_answer: bool  # an answer was being spoken: the new session continues it
    requested: bool  # we had asked for a response that never produced audio: ask again


@dataclass
class _EarlyClear:
    clear_ms: float = 0.0  # measured once the clear is sent
    confirmed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


def _tool_call(item: ev.OutputItem, response_id: str) -> ToolCall:
    return ToolCall.parse(item.call_id or "", item.name or "", item.arguments or "", response_id)


def _decode(fmt: MediaFormat, data: bytes, big_endian: bool = False) -> Int16Array:
    return mulaw_to_pcm16(data) if fmt.is_mulaw else l16_to_pcm16(data, big_endian=big_endian)
