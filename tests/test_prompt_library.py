"""The prompt library: selection per call, templates, hot reload under a live call, broken edits never served."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from agent.engine import RealtimeSimConfig
from agent.prompts.library import PromptLibrary
from agent.prompts.loader import PromptError, parse_prompt
from agent.testkit.carrier import CallerAudio, SimCallOptions
from tests.harness import ROOT, running_stack

SALES = """---
voice: cedar
greeting: Sales here.
---
You sell things to {{caller}} who called {{called}}. Customer name: {{ name | default("unknown") }}.
"""


@pytest.fixture
def prompt_dir(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "prompts" / "default.md", tmp_path / "default.md")
    (tmp_path / "sales.md").write_text(SALES)
    (tmp_path / "numbers.yaml").write_text('"+91 80000 00099": sales\n')
    return tmp_path


def bump(path: Path, text: str) -> None:
    """Rewrite a file so its modification time visibly changes (coarse file-system clocks)."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


def test_selection_order_query_then_number_then_default(prompt_dir: Path) -> None:
    library = PromptLibrary(prompt_dir)
    assert library.select("+918000000099").name == "sales"  # digits compared, spaces ignored
    assert library.select("+910000000000").name == "default"
    assert library.select("+918000000099", requested="default").name == "default"
    assert library.names() == ["default", "sales"]
    with pytest.raises(PromptError, match="no such prompt"):
        library.select(requested="nope")


def test_render_fills_standard_and_outbound_variables(prompt_dir: Path) -> None:
    prompt = PromptLibrary(prompt_dir).get("sales")
    text = prompt.render({"caller": "+911", "called": "+912", "name": "Asha"}).instructions
    assert text == "You sell things to +911 who called +912. Customer name: Asha."
    assert "Customer name: unknown" in prompt.render({"caller": "+911", "called": "+912"}).instructions


def test_hot_reload_and_broken_edits(prompt_dir: Path) -> None:
    library = PromptLibrary(prompt_dir)
    first = library.get("sales")
    bump(prompt_dir / "sales.md", SALES.replace("Sales here.", "Sales, version two."))
    second = library.get("sales")
    assert second.meta.greeting == "Sales, version two." and second.content_hash != first.content_hash
    assert first.meta.greeting == "Sales here."  # what a live call holds never changes
    bump(prompt_dir / "sales.md", SALES.replace("voice: cedar", "voice: robot"))
    assert library.get("sales") is second  # the broken edit is not served; the last good version is
    problem = library.problem("sales")
    assert problem is not None and "sales.md:2: voice" in str(problem)
    (prompt_dir / "fresh.md").write_text("---\nvoice: robot\n---\nHi")
    with pytest.raises(PromptError, match=r"fresh\.md:2"):
        library.get("fresh")
    checks = library.check_all()
    assert isinstance(checks["fresh"], PromptError) and not isinstance(checks["default"], PromptError)


async def test_calls_pick_prompts_by_number_and_keep_their_version_while_files_change(prompt_dir: Path) -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=300), prompts_dir=prompt_dir) as stack:
        first = await stack.carrier.place_call([CallerAudio.silence(8000)], SimCallOptions(to="+918000000099"))
        session = await stack.engine.wait_for_session()
        update = await session.wait_for_client_event("session.update")
        assert update["session"]["audio"]["output"]["voice"] == "cedar"
        assert "You sell things to +919000000001 who called +918000000099" in update["session"]["instructions"]
        await first.wait_bot_audio(250, timeout=5)
        # An operator edits the prompt while the call is live.
        bump(prompt_dir / "sales.md", SALES.replace("You sell things", "You now sell other things"))
        second = await stack.carrier.place_call([CallerAudio.silence(3000)], SimCallOptions(to="+918000000099"))
        new_session = await stack.engine.wait_for_session(1)
        new_update = await new_session.wait_for_client_event("session.update")
        assert "You now sell other things" in new_update["session"]["instructions"]
        # The live call keeps its version, even across a model reconnect.
        await session.drop()
        reconnected = await stack.engine.wait_for_session(2, timeout=5)
        again = await reconnected.wait_for_client_event("session.update")
        assert again["session"]["instructions"] == update["session"]["instructions"]
        records = stack.state.registry.records
        assert records[first.call_uuid].prompt_name == records[second.call_uuid].prompt_name == "sales"
        assert records[first.call_uuid].prompt_hash != records[second.call_uuid].prompt_hash
        await first.hangup()
        await second.hangup()


async def test_prompt_query_parameter_and_outbound_variables(prompt_dir: Path) -> None:
    async with (
        running_stack(RealtimeSimConfig(reply_ms=200), prompts_dir=prompt_dir) as stack,
        httpx.AsyncClient() as http,
    ):
        reply = await http.post(
            f"{stack.base_url}/vobiz/answer?prompt=sales&var_name=Ravi&tag_campaign=spring",
            data={"CallUUID": "outbound-1", "From": "+911", "To": "+912", "Direction": "outbound"},
        )
        assert "prompt=sales" in reply.text
        session = await stack.engine.wait_for_session()
        update = await session.wait_for_client_event("session.update")
        assert "Customer name: Ravi." in update["session"]["instructions"]
        assert stack.state.registry.records["outbound-1"].tags == {"campaign": "spring"}
        await stack.state.registry.shutdown()


async def test_a_broken_prompt_for_a_call_gets_an_apology_not_a_dead_line(prompt_dir: Path) -> None:
    (prompt_dir / "broken.md").write_text("---\nvoice: robot\n---\nHi")
    async with running_stack(prompts_dir=prompt_dir) as stack, httpx.AsyncClient() as http:
        reply = await http.post(f"{stack.base_url}/vobiz/answer?prompt=broken", data={"CallUUID": "c-broken"})
        assert "<Speak" in reply.text and "<Stream" not in reply.text
        assert stack.engine.sessions == []


def test_prompts_cli_list_check_show_render(prompt_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from agent.cli import main

    monkeypatch.setenv("AGENT_PROMPTS_DIR", str(prompt_dir))
    runner = CliRunner()
    listed = runner.invoke(main, ["prompts", "list"])
    assert listed.exit_code == 0
    assert "default (default)\tok" in listed.output and "sales\tok" in listed.output
    assert "+918000000099" in listed.output
    assert runner.invoke(main, ["prompts", "check"]).exit_code == 0
    shown = runner.invoke(main, ["prompts", "show", "sales"])
    assert "voice: cedar" in shown.output and "{{caller}}" in shown.output
    rendered = runner.invoke(main, ["prompts", "render", "sales", "--caller", "+9177", "--var", "name=Meera"])
    assert rendered.output.strip() == "You sell things to +9177 who called +910000000002. Customer name: Meera."
    (prompt_dir / "bad.md").write_text("---\nvoice: marin\nturn_detection:\n  threshold: 9\n---\nHi")
    (prompt_dir / "numbers.yaml").write_text('"+911": bad\n')
    checked = runner.invoke(main, ["prompts", "check"])
    assert checked.exit_code == 1
    assert "bad.md:4: turn_detection.threshold" in checked.output
    assert "+911 routes to unusable prompt 'bad'" in checked.output
    assert "bad\tINVALID" in runner.invoke(main, ["prompts", "list"]).output
    assert runner.invoke(main, ["prompts", "show", "missing"]).exit_code == 1


def test_prompts_check_prints_each_problem_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The library's own error log used to repeat every problem the command prints."""
    from click.testing import CliRunner

    from agent.cli import main

    (tmp_path / "good.md").write_text("---\nvoice: marin\n---\nHello.\n")
    (tmp_path / "bad.md").write_text("---\nvoice: robot\n---\nHello.\n")
    monkeypatch.setenv("AGENT_PROMPTS_DIR", str(tmp_path))
    monkeypatch.setenv("AGENT_DEFAULT_PROMPT", "good")
    result = CliRunner().invoke(main, ["prompts", "check"])
    assert result.exit_code == 1
    problems = [line for line in result.output.splitlines() if "voice" in line]
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / 'bad.md'}:2: voice:"), result.output


def test_an_unclosed_quote_is_reported_on_its_own_line() -> None:
    """PyYAML fails many lines after an unclosed quote; the operator must be sent to the quote's line."""
    text = (
        "---\n"  # 1
        "description: x\n"  # 2
        'greeting: "Hello there\n'  # 3: never closed
        "voice: marin\n"  # 4
        "idle:\n"  # 5
        "  reminder_after_s: 12\n"  # 6
        'wrap_up: "Bye now"\n'  # 7: the next quote closes line 3's value, and parsing fails here
        "language: en\n"  # 8
        "---\nHello.\n"
    )
    with pytest.raises(PromptError) as caught:
        parse_prompt("p", text, "p.md")
    assert str(caught.value).startswith('p.md:3: invalid YAML front matter: a "-quoted value'), caught.value


def test_yaml_errors_elsewhere_keep_their_line() -> None:
    with pytest.raises(PromptError) as caught:
        parse_prompt("p", "---\ndescription: x\nvoice: [marin\n---\nHello.\n", "p.md")
    assert str(caught.value).startswith("p.md:"), caught.value
    assert "quoted" not in str(caught.value)


def _experiment_library(tmp_path: Path, share: float = 0.3) -> PromptLibrary:
    (tmp_path / "clinic.md").write_text(
        f"---\nexperiment: {{candidate: clinic-v2, share: {share}}}\n---\nYou answer for the clinic.\n"
    )
    (tmp_path / "clinic-v2.md").write_text("---\nvoice: cedar\n---\nYou answer for the clinic, briefly.\n")
    return PromptLibrary(tmp_path, default="clinic")


def test_experiments_split_calls_by_call_id_deterministically(tmp_path: Path) -> None:
    library = _experiment_library(tmp_path)
    choices = {f"CA-{i}": library.select_for_call("", None, f"CA-{i}") for i in range(2000)}
    candidates = [cid for cid, (prompt, _) in choices.items() if prompt.name == "clinic-v2"]
    assert 0.25 < len(candidates) / len(choices) < 0.35  # about the share
    for prompt, tags in choices.values():
        arm = "candidate" if prompt.name == "clinic-v2" else "control"
        assert tags == {"experiment": "clinic-vs-clinic-v2", "arm": arm}
    # A webhook retry, or another replica with its own library, picks the same arm for the same call.
    other = PromptLibrary(tmp_path, default="clinic")
    assert all(other.select_for_call("", None, cid)[0].name == p.name for cid, (p, _) in list(choices.items())[:200])
    assert library.select(call_id=candidates[0]).name == "clinic-v2"
    assert library.select().name == "clinic"  # no call id: no experiment
    assert library.select_for_call("", "clinic-v2", "CA-1") == (library.get("clinic-v2"), {})  # no experiment there


def test_an_unusable_candidate_sends_calls_to_the_control_untagged(tmp_path: Path) -> None:
    library = _experiment_library(tmp_path, share=0.99)
    (tmp_path / "clinic-v2.md").write_text("---\nvoice: robot\n---\nBroken.\n")
    prompt, tags = library.select_for_call("", None, "CA-1")
    assert prompt.name == "clinic" and tags == {}


def test_prompts_check_reports_a_broken_candidate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from agent.cli import main

    _experiment_library(tmp_path)
    (tmp_path / "clinic.md").write_text("---\nexperiment: {candidate: nowhere, share: 0.2}\n---\nHello.\n")
    monkeypatch.setenv("AGENT_PROMPTS_DIR", str(tmp_path))
    monkeypatch.setenv("AGENT_DEFAULT_PROMPT", "clinic")
    result = CliRunner().invoke(main, ["prompts", "check"])
    assert result.exit_code == 1
    assert "experiment.candidate: prompt 'nowhere' cannot be served" in result.output
