"""Caller audio: input_audio_buffer.append/commit/clear, the energy VAD and transcription of committed turns."""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
from typing import Any

import numpy as np

from agent.audio.codecs import Int16Array
from agent.engine.formats import new_id
from agent.engine.protocol import (
    MIN_COMMIT_MS,
    SEMANTIC_SILENCE_MS,
    SERVER_VAD_DEFAULTS,
    VAD_WINDOW_MS,
    Event,
    copy_json,
)
from agent.engine.responses import ResponseGeneration


def loud_windows(samples: Int16Array, win: int, threshold_rms: float) -> list[bool]:
    """Whether each ``win``-sample window of ``samples`` has an RMS of at least ``threshold_rms``.

    Energy as a dot product: the sums of squares of int16 samples are whole numbers below 2**53, exact in float64
    whatever the order of addition, so this is ``sqrt(mean(x * x)) >= threshold`` to the last bit at a fifth of its
    cost (an append is one window at 8 kHz, 50 times a second per call)."""
    frames = samples.astype(np.float64)
    n = len(frames) // win
    if n == 1:
        return [math.sqrt(float(frames.dot(frames)) / win) >= threshold_rms]
    rows = frames[: n * win].reshape(n, win)
    return [bool(x) for x in np.sqrt(np.einsum("ij,ij->i", rows, rows) / win) >= threshold_rms]


class InputAudio(ResponseGeneration):
    """Buffers caller audio, detects speech turns and transcribes them."""

    async def _on_append(self, event: Event) -> None:
        fmt = self.input_format
        try:
            samples = fmt.decode(base64.b64decode(event["audio"], validate=True))
        except (binascii.Error, ValueError) as exc:
            await self._error(
                event, "invalid_value", f"Invalid 'audio': expected base64 {fmt.type} audio ({exc}).", "audio"
            )
            return
        if fmt.sample_rate != self._input_rate:
            # Format change: keep the ms clock, restart the per-rate sample clock, drop the half-built buffer.
            self._clock_base_ms = self._now_ms()
            self._input_rate = fmt.sample_rate
            self._input_samples = 0
            self._buffer = []
            self._buffer_start_ms = self._clock_base_ms
            self._vad_carry = np.zeros(0, dtype=np.int16)
            self._vad_pos_ms = self._clock_base_ms
            self._reset_vad()
        if len(samples) == 0:
            return
        self._input_chunks.append((fmt.sample_rate, samples))
        self._buffer.append(samples)
        self._input_samples += len(samples)
        await self._run_vad(samples)

    def _now_ms(self) -> float:
        """The appended-audio clock: ms of caller audio appended so far (not wall time)."""
        return self._clock_base_ms + self._input_samples * 1000 / self._input_rate

    def _reset_vad(self) -> None:
        self._speaking = False
        self._vad_run_ms = 0
        self._vad_silence_ms = 0

    async def _run_vad(self, samples: Int16Array) -> None:
        win = self._input_rate * VAD_WINDOW_MS // 1000
        carry = self._vad_carry
        pending = np.concatenate([carry, samples]) if len(carry) else samples
        n = len(pending) // win
        self._vad_carry = pending[n * win :]
        if n == 0:
            return
        loud = loud_windows(pending[: n * win], win, self.sim_config.vad_threshold_rms)
        for i in range(n):
            start_ms = self._vad_pos_ms
            self._vad_pos_ms += VAD_WINDOW_MS
            td = self._turn_detection()
            if td is None:
                continue
            if not loud[i] and not self._speaking:
                self._vad_run_ms = 0  # the common quiet window, without a coroutine
                continue
            await self._vad_window(td, start_ms, loud[i])

    async def _vad_window(self, td: dict[str, Any], start_ms: float, loud: bool) -> None:
        if not self._speaking:
            if not loud:
                self._vad_run_ms = 0
                return
            if self._vad_run_ms == 0:
                self._vad_onset_ms = start_ms
            self._vad_run_ms += VAD_WINDOW_MS
            if self._vad_run_ms >= self.sim_config.vad_start_ms:
                await self._speech_started(td)
            return
        if loud:
            self._vad_silence_ms = 0
            return
        self._vad_silence_ms += VAD_WINDOW_MS
        if td.get("type") == "semantic_vad":
            silence_ms = SEMANTIC_SILENCE_MS.get(str(td.get("eagerness")), 500)
        else:
            silence_ms = int(td.get("silence_duration_ms") or SERVER_VAD_DEFAULTS["silence_duration_ms"])
        if self._vad_silence_ms >= silence_ms:
            await self._speech_stopped(td, round(start_ms + VAD_WINDOW_MS))

    async def _speech_started(self, td: dict[str, Any]) -> None:
        self._speaking = True
        self._vad_silence_ms = 0
        self._speech_item_id = new_id("item_")
        padding = int(td.get("prefix_padding_ms") or 0) if td.get("type") == "server_vad" else 300
        self._speech_start_ms = round(max(0.0, self._buffer_start_ms, self._vad_onset_ms - padding))
        await self._send(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": self._speech_start_ms,
                "item_id": self._speech_item_id,
            }
        )
        if self._active is not None and td.get("interrupt_response", True):
            await self._cancel_active("turn_detected")

    async def _speech_stopped(self, td: dict[str, Any], end_ms: int) -> None:
        self._reset_vad()
        item_id = self._speech_item_id
        await self._send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end_ms, "item_id": item_id})
        audio = self._take_buffer(self._speech_start_ms, end_ms)
        await self._commit(item_id, audio)
        if td.get("create_response", True) and self._active is None:
            self._start_response({}, "vad")

    def _take_buffer(self, start_ms: float | None, end_ms: float | None) -> Int16Array:
        """Remove and return buffered audio in [start_ms, end_ms) (None = the whole buffer)."""
        buf = np.concatenate(self._buffer) if self._buffer else np.zeros(0, dtype=np.int16)
        rate = self._input_rate
        first = 0 if start_ms is None else max(0, round((start_ms - self._buffer_start_ms) * rate / 1000))
        cut = len(buf) if end_ms is None else min(len(buf), round((end_ms - self._buffer_start_ms) * rate / 1000))
        taken = buf[first:cut]
        self._buffer = [buf[cut:]] if cut < len(buf) else []
        self._buffer_start_ms += cut * 1000 / rate
        return taken

    async def _commit(self, item_id: str, audio: Int16Array) -> None:
        """The committed -> item.added -> item.done sequence shared by VAD and manual commits."""
        previous = self.items[-1]["id"] if self.items else None
        await self._send({"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous})
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        self.items.append(item)
        self.user_audio[item_id] = (audio, self._input_rate)
        await self._send({"type": "conversation.item.added", "item": copy_json(item), "previous_item_id": previous})
        await self._send({"type": "conversation.item.done", "item": copy_json(item), "previous_item_id": previous})
        transcription = self.session_config["audio"]["input"].get("transcription")
        if isinstance(transcription, dict):
            self._spawn(self._transcribe(item, audio, self._input_rate, transcription), "transcription")

    def _recognition(self, item_id: str, audio: Int16Array, rate: int) -> asyncio.Task[str]:
        """One recognition per caller item, shared by the transcription events and the reply (ASR may be costly)."""
        task = self._transcripts.get(item_id)
        if task is None:
            task = self._spawn(self._transcribe_audio(audio, rate), f"recognise {item_id}")
            self._transcripts[item_id] = task
        return task

    async def _transcribe(self, item: Event, audio: Int16Array, rate: int, settings: dict[str, Any]) -> None:
        """Asynchronous like the real ASR pass: it may land after ``response.created``."""
        recognition = self._recognition(item["id"], audio, rate)
        await asyncio.sleep(self.sim_config.transcription_delay_ms / 1000)
        text = await asyncio.shield(recognition)
        item["content"][0]["transcript"] = text
        seconds = len(audio) / rate
        usage: dict[str, Any]
        if settings.get("model") == "whisper-1":
            usage = {"type": "duration", "seconds": round(seconds, 3)}
        else:
            audio_tokens = max(1, round(seconds * 10))
            text_tokens = max(1, len(text) // 4)
            usage = {
                "type": "tokens",
                "input_tokens": audio_tokens,
                "output_tokens": text_tokens,
                "total_tokens": audio_tokens + text_tokens,
                "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": 0},
            }
        await self._send(
            {
                "type": "conversation.item.input_audio_transcription.delta",
                "item_id": item["id"],
                "content_index": 0,
                "delta": text,
            }
        )
        await self._send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item["id"],
                "content_index": 0,
                "transcript": text,
                "usage": usage,
            }
        )

    async def _on_commit(self, event: Event) -> None:
        buffered_ms = sum(len(b) for b in self._buffer) * 1000 / self._input_rate
        if buffered_ms < MIN_COMMIT_MS:
            await self._error(
                event,
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {buffered_ms:.2f}ms of audio.",
                record=False,
            )
            return
        item_id = self._speech_item_id if self._speaking else new_id("item_")
        self._reset_vad()
        await self._commit(item_id, self._take_buffer(None, None))

    async def _on_clear(self, event: Event) -> None:
        self._take_buffer(None, None)
        self._reset_vad()
        await self._send({"type": "input_audio_buffer.cleared"})

    async def _on_output_audio_buffer_clear(self, event: Event) -> None:
        await self._error(
            event,
            "invalid_value",
            "output_audio_buffer.clear is only supported for WebRTC and SIP connections.",
            "type",
        )

    # ----- conversation items ------------------------------------------------------------------------------
