"""What a simulated call records, the options it runs with, and the carrier's error types."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

import numpy as np

from agent.audio.codecs import (
    Int16Array,
)

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
