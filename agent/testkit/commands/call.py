"""`voice-agent call`: one synthetic phone call against any running agent, measured and recorded.

It goes through the agent's real answer webhook and stream WebSocket, with the simulated Vobiz carrier playing
the bot's audio in real time (checkpoint -> playedStream, clearAudio -> clearedAudio). The caller says a WAV
file, spoken lines (eSpeak NG) or tones, each after the bot has finished its previous answer, or barges in at
a given offset. Afterwards it prints the timeline, writes a stereo WAV (caller left, bot as heard right) and a
JSON record.

The pieces it is made of (the runner, the caller cues, the recording) are shared with the load test, the demo
and the eval, so every tool measures a call the same way (see :mod:`agent.testkit.analysis`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from agent.testkit.analysis.call import (
    Truncation,
    apply_agent_record,
)
from agent.testkit.carrier import (
    CallerAudio,
    Segment,
    SimCall,
    SimCallOptions,
)
from agent.testkit.output import run_folder
from agent.testkit.recording import fetch_agent_record, save_and_report
from agent.testkit.runner import Measured, TimedCarrier, place_and_measure
from agent.testkit.scenarios import conversation, spoken_line, tone_line

__all__ = ["build_utterances", "call_command", "run_synthetic_call"]


def _parse_tone(spec: str) -> Segment:
    hz, _, ms = spec.partition(":")
    try:
        return tone_line(float(hz), float(ms or 800))
    except ValueError:
        raise click.BadParameter(f"{spec!r}: expected HZ or HZ:MS, e.g. 440:800", param_hint="--tone") from None


def build_utterances(wavs: Sequence[Path], lines: Sequence[str], tones: Sequence[str]) -> list[Segment]:
    """What the caller says, in order: WAV files, then spoken lines, then tones."""
    segments = [CallerAudio.wav(p) for p in wavs]
    if lines:
        try:
            segments += [spoken_line(line) for line in lines]
        except ImportError as exc:
            raise click.UsageError(f"spoken lines need agent.engine.speech.tts ({exc})") from None
    return segments + [_parse_tone(t) for t in tones]


async def run_synthetic_call(
    url: str,
    utterances: Sequence[Segment],
    *,
    barge_in_ms: float | None,
    auth_token: str | None,
    max_duration_s: float,
    truncations: Callable[[SimCall], Sequence[Truncation]] | None = None,
) -> Measured:
    options = SimCallOptions(auth_token=auth_token)
    async with TimedCarrier(url) as timed:
        return await place_and_measure(
            timed,
            conversation(utterances, barge_in_ms),
            options=options,
            max_duration_s=max_duration_s,
            truncations=truncations,
        )


@click.command("call")
@click.option("--url", required=True, help="Base URL of a running agent, e.g. http://127.0.0.1:8080.")
@click.option(
    "--wav",
    "wavs",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A 16-bit WAV file the caller says; repeat for more turns.",
)
@click.option("--say", "lines", multiple=True, help="A line the caller speaks (eSpeak NG); repeat for more turns.")
@click.option("--tone", "tones", multiple=True, help="A tone turn, HZ or HZ:MS (default 800 ms).")
@click.option("--barge-in", "barge_in_ms", type=float, help="Interrupt the greeting this many ms into it.")
@click.option("--auth-token", help="Vobiz auth token: sign the webhooks like Vobiz does.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Writes OUT.wav and OUT.json (default: var/out/call-<time>/call).",
)
@click.option("--transcribe/--no-transcribe", default=False, help="Recognise what the bot said (pocketsphinx).")
@click.option("--max-duration", type=float, default=300.0, show_default=True, help="Give up after this many s.")
@click.option(
    "--operator-token",
    envvar="AGENT_OPERATOR_TOKEN",
    help="The agent's console token: print the agent's own latency and end reason (what its console shows).",
)
def call_command(
    url: str,
    wavs: tuple[Path, ...],
    lines: tuple[str, ...],
    tones: tuple[str, ...],
    barge_in_ms: float | None,
    auth_token: str | None,
    out: Path | None,
    transcribe: bool,
    max_duration: float,
    operator_token: str | None,
) -> None:
    """Place one synthetic call against a running agent; print its timeline and record it.

    Writes OUT.wav (stereo: caller left, bot as heard right) and OUT.json (metrics and carrier events).
    Without --wav/--say/--tone the caller says one 800 ms tone after the greeting. Exits 1 when the call
    failed (no answer, no greeting, a dropped stream, a protocol error...), with the reason printed.
    """
    utterances = build_utterances(wavs, lines, tones) or [tone_line(440, 800)]
    measured = asyncio.run(
        run_synthetic_call(url, utterances, barge_in_ms=barge_in_ms, auth_token=auth_token, max_duration_s=max_duration)
    )
    if measured.call is not None and operator_token:
        record = asyncio.run(fetch_agent_record(url, measured.metrics.call_uuid, operator_token))
        if isinstance(record, str):
            click.echo(f"(the agent's own record: {record}; showing the carrier's figures)", err=True)
        else:
            apply_agent_record(measured.metrics, record)
    save_and_report(measured, out or run_folder("call") / "call", transcribe)
    if not measured.metrics.ok:
        raise SystemExit(1)
