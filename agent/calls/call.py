"""One phone call: the full-duplex bridge between a Vobiz stream socket and an OpenAI Realtime session.

Everything a call owns lives in one task group: the carrier reader (`CarrierStream`), the caller-audio pump
(`CallerAudio`), the model reader (`ModelSession`, whose events `ModelEvents` dispatches), the playout pacer and
the watchers. What the caller heard of the bot is kept by `Interruption`. Calls share nothing mutable, so a bad
frame or a dead socket touches only this call. When either side ends, the task group is cancelled and both
sockets are closed. This module only wires the parts together and runs the call's life, start to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any, NoReturn

from starlette.websockets import WebSocket

from agent.audio.formats import MediaFormat
from agent.calls import voicemail
from agent.calls.caller_audio import CallerAudio
from agent.calls.carrier_stream import CarrierStream, InboundDrops
from agent.calls.context import CallDeps, Log, new_context
from agent.calls.interruption import Interruption
from agent.calls.model_events import ModelEvents
from agent.calls.model_session import ModelSession, transfer_number
from agent.calls.outcome import CallOver, EndAction, Ending, Outcome, raise_over
from agent.calls.timers import watch_duration, watch_idle, wrap_up
from agent.calls.tools import ToolCall, run_tool
from agent.carrier.rest_errors import VobizApiError
from agent.config import Settings
from agent.model.connection import ModelSocket
from agent.prompts.loader import Prompt
from agent.protocol.vobiz import messages
from agent.protocol.vobiz.messages import StartInfo
from agent.records.record import CallRecord
from agent.storage.recordings import recording_path
from agent.waiting import within

log = logging.getLogger("agent.call")


class Call:
    """One call's life; also what the timers and the tools may do with it (`CallControl`)."""

    def __init__(
        self,
        start: StartInfo,
        prompt: Prompt,
        record: CallRecord,
        deps: CallDeps,
        model: asyncio.Future[ModelSocket] | None = None,
    ) -> None:
        self.call_id = start.callId
        self.format: MediaFormat = start.media_format
        self.prompt = prompt
        self.record = record
        self.deps = deps
        self.settings: Settings = deps.settings
        self.log: Log = logging.LoggerAdapter(log, {"call_id": self.call_id})
        self.ending = Ending()
        self._tg: asyncio.TaskGroup | None = None
        self._tools_running = 0
        self.outcome: Outcome | None = None
        self.done = asyncio.Event()
        self.started_monotonic = time.monotonic()
        self.ended_monotonic: float | None = None
        self.transfer_number = transfer_number(prompt, deps.settings)
        self.ctx = ctx = new_context(
            self.call_id, prompt, self.format, deps, record, self.log, self.ending, start.streamId, self._send
        )
        self.playout, self.activity, self.model_ready = ctx.playout, ctx.activity, ctx.link.ready
        drops = InboundDrops(ctx)
        self.carrier = CarrierStream(ctx, start.streamId, drops)
        self.interruption = Interruption(ctx, self.carrier.clear_line, self._spawn)
        self.caller = CallerAudio(ctx, self.interruption, drops, self._spawn)
        machine = voicemail.at_answer(ctx)
        self.session = ModelSession(
            ctx,
            self.caller,
            self.interruption,
            quiet=self.quiet,
            unavailable=self._unavailable,
            pending=model,
            greet=machine is None,  # an answering machine gets the prompt's message, once its greeting is over
        )
        self.voicemail = None if machine is None else voicemail.Voicemail(self, machine)
        self.events = ModelEvents(
            ctx,
            self.interruption,
            self.caller,
            self.session,
            started=self.started_monotonic,
            start_tool=self._start_tool,
            over_budget=lambda: self.wrap_up("max_cost"),
        )
        self.playout.on_item_started = self.events.on_line

    # --- what others read ----------------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self.ending.closing

    @property
    def end_reason(self) -> str:
        return self.ending.reason

    @property
    def barge_ins(self) -> int:
        return self.interruption.barge_ins

    @property
    def caller_speaking(self) -> bool:
        return self.caller.speaking

    @property
    def caller_activity(self) -> float:
        return self.caller.last_sound

    def responding(self) -> bool:
        return bool(self.ctx.responses.busy)

    def session_knows(self, call_id: str) -> bool:
        return call_id in self.session.calls

    def response_items(self, response_id: str | None) -> list[str]:
        return self.interruption.items_of(response_id)

    def quiet(self) -> bool:
        """Nothing in flight: nobody talking, nothing being said, asked for or about to be, no turn waiting for
        its answer, no tool running. A seamless moment to switch sessions."""
        ctx = self.ctx
        busy = self.caller.speaking or ctx.responses.busy or ctx.turns.open or self._tools_running
        return not (busy or ctx.playout.is_audible() or self.caller.queued)

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def run(self, ws: WebSocket) -> None:
        """Bridge until either side ends; returns once both sockets are closed and every task is done."""
        self.carrier.ws = ws
        self.record.stream_id = self.carrier.stream_id
        self.record.event("stream_started", stream_id=self.carrier.stream_id, format=self.format.content_type)
        metrics = self.deps.metrics
        metrics.active_calls.inc()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self.carrier.read(self.caller, self.interruption), name="carrier-reader")
                tg.create_task(self.session.run(self.events.handle), name="model-session")
                tg.create_task(self.caller.pump(), name="caller-pump")
                tg.create_task(self.playout.run(), name="playout")
                tg.create_task(watch_idle(self), name="idle-watch")
                tg.create_task(watch_duration(self), name="duration-watch")
                tg.create_task(self.session.watch_age(), name="session-age-watch")
                tg.create_task(self.ctx.responses.watch(), name="response-watch")
                tg.create_task(self.session.watch_liveness(), name="model-liveness")
                if self.voicemail is not None:
                    tg.create_task(self.voicemail.run(), name="voicemail")
        except* CallOver:
            pass
        except* Exception as group:
            for exc in group.exceptions:
                self.log.error("call failed: %r", exc, exc_info=exc)
            self.ending.reason = "internal_error"
        finally:
            self._tg = None
            metrics.active_calls.dec()
            await self.session.close()
            await self.carrier.close()
            self.record.cost_usd = self.record.usage.cost_usd(self.settings.prices)
            self.record.finish(self.ending.reason)
            self._store()
            metrics.calls.labels(self.ending.reason).inc()
            self.log.info("call ended: %s", self.ending.reason)
            self.ended_monotonic = time.monotonic()
            self.done.set()

    def _spawn(self, job: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None] | None:
        """A task in the call's task group; none once the call is ending (the job is dropped)."""
        if self._tg is None:
            job.close()
            return None
        try:
            return self._tg.create_task(job, name=name)
        except RuntimeError:  # the task group is already shutting down: the call is ending anyway
            job.close()
            return None

    def _store(self) -> None:
        """Hand the record and recording to background writers: nothing here may block the loop."""
        recorder = self.ctx.recorder
        if recorder is not None:
            path = recording_path(self.settings.recordings_dir, self.call_id, self.record.started_at)
            self.record.recording_path = str(path)
            recorder.write_in_background(path, end_at=time.monotonic())
        if self.deps.records is not None:
            self.deps.records.submit(self.record, self.prompt)
        if self.deps.tracer is not None:
            self.deps.tracer.record_call(self.record)  # spans are queued; a background thread exports them

    def hang_up(self, reason: str) -> None:
        """End the call from outside (hangup webhook, shutdown); harmless when it is already ending."""
        if self.done.is_set():
            return
        self.ending.begin(reason)
        self._spawn(raise_over(), "hang-up")

    def wrap_up(self, reason: str) -> None:
        """End the call from outside, politely: a spoken wrap-up, then the stream stops."""
        if self._tg is None or self.ending.closing:
            return
        self.ending.begin()
        self._spawn(wrap_up(self, reason), "wrap-up")

    def engage_voicemail(self) -> None:
        """A machine answered after all (asynchronous detection): leave the prompt's message, if it has one."""
        if (policy := voicemail.policy_for(self.ctx, answered_by_machine=True)) and not self.voicemail:
            self.voicemail = voicemail.Voicemail(self, policy)
            self._spawn(self.voicemail.run(), "voicemail")

    def begin_closing(self, reason: str | None = None) -> None:
        self.ending.begin(reason)

    async def resume(self, ws: WebSocket, start: StartInfo) -> bool:
        """Hand a reconnected stream to this call; returns once the call is over (the socket's lifetime)."""
        if not self.carrier.resume(ws, start):
            return False
        await self.done.wait()
        return True

    async def set_outcome(self, outcome: Outcome) -> None:
        """Remember how the call should end, for the after-stream route (any replica may be asked)."""
        self.outcome = outcome
        await self.deps.on_outcome(self.call_id, outcome)

    async def finish(self, action: EndAction, reason: str) -> NoReturn:
        """End the stream in-band: `stop` makes Vobiz run the XML after <Stream>, which asks us what to do."""
        if self.outcome is None:
            number = self.transfer_number if action in (EndAction.TRANSFER, EndAction.APOLOGY) else None
            await self.set_outcome(Outcome(action, reason, number))
        self.ending.begin(reason)
        self.record.event("call_finishing", action=action.value, reason=reason)
        try:
            await self.carrier.send(messages.stop(self.carrier.stream_id))
        except CallOver:
            if self.deps.vobiz is not None and action is EndAction.HANGUP:
                with contextlib.suppress(VobizApiError):
                    await self.deps.vobiz.hangup_call(self.call_id)
        raise CallOver

    async def _send(self, text: str) -> None:
        await self.carrier.send(text)  # the playout is made before the carrier stream it sends on

    async def _unavailable(self) -> None:
        await self.finish(EndAction.APOLOGY, "model_unavailable")

    # --- speaking, for the timers and the tools ------------------------------------------------------------

    async def send_model(self, command: dict[str, Any]) -> None:
        await self.ctx.link.send(command)

    async def request_response(self, response: dict[str, Any] | None = None) -> asyncio.Future[str | None]:
        return await self.ctx.responses.request(response)

    async def ask(self, guidance: str, **response: Any) -> asyncio.Future[str | None]:
        return await self.ctx.ask(guidance, **response)

    async def say(self, guidance: str) -> bool:
        """Have the model say something (after whatever it is saying now); True once the caller heard it."""
        done = await self.ask(guidance, tool_choice="none")
        try:
            response_id = await within(self.settings.goodbye_timeout_s, done)
        except TimeoutError:
            return False
        return await self.wait_heard(self.interruption.items_of(response_id))

    async def wait_heard(self, items: list[str]) -> bool:
        """Wait until the last of these items has played on the phone (its final checkpoint acknowledged)."""
        if not items:
            return False
        remaining = max(0.0, self.playout.idle_at() - time.monotonic())
        return bool(await self.playout.wait_played(items[-1], remaining + self.settings.goodbye_timeout_s))

    async def rollover(self) -> bool:
        return await self.session.rollover()

    def _start_tool(self, tool: ToolCall) -> None:
        self._spawn(self._run_tool(tool), f"tool-{tool.name}")

    async def _run_tool(self, tool: ToolCall) -> None:
        self._tools_running += 1
        try:
            await run_tool(self, tool)
        finally:
            self._tools_running -= 1
            self.ctx.activity.set()
