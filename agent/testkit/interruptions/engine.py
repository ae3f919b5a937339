"""The interruption bench's Realtime engine, a process of its own: spoken replies, scripted transcripts, records.

Run as ``python -m agent.testkit.interruptions.engine --port P --manifest M.npz [--vad-ms 300 ...]``. It serves the
GA protocol with :class:`agent.engine.RealtimeServer` (energy VAD with ``--vad-ms`` of speech before
``speech_started``, honouring ``create_response``/``interrupt_response``), and:

* replies with eSpeak NG speech: the greeting first, a ~7-9 s answer to a caller's question, a short
  acknowledgement to anything else (an interruption, a backchannel, a cough that got through). A faint noise
  floor drawn fresh for every response makes every response's audio unique, so the bench finds it again,
  sample by sample, in what the carrier played;
* transcribes a committed caller turn by matching it against the manifest of caller sounds (normalised
  cross-correlation): the words of the utterance, "" for a cough or noise; a turn that matches nothing is the
  bot's own echo and is transcribed as a few of the bot's words, as a real recogniser would hear it;
* on ``GET /bench/drain`` hands over each session's record: response audio as sent, cancels, truncates, deletes,
  VAD events and transcripts (``/bench/health``, ``/bench/status`` as the bench engine).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import re
import signal
import sys
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import soxr
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from agent.audio.codecs import Int16Array
from agent.engine import RealtimeServer, RealtimeSimConfig, Reply, ReplyRequest, SimSession
from agent.testkit.bench.tool import run_async
from agent.testkit.bench.wire import MULAW_FRAME_BYTES, frame_key
from agent.testkit.interruptions.sounds import ACKS, ANSWERS, GREETING, QUESTIONS, RATE, load_manifest, speech
from agent.waiting import within

KEY_FRAMES = 150  # caller frames (20 ms each) keyed per session, to pair it with its call
MATCH_MIN = 0.6  # normalised correlation a committed turn needs with a caller sound to be "that sound"
PART_LEVEL = 400  # int16: louder samples are the caller's (the line's noise is about 40 RMS)
PART_MIN = 400  # samples (50 ms): a shorter part of a sound is no word
BREATH_WINDOWS = 8  # 10 ms windows: at least this much quiet inside a sound may be a breath between phrases
WHOLE_SHARE = 0.85  # a turn whose caller part is shorter than this share of the sound it matches holds a part
BOT_NOISE = 60  # int16 amplitude of the noise floor on every reply


def _word_middles(text: str, sound: np.ndarray) -> list[tuple[str, int]]:
    """Each word of `text` and the sample where its middle falls in `sound`: its phrases (between commas) are the
    sound's stretches between its longest breaths, each word placed by its share of its phrase's letters (by its
    share of all the letters over the whole sound when the breaths are too few)."""
    win = RATE // 100
    quiet = np.sqrt(np.mean(sound[: len(sound) // win * win].reshape(-1, win) ** 2, axis=1)) < PART_LEVEL
    breaths: list[tuple[int, int]] = []  # (windows, first window) of each quiet run
    at = 0
    for q, group in itertools.groupby(quiet.tolist()):
        n = len(list(group))
        if q and n >= BREATH_WINDOWS:
            breaths.append((n, at))
        at += n
    phrases = [p.split() for p in re.split(r"[,.?!]", text) if p.split()]
    cuts = sorted(sorted(breaths, reverse=True)[: len(phrases) - 1], key=lambda b: b[1])
    if len(cuts) != len(phrases) - 1:
        phrases, cuts = [text.split()], []
    edges = [0, *[b * win for n, b in cuts for b in (b, b + n)], len(sound)]
    out: list[tuple[str, int]] = []
    for words, a, b in zip(phrases, edges[::2], edges[1::2], strict=True):
        letters, pos = sum(len(w) for w in words), 0
        for word in words:
            out.append((word.strip(",.?!"), a + round((pos + len(word) / 2) / letters * (b - a))))
            pos += len(word)
    return out


class Manifest:
    """Recognises a committed caller turn as one of the known caller sounds (or as none of them), or as a part of
    one: the VAD's short silence while the bot is paused may close a turn at a breath ("okay, | wait, ...")."""

    def __init__(self, sounds: list[tuple[str, Int16Array]]) -> None:
        self._sounds = [(text, pcm.astype(np.float64)) for text, pcm in sounds]

    def match(self, audio: Int16Array, rate: int) -> tuple[str | None, float]:
        """(text of the best-matching sound, or of the part of one the turn holds; its score); text None below
        MATCH_MIN."""
        x = audio.astype(np.float64) if rate == RATE else soxr.resample(audio.astype(np.float64), rate, RATE)
        whole, length = self._whole(x)
        loud = np.flatnonzero(np.abs(x) > PART_LEVEL)
        if len(loud) < PART_MIN or (whole[0] is not None and loud[-1] - loud[0] >= WHOLE_SHARE * length):
            return whole
        part = self._part(x[loud[0] : loud[-1] + 1])  # the caller's part, without the VAD's padding and silence
        return part if part[0] is not None else whole

    def _part(self, y: np.ndarray) -> tuple[str | None, float]:
        """The turn as a stretch of a longer sound: the words spoken in that stretch (each word's middle placed
        by its share of the letters in the sound's voiced time), "" when it holds none of a word's middle."""
        n = len(y)
        best: tuple[str | None, float] = (None, 0.0)
        for text, sound in self._sounds:
            m = len(sound)
            if m <= n:
                continue
            size = 1 << int(np.ceil(np.log2(m + n)))
            corr = np.fft.irfft(np.fft.rfft(sound, size) * np.conj(np.fft.rfft(y, size)), size)[: m - n + 1]
            energy = np.concatenate([[0.0], np.cumsum(sound * sound)])
            window = energy[n:] - energy[: m - n + 1]
            score = corr / (np.sqrt(np.maximum(window, 1.0)) * np.sqrt(float(y @ y)))
            at = int(np.argmax(score))
            if score[at] > best[1]:
                heard = " ".join(w for w, mid in _word_middles(text, sound) if at <= mid < at + n)
                best = (heard, float(score[at]))
        return best if best[1] >= MATCH_MIN else (None, best[1])

    def _whole(self, x: np.ndarray) -> tuple[tuple[str | None, float], int]:
        """(the best-matching whole sound's text, or None; its score), and that sound's length in samples."""
        best: tuple[str | None, float] = (None, 0.0)
        length = 0
        if len(x) == 0:
            return best, length
        for text, sound in self._sounds:
            m = len(sound)
            padded = np.concatenate([np.zeros(m), x, np.zeros(m)])
            n = 1 << int(np.ceil(np.log2(len(padded) + m)))
            corr = np.fft.irfft(np.fft.rfft(padded, n) * np.fft.rfft(sound[::-1], n), n)[m - 1 : len(padded)]
            energy = np.concatenate([[0.0], np.cumsum(padded * padded)])
            window = energy[m:] - energy[:-m]
            score = corr[: len(window)] / (np.sqrt(np.maximum(window, 1.0)) * np.sqrt(float(sound @ sound)))
            # A window mostly outside the turn is not that sound, however well the rest correlates.
            inside = np.minimum(np.arange(len(window)) + 1, m) / m
            top = float(np.max(score * np.sqrt(inside)))
            if top > best[1]:
                best, length = (text, top), m
        return (best if best[1] >= MATCH_MIN else (None, best[1])), length


class SpokenReplies:
    """One session's replies (a ReplySource): greeting, long answers to questions, short acknowledgements."""

    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest
        self._rng = np.random.default_rng()
        self._answers = 0
        self._acks = 0
        self.last_reply = ""
        self.replies: dict[str, tuple[str, float]] = {}  # response id -> (text, full audio ms)
        self.matches: list[tuple[str | None, float]] = []

    async def transcribe(self, audio: Int16Array, sample_rate: int) -> str:
        text, score = await asyncio.to_thread(self._manifest.match, audio, sample_rate)
        self.matches.append((text, round(score, 3)))
        if text is None:  # the bot's own voice coming back: a recogniser hears some of its words
            words = self.last_reply.split()
            return " ".join(words[2:7]).lower().strip(",.") if len(words) > 2 else ""
        return text

    async def reply(self, request: ReplyRequest) -> Reply:
        if request.caller_text is None:
            text = GREETING
        elif request.caller_text in QUESTIONS:
            text = ANSWERS[self._answers % len(ANSWERS)]
            self._answers += 1
        else:
            text = ACKS[self._acks % len(ACKS)]
            self._acks += 1
        self.last_reply = text
        fmt = request.audio_format
        if fmt is None:
            return Reply(transcript=text)
        voice = await asyncio.to_thread(speech, text, "en-us", 165, fmt.sample_rate)
        noise = self._rng.integers(-BOT_NOISE, BOT_NOISE + 1, len(voice))
        audio = np.clip(voice.astype(np.int32) + noise, -32767, 32767).astype(np.int16)
        self.replies[request.response_id] = (text, len(audio) * 1000 / fmt.sample_rate)
        return Reply(transcript=text, audio=audio)


def summarize(session: SimSession, replies: SpokenReplies | None) -> dict[str, Any]:
    """What the bench needs of one session, response audio included (base64 of the bytes sent)."""
    keys: list[str] = []
    cancels: list[dict[str, Any]] = []
    truncates: list[dict[str, Any]] = []
    deletes: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    last_append: float | None = None
    for event in session.client_events:
        kind, t = event.get("type"), float(event["_t"])
        if kind == "input_audio_buffer.append":
            if last_append is not None and t - last_append > 0.3:
                others.append({"t": last_append, "type": f"no caller audio for {(t - last_append) * 1000:.0f} ms"})
            last_append = t
        elif kind not in (
            "response.cancel",
            "conversation.item.truncate",
            "conversation.item.delete",
            "session.update",
        ):
            others.append({"t": t, "type": kind})
        if kind == "input_audio_buffer.append" and len(keys) < KEY_FRAMES:
            with contextlib.suppress(ValueError):
                data = base64.b64decode(str(event.get("audio", "")))
                keys += [frame_key(data[i : i + MULAW_FRAME_BYTES]) for i in range(0, len(data), MULAW_FRAME_BYTES)]
        elif kind == "response.cancel":
            cancels.append({"t": t, "response_id": event.get("response_id")})
        elif kind == "conversation.item.truncate":
            truncates.append({"t": t, "item_id": event.get("item_id"), "audio_end_ms": event.get("audio_end_ms")})
        elif kind == "conversation.item.delete":
            deletes.append({"t": t, "item_id": event.get("item_id")})
        elif kind == "session.update":
            td = ((event.get("session") or {}).get("audio") or {}).get("input", {}).get("turn_detection")
            updates.append({"t": t, "turn_detection": td})
    responses: dict[str, dict[str, Any]] = {}
    audio: dict[str, list[bytes]] = {}
    vad: list[dict[str, Any]] = []
    transcripts: list[dict[str, Any]] = []
    errors: list[str] = []
    for event in session.server_events:
        kind, t = str(event.get("type")), float(event["_t"])
        if kind == "response.created":
            rid = str(event["response"]["id"])
            responses[rid] = {"id": rid, "t_created": t, "item_id": None, "status": None, "reason": None}
        elif kind == "response.output_audio.delta":
            rid = str(event.get("response_id"))
            resp = responses.setdefault(rid, {"id": rid, "t_created": None, "status": None, "reason": None})
            if resp.get("item_id") is None:
                resp["item_id"], resp["t_first_delta"] = event.get("item_id"), t
            audio.setdefault(rid, []).append(base64.b64decode(str(event.get("delta", ""))))
        elif kind == "response.done":
            rid = str(event["response"]["id"])
            if rid in responses:
                details = event["response"].get("status_details") or {}
                responses[rid].update(status=event["response"].get("status"), reason=details.get("reason"), t_done=t)
        elif kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"):
            vad.append({"t": t, "type": kind.rsplit(".", 1)[1], "item_id": event.get("item_id")})
        elif kind == "conversation.item.input_audio_transcription.completed":
            transcripts.append({"t": t, "item_id": event.get("item_id"), "text": event.get("transcript")})
        elif kind == "error":
            err = event.get("error") or {}
            errors.append(f"{err.get('code')}: {err.get('message')}")
    for rid, resp in responses.items():
        resp["audio"] = base64.b64encode(b"".join(audio.get(rid, []))).decode("ascii")
        resp["text"], resp["full_ms"] = replies.replies.get(rid, ("", 0.0)) if replies is not None else ("", 0.0)
    return {
        "id": session.id,
        "opened": float(session.server_events[0]["_t"]) if session.server_events else None,
        "input_format": session.input_format.type,
        "output_format": session.output_format.type,
        "turn_detection": session.session_config["audio"]["input"].get("turn_detection"),
        "keys": keys[:KEY_FRAMES],
        "responses": list(responses.values()),
        "cancels": cancels,
        "truncates": truncates,
        "deletes": deletes,
        "session_updates": updates,
        "other_client_events": others,
        "vad": vad,
        "transcripts": transcripts,
        "matches": replies.matches if replies is not None else [],
        "errors": errors,
        "protocol_errors": list(session.protocol_errors),
    }


class InterruptionEngine(RealtimeServer):
    def __init__(self, config: RealtimeSimConfig, port: int, manifest: Manifest) -> None:
        super().__init__(config, "127.0.0.1", port)
        self._manifest = manifest
        self._open: dict[str, tuple[SimSession, SpokenReplies]] = {}
        self._done: list[dict[str, Any]] = []
        self.on_session = self._register
        self.on_session_closed = self._retire
        self.http_handler = self._http

    def _register(self, session: SimSession) -> None:
        replies = SpokenReplies(self._manifest)
        session.reply_source = replies
        self._open[session.id] = (session, replies)

    def _retire(self, session: SimSession) -> None:
        _, replies = self._open.pop(session.id, (session, None))
        try:
            self._done.append(summarize(session, replies))
        except Exception as exc:  # a summary bug must not take the engine down mid-run
            self.internal_errors.append(f"summary of {session.id}: {type(exc).__name__}: {exc}")
        session.client_events.clear()
        session.server_events.clear()
        with contextlib.suppress(ValueError):
            self.sessions.remove(session)

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/bench/health":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/bench/status":
            return connection.respond(HTTPStatus.OK, json.dumps({"open": self.connections_open}))
        if path == "/bench/drain":
            done, self._done = self._done, []
            live = [summarize(s, r) | {"open_at_drain": True} for s, r in self._open.values()]
            body = {"sessions": done + live, "internal_errors": list(self.internal_errors)}
            return connection.respond(HTTPStatus.OK, json.dumps(body, separators=(",", ":")))
        return None


async def _main(args: argparse.Namespace) -> None:
    config = RealtimeSimConfig(
        speed=args.speed,
        chunk_ms=args.chunk_ms,
        first_audio_delay_ms=args.first_audio_delay_ms,
        vad_start_ms=args.vad_ms,
        vad_threshold_rms=args.vad_threshold_rms,
        transcription_delay_ms=args.transcript_ms,
    )
    engine = InterruptionEngine(config, args.port, Manifest(load_manifest(Path(args.manifest))))
    for text in (GREETING, *ANSWERS, *ACKS):  # synthesise once up front, not while a call waits
        speech(text, "en-us", 165, RATE)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await engine.start()
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(TimeoutError):
            await within(3, engine.stop())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--manifest", required=True, help="the caller sounds (sounds.save_manifest)")
    parser.add_argument("--speed", type=float, default=2.0)
    parser.add_argument("--chunk-ms", type=int, default=100)
    parser.add_argument("--first-audio-delay-ms", type=int, default=50)
    parser.add_argument("--vad-ms", type=int, default=300)
    parser.add_argument("--vad-threshold-rms", type=float, default=250.0)
    parser.add_argument("--transcript-ms", type=int, default=20, help="commit -> transcript (a remote ASR's delay)")
    args = parser.parse_args(argv)
    run_async(lambda: _main(args), "engine")
    sys.exit(0)


if __name__ == "__main__":
    main()
