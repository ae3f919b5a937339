"""Call-level clocks: the idle caller (a reminder, then a polite hang-up) and the maximum call duration.

Both end with words, never a cut: the goodbye or wrap-up is spoken and heard before the stream is stopped.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from agent.waiting import wait_event

if TYPE_CHECKING:
    from agent.calls.call import Call


def _say_exactly(text: str) -> str:
    return f"Say exactly this to the caller, and nothing else: {text}"


async def watch_idle(call: Call) -> None:
    """Quiet time counts from the later of the caller's last sound and the end of the bot's last answer;
    the reminder itself does not restart it, so the hang-up comes `hangup_after_s` into the silence."""
    from agent.calls.call import EndAction

    policy = call.prompt.meta.idle
    if policy.reminder_after_s is None and policy.hangup_after_s is None:
        return
    caller_mark: float | None = None
    anchor = 0.0
    reminded = False
    while True:
        call.activity.clear()
        now = time.monotonic()
        if call.caller_speaking or call.responses.busy:
            await call.activity.wait()
            continue
        if call.playout.is_audible(now):
            await wait_event(call.activity, call.playout.recheck_in(now))
            continue
        if caller_mark != call.caller_activity or not reminded:
            if caller_mark != call.caller_activity:
                reminded = False
            caller_mark = call.caller_activity
            anchor = max(call.caller_activity, call.playout.idle_at())
        due: list[tuple[float, str]] = []
        if policy.reminder_after_s is not None and not reminded:
            due.append((anchor + policy.reminder_after_s, "reminder"))
        if policy.hangup_after_s is not None:
            due.append((anchor + policy.hangup_after_s, "hangup"))
        if not due:
            await call.activity.wait()
            continue
        at, what = min(due)
        if at > now:
            await wait_event(call.activity, at - now)
            continue
        if what == "hangup":
            call.closing = True
            call.record.event("idle_hangup")
            await call.say(_say_exactly(policy.goodbye))
            await call.finish(EndAction.HANGUP, "idle_timeout")
            return
        reminded = True
        call.record.event("idle_reminder")
        await call.ask(_say_exactly(policy.reminder), tool_choice="none")


async def watch_duration(call: Call) -> None:
    """At the limit, say the wrap-up (after the current answer), then end the call."""
    limit = call.prompt.meta.max_call_duration_s
    if limit is None:
        return
    await asyncio.sleep(max(0.0, call.started_monotonic + limit - time.monotonic()))
    call.record.event("max_duration_reached", limit_s=limit)
    await wrap_up(call, "max_duration")


async def watch_session_age(call: Call) -> None:
    """Roll the model session over before OpenAI's 60-minute cap; retry a failed attempt shortly after."""
    limit = call.settings.model_session_max_s
    while True:
        due = call.model_started + limit
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        if time.monotonic() < call.model_started + limit:
            continue  # a reconnect gave the call a fresh session meanwhile
        if not await call.rollover():
            await asyncio.sleep(10.0)


async def watch_model_liveness(call: Call) -> None:
    """While a response is being generated the model speaks every few tens of milliseconds. A longer silence
    that a ping does not break means the network died without closing the socket (no FIN or RST reaches us);
    the socket's own keepalive would notice only after ~40 s of dead air. Abort it: the call reconnects and the
    answer goes on."""
    quiet_s = call.settings.model_quiet_ms / 1000
    pong_s = call.settings.model_pong_timeout_ms / 1000
    while True:
        model = call.model
        if not call.responses.busy or model is None:
            await call.responses.wait_changed()
            continue
        silent = time.monotonic() - call.responses.last_progress
        if silent < quiet_s:
            await asyncio.sleep(quiet_s - silent)
            continue
        if not await model.responsive(pong_s) and call.model is model:
            call.record.event(
                "model_unresponsive", silent_ms=round((time.monotonic() - call.responses.last_progress) * 1000)
            )
            call.metrics.model_reconnects.labels("unresponsive").inc()
            call.log.warning("model socket silent mid-response and no pong in %.1fs: reconnecting", pong_s)
            model.abort()
        call.responses.progress()  # one probe per quiet spell


async def wrap_up(call: Call, reason: str) -> None:
    """End the call politely: the prompt's wrap-up line and a goodbye, heard in full, then the stream stops."""
    from agent.calls.call import EndAction

    call.closing = True
    await call.say(_say_exactly(call.prompt.meta.wrap_up) + " Then say goodbye.")
    await call.finish(EndAction.HANGUP, reason)
