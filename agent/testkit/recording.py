"""What is kept of a synthetic call: a stereo WAV (caller left, bot as heard right), a JSON record of its metrics
and carrier events, the agent's own record fetched from its console, and the printed timeline."""

from __future__ import annotations

import asyncio
import importlib
import json
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import httpx
import numpy as np

from agent.audio.codecs import Int16Array
from agent.testkit.analysis.call import (
    CallMetrics,
    format_timeline,
)
from agent.testkit.carrier import (
    SimCall,
)
from agent.testkit.runner import Measured

RECORD_VERSION = 1


def write_stereo_wav(call: SimCall, path: Path) -> int:
    """Caller on the left, bot as the caller heard it on the right, on the call clock; returns the rate."""
    rate = max(call.media_format.rate, call.played_rate or 0)
    left, right = call.caller_track(rate), call.bot_track(rate)
    n = max(len(left), len(right))
    frames = np.zeros((n, 2), dtype="<i2")
    frames[: len(left), 0] = left
    frames[: len(right), 1] = right
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames.tobytes())
    return rate


def _timeline_json(call: SimCall) -> Iterator[dict[str, Any]]:
    """Raw carrier events on the call clock, without the 50-a-second media frames."""
    start = next((e.t for e in call.timeline if e.kind == "start_sent"), call.timeline[0].t if call.timeline else 0)
    for e in call.timeline:
        if e.kind != "frame_sent":
            yield {"ms": round((e.t - start) * 1000, 1), "kind": e.kind, **e.detail}


def call_record(metrics: CallMetrics, call: SimCall | None) -> dict[str, Any]:
    record: dict[str, Any] = {"version": RECORD_VERSION, "metrics": metrics.model_dump(mode="json")}
    if call is not None:
        record |= {
            "stream": {
                "url": call.stream_url,
                "attributes": call.stream_attrs,
                "media_format": call.media_format.content_type,
                "played_rate": call.played_rate,
            },
            "webhooks": [
                {"event": w.event, "method": w.method, "url": w.url, "status": w.status, "error": w.error}
                for w in call.webhooks
            ],
            "checkpoints": {"acked": call.acked_checkpoints, "dropped": call.dropped_checkpoints},
            "timeline": list(_timeline_json(call)),
        }
    return record


def write_call_json(metrics: CallMetrics, call: SimCall | None, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(call_record(metrics, call), indent=2, default=str) + "\n")


def transcribe_answers(call: SimCall, metrics: CallMetrics) -> None:
    """Fill each answer's text with what a recogniser hears in the bot's audio (best effort, lazy import)."""
    recognize = importlib.import_module("agent.engine.speech.asr").recognize
    rate = call.played_rate or call.media_format.rate
    track: Int16Array = call.bot_track()
    for answer in metrics.answers:
        piece = track[int(answer.start_ms * rate / 1000) : int(answer.end_ms * rate / 1000)]
        if len(piece):
            answer.text = recognize(piece, rate).strip() or None


def print_report(metrics: CallMetrics, wav: Path | None, record: Path | None) -> None:
    for line in format_timeline(metrics):
        click.echo(line)
    if wav is not None:
        click.echo(f"  recording         {wav} (left: caller, right: bot as heard)")
    if record is not None:
        click.echo(f"  record            {record}")


async def fetch_agent_record(
    url: str, call_uuid: str, operator_token: str, *, timeout_s: float = 15.0
) -> dict[str, Any] | str:
    """The agent's stored record of a call from its console's JSON (`/console/api/calls/ID`), once the call
    has ended there (the agent finishes its record a moment after the carrier hangs up); a reason when not."""
    endpoint = f"{url.rstrip('/')}/console/api/calls/{quote(call_uuid, safe='')}"
    headers = {"Authorization": f"Bearer {operator_token}"}
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5.0) as http:
        while True:
            try:
                response = await http.get(endpoint, headers=headers)
            except httpx.HTTPError as exc:
                return f"cannot read it ({type(exc).__name__})"
            if response.status_code in (401, 403, 429):
                return f"refused (HTTP {response.status_code}): check --operator-token"
            if response.status_code == 200:
                record = response.json()
                if isinstance(record, dict) and record.get("ended_at") is not None:
                    return record
            elif response.status_code != 404:
                return f"HTTP {response.status_code}"
            if time.monotonic() >= deadline:
                return f"not finished after {timeout_s:g} s"
            await asyncio.sleep(0.25)  # polling a remote agent; nothing to wait on from here


def save_and_report(measured: Measured, out: Path, transcribe: bool) -> None:
    """The tail shared by `call` and `demo`: transcribe (optional), write WAV + JSON, print the timeline."""
    wav = None
    if measured.call is not None:
        if transcribe:
            try:
                transcribe_answers(measured.call, measured.metrics)
            except ImportError as exc:
                click.echo(f"(not transcribing the bot: {exc})", err=True)
        wav = out.with_suffix(".wav")
        write_stereo_wav(measured.call, wav)
    record = out.with_suffix(".json")
    write_call_json(measured.metrics, measured.call, record)
    print_report(measured.metrics, wav, record)
