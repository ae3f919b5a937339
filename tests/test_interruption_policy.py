"""The adaptive policy's pure parts: the word lists per language, the evidence rules, the echo estimator."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from agent.audio.echo import EchoEstimator
from agent.calls.interruption.policy import Decision, Evidence, Rules, Verdict, decide
from agent.calls.interruption.words import WordLists, normalise
from agent.prompts.loader import parse_prompt

EN = WordLists.for_languages(["en"])
HI = WordLists.for_languages(["hi", "en"])
RULES = Rules()


def test_transcripts_are_normalised() -> None:
    assert normalise("Hmmm... OKAY!!") == ["hm", "okay"]
    assert normalise("Mm-hmm.") == normalise("mmhmm") == ["mhm"]
    assert normalise("Haaan ji।") == normalise("haan ji") == ["han", "ji"]
    assert normalise("हाँ\u200d जी") == ["हाँ", "जी"]  # a zero-width joiner is no word break


@pytest.mark.parametrize("said", ["mm-hmm", "Hmmm.", "yeah, okay", "Uh-huh!", "right right", "I see", "got it"])
def test_english_backchannels(said: str) -> None:
    heard = EN.hear(said)
    assert not heard.stop and heard.content == 0 and heard.backchannel > 0


@pytest.mark.parametrize("said", ["haan", "haan ji", "achha", "theek hai", "हाँ", "जी हाँ", "अच्छा", "ठीक है", "hmm"])
def test_hindi_backchannels_devanagari_and_romanised(said: str) -> None:
    heard = HI.hear(said)
    assert not heard.stop and heard.content == 0 and heard.backchannel > 0
    assert EN.hear(said).content > 0 or said == "hmm"  # not an English prompt's murmurs


@pytest.mark.parametrize("said", ["ruko", "nahi nahi", "रुको", "नहीं", "ek minute", "wait", "no"])
def test_hindi_stop_words(said: str) -> None:
    assert HI.hear(said).stop


@pytest.mark.parametrize("said", ["stop", "Wait, what?", "hold on a second", "no no no", "Sorry?"])
def test_english_stop_words(said: str) -> None:
    assert EN.hear(said).stop


def test_content_words_are_counted_around_backchannels() -> None:
    heard = EN.hear("okay so what about Tuesday")
    assert heard.stop  # "what"
    heard = EN.hear("yeah I'd like Tuesday")
    assert (heard.backchannel, heard.content) == (1, 3)


def test_front_matter_overrides_a_languages_lists() -> None:
    prompt = parse_prompt(
        "p",
        "---\nlanguage: hi\ninterruptions:\n  backchannels:\n    hi: [ji haan, bolo]\n"
        "  stop_words:\n    en: [halt]\n---\nBe brief.\n",
    )
    policy = prompt.meta.interruptions
    words = WordLists.for_languages(["hi", "en"], policy.backchannels, policy.stop_words)
    assert words.hear("bolo").backchannel == 1 and words.hear("haan").content == 1  # hi replaced
    assert words.hear("halt").stop and not words.hear("hold on").stop  # en stop words replaced
    assert words.hear("okay").backchannel == 1  # en backchannels kept


def ev(**kw: object) -> Evidence:
    base: dict[str, object] = {"paused_ms": 500, "vad": True, "speaking": False, "speech_ms": 400}
    return Evidence(**(base | kw))  # type: ignore[arg-type]


def test_the_evidence_rules() -> None:
    def verdict(**kw: object) -> tuple[str, str]:
        decision = decide(ev(**kw), RULES, HI)
        return decision.verdict.value, decision.reason

    assert verdict(transcript="mm-hmm", stopped_ms=300) == ("resumed", "backchannel")
    assert verdict(transcript="haan ji", stopped_ms=300) == ("resumed", "backchannel")
    assert verdict(transcript="", stopped_ms=300) == ("resumed", "noise")
    assert verdict(transcript="ruko") == ("cut", "stop_word")
    assert verdict(transcript="what time do you close") == ("cut", "stop_word")
    assert verdict(transcript="table tonight") == ("cut", "words")
    assert verdict(transcript="okay okay", speech_ms=1500) == ("cut", "duration")
    assert verdict(speaking=True, speech_ms=1400) == ("cut", "duration")  # no transcript needed
    assert verdict(vad=False, speaking=True, speech_ms=300, paused_ms=900) == ("resumed", "no_speech")
    assert verdict(stopped_ms=1300) == ("resumed", "timeout")  # the transcript never came
    assert verdict(speaking=True, speech_ms=900, paused_ms=2600) == ("cut", "timeout")
    assert verdict(echo=True, speaking=True, speech_ms=3000) == ("resumed", "echo")
    wait = decide(ev(speaking=True, speech_ms=500, paused_ms=300), RULES, HI)
    assert wait.verdict is Verdict.WAIT and wait.recheck_ms == pytest.approx(800)  # until 1300 ms of speech


def speechlike(rng: np.random.Generator, ms: int, dbfs: float) -> np.ndarray:
    n = 8 * ms
    envelope = np.repeat(np.abs(rng.standard_normal(n // 400 + 1)) * (rng.random(n // 400 + 1) > 0.3), 400)[:n]
    noise: np.ndarray = rng.standard_normal(n) * envelope * 32768 * 10 ** (dbfs / 20)
    return noise


@pytest.mark.parametrize("delay_ms,loss_db", [(60, -15.0), (150, -22.0), (240, -30.0)])
def test_the_echo_path_is_found_and_the_caller_is_told_from_it(delay_ms: int, loss_db: float) -> None:
    rng = np.random.default_rng(7)
    bot = np.clip(speechlike(rng, 6000, -16), -32768, 32767).astype(np.int16)
    echo = EchoEstimator(8000)
    t0 = 500.0
    for k in range(len(bot) // 160):
        echo.played(bot[k * 160 : (k + 1) * 160], t0 + k * 0.02)
    line = np.zeros(len(bot))
    line[delay_ms * 8 :] = bot[: -delay_ms * 8] * 10 ** (loss_db / 20)
    line += rng.standard_normal(len(bot)) * 20  # the line's own hiss
    caller_from, caller_to = 200, 240  # frames 4.0-4.8 s: the caller talks over the bot
    line[caller_from * 160 : caller_to * 160] += speechlike(rng, 800, -20)
    inbound = np.clip(line, -32768, 32767).astype(np.int16)
    flags, spent = [], []
    for k in range(len(inbound) // 160):
        arrival = t0 + (k + 1) * 0.02 + 0.02 + rng.random() * 0.008  # 20 ms of transport, some jitter
        started = time.perf_counter()
        flags.append(echo.inbound(inbound[k * 160 : (k + 1) * 160], arrival, k * 160))
        spent.append(time.perf_counter() - started)
    assert echo.delay_ms == pytest.approx(delay_ms + 40, abs=20)  # the echo plus the frames' own transport
    assert echo.loss_db == pytest.approx(loss_db, abs=3)
    levels = np.array([np.mean(inbound[k * 160 : (k + 1) * 160].astype(float) ** 2) for k in range(len(flags))])
    loud_echo = [f for k, f in enumerate(flags) if levels[k] > (32768 * 10 ** ((loss_db - 20) / 20)) ** 2]
    settled = [f for k, f in enumerate(flags[100:caller_from]) if levels[k + 100] > 1e4]
    assert np.mean(settled) > 0.95 and len(loud_echo) > 50  # the bot's own voice: echo
    speech = [k for k in range(caller_from, caller_to) if levels[k] > 10 * np.median(levels[100:caller_from])]
    assert speech and np.mean([flags[k] for k in speech]) < 0.25  # the caller: mostly not echo (weak syllables drown)
    assert np.median(spent) < 200e-6  # per 20 ms frame (shared test machine; typically ~15-30 µs)


def test_no_echo_on_the_line_turns_the_prior_off() -> None:
    rng = np.random.default_rng(3)
    bot = np.clip(speechlike(rng, 4000, -16), -32768, 32767).astype(np.int16)
    echo = EchoEstimator(8000)
    for k in range(len(bot) // 160):
        echo.played(bot[k * 160 : (k + 1) * 160], 100 + k * 0.02)
        echo.inbound(np.zeros(160, dtype=np.int16), 100 + (k + 1) * 0.02 + 0.02, k * 160)
    assert echo.no_echo and echo.delay_ms is None


def test_the_console_lists_each_pause_with_its_outcome() -> None:
    from agent.console.views import call_view
    from agent.records.record import CallRecord

    record = CallRecord("c1")
    record.event(
        "interruption", outcome="resumed", reason="backchannel", paused_ms=900, transcript="haan", source="vad"
    )
    record.event("interruption", outcome="cut", reason="duration", paused_ms=1300, transcript=None, source="onset")
    view = call_view(record)
    assert [(i["outcome"], i["reason"], i["paused_ms"]) for i in view["interruptions"]] == [
        ("resumed", "backchannel", 900),
        ("cut", "duration", 1300),
    ]


def test_local_evidence_resumes_noise_and_short_sounds_without_the_model() -> None:
    def local(**kw: float | bool | str | None) -> Decision:
        base: dict[str, float | bool | str | None] = {
            "paused_ms": 150.0,
            "vad": False,
            "speaking": True,
            "speech_ms": 200,
        }
        return decide(Evidence(**(base | kw)), RULES, EN)  # type: ignore[arg-type]

    # A cough, still going: 200 ms of sound with no voiced frame.
    assert local(local_quiet_ms=0.0, local_ms=200.0, local_voiced_ms=0.0) == Decision(Verdict.RESUME, "noise")
    # A 140 ms thud, over for 100 ms: noise too; while it lasts, wait.
    assert local(local_quiet_ms=100.0, local_ms=140.0, local_voiced_ms=0.0).reason == "noise"
    assert local(local_quiet_ms=0.0, local_ms=140.0, local_voiced_ms=0.0).verdict is Verdict.WAIT
    # A voiced sound over for 200 ms that the model's VAD never took for speech.
    assert local(local_quiet_ms=200.0, local_ms=240.0, local_voiced_ms=120.0) == Decision(Verdict.RESUME, "no_speech")
    # ... but once the VAD heard speech in it, only the transcript (or its length) decides: the bot plays on
    # meanwhile (a provisional resume), and the pause stays open for the words.
    heard = {"vad": True, "local_ms": 240.0, "local_voiced_ms": 120.0}
    assert local(**heard, local_quiet_ms=300.0) == Decision(Verdict.PLAY, "short_sound")
    assert local(**heard, local_quiet_ms=300.0, playing=True).verdict is Verdict.WAIT
    assert local(**heard, local_quiet_ms=RULES.resume_quiet_ms - 20).verdict is Verdict.WAIT  # not over yet
    assert local(**heard, local_quiet_ms=300.0, speech_ms=900.0).verdict is Verdict.WAIT  # not short
    # Ended on its last consonant (an unvoiced burst after a voiced sound): over sooner, but not a cough.
    ended = {"vad": True, "local_ms": 40.0, "local_voiced_ms": 300.0, "tail_unvoiced": True}
    assert local(**ended, local_quiet_ms=60.0).verdict is Verdict.WAIT
    assert local(**ended, local_quiet_ms=100.0) == Decision(Verdict.PLAY, "short_sound")
    no_play = dataclasses.replace(RULES, resume_quiet_ms=0.0)
    off = decide(
        Evidence(150.0, True, True, 200.0, local_quiet_ms=300.0, local_ms=240.0, local_voiced_ms=120.0), no_play, EN
    )
    assert off.verdict is Verdict.WAIT
    # A voiced sound still going: wait (a stop word sounds like any word).
    assert local(local_quiet_ms=0.0, local_ms=300.0, local_voiced_ms=260.0).verdict is Verdict.WAIT
    # A transcript overrides the line: a stop word cuts whatever the line showed.
    assert local(transcript="stop", local_quiet_ms=300.0, local_ms=300.0).verdict is Verdict.CUT


def test_words_that_would_resume_wait_until_the_caller_has_finished() -> None:
    """While paused the VAD closes a turn after a short silence, so the words of "okay, | but I meant Thursday"
    may come at the breath: the bot resumes only once the caller has been quiet for `turn_end_ms`, on the line
    (the detector heard them) or by the VAD (its silence, then the time since its speech_stopped)."""
    end = RULES.turn_end_ms
    for said in ("okay", "mm-hmm", "", "Tuesday"):
        breath = decide(ev(transcript=said, stopped_ms=30, local_quiet_ms=130.0, local_ms=300.0), RULES, EN)
        assert breath.verdict is Verdict.WAIT and breath.recheck_ms == pytest.approx(end - 130), said
        talking = decide(ev(transcript=said, stopped_ms=90, local_quiet_ms=0.0, local_ms=80.0), RULES, EN)
        assert talking.verdict is Verdict.WAIT, said  # they went on: the VAD has not heard it yet
        assert decide(ev(transcript=said, stopped_ms=30, local_quiet_ms=end), RULES, EN).verdict is Verdict.RESUME
        by_vad = {"transcript": said, "vad_silence_ms": 100.0}
        assert decide(ev(**by_vad, stopped_ms=60), RULES, EN).verdict is Verdict.WAIT, said
        assert decide(ev(**by_vad, stopped_ms=end - 100), RULES, EN).verdict is Verdict.RESUME, said
    # Never past the longest pause: a line that is never quiet (a television) does not hold the bot for good.
    noisy = decide(ev(transcript="okay", local_quiet_ms=0.0, paused_ms=RULES.max_pause_ms - 50), RULES, EN)
    assert noisy.verdict is Verdict.WAIT and noisy.recheck_ms == pytest.approx(50)
    assert decide(ev(transcript="okay", local_quiet_ms=0.0, paused_ms=RULES.max_pause_ms), RULES, EN).verdict is (
        Verdict.RESUME
    )
    # What cuts still cuts at once.
    assert decide(ev(transcript="okay stop", stopped_ms=0, local_quiet_ms=0.0), RULES, EN).verdict is Verdict.CUT
    assert decide(ev(transcript="okay a table for four", local_quiet_ms=0.0), RULES, EN).verdict is Verdict.CUT


def test_words_that_would_cut_wait_while_the_sound_may_still_be_the_bots_echo() -> None:
    """The echo's own transcript is the bot's words ("reply number one": a cut on words). While the pause's sound
    may still be that echo, not over long enough for the echo check to judge it, such words wait; the echo verdict
    then comes first. Nothing else waits: once there is no echo to wait for, the words cut at once."""
    early = decide(ev(transcript="reply number one", local_quiet_ms=10.0, echo_pending_ms=120.0), RULES, EN)
    assert early.verdict is Verdict.WAIT and early.recheck_ms == pytest.approx(120)
    stop = decide(ev(transcript="wait", local_quiet_ms=10.0, echo_pending_ms=120.0), RULES, EN)
    assert stop.verdict is Verdict.WAIT
    assert decide(ev(transcript="reply number one", echo=True), RULES, EN) == Decision(Verdict.RESUME, "echo")
    later = decide(ev(transcript="reply number one", local_quiet_ms=60.0), RULES, EN)
    assert (later.verdict, later.reason) == (Verdict.CUT, "words")
