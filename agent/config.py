"""Service configuration from the environment and `.env`.

OpenAI and Vobiz settings keep their vendors' own variable names so existing deployments carry over; everything
the agent itself adds lives under the `AGENT_` prefix.
"""

from __future__ import annotations

import ipaddress
import secrets
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ContentType = Literal["audio/x-mulaw;rate=8000", "audio/x-l16;rate=8000", "audio/x-l16;rate=16000"]
L16ByteOrder = Literal["auto", "little", "big"]
InterruptionMode = Literal["adaptive", "early", "immediate"]


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


MIN_OPERATOR_TOKEN_CHARS = 32


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


class Settings(BaseSettings):
    """Everything the service reads at start-up; invalid values stop it with one line per problem."""

    model_config = SettingsConfigDict(
        env_prefix="AGENT_", env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # Vendor-named settings (no AGENT_ prefix).
    openai_api_key: SecretStr | None = Field(default=None, validation_alias=_env("OPENAI_API_KEY"))
    openai_base_url: str | None = Field(default=None, validation_alias=_env("OPENAI_BASE_URL"))
    openai_realtime_model: str = Field(default="gpt-realtime", validation_alias=_env("OPENAI_REALTIME_MODEL"))
    public_url: str = Field(default="http://127.0.0.1:8080", validation_alias=_env("PUBLIC_URL"))
    vobiz_auth_id: str | None = Field(default=None, validation_alias=_env("VOBIZ_AUTH_ID"))
    vobiz_auth_token: SecretStr | None = Field(default=None, validation_alias=_env("VOBIZ_AUTH_TOKEN"))
    vobiz_api_url: str = Field(default="https://api.vobiz.ai/api/v1", validation_alias=_env("VOBIZ_API_URL"))
    otel_endpoint: str | None = Field(
        default=None,
        validation_alias=_env("OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="OTLP/HTTP collector; set it to get one trace per call",
    )
    database_url: str = Field(
        default="sqlite+aiosqlite:///var/agent.db",
        validation_alias=_env("DATABASE_URL"),
        description="SQLite file by default; postgresql+asyncpg://… for several replicas",
    )
    vobiz_main_auth_token: SecretStr | None = Field(
        default=None,
        validation_alias=_env("VOBIZ_MAIN_AUTH_TOKEN"),
        description="parent account token (MA-V2/V3)",
    )

    # Agent settings (AGENT_ prefix).
    stream_content_type: ContentType = "audio/x-mulaw;rate=8000"
    stream_secret: SecretStr = Field(
        default_factory=lambda: SecretStr(secrets.token_urlsafe(32)),
        description="HMAC key for per-call stream tokens; set it explicitly when running several replicas",
    )
    stream_token_ttl_s: float = Field(
        default=300.0, gt=0, description="how long after the answer the call's first stream may open"
    )
    l16_byte_order: L16ByteOrder = "auto"
    stream_max_retries: int = Field(default=3, ge=0, le=10, description="<Stream maxRetries>: Vobiz reconnects")
    stream_resume_s: float = Field(
        default=5.0, ge=0, description="how long a call waits for Vobiz to reconnect a dropped stream (0: never)"
    )
    prompts_dir: Path = Path("prompts")
    default_prompt: str = "default"
    playout_lead_ms: int = Field(default=200, ge=40, le=2000)
    playout_chunk_ms: int = Field(default=100, ge=10, le=200)  # the most one playAudio carries (see playout.py)
    checkpoint_interval_ms: int = Field(default=1000, ge=100)
    model_strict_events: bool = Field(
        default=False,
        description="also check each model event the agent handles against the openai SDK's strict types and count "
        "those outside them (agent_model_events_off_contract, outcome lenient); loads the SDK (~18 MB)",
    )
    prewarm_timeout_s: float = Field(default=10.0, gt=0)
    prewarm: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="open the model session at the answer webhook; auto: when the stream is sure to come back here",
    )
    replica_public_url: str | None = Field(
        default=None,
        description="this replica's own public URL (e.g. a StatefulSet pod's host name): streams come back here",
    )
    model_connect_timeout_s: float = Field(default=10.0, gt=0)
    model_session_max_s: float = Field(
        default=3300.0, gt=0, description="move to a fresh model session before OpenAI's 60-minute cap"
    )
    rollover_quiet_wait_s: float = Field(default=240.0, ge=0, description="longest wait for a quiet moment")
    rollover_answer_wait_s: float = Field(
        default=15.0, ge=0, description="then, how long an answer being generated may finish before the switch"
    )
    model_reconnect_attempts: int = Field(default=3, ge=0, le=10)
    model_response_start_timeout_s: float = Field(
        default=10.0, gt=0, description="a requested response the model never starts is given up after this"
    )
    model_quiet_ms: float = Field(
        default=500.0, ge=50, description="silence mid-response after which the model socket is pinged"
    )
    model_pong_timeout_ms: float = Field(
        default=1000.0, ge=50, description="no pong within this: the model socket died silently; reconnect"
    )
    model_response_stall_timeout_s: float = Field(
        default=30.0, gt=0, description="a response with no model event for this long is cancelled"
    )
    caller_queue_ms: int = Field(default=2000, ge=100)
    inbound_audio_max_rate: float = Field(
        default=1.2, gt=1.0, description="caller audio faster than this many times real time is dropped and counted"
    )
    inbound_audio_burst_s: float = Field(
        default=2.0, gt=0, description="seconds of caller audio allowed at once, for a carrier catching up"
    )
    interruptions: InterruptionMode | None = Field(
        default=None,
        description=(
            "adaptive (default): pause the bot when the caller seems to talk, then cut it or resume it from where it"
            " stopped, as the evidence says; early: pause on the caller's onset, cut when the model's VAD confirms;"
            " immediate: the model's VAD cuts the bot at once"
        ),
    )
    early_barge_in: bool = Field(
        default=False, description="alias of AGENT_INTERRUPTIONS=early (when AGENT_INTERRUPTIONS is unset)"
    )
    interruption_long_speech_ms: float = Field(
        default=1300.0, ge=100, le=10000, description="adaptive: this much caller speech is a real interruption"
    )
    interruption_short_speech_ms: float = Field(
        default=800.0, ge=0, le=10000, description="adaptive: a single word shorter than this is a murmur"
    )
    interruption_min_words: int = Field(
        default=2, ge=1, le=20, description="adaptive: this many words that are not backchannels interrupt"
    )
    interruption_transcript_wait_ms: float = Field(
        default=1200.0, ge=0, le=10000, description="adaptive: no transcript this long after the speech: resume"
    )
    # Off by default: on the bench it did not shorten the pause, and until a short interruption's words arrive
    # (0.3-1 s from a remote recogniser) the bot plays on over it.
    interruption_resume_quiet_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="adaptive: a short voiced sound over for this long plays the bot on before its words are known,"
        " still cut if they interrupt (0: wait for the words)",
    )
    interruption_max_pause_ms: float = Field(
        default=2500.0, ge=200, le=20000, description="adaptive: the longest the bot is held while unsure"
    )
    echo_detection: bool = Field(
        default=True, description="adaptive: the bot's own voice coming back on the line is not the caller"
    )
    early_barge_in_onset_ms: float = Field(default=100.0, ge=20, le=1000, description="loud speech needed")
    early_barge_in_confirm_ms: float = Field(
        default=800.0, ge=100, le=5000, description="wait for the model's VAD, then resume the bot if it stays silent"
    )
    goodbye_timeout_s: float = Field(default=15.0, gt=0)
    dtmf_flush_s: float = Field(default=1.5, gt=0)
    transfer_number: str | None = None
    apology_text: str = "Sorry, we are having technical trouble. Please call again later. Goodbye."
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    max_concurrent_calls: int = Field(default=200, ge=1, description="above it, new calls hear an apology")
    busy_text: str = "Sorry, all our lines are busy right now. Please call again in a few minutes. Goodbye."
    max_call_cost_usd: float | None = Field(default=None, gt=0, description="estimated model cost cap per call")
    drain_timeout_s: float = Field(default=300.0, ge=0, description="on SIGTERM, how long calls may finish")
    readiness_probe_interval_s: float = Field(default=15.0, gt=0)
    fault_injection: bool = Field(
        default=False, description="testing only: POST /debug/stall?ms=N blocks the event loop (never in production)"
    )
    recordings_dir: Path = Path("var/recordings")
    record_calls: bool = True
    recording_retention_days: float = Field(
        default=30.0, gt=0, description="recordings and call records older than this are deleted (hourly)"
    )
    spool_dir: Path = Field(
        default=Path("var/spool"), description="call records the database could not take wait here to be replayed"
    )
    record_save_timeout_s: float = Field(default=5.0, gt=0, description="longest a call record's save may take")
    operator_token: SecretStr | None = Field(default=None, description="protects /console; unset = console off")
    insecure_webhooks: bool = Field(
        default=False,
        description="local development only: serve webhooks without a Vobiz token (no signature checks)",
    )
    webhook_allow_ips: str = Field(
        default="", description="comma-separated CIDRs webhooks may come from (client IP after proxy headers)"
    )
    webhook_nonce_retention_days: float = Field(
        default=30.0, gt=0, description="how long seen signature nonces are kept (replays refused meanwhile)"
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1,::1",
        description="proxies trusted for X-Forwarded-For/-Proto (uvicorn forwarded_allow_ips; '*' trusts all)",
    )
    # Outbound calls and campaigns (agent.campaigns).
    outbound_from_number: str | None = Field(
        default=None,
        description="caller ID (a Vobiz number of yours) for outbound calls that name none",
    )
    campaign_dialler: bool = Field(
        default=True, description="this replica dials running campaigns (needs VOBIZ_AUTH_ID/VOBIZ_AUTH_TOKEN)"
    )
    campaign_poll_s: float = Field(default=1.0, gt=0, le=60, description="how often an idle dialler looks again")
    campaign_claim_lease_s: float = Field(
        default=60.0, gt=0, description="a claimed number not sent within this goes back to the queue"
    )
    campaign_call_lease_s: float = Field(
        default=7200.0,
        gt=0,
        description="a placed call with no final Vobiz callback within this is closed as failed (never re-dialled)",
    )
    campaign_timezone: str = Field(default="Asia/Kolkata", description="callees' time zone when a row names none")
    # USD per million tokens, for the per-call cost estimate (gpt-realtime list prices; override as they change).
    price_input_text: float = 4.0
    price_input_audio: float = 32.0
    price_input_cached: float = 0.4
    price_output_text: float = 16.0
    price_output_audio: float = 64.0

    @field_validator("public_url", "replica_public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("openai_base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://", "ws://", "wss://")):
            raise ValueError("must be an http(s):// or ws(s):// URL")
        return value.rstrip("/") if value else value

    @field_validator("operator_token")
    @classmethod
    def _check_operator_token(cls, value: SecretStr | None) -> SecretStr | None:
        # Empty means console off; anything shorter than 32 characters is guessable enough to refuse.
        if value is not None and 0 < len(value.get_secret_value()) < MIN_OPERATOR_TOKEN_CHARS:
            raise ValueError(
                f"must be at least {MIN_OPERATOR_TOKEN_CHARS} characters "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return value

    @field_validator("webhook_allow_ips")
    @classmethod
    def _check_webhook_allow_ips(cls, value: str) -> str:
        for item in _split(value):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _check_forwarded_allow_ips(cls, value: str) -> str:
        for item in _split(value):
            if item == "*":
                continue
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not '*', an IP address or a CIDR network") from None
        return value

    @property
    def webhook_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The parsed webhook allow-list; empty means any source address may call (signatures still apply)."""
        return [ipaddress.ip_network(item, strict=False) for item in _split(self.webhook_allow_ips)]

    @property
    def webhook_auth_enabled(self) -> bool:
        """Either Vobiz token turns signature checks on: a sub-account deployment may only hold the main one."""
        return bool(self.webhook_tokens or self.main_webhook_tokens)

    @property
    def stream_ws_url(self) -> str:
        """Where Vobiz opens a call's stream: this very replica when it has a URL of its own, else the service.
        https gives wss, http gives ws: Vobiz needs wss in production."""
        scheme, rest = (self.replica_public_url or self.public_url).split("://", 1)
        return ("wss" if scheme == "https" else "ws") + "://" + rest

    @property
    def prewarm_here(self) -> bool:
        """Pre-warm only where the stream is sure to reach this replica: a session nobody streams to is paid for
        nothing, and the replica that does get the stream would open a second one. One process on SQLite, or a
        replica with a URL of its own, qualifies; replicas behind a plain load balancer do not."""
        if self.prewarm != "auto":
            return self.prewarm == "on"
        return self.replica_public_url is not None or self.database_url.startswith("sqlite")

    @property
    def interruption_mode(self) -> InterruptionMode:
        """AGENT_INTERRUPTIONS, else `early` for the older AGENT_EARLY_BARGE_IN=true, else `adaptive`."""
        if self.interruptions is not None:
            return self.interruptions
        return "early" if self.early_barge_in else "adaptive"

    @property
    def webhook_tokens(self) -> list[str]:
        return [self.vobiz_auth_token.get_secret_value()] if self.vobiz_auth_token else []

    @property
    def main_webhook_tokens(self) -> list[str]:
        return [self.vobiz_main_auth_token.get_secret_value()] if self.vobiz_main_auth_token else []

    @property
    def price_fields(self) -> tuple[str, ...]:
        return tuple(f"price_{kind}" for kind in self.prices)

    @property
    def prices(self) -> dict[str, float]:
        return {
            "input_text": self.price_input_text,
            "input_audio": self.price_input_audio,
            "input_cached": self.price_input_cached,
            "output_text": self.price_output_text,
            "output_audio": self.price_output_audio,
        }

    @property
    def secret_values(self) -> list[str]:
        """Every configured secret, for the log redaction filter."""
        fields = (
            self.openai_api_key,
            self.vobiz_auth_token,
            self.vobiz_main_auth_token,
            self.stream_secret,
            self.operator_token,
        )
        return [f.get_secret_value() for f in fields if f is not None]

    @property
    def vobiz_rest_enabled(self) -> bool:
        return bool(self.vobiz_auth_id and self.vobiz_auth_token)


class ConfigError(Exception):
    """Raised with one readable line per invalid setting."""


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "settings"
            field = Settings.model_fields.get(name)
            env_name = name.upper() if field is None or field.validation_alias else f"AGENT_{name.upper()}"
            lines.append(f"invalid setting {env_name}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
