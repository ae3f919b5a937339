"""The simulated Realtime session: every mixin together, plus the conversation items (create, retrieve,
truncate, delete)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import time
from collections.abc import Awaitable, Callable

from agent.engine.formats import new_id
from agent.engine.input_audio import InputAudio
from agent.engine.protocol import Event, copy_json


class SimSession(InputAudio):
    """One simulated Realtime connection: its protocol state, a full record of traffic, and scripting hooks.

    Public, read-mostly attributes (tests assert on them):

    * ``id``, ``model``, ``call_id``, ``headers`` (lower-cased handshake headers), ``beta`` (refused beta handshake)
    * ``session_config``: the full effective GA session (what the last ``session.updated`` carried)
    * ``client_events`` / ``server_events``: every event received / sent, in order, as copies with a ``_t``
      ``time.monotonic()`` key that is not on the wire
    * ``protocol_errors``: one string per client event the live API rejects whatever the timing (schema
      violations, beta keys, bad audio payloads, WebRTC-only events). Rejections that depend on timing or
      state (truncate past the audio sent, cancel with no active response, a second response.create,
      an empty commit, unknown item ids) are answered with ``error`` too but only show in ``error_events``.
    * ``items``: the default conversation as API-shaped item dicts, in order
    * ``user_audio``: committed caller audio per user item id, ``(int16 samples, sample rate)``
    * ``assistant_audio_ms``: audio actually sent per assistant item id (what ``truncate`` is validated against)
    * ``truncations``: successful truncates, ``{item_id, content_index, audio_end_ms, item_audio_ms, _t}``
    * ``responses``: final response objects, as carried by each ``response.done``
    * ``sim_config``: this session's copy of the server's :class:`RealtimeSimConfig`
    * ``reply_source``: the :class:`ReplySource` in use (replaceable from ``RealtimeServer.on_session``)
    """

    def _event_handlers(self) -> dict[str, Callable[[Event], Awaitable[None]]]:
        return {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_append,
            "input_audio_buffer.commit": self._on_commit,
            "input_audio_buffer.clear": self._on_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.retrieve": self._on_item_retrieve,
            "conversation.item.truncate": self._on_truncate,
            "conversation.item.delete": self._on_item_delete,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
            "output_audio_buffer.clear": self._on_output_audio_buffer_clear,
        }

    def _find_item(self, item_id: str) -> int | None:
        for index, item in enumerate(self.items):
            if item.get("id") == item_id:
                return index
        return None

    async def _on_item_create(self, event: Event) -> None:
        item: Event = copy_json(event["item"])
        item_id = item.get("id") or new_id("item_")
        if self._find_item(item_id) is not None:
            await self._error(
                event, "invalid_value", f"Item with id '{item_id}' already exists.", "item.id", record=False
            )
            return
        previous_id = event.get("previous_item_id")
        if previous_id is None:
            position = len(self.items)
        elif previous_id == "root":
            position = 0
        else:
            found = self._find_item(previous_id)
            if found is None:
                await self._error(
                    event,
                    "invalid_value",
                    f"Previous item with item_id not found: {previous_id}",
                    "previous_item_id",
                    record=False,
                )
                return
            position = found + 1
        item = {"id": item_id, "object": "realtime.item", **item, "status": "completed"}
        if item.get("type") == "message" and item.get("role") == "user":
            for part in item.get("content", []):
                if part.get("type") == "input_audio":
                    part.setdefault("transcript", None)
                    # The model hears a created audio item as it hears committed audio (in the input format).
                    with contextlib.suppress(binascii.Error, ValueError):
                        audio = self.input_format.decode(base64.b64decode(str(part.get("audio") or "")))
                        self.user_audio[item_id] = (audio, self.input_format.sample_rate)
        self.items.insert(position, item)
        previous = self.items[position - 1]["id"] if position > 0 else None
        await self._send({"type": "conversation.item.added", "item": copy_json(item), "previous_item_id": previous})
        await self._send({"type": "conversation.item.done", "item": copy_json(item), "previous_item_id": previous})

    async def _on_item_retrieve(self, event: Event) -> None:
        index = self._find_item(event["item_id"])
        if index is None:
            await self._error(
                event,
                "item_retrieve_invalid_item_id",
                f"Item with item_id not found: {event['item_id']}",
                "item_id",
                record=False,
            )
            return
        await self._send({"type": "conversation.item.retrieved", "item": copy_json(self.items[index])})

    async def _on_item_delete(self, event: Event) -> None:
        index = self._find_item(event["item_id"])
        if index is None:
            await self._error(
                event,
                "item_delete_invalid_item_id",
                f"Item with item_id not found: {event['item_id']}",
                "item_id",
                record=False,
            )
            return
        del self.items[index]
        await self._send({"type": "conversation.item.deleted", "item_id": event["item_id"]})

    async def _on_truncate(self, event: Event) -> None:
        """Validate like the live API; errors here are often races, so they are not protocol errors."""
        item_id: str = event["item_id"]
        audio_end_ms: int = event["audio_end_ms"]
        index = self._find_item(item_id)
        if index is None:
            await self._error(
                event,
                "item_truncate_invalid_item_id",
                f"Item with item_id not found: {item_id}",
                "item_id",
                record=False,
            )
            return
        item = self.items[index]
        sent_ms = self.assistant_audio_ms.get(item_id, 0)
        if item.get("role") != "assistant" or sent_ms == 0:
            await self._error(
                event,
                "unsupported_content_type",
                "Only model output audio messages can be truncated",
                record=False,
            )
            return
        if event["content_index"] != 0:
            await self._error(
                event, "invalid_value", f"Invalid content_index: {event['content_index']}", "content_index"
            )
            return
        if audio_end_ms < 0 or audio_end_ms > sent_ms:
            await self._error(
                event,
                "invalid_value",
                f"Audio content of {sent_ms}ms is already shorter than {audio_end_ms}ms",
                "audio_end_ms",
                record=False,
            )
            return
        for part in item.get("content", []):
            transcript = part.get("transcript")
            if isinstance(transcript, str):
                part["transcript"] = transcript[: round(len(transcript) * audio_end_ms / sent_ms)]
        self.assistant_audio_ms[item_id] = audio_end_ms
        self.truncations.append(
            {
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": audio_end_ms,
                "item_audio_ms": sent_ms,
                "_t": time.monotonic(),
            }
        )
        await self._send(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": audio_end_ms,
            }
        )

    # ----- responses ---------------------------------------------------------------------------------------
