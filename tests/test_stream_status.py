"""`/vobiz/stream-status` is answered before the framework's routing (Vobiz posts one per checkpoint and per
clear, for every call) with the same checks and answers as every other webhook."""

from __future__ import annotations

import httpx
from starlette.types import Receive, Scope, Send

from agent.protocol.vobiz.signature import signature_headers
from agent.web.webhooks import StreamStatusFastPath
from tests.harness import Stack, running_stack

TOKEN = "stream-status-token"
ANSWER = {"CallUUID": "status-1", "From": "+911", "To": "+912", "Direction": "inbound", "Event": "StartApp"}
COMMON = {"CallUUID": "status-1", "StreamID": "s-1", "From": "+911", "To": "+912", "ParentAuthID": "MA_X"}
ECHOES = {"Timestamp": "2026-12-06 10:00:00", "status_callback_url": "x", "status_callback_method": "POST"}


def _fast_path_only(stack: Stack, framework_calls: list[str]) -> httpx.AsyncClient:
    """A client of `StreamStatusFastPath` in front of a framework that only counts what reaches it."""

    async def framework(scope: Scope, receive: Receive, send: Send) -> None:
        framework_calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    fast = StreamStatusFastPath(framework)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = stack.app  # as Starlette sets it before the middleware stack
        await fast(scope, receive, send)

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=stack.base_url)


def _status_events(stack: Stack) -> list[dict[str, object]]:
    return [e.detail for e in stack.state.registry.records["status-1"].events if e.kind == "stream_status"]


async def test_stream_status_is_answered_without_the_framework_route_with_every_check() -> None:
    async with running_stack(vobiz_auth_token=TOKEN) as stack, httpx.AsyncClient() as http:
        answer_url = f"{stack.base_url}/vobiz/answer"
        answer = await http.post(answer_url, data=ANSWER, headers=signature_headers(TOKEN, answer_url))
        assert answer.status_code == 200 and "<Stream" in answer.text
        framework_calls: list[str] = []
        http = _fast_path_only(stack, framework_calls)
        url = f"{stack.base_url}/vobiz/stream-status"

        signed = signature_headers(TOKEN, url)
        start = await http.post(url, data=COMMON | ECHOES | {"Event": "StartStream"}, headers=signed)
        assert start.status_code == 200 and start.headers["content-type"] == "application/xml"
        assert start.text.endswith("<Response />")
        replay = await http.post(url, data=COMMON | {"Event": "StartStream"}, headers=signed)
        assert (replay.status_code, replay.json()) == (403, {"detail": "replayed Vobiz signature"})
        unsigned = await http.post(url, data=COMMON | {"Event": "PlayedStream", "Name": "n"})
        assert (unsigned.status_code, unsigned.json()) == (403, {"detail": "invalid Vobiz signature"})
        no_call = await http.post(url, data={"Event": "PlayedStream"}, headers=signature_headers(TOKEN, url))
        assert no_call.status_code == 400
        # GET with the fields in the query string (statusCallbackMethod="GET").
        played = await http.get(
            url,
            params=COMMON | ECHOES | {"Event": "PlayedStream", "Name": "item_1.1000.1"},
            headers=signature_headers(TOKEN, url),
        )
        assert played.status_code == 200
        cleared = await http.post(
            url, data=COMMON | ECHOES | {"Event": "ClearedAudio"}, headers=signature_headers(TOKEN, url)
        )
        assert cleared.status_code == 200

        assert stack.metric("agent_webhooks_total", route="stream_status", outcome="ok") == 4
        assert stack.metric("agent_webhooks_total", route="stream_status", outcome="replay") == 1
        assert stack.metric("agent_webhooks_total", route="stream_status", outcome="bad_signature") == 1
        start_event, played_event, cleared_event = _status_events(stack)
        assert start_event["Event"] == "StartStream" and start_event["StreamID"] == "s-1"
        assert start_event["Timestamp"] == ECHOES["Timestamp"]  # rare lifecycle callbacks keep every field
        # The socket already reported these two: the record keeps which one, and the checkpoint's name.
        assert played_event == {"Event": "PlayedStream", "Name": "item_1.1000.1"}
        assert cleared_event == {"Event": "ClearedAudio"}

        assert framework_calls == []
        # A multipart body is left to the framework route, where it is parsed as before; so is any other path.
        multipart = await http.post(url, files={"CallUUID": (None, "status-1")}, headers=signature_headers(TOKEN, url))
        assert multipart.status_code == 404
        await http.post(f"{stack.base_url}/vobiz/hangup", data=COMMON)
        assert framework_calls == ["/vobiz/stream-status", "/vobiz/hangup"]
        await http.aclose()
        await stack.state.registry.shutdown()


async def test_multipart_stream_status_still_goes_through_the_framework_route() -> None:
    async with running_stack() as stack, httpx.AsyncClient() as http:
        await http.post(f"{stack.base_url}/vobiz/answer", data=ANSWER)
        fields = {k: (None, v) for k, v in (COMMON | {"Event": "DroppedStream", "Error": "gone"}).items()}
        reply = await http.post(f"{stack.base_url}/vobiz/stream-status", files=fields)
        assert reply.status_code == 200
        assert _status_events(stack)[-1]["Error"] == "gone"
        await stack.state.registry.shutdown()
