"""Prompt evaluation: scripted conversations stored as tagged runs, and two runs compared."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import click
import pytest

from agent.simulation.evaluate import EvalScript, load_script, run_eval
from agent.simulation.realtime_server import RealtimeSimConfig
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
