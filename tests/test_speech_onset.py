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
