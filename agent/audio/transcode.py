"""Per-call converters between the carrier's audio and the model's.

μ-law calls pass bytes through untouched in both directions. L16 calls keep one soxr stream per direction so
filter state carries across 20 ms frames (no clicks at boundaries). Inbound L16 byte order is disputed in
Vobiz's docs, so by default it is detected from the audio itself.
"""

from __future__ import annotations

import numpy as np
import soxr

from agent.audio.codecs import Int16Array, l16_to_pcm16, pcm16_to_l16
from agent.audio.formats import MODEL_PCM_RATE, MediaFormat

_VOTES_TO_LOCK = 5


class ByteOrderDetector:
    """Decides whether inbound L16 is little- or big-endian by which reading is smoother.

    Real audio is dominated by low frequencies, so consecutive samples are close; the byte-swapped reading
    of the same bytes looks like loud white noise. Silent frames carry no evidence and are skipped.
    """

    def __init__(self, default_big_endian: bool = False) -> None:
        self.big_endian = default_big_endian
        self.locked = False
        self._votes = 0  # positive: big-endian

    def observe(self, data: bytes) -> bool:
        if self.locked or len(data) < 8:
            return self.big_endian
        little = np.frombuffer(data, dtype="<i2").astype(np.int32)
        big = np.frombuffer(data, dtype=">i2").astype(np.int32)
        rough_little = float(np.abs(np.diff(little)).sum())
        rough_big = float(np.abs(np.diff(big)).sum())
        if not np.any(little) or rough_little == rough_big:
            return self.big_endian
        self._votes += 1 if rough_big < rough_little else -1
        if abs(self._votes) >= _VOTES_TO_LOCK:
            self.big_endian, self.locked = self._votes > 0, True
        else:
            self.big_endian = self._votes > 0 if self._votes else self.big_endian
        return self.big_endian


class CallerAudioConverter:
    """Carrier `media` payload bytes → bytes in the model's input format."""

    def __init__(self, fmt: MediaFormat, byte_order: str = "auto", quality: str = "LQ") -> None:
        self.format = fmt
        self._detector = ByteOrderDetector(default_big_endian=byte_order == "big")
        self._auto = byte_order == "auto"
        self._resampler = (
            None if fmt.is_mulaw else soxr.ResampleStream(fmt.rate, MODEL_PCM_RATE, 1, dtype="int16", quality=quality)
        )

    @property
    def big_endian(self) -> bool:
        return self._detector.big_endian

    def convert(self, payload: bytes) -> bytes:
        """Raises ValueError for payloads that cannot be this format (odd-length L16)."""
        if self._resampler is None:
            return payload
        big = self._detector.observe(payload) if self._auto else self._detector.big_endian
        samples = l16_to_pcm16(payload, big_endian=big)
        out: Int16Array = self._resampler.resample_chunk(samples)
        return pcm16_to_l16(out)


class BotAudioConverter:
    """Model output audio bytes → bytes in the carrier playback format, one resampler per assistant item.

    A fresh resampler per item means an interrupted item's filter tail never leaks into the next answer.
    """

    def __init__(self, fmt: MediaFormat, quality: str = "LQ") -> None:
        self.format = fmt
        self._quality = quality
        self._resampler: soxr.ResampleStream | None = None

    def _stream(self) -> soxr.ResampleStream:
        if self._resampler is None:
            self._resampler = soxr.ResampleStream(
                MODEL_PCM_RATE, self.format.rate, 1, dtype="int16", quality=self._quality
            )
        return self._resampler

    def convert(self, model_audio: bytes) -> bytes:
        if self.format.is_mulaw:
            return model_audio
        samples = l16_to_pcm16(model_audio)
        if self.format.rate == MODEL_PCM_RATE:
            return pcm16_to_l16(samples)
        return pcm16_to_l16(self._stream().resample_chunk(samples))

    def finish_item(self) -> bytes:
        """Flush the filter tail at the end of an item and start afresh for the next."""
        if self._resampler is None:
            return b""
        tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        self._resampler = None
        return pcm16_to_l16(tail)

    def reset(self) -> None:
        """Drop filter state of an interrupted item."""
        self._resampler = None
