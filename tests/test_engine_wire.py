"""The engine's cheap paths (its hand-rolled JSON, record copies, ids, VAD energy and plain-append shortcut) give
exactly what the general code gave: the wire must not change when the engine gets faster."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from websockets.asyncio.client import connect as ws_connect

from agent.audio.codecs import mulaw_to_pcm16
from agent.engine import RealtimeServer, RealtimeSimConfig, new_id, sdk_types, session_core
from agent.engine.formats import AudioFormat, SimulatorBug, obfuscation
from agent.engine.input_audio import loud_windows
from agent.engine.protocol import copy_json, describe_validation_error, dumps_event
from agent.engine.sdk_types import event_shape, validate_client_event

pytestmark = pytest.mark.timeout(30)

B64_AUDIO = base64.b64encode(bytes(range(256)) * 3).decode()


@pytest.mark.parametrize(
    "event",
    [
        {"type": "response.output_audio.delta", "event_id": "event_x", "output_index": 0, "delta": B64_AUDIO},
        {"type": "t", "delta": 'quo"te \\ back\nslash é ☎ \x00', "n": -12, "none": None},
        {"type": "t", "flag": True, "off": False, "ratio": 0.1, "big": 10**30, "inf": float("inf")},
        {"type": "t", "item": {"content": [{"transcript": None, "x": [1, 2.5, "ü"]}]}, "list": []},
        {"type": "t", "ключ": "v", "empty": ""},
        {"type": "t", 3: "non-string key"},
    ],
)
def test_dumps_event_is_json_dumps(event: dict[Any, Any]) -> None:
    assert dumps_event(event) == json.dumps(event)


def test_dumps_event_copies_a_verbatim_value_unscanned() -> None:
    event = {"type": "response.output_audio.delta", "event_id": "event_x", "delta": B64_AUDIO}
    assert dumps_event(event, verbatim="delta") == json.dumps(event)


def test_copy_json_is_a_deep_copy() -> None:
    original = {"a": [{"b": [1, 2]}, "s"], "c": {"d": None}, "t": (1, [2])}
    copied = copy_json(original)
    assert copied == original
    original["a"][0]["b"].append(3)  # type: ignore[index]
    original["c"]["d"] = 1  # type: ignore[index]
    original["t"][1].append(3)  # type: ignore[index]
    assert copied == {"a": [{"b": [1, 2]}, "s"], "c": {"d": None}, "t": (1, [2])}


def test_ids_are_shaped_like_the_apis_and_unique() -> None:
    ids = [new_id("event_") for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"event_[A-Za-z0-9]{20}", i) for i in ids)
    assert all(re.fullmatch(r"[A-Za-z0-9]{8}", obfuscation()) for _ in range(300))


def test_format_objects_are_read_as_before() -> None:
    assert AudioFormat.from_session({"type": "audio/pcmu"}) == AudioFormat("audio/pcmu")
    assert AudioFormat.from_session({"type": "audio/pcma"}) == AudioFormat("audio/pcma")
    for other in (None, {}, {"type": "audio/pcm", "rate": 24000}, {"type": ["audio/pcmu"]}, {"type": "x"}, "pcmu"):
        assert AudioFormat.from_session(other) == AudioFormat("audio/pcm")


@pytest.mark.parametrize("win", [160, 480])
def test_loud_windows_is_the_mean_based_rms(win: int) -> None:
    rng = np.random.default_rng(7)
    threshold = 500.0
    windows = [
        rng.integers(-32768, 32768, win),
        rng.normal(0, 500, win),
        np.full(win, 500),  # RMS exactly at the threshold: loud
        np.full(win, -499),  # just under it
        np.zeros(win),
        np.tile([500, -500, 501, -499], win // 4),
    ]
    samples = np.concatenate(windows).astype(np.int16)
    frames = samples.astype(np.float64).reshape(len(windows), win)
    reference = [bool(x) for x in np.sqrt(np.mean(frames * frames, axis=1)) >= threshold]
    assert loud_windows(samples, win, threshold) == reference
    assert reference[2:5] == [True, False, False]
    for i in range(len(windows)):  # one window at a time, the usual case
        assert loud_windows(samples[i * win : (i + 1) * win], win, threshold) == [reference[i]]


def _expected_error(event: dict[str, Any]) -> tuple[str, str | None] | None:
    """What the SDK-based check says about a client event: (code, param), or None when it is valid."""
    try:
        validate_client_event(event)
    except ValidationError as exc:
        code, _, param = describe_validation_error(event, exc)
        return code, param
    return None


async def test_appends_are_judged_as_the_sdk_judges_them() -> None:
    """Every append shape, well-formed or not, gets the answer the full check gives; good ones are buffered."""
    frame = base64.b64encode(bytes([0x00, 0x80] * 80)).decode()  # loud μ-law: 20 ms
    appends: list[dict[str, Any]] = [
        {"type": "input_audio_buffer.append", "audio": frame},
        {"type": "input_audio_buffer.append", "audio": frame, "event_id": "evt_1"},
        {"type": "input_audio_buffer.append", "audio": frame, "event_id": None},
        {"type": "input_audio_buffer.append", "audio": frame, "extra": 1},
        {"type": "input_audio_buffer.append", "audio": 5, "event_id": "evt_int"},
        {"type": "input_audio_buffer.append", "audio": None, "event_id": "evt_none"},
        {"type": "input_audio_buffer.append", "event_id": "evt_missing"},
        {"type": "input_audio_buffer.append", "audio": frame, "event_id": 7},
        {"type": "input_audio_buffer.append", "audio": [frame], "event_id": "evt_list"},
    ]
    config = RealtimeSimConfig(speed=0)
    async with RealtimeServer(config) as server, ws_connect(server.ws_base_url + "/realtime?model=gpt-realtime") as ws:
        json.loads(await ws.recv())  # session.created
        update = {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": None}},
            },
        }
        await ws.send(json.dumps(update))
        assert json.loads(await ws.recv())["type"] == "session.updated"
        accepted = 0
        for event in appends:
            await ws.send(json.dumps(event))
            expected = _expected_error(event)
            if expected is None:
                accepted += 1
                continue
            async with asyncio.timeout(5):
                answer = json.loads(await ws.recv())
            assert answer["type"] == "error"
            error = answer["error"]
            assert (error["code"], error["param"]) == expected, event
            assert error["event_id"] == (event.get("event_id") if isinstance(event.get("event_id"), str) else None)
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))  # 80 ms buffered: too little, so an error
        async with asyncio.timeout(5):
            answer = json.loads(await ws.recv())
        assert answer["error"]["code"] == "input_audio_buffer_commit_empty"
        assert f"only has {accepted * 20:.2f}ms" in answer["error"]["message"]
        session = server.sessions[0]
        sent = [{k: v for k, v in e.items() if k != "_t"} for e in session.client_events]
        assert sent[1 : 1 + len(appends)] == appends  # recorded as received
        assert accepted == 4


async def test_a_cancel_wakes_a_paced_response_at_once() -> None:
    """Between two paced deltas the stream sleeps on a timer; a cancel must end it then, not at the next delta."""
    config = RealtimeSimConfig(speed=1, chunk_ms=2000, reply_ms=6000, first_audio_delay_ms=0)
    async with RealtimeServer(config) as server, ws_connect(server.ws_base_url + "/realtime?model=gpt-realtime") as ws:

        async def next_of(kind: str) -> dict[str, Any]:
            async with asyncio.timeout(5):
                while True:
                    event: dict[str, Any] = json.loads(await ws.recv())
                    if event["type"] == kind:
                        return event

        await next_of("session.created")
        await ws.send(json.dumps({"type": "response.create"}))
        await next_of("response.output_audio.delta")  # the next one is 2 s away
        loop = asyncio.get_running_loop()
        asked = loop.time()
        await ws.send(json.dumps({"type": "response.cancel"}))
        done = await next_of("response.done")
        assert done["response"]["status"] == "cancelled"
        assert loop.time() - asked < 1.0


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one id and leave at once
        os.write(write, new_id("event_").encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    mine = new_id("event_")
    assert child[:16] != mine[:16]  # "event_" and the stem differ


def test_an_event_shape_ignores_ids_and_free_text_but_not_enum_values_or_types() -> None:
    done = {
        "type": "response.done",
        "event_id": "event_a",
        "response": {"id": "resp_a", "status": "completed", "output": [{"id": "item_a", "transcript": "hi"}]},
    }
    other_ids = copy_json(done)
    other_ids["event_id"], other_ids["response"]["id"] = "event_b", "resp_b"
    other_ids["response"]["output"][0].update(id="item_b", transcript="a different reply")
    assert event_shape(other_ids) == event_shape(done)
    cancelled = copy_json(done)
    cancelled["response"]["status"] = "cancelled"
    as_float = copy_json(done)
    as_float["response"]["output"] = [{"id": "item_a", "transcript": 1.5}]
    two_items = copy_json(done)
    two_items["response"]["output"].append({"id": "item_c", "transcript": ""})
    assert len({event_shape(e) for e in (done, cancelled, as_float, two_items)}) == 4


def test_the_per_shape_check_checks_each_new_shape_in_full_and_each_shape_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked: list[dict[str, Any]] = []
    real = sdk_types.validate_server_event

    def counting(event: dict[str, Any]) -> Any:
        checked.append(event)
        return real(event)

    monkeypatch.setattr(sdk_types, "validate_server_event", counting)
    check = sdk_types.ShapeCheckedServerEvents()
    committed = {"type": "input_audio_buffer.committed", "event_id": "event_1", "item_id": "item_1"}
    check(dict(committed, previous_item_id=None))
    check(dict(committed, event_id="event_2", item_id="item_2", previous_item_id=None))
    assert len(checked) == 1
    check(dict(committed, previous_item_id="item_0"))  # a string where there was null: a new shape
    assert len(checked) == 2
    with pytest.raises(ValidationError):
        check({"type": "input_audio_buffer.committed", "event_id": "event_3", "item_id": 7})
    with pytest.raises(ValidationError):  # a shape that failed is not remembered as passed
        check({"type": "input_audio_buffer.committed", "event_id": "event_4", "item_id": 8})
    assert len(checked) == 4


async def test_a_per_shape_engine_still_refuses_an_invalid_event_and_the_default_checks_every_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # per_shape: at most one check of the three alike (none if an earlier test already passed that shape: the
    # passed shapes are per process).
    real = sdk_types.validate_server_event
    seen: list[str] = []

    def counting(event: dict[str, Any]) -> Any:
        seen.append(event["type"])
        return real(event)

    monkeypatch.setattr(sdk_types, "validate_server_event", counting)
    monkeypatch.setattr(session_core, "validate_server_event", counting)
    for mode, allowed in (("per_shape", {0, 1}), ("every", {3})):
        config = RealtimeSimConfig(speed=0, sdk_check=mode)  # type: ignore[arg-type]
        async with (
            RealtimeServer(config) as server,
            ws_connect(server.ws_base_url + "/realtime?model=gpt-realtime") as ws,
        ):
            await ws.recv()  # session.created, checked before what this test counts
            session = await server.wait_for_session()
            seen.clear()
            for _ in range(3):
                await session.send_error("boom", code="x")
            assert len(seen) in allowed, mode
            with pytest.raises(SimulatorBug):
                await session.send_event({"type": "error", "error": {"type": "x", "message": 5}})


def test_the_g711_decodes_are_the_shared_codecs() -> None:
    every_byte = bytes(range(256)) * 2
    assert np.array_equal(AudioFormat("audio/pcmu").decode(every_byte), mulaw_to_pcm16(every_byte))
    alaw = AudioFormat("audio/pcma")
    assert np.array_equal(alaw.decode(every_byte), alaw.decode(every_byte[:256] + every_byte[256:]))
    assert alaw.encode(alaw.decode(every_byte)) == every_byte  # A-law levels round-trip
