"""The carrier side of a call: the Vobiz stream socket, what arrives on it, and resuming a stream that dropped."""

from __future__ import annotations

import asyncio
import contextlib

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.exceptions import ConnectionClosed

from agent.calls.caller_audio import CallerAudio
from agent.calls.context import CallContext
from agent.calls.interruption import Interruption
from agent.calls.outcome import CallOver
from agent.carrier.clock import CarrierClock
from agent.carrier.frames import CarrierClosed, receive_text
from agent.protocol.vobiz import messages
from agent.protocol.vobiz.messages import InboundError, StartInfo, parse_inbound
from agent.waiting import within


class InboundDrops:
    """Count every dropped message; log the 1st, 2nd, 4th, 8th… of each kind so a flood cannot flood the log."""

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx
        self._counts: dict[str, int] = {}
        self.total = 0

    def __call__(self, reason: str, detail: str) -> None:
        self.total += 1
        self._ctx.metrics.inbound_dropped.labels(reason).inc()
        count = self._counts[reason] = self._counts.get(reason, 0) + 1
        if count & (count - 1) == 0 or count % 1000 == 0:
            self._ctx.record.event("inbound_dropped", reason=reason, count=count)
            self._ctx.log.warning("dropped carrier message (%s, %d so far): %s", reason, count, detail[:200])


class CarrierStream:
    def __init__(self, ctx: CallContext, stream_id: str, drops: InboundDrops) -> None:
        self._ctx = ctx
        self.stream_id = stream_id
        self._drop = drops
        self.ws: WebSocket | None = None
        self.clock = CarrierClock()
        self._lost: asyncio.Future[tuple[WebSocket, str]] | None = None

    async def send(self, text: str) -> None:
        if self._lost is not None:
            return  # nothing to send to while Vobiz reconnects; playout keeps its audio queued
        ws = self.ws
        if ws is None or ws.client_state != WebSocketState.CONNECTED:
            raise CallOver
        try:
            await ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError, ConnectionClosed):
            if self._ctx.ending.closing:
                raise CallOver from None
            # The reader decides: it gets the close code (a hang-up ends the call, a drop waits for Vobiz to
            # reconnect), and it gets it whichever of the two noticed first. Until then sends are dropped.
            return

    async def close(self) -> None:
        ws = self.ws
        if ws is not None and ws.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await within(1.0, ws.close())

    async def clear_line(self) -> None:
        await self.send(messages.clear_audio(self.stream_id))

    async def read(self, caller: CallerAudio, interruption: Interruption) -> None:
        ending = self._ctx.ending
        dropped = self._drop.total
        while True:
            assert self.ws is not None
            if self._drop.total != dropped:
                # Frames already buffered are read without the loop ever getting back control: a flood of bad
                # ones on this call must not hold up the other calls' playout, so each drop yields once.
                await asyncio.sleep(0)
            dropped = self._drop.total
            try:
                text = await receive_text(self.ws)
            except CarrierClosed as closed:
                if not ending.closing and closed.may_come_back and await self._await_new_stream(interruption):
                    continue
                if not ending.closing:
                    ending.unless_closing("carrier_closed")
                    self._ctx.record.event("carrier_closed", code=closed.code)
                raise CallOver from None
            if text is None:
                self._drop("binary_frame", "binary WebSocket frame")
                continue
            try:
                event = parse_inbound(text)
            except InboundError as exc:
                self._drop(exc.reason, exc.detail)
                continue
            await self._on_event(event, caller)

    async def _on_event(self, event: messages.InboundEvent, caller: CallerAudio) -> None:
        ctx = self._ctx
        match event:
            case messages.MediaEvent():
                if event.media.track != "inbound":
                    return
                self.clock.observe(event.media.timestamp, ctx.playout.clock())
                await caller.on_media(event.media.payload)
            case messages.PlayedStreamEvent():
                ctx.playout.on_played(event.name, self.clock.sent_at(ctx.playout.clock()))
            case messages.ClearedAudioEvent():
                ctx.record.event("cleared_audio")
            case messages.DtmfEvent():
                caller.on_dtmf(event.digit)
            case messages.StopEvent():
                ctx.record.event("carrier_stop")
                ctx.ending.unless_closing("carrier_stop")
                raise CallOver
            case messages.StartEvent():
                self._drop("duplicate_start", "start after the stream already started")

    async def _await_new_stream(self, interruption: Interruption) -> bool:
        """The stream dropped without a close (network): with <Stream maxRetries> Vobiz reconnects with a new
        streamId. Keep the model session and wait a little; whatever the carrier had queued is lost, so the
        model is told only what was heard."""
        ctx = self._ctx
        wait_s = ctx.settings.stream_resume_s
        if wait_s <= 0:
            return False
        self._lost = lost = asyncio.get_running_loop().create_future()
        ctx.playout.paused = True
        lost_answer = await interruption.line_lost()
        ctx.record.event("carrier_lost", waiting_s=wait_s)
        ctx.log.warning("stream dropped; waiting %.1fs for Vobiz to reconnect", wait_s)
        try:
            ws, stream_id = await within(wait_s, lost)
        except TimeoutError:
            if not lost.done() or lost.cancelled():
                ctx.record.event("carrier_not_back")
                return False
            ws, stream_id = lost.result()  # handed over in the very pass the wait ran out
        finally:
            self._lost = None
        self.ws, self.stream_id = ws, stream_id
        ctx.record.stream_id = stream_id
        ctx.playout.resume(stream_id)
        interruption.line_back()
        self.clock = CarrierClock()
        ctx.metrics.stream_resumes.inc()
        ctx.record.event("stream_resumed", stream_id=stream_id)
        if lost_answer or ctx.responses.busy:
            # The caller lost the end of an answer: have the model pick it up rather than leave silence.
            await ctx.ask(
                "The caller's line dropped for a moment while you were speaking. Briefly continue where you left off."
            )
        return True

    @property
    def awaiting(self) -> bool:
        return self._lost is not None and not self._lost.done()

    def resume(self, ws: WebSocket, start: StartInfo) -> bool:
        """Hand a reconnected stream to the waiting reader; False when none waits for one in this format."""
        if not self.awaiting or start.media_format != self._ctx.format or self._lost is None:
            return False
        self._lost.set_result((ws, start.streamId))
        return True
