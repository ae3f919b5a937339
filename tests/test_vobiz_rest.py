"""Vobiz REST client against httpx.MockTransport: exact paths, headers, bodies and error mapping."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import pytest

from agent.carrier.rest import DEFAULT_BASE_URL, VobizClient
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
)

AUTH_ID = "MA_TEST123"
AUTH_TOKEN = "tok_SECRET_0123456789abcdef"
CALL = "6e558798-1c2d-4d7a-9f58-6b2d3c4e5f60"
STREAM = "2b1b3f8e-8a2c-4b7e-9d3f-1a2b3c4d5e6f"
API = "/api/v1"

STREAM_OBJECT: dict[str, Any] = {
    "api_id": "15b27100-0b6d-11f0-8d6f-0242ac110002",
    "call_uuid": CALL,
    "stream_id": STREAM,
    "service_url": "wss://example.com/audio-stream",
    "audio_track": "inbound",
    "bidirectional": False,
    "content_type": "audio/x-l16",
    "sampling_rate": 8000,
    "stream_timeout": 86400,
    "status_callback_url": "https://example.com/stream-status",
    "status_callback_method": "POST",
    "status": "in-progress",
    "start_time": "2025-11-06 13:49:10+00:00",
    "end_time": None,
    "resource_uri": f"/v1/Account/{AUTH_ID}/Call/{CALL}/Stream/{STREAM}/",
}


class Recorder:
    """MockTransport handler that keeps every request and answers with a fixed or computed response."""

    def __init__(self, respond: Callable[[httpx.Request], httpx.Response]) -> None:
        self.requests: list[httpx.Request] = []
        self._respond = respond

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self._respond(request)

    @property
    def only(self) -> httpx.Request:
        assert len(self.requests) == 1, self.requests
        return self.requests[0]


def replying(
    status: int,
    body: Any = None,
    *,
    text: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Recorder:
    def respond(request: httpx.Request) -> httpx.Response:
        if body is not None:
            return httpx.Response(status, json=body, headers=headers)
        return httpx.Response(status, text=text or "", headers=headers)

    return Recorder(respond)


def make_client(recorder: Recorder, base_url: str = DEFAULT_BASE_URL) -> VobizClient:
    return VobizClient(AUTH_ID, AUTH_TOKEN, base_url, transport=httpx.MockTransport(recorder))


def check_request(request: httpx.Request, method: str, path: str, body: dict[str, Any] | None = None) -> None:
    assert request.method == method
    assert request.url.host == "api.vobiz.ai" and request.url.scheme == "https"
    assert request.url.path == API + path  # exact: casing and trailing slash matter to Vobiz
    assert request.headers["X-Auth-ID"] == AUTH_ID
    assert request.headers["X-Auth-Token"] == AUTH_TOKEN
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"].startswith("vobiz-voice-agent/")
    if body is None:
        assert request.content == b""
    else:
        assert json.loads(request.content) == body


# ------------------------------------------------------------------------------------------ calls


async def test_make_call_minimal() -> None:
    rec = replying(
        201,
        {"api_id": "97ba3f3e-aaaa", "request_uuid": CALL, "message": "call fired"},
    )
    async with make_client(rec) as vobiz:
        result = await vobiz.make_call("918071387423", "919624705678", "https://agent.example/answer")
    check_request(
        rec.only,
        "POST",
        f"/Account/{AUTH_ID}/Call/",
        {
            "from": "918071387423",
            "to": "919624705678",
            "answer_url": "https://agent.example/answer",
            "answer_method": "POST",
        },
    )
    assert isinstance(result, MakeCallResponse)
    assert result.request_uuid == CALL and result.request_uuids == [CALL]
    assert result.message == "call fired" and result.api_id == "97ba3f3e-aaaa"


async def test_make_call_all_options_and_200() -> None:
    rec = replying(
        200,
        {"api_id": "a1", "request_uuid": CALL, "message": "Call fired", "new_field": 7},
    )
    async with make_client(rec) as vobiz:
        result = await vobiz.make_call(
            "918071387423",
            "919624705678",
            "https://agent.example/answer",
            answer_method="GET",
            hangup_url="https://agent.example/hangup",
            ring_url="https://agent.example/ring",
            ring_method="GET",
            fallback_url="https://agent.example/fallback",
            time_limit=600,
            machine_detection="hangup",
            extra={"machine_detection_time": 3000, "sip_headers": "X-Campaign=42"},
        )
    check_request(
        rec.only,
        "POST",
        f"/Account/{AUTH_ID}/Call/",
        {
            "from": "918071387423",
            "to": "919624705678",
            "answer_url": "https://agent.example/answer",
            "answer_method": "GET",
            "hangup_url": "https://agent.example/hangup",
            "hangup_method": "POST",
            "ring_url": "https://agent.example/ring",
            "ring_method": "GET",
            "fallback_url": "https://agent.example/fallback",
            "fallback_method": "POST",
            "time_limit": 600,
            "machine_detection": "hangup",
            "machine_detection_time": 3000,
            "sip_headers": "X-Campaign=42",
        },
    )
    assert result.model_extra == {"new_field": 7}


async def test_make_call_bulk_request_uuid_list() -> None:
    rec = replying(201, {"api_id": "a1", "request_uuid": ["u1", "u2"], "message": "calls fired"})
    async with make_client(rec) as vobiz:
        result = await vobiz.make_call("918071387423", "919600000001<919600000002", "https://a.example/x")
    assert result.request_uuids == ["u1", "u2"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"extra": {"to": "919999999999"}}, "override to"),
        ({"answer_url": "ftp://agent.example/answer"}, "answer_url"),
        ({"answer_url": "/answer"}, "answer_url"),
        ({"hangup_url": "agent.example/hangup"}, "hangup_url"),
        ({"time_limit": 0}, "time_limit"),
        ({"to": ""}, "required"),
    ],
)
async def test_make_call_validation_sends_nothing(kwargs: dict[str, Any], match: str) -> None:
    rec = replying(201, {"request_uuid": CALL})
    args: dict[str, Any] = {
        "from_": "918071387423",
        "to": "919624705678",
        "answer_url": "https://agent.example/answer",
    }
    args.update(kwargs)
    async with make_client(rec) as vobiz:
        with pytest.raises(ValueError, match=match):
            await vobiz.make_call(**args)
    assert rec.requests == []


@pytest.mark.parametrize("status", [204, 200])
async def test_hangup_call(status: int) -> None:
    rec = replying(status)
    async with make_client(rec) as vobiz:
        assert await vobiz.hangup_call(CALL) is True
    check_request(rec.only, "DELETE", f"/Account/{AUTH_ID}/Call/{CALL}/")


async def test_hangup_already_ended_is_idempotent() -> None:
    rec = replying(404, {"api_id": "a1", "error": "call not found"})
    async with make_client(rec) as vobiz:
        assert await vobiz.hangup_call(CALL) is False
    check_request(rec.only, "DELETE", f"/Account/{AUTH_ID}/Call/{CALL}/")


async def test_path_segments_are_escaped_and_required() -> None:
    rec = replying(204)
    async with make_client(rec) as vobiz:
        await vobiz.hangup_call("abc/../Stream?x=1")
        with pytest.raises(ValueError, match="call_uuid"):
            await vobiz.hangup_call("")
    assert rec.only.url.raw_path == f"{API}/Account/{AUTH_ID}/Call/abc%2F..%2FStream%3Fx%3D1/".encode()


@pytest.mark.parametrize("status", [202, 200])
async def test_transfer_aleg(status: int) -> None:
    rec = replying(status, {"api_id": "a1", "message": "call transferred", "call_uuid": CALL})
    async with make_client(rec) as vobiz:
        result = await vobiz.transfer_call(CALL, "https://agent.example/xfer")
    check_request(
        rec.only,
        "POST",
        f"/Account/{AUTH_ID}/Call/{CALL}/",
        {"legs": "aleg", "aleg_url": "https://agent.example/xfer", "aleg_method": "POST"},
    )
    assert isinstance(result, TransferResponse)
    assert result.message == "call transferred" and result.call_uuid == CALL


async def test_transfer_both_and_bleg() -> None:
    rec = replying(202, {"api_id": "a1", "message": "call transferred", "call_uuid": CALL})
    async with make_client(rec) as vobiz:
        await vobiz.transfer_call(
            CALL,
            "https://agent.example/a",
            legs="both",
            bleg_url="https://agent.example/b",
            bleg_method="GET",
        )
        await vobiz.transfer_call(CALL, None, legs="bleg", bleg_url="https://agent.example/b")
    path = f"/Account/{AUTH_ID}/Call/{CALL}/"
    check_request(
        rec.requests[0],
        "POST",
        path,
        {
            "legs": "both",
            "aleg_url": "https://agent.example/a",
            "aleg_method": "POST",
            "bleg_url": "https://agent.example/b",
            "bleg_method": "GET",
        },
    )
    check_request(
        rec.requests[1],
        "POST",
        path,
        {"legs": "bleg", "bleg_url": "https://agent.example/b", "bleg_method": "POST"},
    )


@pytest.mark.parametrize(
    ("aleg_url", "kwargs", "match"),
    [
        ("https://agent.example/a", {"legs": "both"}, "bleg_url"),
        (None, {"legs": "both", "bleg_url": "https://agent.example/b"}, "aleg_url"),
        ("https://agent.example/a", {"legs": "bleg"}, "bleg_url"),
        (None, {}, "aleg_url"),
        ("", {"legs": "aleg"}, "aleg_url"),
        ("https://agent.example/a", {"legs": "cleg"}, "legs"),
        ("wss://agent.example/a", {}, "aleg_url"),
    ],
)
async def test_transfer_validation_sends_nothing(aleg_url: str | None, kwargs: dict[str, Any], match: str) -> None:
    rec = replying(202, {"message": "call transferred"})
    async with make_client(rec) as vobiz:
        with pytest.raises(ValueError, match=match):
            await vobiz.transfer_call(CALL, aleg_url, **kwargs)
    assert rec.requests == []


# ---------------------------------------------------------------------------------------- streams


@pytest.mark.parametrize("status", [202, 200, 201])
async def test_start_stream_defaults(status: int) -> None:
    rec = replying(status, {"stream_id": STREAM, "message": "Stream started"})
    async with make_client(rec) as vobiz:
        result = await vobiz.start_stream(CALL, "wss://agent.example/ws")
    check_request(
        rec.only,
        "POST",
        f"/Account/{AUTH_ID}/Call/{CALL}/Stream/",
        {
            "service_url": "wss://agent.example/ws",
            "bidirectional": False,
            "audio_track": "inbound",
            "content_type": "audio/x-l16;rate=8000",
            "audio_format": "pcm",
        },
    )
    assert isinstance(result, StartStreamResponse)
    assert result.stream_id == STREAM and result.message == "Stream started"


async def test_start_stream_all_options_mulaw() -> None:
    rec = replying(202, {"api_id": "a1", "stream_id": STREAM, "message": "Stream started"})
    async with make_client(rec) as vobiz:
        await vobiz.start_stream(
            CALL,
            "ws://127.0.0.1:8080/ws?t=abc",
            bidirectional=True,
            content_type="audio/x-mulaw;rate=8000",
            stream_timeout=3600,
            status_callback_url="https://agent.example/stream-status",
            status_callback_method="GET",
            extra_headers={"session": "abc123", "lang": "hi"},
        )
    check_request(
        rec.only,
        "POST",
        f"/Account/{AUTH_ID}/Call/{CALL}/Stream/",
        {
            "service_url": "ws://127.0.0.1:8080/ws?t=abc",
            "bidirectional": True,
            "audio_track": "inbound",
            "content_type": "audio/x-mulaw;rate=8000",
            "audio_format": "mulaw",
            "stream_timeout": 3600,
            "status_callback_url": "https://agent.example/stream-status",
            "status_callback_method": "GET",
            "extra_headers": "session:abc123,lang:hi",  # the API's header:value list, not the XML's k=v
        },
    )


async def test_start_stream_one_way_both_tracks_allowed() -> None:
    rec = replying(202, {"stream_id": STREAM, "message": "Stream started"})
    async with make_client(rec) as vobiz:
        await vobiz.start_stream(
            CALL, "wss://agent.example/ws", audio_track="both", content_type="audio/x-l16;rate=16000"
        )
    body = json.loads(rec.only.content)
    assert body["audio_track"] == "both" and body["audio_format"] == "pcm"


@pytest.mark.parametrize(
    ("service_url", "kwargs", "match"),
    [
        ("wss://agent.example/ws", {"bidirectional": True, "audio_track": "both"}, "inbound"),
        ("wss://agent.example/ws", {"bidirectional": True, "audio_track": "outbound"}, "inbound"),
        ("https://agent.example/ws", {}, "service_url"),
        ("agent.example/ws", {}, "service_url"),
        ("wss://agent.example/ws", {"audio_track": "left"}, "audio_track"),
        ("wss://agent.example/ws", {"stream_timeout": -1}, "stream_timeout"),
        ("wss://agent.example/ws", {"extra_headers": "a" * 513}, "512"),
        ("wss://agent.example/ws", {"status_callback_url": "ws://x.example/cb"}, "status_callback_url"),
    ],
)
async def test_start_stream_validation_sends_nothing(service_url: str, kwargs: dict[str, Any], match: str) -> None:
    rec = replying(202, {"stream_id": STREAM})
    async with make_client(rec) as vobiz:
        with pytest.raises(ValueError, match=match):
            await vobiz.start_stream(CALL, service_url, **kwargs)
    assert rec.requests == []


async def test_list_streams() -> None:
    second = {
        **STREAM_OBJECT,
        "stream_id": "9f9f9f9f-0000",
        "bidirectional": True,
        "audio_track": "both",
        "status": "completed",
        "end_time": "2025-11-06 13:51:10+00:00",
    }
    rec = replying(200, {"page": 1, "per_page": 20, "total": 2, "objects": [STREAM_OBJECT, second]})
    async with make_client(rec) as vobiz:
        result = await vobiz.list_streams(CALL, limit=5, offset=10)
    check_request(rec.only, "GET", f"/Account/{AUTH_ID}/Call/{CALL}/Stream/")
    assert dict(rec.only.url.params) == {"limit": "5", "offset": "10"}
    assert isinstance(result, StreamList)
    assert (result.page, result.per_page, result.total) == (1, 20, 2)
    assert [s.status for s in result.objects] == ["in-progress", "completed"]
    assert result.objects[1].end_time == "2025-11-06 13:51:10+00:00"


async def test_list_streams_default_paging() -> None:
    rec = replying(200, {"page": 1, "per_page": 20, "total": 0, "objects": []})
    async with make_client(rec) as vobiz:
        result = await vobiz.list_streams(CALL)
        with pytest.raises(ValueError):
            await vobiz.list_streams(CALL, limit=0)
    assert rec.only.url.query == b"limit=20&offset=0"
    assert result.objects == []


async def test_get_stream() -> None:
    rec = replying(200, STREAM_OBJECT)
    async with make_client(rec) as vobiz:
        stream = await vobiz.get_stream(CALL, STREAM)
    check_request(rec.only, "GET", f"/Account/{AUTH_ID}/Call/{CALL}/Stream/{STREAM}/")
    assert isinstance(stream, StreamObject)
    assert stream.stream_id == STREAM and stream.sampling_rate == 8000 and stream.bidirectional is False
    assert stream.service_url == "wss://example.com/audio-stream" and stream.end_time is None


async def test_get_unknown_stream_raises_not_found() -> None:
    rec = replying(404, {"api_id": "a1", "error": "stream not found"})
    async with make_client(rec) as vobiz:
        with pytest.raises(VobizNotFound) as info:
            await vobiz.get_stream(CALL, STREAM)
    assert info.value.status == 404 and info.value.message == "stream not found"


@pytest.mark.parametrize(("status", "expected"), [(204, True), (200, True), (404, False)])
async def test_stop_stream(status: int, expected: bool) -> None:
    rec = replying(status)
    async with make_client(rec) as vobiz:
        assert await vobiz.stop_stream(CALL, STREAM) is expected
    check_request(rec.only, "DELETE", f"/Account/{AUTH_ID}/Call/{CALL}/Stream/{STREAM}/")


@pytest.mark.parametrize(("status", "expected"), [(204, True), (404, False)])
async def test_stop_all_streams(status: int, expected: bool) -> None:
    rec = replying(status)
    async with make_client(rec) as vobiz:
        assert await vobiz.stop_all_streams(CALL) is expected
    check_request(rec.only, "DELETE", f"/Account/{AUTH_ID}/Call/{CALL}/Stream/")


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, VobizApiError),
        (401, VobizAuthError),
        (403, VobizAuthError),
        (402, VobizPaymentRequired),
        (404, VobizNotFound),
        (409, VobizApiError),
        (429, VobizRateLimited),
        (500, VobizServerError),
        (502, VobizServerError),
        (503, VobizServerError),
    ],
)
async def test_status_maps_to_error_class(status: int, cls: type[VobizApiError]) -> None:
    rec = replying(status, {"api_id": "a1", "error": "something went wrong"})
    async with make_client(rec) as vobiz:
        with pytest.raises(VobizApiError) as info:
            await vobiz.make_call("918071387423", "919624705678", "https://agent.example/answer")
    assert type(info.value) is cls
    err = info.value
    assert (err.status, err.message, err.method) == (status, "something went wrong", "POST")
    assert err.path == f"/Account/{AUTH_ID}/Call/"
    assert str(err) == f"Vobiz API {status} on POST /Account/{AUTH_ID}/Call/: something went wrong"


async def test_error_str_is_a_clear_one_liner() -> None:
    rec = replying(401, {"error": "Authentication failed"})
    async with VobizClient("MA_X", AUTH_TOKEN, transport=httpx.MockTransport(rec)) as vobiz:
        with pytest.raises(VobizAuthError) as info:
            await vobiz.hangup_call("abc")
    assert str(info.value) == "Vobiz API 401 on DELETE /Account/MA_X/Call/abc/: Authentication failed"


@pytest.mark.parametrize(
    ("body", "text", "expected"),
    [
        ({"api_id": "a1", "error": "Insufficient balance"}, None, "Insufficient balance"),
        ({"message": "from number not verified"}, None, "from number not verified"),
        ({"detail": "Invalid answer_url"}, None, "Invalid answer_url"),
        ({"error": "", "message": "fallback to message"}, None, "fallback to message"),
        (
            {"detail": [{"loc": ["body", "to"], "msg": "required"}]},
            None,
            '[{"loc":["body","to"],"msg":"required"}]',
        ),
        (None, "<html>\n  <body>Bad Gateway</body>\n</html>", "<html> <body>Bad Gateway</body> </html>"),
        (None, "", "Bad Request"),
        (None, '{"unrelated": 1}', '{"unrelated": 1}'),
        (None, '["not", "a", "dict"]', '["not", "a", "dict"]'),
    ],
)
async def test_error_message_extraction(body: Any, text: str | None, expected: str) -> None:
    rec = replying(400, body, text=text)
    async with make_client(rec) as vobiz:
        with pytest.raises(VobizApiError) as info:
            await vobiz.hangup_call(CALL)
    assert info.value.message == expected
    assert "\n" not in str(info.value)


async def test_error_message_truncated_to_500_chars() -> None:
    rec = replying(500, text="x" * 5000)
    async with make_client(rec) as vobiz:
        with pytest.raises(VobizServerError) as info:
            await vobiz.hangup_call(CALL)
    assert len(info.value.message) == 500


async def test_error_never_contains_the_token() -> None:
    echoed = f"bad request headers: X-Auth-Token: {AUTH_TOKEN}"
    rec = replying(403, {"error": echoed})
    async with make_client(rec) as vobiz:
        with pytest.raises(VobizAuthError) as info:
            await vobiz.hangup_call(CALL)
    assert AUTH_TOKEN not in str(info.value) and AUTH_TOKEN not in repr(info.value)
    assert "***" in info.value.message
    assert AUTH_TOKEN not in repr(vobiz)


@pytest.mark.parametrize(("header", "expected"), [("3", 3.0), ("1.5", 1.5), (None, None), ("soon", None)])
async def test_rate_limited_retry_after(header: str | None, expected: float | None) -> None:
    headers = {"Retry-After": header} if header is not None else None
    rec = replying(429, {"error": "CPS limit exceeded"}, headers=headers)
    async with make_client(rec) as vobiz:
        with pytest.raises(VobizRateLimited) as info:
            await vobiz.make_call("918071387423", "919624705678", "https://agent.example/answer")
    assert info.value.retry_after == expected


async def test_rate_limited_retry_after_http_date() -> None:
    rec = replying(429, {"error": "slow down"}, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    async with make_client(rec) as vobiz:
        with pytest.raises(VobizRateLimited) as info:
            await vobiz.hangup_call(CALL)
    assert info.value.retry_after == 0.0  # a date in the past means "now"


@pytest.mark.parametrize(
    "exc",
    [httpx.ConnectError("connection refused"), httpx.ReadTimeout("timed out"), httpx.RemoteProtocolError("")],
)
async def test_transport_errors(exc: httpx.TransportError) -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise exc

    rec = Recorder(boom)
    async with make_client(rec) as vobiz:
        with pytest.raises(VobizTransportError) as info:
            await vobiz.hangup_call(CALL)
    err = info.value
    assert isinstance(err, VobizApiError) and err.status == 0
    assert err.method == "DELETE" and err.path == f"/Account/{AUTH_ID}/Call/{CALL}/"
    assert type(exc).__name__ in err.message and err.__cause__ is exc
    assert str(err).startswith(f"Vobiz API unreachable (status 0) on DELETE /Account/{AUTH_ID}/Call/{CALL}/: ")


@pytest.mark.parametrize(("status", "text"), [(201, ""), (201, "call fired"), (200, '{"message": "ok"}')])
async def test_unexpected_success_body(status: int, text: str) -> None:
    rec = replying(status, text=text)
    async with make_client(rec) as vobiz:
        with pytest.raises(VobizUnexpectedResponse) as info:
            await vobiz.make_call("918071387423", "919624705678", "https://agent.example/answer")
    assert info.value.status == status and "MakeCallResponse" in info.value.message
    assert info.value.path == f"/Account/{AUTH_ID}/Call/"


async def test_redirect_is_not_followed() -> None:
    rec = replying(301, headers={"Location": "https://api.vobiz.ai/api/v1/elsewhere"})
    async with make_client(rec) as vobiz:
        with pytest.raises(VobizApiError) as info:
            await vobiz.hangup_call(CALL)
    assert info.value.status == 301 and len(rec.requests) == 1


# ------------------------------------------------------------------------------------- lifecycle


async def test_custom_base_url_with_trailing_slash() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        assert str(request.url) == f"http://127.0.0.1:9/vobiz/api/v1/Account/{AUTH_ID}/Call/{CALL}/"
        return httpx.Response(204)

    rec = Recorder(respond)
    async with make_client(rec, "http://127.0.0.1:9/vobiz/api/v1/") as vobiz:
        assert await vobiz.hangup_call(CALL)
    assert len(rec.requests) == 1


async def test_context_manager_and_aclose() -> None:
    rec = replying(204)
    async with make_client(rec) as vobiz:
        assert not vobiz.is_closed
    assert vobiz.is_closed
    other = make_client(rec)
    await other.aclose()
    assert other.is_closed


def test_constructor_requires_credentials() -> None:
    with pytest.raises(ValueError):
        VobizClient("", AUTH_TOKEN)
    with pytest.raises(ValueError):
        VobizClient(AUTH_ID, "")
