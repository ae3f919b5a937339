"""What the caller said while the bot talked, sorted into backchannels ("mm-hmm", "haan", "okay"), stop words
("stop", "wait", "ruko", "नहीं") and everything else, per language.

Transcripts are normalised before matching: NFC, case-folded, punctuation dropped (a hyphen or apostrophe joins,
so "mm-hmm" is "mmhmm"), and every run of a repeated letter counts once ("hmmm", "hmm" and "hm" are one word;
"haaan" is "haan"). Entries may be phrases of up to three words ("theek hai", "hold on"); the longest match wins.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# fmt: off
BACKCHANNELS: dict[str, tuple[str, ...]] = {
    "en": (
        "mm", "mhm", "mm-hmm", "hmm", "uh-huh", "uh huh", "uh", "um", "ah", "oh", "ooh", "okay", "ok", "kay", "yeah",
        "yes", "yep", "yup", "ya", "right", "alright", "all right", "sure", "i see", "got it", "cool", "nice",
        "great", "fine", "good", "go on", "go ahead", "exactly", "true", "really", "wow", "oh okay", "okay okay",
        "thank you", "thanks", "perfect", "understood", "i understand", "makes sense", "correct",
    ),
    "hi": (
        "haan", "han", "haa", "ha", "ji", "haan ji", "ji haan", "haanji", "achha", "acha", "accha", "theek", "thik",
        "theek hai", "thik hai", "theek h", "hmm", "hm", "sahi", "sahi hai", "bilkul", "arre", "oh", "ok", "okay",
        "achha ji", "ji ji", "हाँ", "हां", "हा", "जी", "हाँ जी", "हां जी", "जी हाँ", "जी हां", "अच्छा", "अच्छा जी",
        "ठीक", "ठीक है", "हम्म", "हूँ", "हूं", "सही", "सही है", "बिल्कुल", "ओके", "अरे", "ओह",
    ),
}

STOP_WORDS: dict[str, tuple[str, ...]] = {
    "en": (
        "stop", "wait", "no", "nope", "hold on", "hang on", "one second", "one sec", "one moment", "excuse me",
        "sorry", "pardon", "what", "hello", "listen", "shut up", "enough", "never mind",
    ),
    "hi": (
        "ruko", "ruk", "rukiye", "rukie", "ruk jao", "ruko ruko", "nahi", "nahin", "nai", "na", "suno", "suniye",
        "ek minute", "ek second", "bas", "band karo", "kya", "hello", "sorry", "wait", "stop", "रुको", "रुकिए",
        "रुक", "रुक जाओ", "नहीं", "नही", "ना", "सुनो", "सुनिए", "एक मिनट", "एक सेकंड", "बस", "बंद करो", "क्या",
        "हेलो", "हैलो",
    ),
}

# fmt: on

_JOINERS = re.compile(r"[-'’‐‑]")
_MAX_PHRASE = 3


def normalise(text: str) -> list[str]:
    """The transcript as comparable words: NFC, case-folded, no punctuation, repeated letters once."""
    text = _JOINERS.sub("", unicodedata.normalize("NFC", text).casefold())
    kept = "".join(_keep(ch) for ch in text)
    return [_squeeze(word) for word in kept.split()]


def _keep(ch: str) -> str:
    category = unicodedata.category(ch)
    if category == "Cf":
        return ""  # zero-width joiners inside an Indic word
    return " " if category[0] in "PSZC" else ch


def _squeeze(word: str) -> str:
    out: list[str] = []
    for ch in word:
        if not out or out[-1] != ch:
            out.append(ch)
    return "".join(out)


def _phrase(entry: str) -> tuple[str, ...]:
    return tuple(normalise(entry))


@dataclass(frozen=True)
class Heard:
    """A transcript sorted: stop words, backchannel words and other ("content") words."""

    words: tuple[str, ...]
    stop: bool
    backchannel: int
    content: int

    @property
    def empty(self) -> bool:
        return not self.words


class WordLists:
    def __init__(self, backchannels: Iterable[str], stop_words: Iterable[str]) -> None:
        self._backchannels = {p for p in map(_phrase, backchannels) if p}
        self._stops = {p for p in map(_phrase, stop_words) if p}

    @classmethod
    def for_languages(
        cls,
        languages: Iterable[str],
        backchannels: Mapping[str, list[str]] | None = None,
        stop_words: Mapping[str, list[str]] | None = None,
    ) -> WordLists:
        """The built-in lists of these languages ("hi-IN" uses "hi"), each replaced by an override if given."""
        back: list[str] = []
        stops: list[str] = []
        for language in dict.fromkeys(code.split("-")[0].lower() for code in languages):
            back += (backchannels or {}).get(language, list(BACKCHANNELS.get(language, ())))
            stops += (stop_words or {}).get(language, list(STOP_WORDS.get(language, ())))
        return cls(back, stops)

    def hear(self, transcript: str) -> Heard:
        words = normalise(transcript)
        stop, backchannel, content, i = False, 0, 0, 0
        while i < len(words):
            for n in range(min(_MAX_PHRASE, len(words) - i), 0, -1):
                span = tuple(words[i : i + n])
                if span in self._stops:
                    stop = True
                    break
                if span in self._backchannels:
                    backchannel += n
                    break
            else:
                n = 1
                content += 1
            i += n
        return Heard(tuple(words), stop, backchannel, content)
