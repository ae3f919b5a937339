"""Running unattended: readiness, capacity limits, cost caps, JSON logs, and a graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent.engine import RealtimeSimConfig
from agent.observability import logs
from agent.testkit.analysis.call import analyze_call
from agent.testkit.carrier import CallEndedWithoutStream, CallerAudio, CarrierSim
from agent.testkit.local_server import serve_app
from agent.waiting import within
from tests.agent_process import agent_process
from tests.harness import running_stack


async def test_readyz_follows_the_model_endpoint_and_draining() -> None:
    async with running_stack(readiness_probe_interval_s=0.01) as stack, httpx.AsyncClient() as http:
        ready = await http.get(f"{stack.base_url}/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        stack.state.draining = True
        draining = await http.get(f"{stack.base_url}/readyz")
        assert draining.status_code == 503 and draining.json()["draining"] is True
        stack.state.draining = False
        await stack.engine.stop()  # the model endpoint goes away
        gone = await http.get(f"{stack.base_url}/readyz")
        assert gone.status_code == 503 and "unreachable" in gone.json()["model"]
        assert (await http.get(f"{stack.base_url}/healthz")).status_code == 200  # alive all the same


async def test_over_capacity_calls_hear_an_apology_instead_of_a_stream() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=300), max_concurrent_calls=2) as stack:
        calls = [await stack.carrier.place_call([CallerAudio.silence(5000)]) for _ in range(2)]
        with pytest.raises(CallEndedWithoutStream) as info:
            await stack.carrier.place_call([CallerAudio.silence(1000)])
        assert "busy" in info.value.xml and "<Stream" not in info.value.xml
        assert stack.metric("agent_calls_rejected_total", reason="capacity") == 1
        # A retried webhook for a call already being served is not a new call.
        async with httpx.AsyncClient() as http:
            retry = await http.post(f"{stack.base_url}/vobiz/answer", data={"CallUUID": calls[0].call_uuid})
        assert "<Stream" in retry.text
        for call in calls:
            await call.hangup()


async def test_cost_cap_ends_the_call_with_a_wrap_up() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=300), max_call_cost_usd=0.000001) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(8000)])
        await call.wait_ended(timeout=8)
        record = stack.state.registry.records[call.call_uuid]
        assert record.end_reason == "max_cost"
        assert call.played_ms == pytest.approx(600, abs=60)  # the greeting and the wrap-up, both heard
        assert [a.verb for a in call.after_stream] == ["Redirect", "Hangup"]


def test_json_logs_carry_the_call_id_and_no_secrets() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("INFO", secrets=["s3cr3t-value"], stream=out, fmt="json")
        log = logging.LoggerAdapter(logging.getLogger("agent.call"), {"call_id": "c-42"})
        log.info("token is %s", "s3cr3t-value")
        logging.getLogger("agent.web.app").warning("plain line")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["call_id"] == "c-42" and first["message"] == "token is ***" and first["level"] == "INFO"
    assert second["call_id"] == "-" and second["logger"] == "agent.web.app"


async def test_sigterm_drains_live_calls_then_exits() -> None:
    async with agent_process({"AGENT_DRAIN_TIMEOUT_S": "2.5"}) as agent, CarrierSim(agent.base_url) as carrier:
        base = agent.base_url
        short = await carrier.place_call([CallerAudio.silence(1500)])
        long = await carrier.place_call([CallerAudio.silence(30000)])
        await short.wait_bot_audio(500, timeout=10)
        played_before = short.played_ms
        agent.send_signal(signal.SIGTERM)
        await agent.wait_for_log("draining before shutdown", timeout=5)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{base}/readyz")).status_code == 503
            refused = await http.post(f"{base}/vobiz/answer", data={"CallUUID": "late-caller"})
            assert "<Stream" not in refused.text and "busy" in refused.text
        # The short call carries on undisturbed and ends on its own.
        await short.wait_bot_audio(played_before + 200, timeout=5)
        await short.hangup()
        # The long call is wrapped up politely when the drain deadline passes.
        await long.wait_ended(timeout=15)
        assert [a.verb for a in long.after_stream][:1] == ["Redirect"]
        assert any(e.kind == "stop_received" for e in long.timeline)
        assert await within(15, agent.wait_exit()) == 0


async def test_a_flood_of_malformed_frames_on_one_call_leaves_the_others_alone() -> None:
    async with agent_process() as agent, CarrierSim(agent.base_url) as carrier:
        base = agent.base_url
        victim = await carrier.place_call([CallerAudio.silence(6000)])
        flooder = await carrier.place_call([CallerAudio.silence(6000)])
        await victim.wait_bot_audio(200, timeout=5)
        garbage = ["{broken", '{"event":"media","media":{"payload":"!!"}}', '{"event":"nope"}', "[1,2,3]"]
        for i in range(2000):
            await flooder.send_raw(garbage[i % len(garbage)])
        await victim.wait_bot_audio(1500, timeout=6)
        # The victim's greeting played without a hole: the carrier never ran dry in the middle of an answer.
        assert analyze_call(victim).playout_gaps_ms == []
        assert not victim.ended.is_set() and not flooder.ended.is_set()
        await flooder.wait_bot_audio(1500, timeout=6)  # and the flooded call itself still works
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{base}/metrics")).text
        dropped = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("agent_inbound_dropped_total{")
        )
        assert dropped == 2000
        await victim.hangup()
        await flooder.hangup()


async def test_webhook_retries_are_idempotent() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=300)) as stack, httpx.AsyncClient() as http:
        form = {"CallUUID": "retried-1", "From": "+911", "To": "+912", "Event": "StartApp"}
        first = await http.post(f"{stack.base_url}/vobiz/answer", data=form)
        again = await http.post(f"{stack.base_url}/vobiz/answer", data=form)  # Vobiz retried: slow 200 or a 5xx
        assert first.status_code == again.status_code == 200
        assert "<Stream" in first.text and "<Stream" in again.text
        session = await stack.engine.wait_for_session()
        await session.wait_for_client_event("response.create")
        assert len(stack.engine.sessions) == 1  # one pre-warmed model session, not two
        status = {"CallUUID": "retried-1", "Event": "StartStream", "StreamID": "s"}
        for _ in range(3):
            assert (await http.post(f"{stack.base_url}/vobiz/stream-status", data=status)).status_code == 200
        for _ in range(2):
            assert (
                await http.post(f"{stack.base_url}/vobiz/hangup", data={"CallUUID": "retried-1"})
            ).status_code == 200
        await stack.engine.wait_idle(timeout=3)
        events = [e.kind for e in stack.state.registry.records["retried-1"].events]
        assert events.count("stream_status") == 3 and events.count("hangup_webhook") == 2


async def test_a_slow_model_delays_answers_but_breaks_nothing() -> None:
    config = RealtimeSimConfig(reply_ms=600, first_audio_delay_ms=1500, speed=1.0)
    async with running_stack(config) as stack:
        call = await stack.carrier.place_call(
            [CallerAudio.silence(2800), CallerAudio.tone(300, 600, 0.4), CallerAudio.silence(4500)]
        )
        session = await stack.engine.wait_for_session()
        await call.wait_bot_audio(1150, timeout=12)
        turns = [t for t in stack.state.registry.records[call.call_uuid].turns if t.speaker == "assistant"]
        assert turns[-1].latency_ms is not None and turns[-1].latency_ms >= 1400
        assert call.clears == [] and call.protocol_errors == [] and session.protocol_errors == []
        await call.hangup()


async def test_each_call_is_exported_as_an_otlp_trace_when_an_endpoint_is_configured() -> None:
    received: list[ExportTraceServiceRequest] = []
    arrived = asyncio.Event()
    collector = FastAPI()

    @collector.post("/v1/traces")
    async def traces(request: Request) -> Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.body())
        received.append(message)
        arrived.set()
        return Response(status_code=200)

    @collector.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {}

    async with serve_app(lambda _: collector) as otlp_url:
        # A tone is no speech to the adaptive policy: the server's VAD cuts the bot at once, as a barge-in.
        stack_cm = running_stack(
            RealtimeSimConfig(reply_ms=1500, speed=1.0), otel_endpoint=otlp_url, interruptions="immediate"
        )
        async with stack_cm as stack:
            call = await stack.carrier.place_call(
                [CallerAudio.after_bot_audio(700, CallerAudio.tone(300, 600, 0.4)), CallerAudio.silence(300)]
            )
            await call.wait_clear(timeout=6)
            await call.hangup()
            assert await stack.state.registry.wait_idle(timeout_s=3)
        # Leaving the stack shut the tracer down, which flushed the batch to the collector.
        await within(5, arrived.wait())
    spans = [s for r in received for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
    by_name = {s.name: s for s in spans}
    root = by_name["call"]
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["call.id"].string_value == call.call_uuid
    assert attributes["call.barge_ins"].int_value == 1
    assert [e.name for e in root.events] == ["barge_in"]
    assistant = by_name["assistant turn"]
    assert assistant.parent_span_id == root.span_id and assistant.trace_id == root.trace_id
    assert {a.key: a.value.bool_value for a in assistant.attributes}["turn.interrupted"] is True
