"""Frequent model-session rollovers under load: are caller turns lost or answered twice, and are there gaps?

The agent (its own process) rolls its model session over every `--session-s` seconds and waits at most
`--quiet-wait-s` for a quiet moment, so most switches are forced at whatever moment they land on: the caller
mid-question, a turn just closed, an answer being generated or still playing. Each simulated caller asks
`--turns` questions, each once the previous answer has played out. Measured at the carrier: every answer is a
tone of exactly `--reply-ms`, so the bot audio each caller heard tells how many answers it got:
lost = turns with no answer, doubled = answers beyond one per turn; and the playout gaps inside answers.
Baseline in the same run: the same calls with no rollover.

    .venv/bin/python bench/rollover.py --calls 10 --turns 6
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from model_drop import RESULTS, agent_against

from agent.engine import RealtimeServer, RealtimeSimConfig
from agent.testkit.analysis.call import analyze_call
from agent.testkit.carrier import CallerAudio, SimCall, SimCallOptions
from agent.testkit.carrier.audio import CallView


def script(turns: int, reply_ms: int) -> list[Any]:
    """Each question once the greeting and every answer before it have played in full (and a pause)."""

    def heard(answers: int) -> Any:
        def ready(call: CallView) -> bool:
            return call.played_ms >= (answers + 1) * reply_ms - 40 and not call.bot_playing

        return CallerAudio.when(ready, CallerAudio.silence(300))

    items: list[Any] = []
    for turn in range(turns):
        items += [heard(turn), CallerAudio.tone(300, 700, 0.4)]
    return [*items, heard(turns), CallerAudio.silence(1000)]


async def side(args: argparse.Namespace, rollover: bool, stamp: str) -> dict[str, Any]:
    config = RealtimeSimConfig(reply_ms=args.reply_ms, speed=args.speed, first_audio_delay_ms=args.first_audio_ms)
    settings = {"AGENT_MODEL_SESSION_MAX_S": str(args.session_s), "AGENT_ROLLOVER_QUIET_WAIT_S": str(args.quiet_wait_s)}
    name = "rollover" if rollover else "baseline"
    async with RealtimeServer(config) as engine:
        log = RESULTS / f"rollover-{stamp}-{name}.log"
        async with agent_against(engine, log, args.agent_path, settings if rollover else None) as carrier:
            deadline_s = args.turns * (args.reply_ms / 1000 * 2 + 2) + 20

            async def one(index: int) -> SimCall:
                await asyncio.sleep(index * args.stagger_ms / 1000)
                call = await carrier.place_call(script(args.turns, args.reply_ms), SimCallOptions())
                with contextlib.suppress(TimeoutError):  # a lost turn: the caller waits for an answer in vain
                    await call.wait_script_done(timeout=deadline_s)
                await call.hangup()
                return call

            calls = await asyncio.gather(*(one(i) for i in range(args.calls)))
        sessions = len(engine.sessions)
    answers = [round(c.played_ms / args.reply_ms) - 1 for c in calls]  # minus the greeting
    gaps = [gap for c in calls for gap in analyze_call(c).playout_gaps_ms]
    return {
        "calls": args.calls,
        "turns": args.calls * args.turns,
        "model_sessions": sessions,
        "lost_turns": sum(max(0, args.turns - a) for a in answers),
        "doubled_answers": sum(max(0, a - args.turns) for a in answers),
        "playout_gaps": len(gaps),
        "playout_gap_ms_max": max(gaps, default=0.0),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = {
        "baseline": await side(args, rollover=False, stamp=stamp),
        "rollover": await side(args, rollover=True, stamp=stamp),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    (RESULTS / f"rollover-{stamp}.json").write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--reply-ms", type=int, default=1500)
    parser.add_argument("--speed", type=float, default=2.0, help="engine audio streaming speed vs real time")
    parser.add_argument("--first-audio-ms", type=int, default=300)
    parser.add_argument("--session-s", type=float, default=3.0, help="AGENT_MODEL_SESSION_MAX_S of the agent")
    parser.add_argument("--quiet-wait-s", type=float, default=0.5, help="AGENT_ROLLOVER_QUIET_WAIT_S")
    parser.add_argument("--stagger-ms", type=int, default=300)
    parser.add_argument("--agent-path", type=Path, help="run the agent from this checkout (a before/after run)")
    report = asyncio.run(run(parser.parse_args()))
    print(f"{'':24}{'baseline':>12}{'rollover':>12}")
    for key in ("turns", "model_sessions", "lost_turns", "doubled_answers", "playout_gaps", "playout_gap_ms_max"):
        print(f"{key:24}{report['baseline'][key]:>12}{report['rollover'][key]:>12}")


if __name__ == "__main__":
    main()
