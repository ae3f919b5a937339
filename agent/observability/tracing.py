"""Optional OpenTelemetry traces: one trace per call, exported over OTLP/HTTP when an endpoint is set.

The span tree is built from the finished call record (the call span, a child span per turn, events for
barge-ins and tool calls), so tracing adds nothing to the audio path while the call is live.
"""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, Tracer, set_span_in_context

from agent.records.record import CallRecord


def _ns(t: float) -> int:
    return int(t * 1e9)


class CallTracer:
    def __init__(self, exporter: SpanExporter, service_name: str = "vobiz-voice-agent") -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer: Tracer = self.provider.get_tracer("agent.calls")

    @classmethod
    def otlp(cls, endpoint: str) -> CallTracer:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return cls(OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces"))

    def record_call(self, record: CallRecord) -> None:
        end = record.ended_at or record.started_at
        call: Span = self.tracer.start_span("call", start_time=_ns(record.started_at))
        call.set_attributes(
            {
                "call.id": record.call_id,
                "call.direction": record.direction,
                "call.end_reason": record.end_reason or "",
                "call.hung_up_by": record.hung_up_by or "",
                "prompt.name": record.prompt_name,
                "prompt.hash": record.prompt_hash,
                "call.turns": len(record.turns),
                "call.barge_ins": len(record.barge_ins),
                "call.cost_usd": record.cost_usd,
                "tokens.input_audio": record.usage.input_audio,
                "tokens.output_audio": record.usage.output_audio,
            }
        )
        context = set_span_in_context(call)
        for turn in record.turns:
            span = self.tracer.start_span(f"{turn.speaker} turn", context=context, start_time=_ns(turn.started_at))
            span.set_attribute("turn.interrupted", turn.interrupted)
            for key, value in (("turn.heard_ms", turn.heard_ms), ("turn.latency_ms", turn.latency_ms)):
                if value is not None:
                    span.set_attribute(key, value)
            span.end(end_time=_ns(max(turn.ended_at or turn.started_at, turn.started_at)))
        for barge in record.barge_ins:
            call.add_event("barge_in", {"heard_ms": barge.heard_ms, "clear_ms": barge.clear_ms}, _ns(barge.t))
        for tool in record.tools:
            call.add_event("tool_call", {"tool": tool.name, "ok": bool(tool.ok)}, _ns(tool.started_at))
        call.end(end_time=_ns(end))

    def flush(self) -> None:
        self.provider.force_flush()

    def shutdown(self) -> None:
        self.provider.shutdown()
