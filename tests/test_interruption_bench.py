"""The interruption bench (bench/interruptions.py) measures what it says.

The analysis on hand-made records (a pause resumed from the exact sample, a resume that skips, a cut), then a tiny
run against the real processes: in `immediate` mode (the model's VAD clears and cancels) a scripted real
interruption is recalled and a cough long enough for the VAD cuts the bot for good.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.audio.codecs import Int16Array, mulaw_to_pcm16, pcm16_to_mulaw
from agent.engine.speech import missing_packages
from agent.testkit.interruptions.analysis import figures, outcomes_of_call
from agent.testkit.interruptions.caller import CallRun, EngineOptions, EventRun
from agent.testkit.interruptions.engine import Manifest
from agent.testkit.interruptions.report import run_side
from agent.testkit.interruptions.sounds import ANSWERS, RATE, Event, caller_sounds, load_manifest, save_manifest

FRAME = 160  # 20 ms at 8 kHz


def _answer(seed: int, ms: int) -> Int16Array:
    rng = np.random.default_rng(seed)
    noisy = rng.integers(-3000, 3000, ms * 8).astype(np.int16)
    return mulaw_to_pcm16(pcm16_to_mulaw(noisy))  # what survives the wire


def _session(
    audio: Int16Array, status: str = "completed", truncate_ms: float | None = None, full_ms: float | None = None
) -> dict[str, Any]:
    resp = {
        "id": "resp_1",
        "item_id": "item_1",
        "status": status,
        "reason": None if status == "completed" else "turn_detected",
        "audio": base64.b64encode(pcm16_to_mulaw(audio)).decode(),
        "text": ANSWERS[0],
        "full_ms": len(audio) / 8 if full_ms is None else full_ms,
    }
    truncates = [] if truncate_ms is None else [{"t": 0.0, "item_id": "item_1", "audio_end_ms": truncate_ms}]
    return {"responses": [resp], "truncates": truncates, "deletes": [], "cancels": []}


def _played(audio: Int16Array, spans: list[tuple[int, int, int]]) -> list[tuple[int, Int16Array]]:
    """Carrier pieces, one per 20 ms tick: (call-clock sample where the span starts, from, to) in response samples."""
    pieces = []
    for start, lo, hi in spans:
        for k, pos in enumerate(range(lo, hi, FRAME)):
            pieces.append((start + k * FRAME, audio[pos : min(hi, pos + FRAME)]))
    return pieces


def _outcome(
    kind: str, pieces: list[tuple[int, Int16Array]], session: dict[str, Any], onset_ms: float, sound_ms: float = 0.0
) -> Any:
    event = Event(0, kind, "test sound", 1000, sound_ms=sound_ms)  # type: ignore[arg-type]
    call = CallRun(0, [EventRun(event, onset_ms)], pieces=pieces)
    (outcome,), unknown_ms = outcomes_of_call(call, session)
    assert unknown_ms == 0
    return outcome


def test_a_pause_resumed_from_the_exact_sample_loses_nothing() -> None:
    audio = _answer(1, 3000)
    # 1 s plays from call time 2 s, the caller coughs at 2.9 s, the line is silent 300 ms, the rest plays.
    pieces = _played(audio, [(16000, 0, 8000), (16000 + 8000 + 2400, 8000, len(audio))])
    o = _outcome("cough", pieces, _session(audio), onset_ms=2900)
    assert o.landed and o.played_to_end and not o.cut
    assert o.resumed and o.pause_ms == pytest.approx(300)
    assert o.lost_ms == 0 and o.skipped_ms == 0
    fig = figures([o])["false"]
    assert fig["cut_pct"] == 0 and fig["paused_and_resumed"] == 1
    assert fig["resume_pause_ms"]["p95"] == pytest.approx(300) and fig["lost_on_resume_ms"]["total"] == 0


def test_a_resume_that_skips_audio_loses_it() -> None:
    audio = _answer(2, 3000)
    pieces = _played(audio, [(0, 0, 8000), (8000 + 1600, 8000 + 400, len(audio))])  # 50 ms skipped
    o = _outcome("backchannel", pieces, _session(audio), onset_ms=900)
    assert o.resumed and o.skipped_ms == pytest.approx(50) and o.lost_ms == pytest.approx(50)
    assert not o.played_to_end or o.lost_ms > 0  # heard to the end, yet not all of it


def test_a_real_interruption_cut_for_good_is_recalled_with_its_talk_over() -> None:
    audio = _answer(3, 3000)
    heard = 8000 + 2400  # 1.3 s heard; the caller started at 1 s: 300 ms of talk-over
    pieces = _played(audio, [(0, 0, heard)])
    o = _outcome("real", pieces, _session(audio[:12000], "cancelled", truncate_ms=1300, full_ms=3000), onset_ms=1000)
    assert o.cut and o.talk_over_ms == pytest.approx(300)
    assert o.truncate_error_ms == pytest.approx(0) and o.lost_ms == pytest.approx(1500 - 1300)
    fig = figures([o])["real"]
    assert fig["recall_pct"] == 100 and fig["talk_over_ms"]["p95"] == pytest.approx(300)
    assert fig["model_told_pct"] == 100


def test_a_real_interruption_resumed_by_mistake_counts_all_the_talk_after_its_onset() -> None:
    audio = _answer(4, 3000)
    # Onset at 1 s; quiet at 1.08 s; played on 1.4-1.6 s (from where it stopped), then cut for good.
    pieces = _played(audio, [(0, 0, 8640), (8000 + 3200, 8640, 8640 + 1600)])
    o = _outcome("real", pieces, _session(audio[:12000], "cancelled", truncate_ms=1280, full_ms=3000), 1000)
    assert o.cut and o.resumed_then_cut and not o.resumed
    assert o.talk_over_ms == pytest.approx(80) and o.talk_total_ms == pytest.approx(80 + 200)
    fig = figures([o])["real"]
    assert fig["resumed_then_cut"] == 1 and fig["talk_total_ms"]["p95"] == pytest.approx(280)
    assert fig["talk_over_ms"]["p95"] == pytest.approx(80)


def test_dead_air_is_from_the_end_of_the_callers_sound_to_the_resume() -> None:
    audio = _answer(5, 3000)
    # A 400 ms murmur from 1 s; quiet from 1.06 s; resumed at 1.55 s: a 490 ms pause, 150 ms of it dead air.
    pieces = _played(audio, [(0, 0, 8480), (12400, 8480, len(audio))])
    o = _outcome("backchannel", pieces, _session(audio), onset_ms=1000, sound_ms=400)
    assert o.resumed and o.pause_ms == pytest.approx(490) and o.dead_air_ms == pytest.approx(150)
    fig = figures([o])["false"]
    assert fig["dead_air_ms"]["p95"] == pytest.approx(150)
    assert fig["by_kind"]["backchannel"]["dead_air_ms"]["p50"] == pytest.approx(150)
    assert fig["by_kind"]["backchannel"]["resume_pause_ms"]["p50"] == pytest.approx(490)


@pytest.mark.skipif(bool(missing_packages("espeakng_loader")), reason="needs the sim extra (eSpeak NG)")
async def test_immediate_mode_recalls_a_real_interruption_and_a_cough_cuts_the_bot(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.npz"
    save_manifest(manifest)
    real = Event(0, "real", "real: no, stop, I meant Tuesday", at_ms=1500)
    cough = Event(1, "cough", "cough 460 ms #5", at_ms=1500)  # 460 ms of loud noise: more than the VAD's 300
    side = await run_side("immediate", EngineOptions(vad_ms=300), tmp_path / "ib", manifest, [[real], [cough]], 7)
    assert side["problems"] == [], side["sessions"]
    by_kind = {e["kind"]: e for e in side["events"]}
    r, c = by_kind["real"], by_kind["cough"]
    assert r["landed"] and c["landed"], (r["note"], c["note"])
    # The model's VAD needs 300 ms of speech, then the agent clears: the caller hears ~300-400 ms of talk-over.
    assert r["cut"] and 280 <= r["talk_over_ms"] <= 700
    assert r["engine_status"] == "cancelled" and r["engine_reason"] == "turn_detected"
    assert r["truncated_ms"] is not None and r["truncate_error_ms"] <= 40
    assert c["cut"] and not c["resumed"] and c["lost_ms"] > 0
    fig = side["figures"]
    assert fig["real"]["recall_pct"] == 100 and fig["false"]["cut_pct"] == 100
    cough_fig = fig["false"]["by_kind"]["cough"]
    assert (cough_fig["n"], cough_fig["cut_pct"], cough_fig["paused_pct"]) == (1, 100.0, 0.0)
    assert fig["real"]["resumed_then_cut"] == 0
    assert fig["real"]["talk_total_ms"]["p95"] == pytest.approx(r["talk_over_ms"], abs=0.1)


@pytest.mark.skipif(bool(missing_packages("espeakng_loader")), reason="needs the sim extra (eSpeak NG)")
def test_the_engine_transcribes_a_part_of_a_sound_as_the_words_in_that_part(tmp_path: Path) -> None:
    """The VAD's short silence while the bot is paused closes "okay, | but I wanted Thursday" at its comma: each
    committed part is transcribed as the words said in it (an ideal recogniser), not as the bot's own words."""
    manifest = tmp_path / "manifest.npz"
    save_manifest(manifest)
    known = Manifest(load_manifest(manifest))
    pcm = caller_sounds()["real: okay, but I wanted Thursday"].pcm
    rng = np.random.default_rng(5)

    def turn(part: Int16Array) -> Int16Array:  # as committed: padding and the VAD's silence around it, line noise
        padded = np.concatenate([np.zeros(2400), part, np.zeros(800)]) + rng.normal(0, 40, len(part) + 3200)
        return mulaw_to_pcm16(pcm16_to_mulaw(np.clip(padded, -32767, 32767).astype(np.int16)))

    x = pcm.astype(np.float64)
    w = 80
    quiet = np.sqrt((x[: len(x) // w * w].reshape(-1, w) ** 2).mean(axis=1)) < 250
    comma = next(i for i in range(12, len(quiet)) if quiet[i - 12 : i + 1].all()) * w  # 130 ms quiet: the comma
    assert known.match(turn(pcm), RATE)[0] == "okay, but I wanted Thursday"
    assert known.match(turn(pcm[:comma]), RATE)[0] == "okay"
    assert known.match(turn(pcm[comma:]), RATE)[0] == "but I wanted Thursday"
    assert known.match(turn(caller_sounds()["backchannel: okay"].pcm), RATE)[0] == "okay"
    noise = np.clip(rng.normal(0, 3000, 4000), -32767, 32767).astype(np.int16)
    assert known.match(turn(noise), RATE)[0] is None  # no caller sound: the bot's echo, say
