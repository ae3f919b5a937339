"""A call's model session: opened (or pre-warmed), read, re-opened after a drop, rolled over before the time cap.

`open_session` is the one way a session is opened, for a call and for the registry's pre-warm alike. A session
that replaces another is seeded with what was said and heard, and carries on whatever the old one had in flight
(`_adopt`), so a switch never loses the caller's turn, nor answers it twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent.audio.formats import MediaFormat
from agent.calls.caller_audio import CallerAudio
from agent.calls.context import CallContext
from agent.calls.interruption import Interruption
from agent.config import Settings
from agent.model.connection import MODEL_ERRORS, ModelConnector, ModelSocket, discard
from agent.prompts.loader import Prompt
from agent.protocol.realtime import client_commands, server_events, session_config
from agent.records.record import Turn
from agent.waiting import wait_event

_FAILURES: tuple[type[BaseException], ...] = (*MODEL_ERRORS, TimeoutError)


def transfer_number(prompt: Prompt, settings: Settings) -> str | None:
    """Where a call on this prompt is transferred: the prompt's own number, else the service's (None: nowhere, and
    the model is not offered the transfer tool)."""
    return prompt.meta.transfer_number or settings.transfer_number


async def open_session(
    connector: ModelConnector, prompt: Prompt, fmt: MediaFormat, settings: Settings, *, greet: bool
) -> ModelSocket:
    """Connect and configure a session; with `greet`, also ask for the greeting (a pre-warm, before the call).
    With the adaptive interruption policy the agent, not the server, cancels and creates responses."""
    model = await connector.connect(prompt.meta.model)
    try:
        update = session_config.session_update(
            prompt,
            fmt,
            can_transfer=bool(transfer_number(prompt, settings)),
            agent_turns=settings.interruption_mode == "adaptive",
        )
        await model.send(update)
        if greet:
            await model.send(session_config.greeting_response(prompt))
    except BaseException:
        await model.close()
        raise
    return model


@dataclass(frozen=True)
class _InFlight:
    mid_answer: bool  # an answer was being spoken: the new session continues it
    requested: bool  # we had asked for a response that never produced audio: ask again


OnEvent = Callable[[server_events.ServerEvent], Awaitable[None]]


class ModelSession:
    def __init__(
        self,
        ctx: CallContext,
        caller: CallerAudio,
        interruption: Interruption,
        *,
        quiet: Callable[[], bool],
        unavailable: Callable[[], Awaitable[None]],
        pending: asyncio.Future[ModelSocket] | None = None,
        greet: bool = True,
    ) -> None:
        self._ctx = ctx
        self._greet = greet
        self._caller = caller
        self._interruption = interruption
        self._quiet = quiet
        self._unavailable = unavailable  # ends the call: no session could be had
        self._pending = pending
        self.started = time.monotonic()
        self.calls: set[str] = set()  # function calls the current session knows

    async def _open(self) -> ModelSocket:
        ctx = self._ctx
        return await open_session(ctx.deps.connector, ctx.prompt, ctx.format, ctx.settings, greet=False)

    async def run(self, on_event: OnEvent) -> None:
        """Hold one model session for the call, reconnecting with history when the socket drops."""
        ctx, link = self._ctx, self._ctx.link
        try:
            if self._pending is not None:
                pending, self._pending = self._pending, None
                link.socket = await pending
            else:
                link.socket = await self._open()
                if self._greet:
                    await ctx.responses.request(session_config.greeting_response(ctx.prompt)["response"])
        except _FAILURES as exc:
            ctx.log.error("could not open the model session: %r", exc)
            ctx.record.event("model_connect_failed", error=repr(exc))
            if not await self._reconnect():
                await self._unavailable()
        ctx.record.event("model_connected")
        self.started = time.monotonic()
        link.ready.set()
        while True:
            model = link.socket
            assert model is not None
            try:
                async for event in model.events():
                    if link.socket is not model:
                        break  # replaced (rollover): its late events must not act twice
                    await on_event(event)
                if link.socket is not model:
                    continue  # rolled over to a fresh session
                if ctx.ending.closing:
                    return
                ctx.log.warning("model closed the session")
            except MODEL_ERRORS as exc:
                if link.socket is not model:
                    continue
                if ctx.ending.closing:
                    return
                ctx.log.warning("model socket dropped: %r", exc)
            ctx.record.event("model_dropped")
            if not await self._reconnect():
                await self._unavailable()

    async def close(self) -> None:
        """The call is over: close its session, or the pre-warmed one it never got to claim (in the background)."""
        model, self._ctx.link.socket = self._ctx.link.socket, None
        pending, self._pending = self._pending, None
        if model is None and pending is not None:
            discard(pending)
        if model is not None:
            await model.close()

    async def _seed(self, model: ModelSocket) -> list[Turn]:
        """Tell a fresh session what was said and heard so far, in order."""
        history = self._ctx.record.history()
        for turn in history:
            await model.send(client_commands.message("assistant" if turn.speaker == "assistant" else "user", turn.text))
        return history

    async def rollover(self) -> bool:
        """Move the conversation to a fresh model session before the current one hits its time cap.

        The new session is opened (the slow part) while the call goes on, then seeded and switched to at a
        quiet moment, so the caller hears no gap and the model forgets nothing that was heard. If no quiet moment
        comes in time, the switch happens anyway and carries over whatever was in flight (`_adopt`).
        """
        ctx = self._ctx
        try:
            fresh = await self._open()
        except _FAILURES as exc:
            ctx.log.warning("could not open a session to roll over to: %r", exc)
            return False
        deadline = time.monotonic() + ctx.settings.rollover_quiet_wait_s
        while not self._quiet() and time.monotonic() < deadline:
            ctx.activity.clear()
            wait = ctx.playout.recheck_in(time.monotonic()) if ctx.playout.is_audible() else 1.0
            await wait_event(ctx.activity, min(wait, deadline - time.monotonic()))
        # No quiet moment came. An answer being generated is let finish (seconds, and well inside the cap): all of
        # its audio then plays on, where a continuation from the new session would leave a gap on the line.
        finish_by = time.monotonic() + ctx.settings.rollover_answer_wait_s
        while ctx.responses.active and time.monotonic() < finish_by:
            ctx.activity.clear()
            await wait_event(ctx.activity, finish_by - time.monotonic())
        quiet = self._quiet()
        ctx.link.ready.clear()  # the caller's audio waits in the queue while the sessions change hands
        in_flight = self._in_flight()
        try:
            history = await self._seed(fresh)
        except MODEL_ERRORS as exc:
            ctx.log.warning("could not seed the new session: %r", exc)
            ctx.link.ready.set()
            await fresh.close()
            return False
        old = ctx.link.socket
        await self._adopt(fresh, in_flight)
        ctx.metrics.model_reconnects.labels("rollover").inc()
        ctx.record.event("model_rollover", seeded_turns=len(history), quiet=quiet)
        if old is not None:
            await old.close()  # its reader notices the switch and moves to the fresh session
        return True

    async def _reconnect(self) -> bool:
        """Open a fresh session, re-send the configuration and re-tell what the caller heard so far; whatever was
        in flight (an answer, an unanswered turn, an utterance) carries on there (`_adopt`)."""
        ctx = self._ctx
        ctx.link.ready.clear()
        old, ctx.link.socket = ctx.link.socket, None
        if old is not None:
            await old.close()
        in_flight = self._in_flight()
        for attempt in range(ctx.settings.model_reconnect_attempts):
            try:
                model = await self._open()
                history = await self._seed(model)
            except _FAILURES as exc:
                ctx.log.warning("model reconnect attempt %d failed: %r", attempt + 1, exc)
                ctx.metrics.model_reconnects.labels("failed_attempt").inc()
                await asyncio.sleep(min(0.25 * 2**attempt, 2.0))
                continue
            ctx.metrics.model_reconnects.labels("ok").inc()
            ctx.record.event("model_reconnected", attempt=attempt + 1, seeded_turns=len(history))
            await self._adopt(model, in_flight)
            return True
        ctx.metrics.model_reconnects.labels("gave_up").inc()
        return False

    def _in_flight(self) -> _InFlight:
        """What the current session was doing, taken before it is replaced. An answer cut mid-audio keeps only the
        words its received audio holds, so the new session's history is what the caller heard."""
        responses = self._ctx.responses
        mid_answer = self._interruption.mid_answer()
        if mid_answer:
            self._interruption.cut_unspoken()
        return _InFlight(mid_answer, requested=responses.busy and not self._interruption.items_of(responses.active_id))

    async def _adopt(self, fresh: ModelSocket, in_flight: _InFlight) -> None:
        """Switch to a seeded session, carrying over what the old one had not finished: the caller's unanswered
        turn and utterance in progress (see `handover`), the answer it was speaking, the responses we had asked
        for. The old session's events are ignored from here on, so nothing is answered twice."""
        ctx, turns = self._ctx, self._ctx.turns
        turn = ctx.record.turn_for_item(turns.turn_item) if turns.turn_item else None
        if turns.open and (turn is None or not turn.text.strip()) and turns.turn_audio:
            await fresh.send(client_commands.user_audio(turns.turn_audio))  # its transcript never came
        carried_ms = 0.0
        if self._caller.speaking and turns.pending:
            await fresh.send(client_commands.append_audio(bytes(turns.pending)))
            carried_ms = len(turns.pending) / ctx.format.model_bytes_per_ms
        turns.new_session()
        self.calls.clear()
        ctx.link.socket = fresh
        ctx.latency.new_session(self._caller.queued_ms + carried_ms)  # the new buffer starts with the carried audio
        self.started = time.monotonic()
        self._interruption.new_session()  # a late delta from the old session must not play
        ctx.responses.reset(requeue_unheard=in_flight.requested)
        ctx.playout.finish_all()  # an answer the old session was still streaming ends with what arrived
        ctx.link.ready.set()
        if in_flight.mid_answer:
            await ctx.ask("The line dropped for a moment while you were speaking. Briefly continue where you left off.")
        elif turns.open:
            await ctx.responses.request()  # the caller's turn was never answered
        await ctx.responses.resume()

    # --- watchers ------------------------------------------------------------------------------------------

    async def watch_age(self) -> None:
        """Roll the session over before OpenAI's 60-minute cap; retry a failed attempt shortly after."""
        limit = self._ctx.settings.model_session_max_s
        while True:
            await asyncio.sleep(max(0.0, self.started + limit - time.monotonic()))
            if time.monotonic() < self.started + limit:
                continue  # a reconnect gave the call a fresh session meanwhile
            if not await self.rollover():
                await asyncio.sleep(10.0)

    async def watch_liveness(self) -> None:
        """While a response is being generated the model speaks every few tens of milliseconds. A longer silence
        that a ping does not break means the network died without closing the socket (no FIN or RST reaches us);
        the socket's own keepalive would notice only after ~40 s of dead air. Abort it: the call reconnects and
        the answer goes on."""
        ctx, responses = self._ctx, self._ctx.responses
        quiet_s = ctx.settings.model_quiet_ms / 1000
        pong_s = ctx.settings.model_pong_timeout_ms / 1000
        while True:
            model = ctx.link.socket
            if not responses.busy or model is None:
                await responses.wait_changed()
                continue
            silent = time.monotonic() - responses.last_progress
            if silent < quiet_s:
                await asyncio.sleep(quiet_s - silent)
                continue
            if not await model.responsive(pong_s) and ctx.link.socket is model:
                silent_ms = round((time.monotonic() - responses.last_progress) * 1000)
                ctx.record.event("model_unresponsive", silent_ms=silent_ms)
                ctx.metrics.model_reconnects.labels("unresponsive").inc()
                ctx.log.warning("model socket silent mid-response and no pong in %.1fs: reconnecting", pong_s)
                model.abort()
            responses.progress()  # one probe per quiet spell
