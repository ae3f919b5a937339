"""Configuration errors are one clear line each; prompt files validate; the session.update is GA-shaped."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.audio.formats import MediaFormat
from agent.config import ConfigError, load_settings
from agent.engine.sdk_types import validate_client_event
from agent.prompts.loader import PromptError, load_prompt, parse_prompt
from agent.protocol.realtime import session_config

ROOT = Path(__file__).resolve().parent.parent


def test_invalid_settings_fail_with_one_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBLIC_URL", "ftp://example.com")
    monkeypatch.setenv("AGENT_PLAYOUT_LEAD_MS", "5")
    monkeypatch.setenv("AGENT_STREAM_CONTENT_TYPE", "audio/ogg")
    with pytest.raises(ConfigError) as info:
        load_settings()
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert any(line.startswith("invalid setting PUBLIC_URL:") for line in lines)
    assert any(line.startswith("invalid setting AGENT_PLAYOUT_LEAD_MS:") for line in lines)
    assert any(line.startswith("invalid setting AGENT_STREAM_CONTENT_TYPE:") for line in lines)


def test_vendor_variables_and_derived_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9000/v1/")
    monkeypatch.setenv("PUBLIC_URL", "https://agent.example.com/")
    monkeypatch.setenv("VOBIZ_AUTH_ID", "MA_1")
    monkeypatch.setenv("VOBIZ_AUTH_TOKEN", "tok")
    s = load_settings()
    assert s.openai_base_url == "http://127.0.0.1:9000/v1"
    assert s.stream_ws_url == "wss://agent.example.com"
    assert s.vobiz_rest_enabled and s.webhook_tokens == ["tok"]
    assert "sk-test-secret" not in repr(s) and "tok'" not in repr(s)


def test_sdk_connects_to_the_openai_base_url_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.model.connection import ModelConnector

    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9000/v1")
    connector = ModelConnector(load_settings())
    assert connector.url("gpt-realtime") == "ws://127.0.0.1:9000/v1/realtime?model=gpt-realtime"


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        (None, "wss://api.openai.com/v1/realtime?model=gpt-realtime"),
        ("https://proxy.example.com/openai/v1/", "wss://proxy.example.com/openai/v1/realtime?model=gpt-realtime"),
        ("http://127.0.0.1:9000/v1?tenant=a", "ws://127.0.0.1:9000/v1/realtime?tenant=a&model=gpt-realtime"),
        ("wss://edge.example.com/v1", "wss://edge.example.com/v1/realtime?model=gpt-realtime"),
    ],
)
def test_realtime_url_is_the_one_the_sdk_builds(base: str | None, expected: str) -> None:
    """The agent opens the socket without the SDK; the SDK, given the same base, builds the same URL."""
    from openai import AsyncOpenAI

    from agent.model.connection import DEFAULT_BASE_URL, realtime_url

    assert realtime_url(base or DEFAULT_BASE_URL, "gpt-realtime") == expected
    kwargs = {"websocket_base_url": base} if base and base.startswith("ws") else {"base_url": base or DEFAULT_BASE_URL}
    manager = AsyncOpenAI(api_key="k", **kwargs).realtime.connect(model="gpt-realtime")  # type: ignore[arg-type]
    sdk = str(manager._prepare_url())  # its base + /realtime; it adds ?model= (and any base query) the same way
    assert expected.startswith(sdk.split("?")[0])


def test_default_prompt_loads_and_builds_a_valid_ga_session() -> None:
    prompt = load_prompt(ROOT / "prompts", "default")
    assert prompt.meta.greeting and prompt.instructions.startswith("You are")
    for content_type, fmt in [("audio/x-mulaw;rate=8000", "audio/pcmu"), ("audio/x-l16;rate=16000", "audio/pcm")]:
        update = session_config.session_update(prompt, MediaFormat.parse(content_type), can_transfer=True)
        event = validate_client_event(update)
        assert event.session.audio.input.format.type == fmt
        assert event.session.audio.output.format.type == fmt
        td = event.session.audio.input.turn_detection
        assert td.type == "server_vad" and td.interrupt_response is True
        assert event.session.audio.input.transcription.model
        assert {t.name for t in event.session.tools} == {"end_call", "transfer_call"}
    no_transfer = session_config.session_update(
        prompt, MediaFormat.parse("audio/x-mulaw;rate=8000"), can_transfer=False
    )
    assert [t["name"] for t in no_transfer["session"]["tools"]] == ["end_call"]
    validate_client_event(session_config.greeting_response(prompt))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("---\nvoice: robot\n---\nHi", "voice"),
        ("---\nvoyce: marin\n---\nHi", ":2: voyce: Extra inputs are not permitted"),
        ("---\nvoice: marin\n", "never closed"),
        ("---\n: [\n---\nHi", "invalid YAML"),
        ("---\nvoice: marin\n---\n   \n", "instructions"),
        ("---\nvoice: marin\nturn_detection:\n  threshold: 3\n---\nHi", ":4: turn_detection.threshold"),
        ("---\ntools:\n  - name: end_call\n    description: x\n    url: http://h/\n---\nHi", ":3: tools.0.name"),
        ("---\nvoice: marin\n---\nHello {{ caller", ":4: template error"),
    ],
)
def test_bad_prompt_files_are_refused_with_file_and_field(text: str, message: str) -> None:
    with pytest.raises(PromptError) as info:
        parse_prompt("p", text, "prompts/p.md")
    assert str(info.value).startswith("prompts/p.md")
    assert message in str(info.value)


def test_prompt_hash_changes_with_content(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("Be brief.")
    first = load_prompt(tmp_path, "a").content_hash
    (tmp_path / "a.md").write_text("Be very brief.")
    assert load_prompt(tmp_path, "a").content_hash != first
    with pytest.raises(PromptError):
        load_prompt(tmp_path, "../etc/passwd")
    with pytest.raises(PromptError, match="cannot read"):
        load_prompt(tmp_path, "missing")


def test_the_default_prompt_documents_every_setting() -> None:
    """The README says prompts/default.md documents every setting: each one appears there, set or commented."""
    from agent.prompts.schema import PromptMeta

    text = (Path(__file__).resolve().parents[1] / "prompts" / "default.md").read_text(encoding="utf-8")
    front = text.split("\n---", 1)[0]
    missing = [name for name in PromptMeta.model_fields if f"{name}:" not in front]
    assert missing == []
