"""Speech recognition with PocketSphinx 5 and its bundled US English model (no download, no network).

A decoder holds ~30 MB of model and is not thread-safe, and recognising costs roughly half a CPU-second per second
of audio, so a :class:`Recognizer` keeps a small pool of decoders, created on demand, each used by one thread at a
time. Async callers run recognition in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Final

import numpy as np
import soxr
from pocketsphinx import Decoder

from agent.audio.codecs import Int16Array

__all__ = ["ASR_RATE", "Recognizer", "recognize"]

ASR_RATE: Final = 16000
"""The acoustic model's rate; input at other rates is resampled to it."""

_PAD_S: Final = 0.3
_NOISE_FLOOR: Final = 30.0
# PocketSphinx's noise tracking and batch cepstral mean normalisation misbehave on digital silence and on empty
# frequency bands (8 kHz telephone audio has nothing above 4 kHz): a faint fixed noise floor (-60 dBFS) roughly
# doubles word recall on synthetic speech. Fixed, so that the same audio always gives the same transcript.
_NOISE: Final = np.random.default_rng(0).normal(0.0, _NOISE_FLOOR, ASR_RATE * 10)
_MIN_AUDIO_S: Final = 0.1
# Narrower search than the defaults: about half the CPU for the same word recall on short utterances (measured on
# eSpeak sentences through 8 kHz μ-law: 0.63 -> 0.67 recall, 1.05 -> 0.51 CPU-s per audio second).
_FAST: Final[dict[str, Any]] = {"maxhmmpf": 3000, "topn": 2}


def _prepare(samples: Int16Array, rate: int) -> bytes:
    """Resample to 16 kHz, pad with silence (batch CMN wants some around the speech) and add the noise floor."""
    audio = samples.astype(np.float32)
    if rate != ASR_RATE:
        audio = soxr.resample(audio, rate, ASR_RATE)
    pad = np.zeros(round(_PAD_S * ASR_RATE), dtype=np.float32)
    padded = np.concatenate([pad, audio, pad])
    noisy = padded + np.resize(_NOISE, len(padded))
    return bytes(np.clip(np.rint(noisy), -32768, 32767).astype("<i2").tobytes())


class Recognizer:
    """Thread-safe recognition over a pool of at most ``max_decoders`` PocketSphinx decoders.

    ``decoder_options`` are PocketSphinx config keys (e.g. ``beam=1e-40``), applied to every decoder.
    """

    def __init__(self, *, max_decoders: int | None = None, **decoder_options: Any) -> None:
        self.max_decoders = max_decoders or min(4, os.cpu_count() or 1)
        self._options: dict[str, Any] = {"samprate": ASR_RATE, "loglevel": "ERROR", **_FAST, **decoder_options}
        self._idle: list[Decoder] = []
        self._created = 0
        self._loading = False
        self._cond = threading.Condition()

    def warm(self) -> None:
        """Load one decoder now (about a second), so the first caller turn is not slowed by it."""
        decoder = self._acquire()
        self._release(decoder)

    def recognize(self, samples: Int16Array, rate: int) -> str:
        """Lower-case words heard in mono int16 ``samples`` at ``rate`` Hz; "" for silence. Blocks the thread."""
        if len(samples) < _MIN_AUDIO_S * rate:
            return ""
        raw = _prepare(samples, rate)
        decoder = self._acquire()
        try:
            decoder.start_utt()
            decoder.process_raw(raw, full_utt=True)
            decoder.end_utt()
            hyp = decoder.hyp()
        finally:
            self._release(decoder)
        return " ".join(str(hyp.hypstr).split()) if hyp is not None else ""

    async def recognize_async(self, samples: Int16Array, rate: int) -> str:
        """``recognize`` in a worker thread."""
        return await asyncio.to_thread(self.recognize, samples, rate)

    def warm_in_background(self) -> None:
        """``warm`` in a daemon thread; recognitions meanwhile wait for that decoder rather than load another."""
        with self._cond:
            if self._created:
                return
        threading.Thread(target=self.warm, name="asr-warm-up", daemon=True).start()

    def _acquire(self) -> Decoder:
        # Decoders load one at a time: a second load would take as long as waiting for the first.
        with self._cond:
            while not self._idle and (self._loading or self._created >= self.max_decoders):
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._created += 1
            self._loading = True
        try:
            return Decoder(**self._options)  # slow: outside the lock so that idle decoders stay available
        except BaseException:
            with self._cond:
                self._created -= 1
            raise
        finally:
            with self._cond:
                self._loading = False
                self._cond.notify_all()

    def _release(self, decoder: Decoder) -> None:
        with self._cond:
            self._idle.append(decoder)
            self._cond.notify_all()


_shared: Recognizer | None = None
_shared_lock = threading.Lock()


def shared_recognizer() -> Recognizer:
    """The process-wide recognizer, so every user shares one decoder pool."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Recognizer()
        return _shared


def recognize(samples: Int16Array, rate: int) -> str:
    """``Recognizer.recognize`` on the shared recognizer."""
    return shared_recognizer().recognize(samples, rate)
