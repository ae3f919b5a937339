"""What the answer webhook and the outbound callbacks do for outbound calls: note each attempt's progress, apply
the prompt's answering-machine policy. Kept here so the answer webhook itself only gains two calls.

Database writes on the answer path are bounded (`_DEADLINE_S`): Vobiz wants the XML within a couple of seconds,
and a missed progress note costs nothing that the hangup callback does not settle later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

from agent.calls.voicemail import ANSWERED_BY_TAG
from agent.campaigns.outcomes import machine_verdict
from agent.campaigns.store import CampaignStore
from agent.carrier.rest_errors import VobizApiError
from agent.prompts.loader import Prompt, PromptError
from agent.prompts.schema import AnsweringMachine
from agent.protocol.vobiz import xml
from agent.records.record import CallRecord
from agent.waiting import within
from agent.web.state import AppState

log = logging.getLogger("agent.campaigns")
_DEADLINE_S = 1.0
ATTEMPT_TAG = "attempt"


def _store(state: AppState) -> CampaignStore:
    return CampaignStore(state.store.db)


# What this replica learnt at answer time, for its own hangup callbacks: a progress note may still be waiting for
# the database (SQLite under load) when the hangup of a short call arrives. Only a shortcut: a hangup on another
# replica knows the call was answered from Vobiz's AnswerTime, the attempt's note or the shared answer context.
_recent: OrderedDict[str, str] = OrderedDict()
_KEEP_RECENT = 5000
_late_notes: set[asyncio.Task[None]] = set()


def recent_answer(call_id: str) -> str | None:
    """'machine' or 'person' (answered; the detection verdict when there was one), or None if not seen here."""
    return _recent.get(call_id)


def _remember(call_id: str, answered_by: str) -> None:
    _recent[call_id] = answered_by
    _recent.move_to_end(call_id)
    while len(_recent) > _KEEP_RECENT:
        _recent.popitem(last=False)


async def _note(app: AppState, attempt_id: str | None, call_id: str, **values: str | None) -> None:
    """Note progress within the answer budget; a write that takes longer finishes in the background."""
    if not attempt_id:
        return
    task = asyncio.create_task(_write_note(app, attempt_id, call_id, values))
    _late_notes.add(task)
    task.add_done_callback(_late_notes.discard)
    await asyncio.wait({task}, timeout=_DEADLINE_S)


async def _write_note(app: AppState, attempt_id: str, call_id: str, values: dict[str, str | None]) -> None:
    try:
        await within(30.0, _store(app).note(attempt_id, call_id, **values))
    except Exception as exc:  # the hangup callback settles the attempt anyway
        log.warning("could not note attempt %s progress: %r", attempt_id, exc)


async def on_answer(
    state: AppState, call_id: str, params: dict[str, str], prompt: Prompt, record: CallRecord
) -> str | None:
    """StartApp of an outbound call. Returns XML to answer with instead of the stream (a machine the prompt
    hangs up on), else None; a machine the prompt leaves a voicemail for is tagged, so the call (on whichever
    replica its stream lands) starts in voicemail mode."""
    attempt_id = params.get(f"tag_{ATTEMPT_TAG}")
    verdict = machine_verdict(params)
    if verdict is not None:
        record.tags[ANSWERED_BY_TAG] = verdict
        record.event("machine_detection", result=verdict, mode="sync")
    if attempt_id is None and verdict is None:
        return None
    _remember(call_id, verdict or "person")
    await _note(state, attempt_id, call_id, state="answered", answered_by=verdict)
    policy = prompt.meta.answering_machine
    if verdict == "machine" and policy is not None and policy.action == "hangup":
        log.info("call %s: answering machine, hanging up (prompt %s)", call_id, prompt.name)
        return xml.hangup()
    return None


async def on_event(state: AppState, call_id: str, params: dict[str, str]) -> None:
    """A pre-answer or side event at the answer URL (Ring, MachineDetection): progress only, no session."""
    attempt_id = params.get(f"tag_{ATTEMPT_TAG}")
    event = params.get("Event", "").lower()
    verdict = machine_verdict(params)
    if verdict is not None:
        await machine_detected(state, call_id, attempt_id, verdict, None)
    elif event == "ring":
        await _note(state, attempt_id, call_id, state="ringing")


async def machine_detected(
    state: AppState, call_id: str, attempt_id: str | None, verdict: str, prompt_name: str | None
) -> None:
    """Asynchronous machine detection: the call may be talking already. A machine is hung up on, or the live call
    switches to voicemail mode (when its stream is on this replica; elsewhere it is hung up, as no message
    could be left in time)."""
    _remember(call_id, verdict)
    await _note(state, attempt_id, call_id, answered_by=verdict)
    if verdict != "machine":
        return
    live = state.registry.live.get(call_id)
    policy: AnsweringMachine | None = None
    if live is not None:
        live.record.tags[ANSWERED_BY_TAG] = verdict
        live.record.event("machine_detection", result=verdict, mode="async")
        policy = live.prompt.meta.answering_machine
    elif prompt_name:
        with contextlib.suppress(PromptError):
            policy = state.prompts.get(prompt_name).meta.answering_machine
    if policy is None:
        return
    if policy.action == "voicemail" and live is not None:
        live.engage_voicemail()
        return
    if policy.action == "voicemail":
        log.warning("call %s: answering machine detected, but its stream is on another replica: hanging up", call_id)
    if live is not None:
        live.hang_up("answering_machine")
    if state.vobiz is not None:
        try:
            await state.vobiz.hangup_call(call_id)
        except VobizApiError as exc:
            log.warning("could not hang up call %s on an answering machine: %s", call_id, exc)
