"""The caller's speech onset on the line itself: loud enough, above the line's own noise, for long enough."""

from __future__ import annotations

import numpy as np

from agent.audio.codecs import Int16Array
from agent.audio.speech_onset import SpeechOnset

RATE = 8000
FRAME = RATE // 50  # 20 ms


def frames(dbfs: float, ms: int, seed: int = 1) -> list[Int16Array]:
    """White noise at a given level, cut into 20 ms frames (digital silence for -inf)."""
    n = RATE * ms // 1000
    if dbfs == -np.inf:
        audio = np.zeros(n)
    else:
        audio = np.random.default_rng(seed).standard_normal(n) * 32768 * 10 ** (dbfs / 20)
    pcm = np.clip(audio, -32768, 32767).astype(np.int16)
    return [pcm[i : i + FRAME] for i in range(0, n, FRAME)]


def fired_at(detector: SpeechOnset, signal: list[Int16Array]) -> list[int]:
    return [i for i, frame in enumerate(signal) if detector.feed(frame, RATE)]


def test_speech_after_silence_fires_once_after_onset_ms() -> None:
    onset = SpeechOnset(onset_ms=100)
    signal = frames(-np.inf, 400) + frames(-20, 600) + frames(-np.inf, 200) + frames(-20, 300)
    # 20 silent frames, then the 5th loud one (100 ms); after 30 loud and 10 silent, the 5th loud one again.
    assert fired_at(onset, signal) == [24, 64]


def test_clicks_shorter_than_the_onset_do_not_fire() -> None:
    onset = SpeechOnset(onset_ms=100)
    signal = (frames(-np.inf, 200) + frames(-15, 60)) * 5
    assert fired_at(onset, signal) == []


def test_a_noisy_line_raises_the_bar_and_quiet_sounds_never_fire() -> None:
    onset = SpeechOnset(onset_ms=100)
    noisy = frames(-32, 3000)  # louder than the absolute minimum (-38 dBFS) all along
    assert fired_at(onset, noisy) == []
    # Speech must stand 15 dB above that noise: -25 dBFS does not, -10 dBFS does.
    assert fired_at(onset, frames(-25, 500, seed=2)) == []
    assert fired_at(onset, frames(-10, 500, seed=3)) == [4]


def test_the_floor_follows_the_line_down_at_once() -> None:
    onset = SpeechOnset(onset_ms=100)
    fired_at(onset, frames(-30, 1000))
    fired_at(onset, frames(-55, 100, seed=4))
    assert onset.floor_db is not None and onset.floor_db < -50
    assert fired_at(onset, frames(-30, 200, seed=5)) == [4]  # the earlier noise level is now speech-loud


def vowel(ms: int, dbfs: float = -21.0, f0: float = 140.0, seed: int = 6) -> list[Int16Array]:
    """A voiced sound: harmonics of `f0` with a little noise, cut into 20 ms frames."""
    n = RATE * ms // 1000
    t = np.arange(n) / RATE
    audio = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))
    audio = audio + 0.05 * np.random.default_rng(seed).standard_normal(n)
    audio = audio / np.sqrt(np.mean(audio**2)) * 32768 * 10 ** (dbfs / 20)
    pcm = np.clip(audio, -32768, 32767).astype(np.int16)
    return [pcm[i : i + FRAME] for i in range(0, n, FRAME)]


def test_voiced_speech_fires_after_60_ms_noise_only_after_onset_ms() -> None:
    quiet = frames(-58, 400)
    assert fired_at(SpeechOnset(onset_ms=100), quiet + vowel(300)) == [20 + 2]  # its third frame: 60 ms
    assert fired_at(SpeechOnset(onset_ms=100), quiet + frames(-21, 300, seed=7)) == [20 + 4]  # a cough: 100 ms


def test_a_short_dip_inside_a_word_does_not_restart_it() -> None:
    onset = SpeechOnset(onset_ms=100)
    # "ex-cuse": 40 ms of sound, a 40 ms closure, then more: one sound, declared on its 3rd loud frame.
    signal = frames(-58, 400) + vowel(40) + frames(-58, 40, seed=8) + vowel(200, seed=9)
    assert fired_at(onset, signal) == [20 + 4]
    assert onset.sound_ms == 240 and onset.voiced_ms > 0


def test_the_detector_keeps_the_sound_and_the_quiet_after_it() -> None:
    onset = SpeechOnset(onset_ms=100)
    fired_at(onset, frames(-58, 400) + frames(-15, 240, seed=10) + frames(-58, 120, seed=11))
    assert onset.sound_ms == 240 and onset.voiced_ms == 0 and onset.quiet_ms == 120  # a cough, over


def test_a_cough_that_turns_into_words_fires_again() -> None:
    onset = SpeechOnset(onset_ms=100)
    signal = frames(-58, 400) + frames(-15, 200, seed=12) + vowel(200)
    # the cough at 100 ms; the voice on its 3rd frame (the first one's 40 ms window still straddles the cough)
    assert fired_at(onset, signal) == [20 + 4, 20 + 10 + 2]
