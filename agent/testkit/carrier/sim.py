"""The carrier: places calls against an agent (answer webhook, XML, stream socket) and keeps them."""

from __future__ import annotations

import asyncio
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from agent.testkit.carrier.audio import ScriptItem, StreamFormat
from agent.testkit.carrier.call import SimCall
from agent.testkit.carrier.callbacks import CallbackSender
from agent.testkit.carrier.records import (
    _END_OF_XML,
    CallEndedWithoutStream,
    CarrierProtocolError,
    SimCallOptions,
    XmlAction,
)
from agent.testkit.carrier.webhooks import CallContext, open_stream, parse_vobiz_xml, validate_stream

# ----------------------------------------------------------------------------------------------------------
# The carrier
# ----------------------------------------------------------------------------------------------------------


class CarrierSim:
    """Plays Vobiz against an agent at ``base_url``: answer webhook, stream socket, follow-up XML, hangup."""

    def __init__(
        self,
        base_url: str,
        answer_path: str = "/vobiz/answer",
        http: httpx.AsyncClient | None = None,
        callbacks: CallbackSender | None = None,
    ) -> None:
        """``callbacks``: a shared sender for stream status callbacks (load tests); without one they go through
        ``http`` like the other webhooks."""
        self.base_url = base_url.rstrip("/")
        self._callbacks = callbacks
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
        ctx = CallContext(call_uuid or str(uuid.uuid4()), opts, self._http, self.answer_url, self._callbacks)
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
        stream_url = validate_stream(result.stream)
        media_format = self._stream_format(result.stream, opts, ctx)
        try:
            ws = await open_stream(stream_url, opts)
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
    def _stream_format(element: ET.Element, opts: SimCallOptions, ctx: CallContext) -> StreamFormat:
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
