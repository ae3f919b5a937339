"""Dead air after a mid-answer model drop: how long a caller hears nothing when the model socket dies while an
answer is being spoken, until the answer goes on.

The agent runs as its own process; the local Realtime engine and the simulated carrier run here. Each call: the
greeting, then the caller asks (a tone), the engine answers in real time, and `--drop-after-ms` into that
answer's audio the engine's network drops: the TCP connection is reset (default), or with `--silent` it just
goes quiet (no FIN, no RST, pings unanswered), as behind a NAT that lost its state. The agent reconnects and
must continue the answer. Measured at the carrier, on one monotonic clock:

* dead air: from the moment the line went quiet after the drop to the next bot audio (0 when the queued audio
  covered the reconnect); a call whose answer never went on counts its silence until it hung up;
* baseline, same run: the normal answer latency of the same calls (caller's turn ended at the engine -> first
  answer audio at the carrier), the floor any continuation pays for the model to start speaking again.

    .venv/bin/python bench/model_drop.py --calls 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.engine import RealtimeServer, RealtimeSimConfig, SimSession
from agent.stats import percentile
from agent.testkit import procs
from agent.testkit.carrier import CallerAudio, CarrierSim, SimCall, SimCallOptions

RESULTS = procs.BENCH_DIR / "results"


@dataclass
class CallResult:
    dead_air_ms: float | None  # None: no drop happened in this call
    resumed: bool
    answer_latency_ms: float | None


def _seeded(session: SimSession) -> bool:
    """A session the agent opened to reconnect: it was told the conversation before anything else."""
    return any(e["type"] == "conversation.item.create" for e in session.client_events)


@dataclass
class Watched:
    """What the engine saw of one call's first session."""

    turn_end: float | None = None
    drop: float | None = None


class Dropper:
    """Engine hook: abort the first session of each call `drop_after_ms` into its second response's audio."""

    def __init__(self, drop_after_ms: float, silent: bool) -> None:
        self.drop_after_s = drop_after_ms / 1000
        self.silent = silent
        self.first_sessions: list[Watched] = []  # in the order the agent opened them: the calls' order
        self.reconnects: list[SimSession] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, session: SimSession) -> None:
        task = asyncio.get_running_loop().create_task(self._watch(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, session: SimSession) -> None:
        try:
            first = await session.wait_for_server_event("response.created", timeout=60)
            if _seeded(session):
                self.reconnects.append(session)
                return
            watched = Watched()
            self.first_sessions.append(watched)
            stopped = await session.wait_for_server_event("input_audio_buffer.speech_stopped", timeout=60)
            watched.turn_end = stopped["_t"]
            second = await session.wait_for_server_event(
                "response.created", lambda e: e["response"]["id"] != first["response"]["id"], timeout=60
            )
            await session.wait_for_server_event(
                "response.output_audio.delta", lambda e: e["response_id"] == second["response"]["id"], timeout=60
            )
            await asyncio.sleep(self.drop_after_s)  # the fault's schedule, not a synchronisation
            watched.drop = time.monotonic()
            if self.silent:
                session.stall()  # no FIN, no RST: the agent has to notice by itself
            else:
                await session.drop()
        except (TimeoutError, ConnectionError):  # the call ended first
            return


def _went_on(drop: float, reconnects: list[SimSession]) -> bool:
    """Whether the session the agent opened after this drop spoke (calls start 300 ms apart; a reconnect takes
    milliseconds, so the first one opened after the drop is this call's)."""
    after = [s for s in reconnects if s.server_events and s.server_events[0]["_t"] > drop]
    first = min(after, key=lambda s: s.server_events[0]["_t"], default=None)
    return first is not None and any(e["type"] == "response.output_audio.delta" for e in first.server_events)


@contextlib.asynccontextmanager
async def agent_against(
    engine: RealtimeServer, log_path: Path, agent_path: Path | None, extra: dict[str, str] | None = None
) -> AsyncIterator[CarrierSim]:
    """The agent in its own process (the test kit's launcher) against `engine`; a carrier pointed at it.
    `agent_path`: the checkout to run the agent from (its working directory), as the other bench tools do."""
    RESULTS.mkdir(exist_ok=True)
    settings = {
        "OPENAI_API_KEY": "dummy",
        "OPENAI_BASE_URL": engine.http_base_url,
        "AGENT_LOG_LEVEL": "WARNING",
        "AGENT_PROMPTS_DIR": str(procs.ROOT / "prompts"),
    } | (extra or {})
    async with (
        procs.agent_process(settings, log_path=log_path, checkout=agent_path) as agent,
        CarrierSim(agent.base_url) as carrier,
    ):
        yield carrier


def measure(call: SimCall, watched: Watched, reconnects: list[SimSession], reply_ms: int) -> CallResult:
    starts = [e.t for e in call.timeline if e.kind == "bot_audio_started"]
    stops = [e.t for e in call.timeline if e.kind == "bot_audio_stopped"]
    answer_at = starts[1] if len(starts) > 1 else None
    latency = None
    if answer_at is not None and watched.turn_end is not None:
        latency = (answer_at - watched.turn_end) * 1000
    ended = call.timeline[-1].t
    drop = watched.drop
    if drop is None or answer_at is None:
        return CallResult(None, False, latency)
    # The answer went on: the new session spoke, or the whole answer had arrived before the drop and was heard.
    went_on = _went_on(drop, reconnects) or call.played_ms >= 2 * reply_ms - 40
    quiet = next((t for t in stops if t >= drop - 0.3), None)  # the carrier queue runs dry after the drop
    again = next((t for t in starts if quiet is not None and t > quiet), None)
    if quiet is None or (again is None and went_on):
        return CallResult(0.0, went_on, latency)  # the continuation was queued before the line went quiet
    if again is None:
        return CallResult((ended - quiet) * 1000, False, latency)
    return CallResult((again - quiet) * 1000, went_on, latency)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    dropper = Dropper(args.drop_after_ms, args.silent)
    config = RealtimeSimConfig(reply_ms=args.reply_ms, speed=args.speed, first_audio_delay_ms=args.first_audio_ms)
    if args.speech:  # the offline engine's voice: answers from the prompt's dialogue in eSpeak NG speech
        from agent.engine.engine import EngineOptions, build_reply_source

        config.reply_source = build_reply_source(EngineOptions(prompts_dir=procs.ROOT / "prompts", asr=False))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    async with RealtimeServer(config) as engine:
        engine.on_session = dropper
        async with agent_against(engine, RESULTS / f"model-drop-{stamp}-agent.log", args.agent_path) as carrier:
            script = [
                CallerAudio.silence(args.reply_ms + 1000),
                CallerAudio.tone(300, 600, 0.4),
                CallerAudio.silence(args.reply_ms * 2 + 4000),
            ]
            options = SimCallOptions(hangup_webhook=True)

            async def one(index: int) -> SimCall:
                await asyncio.sleep(index * args.stagger_ms / 1000)  # spread the calls' starts, as a load would
                call = await carrier.place_call(script, options)
                await call.wait_script_done(timeout=args.reply_ms * 4 / 1000 + 30)
                await call.hangup()
                return call

            calls = await asyncio.gather(*(one(i) for i in range(args.calls)))
    pairs = zip(calls, dropper.first_sessions, strict=True)
    results = [measure(call, watched, dropper.reconnects, args.reply_ms) for call, watched in pairs]
    dropped = [r for r in results if r.dead_air_ms is not None]
    dead = [r.dead_air_ms for r in dropped if r.dead_air_ms is not None]
    latency = [r.answer_latency_ms for r in results if r.answer_latency_ms is not None]
    report = {
        "calls": args.calls,
        "drops": len(dropped),
        "resumed": sum(r.resumed for r in dropped),
        "dead_air_ms": {"p50": percentile(dead, 50), "p95": percentile(dead, 95), "max": max(dead, default=None)},
        "baseline_answer_latency_ms": {"p50": percentile(latency, 50), "p95": percentile(latency, 95)},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "calls_detail": [asdict(r) for r in results],
    }
    out = RESULTS / f"model-drop-{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--reply-ms", type=int, default=3000, help="length of every engine reply")
    parser.add_argument("--first-audio-ms", type=int, default=300, help="engine: response.created -> first audio")
    parser.add_argument("--speed", type=float, default=2.0, help="engine audio streaming speed vs real time")
    parser.add_argument("--speech", action="store_true", help="spoken replies (offline engine) instead of tones")
    parser.add_argument("--silent", action="store_true", help="the network goes silent instead of resetting")
    parser.add_argument("--drop-after-ms", type=int, default=1000, help="into the answer's audio")
    parser.add_argument("--agent-path", type=Path, help="run the agent from this checkout (a before/after run)")
    parser.add_argument("--stagger-ms", type=int, default=300)
    report = asyncio.run(run(parser.parse_args()))
    dead, base = report["dead_air_ms"], report["baseline_answer_latency_ms"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    print(f"calls {report['calls']}, model drops mid-answer {report['drops']}, answer went on {report['resumed']}")
    print(f"dead air after the drop      p50 {ms(dead['p50'])} ms  p95 {ms(dead['p95'])} ms  max {ms(dead['max'])} ms")
    print(f"baseline: answer latency     p50 {ms(base['p50'])} ms  p95 {ms(base['p95'])} ms")
    if base["p95"] and dead["p95"] is not None:
        print(f"dead air p95 / answer latency p95: {dead['p95'] / base['p95']:.2f}x")


if __name__ == "__main__":
    main()
