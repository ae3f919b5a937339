"""Prompt evaluation: scripted conversations stored as tagged runs, and two runs compared."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import click
import pytest
from pydantic import ValidationError

from agent.engine import RealtimeSimConfig
from agent.testkit.commands.eval import EvalScript, load_script, run_eval
from agent.waiting import within
from tests.harness import ROOT, running_stack

SCRIPT = """
conversations:
  - name: hours
    lines: ["What are your opening hours?", "Thanks, goodbye."]
  - name: interrupting
    lines: ["Sorry to cut in."]
    barge_in_ms: 400
"""


@pytest.fixture
def two_prompts(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "prompts" / "default.md", tmp_path / "default.md")
    text = (ROOT / "prompts" / "default.md").read_text()
    (tmp_path / "terse.md").write_text(text.replace("Keep every answer short", "Answer in three words"))
    return tmp_path


async def test_two_runs_are_stored_tagged_and_compared(two_prompts: Path, tmp_path: Path) -> None:
    (tmp_path / "script.yaml").write_text(SCRIPT)
    script = load_script(tmp_path / "script.yaml")
    async with running_stack(RealtimeSimConfig(reply_ms=800), prompts_dir=two_prompts) as stack:
        first, second = await asyncio.gather(
            run_eval(stack.base_url, "default", script, "run-a", tones=True),
            run_eval(stack.base_url, "terse", script, "run-b", tones=True),
        )
        assert set(first) == set(second) == {"hours", "interrupting"}
        assert all(m.ok for m in [*first.values(), *second.values()])
        assert len(first["hours"].response_ms) == 2  # both lines were answered
        assert first["interrupting"].barge_ins  # the scripted interruption happened
        assert await stack.state.registry.wait_idle(timeout_s=5)
        await stack.state.records.flush()
        page = await stack.state.store.list_calls(tag=("eval_run", "run-b"))
        assert page.total == 2 and {c.prompt_name for c in page.calls} == {"terse"}
        comparison = await stack.state.store.compare_runs("eval_run", "run-a", "run-b")
        assert comparison.a.calls == comparison.b.calls == 2
        runs = dict(await stack.state.store.tag_values("eval_run"))
        assert runs == {"run-a": 2, "run-b": 2}


def test_bad_scripts_are_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("conversations:\n  - name: x\n    lines: []\n")
    with pytest.raises(click.ClickException, match=r"conversations\.0\.lines"):
        load_script(tmp_path / "bad.yaml")
    assert EvalScript.model_validate({"conversations": [{"name": "a", "lines": ["hi"]}]}).conversations[0].name == "a"


JUDGED_SCRIPT = """
conversations:
  - name: hours
    rubric: "The assistant gives the opening hours and ends politely."
    lines:
      - say: "What are your opening hours?"
        must_say: ["nine in the morning", "/monday to (friday|saturday)/"]
        must_not_say: "ten dollars"
      - say: "Thank you, goodbye."
        must_say: "we are closed"
        must_call: end_call
        must_end_call: true
"""


async def test_judged_eval_against_the_offline_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spoken lines, the embedded engine's scripted dialogue: the true assertions hold, the false one fails,
    the verdict is stored on the call, and the rubric is skipped (no key) without any network call."""
    from agent.testkit.commands.eval import _run_local

    for key in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/agent.db")
    monkeypatch.setenv("AGENT_RECORDINGS_DIR", str(tmp_path / "rec"))
    monkeypatch.setenv("AGENT_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("AGENT_PROMPTS_DIR", str(ROOT / "prompts"))
    (tmp_path / "script.yaml").write_text(JUDGED_SCRIPT)
    script = load_script(tmp_path / "script.yaml")
    # The deadline also covers a simulator bug: waiting for bot silence on a call the agent had ended took the
    # wait's whole 60 s timeout (audio still queued when the agent hung up never plays).
    outcomes = await within(50, _run_local("default", script, "judged-run", tones=False))
    outcome = outcomes["hours"]
    assert outcome.metrics.ok, outcome.metrics.failure_detail
    assert outcome.failures == ["line 2: must say 'we are closed'; said \"Thank you for calling. Goodbye!\""]
    assert not outcome.passed
    assert outcome.rubric is not None and outcome.rubric.passed is None and "OPENAI_API_KEY" in outcome.rubric.note
    assert outcome.metrics.agent_end_reason == "agent_end_call"
    # The verdict is on the stored call, where the Prompts page reads it per prompt version.
    from agent.storage import CallStore, Database

    db = Database(f"sqlite+aiosqlite:///{tmp_path}/agent.db")
    try:
        results = await CallStore(db).eval_results("default")
    finally:
        await db.aclose()
    [(_, runs)] = results.items()
    assert [(r.run, r.calls, r.passed, r.failed) for r in runs] == [("judged-run", 1, 0, 1)]


def test_assertions_on_a_record() -> None:
    """Each line's answer is what the assistant said and did between that line's start and the next one's."""
    from agent.testkit.judge import judge_turns, turns_of

    script = EvalScript.model_validate(
        {
            "conversations": [
                {
                    "name": "book",
                    "lines": [
                        {
                            "say": "Book me in",
                            "must_say": "/tuesday|wednesday/",
                            "must_call": {"name": "book", "arguments": {"day": "Tuesday"}},
                        },
                        {"say": "Bye", "must_not_say": "BOOKED", "must_end_call": True},
                    ],
                }
            ]
        }
    )
    record = {
        "end_reason": "caller_hangup",
        "turns": [
            {"speaker": "assistant", "text": "Hello!", "started_at": 99.0},
            {"speaker": "caller", "text": "book me in", "started_at": 100.0},
            {"speaker": "assistant", "text": "Tuesday at ten", "started_at": 102.0},
            {"speaker": "assistant", "text": "is free.", "started_at": 103.0},
            {"speaker": "assistant", "text": "You are booked.", "started_at": 111.0},
        ],
        "tools": [{"name": "book", "arguments": {"day": "tuesday", "time": "10:00"}, "started_at": 104.0}],
    }
    lines = script.conversations[0].lines
    views = turns_of(record, [100.0, 110.0])
    assert views[0].said == "Tuesday at ten is free." and views[0].tools == [
        ("book", {"day": "tuesday", "time": "10:00"})
    ]
    assert judge_turns(lines, views, "caller_hangup") == [
        "line 2: must not say 'BOOKED'; said \"You are booked.\"",
        "line 2: must end the call; the call ended: caller_hangup",
    ]
    wrong_day = turns_of(
        record | {"tools": [{"name": "book", "arguments": {"day": "Friday"}, "started_at": 104.0}]}, [100.0, 110.0]
    )
    assert judge_turns(lines[:1], wrong_day[:1], None) == [
        'line 1: must call book({"day": "Tuesday"}); called book({"day": "Friday"})'
    ]
    with pytest.raises(ValidationError, match="invalid regular expression"):
        EvalScript.model_validate({"conversations": [{"name": "x", "lines": [{"say": "hi", "must_say": "/(/"}]}]})
