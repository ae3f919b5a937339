"""Webhooks need a valid Vobiz signature when a token is configured; stream sockets need their call's token."""

from __future__ import annotations

import io
import json
import logging
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from agent.carrier import stream_token
from agent.carrier.signature import signature_headers
from agent.observability import logs
from agent.observability.logs import RedactSecrets
from agent.simulation.carrier import CallerAudio, SimCallOptions
from agent.simulation.realtime_server import RealtimeSimConfig
from tests.harness import running_stack, start_message

TOKEN = "vobiz-auth-token-for-tests"
FORM = {"CallUUID": "call-sec-1", "From": "+911", "To": "+912", "Direction": "inbound", "Event": "StartApp"}


def stream_url(xml_text: str) -> str:
    root = ET.fromstring(xml_text.split("?>", 1)[1])
    stream = root.find("Stream")
    assert stream is not None and stream.text
    return stream.text.strip()


@pytest.mark.parametrize("route", ["answer", "hangup", "stream-status", "after-stream", "transfer"])
async def test_unsigned_or_badly_signed_webhooks_get_403(route: str) -> None:
    async with running_stack(vobiz_auth_token=TOKEN) as stack, httpx.AsyncClient() as http:
        url = f"{stack.base_url}/vobiz/{route}"
        assert (await http.post(url, data=FORM)).status_code == 403
        wrong = signature_headers("some-other-token", url)
        assert (await http.post(url, data=FORM, headers=wrong)).status_code == 403
        other_path = signature_headers(TOKEN, f"{stack.base_url}/vobiz/somewhere-else")
        assert (await http.post(url, data=FORM, headers=other_path)).status_code == 403
        assert stack.metric("agent_webhooks_total", route=route.replace("-", "_"), outcome="bad_signature") == 3
        assert stack.engine.sessions == []  # a refused answer never opens a model session


async def test_signed_webhooks_are_accepted_v3_v2_and_query_strings_ignored() -> None:
    async with running_stack(vobiz_auth_token=TOKEN) as stack, httpx.AsyncClient() as http:
        url = f"{stack.base_url}/vobiz/answer"
        v3_only, v2_only = (
            signature_headers(TOKEN, url, versions=("v3",)),
            signature_headers(TOKEN, url, versions=("v2",)),
        )
        for headers in [v3_only, v2_only]:
            reply = await http.post(url, data=FORM, headers=headers)
            assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/xml")
        # Vobiz signs the URL without its query string.
        reply = await http.get(url + "?CallUUID=call-sec-2&Event=StartApp", headers=signature_headers(TOKEN, url))
        assert reply.status_code == 200 and "<Stream" in reply.text
        await stack.state.registry.shutdown()


async def test_a_signed_call_runs_end_to_end() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=300), vobiz_auth_token=TOKEN) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(1500)], SimCallOptions(auth_token=TOKEN))
        await call.wait_bot_audio(250, timeout=5)
        await call.hangup()
        assert call.protocol_errors == []


async def test_stream_socket_refused_without_a_valid_token() -> None:
    async with running_stack() as stack, httpx.AsyncClient() as http:
        reply = await http.post(f"{stack.base_url}/vobiz/answer", data=FORM)
        good = stream_url(reply.text)
        query = parse_qs(urlsplit(good).query)
        base = good.split("?")[0]
        other_call = stream_token.issue("test-stream-secret", "another-call", 60)
        expired = stream_token.issue("test-stream-secret", "call-sec-1", -10)
        for bad in [
            base,
            f"{base}?call=call-sec-1",
            f"{base}?call=call-sec-1&token=123.forged",
            f"{base}?call=call-sec-1&token={other_call}",
            f"{base}?call=another-call&token={query['token'][0]}",
            f"{base}?call=call-sec-1&token={expired}",
        ]:
            with pytest.raises(InvalidStatus) as info:
                async with connect(bad):
                    pass
            assert info.value.response.status_code == 403
        assert stack.metric("agent_stream_rejected_total", reason="token") == 5
        assert stack.metric("agent_stream_rejected_total", reason="token_expired") == 1
        # The right token for the right call is accepted, but start must name that same call.
        async with connect(good) as ws:
            await ws.send(start_message("someone-else", "s"))
            await ws.wait_closed()
        assert ws.close_code == 1008
        assert stack.metric("agent_stream_rejected_total", reason="call_mismatch") == 1
        await stack.state.registry.shutdown()


async def test_media_before_start_is_dropped_and_counted() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=200)) as stack, httpx.AsyncClient() as http:
        reply = await http.post(f"{stack.base_url}/vobiz/answer", data=FORM)
        async with connect(stream_url(reply.text)) as ws:
            await ws.send(json.dumps({"event": "media", "media": {"payload": "//8="}}))
            await ws.send("garbage")
            await ws.send(start_message("call-sec-1", "s-1"))
            first = json.loads(await ws.recv())
            assert first["event"] == "playAudio" and first["streamId"] == "s-1"
        assert stack.metric("agent_inbound_dropped_total", reason="media_before_start") == 1
        assert stack.metric("agent_inbound_dropped_total", reason="malformed_json") == 1


async def test_secrets_never_reach_the_logs() -> None:
    api_key = "sk-test-SECRET-api-key-0123456789"
    out = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure("DEBUG", secrets=[api_key, TOKEN, "test-stream-secret"], stream=out)
    try:
        await _call_with_secrets(api_key)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    text = out.getvalue()
    assert "refused answer webhook" in text and "call ended" in text  # the logs are there...
    assert api_key not in text and TOKEN not in text  # ...the secrets are not
    assert "test-stream-secret" not in text
    leaky = logging.getLogger("x")
    record = leaky.makeRecord("x", logging.INFO, "f", 1, "auth %s", ("Bearer abc.def",), None)
    assert RedactSecrets([]).filter(record) and record.getMessage() == "auth Bearer ***"


async def _call_with_secrets(api_key: str) -> None:
    async with running_stack(
        RealtimeSimConfig(reply_ms=300, api_key=api_key), vobiz_auth_token=TOKEN, openai_api_key=api_key
    ) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(1200)], SimCallOptions(auth_token=TOKEN))
        await call.wait_bot_audio(250, timeout=5)
        async with httpx.AsyncClient() as http:  # a refused webhook is logged too
            assert (await http.post(f"{stack.base_url}/vobiz/answer", data=FORM)).status_code == 403
        await call.hangup()
        await call.wait_ended(timeout=2)
        await stack.engine.wait_idle(timeout=2)
