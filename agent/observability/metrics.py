"""Prometheus metrics, one registry per app so several agents (and tests) in a process never mix counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # process_cpu_seconds_total and process_resident_memory_bytes: load tests read the agent's cost here.
        ProcessCollector(registry=r)
        self.active_calls = Gauge("agent_active_calls", "Calls with an open stream", registry=r)
        self.calls = Counter("agent_calls", "Calls ended, by reason", ["reason"], registry=r)
        self.webhooks = Counter(
            "agent_webhooks", "Webhooks received, by route and outcome", ["route", "outcome"], registry=r
        )
        self.stream_rejected = Counter("agent_stream_rejected", "Stream sockets refused", ["reason"], registry=r)
        self.inbound_dropped = Counter(
            "agent_inbound_dropped", "Carrier messages dropped, by reason", ["reason"], registry=r
        )
        self.caller_audio_dropped_ms = Counter(
            "agent_caller_audio_dropped_ms",
            "Caller audio dropped because the model side stalled (ms)",
            registry=r,
        )
        self.barge_ins = Counter("agent_barge_ins", "Barge-ins that cleared bot audio", registry=r)
        self.truncations = Counter("agent_truncations", "conversation.item.truncate sent", registry=r)
        self.model_errors = Counter("agent_model_errors", "Error events from the model, by code", ["code"], registry=r)
        self.model_reconnects = Counter(
            "agent_model_reconnects", "Model socket reconnects, by outcome", ["outcome"], registry=r
        )
        self.model_events_off_contract = Counter(
            "agent_model_events_off_contract",
            "Model server events outside the SDK's types: handled leniently, ignored (unknown type) or unusable",
            ["outcome"],
            registry=r,
        )
        self.shared_state_failures = Counter(
            "agent_shared_state_failures",
            "Reads or writes of the state replicas share (answer context, outcome, end) that failed or timed out",
            registry=r,
        )
        self.responses_abandoned = Counter(
            "agent_responses_abandoned",
            "Responses the model never started or never finished in time, given up so the call goes on",
            ["stage"],
            registry=r,
        )
        latency_buckets = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
        self.answer_latency = Histogram(
            "agent_answer_seconds", "Answer webhook handling time", buckets=latency_buckets, registry=r
        )
        self.greeting_latency = Histogram(
            "agent_greeting_seconds", "Stream start -> first greeting audio sent", buckets=latency_buckets, registry=r
        )
        self.response_latency = Histogram(
            "agent_response_seconds",
            "Caller's turn detected as ended -> first answer audio sent",
            buckets=latency_buckets,
            registry=r,
        )
        self.stream_resumes = Counter(
            "agent_stream_resumes", "Dropped streams that Vobiz reconnected into the same call", registry=r
        )
        self.calls_rejected = Counter("agent_calls_rejected", "Calls refused at answer time", ["reason"], registry=r)
        self.tokens = Counter("agent_tokens", "Model tokens used", ["kind"], registry=r)
        self.clear_latency = Histogram(
            "agent_barge_in_clear_seconds",
            "speech_started received -> clearAudio sent",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
            registry=r,
        )
        self.early_clears = Counter(
            "agent_early_clears", "Bot silenced on the caller's speech onset, before the model's VAD", registry=r
        )
        self.early_clear_false_alarms = Counter(
            "agent_early_clear_false_alarms", "Early clears the VAD did not confirm (the bot resumed)", registry=r
        )
        self.records_saved = Counter("agent_records_saved", "Call records saved to the database", registry=r)
        self.records_spooled = Counter(
            "agent_records_spooled",
            "Call records written to the local spool instead (database down or slow, queue full, shutdown)",
            ["reason"],
            registry=r,
        )
        self.records_replayed = Counter(
            "agent_records_replayed", "Spooled call records saved to the database later", registry=r
        )
        self.records_failed = Counter(
            "agent_records_failed",
            "Call records that could not be saved: refused by the database (kept in the spool's failed/), "
            "unreadable spool files, spool writes that failed, or lost at shutdown",
            ["reason"],
            registry=r,
        )
        self.records_spool_files = Gauge(
            "agent_records_spool_files", "Call records waiting in the local spool for the database", registry=r
        )

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample, 0 when absent: for tests and the console."""
        return self.registry.get_sample_value(name, labels) or 0.0
