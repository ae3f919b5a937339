"""The offline engine's voice: eSpeak NG speech, PocketSphinx recognition, the prompt's scripted dialogue.

Recognition of synthetic speech is imperfect (and eSpeak's output varies a little from call to call), so these
tests measure word recall with margins found by repeated runs rather than expecting exact transcripts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pytest
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection

from agent.audio.codecs import Int16Array, mulaw_to_pcm16, pcm16_to_mulaw
from agent.audio.formats import MediaFormat
from agent.engine import RealtimeServer, ReplyRequest, SimSession
from agent.engine.engine import EngineOptions, build_engine
from agent.engine.speech.asr import recognize, shared_recognizer
from agent.engine.speech.dialogue import DialogueIndex, ScriptedDialogue, SpeechReplySource, guidance_of
from agent.engine.speech.tts import CLEAR_VOICE, Speaker, synthesize
from agent.prompts.loader import load_prompt
from agent.prompts.schema import OfflineDialogue, ScriptedAnswer
from agent.protocol.realtime.session_config import greeting_response, session_update

pytestmark = pytest.mark.timeout(60)

PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
Ev = dict[str, Any]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def recall(reference: str, heard: str) -> float:
    """Share of the reference's words that were recognised (each heard word counts once)."""
    pool = words(heard)
    hits = 0
    for word in words(reference):
        if word in pool:
            pool.remove(word)
            hits += 1
    return hits / len(words(reference))


def rms(samples: Int16Array) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def telephone(samples: Int16Array) -> Int16Array:
    """Through G.711 μ-law, as on the phone line."""
    return mulaw_to_pcm16(pcm16_to_mulaw(samples))


# ---------------------------------------------------------------------------------------------------------------
# Synthesis and recognition
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_speech_is_audible_and_as_long_as_the_words(rate: int) -> None:
    audio = synthesize("Thanks for calling. How can I help you today?", rate)
    assert audio.dtype == np.int16 and audio.ndim == 1
    seconds = len(audio) / rate
    assert 1.5 < seconds < 4.5  # ten words at 165 words a minute, plus sentence pauses
    assert rms(audio) > 1000
    assert synthesize("   ", rate).size == 0


def test_speaking_rate_changes_the_duration() -> None:
    text = "Our basic plan costs ten dollars a month."
    slow, fast = synthesize(text, 8000, words_per_minute=120), synthesize(text, 8000, words_per_minute=240)
    assert len(slow) > 1.5 * len(fast)


async def test_one_engine_serves_many_threads() -> None:
    """espeak is not re-entrant: concurrent callers are serialised, and each gets its own sentence back."""
    texts = ["one two three", "what are your opening hours", "goodbye", "a much longer sentence than the others"]
    speaker = Speaker()
    together = await asyncio.gather(*(speaker.synthesize_async(t, 16000) for t in texts * 2))
    alone = [synthesize(t, 16000) for t in texts]
    for got, expected in zip(together, alone * 2, strict=True):
        assert abs(len(got) - len(expected)) < 0.05 * len(expected)  # eSpeak varies timing slightly per call


async def test_synthesised_sentences_are_recognised() -> None:
    """TTS -> ASR round trip, wideband and through the phone line, recognised concurrently on the decoder pool."""
    wideband = ["what are your opening hours", "how much does it cost", "can you help me please"]
    phone = ["please call me back tomorrow", "what are your opening hours", "I want to buy a new car"]
    clips = [(t, synthesize(t, 16000), 16000) for t in wideband]
    clips += [(t, telephone(synthesize(t, 8000, voice=CLEAR_VOICE)), 8000) for t in phone]
    recognizer = shared_recognizer()
    heard = await asyncio.gather(*(recognizer.recognize_async(audio, rate) for _, audio, rate in clips))
    scores = [recall(text, got) for (text, _, _), got in zip(clips, heard, strict=True)]
    report = list(zip(wideband + phone, heard, strict=True))
    assert np.mean(scores[:3]) >= 0.6, report
    assert np.mean(scores[3:]) >= 0.6, report


def test_silence_and_noise_are_not_words() -> None:
    assert recognize(np.zeros(8000, dtype=np.int16), 8000) == ""
    assert recognize(np.zeros(100, dtype=np.int16), 8000) == ""  # too short to hold a word


# ---------------------------------------------------------------------------------------------------------------
# Scripted dialogue
# ---------------------------------------------------------------------------------------------------------------


def default_dialogue() -> ScriptedDialogue:
    return ScriptedDialogue.from_prompt(load_prompt(PROMPTS, "default"))


def test_keywords_pick_the_first_matching_answer_on_word_boundaries() -> None:
    dialogue = default_dialogue()
    hours = "We are open from nine in the morning to six in the evening, Monday to Saturday."
    assert dialogue.answer("what are your opening HOURS") == (hours, None)
    assert dialogue.answer("hi, when do you close") == (hours, None)  # the hours entry comes before hello
    assert dialogue.answer("okay that's   all") == ("Thank you for calling. Goodbye!", "end_call")
    assert dialogue.answer("can I talk to a person") == ("Let me connect you to a colleague.", "transfer_call")
    assert dialogue.answer("this is a thing")[0] == "I heard: this is a thing. How else can I help?"  # not "hi"
    assert dialogue.answer("  ") == ("Sorry, I did not catch that. Could you say it again?", None)
    assert dialogue.greeting == "Hello! Thanks for calling. How can I help you today?"
    assert dialogue.goodbye == "Thank you for calling. Goodbye!"


def test_an_answer_whose_tool_is_not_declared_is_skipped() -> None:
    dialogue = default_dialogue()
    assert dialogue.answer("a person please", tools=["end_call"]) == (
        "I heard: a person please. How else can I help?",
        None,
    )
    assert dialogue.answer("bye", tools=["end_call"])[1] == "end_call"


def test_fallback_and_not_understood_come_from_the_prompt() -> None:
    offline = OfflineDialogue(
        answers=[ScriptedAnswer(keywords=["pizza"], reply="We only do pasta.")],
        fallback="You said {heard}?",
        not_understood="Pardon?",
    )
    dialogue = ScriptedDialogue(offline)
    assert dialogue.answer("PIZZA please") == ("We only do pasta.", None)
    assert dialogue.answer("pizzas") == ("You said pizzas?", None)
    assert dialogue.answer("") == ("Pardon?", None)
    assert dialogue.greeting == "Hello! How can I help you today?"


PROMPT_TEMPLATE = """---
greeting: "{greeting}"
offline:
  answers:
    - keywords: [{keyword}]
      reply: "{reply}"
---
You are the {name} line. The caller is {{{{caller}}}} and it is {{{{now}}}}.
Answer questions about {name} only, in one or two short sentences, and be polite at all times.
"""


def write_prompt(directory: Path, name: str, keyword: str, reply: str) -> None:
    text = PROMPT_TEMPLATE.format(greeting=f"Welcome to {name}.", keyword=keyword, reply=reply, name=name)
    (directory / f"{name}.md").write_text(text)


def test_sessions_are_matched_to_prompt_files_by_their_rendered_instructions(tmp_path: Path) -> None:
    write_prompt(tmp_path, "default", "hours", "Nine to five.")
    write_prompt(tmp_path, "sales", "price", "Ten dollars.")
    index = DialogueIndex(tmp_path)
    sales = load_prompt(tmp_path, "sales").render({"caller": "+15550100"})
    assert index.dialogue_for(sales.instructions).greeting == "Welcome to sales."
    assert index.dialogue_for("You are a pirate.").greeting == "Welcome to default."

    write_prompt(tmp_path, "sales", "price", "Eleven dollars.")  # an operator's edit applies to the next lookup
    assert index.dialogue_for(sales.instructions).answer("the price")[0] == "Eleven dollars."

    (tmp_path / "default.md").unlink()
    assert index.dialogue_for("You are a pirate.").greeting == "Hello! How can I help you today?"


class FakeSession:
    """What a reply source reads of a session when it chooses words."""

    def __init__(self, items: list[Ev] | None = None) -> None:
        self.items = items or []


def request(
    instructions: str = "",
    *,
    caller_text: str | None = None,
    caller_waiting: bool = False,
    trigger: Literal["client", "vad"] = "client",
    items: list[Ev] | None = None,
    session: FakeSession | None = None,
) -> ReplyRequest:
    return ReplyRequest(
        session=cast(SimSession, session or FakeSession(items)),
        response_id="resp_1",
        number=1,
        audio_format=None,
        reply_ms=2000,
        transcript=None,
        instructions=instructions or "SESSION",
        trigger=trigger,
        session_instructions="SESSION",
        caller_text=caller_text,
        caller_waiting=caller_waiting,
        tools=("end_call",),
    )


def test_responses_follow_their_instructions_then_the_caller() -> None:
    dialogue, source = default_dialogue(), SpeechReplySource(DialogueIndex(PROMPTS))

    def choose(dialogue: ScriptedDialogue, request: ReplyRequest) -> tuple[str, str | None]:
        return source.choose(dialogue, request, guidance_of(request.instructions, request.session_instructions))

    prompt = load_prompt(PROMPTS, "default")
    greeting = cast(str, greeting_response(prompt)["response"]["instructions"])
    assert choose(dialogue, request(greeting)) == (prompt.meta.greeting, None)
    assert choose(dialogue, request("Greet the caller briefly.")) == (dialogue.greeting, None)
    assert choose(dialogue, request()) == (dialogue.greeting, None)  # the model opens the call
    wrap_up = "Say exactly this to the caller, and nothing else: We are out of time. Then say goodbye."
    assert choose(dialogue, request(wrap_up)) == ("We are out of time. Thank you for calling. Goodbye!", None)
    assert choose(dialogue, request("Say a short, friendly goodbye to the caller.")) == (dialogue.goodbye, None)
    turn = request(caller_text="goodbye", caller_waiting=True, trigger="vad")
    assert choose(dialogue, turn) == ("Thank you for calling. Goodbye!", "end_call")
    failed = {"type": "function_call_output", "output": json.dumps({"ok": False, "error": "Nobody is free."})}
    after_tool = request(caller_text="a person please", items=[failed])
    assert choose(dialogue, after_tool) == ("Sorry. Nobody is free. How else can I help?", None)
    assert choose(dialogue, request(caller_text="blue")) == ("I heard: blue. How else can I help?", None)


async def test_a_dropped_line_hears_the_last_answer_again() -> None:
    source = SpeechReplySource(DialogueIndex(PROMPTS))
    session = FakeSession()
    said = await source.reply(request(caller_text="how much is it", caller_waiting=True, session=session))
    resume = "The caller's line dropped for a moment while you were speaking. Briefly continue where you left off."
    again = await source.reply(request(resume, caller_text="how much is it", session=session))
    assert said.transcript == again.transcript == "Our basic plan costs ten dollars a month."


# ---------------------------------------------------------------------------------------------------------------
# The engine, driven by the unmodified openai SDK
# ---------------------------------------------------------------------------------------------------------------


@asynccontextmanager
async def engine_conn(options: EngineOptions) -> AsyncIterator[tuple[RealtimeServer, AsyncRealtimeConnection]]:
    engine = build_engine(options)
    async with (
        engine,
        AsyncOpenAI(api_key="x", base_url=engine.http_base_url) as client,
        client.realtime.connect(model="gpt-realtime") as conn,
    ):
        yield engine, conn
    assert engine.internal_errors == []
    assert all(session.protocol_errors == [] for session in engine.sessions)


async def send(conn: AsyncRealtimeConnection, event: Ev) -> None:
    await conn.send(cast(Any, event))


async def receive_until(conn: AsyncRealtimeConnection, done: Callable[[list[Ev]], bool]) -> list[Ev]:
    events: list[Ev] = []
    async with asyncio.timeout(20):
        while not done(events):
            events.append(cast(Ev, (await conn.recv()).to_dict()))
    return events


def seen(*types: str) -> Callable[[list[Ev]], bool]:
    return lambda events: set(types) <= {e["type"] for e in events}


def only(events: list[Ev], type_: str) -> list[Ev]:
    return [e for e in events if e["type"] == type_]


def spoken_text(events: list[Ev]) -> str:
    return " ".join(e["transcript"] for e in only(events, "response.output_audio_transcript.done"))


def bot_audio(events: list[Ev]) -> Int16Array:
    raw = b"".join(base64.b64decode(e["delta"]) for e in only(events, "response.output_audio.delta"))
    return mulaw_to_pcm16(raw)


async def say(conn: AsyncRealtimeConnection, samples: Int16Array) -> None:
    """Caller audio like a carrier sends it: μ-law 8 kHz in 20 ms frames, with silence around it for the VAD."""
    silence = np.zeros(8000, dtype=np.int16)
    audio = np.concatenate([silence[:2400], samples, silence])
    payload = pcm16_to_mulaw(audio)
    for start in range(0, len(payload), 160):
        chunk = base64.b64encode(payload[start : start + 160]).decode()
        await send(conn, {"type": "input_audio_buffer.append", "audio": chunk})


def fast(**overrides: Any) -> EngineOptions:
    return EngineOptions(**{"prompts_dir": PROMPTS, "first_audio_delay_ms": 0, "speed": 0, **overrides})


async def test_engine_greets_answers_and_ends_the_call_in_speech() -> None:
    prompt = load_prompt(PROMPTS, "default").render({"caller": "+15550100"})
    assert prompt.meta.greeting
    recognizer = shared_recognizer()
    async with engine_conn(fast()) as (_, conn):
        await send(conn, session_update(prompt, MediaFormat.parse("audio/x-mulaw;rate=8000"), can_transfer=True))
        await receive_until(conn, seen("session.updated"))

        await send(conn, greeting_response(prompt))
        events = await receive_until(conn, seen("response.done"))
        assert spoken_text(events) == prompt.meta.greeting
        heard = await recognizer.recognize_async(bot_audio(events), 8000)
        assert recall(prompt.meta.greeting, heard) >= 0.5, heard

        question = "what are your opening hours"
        await say(conn, telephone(synthesize(question, 8000)))
        events = await receive_until(
            conn, seen("response.done", "conversation.item.input_audio_transcription.completed")
        )
        transcript = only(events, "conversation.item.input_audio_transcription.completed")[0]["transcript"]
        assert recall(question, transcript) >= 0.6, transcript
        assert spoken_text(events) == prompt.meta.offline.answers[2].reply  # the hours answer
        assert len(bot_audio(events)) > 8000 * 3

        # A caller who is not understood says it again, as people do; the scripted goodbye ends the call.
        calls: list[Ev] = []
        for _ in range(3):
            await say(conn, telephone(synthesize("okay goodbye", 8000)))
            events = await receive_until(conn, seen("response.done"))
            output = only(events, "response.done")[0]["response"]["output"]
            calls = [item for item in output if item["type"] == "function_call"]
            if calls:
                break
        assert [call["name"] for call in calls] == ["end_call"]
        assert "reason" in json.loads(calls[0]["arguments"])
        assert output[0]["type"] == "message"  # the goodbye is spoken before the call ends
        assert spoken_text(events) == "Thank you for calling. Goodbye!"


async def test_engine_without_asr_echoes_the_length_of_what_it_heard() -> None:
    prompt = load_prompt(PROMPTS, "default").render()
    async with engine_conn(fast(asr=False)) as (_, conn):
        await send(conn, session_update(prompt, MediaFormat.parse("audio/x-mulaw;rate=8000"), can_transfer=False))
        await say(conn, synthesize("hello there", 8000))
        events = await receive_until(
            conn, seen("response.done", "conversation.item.input_audio_transcription.completed")
        )
        transcript = only(events, "conversation.item.input_audio_transcription.completed")[0]["transcript"]
        assert re.fullmatch(r"caller audio \d+ ms", transcript)
        assert spoken_text(events) == f"I heard: {transcript}. How else can I help?"
        assert rms(bot_audio(events)) > 1000


async def test_tone_mode_replies_with_tones() -> None:
    async with engine_conn(fast(mode="tone")) as (engine, conn):
        await send(conn, {"type": "response.create"})
        events = await receive_until(conn, seen("response.done"))
        assert spoken_text(events) == "Reply number 1."
        assert engine.config.reply_source is None


async def test_recognition_workers_ignore_ctrl_c() -> None:
    """Ctrl-C on `make run` reaches the whole process group: a worker printed a KeyboardInterrupt traceback.
    It must ignore SIGINT, keep answering, and exit quietly when its parent closes its stdin."""
    import signal
    import struct
    import sys

    from agent.waiting import within

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.engine.speech.asr",
        json.dumps({"samprate": 16000, "loglevel": "ERROR"}),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    assert await within(60, proc.stdout.readline()) == b"ready\n"
    proc.send_signal(signal.SIGINT)
    silence = np.zeros(8000, dtype="<i2").tobytes()
    proc.stdin.write(struct.pack("<II", 16000, len(silence)) + silence)  # the worker's request: rate, size, samples
    await proc.stdin.drain()
    assert (await within(30, proc.stdout.readline())).endswith(b"\n")  # still answering after the signal
    proc.stdin.close()
    assert await within(30, proc.wait()) == 0
    assert await proc.stderr.read() == b""
