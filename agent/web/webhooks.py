"""Vobiz HTTP webhooks: answer, hangup, stream status, and the XML routes Vobiz fetches when a stream ends.

Every route is idempotent and fast (Vobiz retries non-200s and wants an answer within a couple of seconds).
When either Vobiz auth token is configured, a request needs a valid signature whose nonce was not answered
before (replays are refused across replicas, see `agent.storage.nonces`); the service refuses to start without
a token unless AGENT_INSECURE_WEBHOOKS=true says that open webhooks are intended (local development).
AGENT_WEBHOOK_ALLOW_IPS optionally limits the source addresses as well.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.routing import APIRoute

from agent.audio.formats import MediaFormat
from agent.calls.outcome import EndAction
from agent.campaigns import hooks as outbound
from agent.config import ConfigError, Settings
from agent.prompts.loader import PromptError
from agent.protocol.vobiz import stream_token, xml
from agent.protocol.vobiz.signature import HEADER_V2_NONCE, HEADER_V3_NONCE, verify_signature
from agent.records.record import CallRecord
from agent.storage.call_state import AnswerContext
from agent.storage.nonces import NonceStore, NonceVerdict
from agent.waiting import within
from agent.web.state import AppState

log = logging.getLogger("agent.webhooks")
# `Event` values that mean "the call is answered: tell me what to do". Older docs and examples post none.
_ANSWER_EVENTS = frozenset({"", "startapp"})
router = APIRouter(prefix="/vobiz")
# A slow database must not eat Vobiz's 3 s answer budget: past this, the nonce check is skipped (logged).
NONCE_DEADLINE_S = 1.0
INSECURE_REFUSAL = (
    "refusing to start: Vobiz webhooks would be open to anyone; set VOBIZ_AUTH_TOKEN (or VOBIZ_MAIN_AUTH_TOKEN) "
    "to check their signatures, or AGENT_INSECURE_WEBHOOKS=true for local development only"
)


def check_webhook_auth(settings: Settings) -> None:
    """Start-up gate: a token turns signature checks on; without one, only an explicit insecure flag starts.

    Raises ConfigError with one line when webhooks would be silently open; warns loudly when they are open on
    purpose.
    """
    if settings.webhook_auth_enabled:
        if settings.insecure_webhooks:
            log.info("AGENT_INSECURE_WEBHOOKS is ignored: a Vobiz token is set, so webhook signatures are checked")
        return
    if not settings.insecure_webhooks:
        raise ConfigError(INSECURE_REFUSAL)
    log.warning(
        "INSECURE: AGENT_INSECURE_WEBHOOKS=true and no Vobiz token: webhooks are NOT authenticated, anyone who "
        "can reach %s can start calls on this agent. For local development only.",
        settings.public_url,
    )


class _WebhookRoute(APIRoute):
    """Marks the request's signature nonces answered once the route replied 2xx: from then on they are a replay,
    while a request that failed stays retryable by Vobiz for the store's retry window."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            response = await handler(request)
            nonces: list[str] | None = getattr(request.state, "webhook_nonces", None)
            if nonces and 200 <= response.status_code < 300:
                try:
                    await within(NONCE_DEADLINE_S, _nonce_store(request).answered(nonces))
                except Exception as exc:  # the reply stands; the nonce just stays retryable for a while
                    log.error("could not mark webhook nonces answered: %r", exc)
            return response

        return handle


router.route_class = _WebhookRoute  # before the routes below are added: each of them gets the wrapper


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.agent
    return state


def _xml(body: str) -> Response:
    return Response(content=body, media_type=xml.XML_MEDIA_TYPE)


async def _params(request: Request, route: str) -> dict[str, str]:
    """Verified webhook fields: form body for POST, query string for GET (plus query on POST)."""
    state = _state(request)
    settings = state.settings
    _check_source(request, state, route)
    if settings.webhook_auth_enabled:
        # Vobiz signs the URL it called; rebuild it from PUBLIC_URL so a TLS proxy in front does not matter.
        url = settings.public_url + request.url.path
        check = verify_signature(request.headers, url, settings.webhook_tokens, settings.main_webhook_tokens)
        if not check.ok:
            state.metrics.webhooks.labels(route, "bad_signature").inc()
            log.warning("refused %s webhook from %s: signature %s", route, request.client, check.reason)
            raise HTTPException(status_code=403, detail="invalid Vobiz signature")
        await _check_nonces(request, state, route)
    params = dict(request.query_params)
    if request.method == "POST":
        try:
            form = await request.form()
        except Exception as exc:  # malformed multipart/urlencoded bodies
            state.metrics.webhooks.labels(route, "bad_body").inc()
            raise HTTPException(status_code=400, detail=f"unreadable form body: {exc}") from None
        params |= {k: v for k, v in form.items() if isinstance(v, str)}
    state.metrics.webhooks.labels(route, "ok").inc()
    return params


def _check_source(request: Request, state: AppState, route: str) -> None:
    """AGENT_WEBHOOK_ALLOW_IPS: the client address (as uvicorn resolved it from trusted proxy headers) must be in
    one of the networks; an empty list allows any address."""
    networks = state.settings.webhook_networks
    if not networks:
        return
    host = request.client.host if request.client is not None else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or not any(address in network for network in networks):
        state.metrics.webhooks.labels(route, "source_refused").inc()
        log.warning("refused %s webhook from %s: not in AGENT_WEBHOOK_ALLOW_IPS", route, host or "unknown")
        raise HTTPException(status_code=403, detail="source address not allowed")


def _nonce_store(request: Request) -> NonceStore:
    """One store per app, on the app's own database (created on first use)."""
    store: NonceStore | None = getattr(request.app.state, "webhook_nonces", None)
    if store is None:
        settings = _state(request).settings
        retention_s = settings.webhook_nonce_retention_days * 86400.0
        store = NonceStore(_state(request).store.db, retention_s=retention_s)
        request.app.state.webhook_nonces = store
    return store


async def _check_nonces(request: Request, state: AppState, route: str) -> None:
    """Refuse a signed request whose nonce was answered before (a replay). A database failure lets the request
    through with an error logged: the signature was valid, and calls must not stop when the database does."""
    nonces = [request.headers.get(name, "").strip() for name in (HEADER_V3_NONCE, HEADER_V2_NONCE)]
    nonces = [n for n in nonces if n]
    try:
        verdict = await within(NONCE_DEADLINE_S, _nonce_store(request).claim(nonces))
    except Exception as exc:
        state.metrics.webhooks.labels(route, "nonce_unchecked").inc()
        log.error("%s webhook accepted without a replay check (nonce store failed: %r)", route, exc)
        return
    if verdict is NonceVerdict.REPLAY:
        state.metrics.webhooks.labels(route, "replay").inc()
        log.warning("refused %s webhook from %s: replayed signature nonce", route, request.client)
        raise HTTPException(status_code=403, detail="replayed Vobiz signature")
    if verdict is NonceVerdict.RETRY:
        log.info("%s webhook: a retry of a request not answered before, accepted", route)
    request.state.webhook_nonces = nonces


def _call_id(params: dict[str, str]) -> str:
    call_id = params.get("CallUUID") or params.get("call") or ""
    if not call_id or len(call_id) > 128:
        raise HTTPException(status_code=400, detail="missing or invalid CallUUID")
    return call_id


@router.api_route("/answer", methods=["GET", "POST"])
async def answer(request: Request) -> Response:
    state = _state(request)
    with state.metrics.answer_latency.time():
        return await _answer(request, state)


async def _answer(request: Request, state: AppState) -> Response:
    params = await _params(request, "answer")
    call_id = _call_id(params)
    event = params.get("Event", "")
    registry = state.registry
    if event == "Hangup":
        registry.hangup(call_id, "caller_hangup")
        _log_event(state, call_id, "hangup_webhook", params)
        return _xml(xml.empty())
    if event.lower() not in _ANSWER_EVENTS:
        # Ring (an outbound call still ringing), MachineDetection, ...: nobody to talk to yet, so no stream and
        # no model session; Vobiz posts StartApp once the call is answered.
        _log_event(state, call_id, "call_event", params)
        await outbound.on_event(state, call_id, params)  # [campaigns] attempt progress, async machine detection
        return _xml(xml.empty())
    if registry.is_ended(call_id):
        # Vobiz re-posts the answer URL after a stream ends; never start a second conversation.
        return _xml(xml.hangup())
    settings = state.settings
    refusal = _refusal(state, call_id)
    if refusal is not None:
        state.metrics.calls_rejected.labels(refusal).inc()
        log.warning("refused call %s: %s", call_id, refusal)
        return _xml(xml.speak_then(settings.busy_text, dial=settings.transfer_number))
    caller, called = params.get("From", ""), params.get("To", "")
    variables = {k[4:]: v for k, v in params.items() if k.startswith("var_")}  # outbound-call variables
    try:
        # An experiment routes a share of calls to a candidate prompt, by call id (retries and replicas agree).
        chosen, experiment_tags = state.prompts.select_for_call(called, params.get("prompt"), call_id)
        prompt = chosen.render({"caller": caller, "called": called} | variables)
    except PromptError as exc:
        log.error("cannot serve call %s: %s", call_id, exc)
        return _xml(xml.speak_then(settings.apology_text, dial=settings.transfer_number))
    record = registry.records.get(call_id) or CallRecord(
        call_id, from_number=caller, to_number=called, direction=params.get("Direction", "")
    )
    # `tag_KEY=VALUE` on the answer URL labels the call (an eval run, a campaign) for the console and queries.
    record.tags |= {k[4:]: v[:200] for k, v in params.items() if k.startswith("tag_") and len(k) <= 64}
    record.tags |= experiment_tags
    record.event("answer_webhook", event=event, status=params.get("CallStatus", ""), prompt=prompt.name)
    machine_xml = await outbound.on_answer(state, call_id, params, prompt, record)  # [campaigns] machine policy
    if machine_xml is not None:
        return _xml(machine_xml)
    content_type = prompt.meta.audio_format or settings.stream_content_type
    context = AnswerContext(call_id, prompt.name, caller, called, record.direction, variables, dict(record.tags))
    await registry.remember_answer(context)  # before the XML goes back: the stream may land on another replica
    registry.prewarm(record, prompt, MediaFormat.parse(content_type))
    token = stream_token.issue(settings.stream_secret.get_secret_value(), call_id, settings.stream_token_ttl_s)
    call_q = quote(call_id, safe="")
    stream = xml.StreamSpec(
        url=f"{settings.stream_ws_url}/vobiz/stream?call={call_q}&token={token}&prompt={prompt.name}",
        content_type=content_type,
        status_callback_url=f"{settings.public_url}/vobiz/stream-status",
        max_retries=settings.stream_max_retries,
    )
    return _xml(xml.stream_response(stream, after_stream_url=f"{settings.public_url}/vobiz/after-stream?call={call_q}"))


def _refusal(state: AppState, call_id: str) -> str | None:
    """Why a new call cannot be served here (draining, full), or None. Retries of a call in progress pass."""
    if call_id in state.registry.records and state.registry.knows(call_id):
        return None
    if state.draining:
        return "draining"
    if state.registry.load() >= state.settings.max_concurrent_calls:
        return "capacity"
    return None


@router.api_route("/hangup", methods=["GET", "POST"])
async def hangup(request: Request) -> Response:
    state = _state(request)
    params = await _params(request, "hangup")
    call_id = _call_id(params)
    state.registry.hangup(call_id, "caller_hangup")
    _log_event(state, call_id, "hangup_webhook", params)
    return _xml(xml.empty())


@router.api_route("/stream-status", methods=["GET", "POST"])
async def stream_status(request: Request) -> Response:
    state = _state(request)
    params = await _params(request, "stream_status")
    call_id = _call_id(params)
    _log_event(state, call_id, "stream_status", params)
    return _xml(xml.empty())


@router.api_route("/after-stream", methods=["GET", "POST"])
async def after_stream(request: Request) -> Response:
    """Vobiz runs the `<Redirect>` after `<Stream>` once the stream ends: decide how the call ends."""
    state = _state(request)
    params = await _params(request, "after_stream")
    call_id = _call_id(params)
    outcome = await state.registry.outcome(call_id) or state.registry.default_outcome()
    _log_event(state, call_id, "after_stream", {"action": outcome.action.value, "reason": outcome.reason})
    settings = state.settings
    if outcome.action is EndAction.HANGUP:
        return _xml(xml.hangup())
    if outcome.action is EndAction.TRANSFER and outcome.transfer_number:
        return _xml(xml.speak_then(None, dial=outcome.transfer_number))
    return _xml(xml.speak_then(settings.apology_text, dial=outcome.transfer_number))


@router.api_route("/transfer", methods=["GET", "POST"])
async def transfer(request: Request) -> Response:
    """The URL handed to Vobiz's transfer API: dial the human the call was meant for."""
    state = _state(request)
    params = await _params(request, "transfer")
    call_id = _call_id(params)
    outcome = await state.registry.outcome(call_id)
    number = outcome.transfer_number if outcome else None
    _log_event(state, call_id, "transfer_xml", {"number_set": str(bool(number))})
    if not number:
        return _xml(xml.speak_then(state.settings.apology_text))
    return _xml(xml.speak_then(None, dial=number))


def _log_event(state: AppState, call_id: str, kind: str, params: dict[str, str]) -> None:
    record = state.registry.records.get(call_id)
    if record is not None:
        safe = {k: v for k, v in params.items() if not k.lower().startswith(("x-", "auth"))}
        record.event(kind, **safe)
        if kind == "hangup_webhook":
            record.hangup_reported(params.get("HangupSource", ""))
        if record.ended_at is not None:
            state.records.submit(record)  # a late webhook refines a stored call; saving is idempotent
