"""The offline engine's brain: the prompt file's scripted dialogue, spoken with eSpeak NG, heard with PocketSphinx.

The engine is a separate server that speaks only the OpenAI protocol, so it learns which prompt a call uses the
way the real model does: from the session's ``instructions`` (:class:`DialogueIndex`), re-reading prompt files
when they change, so operators' edits apply to the next response.
"""

from __future__ import annotations

import json
import logging
import re
import weakref
from collections import OrderedDict
from collections.abc import Collection
from pathlib import Path
from typing import Any, Final

from jinja2 import Environment

from agent.audio.codecs import Int16Array
from agent.engine.formats import describe_audio
from agent.engine.replies import Reply, ReplyRequest, ReplySession, ToolCall
from agent.engine.speech.asr import Recognizer, RecognizerError
from agent.engine.speech.tts import CLEAR_VOICE, Speaker
from agent.prompts.library import PromptLibrary
from agent.prompts.loader import Prompt
from agent.prompts.schema import OfflineDialogue, ScriptedAnswer

__all__ = ["DialogueIndex", "ScriptedDialogue", "SpeechReplySource", "guidance_of"]

log = logging.getLogger(__name__)

GENERIC_GREETING: Final = "Hello! How can I help you today?"
GENERIC_GOODBYE: Final = "Thank you for calling. Goodbye!"
GENERIC_HANDOVER: Final = "Let me connect you to a colleague."
GENERIC_DIALOGUE: Final = OfflineDialogue(
    answers=[ScriptedAnswer(keywords=["goodbye", "bye"], reply=GENERIC_GOODBYE, tool="end_call")]
)
"""For sessions whose instructions match no prompt file when there is no usable default prompt either."""

# What response-level instructions ask for (the agent's wording is in agent/protocol/realtime/session_config.py and
# agent/calls/call.py; a real model would follow any wording, these cover the usual ones).
_SAY_EXACTLY: Final = re.compile(r"\bsay(?:ing)?\s+exactly\s+this\b[^:]*:\s*(.+)", re.IGNORECASE | re.DOTALL)
_GREET: Final = re.compile(r"\bgreet", re.IGNORECASE)
_GOODBYE: Final = re.compile(r"\bgood-?\s?bye\b|\bbye\b|\bfarewell\b", re.IGNORECASE)
_HANDOVER: Final = re.compile(r"\btransfer|\bconnecting\b|\bcolleague", re.IGNORECASE)
_RESUME: Final = re.compile(r"\b(?:continue|pick\s+up)\b.*\bleft\s+off\b", re.IGNORECASE | re.DOTALL)
_THEN_GOODBYE: Final = re.compile(r"\s*\bthen\s+say\s+(?:a\s+)?(?:short\s+)?(?:friendly\s+)?good-?\s?bye\b\W*$", re.I)
_LEXER: Final = Environment()  # only to split prompt templates into literal text and tags


def _keyword_pattern(keywords: Collection[str]) -> re.Pattern[str]:
    """Any of the keywords or phrases as whole words: "hi" must not match "this", "that's all" spans spaces."""
    alternatives = (r"\s+".join(map(re.escape, keyword.split())) for keyword in keywords if keyword.strip())
    return re.compile(r"(?<![\w'])(?:" + "|".join(alternatives) + r")(?![\w'])", re.IGNORECASE)


def guidance_of(own: str, session: str) -> str:
    """What a response's instructions ask beyond the session's: all of them when they do not repeat it."""
    if own == session:
        return ""
    if session and session in own:
        return own.replace(session, "", 1).strip()
    return own


def _normalise(text: str) -> str:
    return " ".join(text.replace("\u2019", "'").split())


class ScriptedDialogue:
    """A prompt's ``offline`` section plus its greeting: what the engine says to what it recognised."""

    def __init__(self, offline: OfflineDialogue, greeting: str | None = None) -> None:
        self.greeting = greeting or GENERIC_GREETING
        self.not_understood = offline.not_understood
        self._fallback = offline.fallback
        self._answers = [(_keyword_pattern(a.keywords), a.reply, a.tool) for a in offline.answers]
        self.goodbye = next((a.reply for a in offline.answers if a.tool == "end_call"), GENERIC_GOODBYE)
        """What to say when asked for a goodbye without a caller turn to answer."""
        self.handover = next((a.reply for a in offline.answers if a.tool == "transfer_call"), GENERIC_HANDOVER)

    @classmethod
    def from_prompt(cls, prompt: Prompt) -> ScriptedDialogue:
        return cls(prompt.meta.offline, prompt.meta.greeting)

    def answer(self, heard: str, tools: Collection[str] | None = None) -> tuple[str, str | None]:
        """The reply to ``heard`` and the tool to call after saying it (None: just talk).

        The first answer with a keyword in ``heard`` wins; one whose tool is not in ``tools`` is skipped, as a model
        cannot call a tool the session does not declare (``None`` allows every tool).
        """
        heard = _normalise(heard)
        if not heard:
            return self.not_understood, None
        for pattern, reply, tool in self._answers:
            if tool is not None and tools is not None and tool not in tools:
                continue
            if pattern.search(heard):
                return reply, tool
        return self.fallback(heard), None

    def fallback(self, heard: str) -> str:
        """The echo of what was recognised (``{heard}``), or ``not_understood`` when nothing was."""
        heard = _normalise(heard)
        return self._fallback.replace("{heard}", heard) if heard else self.not_understood


class DialogueIndex:
    """Which prompt file a session uses, told from its instructions, and that prompt's dialogue.

    Instructions arrive rendered (``{{caller}}``, ``{{now}}``, ...), so a session matches the prompt whose template
    text (its literal parts, in order) it contains most of, at least ``MIN_MATCH``; no match gets the default
    prompt's dialogue, or a generic one. Files are read through :class:`agent.prompts.library.PromptLibrary`, which
    re-reads a file when its mtime changes (and keeps serving the last good version of a broken edit); dialogues
    are rebuilt only when a prompt's content hash changes.
    """

    MIN_MATCH: Final = 0.75
    _CACHE_SIZE: Final = 256

    def __init__(self, directory: Path, default: str = "default") -> None:
        self.library = PromptLibrary(directory, default)
        self._hashes: dict[str, str] | None = None
        self._by_hash: dict[str, ScriptedDialogue] = {}
        self._entries: list[tuple[list[str], ScriptedDialogue]] = []
        self._default = ScriptedDialogue(GENERIC_DIALOGUE)
        self._matches: dict[str, ScriptedDialogue] = {}

    def dialogue_for(self, instructions: str) -> ScriptedDialogue:
        self._refresh()
        text = _normalise(instructions)
        found = self._matches.get(text)
        if found is None:
            found = self._match(text)
            if len(self._matches) >= self._CACHE_SIZE:
                self._matches.clear()
            self._matches[text] = found
        return found

    def _match(self, text: str) -> ScriptedDialogue:
        best, best_score = self._default, 0.0
        for chunks, dialogue in self._entries:
            total = sum(map(len, chunks))
            score = _literal_overlap(chunks, text) / total if total else 0.0
            if score >= self.MIN_MATCH and score > best_score:
                best, best_score = dialogue, score
        return best

    def _refresh(self) -> None:
        prompts = {name: p for name, p in self.library.check_all().items() if isinstance(p, Prompt)}
        hashes = {name: p.content_hash for name, p in prompts.items()}
        if hashes == self._hashes:
            return
        by_hash: dict[str, ScriptedDialogue] = {}
        self._entries = []
        self._default = ScriptedDialogue(GENERIC_DIALOGUE)
        for name, prompt in prompts.items():
            dialogue = self._by_hash.get(prompt.content_hash) or ScriptedDialogue.from_prompt(prompt)
            by_hash[prompt.content_hash] = dialogue
            self._entries.append((_literal_chunks(prompt.instructions), dialogue))
            if name == self.library.default:
                self._default = dialogue
        self._hashes, self._by_hash = hashes, by_hash
        self._matches.clear()
        log.info("offline engine: %d prompt(s) in %s", len(prompts), self.library.directory)


def _literal_chunks(template: str) -> list[str]:
    """The fixed text of a prompt template, whitespace-normalised, in order."""
    chunks = (_normalise(value) for _, kind, value in _LEXER.lex(template) if kind == "data")
    return [chunk for chunk in chunks if chunk]


def _literal_overlap(chunks: list[str], text: str) -> int:
    """Characters of ``chunks`` found in ``text`` in order (chunks in branches not taken are skipped)."""
    matched, position = 0, 0
    for chunk in chunks:
        found = text.find(chunk, position)
        if found >= 0:
            matched, position = matched + len(chunk), found + len(chunk)
    return matched


def _last_assistant_text(items: list[dict[str, Any]]) -> str:
    for item in reversed(items):
        if item.get("role") == "assistant":
            return " ".join(str(c.get("text") or c.get("transcript") or "") for c in item.get("content", []))
    return ""


def _rest_of(answer: str, said: str) -> str:
    """What is left of `answer` after the words already `said` (all of it when `said` is not its beginning)."""
    words, spoken = answer.split(), re.findall(r"[\w']+", said.lower())
    plain = [re.sub(r"[^\w']", "", w.lower()) for w in words]
    if not spoken or plain[: len(spoken)] != spoken or len(spoken) >= len(words):
        return answer
    return " ".join(words[len(spoken) :])


def _tool_error(items: list[dict[str, Any]]) -> str | None:
    """The error a just-run tool reported (``function_call_output`` with ``{"error": ...}``), if that is the news."""
    if not items or items[-1].get("type") != "function_call_output":
        return None
    try:
        output = json.loads(str(items[-1].get("output") or ""))
    except ValueError:
        return None
    error = output.get("error") if isinstance(output, dict) else None
    return str(error) if error else None


class SpeechReplySource:
    """A :class:`~agent.engine.ReplySource` that talks: scripted text, synthesised speech.

    ``recognizer=None`` turns ASR off (load tests): caller turns are then "recognised" as a description of their
    duration, which the dialogue echoes. Synthesised replies are cached, since scripted lines repeat on every call.
    """

    def __init__(
        self,
        prompts: DialogueIndex,
        *,
        recognizer: Recognizer | None = None,
        speaker: Speaker | None = None,
        voice: str = CLEAR_VOICE,
        words_per_minute: int = 165,
        cache_size: int = 64,
    ) -> None:
        self.prompts = prompts
        self.recognizer = recognizer
        self.speaker = speaker or Speaker()
        self.voice = voice
        self.words_per_minute = words_per_minute
        self._cache: OrderedDict[tuple[str, int, int], Int16Array] = OrderedDict()
        self._cache_size = cache_size
        self._last_said: weakref.WeakKeyDictionary[ReplySession, str] = weakref.WeakKeyDictionary()

    async def transcribe(self, audio: Int16Array, sample_rate: int) -> str:
        if self.recognizer is None:
            return describe_audio(audio, sample_rate)
        try:
            return await self.recognizer.recognize_async(audio, sample_rate)
        except RecognizerError as exc:  # the call goes on, as with a real model that misheard
            log.warning("offline engine: speech recognition failed: %s", exc)
            return ""

    async def reply(self, request: ReplyRequest) -> Reply:
        # Response-level instructions replace the session's (GA contract), persona included: the prompt is told
        # from the instructions this response runs under, and its one-off guidance is what they add to the
        # session's. A bare override ("Greet the caller") gets the default prompt's dialogue, as a real model
        # would lose the prompt's persona and language.
        own = request.instructions.strip()
        dialogue = self.prompts.dialogue_for(own)
        text, tool = self.choose(dialogue, request, guidance_of(own, request.session_instructions.strip()))
        self._last_said[request.session] = text
        audio = None
        if request.audio_format is not None and request.reply_ms > 0 and text:
            speed = request.session.session_config["audio"]["output"].get("speed") or 1.0
            audio = await self._speak(text, request.audio_format.sample_rate, round(self.words_per_minute * speed))
        calls = [ToolCall(tool, {"reason": f"the caller said: {request.caller_text or ''}"})] if tool else []
        return Reply(transcript=text, audio=audio, tool_calls=calls)

    def choose(self, dialogue: ScriptedDialogue, request: ReplyRequest, guidance: str) -> tuple[str, str | None]:
        """The reply text and its tool: scripted, then what the response's guidance asks, then the caller's turn."""
        if request.transcript is not None:
            return request.transcript, None
        if guidance:
            said = _SAY_EXACTLY.search(guidance)
            if said:
                text = said.group(1).strip()
                then_goodbye = _THEN_GOODBYE.search(text)  # "Say exactly this: <wrap-up>. Then say goodbye."
                if then_goodbye:
                    text = f"{text[: then_goodbye.start()]} {dialogue.goodbye}"
                return text, None
            if _GREET.search(guidance):
                return dialogue.greeting, None
            if _GOODBYE.search(guidance):
                return dialogue.goodbye, None
            if _HANDOVER.search(guidance):
                return dialogue.handover, None
            if _RESUME.search(guidance):  # the line dropped mid-answer: go on from what the history says was said
                last = self._last_said.get(request.session)
                if last is None and request.caller_text is not None:  # a fresh session: answer the turn afresh
                    last = dialogue.answer(request.caller_text, request.tools)[0]
                if last:
                    return _rest_of(last, _last_assistant_text(request.session.items)), None
        if request.caller_waiting and request.caller_text is not None:
            return dialogue.answer(request.caller_text, request.tools)
        if request.trigger == "client" and request.caller_text is None:
            return dialogue.greeting, None  # the model opens the call before the caller spoke
        error = _tool_error(request.session.items)
        if error is not None:
            return f"Sorry. {error} How else can I help?", None
        return dialogue.fallback(request.caller_text or ""), None

    async def _speak(self, text: str, rate: int, words_per_minute: int) -> Int16Array:
        key = (text, rate, words_per_minute)
        audio = self._cache.get(key)
        if audio is None:
            audio = await self.speaker.synthesize_async(text, rate, voice=self.voice, words_per_minute=words_per_minute)
            audio.flags.writeable = False  # shared by every response that says the same thing
            self._cache[key] = audio
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return audio
