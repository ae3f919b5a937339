"""Vobiz HTTP webhooks: answer, hangup, stream status, and the XML routes Vobiz fetches when a stream ends.

Every route is idempotent and fast (Vobiz retries non-200s and wants an answer within a couple of seconds).
When either Vobiz auth token is configured, a request needs a valid signature whose nonce was not answered
before (replays are refused across replicas, see `agent.storage.nonces`); the service refuses to start without
a token unless AGENT_INSECURE_WEBHOOKS=true says that open webhooks are intended (local development).
AGENT_WEBHOOK_ALLOW_IPS optionally limits the source addresses as well.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

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
                await _mark_answered(request.app, nonces)
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
    client = request.client.host if request.client is not None else ""
    nonces = await _authenticate(request.app, state, route, request.url.path, request.headers, client)
    if nonces:
        request.state.webhook_nonces = nonces
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


async def _authenticate(
    app: Any, state: AppState, route: str, path: str, headers: Mapping[str, str], client: str
) -> list[str]:
    """Source address, signature, replay: raises HTTPException (403) when refused. Returns the signature nonces
    claimed, to be marked answered once the request was answered 2xx (none when signatures are off)."""
    settings = state.settings
    _check_source(client, state, route)
    if not settings.webhook_auth_enabled:
        return []
    # Vobiz signs the URL it called; rebuild it from PUBLIC_URL so a TLS proxy in front does not matter.
    check = verify_signature(headers, settings.public_url + path, settings.webhook_tokens, settings.main_webhook_tokens)
    if not check.ok:
        state.metrics.webhooks.labels(route, "bad_signature").inc()
        log.warning("refused %s webhook from %s: signature %s", route, client, check.reason)
        raise HTTPException(status_code=403, detail="invalid Vobiz signature")
    return await _check_nonces(app, headers, state, route, client)


def _check_source(host: str, state: AppState, route: str) -> None:
    """AGENT_WEBHOOK_ALLOW_IPS: the client address (as uvicorn resolved it from trusted proxy headers) must be in
    one of the networks; an empty list allows any address."""
    networks = state.settings.webhook_networks
    if not networks:
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or not any(address in network for network in networks):
        state.metrics.webhooks.labels(route, "source_refused").inc()
        log.warning("refused %s webhook from %s: not in AGENT_WEBHOOK_ALLOW_IPS", route, host or "unknown")
        raise HTTPException(status_code=403, detail="source address not allowed")


def _nonce_store(app: Any) -> NonceStore:
    """One store per app, on the app's own database (created on first use)."""
    store: NonceStore | None = getattr(app.state, "webhook_nonces", None)
    if store is None:
        state: AppState = app.state.agent
        retention_s = state.settings.webhook_nonce_retention_days * 86400.0
        store = NonceStore(state.store.db, retention_s=retention_s)
        app.state.webhook_nonces = store
    return store


async def _check_nonces(app: Any, headers: Mapping[str, str], state: AppState, route: str, client: str) -> list[str]:
    """Refuse a signed request whose nonce was answered before (a replay). A database failure lets the request
    through with an error logged: the signature was valid, and calls must not stop when the database does."""
    nonces = [headers.get(name, "").strip() for name in (HEADER_V3_NONCE, HEADER_V2_NONCE)]
    nonces = [n for n in nonces if n]
    try:
        verdict = await within(NONCE_DEADLINE_S, _nonce_store(app).claim(nonces))
    except Exception as exc:
        state.metrics.webhooks.labels(route, "nonce_unchecked").inc()
        log.error("%s webhook accepted without a replay check (nonce store failed: %r)", route, exc)
        return []
    if verdict is NonceVerdict.REPLAY:
        state.metrics.webhooks.labels(route, "replay").inc()
        log.warning("refused %s webhook from %s: replayed signature nonce", route, client)
        raise HTTPException(status_code=403, detail="replayed Vobiz signature")
    if verdict is NonceVerdict.RETRY:
        log.info("%s webhook: a retry of a request not answered before, accepted", route)
    return nonces


async def _mark_answered(app: Any, nonces: list[str]) -> None:
    try:
        await within(NONCE_DEADLINE_S, _nonce_store(app).answered(nonces))
    except Exception as exc:  # the reply stands; the nonce just stays retryable for a while
        log.error("could not mark webhook nonces answered: %r", exc)


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


STREAM_STATUS_PATH = "/vobiz/stream-status"
# Stream status callbacks that repeat what the stream socket already said (a checkpoint played, a clear done):
# the record keeps which one and its checkpoint name, not the dozen echoed fields of each.
_SOCKET_ACKS = frozenset({"PlayedStream", "ClearedAudio"})
_ACK_FIELDS = ("Event", "Name", "Error")


@router.api_route("/stream-status", methods=["GET", "POST"])
async def stream_status(request: Request) -> Response:
    """The framework route: `StreamStatusFastPath` answers the usual urlencoded callbacks before they get here;
    this one takes the rest (multipart bodies)."""
    state = _state(request)
    params = await _params(request, "stream_status")
    _stream_status_event(state, _call_id(params), params)
    return _xml(xml.empty())


def _stream_status_event(state: AppState, call_id: str, params: dict[str, str]) -> None:
    if params.get("Event") in _SOCKET_ACKS:
        params = {k: params[k] for k in _ACK_FIELDS if params.get(k)}
    _log_event(state, call_id, "stream_status", params)


class StreamStatusFastPath:
    """`/vobiz/stream-status` without the framework: Vobiz posts one per checkpoint played and per clear, for
    every call, and the full FastAPI request cycle (routing, dependency solving, a Request, form parsing through
    python-multipart) cost more than everything else the callback needs. Same checks in the same order (source
    address, signature, replayed nonce), same answers (the empty XML, or the framework's `{"detail": …}` JSON
    errors), same metrics; nonces are marked answered before the 200 leaves, as `_WebhookRoute` does. Anything
    that is not a GET or an urlencoded (or bodiless) POST is left to the framework route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != STREAM_STATUS_PATH or scope["method"] not in ("GET", "POST"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        post = scope["method"] == "POST"
        form = post and headers.get("content-type", "").split(";", 1)[0].strip().lower() == _URLENCODED
        if post and not form and "multipart/" in headers.get("content-type", "").lower():
            await self.app(scope, receive, send)
            return
        app = scope["app"]
        state: AppState = app.state.agent
        client = scope.get("client")
        host = client[0] if client else ""
        try:
            nonces = await _authenticate(app, state, "stream_status", scope["path"], headers, host)
            params = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
            if form:
                try:
                    body = await _read_body(receive)
                    fields = parse_qsl(body.decode("latin-1"), keep_blank_values=True, max_num_fields=_MAX_FIELDS)
                except ValueError as exc:
                    state.metrics.webhooks.labels("stream_status", "bad_body").inc()
                    raise HTTPException(status_code=400, detail=f"unreadable form body: {exc}") from None
                params |= dict(fields)
            state.metrics.webhooks.labels("stream_status", "ok").inc()
            call_id = _call_id(params)
        except HTTPException as exc:
            body = json.dumps({"detail": exc.detail}, ensure_ascii=False, separators=(",", ":")).encode()
            await _reply(send, exc.status_code, body, b"application/json")
            return
        _stream_status_event(state, call_id, params)
        if nonces:
            await _mark_answered(app, nonces)
        await _reply(send, 200, _EMPTY_XML, _XML_TYPE)


_URLENCODED = "application/x-www-form-urlencoded"
_MAX_FIELDS = 1000  # as the framework's form parser
_EMPTY_XML = xml.empty().encode()
_XML_TYPE = xml.XML_MEDIA_TYPE.encode()


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ValueError("client disconnected")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _reply(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", content_type)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
