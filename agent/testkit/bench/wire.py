"""Constants and tiny helpers shared by the bench driver, the engine process and the baseline relay."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from typing import Final

MULAW_8K: Final = "audio/x-mulaw;rate=8000"
L16_8K: Final = "audio/x-l16;rate=8000"
L16_16K: Final = "audio/x-l16;rate=16000"
CONTENT_TYPES: Final = (MULAW_8K, L16_8K, L16_16K)

FRAME_MS: Final = 20
MULAW_FRAME_BYTES: Final = 160  # 20 ms of μ-law at 8 kHz: the unit the carrier sends and the agent passes on
PREFIX_CHARS: Final = 44  # base64 characters of a payload's first 33 bytes: identifies a response's first audio
REALTIME_MODEL: Final = "gpt-realtime"

# What the default prompt (prompts/default.md) asks the model for; the baseline relay configures the same
# turn detection so the engine behaves identically for both, and the bench checks that it did.
TURN_DETECTION: Final[dict[str, object]] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
}
TRANSCRIPTION_MODEL: Final = "gpt-4o-mini-transcribe"
# Event-loop wake-ups later than this are kept with their time (bench and engine), to line them up with gaps.
LAG_SPIKE_MS: Final = 20.0


def frame_key(data: bytes) -> str:
    """A short, process-independent digest of one audio frame (Python's hash() is salted per process)."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def is_mulaw(content_type: str) -> bool:
    return content_type.lower().startswith("audio/x-mulaw")


def content_rate(content_type: str) -> int:
    for part in content_type.split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "rate" and value.strip().isdigit():
            return int(value.strip())
    return 8000


@dataclass
class LoopLag:
    """How late an event loop wakes up (the bench's or the engine's): when it lags, the timestamps it takes do too."""

    samples_ms: list[float] = field(default_factory=list)
    spikes: list[tuple[float, float]] = field(default_factory=list)  # (woke at, lag ms) beyond LAG_SPIKE_MS

    async def watch(self, period: float = 0.01) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(period)
            now = time.monotonic()
            lag = (now - t - period) * 1000
            self.samples_ms.append(lag)
            if lag > LAG_SPIKE_MS:
                self.spikes.append((now, lag))
