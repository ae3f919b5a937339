"""A simulated Vobiz carrier and caller that drive a running agent over real HTTP and WebSocket.

Unit tests cannot see what goes wrong on a real phone line: Vobiz sends 20 ms frames in real time, plays what
the agent queues in real time, acks a checkpoint only once everything before it has played, forgets pending
checkpoints on clearAudio, and runs the rest of the answer XML after the stream ends. This module plays that
part faithfully (Vobiz protocol reference §1-§3; doc contradictions from §9 are options), so the test-suite,
the synthetic-call CLI and load tests exercise the agent the way a real call does.

Clock model: the call clock starts when ``start`` is sent (t0). Caller frame k carries audio for
[k*P, (k+1)*P): its content is decided at t0 + k*P and it is sent at t0 + (k+1)*P. Playout tick k starts
playing frame k of bot audio at t0 + k*P, using only audio that had arrived by then. Both run on absolute
schedules, so they never drift, and a late event loop catches up instead of slipping.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import inspect
import json
import secrets
import time
import uuid
import wave
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, TypeAlias
from urllib.parse import urlsplit

import httpx
import numpy as np
import numpy.typing as npt
import soxr
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from agent.audio.codecs import (
    Int16Array,
    float_to_pcm16,
    l16_to_pcm16,
    mulaw_to_pcm16,
    pcm16_to_l16,
    pcm16_to_mulaw,
)

__all__ = [
    "CallEndedWithoutStream",
    "CallerAudio",
    "CarrierProtocolError",
    "CarrierSim",
    "ClearRecord",
    "Cue",
    "EndReason",
    "ScriptItem",
    "Segment",
    "SimCall",
    "SimCallOptions",
    "SimulationError",
    "StreamFormat",
    "TimelineEntry",
    "WebhookRecord",
    "XmlAction",
    "parse_vobiz_xml",
    "vobiz_signature_headers",
]

MULAW: Final = "audio/x-mulaw"
L16: Final = "audio/x-l16"
# <Stream contentType> (inbound). 24000 is disputed (§9.1): accepted, but flagged in `warnings`.
INBOUND_RATES: Final[Mapping[str, tuple[int, ...]]] = {MULAW: (8000,), L16: (8000, 16000, 24000)}
# playAudio media.sampleRate per media.contentType (§3.1).
PLAYBACK_RATES: Final[Mapping[str, tuple[int, ...]]] = {MULAW: (8000,), L16: (8000, 16000, 24000)}
RESPONSE_CHILDREN: Final = frozenset(
    {
        "Dial",
        "Speak",
        "Play",
        "Record",
        "Gather",
        "Hangup",
        "Redirect",
        "Wait",
        "Conference",
        "PreAnswer",
        "DTMF",
        "Stream",
    }
)
XML_MEDIA_TYPES: Final = frozenset({"application/xml", "text/xml"})
MAX_XML_BYTES: Final = 100 * 1024
MAX_REDIRECT_DEPTH: Final = 5
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
_EMPTY: Final[Int16Array] = np.zeros(0, dtype=np.int16)
_WALL_FORMAT: Final = "%Y-%m-%d %H:%M:%S"

EndReason = Literal[
    "caller_hangup", "agent_stop", "agent_closed", "network_drop", "transfer", "stream_timeout", "error"
]
_CONTINUE_XML: Final[frozenset[str]] = frozenset({"agent_stop", "agent_closed", "network_drop", "stream_timeout"})


class CarrierProtocolError(Exception):
    """The agent's HTTP/XML side did something real Vobiz would reject; raised loudly by place_call."""


class CallEndedWithoutStream(Exception):
    """The answer XML ended the call before any <Stream> (e.g. a capacity rejection with <Hangup/>)."""

    def __init__(self, xml: str, actions: list[XmlAction]) -> None:
        verbs = ", ".join(a.verb for a in actions) or "nothing"
        super().__init__(f"answer XML ended the call without a <Stream> (ran: {verbs})")
        self.xml = xml
        self.actions = actions


class SimulationError(RuntimeError):
    """The simulator itself failed; surfaced by wait_for so a broken sim never looks like a slow agent."""


# ----------------------------------------------------------------------------------------------------------
# Formats and caller audio
# ----------------------------------------------------------------------------------------------------------


class StreamFormat(NamedTuple):
    """Encoding + rate of one direction, parsed from a ``audio/x-...;rate=N`` content type."""

    encoding: str
    rate: int

    @classmethod
    def parse(cls, content_type: str) -> StreamFormat:
        parts = [p.strip() for p in content_type.split(";")]
        encoding = parts[0].lower()
        rate: int | None = None
        for part in parts[1:]:
            key, _, value = part.partition("=")
            if key.strip().lower() == "rate":
                try:
                    rate = int(value.strip())
                except ValueError:
                    raise ValueError(f"bad rate in content type {content_type!r}") from None
        if encoding not in INBOUND_RATES:
            raise ValueError(f"unsupported encoding in content type {content_type!r}")
        rate = 8000 if rate is None else rate
        if rate not in INBOUND_RATES[encoding]:
            raise ValueError(f"rate {rate} is not valid for {encoding} (content type {content_type!r})")
        return cls(encoding, rate)

    @property
    def content_type(self) -> str:
        return f"{self.encoding};rate={self.rate}"

    @property
    def bytes_per_sample(self) -> int:
        return 1 if self.encoding == MULAW else 2

    def samples_per_frame(self, frame_ms: int) -> int:
        return self.rate * frame_ms // 1000

    def bytes_per_frame(self, frame_ms: int) -> int:
        return self.samples_per_frame(frame_ms) * self.bytes_per_sample


def _ms_to_samples(ms: float, rate: int) -> int:
    return round(ms * rate / 1000)


def _resample(samples: Int16Array, src_rate: int, dst_rate: int) -> Int16Array:
    if src_rate == dst_rate or len(samples) == 0:
        return samples
    return np.asarray(soxr.resample(samples, src_rate, dst_rate), dtype=np.int16)


@dataclass(frozen=True)
class Segment:
    """A stretch of caller audio; rendered lazily so it always matches the rate the agent chose in its XML."""

    kind: str
    label: str
    duration_ms: float
    render_fn: Callable[[int], Int16Array] = field(repr=False, compare=False)

    def render(self, rate: int) -> Int16Array:
        return self.render_fn(rate)


@dataclass(frozen=True)
class Cue:
    """Keep the caller silent until a condition on the live call holds, then say ``segment``.

    ``arm`` is called when the cue reaches the head of the script and returns the condition, so conditions
    can be relative to that moment ("300 ms into the bot's next reply").
    """

    arm: Callable[[SimCall], Callable[[], bool]] = field(repr=False, compare=False)
    segment: Segment | None
    description: str


ScriptItem: TypeAlias = "Segment | Cue | Callable[[SimCall], bool]"


class CallerAudio:
    """Builders for what the caller says; a script is a list of segments, cues and gate callables.

    A plain callable ``f(call) -> bool`` in a script is a gate: the caller stays silent until it is true.
    After the script ends the caller sends silence until the call ends.
    """

    @staticmethod
    def silence(ms: float) -> Segment:
        return Segment("silence", "silence", ms, lambda rate: np.zeros(_ms_to_samples(ms, rate), dtype=np.int16))

    @staticmethod
    def tone(hz: float, ms: float, amplitude: float = 0.3) -> Segment:
        def render(rate: int) -> Int16Array:
            t = np.arange(_ms_to_samples(ms, rate), dtype=np.float64) / rate
            return float_to_pcm16(amplitude * np.sin(2 * np.pi * hz * t))

        return Segment("tone", f"tone {hz:g} Hz", ms, render)

    @staticmethod
    def noise(ms: float, amplitude: float = 0.1, seed: int = 0) -> Segment:
        """Seeded white noise: speech-like energy for VAD tests, reproducible across runs."""

        def render(rate: int) -> Int16Array:
            rng = np.random.default_rng(seed)
            return float_to_pcm16(rng.uniform(-amplitude, amplitude, _ms_to_samples(ms, rate)))

        return Segment("noise", "noise", ms, render)

    @staticmethod
    def pcm(samples: npt.NDArray[Any], rate: int, label: str = "pcm") -> Segment:
        """Mono samples (int16, or float in [-1, 1]) at ``rate``; resampled to the stream rate when needed."""
        if samples.ndim != 1:
            raise ValueError("CallerAudio.pcm needs mono (1-D) samples")
        pcm = (
            float_to_pcm16(samples)
            if np.issubdtype(samples.dtype, np.floating)
            else np.asarray(samples, dtype=np.int16)
        )
        return Segment("pcm", label, len(pcm) * 1000 / rate, lambda target: _resample(pcm, rate, target))

    @staticmethod
    def wav(path: str | Path) -> Segment:
        """A 16-bit PCM WAV file (stereo is averaged to mono)."""
        with wave.open(str(path), "rb") as wav_file:
            if wav_file.getsampwidth() != 2:
                raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
            channels = wav_file.getnchannels()
            rate = wav_file.getframerate()
            data = wav_file.readframes(wav_file.getnframes())
        samples = l16_to_pcm16(data)
        if channels > 1:
            frames = samples.reshape(-1, channels).astype(np.int32)
            samples = np.round(frames.mean(axis=1)).astype(np.int16)
        return CallerAudio.pcm(samples, rate, label=Path(path).name)

    @staticmethod
    def after_bot_audio(ms_into_playback: float, segment: Segment) -> Cue:
        """Speak once the carrier has played ``ms_into_playback`` ms of bot audio since this cue was reached."""

        def arm(call: SimCall) -> Callable[[], bool]:
            base = call.played_ms
            return lambda: call.played_ms - base >= ms_into_playback

        return Cue(arm, segment, f"after {ms_into_playback:g} ms of bot audio")

    @staticmethod
    def at(ms_into_call: float, segment: Segment) -> Cue:
        """Speak at a fixed point of the call clock (ms after ``start``)."""
        return Cue(lambda call: lambda: call.call_ms >= ms_into_call, segment, f"at {ms_into_call:g} ms")

    @staticmethod
    def after_checkpoint(name: str, segment: Segment) -> Cue:
        """Speak once the carrier has acked checkpoint ``name`` (the bot finished that utterance)."""
        return Cue(lambda call: lambda: name in call.acked_checkpoints, segment, f"after checkpoint {name!r}")

    @staticmethod
    def when(condition: Callable[[SimCall], bool], segment: Segment | None = None, description: str = "") -> Cue:
        return Cue(lambda call: lambda: condition(call), segment, description or "when condition")


def _as_cue_or_segment(item: ScriptItem) -> Segment | Cue:
    if isinstance(item, Segment | Cue):
        return item
    if callable(item):
        return CallerAudio.when(item, None, getattr(item, "__name__", "gate"))
    raise TypeError(f"script items must be Segment, Cue or callable, not {type(item).__name__}")


# ----------------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------------


@dataclass
class SimCallOptions:
    """Per-call knobs; the defaults behave like current (R2) Vobiz."""

    # Used only when <Stream> has no contentType (real Vobiz would then use audio/x-l16;rate=8000; a
    # warning records the difference). The XML's contentType always wins.
    content_type: str = "audio/x-mulaw;rate=8000"
    l16_big_endian: bool = False  # §9.3: inbound L16 byte order is disputed
    legacy_flat_start: bool = False  # §9.6: R0 flat `start`
    auth_token: str | None = None  # sign every webhook (V3 + V2) when set
    frame_ms: int = 20
    from_: str = "+919000000001"
    to: str = "+918000000002"
    direction: Literal["inbound", "outbound"] = "inbound"
    ring_callback: bool = True  # outbound: Event=Ring to the answer URL while the callee's phone rings
    reconnect_on_drop: bool = True  # a dropped stream comes back as a new socket and streamId (<Stream maxRetries>)
    answer_method: Literal["POST", "GET"] = "POST"
    played_stream_stream_id: bool = True  # §9.9: older docs put streamId on playedStream, R2 does not
    ack_sequence_numbers: bool = False  # R2 acks carry no sequenceNumber; R0 clearedAudio did
    playback_rate: int | None = None  # rate of `played`; default: the first playAudio's sampleRate
    account_id: str = "500025"  # start.accountId (numeric string in R2)
    parent_auth_id: str = "MA_SIMULATED"  # ParentAuthID on stream callbacks, accountId in the R0 start
    hangup_url: str | None = None  # None: Event=Hangup goes to the answer URL, as Vobiz does
    hangup_webhook: bool = True
    status_callbacks: bool = True  # POST StartStream/PlayedStream/... when <Stream statusCallbackUrl> is set
    record_frames: bool = True  # one `frame_sent` timeline entry per media frame
    keep_sent_frames: bool = False  # keep the text of every frame sent as Vobiz (SimCall.sent_frames), for checks
    extra_fields: Mapping[str, str] = field(default_factory=dict)  # e.g. X-VH-* or CallerName on the answer
    webhook_timeout: float = 5.0
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.frame_ms <= 0:
            raise ValueError("frame_ms must be positive")
        if self.playback_rate is not None and self.playback_rate not in PLAYBACK_RATES[L16]:
            raise ValueError(f"playback_rate must be one of {PLAYBACK_RATES[L16]}")


class TimelineEntry(NamedTuple):
    """One thing that happened, on the time.monotonic() clock."""

    t: float
    kind: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class ClearRecord:
    t: float
    played_ms_at_clear: float
    queued_ms_dropped: float
    dropped_checkpoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class XmlAction:
    """One XML verb Vobiz executed; ``verb`` is the element name, or "Transfer" for a REST transfer."""

    verb: str
    text: str
    attrs: dict[str, str]
    detail: dict[str, Any]
    t: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class WebhookRecord:
    t: float
    event: str
    method: str
    url: str
    fields: dict[str, str]
    status: int | None
    body: str
    error: str | None = None


@dataclass(frozen=True)
class _Hangup:
    cause: str
    source: str
    code: int | None = None
    name: str | None = None


_END_OF_XML: Final = _Hangup("NORMAL_CLEARING", "Vobiz", 4010, "End Of XML Instructions")
_HANGUP_REASONS: Final[Mapping[str, str]] = {"busy": "USER_BUSY", "rejected": "CALL_REJECTED"}


@dataclass
class _XmlResult:
    stream: ET.Element | None = None
    rest: list[ET.Element] = field(default_factory=list)
    base_url: str = ""
    depth: int = 0
    hangup: _Hangup | None = None


def vobiz_signature_headers(token: str, url: str, *, main_token: str | None = None) -> dict[str, str]:
    """The V3 and V2 signature headers Vobiz puts on a callback to ``url``, built from Vobiz's docs alone (not
    from the agent's verifier, so a shared mistake shows up as a refused webhook).

    V2 = base64(HMAC-SHA256(auth token, base URL + nonce)); V3 the same over base URL + "." + nonce; the base URL
    is the callback URL without its query; each nonce is 20 random digits. With the parent account's token the
    MA variants are added, sharing each version's nonce header.
    """
    base = urlsplit(url)._replace(query="", fragment="").geturl()
    headers: dict[str, str] = {}
    for version, joiner in (("V3", "."), ("V2", "")):
        nonce = "".join(secrets.choice("0123456789") for _ in range(20))
        for name, key in (("", token), ("MA-", main_token)):
            if key is None:
                continue
            digest = hmac.new(key.encode(), f"{base}{joiner}{nonce}".encode(), hashlib.sha256).digest()
            headers[f"X-Vobiz-Signature-{name}{version}"] = base64.b64encode(digest).decode()
        headers[f"X-Vobiz-Signature-{version}-Nonce"] = nonce
    return headers


def _wall(ts: datetime) -> str:
    return ts.strftime(_WALL_FORMAT)


def parse_vobiz_xml(response: httpx.Response, what: str) -> ET.Element:
    """Apply Vobiz's answer rules (§1.2); anything Vobiz would turn into "Invalid Answer XML" raises."""
    if response.status_code != 200:
        raise CarrierProtocolError(
            f"{what}: HTTP {response.status_code}, Vobiz needs 200 with XML: {response.text[:200]!r}"
        )
    media_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in XML_MEDIA_TYPES:
        raise CarrierProtocolError(f"{what}: Content-Type {media_type or '(none)'!r}, need application/xml or text/xml")
    if len(response.content) > MAX_XML_BYTES:
        raise CarrierProtocolError(f"{what}: XML is {len(response.content)} bytes, Vobiz allows {MAX_XML_BYTES}")
    try:
        root = ET.fromstring(response.content)
    except ET.ParseError as exc:
        raise CarrierProtocolError(f"{what}: Invalid Answer XML ({exc}): {response.text[:200]!r}") from None
    if root.tag != "Response":
        raise CarrierProtocolError(f"{what}: root element is <{root.tag}>, need exactly one <Response>")
    if root.find(".//Response") is not None:
        raise CarrierProtocolError(f"{what}: nested <Response>; need exactly one")
    for child in root:
        if child.tag not in RESPONSE_CHILDREN:
            raise CarrierProtocolError(f"{what}: <{child.tag}> is not an allowed child of <Response>")
    return root


def _dial_target(element: ET.Element) -> str:
    for child in element:
        if child.tag in ("Number", "User") and child.text and child.text.strip():
            return child.text.strip()
    return (element.text or "").strip()


class _CallContext:
    """HTTP side of one call: identity fields, signing, webhook records and the XML interpreter."""

    def __init__(self, call_uuid: str, options: SimCallOptions, http: httpx.AsyncClient, answer_url: str) -> None:
        self.call_uuid = call_uuid
        self.options = options
        self.http = http
        self.answer_url = answer_url
        self.webhooks: list[WebhookRecord] = []
        self.warnings: list[str] = []
        self.answered_mono = time.monotonic()
        self.answered_wall = datetime.now(UTC)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def fields(self, *, call_status: str, event: str) -> dict[str, str]:
        o = self.options
        return {
            "CallUUID": self.call_uuid,
            "From": o.from_,
            "To": o.to,
            "Direction": o.direction,
            "CallStatus": call_status,
            "Event": event,
        }

    async def request(self, url: str, method: str, fields: Mapping[str, str], event: str) -> httpx.Response | None:
        """Send one webhook; transport failures are recorded, never raised, as Vobiz just logs them."""
        headers = {"User-Agent": "Vobiz"}
        if self.options.auth_token:
            headers.update(vobiz_signature_headers(self.options.auth_token, url))
        sent = dict(fields)
        t = time.monotonic()
        try:
            if method.upper() == "GET":
                resp = await self.http.get(url, params=sent, headers=headers, timeout=self.options.webhook_timeout)
            else:
                resp = await self.http.post(url, data=sent, headers=headers, timeout=self.options.webhook_timeout)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.webhooks.append(WebhookRecord(t, event, method.upper(), url, sent, None, "", error))
            return None
        self.webhooks.append(WebhookRecord(t, event, method.upper(), url, sent, resp.status_code, resp.text[:2000]))
        return resp

    async def fetch_xml(self, url: str, method: str, event: str) -> tuple[ET.Element, str]:
        fields = self.fields(call_status="in-progress", event=event)
        resp = await self.request(url, method, fields, event)
        if resp is None:
            raise CarrierProtocolError(f"{event} request to {url} failed: {self.webhooks[-1].error}")
        return parse_vobiz_xml(resp, f"{event} {url}"), resp.text

    async def run_xml(
        self,
        elements: Sequence[ET.Element],
        base_url: str,
        depth: int,
        actions: list[XmlAction],
        *,
        stop_at_stream: bool,
        caller_gone: Callable[[], bool] = lambda: False,
    ) -> _XmlResult:
        """Execute verbs in order like Vobiz; pauses at <Stream> when asked, else returns how the call ended."""
        for index, element in enumerate(elements):
            if caller_gone():
                return _XmlResult(hangup=_Hangup("NORMAL_CLEARING", "Caller"))
            verb, attrs = element.tag, dict(element.attrib)
            text = (element.text or "").strip()
            if verb == "Stream":
                if stop_at_stream:
                    return _XmlResult(element, list(elements[index + 1 :]), base_url, depth)
                actions.append(XmlAction(verb, text, attrs, {"connected": False}))
                self.warn("a later <Stream> was reached; the simulator does not open a second stream")
            elif verb == "Hangup":
                actions.append(XmlAction(verb, text, attrs, {}))
                cause = _HANGUP_REASONS.get(attrs.get("reason", ""), "NORMAL_CLEARING")
                return _XmlResult(hangup=_Hangup(cause, "Answer XML"))
            elif verb == "Dial":
                actions.append(XmlAction(verb, text, attrs, {"number": _dial_target(element)}))
                return _XmlResult(hangup=_Hangup("NORMAL_CLEARING", "Callee"))
            elif verb == "Redirect":
                return await self._redirect(text, attrs, base_url, depth, actions, stop_at_stream, caller_gone)
            elif verb == "Speak":
                actions.append(XmlAction(verb, "".join(element.itertext()).strip(), attrs, {}))
            else:
                actions.append(XmlAction(verb, text, attrs, {}))
        return _XmlResult(hangup=_END_OF_XML)

    async def _redirect(
        self,
        text: str,
        attrs: dict[str, str],
        base_url: str,
        depth: int,
        actions: list[XmlAction],
        stop_at_stream: bool,
        caller_gone: Callable[[], bool],
    ) -> _XmlResult:
        method = attrs.get("method", "POST").upper()
        if not text:
            actions.append(XmlAction("Redirect", text, attrs, {"error": "no URL"}))
            raise CarrierProtocolError("<Redirect> has no URL text")
        url = str(httpx.URL(base_url).join(text))
        if depth >= MAX_REDIRECT_DEPTH:
            actions.append(XmlAction("Redirect", text, attrs, {"url": url, "error": "too deep"}))
            raise CarrierProtocolError(f"more than {MAX_REDIRECT_DEPTH} nested <Redirect>s (at {url})")
        try:
            root, xml_text = await self.fetch_xml(url, method, "Redirect")
        except CarrierProtocolError as exc:
            actions.append(XmlAction("Redirect", text, attrs, {"url": url, "method": method, "error": str(exc)}))
            raise
        actions.append(XmlAction("Redirect", text, attrs, {"url": url, "method": method, "xml": xml_text}))
        # Later siblings of a <Redirect> never run: control moves to the new document.
        return await self.run_xml(
            list(root), url, depth + 1, actions, stop_at_stream=stop_at_stream, caller_gone=caller_gone
        )

    def hangup_fields(self, hangup: _Hangup) -> dict[str, str]:
        now = datetime.now(UTC)
        duration = str(max(0, round(time.monotonic() - self.answered_mono)))
        fields = self.fields(call_status="completed", event="Hangup")
        fields |= {
            "HangupCause": hangup.cause,
            "HangupSource": hangup.source,
            "Duration": duration,
            "BillDuration": duration,
            "StartTime": _wall(self.answered_wall),
            "AnswerTime": _wall(self.answered_wall),
            "EndTime": _wall(now),
        }
        if hangup.code is not None:
            fields["HangupCauseCode"] = str(hangup.code)
        if hangup.name:
            fields["HangupCauseName"] = hangup.name
        return fields

    async def post_hangup(self, hangup: _Hangup) -> None:
        if self.options.hangup_webhook:
            url = self.options.hangup_url or self.answer_url
            await self.request(url, "POST", self.hangup_fields(hangup), "Hangup")


# ----------------------------------------------------------------------------------------------------------
# The call
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _QueuedAudio:
    samples: Int16Array
    received: float
    pos: int = 0

    @property
    def remaining(self) -> int:
        return len(self.samples) - self.pos

    def take(self, n: int) -> Int16Array:
        chunk = self.samples[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk


@dataclass(frozen=True)
class _Mark:
    name: str


def _describe_predicate(predicate: Callable[[], bool]) -> str:
    with contextlib.suppress(OSError, TypeError):
        return inspect.getsource(predicate).strip()
    return getattr(predicate, "__qualname__", repr(predicate))


class SimCall:
    """One live simulated call: caller frames out, bot audio played out, commands validated and recorded.

    Created by :meth:`CarrierSim.place_call`; everything public is safe to read at any time from the same
    event loop. ``wait_*`` helpers re-check their predicate on every message and every 20 ms tick.
    """

    def __init__(
        self,
        *,
        ctx: _CallContext,
        xml: str,
        stream_element: ET.Element,
        remaining: list[ET.Element],
        base_url: str,
        depth: int,
        before_stream: list[XmlAction],
        ws: ClientConnection,
        media_format: StreamFormat,
        script: Iterable[ScriptItem],
    ) -> None:
        self._ctx = ctx
        self.options = ctx.options
        self.call_uuid = ctx.call_uuid
        self.stream_id = str(uuid.uuid4())
        self.xml = xml
        self.stream_url = (stream_element.text or "").strip()
        self.stream_attrs: dict[str, str] = dict(stream_element.attrib)
        self.media_format = media_format
        self.before_stream = before_stream
        self.after_stream: list[XmlAction] = []
        self.protocol_errors: list[str] = []
        self.warnings = ctx.warnings
        self.webhooks = ctx.webhooks
        self.timeline: list[TimelineEntry] = []
        self.clears: list[ClearRecord] = []
        self.received_checkpoints: list[str] = []
        self.acked_checkpoints: list[str] = []
        self.dropped_checkpoints: list[str] = []
        self.internal_errors: list[str] = []
        self.start_message: dict[str, Any] = {}
        self.frames_sent = 0
        self.sent_frames: list[str] = []  # with SimCallOptions.keep_sent_frames
        self.played_rate: int | None = self.options.playback_rate
        self.ended = asyncio.Event()
        self.end_reason: EndReason | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None

        self._ws = ws
        self._remaining = remaining
        self._base_url = base_url
        self._depth = depth
        self._extra_headers = self._extra_headers_value()
        self._period = self.options.frame_ms / 1000
        self._caller_k = 0  # the next caller frame's index on the call clock (it survives a reconnect)
        self._play_k = 0  # the next playout tick's index
        self._chunk_base = 0  # caller frames before this stream began (media.chunk counts per stream)
        self._retries_used = 0
        self._max_retries = _max_retries(stream_element)
        self._in_frame = media_format.samples_per_frame(self.options.frame_ms)
        self._silent_frame: Int16Array = np.zeros(self._in_frame, dtype=np.int16)
        self._out_frame = self.played_rate * self.options.frame_ms // 1000 if self.played_rate else 0
        self._t0 = 0.0
        self._epoch_ms0 = 0
        self._seq = 0
        self._send_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._callback_tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._stream_live = False
        self._stop_received = False
        self._local_reason: EndReason | None = None
        self._hangup_cause = "NORMAL_CLEARING"
        self._caller_gone = False
        self._transfer: tuple[str, str] | None = None
        # caller side
        self._script: deque[Segment | Cue] = deque(_as_cue_or_segment(i) for i in script)
        self._armed: Callable[[], bool] | None = None
        self._cbuf: Int16Array = _EMPTY
        self._caller_frames: list[Int16Array] = []
        self._script_done_recorded = False
        # playout side
        self._queue: deque[_QueuedAudio | _Mark] = deque()
        self._queued_samples = 0
        self._ack_due: deque[tuple[float, str]] = deque()
        self._cur: Int16Array | None = None
        self._cur_start = 0.0
        self._cur_tick = 0
        self._ticks = 0
        self._bot_active = False
        self._last_bot_audio_end = 0.0
        self._played_chunks: list[Int16Array] = []
        self._played_samples = 0
        self._bot_segments: list[tuple[int, Int16Array]] = []

    def __repr__(self) -> str:
        state = f"ended:{self.end_reason}" if self.ended.is_set() else "live"
        return f"<SimCall {self.call_uuid} {self.media_format.content_type} {state} played={self.played_ms:.0f}ms>"

    # ---- derived state ------------------------------------------------------------------------------------

    @property
    def call_ms(self) -> float:
        """Milliseconds on the call clock (since ``start`` was sent)."""
        return (time.monotonic() - self._t0) * 1000 if self._t0 else 0.0

    @property
    def played(self) -> Int16Array:
        """Bot audio the caller actually heard, at ``played_rate``; silence ticks are not included."""
        if not self._played_chunks:
            return _EMPTY.copy()
        return np.concatenate(self._played_chunks).astype(np.int16, copy=False)

    def _live_heard(self, now: float) -> int:
        if self._cur is None or not self.played_rate or self.ended.is_set():
            return 0
        return min(len(self._cur), max(0, int((now - self._cur_start) * self.played_rate)))

    @property
    def played_ms(self) -> float:
        """Bot audio heard so far, including the part of the current 20 ms frame already elapsed."""
        if not self.played_rate:
            return 0.0
        return (self._played_samples + self._live_heard(time.monotonic())) * 1000 / self.played_rate

    @property
    def queued_ms(self) -> float:
        """Bot audio accepted but not yet heard."""
        if not self.played_rate:
            return 0.0
        current = len(self._cur) - self._live_heard(time.monotonic()) if self._cur is not None else 0
        return (self._queued_samples + current) * 1000 / self.played_rate

    @property
    def bot_playing(self) -> bool:
        return self._bot_active

    @property
    def script_done(self) -> bool:
        return not self._script and len(self._cbuf) == 0

    @property
    def stream_live(self) -> bool:
        return self._stream_live

    def events(self, kind: str) -> list[TimelineEntry]:
        return [e for e in self.timeline if e.kind == kind]

    def bot_track(self, rate: int | None = None) -> Int16Array:
        """Bot audio on the call clock (silence where nothing played), for recordings and alignment checks."""
        src = self.played_rate or self.media_format.rate
        frame = src * self.options.frame_ms // 1000
        length = self._ticks * frame
        for offset, samples in self._bot_segments:
            length = max(length, offset + len(samples))
        track = np.zeros(length, dtype=np.int16)
        for offset, samples in self._bot_segments:
            track[offset : offset + len(samples)] = samples
        return _resample(track, src, rate) if rate else track

    def caller_track(self, rate: int | None = None) -> Int16Array:
        """What the caller sent, on the same clock as :meth:`bot_track`."""
        track = np.concatenate(self._caller_frames).astype(np.int16) if self._caller_frames else _EMPTY.copy()
        return _resample(track, self.media_format.rate, rate) if rate else track

    # ---- waiting ------------------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _state_summary(self) -> str:
        recent = [e.kind for e in self.timeline[-400:] if e.kind not in ("frame_sent", "caller_segment_started")]
        last = ", ".join(recent[-8:])
        return (
            f"call {self.call_uuid}: live={self._stream_live} ended={self.ended.is_set()} "
            f"end_reason={self.end_reason} played_ms={self.played_ms:.0f} queued_ms={self.queued_ms:.0f} "
            f"acked={self.acked_checkpoints} clears={len(self.clears)} "
            f"protocol_errors={self.protocol_errors[-5:]} recent=[{last}]"
        )

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 - a per-wait deadline reads better in tests
        what: str | None = None,
    ) -> None:
        """Wait until ``predicate()`` holds; re-checked on every message, tick and state change."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.internal_errors:
                raise SimulationError(f"carrier simulator failed: {self.internal_errors}; {self._state_summary()}")
            if predicate():
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                desc = what or _describe_predicate(predicate)
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {desc}; {self._state_summary()}")
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await changed.wait()

    async def wait_bot_audio(self, ms: float, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - per-wait deadline
        await self.wait_for(lambda: self.played_ms >= ms, timeout, f"{ms:g} ms of bot audio played")

    async def wait_checkpoint(self, name: str, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - per-wait deadline
        await self.wait_for(lambda: name in self.acked_checkpoints, timeout, f"playedStream {name!r}")

    async def wait_clear(self, count: int = 1, timeout: float = 5.0) -> ClearRecord:  # noqa: ASYNC109 - per-wait deadline
        await self.wait_for(lambda: len(self.clears) >= count, timeout, f"{count} clearAudio")
        return self.clears[count - 1]

    async def wait_bot_silence(self, ms: float, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - per-wait deadline
        """Wait until no bot audio has played (or been queued) for ``ms`` ms, e.g. after a barge-in. An ended
        call is silent: audio still queued when the agent hung up will never play (waiting for it used to hold
        every eval conversation the agent ended for the full timeout)."""

        def quiet() -> bool:
            if self.ended.is_set():
                return True
            if self._bot_active or self._queued_samples:
                return False
            return (time.monotonic() - max(self._last_bot_audio_end, self._t0)) * 1000 >= ms

        await self.wait_for(quiet, timeout, f"{ms:g} ms of bot silence")

    async def wait_script_done(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - per-wait deadline
        await self.wait_for(lambda: self.script_done, timeout, "caller script finished")

    async def wait_ended(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - per-wait deadline
        await self.wait_for(self.ended.is_set, timeout, "call ended")

    # ---- caller actions -----------------------------------------------------------------------------------

    def say(self, *items: ScriptItem) -> None:
        """Append to the caller's script while the call runs."""
        self._script.extend(_as_cue_or_segment(i) for i in items)

    async def send_raw(self, text: str) -> None:
        """Inject an arbitrary text frame (e.g. malformed JSON) without touching sequence numbers."""
        await self._ws.send(text)
        self._record("raw_sent", text=text[:200])

    async def send_event(self, event: Mapping[str, Any], *, with_sequence: bool = True) -> None:
        """Send a Vobiz->app event of your own (e.g. an R0 inbound ``stop``), numbered like the rest."""
        await self._send(dict(event), sequence=with_sequence)
        self._record("event_sent", event=event.get("event"))

    async def send_dtmf(self, digit: str) -> None:
        """A keypad press, in the Plivo shape Vobiz is believed to use (§2.4)."""
        if digit not in DTMF_DIGITS:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        ts = str(int(time.time() * 1000))
        msg = {
            "event": "dtmf",
            "streamId": self.stream_id,
            "dtmf": {"digit": digit, "track": "inbound", "timestamp": ts},
        }
        await self._send(msg, sequence=True)
        self._record("dtmf_sent", digit=digit)

    async def hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        """The caller hangs up: socket closed with 1000, then Event=Hangup; no further XML runs."""
        if not self.ended.is_set():
            if self._stream_live and self._local_reason is None:
                self._local_reason = "caller_hangup"
                self._hangup_cause = cause
                await self._close_ws(1000)
            else:
                self._caller_gone = True  # stops an after-stream document at the next verb
        await self.ended.wait()

    async def drop(self) -> None:
        """Network drop between Vobiz and the agent: no close frame. With `<Stream maxRetries>` (and
        `reconnect_on_drop`) Vobiz comes back on a new socket with a new streamId, and this returns once it has;
        otherwise the XML continues as after a stream end, and this returns once the call has ended."""
        streams = self._retries_used
        if self._stream_live and self._local_reason is None:
            self._local_reason = "network_drop"
            self._record("ws_aborted")
            self._ws.transport.abort()
        await self.wait_for(lambda: self.ended.is_set() or self._retries_used > streams, timeout=30)

    def _may_retry(self) -> bool:
        return self.options.reconnect_on_drop and self._retries_used < self._max_retries

    async def transfer_to(self, url: str, method: Literal["POST", "GET"] = "POST") -> None:
        """What the REST transfer API does: Vobiz closes the socket (no stop, no StopStream), fetches ``url``
        with Event=Transfer and executes its XML."""
        if not self._stream_live or self._local_reason is not None:
            raise RuntimeError("transfer_to needs a live stream")
        self._local_reason = "transfer"
        self._transfer = (url, method)
        await self._close_ws(1000)
        await self.ended.wait()

    # ---- plumbing -----------------------------------------------------------------------------------------

    def _record(self, kind: str, /, **detail: Any) -> None:
        self.timeline.append(TimelineEntry(time.monotonic(), kind, detail))

    def _protocol_error(self, message: str, raw: Any = None) -> None:
        if raw is not None:
            snippet = raw if isinstance(raw, str) else json.dumps(raw, default=str)
            message = f"{message}: {snippet[:160]}"
        self.protocol_errors.append(message)
        self._record("protocol_error", message=message)

    def _internal_error(self, where: str, exc: BaseException) -> None:
        self.internal_errors.append(f"{where}: {type(exc).__name__}: {exc}")
        self._notify()

    def _extra_headers_value(self) -> str:
        raw = self.stream_attrs.get("extraHeaders")
        if not raw:
            return "{}"
        if len(raw.encode()) > 512:
            self._ctx.warn("extraHeaders is longer than Vobiz's 512-byte limit")
        pairs = dict(p.split("=", 1) for p in raw.split(",") if "=" in p)
        if any(not (k + v).isalnum() for k, v in pairs.items()):
            self._ctx.warn("extraHeaders has characters outside [A-Za-z0-9]; Vobiz documents only those")
        # The on-socket encoding of your pairs is undocumented (§9.11); a JSON object string is a guess.
        return json.dumps(pairs, separators=(",", ":"))

    async def _send(self, msg: dict[str, Any], *, sequence: bool) -> None:
        # One lock so sequenceNumber order always equals wire order across the three sending tasks.
        async with self._send_lock:
            if sequence:
                msg = {"sequenceNumber": self._seq, **msg}
                self._seq += 1
            text = json.dumps(msg, separators=(",", ":"))
            await self._ws.send(text)
            if self.options.keep_sent_frames:
                self.sent_frames.append(text)

    async def _close_ws(self, code: int) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close(code)

    async def _start(self) -> None:
        await self._send_start()
        self._t0 = time.monotonic()
        self._epoch_ms0 = int(time.time() * 1000)
        self._last_bot_audio_end = self._t0
        self._stream_live = True
        self._record("start_sent", stream_id=self.stream_id, media_format=self.media_format.content_type)
        self._status_callback("StartStream", {"ServiceURL": self.stream_url})
        self._start_tasks()
        self._runner = asyncio.create_task(self._run(), name=f"sim-call-{self.call_uuid}")

    def _start_tasks(self) -> None:
        self._tasks = [
            asyncio.create_task(self._caller_loop(), name=f"sim-caller-{self.call_uuid}"),
            asyncio.create_task(self._playout_loop(), name=f"sim-playout-{self.call_uuid}"),
        ]
        timeout = self.stream_attrs.get("streamTimeout")
        if timeout and timeout.isdigit() and int(timeout) > 0:
            self._tasks.append(asyncio.create_task(self._stream_timeout(int(timeout))))
        for task in self._tasks:
            task.add_done_callback(self._on_task_done)

    async def _reconnect(self) -> bool:
        """A dropped stream, as Vobiz retries it (`maxRetries`): a new socket to the same URL and a new `start` with
        a new streamId and the same callId. What Vobiz had queued to play is lost; the caller goes on talking, and
        what they said while the stream was down never reaches the agent."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._finish_playout(time.monotonic())
        self._status_callback("DroppedStream", {"Error": "connection disconnected with the remote service"})
        try:
            ws = await _open_stream(self.stream_url, self.options)
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError, ConnectionClosed) as exc:
            self._record("reconnect_failed", error=str(exc))
            return False
        self._ws, self._retries_used = ws, self._retries_used + 1
        self.stream_id, self._seq, self._local_reason = str(uuid.uuid4()), 0, None
        # Both loops pick up on the call clock where it is now; the caller's audio meanwhile was lost.
        now_k = int((time.monotonic() - self._t0) / self._period)
        while self._caller_k < now_k:
            self._next_caller_frame()
            self._caller_k += 1
        self._chunk_base = self._caller_k
        self._play_k = now_k + 1
        try:
            await self._send_start()
        except ConnectionClosed as exc:
            self._record("reconnect_failed", error=str(exc))
            return False
        self._record("stream_reconnected", stream_id=self.stream_id, attempt=self._retries_used)
        self._status_callback("StartStream", {"ServiceURL": self.stream_url})
        self._start_tasks()
        self._notify()
        return True

    async def _send_start(self) -> None:
        fmt = self.media_format
        if self.options.legacy_flat_start:
            msg: dict[str, Any] = {
                "event": "start",
                "streamId": self.stream_id,
                "accountId": self.options.parent_auth_id,
                "callId": self.call_uuid,
                "from": self.options.from_,
                "to": self.options.to,
                "direction": self.options.direction,
                "contentType": fmt.content_type,
                "audioTrack": "inbound",
            }
            await self._send(msg, sequence=False)
            self._seq = 1
        else:
            msg = {
                "event": "start",
                "start": {
                    "callId": self.call_uuid,
                    "streamId": self.stream_id,
                    "accountId": self.options.account_id,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": fmt.encoding, "sampleRate": fmt.rate},
                },
                "extra_headers": self._extra_headers,
            }
            await self._send(msg, sequence=True)
        self.start_message = msg

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self._internal_error(task.get_name(), task.exception() or RuntimeError("?"))
        if self._local_reason is None:
            self._local_reason = "error"
            closer = asyncio.create_task(self._close_ws(1011))
            self._callback_tasks.add(closer)
            closer.add_done_callback(self._callback_tasks.discard)

    async def _stream_timeout(self, seconds: int) -> None:
        await asyncio.sleep(seconds)
        if self._stream_live and self._local_reason is None:
            self._local_reason = "stream_timeout"
            await self._close_ws(1000)

    # ---- caller side --------------------------------------------------------------------------------------

    def _push_caller(self, segment: Segment) -> None:
        rate = self.media_format.rate
        start_ms = (self.frames_sent * self._in_frame + len(self._cbuf)) * 1000 / rate
        self._cbuf = np.concatenate([self._cbuf, segment.render(rate)]).astype(np.int16, copy=False)
        self._record("caller_segment_started", kind=segment.kind, label=segment.label, call_ms=start_ms)

    def _next_caller_frame(self) -> Int16Array:
        n = self._in_frame
        if not self._script and not len(self._cbuf) and self._script_done_recorded:
            return self._silent_frame  # the common case for the rest of a call: no allocation
        while len(self._cbuf) < n and self._script:
            item = self._script[0]
            if isinstance(item, Segment):
                self._script.popleft()
                self._push_caller(item)
                continue
            if self._armed is None:
                self._armed = item.arm(self)
            if not self._armed():
                break
            self._script.popleft()
            self._armed = None
            self._record("cue_fired", description=item.description, played_ms=self.played_ms)
            if item.segment is not None:
                self._push_caller(item.segment)
        frame, self._cbuf = self._cbuf[:n], self._cbuf[n:]
        if len(frame) < n:
            frame = np.concatenate([frame, np.zeros(n - len(frame), dtype=np.int16)])
        if self.script_done and not self._script_done_recorded:
            self._script_done_recorded = True
            self._record("caller_script_done")
        return frame

    def _encode_inbound(self, frame: Int16Array) -> bytes:
        if self.media_format.encoding == MULAW:
            return pcm16_to_mulaw(frame)
        if self.options.l16_big_endian:
            return frame.astype(">i2").tobytes()
        return pcm16_to_l16(frame)

    def _media_template(self) -> str:
        # Preformatted JSON: a load test sends thousands of frames a second and json.dumps shows up in
        # profiles. Only digits and base64 are substituted, so nothing needs escaping.
        def literal(value: str) -> str:
            return json.dumps(value).replace("%", "%%")

        return (
            '{"sequenceNumber":%d,"streamId":' + literal(self.stream_id) + ',"event":"media","media":'
            '{"track":"inbound","timestamp":"%d","chunk":%d,"payload":"%s"},"extra_headers":'
            + literal(self._extra_headers)
            + "}"
        )

    async def _caller_loop(self) -> None:
        """Frame k's content is decided when its interval starts (k*P) and sent when it ends ((k+1)*P), so a
        cue fires at the call-clock moment its condition became true and the caller track lines up."""
        frame_ms = self.options.frame_ms
        template = self._media_template()
        silence = self._encode_inbound(self._silent_frame)
        silence_b64 = base64.b64encode(silence).decode("ascii")
        k = self._caller_k
        try:
            frame = self._next_caller_frame()
            while True:
                delay = self._t0 + (k + 1) * self._period - time.monotonic()
                await asyncio.sleep(max(0.0, delay))
                if frame is self._silent_frame or not frame.any():
                    nbytes, payload = len(silence), silence_b64
                else:
                    raw = self._encode_inbound(frame)
                    nbytes, payload = len(raw), base64.b64encode(raw).decode("ascii")
                async with self._send_lock:
                    chunk = k + 1 - self._chunk_base  # per stream, from 1
                    text = template % (self._seq, self._epoch_ms0 + (k + 1) * frame_ms, chunk, payload)
                    self._seq += 1
                    await self._ws.send(text)
                    if self.options.keep_sent_frames:
                        self.sent_frames.append(text)
                self._caller_frames.append(frame)
                self.frames_sent += 1
                if self.options.record_frames:
                    self._record("frame_sent", chunk=k + 1, bytes=nbytes)
                k += 1
                self._caller_k = k
                self._notify()
                frame = self._next_caller_frame()
        except ConnectionClosed:
            return

    # ---- playout side -------------------------------------------------------------------------------------

    async def _playout_loop(self) -> None:
        k = self._play_k
        try:
            while True:
                tick_at = self._t0 + k * self._period
                deadline = min(tick_at, self._ack_due[0][0]) if self._ack_due else tick_at
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                now = time.monotonic()
                await self._flush_due_acks(now)
                if now >= tick_at:
                    self._play_tick(k, tick_at)
                    await self._flush_due_acks(now)
                    k += 1
                    self._play_k = k
                self._notify()
        except ConnectionClosed:
            return

    def _commit_current(self, heard: int) -> None:
        assert self._cur is not None and self.played_rate
        part = self._cur[:heard]
        if len(part):
            self._played_chunks.append(part)
            self._played_samples += len(part)
            self._bot_segments.append((self._cur_tick * self._out_frame, part))
            self._last_bot_audio_end = self._cur_start + len(part) / self.played_rate
        self._cur = None

    def _play_tick(self, k: int, tick_at: float) -> None:
        """Finish the frame that just played, then start the next one; no awaits, so no races with commands."""
        if self._cur is not None:
            self._commit_current(len(self._cur))
        self._ticks = k + 1
        rate, need = self.played_rate, self._out_frame
        parts: list[Int16Array] = []
        got = 0
        while self._queue and (not rate or got < need):
            head = self._queue[0]
            if isinstance(head, _Mark):
                self._queue.popleft()
                # All audio queued before the mark ends `got` samples into this frame.
                self._ack_due.append((tick_at + (got / rate if rate else 0.0), head.name))
                continue
            if head.received > tick_at:
                break  # arrived after this frame began (a late, catching-up tick): it starts on a later tick
            chunk = head.take(need - got)
            if head.remaining == 0:
                self._queue.popleft()
            self._queued_samples -= len(chunk)
            parts.append(chunk)
            got += len(chunk)
        if got:
            self._cur = parts[0] if len(parts) == 1 else np.concatenate(parts).astype(np.int16, copy=False)
            self._cur_start, self._cur_tick = tick_at, k
            if not self._bot_active:
                self._bot_active = True
                self._record("bot_audio_started", call_ms=(tick_at - self._t0) * 1000, played_ms=self.played_ms)
        elif self._bot_active:
            self._bot_active = False
            self._record("bot_audio_stopped", played_ms=self.played_ms, reason="queue empty")

    async def _flush_due_acks(self, now: float) -> None:
        names: list[str] = []
        while self._ack_due and self._ack_due[0][0] <= now:
            names.append(self._ack_due.popleft()[1])
        for name in names:
            await self._send_played_stream(name)

    async def _send_played_stream(self, name: str) -> None:
        msg: dict[str, Any] = {"event": "playedStream", "name": name}
        if self.options.played_stream_stream_id:
            msg["streamId"] = self.stream_id
        await self._send(msg, sequence=self.options.ack_sequence_numbers)
        self.acked_checkpoints.append(name)
        self._record("played_stream_sent", name=name, played_ms=self.played_ms)
        self._status_callback("PlayedStream", {"Name": name})

    def _finish_playout(self, t_end: float) -> None:
        """Stream over: the caller heard the current frame up to now; everything still queued is lost."""
        if self._cur is not None and self.played_rate:
            heard = min(len(self._cur), max(0, int((t_end - self._cur_start) * self.played_rate)))
            self._commit_current(heard)
        dropped = [m.name for m in self._queue if isinstance(m, _Mark)] + [n for _, n in self._ack_due]
        self._queue.clear()
        self._ack_due.clear()
        self._queued_samples = 0
        for name in dropped:
            self.dropped_checkpoints.append(name)
            self._record("checkpoint_dropped", name=name, reason="stream ended")
        if self._bot_active:
            self._bot_active = False
            self._record("bot_audio_stopped", played_ms=self.played_ms, reason="stream ended")

    # ---- commands -----------------------------------------------------------------------------------------

    def _stream_id_ok(self, msg: dict[str, Any], command: str) -> bool:
        sid = msg.get("streamId")
        if sid is None:
            self._ctx.warn(f"{command} without streamId (R2 asks for it on every command)")
            return True
        if sid != self.stream_id:
            self._protocol_error(f"{command}: streamId {sid!r} is not this stream's {self.stream_id!r}")
            return False
        return True

    async def _handle(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            self._protocol_error(f"binary frame of {len(raw)} bytes; Vobiz commands are JSON text")
            return
        try:
            msg = json.loads(raw)
        except json.JSONDecodeError:
            self._protocol_error("command is not valid JSON", raw)
            return
        if not isinstance(msg, dict):
            self._protocol_error("command is not a JSON object", raw)
            return
        event = msg.get("event")
        if event == "playAudio":
            self._on_play_audio(msg)
        elif event == "checkpoint":
            await self._on_checkpoint(msg)
        elif event == "clearAudio":
            await self._on_clear(msg)
        elif event == "stop":
            if self._stream_id_ok(msg, "stop"):
                self._stop_received = True
                self._record("stop_received")
        elif event == "sendDTMF":
            self._protocol_error("sendDTMF is Plivo-only, not a Vobiz command (use the REST DTMF API)", msg)
        else:
            self._protocol_error(f"unknown command event {event!r}", msg)

    def _on_play_audio(self, msg: dict[str, Any]) -> None:
        if not self._stream_id_ok(msg, "playAudio"):
            return
        media = msg.get("media")
        if not isinstance(media, dict):
            self._protocol_error("playAudio without a media object", msg)
            return
        ctype, rate, payload = media.get("contentType"), media.get("sampleRate"), media.get("payload")
        if not isinstance(ctype, str) or ctype not in PLAYBACK_RATES:
            self._protocol_error(f"playAudio media.contentType {ctype!r} is not audio/x-l16 or audio/x-mulaw")
            return
        if not isinstance(rate, int) or isinstance(rate, bool) or rate not in PLAYBACK_RATES[ctype]:
            self._protocol_error(f"playAudio media.sampleRate {rate!r} is not valid for {ctype}")
            return
        if not isinstance(payload, str):
            self._protocol_error("playAudio media.payload is not a base64 string")
            return
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self._protocol_error(f"playAudio media.payload is not valid base64 ({len(payload)} chars)")
            return
        if ctype == L16 and len(data) % 2:
            self._protocol_error(f"playAudio L16 payload has an odd byte count ({len(data)})")
            return
        if not data:
            self._ctx.warn("playAudio with an empty payload")
            return
        samples = mulaw_to_pcm16(data) if ctype == MULAW else l16_to_pcm16(data)
        if self.played_rate is None:
            self.played_rate = rate
            self._out_frame = rate * self.options.frame_ms // 1000
        elif rate != self.played_rate:
            self._ctx.warn(f"playAudio sample rate changed from {self.played_rate} to {rate} mid-stream")
            samples = _resample(samples, rate, self.played_rate)
        self._queue.append(_QueuedAudio(samples, time.monotonic()))
        self._queued_samples += len(samples)
        self._record("play_audio_received", bytes=len(data), ms=len(data) / (rate * (2 if ctype == L16 else 1)) * 1000)

    async def _on_checkpoint(self, msg: dict[str, Any]) -> None:
        if not self._stream_id_ok(msg, "checkpoint"):
            return
        name = msg.get("name")
        if not isinstance(name, str) or not name:
            self._protocol_error("checkpoint without a non-empty string name", msg)
            return
        self.received_checkpoints.append(name)
        self._record("checkpoint_received", name=name)
        if self._queue:
            self._queue.append(_Mark(name))
            return
        # Nothing queued: acked once the frame now playing (if any) has finished.
        now = time.monotonic()
        end = now
        if self._cur is not None and self.played_rate:
            end = max(now, self._cur_start + len(self._cur) / self.played_rate)
        self._ack_due.append((end, name))
        if end > now:  # due before the playout loop's next wake-up: flush it on time from a timer
            asyncio.get_running_loop().call_later(end - now, self._flush_acks_soon)
        await self._flush_due_acks(now)

    def _flush_acks_soon(self) -> None:
        async def flush() -> None:
            with contextlib.suppress(ConnectionClosed):
                await self._flush_due_acks(time.monotonic())

        task = asyncio.create_task(flush())
        self._callback_tasks.add(task)
        task.add_done_callback(self._callback_tasks.discard)

    async def _on_clear(self, msg: dict[str, Any]) -> None:
        if not self._stream_id_ok(msg, "clearAudio"):
            return
        now = time.monotonic()
        self._record("clear_received")
        # Decide everything synchronously so a playout tick cannot interleave; send afterwards.
        acks: list[str] = []
        while self._ack_due and self._ack_due[0][0] <= now:
            acks.append(self._ack_due.popleft()[1])
        rate = self.played_rate
        dropped_samples = self._queued_samples
        if self._cur is not None and rate:
            heard = min(len(self._cur), max(0, round((now - self._cur_start) * rate)))
            dropped_samples += len(self._cur) - heard
            self._commit_current(heard)
        dropped = [m.name for m in self._queue if isinstance(m, _Mark)] + [n for _, n in self._ack_due]
        self._queue.clear()
        self._ack_due.clear()
        self._queued_samples = 0
        played_ms = self._played_samples * 1000 / rate if rate else 0.0
        self.clears.append(ClearRecord(now, played_ms, dropped_samples * 1000 / rate if rate else 0.0, tuple(dropped)))
        self.dropped_checkpoints.extend(dropped)
        for name in dropped:
            self._record("checkpoint_dropped", name=name, reason="clearAudio")
        if self._bot_active:
            self._bot_active = False
            self._record("bot_audio_stopped", played_ms=played_ms, reason="clearAudio")
        for name in acks:
            await self._send_played_stream(name)
        await self._send(
            {"event": "clearedAudio", "streamId": self.stream_id}, sequence=self.options.ack_sequence_numbers
        )
        self._record("cleared_sent")
        self._status_callback("ClearedAudio", {})

    # ---- stream end ---------------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            async for raw in self._ws:
                if self._local_reason is not None:
                    continue  # Vobiz is tearing the stream down; late commands do nothing
                await self._handle(raw)
                self._notify()
                if self._stop_received:
                    return
        except ConnectionClosed:
            return

    def _status_callback(self, event: str, extra: Mapping[str, str]) -> None:
        url = self.stream_attrs.get("statusCallbackUrl")
        if not url or not self.options.status_callbacks:
            return
        method = self.stream_attrs.get("statusCallbackMethod", "POST").upper()
        fields = {
            "From": self.options.from_,
            "To": self.options.to,
            "CallUUID": self.call_uuid,
            "Event": event,
            "StreamID": self.stream_id,
            "ParentAuthID": self.options.parent_auth_id,
            "Error": "",
            "Timestamp": _wall(datetime.now(UTC)),
            "status_callback_url": url,
            "status_callback_method": method,
            **extra,
        }
        task = asyncio.create_task(self._ctx.request(url, method, fields, event))
        self._callback_tasks.add(task)
        task.add_done_callback(self._callback_tasks.discard)

    async def _run(self) -> None:
        try:
            await self._read_loop()
            while self._local_reason == "network_drop" and self._may_retry() and await self._reconnect():
                await self._read_loop()
        except Exception as exc:  # a simulator bug must surface in wait_for, not hang the test
            self._internal_error("reader", exc)
        t_end = time.monotonic()
        self._stream_live = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close_ws(1000)
        self._finish_playout(t_end)
        reason: EndReason = self._local_reason or ("agent_stop" if self._stop_received else "agent_closed")
        self.end_reason = reason
        self.close_code, self.close_reason = self._ws.close_code, self._ws.close_reason
        self._record("ws_closed", code=self.close_code, reason=self.close_reason, end_reason=reason)
        self._notify()
        try:
            if reason == "agent_stop":
                self._status_callback("StopStream", {})
            elif reason in ("agent_closed", "network_drop"):
                self._status_callback("DroppedStream", {"Error": "connection disconnected with the remote service"})
            hangup = await self._after_stream(reason)
            await self._ctx.post_hangup(hangup)
            if self._callback_tasks:
                await asyncio.gather(*list(self._callback_tasks), return_exceptions=True)
        except Exception as exc:
            self._internal_error("after-stream", exc)
        finally:
            self._record("call_ended", end_reason=reason)
            self.ended.set()
            self._notify()

    async def _after_stream(self, reason: EndReason) -> _Hangup:
        """keepCallAlive="true": once the stream is over Vobiz carries on with the document (or a transfer)."""
        if reason == "caller_hangup":
            return _Hangup(self._hangup_cause, "Caller")
        if reason == "error":
            return _Hangup("NORMAL_CLEARING", "Error")
        try:
            if reason in _CONTINUE_XML:
                elements, base, depth = self._remaining, self._base_url, self._depth
            else:
                assert reason == "transfer" and self._transfer is not None
                url, method = self._transfer
                root, xml_text = await self._ctx.fetch_xml(url, method, "Transfer")
                action = XmlAction("Transfer", url, {"method": method}, {"url": url, "xml": xml_text})
                self.after_stream.append(action)
                elements, base, depth = list(root), url, 0
            result = await self._ctx.run_xml(
                elements, base, depth, self.after_stream, stop_at_stream=False, caller_gone=lambda: self._caller_gone
            )
        except CarrierProtocolError as exc:
            self._protocol_error(str(exc))
            return _Hangup("NORMAL_CLEARING", "Error", name="Invalid Answer XML")
        for action in self.after_stream:
            self._record("xml_action", verb=action.verb, text=action.text)
        return result.hangup or _END_OF_XML


# ----------------------------------------------------------------------------------------------------------
# The carrier
# ----------------------------------------------------------------------------------------------------------


async def _open_stream(url: str, opts: SimCallOptions) -> ClientConnection:
    return await connect(
        url,
        open_timeout=opts.connect_timeout,
        close_timeout=2,
        ping_interval=None,
        compression=None,
        max_size=2**24,
        user_agent_header="Vobiz",
    )


def _max_retries(element: ET.Element) -> int:
    """`<Stream maxRetries>` as Vobiz reads it: 0-10, below 0 is 0, above 10 is 10, not an integer is 0."""
    text = element.get("maxRetries", "0").strip()
    if not text.lstrip("-").isdigit():
        return 0
    return min(10, max(0, int(text)))


def _validate_stream(element: ET.Element) -> str:
    """Reject <Stream> settings that cannot work for a two-way agent on real Vobiz; return the URL."""
    attrs = element.attrib
    if attrs.get("bidirectional", "false").lower() != "true":
        raise CarrierProtocolError('<Stream> needs bidirectional="true" or Vobiz ignores playAudio')
    track = attrs.get("audioTrack", "inbound")
    if track != "inbound":
        raise CarrierProtocolError(
            f'<Stream audioTrack="{track}"> with bidirectional="true": Vobiz hangs up; use "inbound"'
        )
    if attrs.get("keepCallAlive", "false").lower() != "true":
        raise CarrierProtocolError('<Stream> without keepCallAlive="true": Vobiz runs past it and hangs up')
    url = (element.text or "").strip()
    if not url:
        raise CarrierProtocolError("<Stream> has no URL text (the URL is the element text, not an attribute)")
    if httpx.URL(url).scheme not in ("ws", "wss"):
        raise CarrierProtocolError(f"<Stream> URL {url!r} is not ws:// or wss://")
    return url


class CarrierSim:
    """Plays Vobiz against an agent at ``base_url``: answer webhook, stream socket, follow-up XML, hangup."""

    def __init__(
        self, base_url: str, answer_path: str = "/vobiz/answer", http: httpx.AsyncClient | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.answer_url = self.base_url + answer_path
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient()
        self.calls: list[SimCall] = []

    async def __aenter__(self) -> CarrierSim:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def place_call(
        self,
        audio: Sequence[ScriptItem] | None = None,
        options: SimCallOptions | None = None,
        call_uuid: str | None = None,
    ) -> SimCall:
        """Ring the agent, follow its XML to the <Stream>, open the socket and start the call clock.

        Raises CarrierProtocolError when Vobiz would reject the answer, and CallEndedWithoutStream when the
        XML ends the call before streaming (after posting the hangup webhook, as Vobiz would).
        """
        opts = options or SimCallOptions()
        ctx = _CallContext(call_uuid or str(uuid.uuid4()), opts, self._http, self.answer_url)
        if opts.direction == "outbound" and opts.ring_callback:
            # Vobiz tells the answer URL that an outbound call rings; the XML only counts once it is answered.
            ringing = ctx.fields(call_status="ringing", event="Ring") | dict(opts.extra_fields)
            await ctx.request(self.answer_url, opts.answer_method, ringing, "Ring")
        status = "ringing" if opts.direction == "inbound" else "in-progress"
        fields = ctx.fields(call_status=status, event="StartApp") | dict(opts.extra_fields)
        resp = await ctx.request(self.answer_url, opts.answer_method, fields, "StartApp")
        if resp is None:
            raise CarrierProtocolError(f"answer webhook {self.answer_url} failed: {ctx.webhooks[-1].error}")
        root = parse_vobiz_xml(resp, f"answer {self.answer_url}")
        xml_text = resp.text
        before: list[XmlAction] = []
        result = await ctx.run_xml(list(root), self.answer_url, 0, before, stop_at_stream=True)
        if result.stream is None:
            await ctx.post_hangup(result.hangup or _END_OF_XML)
            raise CallEndedWithoutStream(xml_text, before)
        stream_url = _validate_stream(result.stream)
        media_format = self._stream_format(result.stream, opts, ctx)
        try:
            ws = await _open_stream(stream_url, opts)
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise CarrierProtocolError(f"could not open the stream WebSocket {stream_url}: {exc}") from exc
        call = SimCall(
            ctx=ctx,
            xml=xml_text,
            stream_element=result.stream,
            remaining=result.rest,
            base_url=result.base_url,
            depth=result.depth,
            before_stream=before,
            ws=ws,
            media_format=media_format,
            script=audio or (),
        )
        try:
            await call._start()
        except ConnectionClosed as exc:
            raise CarrierProtocolError(f"the agent closed the stream socket before `start`: {exc}") from exc
        self.calls.append(call)
        return call

    @staticmethod
    def _stream_format(element: ET.Element, opts: SimCallOptions, ctx: _CallContext) -> StreamFormat:
        content_type = element.get("contentType")
        if content_type is None:
            ctx.warn(
                "<Stream> has no contentType: real Vobiz would send audio/x-l16;rate=8000; "
                f"the simulator uses options.content_type {opts.content_type!r}"
            )
            content_type = opts.content_type
        try:
            fmt = StreamFormat.parse(content_type)
        except ValueError as exc:
            raise CarrierProtocolError(f"<Stream contentType>: {exc}") from None
        if fmt.rate == 24000:
            ctx.warn("contentType rate=24000 inbound: R2 docs say it yields no usable media on real Vobiz")
        return fmt

    async def aclose(self) -> None:
        """Hang up whatever is still live, then release the HTTP client if we made it."""
        live = [c for c in self.calls if not c.ended.is_set()]
        if live:
            tasks = [asyncio.create_task(c.hangup()) for c in live]
            _, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:
                task.cancel()
        if self._owns_http:
            await self._http.aclose()
