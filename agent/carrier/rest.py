"""Async client for the Vobiz REST API (calls and audio streams), on httpx.

Raw httpx rather than a Vobiz SDK: the agent needs a handful of endpoints, exact control over paths
(Vobiz answers 401 to a lowercase ``/account/`` and distinguishes trailing slashes, protocol doc §4.1) and
fake transports in tests. There are no automatic retries: ``POST /Call/`` is not idempotent and a 5xx or
timeout leaves the outcome unknown, so the caller decides. Error messages never contain the auth token.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import Mapping
from importlib import metadata
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import ValidationError

from agent.carrier.rest_errors import (
    VobizApiError,
    VobizAuthError,
    VobizNotFound,
    VobizPaymentRequired,
    VobizRateLimited,
    VobizServerError,
    VobizTransportError,
    VobizUnexpectedResponse,
)
from agent.protocol.vobiz.rest_models import (
    MakeCallResponse,
    StartStreamResponse,
    StreamList,
    StreamObject,
    TransferResponse,
    VobizModel,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL: Final = "https://api.vobiz.ai/api/v1"
MAX_MESSAGE_CHARS: Final = 500
MAX_EXTRA_HEADERS_BYTES: Final = 512

AudioTrack = Literal["inbound", "outbound", "both"]
Legs = Literal["aleg", "bleg", "both"]
HttpMethod = Literal["GET", "POST"]


def _user_agent() -> str:
    try:
        version = metadata.version("vobiz-voice-agent")
    except metadata.PackageNotFoundError:
        version = "0"
    return f"vobiz-voice-agent/{version} httpx/{httpx.__version__}"


USER_AGENT: Final = _user_agent()


_M = TypeVar("_M", bound=VobizModel)


# --------------------------------------------------------------------------------------------- helpers


def _segment(name: str, value: str) -> str:
    """One path segment, percent-encoded so a stray ``/`` or ``?`` cannot redirect the request."""
    if not value:
        raise ValueError(f"{name} must not be empty")
    return quote(value, safe="")


def _require_url(name: str, value: str, schemes: tuple[str, ...]) -> None:
    parts = urlsplit(value)
    if parts.scheme.lower() not in schemes or not parts.netloc:
        raise ValueError(f"{name} must be an absolute {'/'.join(s + '://' for s in schemes)} URL")


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_MESSAGE_CHARS else flat[: MAX_MESSAGE_CHARS - 1] + "…"


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header, in either the delta-seconds or the HTTP-date form."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _audio_format(content_type: str) -> Literal["mulaw", "pcm"]:
    lowered = content_type.lower()
    return "mulaw" if any(tag in lowered for tag in ("mulaw", "ulaw", "pcmu")) else "pcm"


# --------------------------------------------------------------------------------------------- client


class VobizClient:
    """Async Vobiz REST client; use as ``async with VobizClient(...) as vobiz:`` or call :meth:`aclose`.

    ``transport`` lets tests inject ``httpx.MockTransport``.
    """

    def __init__(
        self,
        auth_id: str,
        auth_token: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not auth_id or not auth_token:
            raise ValueError("auth_id and auth_token are required")
        self.auth_id = auth_id
        self._auth_token = auth_token
        self._account = f"/Account/{_segment('auth_id', auth_id)}"
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={
                "X-Auth-ID": auth_id,
                "X-Auth-Token": auth_token,
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"VobizClient(auth_id={self.auth_id!r}, base_url={str(self._http.base_url)!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the underlying connection pool."""
        await self._http.aclose()

    @property
    def is_closed(self) -> bool:
        """True once :meth:`aclose` ran; a closed client cannot send again."""
        return self._http.is_closed

    # ---------------------------------------------------------------------------------------- calls

    async def make_call(
        self,
        from_: str,
        to: str,
        answer_url: str,
        *,
        answer_method: HttpMethod = "POST",
        hangup_url: str | None = None,
        hangup_method: HttpMethod = "POST",
        ring_url: str | None = None,
        ring_method: HttpMethod = "POST",
        fallback_url: str | None = None,
        fallback_method: HttpMethod = "POST",
        time_limit: int | None = None,
        machine_detection: Literal["true", "hangup"] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> MakeCallResponse:
        """Place an outbound call (``POST /Account/{id}/Call/``); Vobiz answers 201 (observed) or 200.

        ``extra`` adds documented fields without a parameter here (``sip_headers``, AMD tuning, …); it may
        not override the named ones.
        """
        if not from_ or not to:
            raise ValueError("from_ and to are required")
        _require_url("answer_url", answer_url, ("http", "https"))
        body: dict[str, Any] = {
            "from": from_,
            "to": to,
            "answer_url": answer_url,
            "answer_method": answer_method,
        }
        for name, url, method in (
            ("hangup", hangup_url, hangup_method),
            ("ring", ring_url, ring_method),
            ("fallback", fallback_url, fallback_method),
        ):
            if url is not None:
                _require_url(f"{name}_url", url, ("http", "https"))
                body[f"{name}_url"] = url
                body[f"{name}_method"] = method
        if time_limit is not None:
            if time_limit <= 0:
                raise ValueError("time_limit must be positive")
            body["time_limit"] = time_limit
        if machine_detection is not None:
            body["machine_detection"] = machine_detection
        if extra:
            clash = sorted(set(extra) & set(body))
            if clash:
                raise ValueError(f"extra may not override {', '.join(clash)}")
            body.update(extra)
        path = f"{self._account}/Call/"
        return self._parse(MakeCallResponse, await self._request("POST", path, body=body), "POST", path)

    async def hangup_call(self, call_uuid: str) -> bool:
        """Hang up a call; False when Vobiz says 404 (already ended), so repeated hang-ups are harmless.

        Uses the trailing-slash form community code uses; the docs do not say which form is canonical.
        """
        return await self._delete(f"{self._account}/Call/{_segment('call_uuid', call_uuid)}/")

    async def transfer_call(
        self,
        call_uuid: str,
        aleg_url: str | None,
        *,
        aleg_method: HttpMethod = "POST",
        legs: Legs = "aleg",
        bleg_url: str | None = None,
        bleg_method: HttpMethod = "POST",
    ) -> TransferResponse:
        """Point a live call's leg(s) at new XML (e.g. a human hand-off); Vobiz answers 202.

        Each leg named in ``legs`` needs its URL; that is checked here because Vobiz would answer 400.
        """
        if legs not in ("aleg", "bleg", "both"):
            raise ValueError(f"legs must be 'aleg', 'bleg' or 'both', not {legs!r}")
        body: dict[str, Any] = {"legs": legs}
        if legs in ("aleg", "both"):
            if not aleg_url:
                raise ValueError(f"legs={legs!r} needs aleg_url")
            _require_url("aleg_url", aleg_url, ("http", "https"))
            body["aleg_url"] = aleg_url
            body["aleg_method"] = aleg_method
        if legs in ("bleg", "both"):
            if not bleg_url:
                raise ValueError(f"legs={legs!r} needs bleg_url")
            _require_url("bleg_url", bleg_url, ("http", "https"))
            body["bleg_url"] = bleg_url
            body["bleg_method"] = bleg_method
        path = f"{self._account}/Call/{_segment('call_uuid', call_uuid)}/"
        return self._parse(TransferResponse, await self._request("POST", path, body=body), "POST", path)

    # -------------------------------------------------------------------------------------- streams

    def _streams(self, call_uuid: str) -> str:
        return f"{self._account}/Call/{_segment('call_uuid', call_uuid)}/Stream/"

    async def start_stream(
        self,
        call_uuid: str,
        service_url: str,
        *,
        bidirectional: bool = False,
        audio_track: AudioTrack = "inbound",
        content_type: str = "audio/x-l16;rate=8000",
        stream_timeout: int | None = None,
        status_callback_url: str | None = None,
        status_callback_method: HttpMethod = "POST",
        extra_headers: str | Mapping[str, str] | None = None,
    ) -> StartStreamResponse:
        """Fork the call's audio to ``service_url`` (a WebSocket) mid-call.

        Sends both ``content_type`` (narrative docs) and ``audio_format`` (OpenAPI) since the docs disagree.
        Bidirectional streams must use ``audio_track="inbound"``: the docs say anything else hangs the call
        up, so it is refused here. ``extra_headers`` is the start-stream API's comma-separated ``header:value``
        list (unlike the ``<Stream extraHeaders>`` attribute's ``k=v``), given as that string or a mapping.
        """
        _require_url("service_url", service_url, ("ws", "wss"))
        if audio_track not in ("inbound", "outbound", "both"):
            raise ValueError(f"audio_track must be 'inbound', 'outbound' or 'both', not {audio_track!r}")
        if bidirectional and audio_track != "inbound":
            raise ValueError("bidirectional streams need audio_track='inbound' (Vobiz hangs up otherwise)")
        if not content_type:
            raise ValueError("content_type must not be empty")
        body: dict[str, Any] = {
            "service_url": service_url,
            "bidirectional": bidirectional,
            "audio_track": audio_track,
            "content_type": content_type,
            "audio_format": _audio_format(content_type),
        }
        if stream_timeout is not None:
            if stream_timeout <= 0:
                raise ValueError("stream_timeout must be positive")
            body["stream_timeout"] = stream_timeout
        if status_callback_url is not None:
            _require_url("status_callback_url", status_callback_url, ("http", "https"))
            body["status_callback_url"] = status_callback_url
            body["status_callback_method"] = status_callback_method
        if extra_headers:
            if not isinstance(extra_headers, str):
                extra_headers = ",".join(f"{k}:{v}" for k, v in extra_headers.items())
            if len(extra_headers.encode("utf-8")) > MAX_EXTRA_HEADERS_BYTES:
                raise ValueError(f"extra_headers exceeds Vobiz's {MAX_EXTRA_HEADERS_BYTES}-byte limit")
            body["extra_headers"] = extra_headers
        path = self._streams(call_uuid)
        response = await self._request("POST", path, body=body)
        return self._parse(StartStreamResponse, response, "POST", path)

    async def list_streams(self, call_uuid: str, *, limit: int = 20, offset: int = 0) -> StreamList:
        """List a call's streams, stopped ones included."""
        if limit < 1 or offset < 0:
            raise ValueError("limit must be >= 1 and offset >= 0")
        path = self._streams(call_uuid)
        response = await self._request("GET", path, params={"limit": limit, "offset": offset})
        return self._parse(StreamList, response, "GET", path)

    async def get_stream(self, call_uuid: str, stream_id: str) -> StreamObject:
        """Fetch one stream; raises VobizNotFound for an unknown stream."""
        path = f"{self._streams(call_uuid)}{_segment('stream_id', stream_id)}/"
        return self._parse(StreamObject, await self._request("GET", path), "GET", path)

    async def stop_stream(self, call_uuid: str, stream_id: str) -> bool:
        """Stop one stream; False on 404 (unknown or already stopped), so it is idempotent.

        Unlike a socket ``stop`` this does not advance the call's XML.
        """
        return await self._delete(f"{self._streams(call_uuid)}{_segment('stream_id', stream_id)}/")

    async def stop_all_streams(self, call_uuid: str) -> bool:
        """Stop every stream on the call; False on 404 (call or streams already gone)."""
        return await self._delete(self._streams(call_uuid))

    # ------------------------------------------------------------------------------------- plumbing

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, int | str] | None = None,
    ) -> httpx.Response:
        """Send one request; any 2xx is success, everything else raises a VobizApiError subclass.

        Any 2xx rather than the documented code: the docs disagree (200 vs 201 vs 202), and turning a placed
        call into an exception would invite a duplicate retry.
        """
        try:
            response = await self._http.request(method, path, json=body, params=params)
        except httpx.TransportError as exc:
            log.warning("vobiz %s %s failed: %s", method, path, type(exc).__name__)
            raise VobizTransportError(
                _one_line(self._scrub(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)),
                method=method,
                path=path,
            ) from exc
        status = response.status_code
        log.debug("vobiz %s %s -> %d", method, path, status)
        if 200 <= status < 300:
            return response
        raise self._error(response, method, path)

    async def _delete(self, path: str) -> bool:
        """DELETE where 404 means "already gone": True if Vobiz did it now, False if it was done before."""
        try:
            await self._request("DELETE", path)
        except VobizNotFound:
            return False
        return True

    def _error(self, response: httpx.Response, method: str, path: str) -> VobizApiError:
        status = response.status_code
        message = _one_line(self._scrub(self._message(response)))
        if status in (401, 403):
            return VobizAuthError(status, message, method=method, path=path)
        if status == 402:
            return VobizPaymentRequired(status, message, method=method, path=path)
        if status == 404:
            return VobizNotFound(status, message, method=method, path=path)
        if status == 429:
            return VobizRateLimited(
                status,
                message,
                method=method,
                path=path,
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
        if status >= 500:
            return VobizServerError(status, message, method=method, path=path)
        return VobizApiError(status, message, method=method, path=path)

    @staticmethod
    def _message(response: httpx.Response) -> str:
        """Vobiz's own explanation: JSON ``error``/``message``/``detail``, else the text, else the reason."""
        text = response.text
        try:
            data = json.loads(text) if text.strip() else None
        except ValueError:
            data = None
        if isinstance(data, dict):
            for key in ("error", "message", "detail"):
                value = data.get(key)
                if value:
                    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        if text.strip():
            return text
        return response.reason_phrase or httpx.codes.get_reason_phrase(response.status_code) or "no body"

    def _scrub(self, text: str) -> str:
        # Belt and braces: a proxy or error page echoing request headers must not leak the token.
        return text.replace(self._auth_token, "***")

    def _parse(self, model: type[_M], response: httpx.Response, method: str, path: str) -> _M:
        try:
            return model.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            detail = self._scrub(response.text).strip() or "empty body"
            raise VobizUnexpectedResponse(
                response.status_code,
                _one_line(f"unexpected {model.__name__} body: {detail}"),
                method=method,
                path=path,
            ) from exc
