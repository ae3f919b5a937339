"""Live calls, pre-warmed model sessions and recent outcomes for one agent process, and what a call needs across
requests, shared with every other replica through the database (`CallStates`).

The answer webhook arrives a few hundred milliseconds before Vobiz opens the stream; the registry uses that
time to open the model session and ask for the greeting, then hands the connection to the call on `start`. It
does so only where the stream is known to come back to this replica (`Settings.prewarm_here`): a session no
stream uses is money spent for nothing, and a second one for the same call doubles the bill.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from starlette.websockets import WebSocket

from agent.audio.formats import MediaFormat
from agent.calls.call import Call
from agent.calls.context import CallDeps
from agent.calls.model_session import open_session
from agent.calls.outcome import EndAction, Outcome
from agent.model.connection import ModelSocket, discard
from agent.prompts.loader import Prompt
from agent.protocol.vobiz.messages import StartInfo
from agent.records.record import CallRecord
from agent.storage.call_state import AnswerContext, CallStates, StoredCall
from agent.waiting import within

log = logging.getLogger("agent.registry")
_T = TypeVar("_T")
# A shared-state read or write must not eat Vobiz's answer budget; past this the request goes on without it.
_SHARED_DEADLINE_S = 1.0

_KEEP_ENDED = 10_000  # call ids only: answer-loop protection and after-stream outcomes
# Full records of ended calls stay in memory only for late webhooks (a hangup refining the stored record);
# the database has them. Each is ~90 KB of RSS and many objects that every full garbage collection walks
# (the soak bench: full collections of 30-110 ms with 200 kept), so keep only the recent few.
_KEEP_RECORDS = 50
_KEEP_ANSWERS = 2000  # answer contexts of recent calls (a few hundred bytes each), for their streams


@dataclass
class _Prewarm:
    task: asyncio.Task[ModelSocket]
    expires: asyncio.TimerHandle
    prompt: Prompt
    record: CallRecord
    fmt: MediaFormat
    created: float = field(default_factory=time.monotonic)


class CallRegistry:
    def __init__(self, deps: CallDeps, states: CallStates | None = None) -> None:
        self.deps = deps
        self.states = states
        self._background: set[asyncio.Task[object]] = set()
        self.live: dict[str, Call] = {}
        self.records: OrderedDict[str, CallRecord] = OrderedDict()
        self._prewarms: dict[str, _Prewarm] = {}
        self._outcomes: OrderedDict[str, Outcome] = OrderedDict()
        self._answers: OrderedDict[str, AnswerContext] = OrderedDict()
        self._ended: OrderedDict[str, float] = OrderedDict()
        deps.on_outcome = self.set_outcome

    # --- answer time ---------------------------------------------------------------------------------------

    def is_ended(self, call_id: str) -> bool:
        return call_id in self._ended

    def stream_refusal(self, call_id: str, *, token_expired: bool) -> str | None:
        """Why a stream socket may not join this call, or None: a token is good for one stream of one live call.

        A call that ended is never started again (Vobiz re-posting, a replayed URL); a call whose stream is up
        gets no second one (a second socket would take the caller's audio); a Vobiz reconnect is let in for as
        long as the call waits for it, however old the call. Calls that ended on another replica, or before a
        restart, are refused by the route from the stored records.
        """
        if call_id in self._ended:
            return "call_ended"
        call = self.live.get(call_id)
        if call is not None:
            return None if call.carrier.awaiting else "stream_in_use"
        return "token_expired" if token_expired else None

    def knows(self, call_id: str) -> bool:
        """A call this process is already serving (pre-warmed or live): a webhook retry, not a new call."""
        return call_id in self._prewarms or call_id in self.live

    def load(self) -> int:
        return len(self.live) + len(self._prewarms)

    def prewarm(self, record: CallRecord, prompt: Prompt, fmt: MediaFormat) -> None:
        """Start opening the model session now, if the stream will come here; idempotent for webhook retries."""
        call_id = record.call_id
        if call_id in self._prewarms or call_id in self.live:
            return
        if not self.deps.settings.prewarm_here:
            self._remember(record)
            return
        self._remember(record)
        opening = open_session(self.deps.connector, prompt, fmt, self.deps.settings, greet=True)
        task = asyncio.create_task(opening, name=f"prewarm-{call_id}")
        timer = asyncio.get_running_loop().call_later(self.deps.settings.prewarm_timeout_s, self._expire, call_id)
        self._prewarms[call_id] = _Prewarm(task, timer, prompt, record, fmt)
        record.event("prewarm_started")

    def _expire(self, call_id: str) -> None:
        prewarm = self._prewarms.pop(call_id, None)
        if prewarm is None:
            return
        log.warning(
            "no stream arrived for call %s within %.0fs; closing its model session",
            call_id,
            self.deps.settings.prewarm_timeout_s,
        )
        prewarm.record.event("prewarm_expired")
        discard(prewarm.task)

    def _claim(self, call_id: str) -> _Prewarm | None:
        prewarm = self._prewarms.pop(call_id, None)
        if prewarm is not None:
            prewarm.expires.cancel()
        return prewarm

    # --- stream time ---------------------------------------------------------------------------------------

    async def run_stream(
        self, ws: WebSocket, start: StartInfo, fallback_prompt: Prompt, answer: AnswerContext | None = None
    ) -> None:
        """Run the call for an accepted stream socket until it ends. `fallback_prompt` (and `answer`, what another
        replica shared of how it answered the call) serve when this replica did not answer it."""
        call_id = start.callId
        previous = self.live.get(call_id)
        if previous is not None:
            # Vobiz reconnected a dropped stream: the same conversation carries on. Anything else (a socket
            # racing the reconnect, a format change) is refused rather than allowed to take the call over.
            if not await previous.resume(ws, start):
                self.deps.metrics.stream_rejected.labels("stream_in_use").inc()
                await ws.close(code=1008)
            return
        if call_id in self._ended:
            self.deps.metrics.stream_rejected.labels("call_ended").inc()
            await ws.close(code=1008)
            return
        prewarm = self._claim(call_id)
        # A pre-warmed session is only usable if Vobiz streams the format it was configured for.
        prompt = prewarm.prompt if prewarm else fallback_prompt
        record = prewarm.record if prewarm else self.records.get(call_id) or _record_for(call_id, answer)
        record.prompt_name, record.prompt_hash = prompt.name, prompt.content_hash
        self._remember(record)
        model_task: asyncio.Task[ModelSocket] | None = prewarm.task if prewarm else None
        if prewarm is not None and prewarm.fmt != start.media_format:
            record.event("prewarm_format_mismatch")
            discard(prewarm.task)
            model_task = None
        call = Call(start, prompt, record, self.deps, model_task)
        self.live[call_id] = call
        try:
            await call.run(ws)
        finally:
            if self.live.get(call_id) is call:
                del self.live[call_id]
            self._mark_ended(call_id)

    # --- end of call ---------------------------------------------------------------------------------------

    def hangup(self, call_id: str, reason: str = "caller_hangup") -> bool:
        """Vobiz says the call is over: end whatever is left of it. Idempotent."""
        prewarm = self._claim(call_id)
        if prewarm is not None:
            discard(prewarm.task)
        call = self.live.get(call_id)
        self._mark_ended(call_id)
        if call is not None:
            call.hang_up(reason)
            return True
        return prewarm is not None

    async def set_outcome(self, call_id: str, outcome: Outcome) -> None:
        """Remember how the call must end, here and for every replica (the after-stream redirect and the
        transfer fetch may reach any of them); returns once it is shared, or the database had its chance."""
        self._outcomes[call_id] = outcome
        while len(self._outcomes) > _KEEP_ENDED:
            self._outcomes.popitem(last=False)
        if self.states is not None:
            action, number = outcome.action.value, outcome.transfer_number
            await self._shared(self.states.set_outcome(call_id, action, outcome.reason, number), "outcome")

    async def outcome(self, call_id: str) -> Outcome | None:
        """How the call decided to end: this replica's memory first, then what any replica shared."""
        known = self._outcomes.get(call_id)
        if known is not None:
            return known
        stored = await self.stored(call_id)
        if stored is None or stored.outcome is None:
            return None
        try:
            action = EndAction(stored.outcome.action)
        except ValueError:
            return None
        return Outcome(action, stored.outcome.reason, stored.outcome.transfer_number)

    async def remember_answer(self, context: AnswerContext) -> None:
        """Share how the call was answered before the XML goes back, so its stream may land on any replica."""
        # Kept here too: a stream landing on this replica renders its prompt with the same variables, with no
        # database read (and on SQLite, where nothing is shared, this is the only copy).
        self._answers[context.call_id] = context
        while len(self._answers) > _KEEP_ANSWERS:
            self._answers.popitem(last=False)
        if self.states is not None:
            await self._shared(self.states.answered(context), "answer context")

    def answer_here(self, call_id: str) -> AnswerContext | None:
        return self._answers.get(call_id)

    async def stored(self, call_id: str) -> StoredCall | None:
        """What the replicas shared about a call; None when nothing was, or the database did not answer in time."""
        if self.states is None:
            answer = self._answers.get(call_id)
            return StoredCall(answer, None, False) if answer is not None else None
        return await self._shared(self.states.get(call_id), "call state")

    async def _shared(self, operation: Awaitable[_T], what: str) -> _T | None:
        try:
            return await within(_SHARED_DEADLINE_S, operation)
        except Exception as exc:  # the database is down or slow: this replica's memory still serves
            self.deps.metrics.shared_state_failures.inc()
            log.error("could not share or read the %s (database: %r)", what, exc)
            return None

    def _mark_ended(self, call_id: str) -> None:
        self._ended[call_id] = time.time()
        while len(self._ended) > _KEEP_ENDED:
            self._ended.popitem(last=False)
        if self.states is not None:  # other replicas must refuse a stream for this call from now on
            task = asyncio.get_running_loop().create_task(self._shared(self.states.ended(call_id), "call end"))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _remember(self, record: CallRecord) -> None:
        self.records[record.call_id] = record
        self.records.move_to_end(record.call_id)
        while len(self.records) > _KEEP_RECORDS:
            self.records.popitem(last=False)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is live (each has torn down and handed over its record)."""
        calls = list(self.live.values())
        if not calls:
            return True
        _, pending = await asyncio.wait([asyncio.ensure_future(c.done.wait()) for c in calls], timeout=timeout_s)
        for task in pending:
            task.cancel()
        return not pending

    async def drain(self, deadline_s: float, wrap_up_s: float = 20.0) -> None:
        """Let live calls finish on their own until the deadline, then wrap the rest up politely."""
        live = [c for c in self.live.values()]
        if live:
            log.info("draining: waiting up to %.0fs for %d call(s) to finish", deadline_s, len(live))
            await asyncio.wait([asyncio.ensure_future(c.done.wait()) for c in live], timeout=deadline_s)
        remaining = [c for c in self.live.values() if not c.done.is_set()]
        if remaining:
            log.warning("drain deadline reached: wrapping up %d call(s)", len(remaining))
            for call in remaining:
                call.wrap_up("drain")
            await asyncio.wait([asyncio.ensure_future(c.done.wait()) for c in remaining], timeout=wrap_up_s)

    async def shutdown(self) -> None:
        if self._background:  # call ends still being shared
            await asyncio.wait(list(self._background), timeout=_SHARED_DEADLINE_S)
        for call_id in list(self._prewarms):
            prewarm = self._claim(call_id)
            if prewarm is not None:
                discard(prewarm.task)
        for call in list(self.live.values()):
            call.hang_up("shutdown")
        waits = [asyncio.create_task(call.done.wait()) for call in self.live.values()]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=2.0)
            for task in pending:
                task.cancel()

    def default_outcome(self) -> Outcome:
        return Outcome(EndAction.APOLOGY, "unknown_call", self.deps.settings.transfer_number)


def _record_for(call_id: str, answer: AnswerContext | None) -> CallRecord:
    """A fresh record; with what the answering replica shared, it carries the same numbers and labels."""
    if answer is None:
        return CallRecord(call_id)
    record = CallRecord(call_id, from_number=answer.caller, to_number=answer.called, direction=answer.direction)
    record.tags |= answer.tags
    return record
