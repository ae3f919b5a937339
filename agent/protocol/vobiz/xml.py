"""Vobiz XML documents the agent returns: the streaming answer, hand-offs to a human, spoken endings.

Built with ElementTree so URLs and text are always escaped: a bare `&` in the stream URL makes Vobiz drop the
call with "Invalid Answer XML".
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

XML_MEDIA_TYPE = "application/xml"


@dataclass(frozen=True)
class StreamSpec:
    url: str
    content_type: str
    status_callback_url: str | None = None
    max_retries: int = 0


def _document(root: ET.Element) -> str:
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


def stream_response(stream: StreamSpec, after_stream_url: str | None = None) -> str:
    """`<Stream>` that keeps the call alive; a `<Redirect>` after it lets the agent decide how the call ends."""
    root = ET.Element("Response")
    attrs = {
        "bidirectional": "true",
        "audioTrack": "inbound",
        "keepCallAlive": "true",
        "contentType": stream.content_type,
    }
    if stream.status_callback_url:
        attrs |= {"statusCallbackUrl": stream.status_callback_url, "statusCallbackMethod": "POST"}
    if stream.max_retries:
        attrs["maxRetries"] = str(stream.max_retries)  # a dropped socket comes back with a new streamId
    ET.SubElement(root, "Stream", attrs).text = stream.url
    if after_stream_url:
        ET.SubElement(root, "Redirect", {"method": "POST"}).text = after_stream_url
    return _document(root)


def speak_then(text: str | None, *, dial: str | None = None, caller_id: str | None = None) -> str:
    """Optional speech, then either a dial to a human or a hang-up."""
    root = ET.Element("Response")
    if text:
        ET.SubElement(root, "Speak", {"voice": "WOMAN", "language": "en-US"}).text = text
    if dial:
        dial_el = ET.SubElement(root, "Dial", {"callerId": caller_id} if caller_id else {})
        ET.SubElement(dial_el, "Number").text = dial
    else:
        ET.SubElement(root, "Hangup")
    return _document(root)


def hangup() -> str:
    return speak_then(None)


def empty() -> str:
    return _document(ET.Element("Response"))
