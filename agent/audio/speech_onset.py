"""A caller starting to talk, noticed on the phone audio itself, before the model's VAD says so.

The model's `speech_started` comes a network round trip plus its own detection after the caller began: a few
hundred milliseconds of the bot talking over them. An energy rise well above the line's own noise floor is enough
to silence the bot at once; the model's VAD then confirms it (or the bot carries on).

Two cheap features per 20 ms frame: the level against the line's own floor, and voicing (the peak of the
normalised autocorrelation at a pitch lag, 67-400 Hz, over the last 40 ms). A voiced sound (a vowel: speech) is
declared after `fast_ms` of it; an unvoiced one (a click, a cough, a rustle, or a word's first consonant) after
`onset_ms`. A dip of up to `DIP_MS` (the closure of a "k" in "excuse me") does not end a sound. The detector also
keeps what the interruption policy asks of the sound afterwards: how long it has lasted, how much of it was
voiced, and how long the line has been quiet since.
"""

from __future__ import annotations

import math

import numpy as np

from agent.audio.codecs import Int16Array

_FLOOR_RISE_DB_PER_S = 3.0  # the noise floor creeps up this fast, so speech itself barely lifts it
_FLOOR_MIN_DB = -70.0  # Vobiz sends digital silence at times: the floor must not sink so far it takes ages back
DIP_MS = 40.0  # quiet this short inside a sound does not end it
VOICED = 0.5  # normalised autocorrelation peak at a pitch lag: vowels 0.55-1.0, coughs and noise 0.1-0.45


def voicing(samples: Int16Array, rate: int) -> float:
    """Peak normalised autocorrelation over pitch lags (2.5-15 ms): near 1 for a vowel, low for noise."""
    x = samples.astype(np.float64)
    x -= x.mean()
    n = len(x)
    lo, hi = rate // 400, min(rate * 15 // 1000, n // 2)
    if hi <= lo:
        return 0.0
    spec = np.fft.rfft(x, 1 << (n + hi).bit_length())  # long enough that no lag wraps round
    r = np.fft.irfft(spec.real**2 + spec.imag**2)[: hi + 1]
    if r[0] <= 0:
        return 0.0
    lags = np.arange(lo, hi + 1)
    return float(np.max(r[lo : hi + 1] / r[0] * n / (n - lags)))


class SpeechOnset:
    """Frame by frame: True on the frame where speech onset is declared (once per sound, and once more if an
    unvoiced sound turns voiced: a cough followed by words)."""

    def __init__(
        self,
        *,
        min_dbfs: float = -38.0,
        above_floor_db: float = 15.0,
        onset_ms: float = 100.0,
        fast_ms: float = 60.0,
    ) -> None:
        self.min_dbfs = min_dbfs
        self.above_floor_db = above_floor_db
        self.onset_ms = onset_ms
        self.fast_ms = min(fast_ms, onset_ms)
        self.floor_db: float | None = None  # the line's own level: set by the first frame, falls at once, rises slowly
        self._prev: Int16Array | None = None
        self._fired = False
        self._fired_voiced = False
        self.loud = False  # the last frame was loud (not echo) by this detector's measure
        self.voiced = False  # ... and voiced
        self.sound_ms = 0.0  # loud ms in the current (or last) sound
        self.voiced_ms = 0.0  # of which voiced
        self.quiet_ms = 0.0  # since the last loud frame

    def reset(self) -> None:
        """No sound in progress (the detector is not fed while the bot is silent)."""
        self.loud = self.voiced = False
        self.quiet_ms = max(self.quiet_ms, DIP_MS + 1)
        self._end_sound()

    def _end_sound(self) -> None:
        self.sound_ms = self.voiced_ms = 0.0
        self._fired = self._fired_voiced = False

    def feed(self, samples: Int16Array, rate: int, *, echo: bool = False) -> bool:
        """`echo`: the frame is the bot's own voice coming back (see `agent.audio.echo`): it is never the caller's
        onset, and it does not lift the noise floor either."""
        self.loud = self.voiced = False
        if not len(samples):
            return False
        prev, self._prev = self._prev, samples
        frame_ms = len(samples) * 1000 / rate
        x = samples.astype(np.float64)
        power = float(x.dot(x)) / len(x)  # the mean square; np.mean's Python layer cost 8 µs of 10 a frame
        level = 10 * math.log10(power / (32768.0**2) + 1e-12)
        floor = level if self.floor_db is None else self.floor_db
        loud = level >= max(self.min_dbfs, floor + self.above_floor_db)
        if echo:
            self.quiet_ms = max(self.quiet_ms, DIP_MS) + frame_ms  # the caller's own sound, if any, is over
            return False
        self.floor_db = max(_FLOOR_MIN_DB, min(level, floor + _FLOOR_RISE_DB_PER_S * frame_ms / 1000))
        if not loud:
            self.quiet_ms += frame_ms  # the sound's figures stay until the next one begins
            return False
        if self.quiet_ms > DIP_MS:
            self._end_sound()  # a new sound
        self.quiet_ms = 0.0
        self.loud = True
        window = samples if prev is None or len(prev) != len(samples) else np.concatenate([prev, samples])
        self.voiced = voicing(window, rate) >= VOICED
        self.sound_ms += frame_ms
        if self.voiced:
            self.voiced_ms += frame_ms
        fire = self.sound_ms >= self.onset_ms or (self.sound_ms >= self.fast_ms and self.voiced_ms >= 2 * frame_ms)
        if fire and not self._fired:
            self._fired = True
            self._fired_voiced = self.voiced_ms > 0
            return True
        if self._fired and not self._fired_voiced and self.voiced_ms >= 2 * frame_ms:
            self._fired_voiced = True  # the sound turned into speech
            return True
        return False
