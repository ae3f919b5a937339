"""Bot audio at the carrier: playAudio queued and played in real time, checkpoints acked, clearAudio honoured."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
from functools import partial
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed

from agent.audio.codecs import (
    Int16Array,
    l16_to_pcm16,
    mulaw_to_pcm16,
)
from agent.testkit.carrier.audio import resample
from agent.testkit.carrier.call_state import CallState, Mark, QueuedAudio
from agent.testkit.carrier.records import L16, MULAW, PLAYBACK_RATES, ClearRecord


class Playout(CallState):
    """Plays the bot's audio on the 20 ms tick grid and answers the agent's playout commands."""

    def _schedule_playout(self) -> None:
        """Wake for the next playout tick (tick k starts playing frame k at t0 + k*P) or for an ack due before it."""
        tick_at = self._t0 + self._play_k * self._period
        deadline = min(tick_at, self._ack_due[0][0]) if self._ack_due else tick_at
        self._play_handle = self._ticker.call_at(deadline, self._playout_wake)

    def _playout_wake(self) -> None:
        self._play_handle = None
        if not self._clocks_on:
            return
        try:
            now = time.monotonic()
            self._send_due_acks(now)
            k = self._play_k
            tick_at = self._t0 + k * self._period
            if now >= tick_at:
                self._play_tick(k, tick_at)
                self._send_due_acks(now)
                self._play_k = k + 1
            self._notify()
            self._schedule_playout()
        except Exception as exc:
            self._clock_failed(f"sim-playout-{self.call_uuid}", exc)

    def _send_due_acks(self, now: float) -> None:
        """The clock's ack path: each playedStream goes out now, or in order behind a send in progress."""
        while self._ack_due and self._ack_due[0][0] <= now:
            name = self._ack_due.popleft()[1]
            self._send_soon(
                self._played_stream_msg(name), self.options.ack_sequence_numbers, partial(self._acked, name)
            )

    def _commit_current(self, heard: int) -> None:
        assert self._cur is not None and self.played_rate
        part = self._cur[:heard]
        if len(part):
            self._played_chunks.append(part)
            self._played_samples += len(part)
            self._bot_segments.append((self._cur_tick * self._out_frame, part))
            self._last_bot_audio_end = self._cur_start + len(part) / self.played_rate
        self._cur = None

    def _play_tick(self, k: int, tick_at: float) -> None:
        """Finish the frame that just played, then start the next one; no awaits, so no races with commands."""
        if self._cur is not None:
            self._commit_current(len(self._cur))
        self._ticks = k + 1
        rate, need = self.played_rate, self._out_frame
        parts: list[Int16Array] = []
        got = 0
        while self._queue and (not rate or got < need):
            head = self._queue[0]
            if isinstance(head, Mark):
                self._queue.popleft()
                # All audio queued before the mark ends `got` samples into this frame.
                self._ack_due.append((tick_at + (got / rate if rate else 0.0), head.name))
                continue
            if head.received > tick_at:
                break  # arrived after this frame began (a late, catching-up tick): it starts on a later tick
            chunk = head.take(need - got)
            if head.remaining == 0:
                self._queue.popleft()
            self._queued_samples -= len(chunk)
            parts.append(chunk)
            got += len(chunk)
        if got:
            self._cur = parts[0] if len(parts) == 1 else np.concatenate(parts).astype(np.int16, copy=False)
            self._cur_start, self._cur_tick = tick_at, k
            if not self._bot_active:
                self._bot_active = True
                self._record("bot_audio_started", call_ms=(tick_at - self._t0) * 1000, played_ms=self.played_ms)
        elif self._bot_active:
            self._bot_active = False
            self._record("bot_audio_stopped", played_ms=self.played_ms, reason="queue empty")

    async def _flush_due_acks(self, now: float) -> None:
        names: list[str] = []
        while self._ack_due and self._ack_due[0][0] <= now:
            names.append(self._ack_due.popleft()[1])
        for name in names:
            await self._send_played_stream(name)

    def _played_stream_msg(self, name: str) -> dict[str, Any]:
        msg: dict[str, Any] = {"event": "playedStream", "name": name}
        if self.options.played_stream_stream_id:
            msg["streamId"] = self.stream_id
        return msg

    async def _send_played_stream(self, name: str) -> None:
        await self._send(self._played_stream_msg(name), sequence=self.options.ack_sequence_numbers)
        self._acked(name)

    def _acked(self, name: str) -> None:
        self.acked_checkpoints.append(name)
        self._record("played_stream_sent", name=name, played_ms=self.played_ms)
        self._status_callback("PlayedStream", {"Name": name})

    def _finish_playout(self, t_end: float) -> None:
        """Stream over: the caller heard the current frame up to now; everything still queued is lost."""
        if self._cur is not None and self.played_rate:
            heard = min(len(self._cur), max(0, int((t_end - self._cur_start) * self.played_rate)))
            self._commit_current(heard)
        dropped = [m.name for m in self._queue if isinstance(m, Mark)] + [n for _, n in self._ack_due]
        self._queue.clear()
        self._ack_due.clear()
        self._queued_samples = 0
        for name in dropped:
            self.dropped_checkpoints.append(name)
            self._record("checkpoint_dropped", name=name, reason="stream ended")
        if self._bot_active:
            self._bot_active = False
            self._record("bot_audio_stopped", played_ms=self.played_ms, reason="stream ended")

    # ---- commands -----------------------------------------------------------------------------------------

    def _stream_id_ok(self, msg: dict[str, Any], command: str) -> bool:
        sid = msg.get("streamId")
        if sid is None:
            self._ctx.warn(f"{command} without streamId (R2 asks for it on every command)")
            return True
        if sid != self.stream_id:
            self._protocol_error(f"{command}: streamId {sid!r} is not this stream's {self.stream_id!r}")
            return False
        return True

    def _on_play_audio(self, msg: dict[str, Any]) -> None:
        for listener in self.play_audio_listeners:
            listener(msg)
        if not self._stream_id_ok(msg, "playAudio"):
            return
        media = msg.get("media")
        if not isinstance(media, dict):
            self._protocol_error("playAudio without a media object", msg)
            return
        ctype, rate, payload = media.get("contentType"), media.get("sampleRate"), media.get("payload")
        if not isinstance(ctype, str) or ctype not in PLAYBACK_RATES:
            self._protocol_error(f"playAudio media.contentType {ctype!r} is not audio/x-l16 or audio/x-mulaw")
            return
        if not isinstance(rate, int) or isinstance(rate, bool) or rate not in PLAYBACK_RATES[ctype]:
            self._protocol_error(f"playAudio media.sampleRate {rate!r} is not valid for {ctype}")
            return
        if not isinstance(payload, str):
            self._protocol_error("playAudio media.payload is not a base64 string")
            return
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self._protocol_error(f"playAudio media.payload is not valid base64 ({len(payload)} chars)")
            return
        if ctype == L16 and len(data) % 2:
            self._protocol_error(f"playAudio L16 payload has an odd byte count ({len(data)})")
            return
        if not data:
            self._ctx.warn("playAudio with an empty payload")
            return
        samples = mulaw_to_pcm16(data) if ctype == MULAW else l16_to_pcm16(data)
        if self.played_rate is None:
            self.played_rate = rate
            self._out_frame = rate * self.options.frame_ms // 1000
        elif rate != self.played_rate:
            self._ctx.warn(f"playAudio sample rate changed from {self.played_rate} to {rate} mid-stream")
            samples = resample(samples, rate, self.played_rate)
        self._queue.append(QueuedAudio(samples, time.monotonic()))
        self._queued_samples += len(samples)
        self._record("play_audio_received", bytes=len(data), ms=len(data) / (rate * (2 if ctype == L16 else 1)) * 1000)

    async def _on_checkpoint(self, msg: dict[str, Any]) -> None:
        if not self._stream_id_ok(msg, "checkpoint"):
            return
        name = msg.get("name")
        if not isinstance(name, str) or not name:
            self._protocol_error("checkpoint without a non-empty string name", msg)
            return
        self.received_checkpoints.append(name)
        self._record("checkpoint_received", name=name)
        if self._queue:
            self._queue.append(Mark(name))
            return
        # Nothing queued: acked once the frame now playing (if any) has finished.
        now = time.monotonic()
        end = now
        if self._cur is not None and self.played_rate:
            end = max(now, self._cur_start + len(self._cur) / self.played_rate)
        self._ack_due.append((end, name))
        if end > now:  # due before the playout loop's next wake-up: flush it on time from a timer
            asyncio.get_running_loop().call_later(end - now, self._flush_acks_soon)
        await self._flush_due_acks(now)

    def _flush_acks_soon(self) -> None:
        async def flush() -> None:
            with contextlib.suppress(ConnectionClosed):
                await self._flush_due_acks(time.monotonic())

        task = asyncio.create_task(flush())
        self._callback_tasks.add(task)
        task.add_done_callback(self._callback_tasks.discard)

    async def _on_clear(self, msg: dict[str, Any]) -> None:
        if not self._stream_id_ok(msg, "clearAudio"):
            return
        now = time.monotonic()
        self._record("clear_received")
        # Decide everything synchronously so a playout tick cannot interleave; send afterwards.
        acks: list[str] = []
        while self._ack_due and self._ack_due[0][0] <= now:
            acks.append(self._ack_due.popleft()[1])
        rate = self.played_rate
        dropped_samples = self._queued_samples
        if self._cur is not None and rate:
            heard = min(len(self._cur), max(0, round((now - self._cur_start) * rate)))
            dropped_samples += len(self._cur) - heard
            self._commit_current(heard)
        dropped = [m.name for m in self._queue if isinstance(m, Mark)] + [n for _, n in self._ack_due]
        self._queue.clear()
        self._ack_due.clear()
        self._queued_samples = 0
        played_ms = self._played_samples * 1000 / rate if rate else 0.0
        self.clears.append(ClearRecord(now, played_ms, dropped_samples * 1000 / rate if rate else 0.0, tuple(dropped)))
        self.dropped_checkpoints.extend(dropped)
        for name in dropped:
            self._record("checkpoint_dropped", name=name, reason="clearAudio")
        if self._bot_active:
            self._bot_active = False
            self._record("bot_audio_stopped", played_ms=played_ms, reason="clearAudio")
        for name in acks:
            await self._send_played_stream(name)
        await self._send(
            {"event": "clearedAudio", "streamId": self.stream_id}, sequence=self.options.ack_sequence_numbers
        )
        self._record("cleared_sent")
        self._status_callback("ClearedAudio", {})

    # ---- stream end ---------------------------------------------------------------------------------------
