"""The bot's own voice coming back on the caller's line (a speakerphone, a cheap handset), told from the caller.

The agent knows what it played and when (the playout's schedule). An echo is that audio again, a little later
(40-250 ms, the line's round trip) and quieter (15-30 dB down). So both sides are reduced to 10 ms log-energy
envelopes on the playout's clock; while the bot talks, the envelopes are correlated over lags of 0-`max_delay_ms`
every half second to find this call's echo delay, and the echo loss is the median level difference at that lag.
An inbound frame is echo when the bot was playing at that delay and the frame is no louder than the predicted echo
(+ `margin_db`). Before the delay is known a cautious prior applies (anything `prior_loss_db` below the loudest bot
audio of the past 40-300 ms may be echo), until the line shows it has no echo at all.

An echo can also begin mid-call (the caller switches to the speakerphone) after the line showed none: the first
sound pauses the bot, and `followed_bot` recognises it once it is over. It stopped one echo delay after the bot did,
and its waveform is the bot's at that delay (normalised cross-correlation of the samples: a copy scores near 1, the
caller's own voice near 0); the delay and loss it shows are then this call's. For that the last `_WAVE_SLOTS` of
both sides' samples are kept too.

Pure numpy, no I/O; a few microseconds per 20 ms frame (see the report in docs-interruptions.md).
"""

from __future__ import annotations

import math
from array import array

import numpy as np

from agent.audio.codecs import Int16Array

_SLOT_S = 0.01
_RING = 1024  # slots kept: ~10 s of both envelopes
_FLOOR_DB = -70.0  # envelopes are clipped here: digital silence carries no timing
_ACTIVE_DB = -50.0  # the bot is audible in a slot above this
_FULL_SCALE = 32768.0**2
_ABOVE_LINE_DB = 10.0  # a sound stands this far above the line's own floor
_WAVE_SLOTS = 128  # 1.28 s of samples kept on each side, for `followed_bot`
_REDATE_S = 0.1  # frames this much later than the stream's dating, for this long: the stream broke off
_TIE = 0.02  # correlation peaks this close to the best are as good: the sound's end tells them apart


def _db(power: float) -> float:
    return 10 * math.log10(power / _FULL_SCALE + 1e-10)


class EchoEstimator:
    def __init__(
        self,
        rate: int,
        *,
        max_delay_ms: float = 300.0,
        min_delay_ms: float = 40.0,
        margin_db: float = 6.0,
        prior_loss_db: float = -15.0,
        window_s: float = 3.0,
        min_corr: float = 0.6,
        estimate_every: int = 25,
    ) -> None:
        self.rate = rate
        self.max_delay_ms = max_delay_ms
        self._slot_n = max(1, int(rate * _SLOT_S))
        self._max_lag = int(max_delay_ms / 10)
        self._min_lag = int(min_delay_ms / 10)
        self.margin_db = margin_db
        self.prior_loss_db = prior_loss_db
        self._window = int(window_s / _SLOT_S)
        self.min_corr = min_corr
        self._estimate_every = estimate_every
        # Rings of 10 ms slots, each stamped with its absolute slot number. Read one by one, so Python sequences,
        # but typed arrays, not lists: a list holds a float or int object per slot (~130 KB per call in all).
        self._ref_db = array("d", [_FLOOR_DB]) * _RING
        self._ref_slot = array("q", [-1]) * _RING
        self._ref_last = -1  # the latest slot with bot audio scheduled
        self._in_db = array("d", [_FLOOR_DB]) * _RING
        self._in_slot = array("q", [-1]) * _RING
        self._bot_wave = np.zeros((_WAVE_SLOTS, self._slot_n), dtype=np.int16)
        self._bot_wave_slot = np.full(_WAVE_SLOTS, -1, dtype=np.int64)
        self._in_wave = np.zeros((_WAVE_SLOTS, self._slot_n), dtype=np.int16)
        self._in_wave_slot = np.full(_WAVE_SLOTS, -1, dtype=np.int64)
        self._in_last = -1  # the latest inbound slot
        self._anchor: float | None = None  # playout-clock time of inbound sample 0 (earliest arrival seen)
        self._later: tuple[float, float] | None = None  # since when, and by how little at least, frames came late
        self._frames = 0
        self.delay_slots: int | None = None  # the echo delay, in 10 ms slots, once found
        self.loss_db: float | None = None  # echo level relative to the bot's playout, once found
        self.corr = 0.0
        self._quiet_windows = 0
        self.no_echo = False  # the line showed no echo while the bot talked: the prior is off
        self._ref_version = 0  # bumped whenever kept samples change, either side (`followed_bot`'s cache)
        self._followed: tuple[tuple[int, int, int, int], tuple[float, int, float] | None] | None = None

    # --- the bot's side ------------------------------------------------------------------------------------

    def played(self, samples: Int16Array, start: float) -> None:
        """Bot audio scheduled to start playing at `start` (playout clock)."""
        n = len(samples) // self._slot_n
        if n == 0:
            return
        raw = samples[: n * self._slot_n].reshape(n, self._slot_n)
        blocks = raw.astype(np.float64)
        levels = 10 * np.log10(np.mean(blocks * blocks, axis=1) / _FULL_SCALE + 1e-10)
        first = int(start / _SLOT_S)
        self._ref_version += 1
        keep = min(n, _WAVE_SLOTS)
        slots = np.arange(first + n - keep, first + n)
        self._bot_wave[slots % _WAVE_SLOTS] = raw[n - keep :]
        self._bot_wave_slot[slots % _WAVE_SLOTS] = slots
        for i, level in enumerate(levels.tolist()):
            self._ref_db[(first + i) % _RING] = max(level, _FLOOR_DB)
            self._ref_slot[(first + i) % _RING] = first + i
        self._ref_last = max(self._ref_last, first + n - 1)

    def cut(self, at: float) -> None:
        """Nothing scheduled after `at` plays (the line was cleared or held)."""
        first = int(at / _SLOT_S) + 1
        if first > self._ref_last:
            return
        self._ref_version += 1
        for slot in range(max(first, self._ref_last - _RING + 1), self._ref_last + 1):
            self._ref_slot[slot % _RING] = -1
        self._ref_last = first - 1

    def shift(self, after: float, delay: float) -> None:
        """The carrier played late: what was scheduled from `after` on plays `delay` seconds later."""
        move = round(delay / _SLOT_S)
        first = int(after / _SLOT_S)
        if move <= 0 or first > self._ref_last:
            return
        self._ref_version += 1
        for slot in range(self._ref_last, max(first, self._ref_last - _RING + move + 1) - 1, -1):
            at = slot % _RING
            if self._ref_slot[at] == slot:
                self._ref_db[(slot + move) % _RING] = self._ref_db[at]
                self._ref_slot[(slot + move) % _RING] = slot + move
                self._ref_slot[at] = -1
                wave, moved = slot % _WAVE_SLOTS, (slot + move) % _WAVE_SLOTS
                if self._bot_wave_slot[wave] == slot:
                    self._bot_wave[moved] = self._bot_wave[wave]
                    self._bot_wave_slot[moved] = slot + move
                    if moved != wave:
                        self._bot_wave_slot[wave] = -1
        self._ref_last += move

    def _ref_level(self, slot: int) -> float:
        at = slot % _RING
        return self._ref_db[at] if self._ref_slot[at] == slot else _FLOOR_DB

    def _ref(self, first: int, last: int) -> np.ndarray:
        """The bot's envelope over slots [first, last] (the floor where nothing played)."""
        return np.array([self._ref_level(slot) for slot in range(first, last + 1)])

    # --- the caller's side ---------------------------------------------------------------------------------

    def inbound(self, samples: Int16Array, arrival: float, position: int) -> bool:
        """A frame of caller audio that arrived at `arrival` (playout clock); True when it is only echo.

        `position`: the stream's samples before this frame, every frame the carrier sent counted (shown here or
        not), so that the frames of the bot's silences, which nobody needs to see, leave no gap in the dating."""
        n = len(samples) // self._slot_n
        if n == 0:
            return False
        end = position + len(samples)
        self._anchor = self._dated(arrival - end / self.rate, arrival)
        end_slot = int((self._anchor + end / self.rate) / _SLOT_S)
        if abs(end_slot - n - self._in_last) == 1:
            # The dating moved by under a slot (it rides on the arrivals' jitter): the stream goes on where it was,
            # rather than skip a slot (a hole in the sound, which `followed_bot` cannot judge) or write one twice.
            end_slot = self._in_last + n
        if end_slot - n < self._in_last:
            self._ref_version += 1  # a slot already kept is written again (the stream dated afresh)
        self._in_last = max(self._in_last, end_slot)
        echo = True
        for j in range(n):
            block = samples[j * self._slot_n : (j + 1) * self._slot_n].astype(np.float64)
            level = max(_db(float(np.dot(block, block)) / self._slot_n), _FLOOR_DB)
            slot = end_slot - (n - 1 - j)
            self._in_db[slot % _RING] = level
            self._in_slot[slot % _RING] = slot
            self._in_wave[slot % _WAVE_SLOTS] = samples[j * self._slot_n : (j + 1) * self._slot_n]
            self._in_wave_slot[slot % _WAVE_SLOTS] = slot
            echo = echo and self._explained(slot, level)
        self._frames += 1
        if self._frames % self._estimate_every == 0:
            self._estimate(end_slot)
        return echo

    def _dated(self, offset: float, arrival: float) -> float:
        """When the stream's sample 0 played: frames arrive late (jitter), never early, so the earliest arrival
        dates the stream, drifting later slowly. Frames much later than that are either a stall of our own event
        loop (they come in a burst, then on time again: the dating stands, or a burst would be written over one
        slot and leave a hole in the sound) or a break in the stream itself (a reconnect), which shows as frames
        late for `_REDATE_S` on end: only then is the stream dated afresh."""
        anchor = self._anchor
        if anchor is None or offset < anchor:
            self._later = None
            return offset
        if offset - anchor <= _REDATE_S:
            self._later = None
            return anchor + 0.0002
        since, least = self._later or (arrival, offset)
        if arrival - since >= _REDATE_S:
            self._later = None
            return min(least, offset)
        self._later = (since, min(least, offset))
        return anchor

    def _explained(self, slot: int, level: float) -> bool:
        """Whether the bot's audio, come back, accounts for this much sound in this slot."""
        if self.delay_slots is not None and self.loss_db is not None:
            first, last, loss = slot - self.delay_slots - 2, slot - self.delay_slots + 2, self.loss_db
        elif not self.no_echo:
            first, last, loss = slot - self._max_lag, slot - self._min_lag, self.prior_loss_db
        else:
            return False
        loudest = max(self._ref_level(s) for s in range(first, last + 1))
        return loudest > _ACTIVE_DB and level <= loudest + loss + self.margin_db

    def _estimate(self, last: int) -> None:
        """Correlate the two envelopes over the last `window_s` to find the delay and loss of the echo."""
        first = last - self._window + 1
        valid = [self._in_slot[slot % _RING] == slot for slot in range(first, last + 1)]
        if sum(valid) < 0.8 * len(valid):
            return
        inbound = np.array(
            [
                self._in_db[slot % _RING] if ok else _FLOOR_DB
                for slot, ok in zip(range(first, last + 1), valid, strict=True)
            ]
        )
        ref = self._ref(first - self._max_lag, last)
        if (ref[self._max_lag :] > _ACTIVE_DB).mean() < 0.3:
            return  # the bot hardly talked: nothing to learn from
        y = inbound - inbound.mean()
        y_norm = float(np.sqrt(np.dot(y, y)))
        best, best_lag = 0.0, 0
        if y_norm > 1e-6:
            windows = np.lib.stride_tricks.sliding_window_view(ref, self._window)  # lag L -> windows[max_lag - L]
            x = windows - windows.mean(axis=1, keepdims=True)
            norms = np.sqrt(np.einsum("ij,ij->i", x, x)) * y_norm
            corr = np.where(norms > 1e-6, x @ y / np.maximum(norms, 1e-12), 0.0)
            index = int(np.argmax(corr))
            best, best_lag = float(corr[index]), self._max_lag - index
        self.corr = best
        if best >= self.min_corr:
            lagged = ref[self._max_lag - best_lag : self._max_lag - best_lag + self._window]
            talking = lagged > _ACTIVE_DB
            self.delay_slots = best_lag
            self.loss_db = float(np.median(inbound[talking] - lagged[talking]))
            self.no_echo, self._quiet_windows = False, 0
        elif best < self.min_corr / 2 and self.delay_slots is None:
            self._quiet_windows += 1
            self.no_echo = self._quiet_windows >= 2

    def followed_bot(self, start: float, *, min_corr: float = 0.5, max_loss_db: float = -6.0) -> bool:
        """Whether the sound on the line since `start` (playout clock), now over, was the bot's echo: it ended about
        one echo delay (40-300 ms) after the bot's audio did, and its samples are the bot's at one such delay
        (normalised cross-correlation >= `min_corr`), quieter by `max_loss_db` or more. True also makes that delay
        and loss this call's echo."""
        first, last = int(start / _SLOT_S), self._in_last
        if not 8 <= last - first < _WAVE_SLOTS - self._max_lag - 1:
            return False
        if any(self._in_slot[s % _RING] != s for s in range(first, last + 1)):
            return False
        inbound = np.array([self._in_db[s % _RING] for s in range(first, last + 1)])
        loud = np.flatnonzero(inbound >= max(float(inbound.max()) - 25.0, float(inbound.min()) + _ABOVE_LINE_DB))
        if not len(loud):
            return False  # nothing stands out of the line since `start`: no sound to judge
        begin, end = first + int(loud[0]), first + int(loud[-1])  # the sound
        bot_end = min(self._ref_last, last)
        while bot_end > first - self._max_lag and self._ref_level(bot_end) <= _ACTIVE_DB:
            bot_end -= 1
        if end >= last or end - begin < 2 or not self._min_lag - 3 <= end - bot_end <= self._max_lag + 3:
            return False  # still sounding, too short to tell, or it did not stop with the bot
        # A pause re-asks on every frame while it waits; the sound, once over, is correlated only once.
        key = (begin, end, bot_end, self._ref_version)
        if self._followed is None or self._followed[0] != key:
            self._followed = (key, self._correlate(begin, end, (end - bot_end) * self._slot_n))
        match = self._followed[1]
        if match is None or match[0] < min_corr or match[2] > max_loss_db:
            return False
        self.corr = match[0]
        self.delay_slots = round((self._max_lag * self._slot_n - match[1]) / self._slot_n)
        self.loss_db = match[2]
        self.no_echo, self._quiet_windows = False, 0
        return True

    def _correlate(self, begin: int, end: int, stopped: int) -> tuple[float, int, float] | None:
        """The line's sound over slots [begin, end] against the bot's samples at every echo delay: the best
        normalised cross-correlation, its offset (samples short of `max_lag` slots) and the loss there (dB);
        None for a sound with no energy. Of peaks within `_TIE` of the best (a voice held on one pitch, a tone,
        repeats itself every period), the one nearest `stopped` (samples): the delay the sound's end showed."""
        y = self._wave(self._in_wave, self._in_wave_slot, begin, end)
        x = self._wave(self._bot_wave, self._bot_wave_slot, begin - self._max_lag, end - self._min_lag, bot=True)
        y -= y.mean()
        y_energy = float(np.dot(y, y))
        if y_energy <= 0:
            return None
        size = 1 << (len(x) + len(y)).bit_length()
        # Entry k: x shifted by (max_lag slots - k samples) against y; only whole overlaps ("valid").
        products = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(y, size)), size)[: len(x) - len(y) + 1]
        energy = np.cumsum(np.concatenate([[0.0], x * x]))
        x_energy = energy[len(y) :] - energy[: len(x) - len(y) + 1]
        corr = products / np.sqrt(np.maximum(x_energy, 1e-9) * y_energy)
        near = np.flatnonzero(corr >= float(corr.max()) - _TIE)
        delays = self._max_lag * self._slot_n - near
        k = int(near[np.argmin(np.abs(delays - stopped))])
        return float(corr[k]), k, 10 * math.log10(y_energy / max(float(x_energy[k]), 1e-9))

    def _wave(self, ring: np.ndarray, stamps: np.ndarray, first: int, last: int, *, bot: bool = False) -> np.ndarray:
        """Samples of slots [first, last] from a ring, as floats; zeros where none are kept (for the bot: where it
        played nothing, the line was cleared or held)."""
        slots = np.arange(first, last + 1)
        kept = stamps[slots % _WAVE_SLOTS] == slots
        if bot:
            kept &= np.array([self._ref_slot[s % _RING] == s for s in range(first, last + 1)])
        out = ring[slots % _WAVE_SLOTS].astype(np.float64)
        out[~kept] = 0.0
        return out.reshape(-1)

    def rearm(self) -> None:
        """The bot plays on after a pause on a sound that may have been its echo (the prior was off: no echo had
        shown): the prior applies again until the line shows (once more) that it carries no echo."""
        self.no_echo, self._quiet_windows = False, 0

    @property
    def delay_ms(self) -> float | None:
        return None if self.delay_slots is None else self.delay_slots * 10.0
