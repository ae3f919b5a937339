"""Caller audio: stream formats, audio segments and cues, the script a simulated caller follows."""

from __future__ import annotations

import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt
import soxr

from agent.audio.codecs import (
    Int16Array,
    float_to_pcm16,
    l16_to_pcm16,
    pcm16_to_mulaw,
)
from agent.testkit.carrier.records import INBOUND_RATES, MULAW, ClearRecord, TimelineEntry


class CallView(Protocol):
    """What a cue's condition may read of the live call (a :class:`~agent.testkit.carrier.call.CallView`).

    Cues are built before the call exists and are evaluated by it, so they see it through this protocol and
    this module stays below the call that imports it."""

    @property
    def call_ms(self) -> float: ...
    @property
    def played_ms(self) -> float: ...
    @property
    def queued_ms(self) -> float: ...
    @property
    def bot_playing(self) -> bool: ...
    @property
    def script_done(self) -> bool: ...
    @property
    def stream_live(self) -> bool: ...
    @property
    def acked_checkpoints(self) -> list[str]: ...
    @property
    def clears(self) -> list[ClearRecord]: ...
    def events(self, kind: str) -> list[TimelineEntry]: ...


# ----------------------------------------------------------------------------------------------------------
# Formats and caller audio
# ----------------------------------------------------------------------------------------------------------


class StreamFormat(NamedTuple):
    """Encoding + rate of one direction, parsed from a ``audio/x-...;rate=N`` content type."""

    encoding: str
    rate: int

    @classmethod
    def parse(cls, content_type: str) -> StreamFormat:
        parts = [p.strip() for p in content_type.split(";")]
        encoding = parts[0].lower()
        rate: int | None = None
        for part in parts[1:]:
            key, _, value = part.partition("=")
            if key.strip().lower() == "rate":
                try:
                    rate = int(value.strip())
                except ValueError:
                    raise ValueError(f"bad rate in content type {content_type!r}") from None
        if encoding not in INBOUND_RATES:
            raise ValueError(f"unsupported encoding in content type {content_type!r}")
        rate = 8000 if rate is None else rate
        if rate not in INBOUND_RATES[encoding]:
            raise ValueError(f"rate {rate} is not valid for {encoding} (content type {content_type!r})")
        return cls(encoding, rate)

    @property
    def content_type(self) -> str:
        return f"{self.encoding};rate={self.rate}"

    @property
    def bytes_per_sample(self) -> int:
        return 1 if self.encoding == MULAW else 2

    def samples_per_frame(self, frame_ms: int) -> int:
        return self.rate * frame_ms // 1000

    def bytes_per_frame(self, frame_ms: int) -> int:
        return self.samples_per_frame(frame_ms) * self.bytes_per_sample


# G.711 μ-law of every int16 sample, indexed by the sample's bits read as uint16: one table lookup per frame, the
# product's encoder's own results (read once, here) without its per-call int32 widening.
_MULAW_BY_BITS: Final[npt.NDArray[np.uint8]] = np.frombuffer(
    pcm16_to_mulaw(np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)), dtype=np.uint8
)[(np.arange(65536, dtype=np.int32) + 32768) & 0xFFFF]


def mulaw_encode(samples: Int16Array) -> bytes:
    """μ-law bytes for int16 samples (as ``pcm16_to_mulaw``, for 50 frames a second per simulated call)."""
    return _MULAW_BY_BITS.take(samples.view(np.uint16)).tobytes()


def _ms_to_samples(ms: float, rate: int) -> int:
    return round(ms * rate / 1000)


def resample(samples: Int16Array, src_rate: int, dst_rate: int) -> Int16Array:
    if src_rate == dst_rate or len(samples) == 0:
        return samples
    return np.asarray(soxr.resample(samples, src_rate, dst_rate), dtype=np.int16)


@dataclass(frozen=True)
class Segment:
    """A stretch of caller audio; rendered lazily so it always matches the rate the agent chose in its XML."""

    kind: str
    label: str
    duration_ms: float
    render_fn: Callable[[int], Int16Array] = field(repr=False, compare=False)

    def render(self, rate: int) -> Int16Array:
        return self.render_fn(rate)


@dataclass(frozen=True)
class Cue:
    """Keep the caller silent until a condition on the live call holds, then say ``segment``.

    ``arm`` is called when the cue reaches the head of the script and returns the condition, so conditions
    can be relative to that moment ("300 ms into the bot's next reply").
    """

    arm: Callable[[CallView], Callable[[], bool]] = field(repr=False, compare=False)
    segment: Segment | None
    description: str


ScriptItem: TypeAlias = "Segment | Cue | Callable[[CallView], bool]"


class CallerAudio:
    """Builders for what the caller says; a script is a list of segments, cues and gate callables.

    A plain callable ``f(call) -> bool`` in a script is a gate: the caller stays silent until it is true.
    After the script ends the caller sends silence until the call ends.
    """

    @staticmethod
    def silence(ms: float) -> Segment:
        return Segment("silence", "silence", ms, lambda rate: np.zeros(_ms_to_samples(ms, rate), dtype=np.int16))

    @staticmethod
    def tone(hz: float, ms: float, amplitude: float = 0.3) -> Segment:
        def render(rate: int) -> Int16Array:
            t = np.arange(_ms_to_samples(ms, rate), dtype=np.float64) / rate
            return float_to_pcm16(amplitude * np.sin(2 * np.pi * hz * t))

        return Segment("tone", f"tone {hz:g} Hz", ms, render)

    @staticmethod
    def noise(ms: float, amplitude: float = 0.1, seed: int = 0) -> Segment:
        """Seeded white noise: speech-like energy for VAD tests, reproducible across runs."""

        def render(rate: int) -> Int16Array:
            rng = np.random.default_rng(seed)
            return float_to_pcm16(rng.uniform(-amplitude, amplitude, _ms_to_samples(ms, rate)))

        return Segment("noise", "noise", ms, render)

    @staticmethod
    def pcm(samples: npt.NDArray[Any], rate: int, label: str = "pcm") -> Segment:
        """Mono samples (int16, or float in [-1, 1]) at ``rate``; resampled to the stream rate when needed."""
        if samples.ndim != 1:
            raise ValueError("CallerAudio.pcm needs mono (1-D) samples")
        # dtype.kind rather than np.issubdtype, which cost more than the rest of a bench noise chunk's push
        pcm = float_to_pcm16(samples) if samples.dtype.kind == "f" else np.asarray(samples, dtype=np.int16)
        return Segment("pcm", label, len(pcm) * 1000 / rate, lambda target: resample(pcm, rate, target))

    @staticmethod
    def wav(path: str | Path) -> Segment:
        """A 16-bit PCM WAV file (stereo is averaged to mono)."""
        with wave.open(str(path), "rb") as wav_file:
            if wav_file.getsampwidth() != 2:
                raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
            channels = wav_file.getnchannels()
            rate = wav_file.getframerate()
            data = wav_file.readframes(wav_file.getnframes())
        samples = l16_to_pcm16(data)
        if channels > 1:
            frames = samples.reshape(-1, channels).astype(np.int32)
            samples = np.round(frames.mean(axis=1)).astype(np.int16)
        return CallerAudio.pcm(samples, rate, label=Path(path).name)

    @staticmethod
    def after_bot_audio(ms_into_playback: float, segment: Segment) -> Cue:
        """Speak once the carrier has played ``ms_into_playback`` ms of bot audio since this cue was reached."""

        def arm(call: CallView) -> Callable[[], bool]:
            base = call.played_ms
            return lambda: call.played_ms - base >= ms_into_playback

        return Cue(arm, segment, f"after {ms_into_playback:g} ms of bot audio")

    @staticmethod
    def at(ms_into_call: float, segment: Segment) -> Cue:
        """Speak at a fixed point of the call clock (ms after ``start``)."""
        return Cue(lambda call: lambda: call.call_ms >= ms_into_call, segment, f"at {ms_into_call:g} ms")

    @staticmethod
    def after_checkpoint(name: str, segment: Segment) -> Cue:
        """Speak once the carrier has acked checkpoint ``name`` (the bot finished that utterance)."""
        return Cue(lambda call: lambda: name in call.acked_checkpoints, segment, f"after checkpoint {name!r}")

    @staticmethod
    def when(condition: Callable[[CallView], bool], segment: Segment | None = None, description: str = "") -> Cue:
        return Cue(lambda call: lambda: condition(call), segment, description or "when condition")


def as_cue_or_segment(item: ScriptItem) -> Segment | Cue:
    if isinstance(item, (Segment, Cue)):
        return item
    if callable(item):
        return CallerAudio.when(item, None, getattr(item, "__name__", "gate"))
    raise TypeError(f"script items must be Segment, Cue or callable, not {type(item).__name__}")
