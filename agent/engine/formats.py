"""Audio formats of a GA session (PCM, μ-law, A-law), ids shaped like the API's, and tone synthesis."""

from __future__ import annotations

import itertools
import os
import random
import string
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from agent.audio.codecs import Int16Array, float_to_pcm16, mulaw_to_pcm16, pcm16_to_mulaw

_ID_ALPHABET = string.ascii_letters + string.digits
_ids = random.Random()
# A random stem per process and a counter: ids stay unique (within the process by the counter, across processes by
# the stem's 59 random bits) at the cost of one string format, where drawing 20 random characters took ~2 µs an id
# and an id is drawn for every event sent.
_ID_STEM = "".join(_ids.choices(_ID_ALPHABET, k=10))
_id_counter = itertools.count()


def _new_stem() -> None:
    """A forked child draws its own stem, or it would repeat its parent's ids."""
    global _ID_STEM
    _ids.seed()
    _ID_STEM = "".join(_ids.choices(_ID_ALPHABET, k=10))


os.register_at_fork(after_in_child=_new_stem)
# Obfuscation values cycle through a pool drawn once: they pad a delta's size and need not be unique.
_OBFUSCATION = tuple("".join(_ids.choices(_ID_ALPHABET, k=8)) for _ in range(251))
_obfuscation_counter = itertools.count()


class SimulatorBug(RuntimeError):
    """The fake itself produced something the real API never would (e.g. an event the SDK cannot parse)."""


def new_id(prefix: str) -> str:
    """An id shaped like the API's (``event_…``, ``item_…``, ``resp_…``: 20 letters and digits after the prefix),
    unique for practical purposes."""
    return f"{prefix}{_ID_STEM}{next(_id_counter):010x}"


def obfuscation() -> str:
    """The ``obfuscation`` padding of a transcript delta: 8 random-looking letters and digits."""
    return _OBFUSCATION[next(_obfuscation_counter) % len(_OBFUSCATION)]


# ---------------------------------------------------------------------------------------------------------------
# Audio formats
# ---------------------------------------------------------------------------------------------------------------


def _build_alaw_tables() -> tuple[Int16Array, npt.NDArray[np.uint8]]:
    """G.711 A-law tables; the shared codec module only has μ-law, and A-law is a legal GA session format."""
    codes = np.arange(256, dtype=np.int32)
    a = codes ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    decode = np.where(a & 0x80, t, -t).astype(np.int16)
    # Encode each int16 value to its nearest A-law level.
    order = np.argsort(decode, kind="stable")
    levels = decode[order].astype(np.int32)
    samples = np.arange(-32768, 32768, dtype=np.int32)
    idx = np.clip(np.searchsorted(levels, samples), 1, 255)
    nearer_low = (samples - levels[idx - 1]) <= (levels[idx] - samples)
    encode = order[np.where(nearer_low, idx - 1, idx)].astype(np.uint8)
    return decode, encode


_ALAW_DECODE, _ALAW_ENCODE = _build_alaw_tables()

FormatType = Literal["audio/pcm", "audio/pcmu", "audio/pcma"]


@dataclass(frozen=True)
class AudioFormat:
    """One GA session audio format: ``audio/pcm`` (24 kHz int16 LE), ``audio/pcmu`` or ``audio/pcma`` (8 kHz)."""

    type: FormatType

    @classmethod
    def from_session(cls, fmt: Any) -> AudioFormat:
        """Read a GA ``{"type": ...}`` format object; the API default (pcm 24 kHz) when absent."""
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        # Shared instances: the input format is read for every append, and building a frozen dataclass costs a µs.
        return _FORMATS.get(kind, _PCM) if isinstance(kind, str) else _PCM

    @property
    def sample_rate(self) -> int:
        return 24000 if self.type == "audio/pcm" else 8000

    @property
    def bytes_per_ms(self) -> int:
        """48 for pcm24k, 8 for the G.711 formats."""
        return 48 if self.type == "audio/pcm" else 8

    def as_session(self) -> dict[str, Any]:
        """The wire form used in session and response objects."""
        return {"type": "audio/pcm", "rate": 24000} if self.type == "audio/pcm" else {"type": self.type}

    def decode(self, data: bytes) -> Int16Array:
        if self.type == "audio/pcmu":
            return mulaw_to_pcm16(data)
        if self.type == "audio/pcma":
            return _ALAW_DECODE.take(np.frombuffer(data, dtype=np.uint8))
        if len(data) % 2:
            raise ValueError("audio/pcm payload has an odd number of bytes")
        return np.frombuffer(data, dtype="<i2").astype(np.int16)

    def encode(self, samples: Int16Array) -> bytes:
        if self.type == "audio/pcmu":
            return pcm16_to_mulaw(samples)
        if self.type == "audio/pcma":
            return bytes(_ALAW_ENCODE[samples.astype(np.int32) + 32768].tobytes())
        return samples.astype("<i2").tobytes()


_FORMATS: dict[str, AudioFormat] = {kind: AudioFormat(kind) for kind in ("audio/pcm", "audio/pcmu", "audio/pcma")}
_PCM = _FORMATS["audio/pcm"]


# ---------------------------------------------------------------------------------------------------------------
# Configuration and reply sources
# ---------------------------------------------------------------------------------------------------------------


def describe_audio(audio: Int16Array, sample_rate: int) -> str:
    """Default 'transcript': the caller audio's duration, which tests can check without ASR."""
    return f"caller audio {round(len(audio) * 1000 / sample_rate)} ms"


def sine_tone(hz: float, amplitude: float, duration_ms: int, sample_rate: int) -> Int16Array:
    """A phase-continuous sine, generated whole so that chunking cannot introduce discontinuities."""
    n = round(duration_ms * sample_rate / 1000)
    t = np.arange(n, dtype=np.float64) / sample_rate
    return float_to_pcm16(amplitude * np.sin(2 * np.pi * hz * t))
