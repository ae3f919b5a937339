"""The echo model on its own: an echo that begins mid-call, after the line had shown none."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import numpy as np
import pytest

from agent.audio.codecs import Int16Array
from agent.audio.echo import EchoEstimator

RATE = 8000
FRAME = RATE // 50
T0 = 100.0  # playout clock at the first frame


def speechlike(seconds: float, rng: np.random.Generator, level: float = 0.3) -> np.ndarray:
    """Noise shaped into syllables (120-300 ms each, 20-80 ms apart): an envelope with speech's rhythm."""
    n = int(seconds * RATE)
    env = np.zeros(n)
    at = 0
    while at < n:
        length = int(rng.uniform(0.12, 0.3) * RATE)
        env[at : at + length] = rng.uniform(0.3, 1.0) * np.hanning(length)[: n - at]
        at += length + int(rng.uniform(0.02, 0.08) * RATE)
    return env * rng.normal(0, level * 32768 / 3, n)


def line_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0, 30, n)  # about -60 dBFS


def pcm(x: np.ndarray) -> Int16Array:
    out: Int16Array = np.clip(x, -32768, 32767).astype(np.int16)
    return out


def delayed(x: np.ndarray, delay_ms: float, loss_db: float, start: int, stop: int) -> np.ndarray:
    """`x` come back `delay_ms` later and `loss_db` quieter, for what `x` played in [start, stop)."""
    d = int(delay_ms * RATE / 1000)
    out = np.zeros(len(x) + d)
    out[start + d : stop + d] = x[start:stop] * 10 ** (loss_db / 20)
    return out[: len(x)]


class Bot:
    """The playout: the bot's audio scheduled 200 ms ahead, 20 ms at a time, until it is held at `held`."""

    def __init__(self, est: EchoEstimator, audio: np.ndarray, held: int | None = None) -> None:
        self.est, self.audio, self.held = est, audio, len(audio) if held is None else held
        self.scheduled = 0

    def until(self, sample: int) -> None:
        while self.scheduled < min(sample + RATE // 5, self.held):
            chunk = self.audio[self.scheduled : min(self.scheduled + FRAME, self.held)]
            self.est.played(pcm(chunk), T0 + self.scheduled / RATE)
            self.scheduled += len(chunk)


def feed_line(bot: Bot, line: np.ndarray, frames: range, *, late_s: float = 0.004) -> list[bool]:
    """Caller frames as they arrive (a little after their time); what the estimator said of each."""
    said = []
    for i in frames:
        bot.until(i * FRAME)
        arrival = T0 + (i + 1) * FRAME / RATE + late_s
        said.append(bot.est.inbound(pcm(line[i * FRAME : (i + 1) * FRAME]), arrival, i * FRAME))
    return said


def test_an_echo_that_begins_mid_call_is_learned_once_the_prior_is_rearmed() -> None:
    """The line shows no echo for 4 s of bot talk (the prior goes off); then the caller's speakerphone sends the bot
    back, 18 dB down, 120 ms late; the pause on it re-arms the prior, which holds until the delay is learned."""
    rng = np.random.default_rng(1)
    audio = speechlike(8.0, rng)
    est = EchoEstimator(RATE)
    bot = Bot(est, audio)
    quiet = line_noise(len(audio), rng)
    begins = 4 * RATE
    feed_line(bot, quiet, range(0, begins // FRAME))
    assert est.no_echo  # the prior went off: the line showed no echo while the bot talked
    line = quiet + delayed(audio, 120, -18.0, begins, len(audio))
    feed_line(bot, line, range(begins // FRAME, begins // FRAME + 15))
    est.rearm()  # the pause on that sound ended: it may have been the echo
    prior_off_again = []
    for i in range(begins // FRAME + 15, len(audio) // FRAME):
        feed_line(bot, line, range(i, i + 1))
        prior_off_again.append(est.no_echo and est.delay_slots is None)
    assert not any(prior_off_again)
    assert est.delay_ms is not None and abs(est.delay_ms - 120) <= 20
    assert est.loss_db is not None and abs(est.loss_db + 18) <= 4


def pause_on_sound(
    rng: np.random.Generator,
    sound: np.ndarray | None,
    *,
    delay_ms: int = 0,
    loss_db: float = 0.0,
    heard_s: float = 0.15,
) -> tuple[EchoEstimator, float]:
    """The bot talks, the line has shown no echo; at 4 s a sound begins on the line (`sound`, or the bot's own
    audio from then on, `delay_ms` late and `loss_db` down), and `heard_s` later the bot is held. Returns the
    estimator fed until 60 ms after the sound's end, and when it began."""
    audio = speechlike(6.0, rng)
    begins = 4 * RATE
    held = begins + int(heard_s * RATE)
    # The bot is mid-syllable when the sound begins (a sound the onset detector pauses on is 60-100 ms long).
    span = held - begins + RATE // 5
    wobble = 0.7 + 0.3 * np.sin(2 * np.pi * 5 * np.arange(span) / RATE)
    audio[begins - RATE // 10 : held + RATE // 10] = rng.normal(0, 0.3 * 32768 / 3, span) * wobble
    est = EchoEstimator(RATE)
    bot = Bot(est, audio, held)
    line = line_noise(len(audio), rng)
    feed_line(bot, line, range(0, begins // FRAME))
    assert est.no_echo
    if sound is None:
        sound = delayed(audio, delay_ms, loss_db, begins, held)[begins : held + int(delay_ms * RATE / 1000)]
    line[begins : begins + len(sound)] += sound
    est.cut(T0 + held / RATE)
    feed_line(bot, line, range(begins // FRAME, (begins + len(sound) + int(0.06 * RATE)) // FRAME))
    return est, T0 + begins / RATE


@pytest.mark.parametrize("delay_ms,loss_db", [(50, -17.0), (120, -20.0), (245, -18.0), (180, -26.0)])
def test_a_sound_that_stopped_one_echo_delay_after_the_bot_is_its_echo(delay_ms: int, loss_db: float) -> None:
    for seed in range(5):
        est, began = pause_on_sound(np.random.default_rng(seed), None, delay_ms=delay_ms, loss_db=loss_db)
        assert est.followed_bot(began), seed
        assert est.delay_ms is not None and abs(est.delay_ms - delay_ms) <= 20
        assert est.loss_db is not None and abs(est.loss_db - loss_db) <= 5
        assert not est.no_echo


@pytest.mark.parametrize("after_hold_ms", [60, 150, 250])
def test_the_callers_own_word_ending_just_after_the_bot_is_not_echo(after_hold_ms: int) -> None:
    """The worst case for the rule: the caller's word, as quiet as an echo, ends exactly when an echo would."""
    misses = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        word = speechlike(0.15 + after_hold_ms / 1000, rng, level=0.05)
        est, began = pause_on_sound(rng, word)
        misses += est.followed_bot(began)
    assert misses == 0


def test_a_sound_still_going_is_not_judged() -> None:
    """The echo, then the caller right after it: the sound is not over, so it is not judged yet."""
    rng = np.random.default_rng(3)
    caller = np.concatenate([np.zeros(int(0.25 * RATE)), speechlike(1.5, rng, 0.05)])
    audio = speechlike(6.0, rng)
    begins, held = 4 * RATE, 4 * RATE + int(0.15 * RATE)
    est = EchoEstimator(RATE)
    bot = Bot(est, audio, held)
    line = line_noise(len(audio), rng)
    feed_line(bot, line, range(0, begins // FRAME))
    line[begins:] += delayed(audio, 100, -18.0, begins, held)[begins:]
    line[begins : begins + len(caller)] += caller
    est.cut(T0 + held / RATE)
    feed_line(bot, line, range(begins // FRAME, (begins + RATE) // FRAME))
    assert not est.followed_bot(T0 + begins / RATE)


def test_a_line_with_nothing_on_it_is_not_echo() -> None:
    """A pause whose sound is not on the line any more (only the line's own noise since `start`): nothing stands
    out of it, so there is nothing to judge (this once raised, and took the call down)."""
    rng = np.random.default_rng(4)
    audio = speechlike(6.0, rng)
    begins, held = 4 * RATE, 4 * RATE + int(0.15 * RATE)
    est = EchoEstimator(RATE)
    bot = Bot(est, audio, held)
    line = np.full(len(audio), 20.0)  # a flat line: every slot the same level
    feed_line(bot, line, range(0, (begins + RATE // 2) // FRAME))
    est.cut(T0 + held / RATE)
    assert not est.followed_bot(T0 + begins / RATE)


def test_a_sound_over_is_correlated_once_however_often_it_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pause re-asks on every frame while it waits; the answer stays, the work is done once per sound."""
    est, began = pause_on_sound(np.random.default_rng(0), None, delay_ms=120, loss_db=-20.0)
    calls = []
    correlate = est._correlate

    def counted(begin: int, end: int, stopped: int) -> tuple[float, int, float] | None:
        calls.append((begin, end))
        return correlate(begin, end, stopped)

    monkeypatch.setattr(est, "_correlate", counted)
    assert est.followed_bot(began) and est.followed_bot(began)
    quiet = pcm(line_noise(FRAME, np.random.default_rng(9)))
    after = int(((est._in_last + 1) * 0.01 - T0) / (FRAME / RATE))  # the frame after the last one fed
    for i in range(after, after + 3):  # more quiet frames: the same sound, still over
        est.inbound(quiet, T0 + (i + 1) * FRAME / RATE + 0.004, i * FRAME)
        assert est.followed_bot(began)
    assert len(calls) == 1
    est.cut(began)  # the bot's kept audio changed: asked afresh
    est.followed_bot(began)
    assert len(calls) == 2


@pytest.mark.parametrize("delay_ms", [60, 150, 240])
def test_a_tones_echo_takes_the_delay_its_end_shows(delay_ms: int) -> None:
    """A tone (or a voice held on one pitch) repeats itself every period: its samples match the bot's at many
    delays equally well. The one taken is where the sound's end put it (it stopped one echo delay after the bot),
    not whichever peak numerical noise puts first (300 ms, once: the next echo was not recognised)."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        audio = 0.3 * 32768 * np.sin(2 * np.pi * 440 * np.arange(6 * RATE) / RATE)
        begins, held = 4 * RATE, 4 * RATE + int(0.15 * RATE)
        est = EchoEstimator(RATE)
        bot = Bot(est, audio, held)
        line = line_noise(len(audio), rng)
        feed_line(bot, line, range(0, begins // FRAME))
        line += delayed(audio, delay_ms, -18.0, begins, held)
        est.cut(T0 + held / RATE)
        feed_line(bot, line, range(begins // FRAME, (held + int((delay_ms + 60) * RATE / 1000)) // FRAME))
        assert est.followed_bot(T0 + begins / RATE), seed
        assert est.delay_ms is not None and abs(est.delay_ms - delay_ms) <= 20, (seed, est.delay_ms)


def echo_on_a_late_line(
    seed: int,
    arrival: Callable[[int], float],
    frames: Iterable[int] | None = None,
    sent: Callable[[int], int] = lambda i: i,
) -> bool:
    """The bot talks; at 4 s its echo (150 ms late, 18 dB down) is on the line, and the bot is held 150 ms later.
    Frame `i` of the line comes at `arrival(i)` as the stream's frame `sent(i)` (all of them until 60 ms after the
    echo, or `frames`); whether the estimator then takes the sound for the bot's echo."""
    rng = np.random.default_rng(seed)
    audio = speechlike(6.0, rng)
    begins, held, delay_ms = 4 * RATE, 4 * RATE + int(0.15 * RATE), 150
    est = EchoEstimator(RATE)
    bot = Bot(est, audio, held)
    line = line_noise(len(audio), rng) + delayed(audio, delay_ms, -18.0, begins, held)
    for i in range((held + int((delay_ms + 60) * RATE / 1000)) // FRAME) if frames is None else frames:
        bot.until(i * FRAME)
        est.inbound(pcm(line[i * FRAME : (i + 1) * FRAME]), arrival(i), sent(i) * FRAME)
    return est.followed_bot(T0 + begins / RATE)


def on_time(i: int) -> float:
    return T0 + (i + 1) * FRAME / RATE + 0.004


def jittered(late: np.ndarray, i: int) -> float:
    return T0 + (i + 1) * FRAME / RATE + float(late[i])


@pytest.mark.parametrize("stall_ms", [120, 200])
def test_an_echo_whose_frames_came_in_a_burst_is_still_its_echo(stall_ms: int) -> None:
    """Our own event loop stalled while the echo was on the line (a busy host): its frames came late, then all at
    once. The stream was dated afresh after such a gap, which once piled the burst into one slot, and an echo with
    a hole in it was never judged (the words it carried then cut the bot: a CI flake under load)."""
    stalled = range(4 * RATE // FRAME + 5, 4 * RATE // FRAME + 5 + stall_ms // 20)
    for seed in range(4):
        assert echo_on_a_late_line(seed, lambda i: on_time(stalled.stop if i in stalled else i)), seed


def test_a_stream_that_broke_off_is_dated_afresh() -> None:
    """The carrier sent nothing for a second (a reconnect): the frames after it are a second later than the
    stream's samples say. The stream is dated again from them, and an echo after the break is still its echo."""
    broke, lost = 50, 50  # frames 50-99 never came
    last = (4 * RATE + int(0.36 * RATE)) // FRAME
    frames = [*range(broke), *range(broke + lost, last)]
    assert echo_on_a_late_line(0, on_time, frames, sent=lambda i: i if i < broke else i - lost)


def test_frames_with_jitter_are_dated_without_holes() -> None:
    """Each frame comes 8.5-16.5 ms late, which dates the stream near a slot's edge. The dating rides on that
    jitter (it creeps later, then goes back to an early frame's), which once skipped a slot now and then: an echo
    with such a hole in it was not judged (a CI flake under load)."""
    rng = np.random.default_rng(11)
    est = EchoEstimator(RATE)
    line = line_noise(4 * RATE, rng)
    for i in range(len(line) // FRAME):
        late = rng.uniform(0.0085, 0.0165)
        est.inbound(pcm(line[i * FRAME : (i + 1) * FRAME]), T0 + (i + 1) * FRAME / RATE + late, i * FRAME)
    slots = range(est._in_last - 390, est._in_last + 1)
    assert [s for s in slots if est._in_slot[s % 1024] != s] == []
    for seed in range(4):  # and an echo among such frames is its echo
        jitter = np.random.default_rng(100 + seed).uniform(0.0085, 0.0165, 1000)
        assert echo_on_a_late_line(seed, partial(jittered, jitter)), seed
