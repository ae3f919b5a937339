"""Vobiz's side of the HTTP conversation: signed webhooks, answer XML fetched, parsed and run."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect

from agent.testkit.carrier.callbacks import CallbackSender
from agent.testkit.carrier.records import (
    _END_OF_XML,
    _HANGUP_REASONS,
    _WALL_FORMAT,
    MAX_REDIRECT_DEPTH,
    MAX_XML_BYTES,
    RESPONSE_CHILDREN,
    XML_MEDIA_TYPES,
    CarrierProtocolError,
    SimCallOptions,
    WebhookRecord,
    XmlAction,
    _Hangup,
    _XmlResult,
)


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


def wall_time(ts: datetime) -> str:
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


class CallContext:
    """HTTP side of one call: identity fields, signing, webhook records and the XML interpreter."""

    def __init__(
        self,
        call_uuid: str,
        options: SimCallOptions,
        http: httpx.AsyncClient,
        answer_url: str,
        callbacks: CallbackSender | None = None,
    ) -> None:
        self.call_uuid = call_uuid
        self.options = options
        self.http = http
        self.callbacks = callbacks
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

    async def status_callback(self, url: str, method: str, fields: Mapping[str, str], event: str) -> None:
        """A stream status callback: through the shared light sender when there is one, else like any webhook."""
        sender = self.callbacks
        if sender is None or not sender.supports(url):
            await self.request(url, method, fields, event)
            return
        headers = {"User-Agent": "Vobiz"}
        if self.options.auth_token:
            headers.update(vobiz_signature_headers(self.options.auth_token, url))
        sent = dict(fields)
        t = time.monotonic()
        method = method.upper()
        try:
            resp = await sender.send(url, method, sent, headers, self.options.webhook_timeout)
        except Exception as exc:  # recorded, never raised, as Vobiz just logs a failed callback
            self.webhooks.append(WebhookRecord(t, event, method, url, sent, None, "", f"{type(exc).__name__}: {exc}"))
            return
        self.webhooks.append(WebhookRecord(t, event, method, url, sent, resp.status, resp.body[:2000]))

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
            "StartTime": wall_time(self.answered_wall),
            "AnswerTime": wall_time(self.answered_wall),
            "EndTime": wall_time(now),
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


async def open_stream(url: str, opts: SimCallOptions) -> ClientConnection:
    return await connect(
        url,
        open_timeout=opts.connect_timeout,
        close_timeout=2,
        ping_interval=None,
        compression=None,
        max_size=2**24,
        user_agent_header="Vobiz",
    )


def max_retries(element: ET.Element) -> int:
    """`<Stream maxRetries>` as Vobiz reads it: 0-10, below 0 is 0, above 10 is 10, not an integer is 0."""
    text = element.get("maxRetries", "0").strip()
    if not text.lstrip("-").isdigit():
        return 0
    return min(10, max(0, int(text)))


def validate_stream(element: ET.Element) -> str:
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
