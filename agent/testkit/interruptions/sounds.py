"""What the caller and the bot say in the interruption bench, and when the caller's events happen.

Caller speech and bot replies are eSpeak NG (:mod:`agent.engine.speech.tts`) at 8 kHz, trimmed to the voice and set
to telephone level (about -21 dBFS RMS); coughs, a rustle and a thud are shaped noise. Every caller sound is also in
the *manifest* the engine transcribes from: a committed caller turn is matched against it by normalised
cross-correlation, so transcripts are scripted per utterance (what an ideal ASR would hear: the words for speech,
nothing for a cough), not guessed by a recogniser.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Final, Literal

import numpy as np

from agent.audio.codecs import Int16Array

Kind = Literal["real", "backchannel", "cough", "echo"]
KINDS: Final[tuple[Kind, ...]] = ("real", "backchannel", "cough", "echo")
FALSE_KINDS: Final[tuple[Kind, ...]] = ("backchannel", "cough", "echo")
RATE: Final = 8000
SPEECH_RMS: Final = 3000.0  # about -21 dBFS, what eSpeak gives and a phone line carries
LINE_NOISE_RMS: Final = 40.0  # the caller's line between utterances (-58 dBFS): far below any VAD

GREETING: Final = "Hello, thanks for calling the clinic. How can I help?"
QUESTIONS: Final = (
    "What times are free on Tuesday?",
    "How much is the basic check up?",
    "Where exactly is the clinic?",
    "What do I need to bring?",
)
ANSWERS: Final = (
    "On Tuesday we have openings at nine thirty, eleven fifteen and two o clock, and the doctor can also see you "
    "on Wednesday morning if that suits you better.",
    "The basic check up costs forty five dollars, which includes the blood pressure test and a short talk with "
    "the nurse, and most insurance plans cover it.",
    "We are on the corner of Main Street and Fifth Avenue, right next to the pharmacy, and there is free parking "
    "behind the building.",
    "Please bring your insurance card, a photo ID and a list of the medicines you take, and try to arrive ten "
    "minutes early to fill in the forms.",
)
ACKS: Final = ("Sure, go ahead.", "Okay.", "Of course.", "Sorry, go on.")

# (text, voice, words per minute): real interruptions, from one word to a long sentence.
REAL: Final = (
    ("wait", "en-us", 140),
    ("wait, wait", "en-us", 170),
    ("no, stop, I meant Tuesday", "en-us", 175),
    ("hold on a second", "en-us", 170),
    ("sorry, can you repeat the price?", "en-us", 175),
    ("actually I need to change my booking to next Thursday afternoon because I am travelling", "en-us", 175),
    ("excuse me, that is not what I asked", "en-us", 175),
    ("no no, the other branch, the one near the station", "en-us", 175),
    # A backchannel, a breath (160 ms), then the turn: the words of "okay" alone must not resume the bot.
    ("okay, but I wanted Thursday", "en-us", 175),
)
# Backchannels, 250-600 ms: the caller is listening, not taking the turn.
BACKCHANNELS: Final = (
    ("mm-hmm", "en-us", 190),
    ("okay", "en-us", 170),
    ("हाँ", "hi", 150),  # "haan"
    ("right", "en-us", 160),
    ("uh-huh", "en-us", 200),
    ("yeah", "en-us", 150),
    ("I see", "en-us", 180),
    ("haan", "en-us", 190),
)
# Coughs and noise bursts: (name, ms).
COUGHS: Final = (
    ("cough", 220),
    ("cough", 380),
    ("double cough", 520),
    ("rustle", 650),
    ("thud", 150),
    ("cough", 460),
)


@dataclass(frozen=True)
class Sound:
    """One caller sound: ``text`` is what an ideal recogniser hears ("" for a cough)."""

    name: str
    kind: Kind | Literal["question"]
    text: str
    pcm: Int16Array = field(repr=False, compare=False)

    @property
    def ms(self) -> float:
        return len(self.pcm) * 1000 / RATE


@dataclass(frozen=True)
class Event:
    """Something the caller does while the bot is ``at_ms`` into an answer. Echo has no sound of its own: the
    line feeds the bot's audio back, ``level_db`` below it and ``delay_ms`` late, for ``echo_ms``."""

    index: int
    kind: Kind
    sound: str  # a manifest name; for echo a description
    at_ms: float
    delay_ms: float = 0.0
    level_db: float = 0.0
    echo_ms: float = 0.0
    sound_ms: float = 0.0  # how long the caller's sound lasts (0 for echo: the bot's own voice, no end of its own)


def _trim(samples: Int16Array, rel: float = 0.02) -> Int16Array:
    loud = np.nonzero(np.abs(samples.astype(np.int32)) > rel * max(1, int(np.abs(samples.astype(np.int32)).max())))
    if not len(loud[0]):
        return samples
    return samples[loud[0][0] : loud[0][-1] + 1]


def _level(samples: np.typing.NDArray[np.float64], rms: float) -> Int16Array:
    current = float(np.sqrt(np.mean(samples * samples))) or 1.0
    return np.clip(samples * (rms / current), -32767, 32767).astype(np.int16)


@cache
def speech(text: str, voice: str = "en-us", wpm: int = 165, rate: int = RATE) -> Int16Array:
    """eSpeak NG speech at telephone level, without the silence eSpeak puts around it."""
    from agent.engine.speech.tts import synthesize  # the optional speech extra

    raw = _trim(synthesize(text, rate, voice=voice, words_per_minute=wpm))
    return _level(raw.astype(np.float64), SPEECH_RMS)


def _shaped_noise(rng: np.random.Generator, ms: float, smooth: int) -> np.typing.NDArray[np.float64]:
    n = round(ms * RATE / 1000)
    white = rng.normal(size=n + smooth)
    kernel = np.ones(smooth) / smooth
    low = np.convolve(white, kernel, mode="same")[:n] if smooth > 1 else white[:n]
    out: np.typing.NDArray[np.float64] = low - 0.6 * np.concatenate([[0.0], low[:-1]])  # tilt: less rumble
    return out


def _burst(rng: np.random.Generator, ms: float, attack_ms: float, smooth: int) -> np.typing.NDArray[np.float64]:
    noise = _shaped_noise(rng, ms, smooth)
    t = np.arange(len(noise)) / RATE * 1000
    envelope = np.minimum(1.0, t / attack_ms) * np.exp(-t / (ms / 2.5))
    out: np.typing.NDArray[np.float64] = noise * envelope
    return out


def cough(name: str, ms: float, seed: int) -> Int16Array:
    """A cough (a sharp burst that dies away), a double cough, a rustle (long, softer) or a thud (short, low)."""
    rng = np.random.default_rng(seed)
    if name == "double cough":
        first, gap = _burst(rng, ms * 0.4, 8, 3), np.zeros(round(0.12 * ms * RATE / 1000))
        audio = np.concatenate([first, gap, 0.8 * _burst(rng, ms - 0.52 * ms, 8, 3)])
        return _level(audio, 4500)
    if name == "rustle":
        audio = _shaped_noise(rng, ms, 2) * np.hanning(round(ms * RATE / 1000))
        return _level(audio, 1600)
    if name == "thud":
        return _level(_burst(rng, ms, 3, 12), 6000)
    return _level(_burst(rng, ms, 10, 3), 4500)


def line_noise(rng: np.random.Generator, seconds: float) -> Int16Array:
    """The caller's line: low broadband noise, different for every call (so every frame can be found again)."""
    return _level(_shaped_noise(rng, seconds * 1000, 2), LINE_NOISE_RMS)


@cache
def caller_sounds() -> dict[str, Sound]:
    """Every sound a caller makes, by name (the manifest): questions, interruptions, backchannels, coughs."""
    sounds: list[Sound] = [Sound(f"question: {q}", "question", q, speech(q, "en-us", 175)) for q in QUESTIONS]
    sounds += [Sound(f"real: {t}", "real", t, speech(t, v, w)) for t, v, w in REAL]
    sounds += [Sound(f"backchannel: {t}", "backchannel", t, speech(t, v, w)) for t, v, w in BACKCHANNELS]
    sounds += [
        Sound(f"{name} {ms} ms #{i}", "cough", "", cough(name, ms, seed=1000 + i))
        for i, (name, ms) in enumerate(COUGHS)
    ]
    return {s.name: s for s in sounds}


def save_manifest(path: Path) -> None:
    sounds = list(caller_sounds().values())
    np.savez(
        path,
        names=np.array([s.name for s in sounds]),
        texts=np.array([s.text for s in sounds]),
        lengths=np.array([len(s.pcm) for s in sounds]),
        pcm=np.concatenate([s.pcm for s in sounds]),
    )


def load_manifest(path: Path) -> list[tuple[str, Int16Array]]:
    """(text, samples at 8 kHz) for every caller sound."""
    data = np.load(path)
    out: list[tuple[str, Int16Array]] = []
    start = 0
    for text, length in zip(data["texts"], data["lengths"], strict=True):
        out.append((str(text), data["pcm"][start : start + int(length)].astype(np.int16)))
        start += int(length)
    return out


def plan_events(counts: dict[Kind, int], seed: int) -> list[Event]:
    """``counts[kind]`` events of each kind, shuffled; each lands 1.2-2.6 s into an answer (answers last ~7 s)."""
    rng = random.Random(seed)
    sounds = caller_sounds()
    pools: dict[Kind, list[str]] = {
        "real": [f"real: {t}" for t, _, _ in REAL],
        "backchannel": [f"backchannel: {t}" for t, _, _ in BACKCHANNELS],
        "cough": [n for n, s in sounds.items() if s.kind == "cough"],
    }
    events: list[Event] = []
    for kind in KINDS:
        for i in range(counts.get(kind, 0)):
            at_ms = rng.uniform(1200, 2600)
            if kind == "echo":
                delay, level = rng.uniform(40, 250), rng.uniform(-30, -15)
                name = f"echo {level:.0f} dB, {delay:.0f} ms late"
                events.append(Event(0, kind, name, at_ms, delay_ms=delay, level_db=level, echo_ms=3000))
            else:
                name = pools[kind][i % len(pools[kind])]
                events.append(Event(0, kind, name, at_ms, sound_ms=sounds[name].ms))
    rng.shuffle(events)
    return [dataclasses.replace(e, index=i) for i, e in enumerate(events)]
