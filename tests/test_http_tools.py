"""A prompt's HTTP tools: fixed query parameters kept, one deadline for the whole request, a bounded answer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from agent.calls.tools import ToolCall, _request
from agent.prompts.schema import HttpTool
from agent.waiting import within


def tool_spec(url: str, method: str = "GET", timeout_s: float = 5.0) -> HttpTool:
    return HttpTool.model_validate(
        {"name": "lookup", "description": "Look something up.", "url": url, "method": method, "timeout_s": timeout_s}
    )


def tool_call(**arguments: Any) -> ToolCall:
    return ToolCall("fc_1", "lookup", arguments, "resp_1")


async def test_fixed_query_parameters_are_kept_and_win_over_the_models_arguments() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"found": True})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        spec = tool_spec("https://svc.example/orders?api_key=fixed-key&lang=en")
        result = await _request(http, spec, tool_call(order_id="A1", api_key="model-made-this-up"), "call-1")
        assert result == {"ok": True, "status": 200, "result": {"found": True}}
        params = seen[0].url.params
        assert params.get_list("api_key") == ["fixed-key"]  # the prompt's value, once
        assert params["lang"] == "en" and params["order_id"] == "A1"
        assert seen[0].headers["x-call-id"] == "call-1"
        # POST sends the arguments as JSON and keeps the URL's query as written.
        await _request(http, tool_spec("https://svc.example/orders?api_key=fixed-key", "POST"), tool_call(n=1), "c")
        assert seen[1].url.params["api_key"] == "fixed-key" and json.loads(seen[1].content) == {"n": 1}


async def test_one_deadline_covers_a_service_that_drips_its_answer() -> None:
    """A service that sends headers and a first chunk, then trickles (here: stalls). The mock transport applies
    no httpx timeouts at all, like a real server dripping a byte just inside every read timeout: only the
    tool's own overall deadline can end this."""
    first_chunk_sent = asyncio.Event()

    async def drip() -> AsyncIterator[bytes]:
        yield b'{"items": ['
        first_chunk_sent.set()
        await asyncio.Event().wait()  # the rest never comes
        yield b"]}"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "application/json"}, content=drip())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        started = time.monotonic()
        result = await within(
            10, _request(http, tool_spec("https://svc.example/slow", timeout_s=0.5), tool_call(), "c")
        )
        took = time.monotonic() - started
    assert result == {"ok": False, "error": "the service did not answer within 0.5 s"}
    assert first_chunk_sent.is_set() and 0.45 <= took < 2.0


async def test_a_huge_answer_is_refused_without_being_read_whole() -> None:
    chunks_sent = 0

    async def huge() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        for _ in range(1024):  # 16 MB in 16 KB chunks
            chunks_sent += 1
            yield b"a" * 16384

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=huge())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        result = await _request(http, tool_spec("https://svc.example/big"), tool_call(), "c")
    assert result == {"ok": False, "error": "the service's answer was larger than 64 KB"}
    assert chunks_sent <= 6  # stopped right after 64 KB, not after 16 MB
    # Just under the cap is a normal answer (text, cut for the model like before).
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200, text="b" * 60000))) as h:
        small = await _request(h, tool_spec("https://svc.example/ok"), tool_call(), "c")
    assert small["ok"] is True and small["result"] == "b" * 4000
