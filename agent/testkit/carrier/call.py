"""The live stream of a simulated call: `start`, caller frames in real time, commands read, retries and the end."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from agent.audio.codecs import (
    Int16Array,
    pcm16_to_l16,
)
from agent.testkit.carrier.audio import Segment, mulaw_encode
from agent.testkit.carrier.fastsend import write_text
from agent.testkit.carrier.playout import Playout
from agent.testkit.carrier.records import (
    _CONTINUE_XML,
    _END_OF_XML,
    MULAW,
    CarrierProtocolError,
    EndReason,
    XmlAction,
    _Hangup,
)
from agent.testkit.carrier.webhooks import open_stream


class SimCall(Playout):
    """One live simulated call: caller frames out, bot audio played out, commands validated and recorded.

    Created by :meth:`CarrierSim.place_call`; everything public is safe to read at any time from the same
    event loop. ``wait_*`` helpers re-check their predicate on every message and every 20 ms tick.
    """

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
        """Start the stream's clocks (caller frames, playout ticks) on the shared ticker, and its timeout."""
        self._tasks = set()
        self._clocks_on = True
        self._stream_gen += 1
        self._media_fmt = self._media_template()
        silence = self._encode_inbound(self._silent_frame)
        self._silence_wire = (len(silence), base64.b64encode(silence).decode("ascii"))
        # Frame 0's content is decided once this turn of the loop is over, as it was when each clock was a task:
        # whoever placed the call may still patch or wrap the call first (on_connected).
        asyncio.get_running_loop().call_soon(self._first_caller_frame, self._stream_gen)
        self._schedule_playout()
        timeout = self.stream_attrs.get("streamTimeout")
        if timeout and timeout.isdigit() and int(timeout) > 0:
            self._add_task(self._stream_timeout(int(timeout)), f"sim-timeout-{self.call_uuid}")

    def _first_caller_frame(self, gen: int) -> None:
        if not self._clocks_on or gen != self._stream_gen:
            return
        try:
            self._pending_frame = self._next_caller_frame()
            self._schedule_caller()
        except Exception as exc:
            self._clock_failed(f"sim-caller-{self.call_uuid}", exc)

    def _add_task(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._on_task_done)

    async def _stop_tasks(self) -> None:
        """Stop the clocks and every task of this stream (a frame waiting to be sent is not sent)."""
        self._clocks_on = False
        for handle in (self._caller_handle, self._play_handle):
            if handle is not None:
                handle.cancel()
        self._caller_handle = self._play_handle = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _reconnect(self) -> bool:
        """A dropped stream, as Vobiz retries it (`maxRetries`): a new socket to the same URL and a new `start` with
        a new streamId and the same callId. What Vobiz had queued to play is lost; the caller goes on talking, and
        what they said while the stream was down never reaches the agent."""
        await self._stop_tasks()
        self._finish_playout(time.monotonic())
        self._status_callback("DroppedStream", {"Error": "connection disconnected with the remote service"})
        try:
            ws = await open_stream(self.stream_url, self.options)
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError, ConnectionClosed) as exc:
            self._record("reconnect_failed", error=str(exc))
            return False
        self._ws = ws if self._socket_wrap is None else self._socket_wrap(ws)
        self._retries_used += 1
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
        self._clock_failed(task.get_name(), task.exception() or RuntimeError("?"))

    async def _stream_timeout(self, seconds: int) -> None:
        await asyncio.sleep(seconds)
        if self._stream_live and self._local_reason is None:
            self._local_reason = "stream_timeout"
            await self._close_ws(1000)

    # ---- caller side --------------------------------------------------------------------------------------

    def _push_caller(self, segment: Segment) -> None:
        rate = self.media_format.rate
        start_ms = (self.frames_sent * self._in_frame + len(self._cbuf)) * 1000 / rate
        samples = np.asarray(segment.render(rate), dtype=np.int16)
        self._cbuf = np.concatenate([self._cbuf, samples])
        # Encoded for the wire now, in one go (both encodings are per sample): cheaper than frame by frame.
        self._wbuf += self._encode_inbound(samples)
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
        nbytes = n * self.media_format.bytes_per_sample
        wire, self._wbuf = self._wbuf[:nbytes], self._wbuf[nbytes:]
        if len(frame) < n:
            frame = np.concatenate([frame, np.zeros(n - len(frame), dtype=np.int16)])
            wire = self._encode_inbound(frame)
        self._frame_wire = (frame, wire)
        if self.script_done and not self._script_done_recorded:
            self._script_done_recorded = True
            self._record("caller_script_done")
        return frame

    def _encode_inbound(self, frame: Int16Array) -> bytes:
        if self.media_format.encoding == MULAW:
            return mulaw_encode(frame)
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

    def _schedule_caller(self) -> None:
        """Frame k's content is decided when its interval starts (k*P) and sent when it ends ((k+1)*P), so a
        cue fires at the call-clock moment its condition became true and the caller track lines up."""
        when = self._t0 + (self._caller_k + 1) * self._period
        self._caller_handle = self._ticker.call_at(when, self._caller_tick)

    def _media_text(self, k: int, frame: Int16Array) -> tuple[str, int]:
        """Frame k's `media` message, numbered now (call it when the message is next on the wire)."""
        if frame is self._silent_frame:
            nbytes, payload = self._silence_wire
        else:
            # Encoded when it was pushed, unless someone changed the frame since (a test's echo mixer, say).
            cached, raw = self._frame_wire
            if cached is not frame:
                raw = self._encode_inbound(frame)
            nbytes, payload = len(raw), base64.b64encode(raw).decode("ascii")
        chunk = k + 1 - self._chunk_base  # per stream, from 1
        text = self._media_fmt % (self._seq, self._epoch_ms0 + (k + 1) * self.options.frame_ms, chunk, payload)
        self._seq += 1
        if self.options.keep_sent_frames:
            self.sent_frames.append(text)
        return text, nbytes

    def _caller_tick(self) -> None:
        """Send the frame now due: straight to the socket when nothing is in the way, else from a task that waits
        its turn (the clock resumes once it is sent, as the frames must go out in order)."""
        self._caller_handle = None
        if not self._clocks_on:
            return
        try:
            k, frame = self._caller_k, self._pending_frame
            if self._writes_now():
                text, nbytes = self._media_text(k, frame)
                write_text(self._ws, text)
                self._caller_sent(k, frame, nbytes)
            else:
                task = asyncio.create_task(self._caller_send_slow(k, frame), name=f"sim-caller-{self.call_uuid}")
                self._track_slow_send(task, self._tasks)
                task.add_done_callback(self._on_task_done)
        except Exception as exc:
            self._clock_failed(f"sim-caller-{self.call_uuid}", exc)

    async def _caller_send_slow(self, k: int, frame: Int16Array) -> None:
        try:
            async with self._send_lock:
                text, nbytes = self._media_text(k, frame)
                await self._ws.send(text)
        except ConnectionClosed:
            return
        if self._clocks_on:
            self._caller_sent(k, frame, nbytes)

    def _caller_sent(self, k: int, frame: Int16Array, nbytes: int) -> None:
        self._caller_frames.append(frame)
        self.frames_sent += 1
        if self.options.record_frames:
            self._record("frame_sent", chunk=k + 1, bytes=nbytes)
        self._caller_k = k + 1
        self._notify()
        for listener in self.frame_listeners:
            listener()
        self._pending_frame = self._next_caller_frame()
        self._schedule_caller()

    # ---- playout side -------------------------------------------------------------------------------------

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

    async def _run(self) -> None:
        try:
            await self._read_loop()
            while self._local_reason == "network_drop" and self._may_retry() and await self._reconnect():
                await self._read_loop()
        except Exception as exc:  # a simulator bug must surface in wait_for, not hang the test
            self._internal_error("reader", exc)
        t_end = time.monotonic()
        self._stream_live = False
        await self._stop_tasks()
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
