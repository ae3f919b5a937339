"""The stream WebSocket Vobiz opens after the answer XML: authenticate, wait for `start`, run the call."""

from __future__ import annotations

import contextlib
import logging

from fastapi import APIRouter, WebSocket

from agent.carrier.frames import CarrierClosed, receive_text
from agent.prompts.loader import PromptError
from agent.protocol.vobiz import stream_token
from agent.protocol.vobiz.messages import InboundError, StartEvent, StartInfo, parse_inbound
from agent.waiting import within
from agent.web.state import AppState

log = logging.getLogger("agent.stream")
router = APIRouter()

_START_TIMEOUT_S = 10.0
_STORE_CHECK_S = 1.0
_POLICY_VIOLATION = 1008


@router.websocket("/vobiz/stream")
async def stream(ws: WebSocket) -> None:
    state: AppState = ws.app.state.agent
    call_id = ws.query_params.get("call", "")
    check = stream_token.verify(state.settings.stream_secret.get_secret_value(), call_id, ws.query_params.get("token"))
    refusal = "token" if not check.ok else state.registry.stream_refusal(call_id, token_expired=check.expired)
    # A call this replica pre-warmed or runs is known here; any other costs a look at what the replicas shared.
    stored = None
    if refusal is None and not state.registry.knows(call_id):
        stored = await state.registry.stored(call_id)
        if (stored is not None and stored.ended) or await _stored_as_ended(state, call_id):
            refusal = "call_ended"
    if refusal is not None:
        state.metrics.stream_rejected.labels(refusal).inc()
        log.warning("refused stream socket for call %r: %s", call_id[:64], check.reason or refusal)
        await ws.close(code=_POLICY_VIOLATION)  # before accept(): the upgrade is answered with 403
        return
    await ws.accept()
    try:
        start = await within(_START_TIMEOUT_S, _wait_for_start(ws, state))
    except (TimeoutError, CarrierClosed):
        state.metrics.stream_rejected.labels("no_start").inc()
        log.warning("stream for call %s never sent start", call_id)
        await _close(ws)
        return
    if start.callId != call_id:
        state.metrics.stream_rejected.labels("call_mismatch").inc()
        log.warning("stream token for call %s presented with start.callId %s", call_id, start.callId[:64])
        await _close(ws)
        return
    answer = stored.answer if stored is not None else state.registry.answer_here(call_id)
    try:
        # Used only when this replica did not pre-warm the call: the prompt the answering replica chose, with
        # the same variables, or else the one named in the stream URL.
        if answer is not None:
            values = {"caller": answer.caller, "called": answer.called} | answer.variables
            prompt = state.prompts.select(answer.called, answer.prompt).render(values)
        else:
            prompt = state.prompts.select(requested=ws.query_params.get("prompt")).render()
    except PromptError as exc:
        log.error("no usable prompt for call %s: %s", call_id, exc)
        await _close(ws)
        return
    await state.registry.run_stream(ws, start, prompt, answer)


async def _stored_as_ended(state: AppState, call_id: str) -> bool:
    """A call this replica does not know may have ended elsewhere or before a restart; if the records cannot be
    read, let the stream in: refusing a live caller is worse than the rare replay it would stop."""
    try:
        return await within(_STORE_CHECK_S, state.store.has_ended(call_id))
    except Exception as exc:  # the database is down or slow
        log.warning("could not check whether call %s has ended: %r", call_id[:64], exc)
        return False


async def _wait_for_start(ws: WebSocket, state: AppState) -> StartInfo:
    """Anything before `start` (media included) is counted and dropped; the call cannot decode it yet."""
    while True:
        text = await receive_text(ws)
        if text is None:
            state.metrics.inbound_dropped.labels("binary_frame").inc()
            continue
        try:
            event = parse_inbound(text)
        except InboundError as exc:
            state.metrics.inbound_dropped.labels(exc.reason).inc()
            log.warning("dropped message before start (%s): %s", exc.reason, exc.detail[:200])
            continue
        if isinstance(event, StartEvent):
            return event.start
        state.metrics.inbound_dropped.labels(f"{event.event}_before_start").inc()
        log.warning("dropped %s before start", event.event)


async def _close(ws: WebSocket) -> None:
    with contextlib.suppress(Exception):  # the peer may already be gone (ClientDisconnected)
        await ws.close(code=_POLICY_VIOLATION)
