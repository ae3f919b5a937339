"""Webhooks need a valid Vobiz signature when a token is configured; stream sockets need their call's token."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import sys
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from agent.config import ConfigError, Settings, load_settings
from agent.engine import RealtimeSimConfig
from agent.observability import logs
from agent.observability.logs import RedactSecrets
from agent.protocol.vobiz import stream_token
from agent.protocol.vobiz.signature import signature_headers
from agent.testkit.carrier import CallerAudio, SimCallOptions
from agent.waiting import within
from agent.web.app import create_app
from agent.web.webhooks import INSECURE_REFUSAL
from tests.agent_process import agent_process, clean_env
from tests.harness import ROOT, running_stack, start_message, stream_url

TOKEN = "vobiz-auth-token-for-tests"
FORM = {"CallUUID": "call-sec-1", "From": "+911", "To": "+912", "Direction": "inbound", "Event": "StartApp"}


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


def test_a_stream_token_is_good_for_at_least_its_whole_ttl() -> None:
    """A token issued late in a second must not lose that second: a 1 s TTL once left Vobiz 0.1 s to connect."""
    token = stream_token.issue("s", "call-1", 1.0, now=100.9)
    assert stream_token.verify("s", "call-1", token, now=101.85).ok
    assert not stream_token.verify("s", "call-1", token, now=101.85).expired
    assert stream_token.verify("s", "call-1", token, now=103.0).expired


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


# --- closed to strangers: start-up, tokens, replays, source addresses, logs ---------------------------------------


def bare_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "openai_api_key": "sk-test-not-a-real-key",
        "prompts_dir": ROOT / "prompts",
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/agent.db",
        "recordings_dir": tmp_path / "recordings",
        "vobiz_auth_token": None,
        "vobiz_main_auth_token": None,
        "insecure_webhooks": False,
    }
    return Settings(**(values | overrides))


def test_an_agent_with_open_webhooks_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        create_app(bare_settings(tmp_path))
    assert str(info.value) == INSECURE_REFUSAL and "\n" not in str(info.value)
    create_app(bare_settings(tmp_path, insecure_webhooks=True))  # open on purpose: allowed
    create_app(bare_settings(tmp_path, vobiz_main_auth_token=TOKEN))  # either token turns checks on


async def test_serve_refuses_to_start_with_open_webhooks_in_one_line() -> None:
    env = clean_env()
    del env["AGENT_INSECURE_WEBHOOKS"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "serve", "--port", "9", env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await within(60, proc.communicate())
    assert proc.returncode == 2
    assert err.decode().strip().splitlines() == [INSECURE_REFUSAL] and "Uvicorn running" not in out.decode()


async def test_the_main_account_token_alone_turns_signature_checks_on() -> None:
    async with (
        running_stack(vobiz_main_auth_token=TOKEN, insecure_webhooks=False) as stack,
        httpx.AsyncClient() as http,
    ):
        url = f"{stack.base_url}/vobiz/answer"
        assert (await http.post(url, data=FORM)).status_code == 403
        sub_account = signature_headers("unknown-sub-account-token", url, main_token=TOKEN)
        assert (await http.post(url, data=FORM, headers=sub_account)).status_code == 200
        await stack.state.registry.shutdown()


async def test_a_replayed_signed_webhook_is_refused() -> None:
    async with running_stack(vobiz_auth_token=TOKEN) as stack, httpx.AsyncClient() as http:
        url = f"{stack.base_url}/vobiz/stream-status"
        headers = signature_headers(TOKEN, url)
        assert (await http.post(url, data=FORM, headers=headers)).status_code == 200
        assert (await http.post(url, data=FORM, headers=headers)).status_code == 403
        # Dropping the V3 pair and replaying the V2 one does not help: every nonce of a request is remembered.
        v2_only = {k: v for k, v in headers.items() if "V3" not in k}
        assert (await http.post(url, data=FORM, headers=v2_only)).status_code == 403
        assert stack.metric("agent_webhooks_total", route="stream_status", outcome="replay") == 2
        fresh = signature_headers(TOKEN, url)  # Vobiz's next callback has a new nonce
        assert (await http.post(url, data=FORM, headers=fresh)).status_code == 200


async def test_a_retry_of_a_webhook_that_was_not_answered_200_is_accepted_once_answered_it_is_a_replay() -> None:
    async with running_stack(vobiz_auth_token=TOKEN) as stack, httpx.AsyncClient() as http:
        url = f"{stack.base_url}/vobiz/hangup"
        headers = signature_headers(TOKEN, url)
        failed = await http.post(url, data={"Event": "Hangup"}, headers=headers)  # no CallUUID: 400
        assert failed.status_code == 400
        # Vobiz retries a non-200; if the retry carries the same nonce it must still get through.
        assert (await http.post(url, data=FORM, headers=headers)).status_code == 200
        assert (await http.post(url, data=FORM, headers=headers)).status_code == 403


async def test_the_optional_source_allow_list_uses_the_client_address_after_trusted_proxies() -> None:
    async with running_stack(vobiz_auth_token=TOKEN, webhook_allow_ips="10.0.0.0/8, 192.0.2.7") as stack:
        url = f"{stack.base_url}/vobiz/stream-status"
        async with httpx.AsyncClient() as http:
            direct = await http.post(url, data=FORM, headers=signature_headers(TOKEN, url))
            assert direct.status_code == 403  # 127.0.0.1 is not listed
            # Loopback is a trusted proxy here (uvicorn's forwarded_allow_ips): the forwarded client counts.
            for client, status in (("10.20.30.40", 200), ("192.0.2.7", 200), ("192.0.2.8", 403)):
                headers = signature_headers(TOKEN, url) | {"X-Forwarded-For": client}
                assert (await http.post(url, data=FORM, headers=headers)).status_code == status, client
        assert stack.metric("agent_webhooks_total", route="stream_status", outcome="source_refused") == 2


def test_webhook_and_proxy_address_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(webhook_allow_ips="10.0.0.0/8,vobiz.example", forwarded_allow_ips="proxy")
    assert str(info.value).splitlines() == [
        "invalid setting AGENT_WEBHOOK_ALLOW_IPS: Value error, 'vobiz.example' is not an IP address or CIDR network",
        "invalid setting AGENT_FORWARDED_ALLOW_IPS: Value error, 'proxy' is not '*', an IP address or a CIDR network",
    ]
    settings = load_settings(webhook_allow_ips=" 35.154.59.246/32 ,3.110.99.6", forwarded_allow_ips="*")
    assert [str(n) for n in settings.webhook_networks] == ["35.154.59.246/32", "3.110.99.6/32"]


async def test_stream_tokens_never_reach_the_access_or_error_log() -> None:
    """`voice-agent serve` at INFO, as deployed: uvicorn logs every request line with its query string."""
    async with agent_process() as agent, httpx.AsyncClient() as http:
        assert any("INSECURE" in line and "AGENT_INSECURE_WEBHOOKS=true" in line for line in agent.startup_lines)
        reply = await http.post(f"{agent.base_url}/vobiz/answer", data=FORM)
        good = stream_url(reply.text)
        token = parse_qs(urlsplit(good).query)["token"][0]
        assert len(token) > 10
        # An HTTP request to the socket's URL (access log) and a refused socket (uvicorn's error log).
        await http.get(good.replace("ws://", "http://"))
        await http.get(f"{agent.base_url}/healthz?token={token}")
        with pytest.raises(InvalidStatus):
            async with connect(good.replace("call=call-sec-1", "call=other-call")):
                pass
        async with connect(good) as ws:  # accepted, then closed without a start
            await ws.close()
        agent.send_signal(signal.SIGKILL)
        await within(30, agent.wait_exit())
        text = agent.log_text()
    assert '"GET /vobiz/stream?*** HTTP/1.1"' in text  # the request lines are there...
    assert '"GET /healthz?token=*** HTTP/1.1"' in text
    assert '"WebSocket /vobiz/stream?***"' in text
    assert token not in text  # ...the token is not
    assert token.split(".")[-1] not in text


def test_the_redaction_filter_covers_handlers_it_did_not_create() -> None:
    """A logger with its own handler (uvicorn's access log under its default log config) is masked too."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    access = logging.getLogger("uvicorn.access")
    own_stream = io.StringIO()
    own = logging.StreamHandler(own_stream)
    access.addHandler(own)
    access_level = access.level
    access.setLevel(logging.INFO)  # an earlier test server may have set it to WARNING
    try:
        logs.configure("INFO", stream=io.StringIO())
        access.info('%s - "%s %s HTTP/%s" %d', "1.2.3.4:5", "GET", "/vobiz/stream?call=c&token=1.abc", "1.1", 404)
        access.info("%s", "https://x.example/cb?a=1&stream_token=zzz&b=2")
    finally:
        access.removeHandler(own)
        access.setLevel(access_level)
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert own_stream.getvalue().splitlines() == [
        '1.2.3.4:5 - "GET /vobiz/stream?*** HTTP/1.1" 404',
        "https://x.example/cb?a=1&stream_token=***&b=2",
    ]
