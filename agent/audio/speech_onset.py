"""A caller starting to talk, noticed on the phone audio itself, before the model's VAD says so.

The model's `speech_started` comes a network round trip plus its own detection after the caller began: a few
hundred milliseconds of the bot talking over them. An energy rise well above the line's own noise floor, held
for `onset_ms`, is enough to silence the bot at once; the model's VAD then confirms it (or the bot carries on).
"""

from __future__ import annotations

import math

import numpy as np

from agent.audio.codecs import Int16Array

_FLOOR_RISE_DB_PER_S = 3.0  # the noise floor creeps up this fast, so speech itself barely lifts it
_FLOOR_MIN_DB = -70.0  # Vobiz sends digital silence at times: the floor must not sink so far it takes ages back


class SpeechOnset:
    """Frame by frame: True on the frame where speech onset is declared (once per onset)."""

    def __init__(self, *, min_dbfs: float = -38.0, above_floor_db: float = 15.0, onset_ms: float = 100.0) -> None:
        self.min_dbfs = min_dbfs
        self.above_floor_db = above_floor_db
        self.onset_ms = onset_ms
        self.floor_db: float | None = None  # the line's own level: set by the first frame, falls at once, rises slowly
        self._run_ms = 0.0
        self._fired = False
        self.loud = False  # the last frame was loud speech (not echo) by this detector's measure

    def feed(self, samples: Int16Array, rate: int, *, echo: bool = False) -> bool:
        """`echo`: the frame is the bot's own voice coming back (see `agent.audio.echo`): it is never the caller's
        onset, and it does not lift the noise floor either."""
        self.loud = False
        if not len(samples):
            return False
        frame_ms = len(samples) * 1000 / rate
        power = float(np.mean(np.square(samples, dtype=np.float64)))
        level = 10 * math.log10(power / (32768.0**2) + 1e-12)
        floor = level if self.floor_db is None else self.floor_db
        loud = level >= max(self.min_dbfs, floor + self.above_floor_db)
        if echo:
            self._run_ms = 0.0
            self._fired = False
            return False
        self.loud = loud
        self.floor_db = max(_FLOOR_MIN_DB, min(level, floor + _FLOOR_RISE_DB_PER_S * frame_ms / 1000))
        if not loud:
            self._run_ms = 0.0
            self._fired = False
            return False
        self._run_ms += frame_ms
        if self._run_ms >= self.onset_ms and not self._fired:
            self._fired = True
            return True
        return False
