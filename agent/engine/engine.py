"""The offline Realtime engine: the local GA protocol server with a voice, for calls without an OpenAI key.

``speech`` mode answers from the prompt file's scripted dialogue in synthesised speech and recognises callers with
PocketSphinx (``asr=False`` skips recognition, the costly part, for load tests); ``tone`` mode replies with sine
tones, the cheapest option for benchmarks. First-audio latency and streaming speed mimic the real service.

Speech needs the optional ``sim`` extra (eSpeak NG, PocketSphinx). Without it the engine still serves: it replies
with tones (and without PocketSphinx alone, it speaks but does not recognise callers), saying so in one log line.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.engine.replies import RealtimeSimConfig, ReplySource
from agent.engine.server import RealtimeServer
from agent.engine.speech import SIM_EXTRA_HINT, missing_packages
from agent.engine.speech.asr import shared_recognizer
from agent.engine.speech.dialogue import DialogueIndex, SpeechReplySource
from agent.engine.speech.tts import CLEAR_VOICE

__all__ = ["EngineOptions", "build_engine", "build_reply_source", "run_engine"]

log = logging.getLogger(__name__)


@dataclass
class EngineOptions:
    """How the engine behaves; the defaults are what ``voice-agent realtime-sim`` and the embedded engine use."""

    mode: Literal["speech", "tone"] = "speech"
    asr: bool = True
    """Recognise caller speech (speech mode only); off, transcripts are "caller audio N ms"."""
    prompts_dir: Path = Path("prompts")
    default_prompt: str = "default"
    """Whose dialogue answers sessions whose instructions match no prompt file."""
    first_audio_delay_ms: int = 300
    """``response.created`` -> first audio delta; the real service takes about 0.3-1 s."""
    speed: float = 2.0
    """Audio is streamed this many times faster than real time (0 = as fast as possible)."""
    voice: str = CLEAR_VOICE
    """eSpeak NG voice of the replies."""
    host: str = "127.0.0.1"
    port: int = 0


def build_reply_source(options: EngineOptions) -> ReplySource | None:
    """The reply source for ``options``; None means the server's default tone replies."""
    if options.mode == "tone":
        return None
    absent = missing_packages("espeakng_loader")
    if absent:
        log.warning(
            "offline engine: replying with tones, not speech: %s is not installed (%s)", absent[0], SIM_EXTRA_HINT
        )
        return None
    recognizer = None
    if options.asr and missing_packages("pocketsphinx"):
        log.warning(
            "offline engine: callers are not recognised (transcripts are placeholders): pocketsphinx is not "
            "installed (%s)",
            SIM_EXTRA_HINT,
        )
    elif options.asr:
        recognizer = shared_recognizer()
        recognizer.warm_in_background()  # the first caller turn should not wait a second for the model to load
    return SpeechReplySource(
        DialogueIndex(options.prompts_dir, options.default_prompt), recognizer=recognizer, voice=options.voice
    )


def build_engine(options: EngineOptions | None = None) -> RealtimeServer:
    """An unstarted server (``await server.start()`` or ``async with``) that answers as ``options`` say."""
    options = options or EngineOptions()
    config = RealtimeSimConfig(
        speed=options.speed,
        first_audio_delay_ms=options.first_audio_delay_ms,
        reply_source=build_reply_source(options),
    )
    return RealtimeServer(config, host=options.host, port=options.port)


async def run_engine(options: EngineOptions) -> None:
    """Serve until cancelled (Ctrl-C), logging where the agent should point ``OPENAI_BASE_URL``."""
    async with build_engine(options) as server:
        source = server.config.reply_source
        if not isinstance(source, SpeechReplySource):
            detail = "tone replies"
        else:
            detail = f"speech replies, ASR {'on' if source.recognizer is not None else 'off'}"
        log.info(
            "offline realtime engine (%s) listening on %s; use OPENAI_BASE_URL=%s",
            detail,
            server.ws_base_url + "/realtime",
            server.http_base_url,
        )
        await asyncio.Event().wait()
