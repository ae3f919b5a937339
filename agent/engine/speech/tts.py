"""Text to speech with eSpeak NG, loaded from the ``espeakng-loader`` wheel through ctypes (no system install).

libespeak-ng keeps global state and is not re-entrant, so the process has exactly one engine behind a lock, and
async callers run synthesis in a worker thread. It is cheap (a few ms of CPU per second of speech), so the lock is
not a bottleneck. Output is mono int16 at any rate: espeak's 22050 Hz resampled with soxr.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from typing import Final

import numpy as np
import soxr

from agent.audio.codecs import Int16Array

__all__ = ["CLEAR_VOICE", "DEFAULT_VOICE", "Speaker", "synthesize"]

DEFAULT_VOICE: Final = "en-us"
CLEAR_VOICE: Final = "en-us+klatt3"
"""A Klatt variant that PocketSphinx recognises better through 8 kHz μ-law on most sentences (the default greeting:
0.70 word recall against 0.52), though not on all ("goodbye" fares worse); the offline engine replies with it."""

MIN_WPM: Final = 80
MAX_WPM: Final = 450

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS: Final = 2
_INITIALIZE_DONT_EXIT: Final = 0x8000  # report errors instead of calling exit()
_CHARS_UTF8: Final = 1
_POS_CHARACTER: Final = 1
_PARAM_RATE: Final = 1
_EE_OK: Final = 0

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Espeak:
    """The process's libespeak-ng instance in synchronous mode; callers must hold ``_LOCK``."""

    def __init__(self) -> None:
        # Imported here, not at the top, so that this module (its voices, Speaker) loads without the optional
        # `sim` extra; the first synthesis then raises ImportError, which callers report or fall back from.
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        data_path = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise with data at {data_path.decode()}")
        self.lib = lib
        self.rate: int = rate
        self._chunks: list[Int16Array] = []
        self._callback = _SynthCallback(self._collect)  # referenced here so it is never garbage-collected
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None
        self._wpm: int | None = None

    def _collect(self, wav: ctypes._Pointer[ctypes.c_short], count: int, events: int | None) -> int:
        if count > 0 and wav:
            self._chunks.append(np.frombuffer(ctypes.string_at(wav, count * 2), dtype=np.int16))
        return 0  # 0 = continue

    def synthesize(self, text: str, voice: str, words_per_minute: int) -> Int16Array:
        if voice != self._voice:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            self._voice, self._wpm = voice, None  # a voice change resets the rate
        wpm = min(MAX_WPM, max(MIN_WPM, words_per_minute))
        if wpm != self._wpm:
            self.lib.espeak_SetParameter(_PARAM_RATE, wpm, 0)
            self._wpm = wpm
        data = text.encode() + b"\0"
        self._chunks = []
        try:
            status = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if status != _EE_OK:
                raise RuntimeError(f"espeak_Synth failed with status {status}")
            return np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        finally:
            self._chunks = []


_LOCK = threading.Lock()
_engine: _Espeak | None = None


class Speaker:
    """Speech synthesis; every instance shares the process's one eSpeak engine, so any thread may use any Speaker."""

    @property
    def native_rate(self) -> int:
        """The rate espeak synthesises at (22050 Hz) before resampling."""
        with _LOCK:
            return _get_engine().rate

    def synthesize(
        self, text: str, rate: int, *, voice: str = DEFAULT_VOICE, words_per_minute: int = 165
    ) -> Int16Array:
        """``text`` spoken as mono int16 at ``rate`` Hz; empty for blank text. Blocks: use ``synthesize_async``."""
        if not text.strip():
            return np.zeros(0, dtype=np.int16)
        with _LOCK:
            engine = _get_engine()
            native = engine.synthesize(text, voice, words_per_minute)
            native_rate = engine.rate
        if rate == native_rate or len(native) == 0:
            return native
        out: Int16Array = soxr.resample(native, native_rate, rate)
        return out

    async def synthesize_async(
        self, text: str, rate: int, *, voice: str = DEFAULT_VOICE, words_per_minute: int = 165
    ) -> Int16Array:
        """``synthesize`` in a worker thread, so the event loop keeps running meanwhile."""
        return await asyncio.to_thread(self.synthesize, text, rate, voice=voice, words_per_minute=words_per_minute)


def _get_engine() -> _Espeak:
    global _engine
    if _engine is None:
        _engine = _Espeak()
    return _engine


_shared: Speaker | None = None


def synthesize(text: str, rate: int, *, voice: str = DEFAULT_VOICE, words_per_minute: int = 165) -> Int16Array:
    """``Speaker().synthesize`` on a shared instance: the entry point for tools that just need some speech."""
    global _shared
    if _shared is None:
        _shared = Speaker()
    return _shared.synthesize(text, rate, voice=voice, words_per_minute=words_per_minute)
