"""Tools the model can call during a call: ending it, handing it to a human, and the prompt's HTTP tools.

Every tool keeps the caller hearing something sensible: a goodbye plays out before the line closes, the
hand-off is announced, and a slow HTTP tool is covered by a short filler instead of dead air.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from agent.calls.control import CallControl
from agent.calls.outcome import EndAction, Outcome
from agent.carrier.rest_errors import VobizApiError
from agent.prompts.schema import HttpTool
from agent.protocol.realtime import client_commands
from agent.records.record import ToolUse
from agent.waiting import cancel_and_wait, within

_MAX_RESULT_CHARS = 4000
_MAX_BODY_BYTES = 64 * 1024  # an HTTP tool's answer past this is refused, never read into memory whole


@dataclass
class ToolCall:
    call_id: str
    name: str
    arguments: dict[str, Any]
    response_id: str

    @classmethod
    def parse(cls, call_id: str, name: str, raw: str, response_id: str) -> ToolCall:
        try:
            value = json.loads(raw or "{}")
        except json.JSONDecodeError:
            value = {"_raw": raw}
        return cls(call_id, name, value if isinstance(value, dict) else {"_value": value}, response_id)


async def run_tool(call: CallControl, tool: ToolCall) -> None:
    call.record.event("tool_call", name=tool.name, arguments=tool.arguments)
    use = ToolUse(tool.name, tool.arguments, time.time())
    call.record.tools.append(use)
    if tool.name == "end_call":
        use.ok = True
        await _end_call(call, tool)
    elif tool.name == "transfer_call":
        use.ok = bool(call.transfer_number)
        await _transfer(call, tool)
    else:
        spec = next((t for t in call.prompt.meta.tools if t.name == tool.name), None)
        result = await _http_tool(call, spec, tool) if spec else {"ok": False, "error": f"unknown tool {tool.name}"}
        use.ended_at, use.ok, use.result = time.time(), bool(result.get("ok")), json.dumps(result)[:1000]
        call.record.event("tool_result", name=tool.name, ok=use.ok)
        await _result(call, tool, result)
        await call.request_response()


async def _result(call: CallControl, tool: ToolCall, result: dict[str, Any]) -> None:
    output = json.dumps(result)[:_MAX_RESULT_CHARS]
    if not call.session_knows(tool.call_id):  # asked of a session since replaced: it never saw the call
        note = f"The {tool.name} tool you called earlier returned: {output}"
        await call.send_model(client_commands.message("system", note))
        return
    await call.send_model(client_commands.function_output(tool.call_id, output))


async def _announce(call: CallControl, tool: ToolCall, fallback: str) -> None:
    """Let the caller hear what the model said with the tool call, or ask it for words if it said none."""
    call.begin_closing()
    items = call.response_items(tool.response_id)
    if items:
        heard = await call.wait_heard(items)
    else:
        await _result(call, tool, {"ok": True})
        heard = await call.say(fallback)
    call.record.event("announcement_heard" if heard else "announcement_timeout", tool=tool.name)


async def _end_call(call: CallControl, tool: ToolCall) -> None:
    await _announce(call, tool, "Say a short, friendly goodbye to the caller.")
    await call.finish(EndAction.HANGUP, "agent_end_call")


async def _transfer(call: CallControl, tool: ToolCall) -> None:
    if not call.transfer_number:
        await _result(call, tool, {"ok": False, "error": "No human colleague is available right now."})
        await call.request_response()
        return
    await _announce(call, tool, "Tell the caller you are connecting them to a colleague now.")
    await call.set_outcome(Outcome(EndAction.TRANSFER, "agent_transfer", call.transfer_number))
    vobiz = call.deps.vobiz
    if vobiz is not None:
        try:
            await vobiz.transfer_call(call.call_id, call.deps.transfer_url(call.call_id))
            call.record.event("transfer_requested", via="rest")
            call.begin_closing("agent_transfer")
            # Vobiz now fetches the transfer XML and closes the stream; ending it ourselves is the fallback.
            await asyncio.sleep(call.settings.goodbye_timeout_s)
        except VobizApiError as exc:
            call.log.warning("transfer through the REST API failed, ending the stream instead: %s", exc)
    call.record.event("transfer_requested", via="stream_stop")
    await call.finish(EndAction.TRANSFER, "agent_transfer")


async def _http_tool(call: CallControl, spec: HttpTool, tool: ToolCall) -> dict[str, Any]:
    """Run the request; if it is slow, cover the wait with the prompt's filler line."""
    request = asyncio.ensure_future(_request(call.deps.http, spec, tool, call.call_id))
    filler: asyncio.Future[str | None] | None = None
    try:
        done, _ = await asyncio.wait({request}, timeout=spec.filler_after_s)
        if not done and spec.filler:
            call.record.event("tool_filler", name=tool.name)
            filler = await call.ask(f"Say exactly this, and nothing else: {spec.filler}", tool_choice="none")
        return await request
    finally:
        if not request.done():
            await cancel_and_wait(request)
        if filler is not None and not filler.done():
            # Speak the result only after the filler: a second response would be refused meanwhile.
            with contextlib.suppress(TimeoutError):
                await within(call.settings.goodbye_timeout_s, asyncio.shield(filler))


async def _request(http: httpx.AsyncClient, spec: HttpTool, tool: ToolCall, call_id: str) -> dict[str, Any]:
    """The tool's HTTP request, bounded: one deadline (`timeout_s`) for connecting, sending and reading the whole
    answer, and at most `_MAX_BODY_BYTES` of body (a larger answer is a tool error, not a truncated result).

    Query parameters written into the prompt's URL are kept: for GET/DELETE the model's arguments are added to
    them, and a fixed value wins over an argument of the same name (the prompt decides, not the model)."""
    url = httpx.URL(str(spec.url))
    as_query = spec.method in ("GET", "DELETE")
    if as_query:
        fixed = set(url.params.keys())
        url = url.copy_merge_params({k: str(v) for k, v in tool.arguments.items() if k not in fixed})
    try:
        return await within(spec.timeout_s, _fetch(http, spec, url, None if as_query else tool.arguments, call_id))
    except (TimeoutError, httpx.TimeoutException):
        return {"ok": False, "error": f"the service did not answer within {spec.timeout_s:g} s"}
    except httpx.HTTPError as exc:
        return {"ok": False, "error": f"the service could not be reached ({type(exc).__name__})"}


async def _fetch(
    http: httpx.AsyncClient, spec: HttpTool, url: httpx.URL, body: dict[str, Any] | None, call_id: str
) -> dict[str, Any]:
    """Send the request and stream the answer, stopping as soon as it is larger than allowed."""
    headers = {"X-Call-Id": call_id, **spec.headers}
    async with http.stream(spec.method, url, json=body, headers=headers, timeout=spec.timeout_s) as reply:
        raw = bytearray()
        async for chunk in reply.aiter_bytes():
            raw += chunk
            if len(raw) > _MAX_BODY_BYTES:
                return {"ok": False, "error": f"the service's answer was larger than {_MAX_BODY_BYTES // 1024} KB"}
    result: Any
    try:
        result = json.loads(raw)
    except ValueError:
        result = raw.decode(reply.encoding or "utf-8", errors="replace")[:_MAX_RESULT_CHARS]
    return {"ok": reply.is_success, "status": reply.status_code, "result": result}
