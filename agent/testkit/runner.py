"""The one call runner: place a simulated call, let a driver run it, make sure it ended, measure it; and the
schedules that place many (a ramp capped by concurrency, back-to-back slots).

``voice-agent call``, ``demo``, ``eval``, ``loadtest`` and the bench all place their calls through
:func:`run_call`, so a call is placed, bounded and ended the same way whichever tool made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qs

import httpx

from agent.testkit.analysis.call import CallMetrics, FailureCause, Truncation, analyze_call, failed_call
from agent.testkit.carrier import (
    CallEndedWithoutStream,
    CarrierProtocolError,
    CarrierSim,
    ScriptItem,
    SimCall,
    SimCallOptions,
    SimulationError,
)
from agent.testkit.carrier.callbacks import CallbackSender
from agent.testkit.scenarios import Driver, finish_conversation

__all__ = [
    "Measured",
    "PlacedCall",
    "TimedCarrier",
    "place_and_measure",
    "run_back_to_back",
    "run_call",
    "run_ramp",
]

T = TypeVar("T")
Verdict = tuple[FailureCause, str]


_CLIENTS = 8


class TimedCarrier:
    """Shared HTTP clients for simulated carriers that note when each answer webhook's response arrived.

    The carrier records when a webhook was sent; this adds the other end, so answer time is webhook -> 200.
    A few clients serve many calls (connection reuse, like a real carrier's webhook sender).
    """

    def __init__(self, base_url: str, answer_path: str = "/vobiz/answer") -> None:
        self.base_url = base_url.rstrip("/")
        self.answer_path = answer_path
        self._answered: dict[str, float] = {}
        # Calls share a few clients round robin, not one: a client scans its whole pool of connections on every
        # request, and a hundred calls' status callbacks through one pool cost the carrier more than their sockets.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=100 // _CLIENTS)
        self._clients = [
            httpx.AsyncClient(event_hooks={"response": [self._on_response]}, limits=limits) for _ in range(_CLIENTS)
        ]
        self.http = self._clients[0]
        self._callbacks = CallbackSender()  # stream status callbacks: hundreds a second at load, kept cheap
        self._placed = 0

    async def _on_response(self, response: httpx.Response) -> None:
        request = response.request
        if request.method == "POST" and b"StartApp" not in request.content:
            return  # a status callback
        raw = request.content.decode("utf-8", "replace") if request.method == "POST" else request.url.query.decode()
        fields = parse_qs(raw)
        if fields.get("Event") == ["StartApp"] and fields.get("CallUUID"):
            self._answered[fields["CallUUID"][0]] = time.monotonic()

    def carrier(self) -> CarrierSim:
        """A fresh carrier per call, so finished calls (and their audio) are not kept alive by the carrier."""
        self._placed += 1
        return CarrierSim(
            self.base_url, self.answer_path, http=self._clients[self._placed % _CLIENTS], callbacks=self._callbacks
        )

    def answer_ms(self, call_uuid: str, sent_at: float | None) -> float | None:
        answered = self._answered.pop(call_uuid, None)
        return None if answered is None or sent_at is None else (answered - sent_at) * 1000

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
        await self._callbacks.aclose()

    async def __aenter__(self) -> TimedCarrier:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


@dataclass
class Measured:
    metrics: CallMetrics
    call: SimCall | None


@dataclass
class PlacedCall:
    """A call that was placed and is over: the call itself (None when it never got a stream) and, when it did
    not go as it should, why."""

    call_uuid: str
    call: SimCall | None
    failure: Verdict | None
    answer_ms: float | None


def _pre_stream_failure(exc: Exception) -> tuple[FailureCause, str]:
    """The carrier raises one error type for webhook and socket trouble; its message tells them apart."""
    if isinstance(exc, CallEndedWithoutStream):
        return "rejected", str(exc)
    text = str(exc)
    if "stream WebSocket" in text or "before `start`" in text:
        return "stream_failed", text
    return "answer_failed", text


async def run_call(
    timed: TimedCarrier,
    script: Sequence[ScriptItem],
    *,
    options: SimCallOptions | None = None,
    drive: Driver = finish_conversation,
    max_duration_s: float = 600.0,
    place_timeout_s: float | None = None,
    on_connected: Callable[[SimCall], None] | None = None,
    check: Callable[[SimCall], Verdict | None] | None = None,
) -> PlacedCall:
    """Place one call, let ``drive`` run it for at most ``max_duration_s``, and make sure it has ended.

    ``on_connected`` runs synchronously as soon as the stream is up, before the first caller frame (e.g. to
    impair the network or tap playAudio); ``check`` adds a scenario-specific verdict.
    """
    carrier = timed.carrier()
    call_uuid = str(uuid.uuid4())
    try:
        try:
            async with asyncio.timeout(place_timeout_s):
                call = await carrier.place_call(script, options, call_uuid=call_uuid)
        except (CarrierProtocolError, CallEndedWithoutStream) as exc:
            return PlacedCall(call_uuid, None, _pre_stream_failure(exc), timed.answer_ms(call_uuid, None))
        except TimeoutError:
            detail = f"no stream within {place_timeout_s:g} s"
            return PlacedCall(call_uuid, None, ("stream_failed", detail), timed.answer_ms(call_uuid, None))
        if on_connected is not None:
            on_connected(call)
        verdict = await drive_to_the_end(call, drive, max_duration_s, check)
        sent_at = next((w.t for w in call.webhooks if w.event == "StartApp"), None)
        return PlacedCall(call_uuid, call, verdict, timed.answer_ms(call_uuid, sent_at))
    finally:
        await carrier.aclose()


async def drive_to_the_end(
    call: SimCall, drive: Driver, max_duration_s: float, check: Callable[[SimCall], Verdict | None] | None = None
) -> Verdict | None:
    """Run a connected call's caller for at most ``max_duration_s``, hang up if it is still on, then judge it:
    the one way every runner (placed inbound calls, answered outbound ones) ends a simulated call."""
    verdict: Verdict | None = None
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
    return verdict


async def place_and_measure(
    timed: TimedCarrier,
    script: Sequence[ScriptItem],
    *,
    options: SimCallOptions | None = None,
    drive: Driver = finish_conversation,
    scenario: str = "",
    max_duration_s: float = 600.0,
    on_connected: Callable[[SimCall], None] | None = None,
    check: Callable[[SimCall], Verdict | None] | None = None,
    truncations: Callable[[SimCall], Sequence[Truncation]] | None = None,
) -> Measured:
    """:func:`run_call`, then the call's metrics; ``truncations`` tells what the agent or the model believed
    was heard at each interruption, when that is visible."""
    placed = await run_call(
        timed,
        script,
        options=options,
        drive=drive,
        max_duration_s=max_duration_s,
        on_connected=on_connected,
        check=check,
    )
    if placed.call is None:
        assert placed.failure is not None
        metrics = failed_call(placed.call_uuid, *placed.failure, scenario)
        metrics.answer_ms = placed.answer_ms
        return Measured(metrics, None)
    metrics = analyze_call(
        placed.call,
        answer_ms=placed.answer_ms,
        truncations=truncations(placed.call) if truncations is not None else (),
        scenario=scenario,
        failure=placed.failure,
    )
    return Measured(metrics, placed.call)


# ----------------------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------------------


async def run_ramp(
    indices: Sequence[int],
    one: Callable[[int], Awaitable[T]],
    *,
    start_at: float,
    interval_s: float,
    concurrency: int,
    clock: Callable[[], float] = time.time,
    limit_s: float | None = None,
) -> dict[int, T]:
    """Start call i at ``start_at + i * interval_s`` (on ``clock``: wall time can be shared by processes), at
    most ``concurrency`` at once. Returns the result of every call that finished, by index; with ``limit_s``,
    calls still running after that long are cancelled and left out (the caller decides what they count as).
    """
    slots = asyncio.Semaphore(concurrency)

    async def scheduled(i: int) -> T:
        await asyncio.sleep(max(0.0, start_at + i * interval_s - clock()))
        async with slots:
            return await one(i)

    tasks = {i: asyncio.create_task(scheduled(i)) for i in indices}
    try:
        if tasks:
            await asyncio.wait(tasks.values(), timeout=limit_s)
    finally:
        for task in tasks.values():
            task.cancel()  # no-op for finished calls; stragglers (or everything, when interrupted) stop here
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    return {i: t.result() for i, t in tasks.items() if t.done() and not t.cancelled() and t.exception() is None}


async def run_back_to_back(
    slots: int,
    one: Callable[[int], Awaitable[T]],
    on_result: Callable[[T], None],
    *,
    until: float,
    stagger_s: float,
    pause_after: Callable[[T], float] = lambda _: 0.0,
) -> int:
    """Keep ``slots`` calls up until ``until`` (monotonic): each slot places its next call (numbered in start
    order) as soon as its previous one ended, and rests ``pause_after(result)`` s first (e.g. after a call
    that never got going, so as not to hammer a server that refuses calls). Returns the number of calls placed.
    """
    counter = itertools.count()

    async def slot(k: int) -> None:
        await asyncio.sleep(k * stagger_s)
        while time.monotonic() < until:
            result = await one(next(counter))
            on_result(result)
            pause = pause_after(result)
            if pause > 0:
                await asyncio.sleep(pause)

    tasks = [asyncio.create_task(slot(k)) for k in range(slots)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return next(counter)
