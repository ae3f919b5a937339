"""Call-level clocks: the idle caller (a reminder, then a polite hang-up) and the maximum call duration.
(The model session's own clocks, its age and its liveness, are `ModelSession`'s.)

Both end with words, never a cut: the goodbye or wrap-up is spoken and heard before the stream is stopped.
"""

from __future__ import annotations

import asyncio
import time

from agent.calls.control import CallControl
from agent.calls.outcome import EndAction
from agent.waiting import wait_event


def _say_exactly(text: str) -> str:
    return f"Say exactly this to the caller, and nothing else: {text}"


async def watch_idle(call: CallControl) -> None:
    """Quiet time counts from the later of the caller's last sound and the end of the bot's last answer;
    the reminder itself does not restart it, so the hang-up comes `hangup_after_s` into the silence."""
    policy = call.prompt.meta.idle
    if policy.reminder_after_s is None and policy.hangup_after_s is None:
        return
    caller_mark: float | None = None
    anchor = 0.0
    reminded = False
    while True:
        call.activity.clear()
        now = time.monotonic()
        if call.caller_speaking or call.responding():
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
            call.begin_closing()
            call.record.event("idle_hangup")
            await call.say(_say_exactly(policy.goodbye))
            await call.finish(EndAction.HANGUP, "idle_timeout")
            return
        reminded = True
        call.record.event("idle_reminder")
        await call.ask(_say_exactly(policy.reminder), tool_choice="none")


async def watch_duration(call: CallControl) -> None:
    """At the limit, say the wrap-up (after the current answer), then end the call."""
    limit = call.prompt.meta.max_call_duration_s
    if limit is None:
        return
    await asyncio.sleep(max(0.0, call.started_monotonic + limit - time.monotonic()))
    call.record.event("max_duration_reached", limit_s=limit)
    await wrap_up(call, "max_duration")


async def wrap_up(call: CallControl, reason: str) -> None:
    """End the call politely: the prompt's wrap-up line and a goodbye, heard in full, then the stream stops."""
    call.begin_closing()
    await call.say(_say_exactly(call.prompt.meta.wrap_up) + " Then say goodbye.")
    await call.finish(EndAction.HANGUP, reason)
