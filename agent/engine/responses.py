"""Responses: response.create/cancel, streaming scripted replies and tool calls, response.done with usage."""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Literal

from agent.engine.formats import AudioFormat, new_id, obfuscation
from agent.engine.protocol import Event, ResponseState, copy_json
from agent.engine.replies import Reply, ReplyRequest, ToolCall
from agent.engine.session_core import SessionCore


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ResponseGeneration(SessionCore):
    """Generates responses: text, audio paced like the real service, tool calls."""

    async def _on_response_create(self, event: Event) -> None:
        if self._active is not None:
            await self._error(
                event,
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self._active.id}. "
                "Wait until the response is finished before creating a new one.",
                record=False,
            )
            return
        self._start_response(dict(event.get("response") or {}), "client")

    async def _on_response_cancel(self, event: Event) -> None:
        wanted = event.get("response_id")
        if self._active is None or (wanted and wanted != self._active.id):
            await self._error(
                event,
                "response_cancel_not_active",
                "Cancellation failed: no active response found",
                record=False,
            )
            return
        await self._cancel_active("client_cancelled")

    def _start_response(self, params: dict[str, Any], trigger: Literal["client", "vad"]) -> None:
        cfg = self.session_config
        out_params = (params.get("audio") or {}).get("output") or {}
        self.responses_started += 1
        response = ResponseState(
            id=new_id("resp_"),
            number=self.responses_started,
            params=params,
            trigger=trigger,
            in_conversation=params.get("conversation", "auto") != "none",
            modalities=list(params.get("output_modalities") or cfg.get("output_modalities") or ["audio"]),
            audio_format=AudioFormat.from_session(out_params.get("format") or cfg["audio"]["output"].get("format")),
            voice=out_params.get("voice") or cfg["audio"]["output"].get("voice"),
            instructions=str(params.get("instructions", cfg.get("instructions") or "")),
        )
        self._active = response
        response.task = self._spawn(self._run_response(response), f"response {response.number}")

    async def _cancel_active(self, reason: str) -> None:
        """Stop the active response now and wait until its cancelled ``response.done`` is out."""
        response = self._active
        if response is None:
            return
        if response.stop_reason is None:
            response.stop_reason = reason
        response.stop.set()
        if response.wake is not None:
            _wake(response.wake)  # out of _pause_until now
        if response.task is not None:
            await asyncio.wait([response.task])

    async def _pause_until(self, response: ResponseState, deadline: float) -> None:
        """Emulated generation clock; returns early when the response is stopped."""
        loop = asyncio.get_running_loop()
        delay = deadline - loop.time()
        if response.stop.is_set():
            return
        if delay <= 0:
            await asyncio.sleep(0)  # let the reader run, so barge-in works even at speed=0
            return
        # A bare future woken by a timer or by _cancel_active: what ``timeout(stop.wait())`` did, without a
        # cancellation and its exception at the end of every wait (one wait per delta).
        wake = response.wake = loop.create_future()
        timer = loop.call_at(deadline, _wake, wake)
        try:
            await wake
        finally:
            timer.cancel()
            response.wake = None

    def _response_object(
        self, response: ResponseState, status: str, details: Event | None, usage: Event | None
    ) -> Event:
        max_tokens = response.params.get("max_output_tokens", self.session_config.get("max_output_tokens", "inf"))
        return {
            "object": "realtime.response",
            "id": response.id,
            "status": status,
            "status_details": details,
            "output": copy_json(response.output),
            "conversation_id": self.conversation_id if response.in_conversation else None,
            "output_modalities": response.modalities,
            "max_output_tokens": max_tokens,
            "audio": {"output": {"format": response.audio_format.as_session(), "voice": response.voice}},
            "usage": usage,
            "metadata": response.params.get("metadata"),
        }

    async def _run_response(self, response: ResponseState) -> None:
        loop = asyncio.get_running_loop()
        created_at = loop.time()
        await self._send(
            {"type": "response.created", "response": self._response_object(response, "in_progress", None, None)}
        )
        scripted = self._scripted_replies.popleft() if self._scripted_replies else None
        audio_out = "audio" in response.modalities
        caller_text, caller_waiting = await self._caller_turn()
        request = ReplyRequest(
            session=self,
            response_id=response.id,
            number=response.number,
            audio_format=response.audio_format if audio_out else None,
            reply_ms=self.sim_config.reply_ms if scripted is None or scripted.reply_ms is None else scripted.reply_ms,
            transcript=scripted.transcript if scripted else None,
            instructions=response.instructions,
            trigger=response.trigger,
            session_instructions=str(self.session_config.get("instructions") or ""),
            caller_text=caller_text,
            caller_waiting=caller_waiting,
            tools=self._tool_names(response.params),
        )
        reply = await self.reply_source.reply(request)
        first_delta_at = created_at + self.sim_config.first_audio_delay_ms / 1000
        has_message = (
            reply.audio is not None and len(reply.audio) > 0
            if audio_out
            else bool(reply.transcript and request.reply_ms)
        )
        if has_message and not response.stop.is_set():
            await self._stream_message(response, reply, audio_out, request.reply_ms, first_delta_at)
        if not response.stop.is_set():
            calls = list(reply.tool_calls) + self._queued_tool_calls
            self._queued_tool_calls = []
            for call in calls:
                await self._emit_tool_call(response, call)
        await self._finish_response(response)

    async def _caller_turn(self) -> tuple[str | None, bool]:
        """The caller's latest message as text, and whether it is the latest item (so it awaits an answer)."""
        for index in range(len(self.items) - 1, -1, -1):
            item = self.items[index]
            if item.get("type") != "message" or item.get("role") != "user":
                continue
            parts: list[str] = []
            for part in item.get("content", []):
                if part.get("type") == "input_text":
                    parts.append(str(part.get("text") or ""))
                elif part.get("type") == "input_audio":
                    recorded = self.user_audio.get(item["id"])
                    if recorded is not None:
                        parts.append(await asyncio.shield(self._recognition(item["id"], *recorded)))
                    else:
                        parts.append(str(part.get("transcript") or ""))
            return " ".join(p for p in parts if p), index == len(self.items) - 1
        return None, False

    def _tool_names(self, params: dict[str, Any]) -> tuple[str, ...]:
        """The function tools a response may call: its own or the session's, filtered by ``tool_choice``."""
        choice = params.get("tool_choice", self.session_config.get("tool_choice", "auto"))
        if choice == "none":
            return ()
        tools = params.get("tools", self.session_config.get("tools")) or []
        names = tuple(
            str(t["name"]) for t in tools if isinstance(t, dict) and t.get("type") == "function" and t.get("name")
        )
        if isinstance(choice, dict) and choice.get("name"):
            return tuple(n for n in names if n == choice["name"])
        return names

    async def _emit_item_added(self, response: ResponseState, item: Event, output_index: int) -> str | None:
        await self._send(
            {
                "type": "response.output_item.added",
                "response_id": response.id,
                "output_index": output_index,
                "item": copy_json(item),
            }
        )
        previous = None
        if response.in_conversation:
            previous = self.items[-1]["id"] if self.items else None
            self.items.append(item)
            await self._send({"type": "conversation.item.added", "item": copy_json(item), "previous_item_id": previous})
        return previous

    async def _emit_item_done(
        self, response: ResponseState, item: Event, output_index: int, previous: str | None
    ) -> None:
        await self._send(
            {
                "type": "response.output_item.done",
                "response_id": response.id,
                "output_index": output_index,
                "item": copy_json(item),
            }
        )
        if response.in_conversation:
            await self._send({"type": "conversation.item.done", "item": copy_json(item), "previous_item_id": previous})

    async def _stream_message(
        self, response: ResponseState, reply: Reply, audio_out: bool, reply_ms: int, first_delta_at: float
    ) -> None:
        """§4 steps 7-14: the assistant message with paced, interleaved transcript and audio deltas."""
        cfg = self.sim_config
        fmt = response.audio_format
        output_index = len(response.output)
        item: Event = {
            "id": new_id("item_"),
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        response.output.append(item)
        ids = {"response_id": response.id, "item_id": item["id"], "output_index": output_index, "content_index": 0}
        previous = await self._emit_item_added(response, item, output_index)
        part: Event = {"type": "audio", "transcript": ""} if audio_out else {"type": "text", "text": ""}
        await self._send({"type": "response.content_part.added", **ids, "part": part})

        transcript = reply.transcript
        if audio_out:
            assert reply.audio is not None
            step = max(1, fmt.sample_rate * cfg.chunk_ms // 1000)
            # Encoded once for the whole reply (the codecs work sample by sample), then cut into deltas.
            encoded = fmt.encode(reply.audio)
            width = len(encoded) // len(reply.audio)
            chunks = [encoded[i : i + step * width] for i in range(0, len(encoded), step * width)]
            self.assistant_audio_ms[item["id"]] = 0
        else:
            width = 1
            chunks = [b""] * max(1, -(-reply_ms // cfg.chunk_ms))
        interval = cfg.chunk_ms / cfg.speed / 1000 if cfg.speed > 0 else 0.0
        sent_chars = 0
        # A response's deltas differ only in their string payload: the SDK's model checks the first of each kind.
        checked_text = checked_audio = False
        for k, chunk in enumerate(chunks):
            await self._pause_until(response, first_delta_at + k * interval)
            if response.stop.is_set():
                break
            cut = round(len(transcript) * (k + 1) / len(chunks))
            piece, sent_chars = transcript[sent_chars:cut], cut
            if audio_out:
                if piece:
                    await self._send(
                        {
                            "type": "response.output_audio_transcript.delta",
                            **ids,
                            "delta": piece,
                            "obfuscation": obfuscation(),
                        },
                        checked=checked_text,
                    )
                    checked_text = True
                await self._send(
                    {"type": "response.output_audio.delta", **ids, "delta": base64.b64encode(chunk).decode("ascii")},
                    verbatim="delta",  # base64 needs no JSON escaping
                    checked=checked_audio,
                )
                checked_audio = True
                response.audio_ms += len(chunk) // width * 1000 // fmt.sample_rate
                self.assistant_audio_ms[item["id"]] = response.audio_ms
            elif piece:
                await self._send({"type": "response.output_text.delta", **ids, "delta": piece})
            response.text = transcript[:sent_chars]

        spoken = transcript[:sent_chars]
        if audio_out:
            await self._send({"type": "response.output_audio.done", **ids})
            await self._send({"type": "response.output_audio_transcript.done", **ids, "transcript": spoken})
            await self._send(
                {"type": "response.content_part.done", **ids, "part": {"type": "audio", "transcript": spoken}}
            )
            item["content"] = [{"type": "output_audio", "transcript": spoken}]
        else:
            await self._send({"type": "response.output_text.done", **ids, "text": spoken})
            await self._send({"type": "response.content_part.done", **ids, "part": {"type": "text", "text": spoken}})
            item["content"] = [{"type": "output_text", "text": spoken}]
        item["status"] = "incomplete" if response.stop.is_set() else "completed"
        await self._emit_item_done(response, item, output_index, previous)

    async def _emit_tool_call(self, response: ResponseState, call: ToolCall) -> None:
        """§6: function_call item; emitted without pauses, so it is all-or-nothing with respect to barge-in."""
        output_index = len(response.output)
        arguments = call.arguments_json()
        item: Event = {
            "id": new_id("item_"),
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": call.name,
            "call_id": new_id("call_"),
            "arguments": "",
        }
        response.output.append(item)
        ids = {
            "response_id": response.id,
            "item_id": item["id"],
            "output_index": output_index,
            "call_id": item["call_id"],
        }
        previous = await self._emit_item_added(response, item, output_index)
        middle = len(arguments) // 2
        for delta in (arguments[:middle], arguments[middle:]):
            if delta:
                await self._send({"type": "response.function_call_arguments.delta", **ids, "delta": delta})
        await self._send(
            {"type": "response.function_call_arguments.done", **ids, "name": call.name, "arguments": arguments}
        )
        item["arguments"] = arguments
        item["status"] = "completed"
        await self._emit_item_done(response, item, output_index, previous)

    def _usage(self, response: ResponseState) -> Event:
        """Plausible token counts: ~10 input audio tokens/s, ~20 output audio tokens/s, ~4 chars a text token."""
        text_chars = len(response.instructions) + sum(
            len(str(part.get("text") or part.get("transcript") or ""))
            for item in self.items
            for part in item.get("content", [])
            if isinstance(part, dict)
        )
        in_audio = sum(len(a) * 10 // rate for a, rate in self.user_audio.values()) + sum(
            ms // 50 for ms in self.assistant_audio_ms.values()
        )
        in_text = max(1, text_chars // 4)
        out_audio = response.audio_ms // 50
        out_text = max(1, len(response.text) // 4) + sum(
            len(item.get("arguments", "")) // 4 for item in response.output if item["type"] == "function_call"
        )
        return {
            "total_tokens": in_audio + in_text + out_audio + out_text,
            "input_tokens": in_audio + in_text,
            "output_tokens": out_audio + out_text,
            "input_token_details": {
                "text_tokens": in_text,
                "audio_tokens": in_audio,
                "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio},
        }

    async def _finish_response(self, response: ResponseState) -> None:
        cancelled = response.stop.is_set()
        status = "cancelled" if cancelled else "completed"
        details = {"type": "cancelled", "reason": response.stop_reason} if cancelled else None
        usage = self._usage(response)
        final = self._response_object(response, status, details, usage)
        self.responses.append(final)
        if self._active is response:
            self._active = None  # a response.create answered right after response.done must be accepted
        total = int(usage["total_tokens"])
        rate_limits = [
            {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
            {"name": "tokens", "limit": 40000, "remaining": max(0, 40000 - total), "reset_seconds": 0.5},
        ]
        await self._send_batch(
            [{"type": "response.done", "response": final}, {"type": "rate_limits.updated", "rate_limits": rate_limits}]
        )
