"""Paces model audio to the carrier and keeps track of what the caller has actually heard.

The model streams audio faster than real time. Sending it all at once would put seconds of audio in Vobiz's
queue, so an interruption would have to claw it back and nobody would know what the caller heard. Instead
audio leaves paced, keeping only about `lead_ms` queued at the carrier (more for a while after the event loop
woke a pacer late or the carrier ran dry, so that the next stall like it does not empty the carrier's queue:
`WakeLateness`); every message's scheduled play time is recorded, `checkpoint` acknowledgements (`playedStream`)
correct the schedule when the carrier runs late, and the clock interpolates between acknowledgements.

How big each `playAudio` is does not bound how fast the caller stops hearing the bot: `clearAudio` empties the
carrier's whole queue. So audio that is due leaves in messages of up to `chunk_ms` (whatever has arrived, never
waiting for a message to fill up), which keeps the number of messages, each a trip through the ASGI stack,
close to the model's own delta rate, while the lead stays as shallow as with small chunks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent.audio.formats import MediaFormat
from agent.protocol.vobiz import messages
from agent.waiting import wait_event

Clock = Callable[[], float]
_POLL_S = 0.05
# A hold keeps this much of what the schedule says was already heard: the schedule may run a few ms ahead of the
# carrier (a late acknowledgement re-anchors it only past 5 ms; before an item's first one, by the carrier's
# start-up), and a resume must never skip a sample the caller did not hear. A few ms heard twice go unnoticed.
HOLD_REWIND_MS = 10.0
_RESTART_S = 0.02  # a carrier plays in 20 ms frames: resumed audio starts at the next one
Send = Callable[[str], Awaitable[None]]
# The lead grows to cover how late the loop has lately woken a pacer (a long collection, a starved CPU): a pacer
# that wakes later than its lead finds the carrier's queue already empty. A stall counts half after
# LATE_HALF_LIFE_S; the lead then covers the stall times LATE_FACTOR plus LATE_MARGIN_S (the carrier's 20 ms
# frame, the trip to it), up to MAX_LEAD_S.
LATE_HALF_LIFE_S = 120.0
LATE_FACTOR = 1.25
LATE_MARGIN_S = 0.06
MAX_LEAD_S = 1.0
# An acknowledgement this late says the carrier ran dry (a stall on its side, network jitter): the lead then was
# short by that much, and grows as after a wake-up as late. Below it: the carrier's start-up, its frame grid.
LATE_ACK_S = 0.04


class WakeLateness:
    """How late the event loop has lately woken the pacers: the worst recent lateness, halving every
    `half_life_s`. Every call's pacer runs on the same loop, so one that saw a stall protects all of them."""

    def __init__(self, half_life_s: float = LATE_HALF_LIFE_S) -> None:
        self.half_life_s = half_life_s
        self._worst = 0.0
        self._at = 0.0

    def observe(self, late_s: float, now: float) -> None:
        if late_s > self.worst(now):
            self._worst, self._at = late_s, now

    def worst(self, now: float) -> float:
        if self._worst <= 0:
            return 0.0
        return self._worst * math.pow(0.5, max(0.0, now - self._at) / self.half_life_s)

    def lead_s(self, base_s: float, now: float) -> float:
        """The lead that keeps the carrier fed through a stall like the worst lately seen."""
        worst = self.worst(now)
        return base_s if worst <= 0 else max(base_s, min(MAX_LEAD_S, worst * LATE_FACTOR + LATE_MARGIN_S))


_loop_lateness: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WakeLateness] = weakref.WeakKeyDictionary()


def loop_lateness() -> WakeLateness:
    """The running loop's own record, shared by every pacer on it."""
    loop = asyncio.get_running_loop()
    found = _loop_lateness.get(loop)
    if found is None:
        found = _loop_lateness[loop] = WakeLateness()
    return found


@dataclass
class _Chunk:
    item_id: str
    data: bytes
    offset_ms: float  # position of this chunk inside its item
    duration_ms: float
    final: bool = False  # last chunk of the item: a checkpoint follows


@dataclass
class _Segment:
    item_id: str
    offset_ms: float
    start: float  # when the carrier is expected to start playing it (clock seconds)
    duration_ms: float

    @property
    def end(self) -> float:
        return self.start + self.duration_ms / 1000


@dataclass
class _Checkpoint:
    name: str
    item_id: str
    offset_ms: float
    expected_at: float
    final: bool


@dataclass
class ItemPlayback:
    """What is known about one assistant item's audio on the phone line."""

    item_id: str
    queued_ms: float = 0.0  # handed to the playout
    sent_ms: float = 0.0  # sent to the carrier
    acked_ms: float = 0.0  # confirmed played by a checkpoint
    complete: bool = False  # the model finished this item's audio
    played: asyncio.Event = field(default_factory=asyncio.Event)  # final checkpoint acknowledged
    segments: list[_Segment] = field(default_factory=list)


class Playout:
    def __init__(
        self,
        send: Send,
        stream_id: str,
        fmt: MediaFormat,
        *,
        chunk_ms: int = 20,
        lead_ms: int = 200,
        checkpoint_interval_ms: int = 1000,
        clock: Clock = time.monotonic,
        lateness: WakeLateness | None = None,
    ) -> None:
        """`lateness`: the record of how late wake-ups have been, which deepens the lead (default: the running
        loop's, shared with every other call's playout)."""
        self._send = send
        self.stream_id = stream_id
        self.format = fmt
        self.chunk_ms = chunk_ms
        self.lead_s = lead_ms / 1000
        self.checkpoint_interval_ms = checkpoint_interval_ms
        self.clock = clock
        if lateness is None:
            with contextlib.suppress(RuntimeError):  # made outside a loop: run() picks its loop's record
                lateness = loop_lateness()
        self.lateness = lateness
        self._chunk_bytes = fmt.frame_bytes(chunk_ms)
        self._queue: deque[_Chunk] = deque()
        self._partial: dict[str, bytearray] = {}
        self._items: dict[str, ItemPlayback] = {}
        self._checkpoints: dict[str, _Checkpoint] = {}
        self._play_end = 0.0  # when the carrier is expected to run out of audio
        self._wakeup = asyncio.Event()
        self._seq = 0
        self._last_checkpoint_ms: dict[str, float] = {}
        self.chunks_sent = 0
        self.late_acks = 0
        self._generation = 0  # bumped by clear(): a send in flight must not checkpoint stale audio
        self._recent: deque[tuple[_Chunk, _Segment]] = deque()  # sent, maybe not yet played: hold() keeps these
        self._stash: list[_Chunk] | None = None  # held: audio not heard, waiting for release() or clear()
        self.paused = False  # no carrier socket (waiting for Vobiz to reconnect): keep audio queued
        # Observers (the call recorder): each chunk with its scheduled start; each late re-anchoring.
        self.on_scheduled: Callable[[bytes, float], None] | None = None
        self.on_late: Callable[[float, float], None] | None = None
        self.on_item_started: Callable[[str, float], None] | None = None  # an item's first audio on the line

    # --- feeding -------------------------------------------------------------------------------------------

    def item(self, item_id: str) -> ItemPlayback:
        info = self._items.get(item_id)
        if info is None:
            info = self._items[item_id] = ItemPlayback(item_id)
        return info

    def enqueue(self, item_id: str, data: bytes) -> None:
        """Queue audio (already in the playback format) for an item, cut into `chunk_ms` chunks."""
        info = self.item(item_id)
        if info.complete:
            return  # its end was already played (or it was cleared): a straggler from a closed session
        partial = self._partial.pop(item_id, None)
        if partial:
            data = bytes(partial) + data
        if not self.format.is_mulaw and len(data) % 2:  # L16: whole samples only, the odd byte waits
            self._partial[item_id] = bytearray(data[-1:])
            data = data[:-1]
        step = self._chunk_bytes
        for at in range(0, len(data), step):
            self._push(info, data[at : at + step], final=False)

    def finish_item(self, item_id: str, tail: bytes = b"") -> None:
        """The model sent the item's last audio: flush the remainder and mark the end with a checkpoint."""
        info = self.item(item_id)
        if info.complete:
            return
        buf = bytes(self._partial.pop(item_id, b"")) + tail
        info.complete = True
        if len(buf) % 2 and not self.format.is_mulaw:
            buf = buf[:-1]
        step = self._chunk_bytes
        while len(buf) > step:
            self._push(info, buf[:step], final=False)
            buf = buf[step:]
        self._push(info, buf, final=True)

    def finish_all(self) -> None:
        """The session these items came from is gone (reconnect, rollover): their ends will never arrive, so play
        what is left of each and close it, or the call would look audible forever."""
        for item_id, info in list(self._items.items()):
            if not info.complete and (info.queued_ms > 0 or item_id in self._partial):
                self.finish_item(item_id)

    def _push(self, info: ItemPlayback, data: bytes, *, final: bool) -> None:
        duration = len(data) / self.format.bytes_per_ms
        self._queue.append(_Chunk(info.item_id, data, info.queued_ms, duration, final))
        info.queued_ms += duration
        self._wakeup.set()

    # --- sending -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Send queued chunks on a real-time schedule, keeping about `lead_ms` queued at the carrier."""
        if self.lateness is None:
            self.lateness = loop_lateness()
        while True:
            wait = await self.step()
            if wait is None:
                self._wakeup.clear()
                await self._wakeup.wait()
            elif wait > 0:
                due = self.clock() + wait
                await asyncio.sleep(wait)
                now = self.clock()
                self.lateness.observe(now - due, now)

    def lead(self, now: float) -> float:
        """Seconds of audio to keep queued at the carrier now: `lead_ms`, or more after the loop lagged."""
        return self.lead_s if self.lateness is None else self.lateness.lead_s(self.lead_s, now)

    async def step(self) -> float | None:
        """Send every chunk that is due now; return seconds until the next is due, or None when idle."""
        while self._queue and not self.paused and self._stash is None:
            now = self.clock()
            ahead = self._play_end - now
            lead = self.lead(now)
            if ahead > lead:
                return ahead - lead
            await self._send_chunk(self._take(), now)
        return None

    def _take(self) -> _Chunk:
        """The next message's audio: the head of the queue joined with what follows it of the same item, up to
        `chunk_ms` (the model's deltas rarely line up with it)."""
        first = self._queue.popleft()
        if first.final or len(first.data) >= self._chunk_bytes or not self._queue:
            return first
        parts, size, duration, final = [first.data], len(first.data), first.duration_ms, False
        while self._queue:
            nxt = self._queue[0]
            if nxt.item_id != first.item_id or size + len(nxt.data) > self._chunk_bytes:
                break
            self._queue.popleft()
            parts.append(nxt.data)
            size += len(nxt.data)
            duration += nxt.duration_ms
            if nxt.final:
                final = True
                break
        if len(parts) == 1:
            return first
        return _Chunk(first.item_id, b"".join(parts), first.offset_ms, duration, final)

    async def _send_chunk(self, chunk: _Chunk, now: float) -> None:
        info = self.item(chunk.item_id)
        if chunk.data:
            start = max(now, self._play_end)
            segment = _Segment(chunk.item_id, chunk.offset_ms, start, chunk.duration_ms)
            if not info.segments and chunk.offset_ms == 0 and self.on_item_started is not None:
                self.on_item_started(chunk.item_id, start)
            info.segments.append(segment)
            if self.on_scheduled is not None:
                self.on_scheduled(chunk.data, start)
            self._play_end = segment.end
            info.sent_ms = chunk.offset_ms + chunk.duration_ms
            while self._recent and self._recent[0][1].end <= now - HOLD_REWIND_MS / 1000:
                self._recent.popleft()
            self._recent.append((chunk, segment))
            payload = base64.b64encode(chunk.data).decode()
            generation = self._generation
            await self._send(messages.play_audio(self.stream_id, self.format, payload))
            self.chunks_sent += 1
            if generation != self._generation:
                return
        last = self._last_checkpoint_ms.get(chunk.item_id, 0.0)
        if chunk.final or info.sent_ms - last >= self.checkpoint_interval_ms:
            await self._checkpoint(info, final=chunk.final)

    async def _checkpoint(self, info: ItemPlayback, *, final: bool) -> None:
        self._seq += 1
        offset = round(info.sent_ms)
        name = f"{info.item_id}.{offset}.{self._seq}"
        self._checkpoints[name] = _Checkpoint(name, info.item_id, info.sent_ms, self._play_end, final)
        self._last_checkpoint_ms[info.item_id] = info.sent_ms
        await self._send(messages.checkpoint(self.stream_id, name))

    # --- feedback from the carrier -------------------------------------------------------------------------

    def on_played(self, name: str, sent_at: float | None = None) -> bool:
        """`playedStream`: everything before this checkpoint has played. Re-anchor the schedule if late.

        `sent_at` dates an acknowledgement read late (our loop stalled): its lateness is the carrier's, not ours.
        """
        cp = self._checkpoints.pop(name, None)
        if cp is None:
            return False
        now = self.clock() if sent_at is None else sent_at
        info = self.item(cp.item_id)
        info.acked_ms = max(info.acked_ms, cp.offset_ms)
        delay = now - cp.expected_at
        if delay > 0.005:
            if self.on_late is not None:
                self.on_late(cp.expected_at, delay)
            # The carrier is behind our schedule (jitter, an underrun): shift what has not finished playing.
            self.late_acks += 1
            for item in self._items.values():
                for seg in item.segments:
                    if seg.start >= cp.expected_at - 1e-9:
                        seg.start += delay
            for later in self._checkpoints.values():  # their acks will come as late: no new news then
                if later.expected_at >= cp.expected_at - 1e-9:
                    later.expected_at += delay
            self._play_end += delay
            if delay > LATE_ACK_S and self.lateness is not None:
                self.lateness.observe(self.lead(now) + delay, now)
        if cp.final:
            info.played.set()
        return True

    def clear(self) -> dict[str, float]:
        """The carrier was told to drop its queue: forget pending audio, return what each item had reached."""
        heard = self._cut(self.clock())
        self._stash = None
        self._partial.clear()
        for info in self._items.values():
            info.complete = True
            info.played.set()
        return heard

    def hold(self) -> dict[str, float]:
        """The carrier was told to drop its queue on a hunch (the caller seems to be talking): like `clear`, but
        what the caller has not heard is kept, to play from where it stopped if the hunch was wrong (`release`)."""
        now = self.clock()
        resume_at = now - HOLD_REWIND_MS / 1000
        playing = next((c.item_id for c, seg in self._recent if seg.end > now), None)
        unheard: list[_Chunk] = []
        for chunk, seg in self._recent:
            if seg.end <= resume_at or (seg.end <= now and (chunk.item_id != playing or chunk.final)):
                continue  # over (a rewind stays inside the item still playing)
            # Whole samples the schedule says were heard, rounded down: resume at or before the caller's last.
            played = math.floor(max(0.0, resume_at - seg.start) * 1000 * self.format.bytes_per_ms + 1e-6)
            played -= played % self.format.bytes_per_sample
            cut_ms = played / self.format.bytes_per_ms
            unheard.append(
                _Chunk(
                    chunk.item_id,
                    chunk.data[played:],
                    chunk.offset_ms + cut_ms,
                    chunk.duration_ms - cut_ms,
                    chunk.final,
                )
            )
        unheard += self._queue
        # An item whose last chunk was empty is closed by its checkpoint alone: keep that end marker too.
        closed = {c.item_id for c in unheard if c.final}
        for cp in self._checkpoints.values():
            if cp.final and cp.item_id not in closed:
                after = max((i + 1 for i, c in enumerate(unheard) if c.item_id == cp.item_id), default=0)
                unheard.insert(after, _Chunk(cp.item_id, b"", cp.offset_ms, 0.0, final=True))
        heard = self._cut(now)
        self._stash = unheard
        return heard

    def release(self) -> None:
        """The hunch was wrong: play what was held, from where the caller stopped hearing it."""
        if self._stash is None:
            return
        # The carrier starts playing again at its next frame, not the moment the audio leaves: until an
        # acknowledgement anchors the schedule (asked for after the first chunk), assume that frame's delay, so
        # that a second hold soon after cannot skip what the caller did not hear yet.
        self._play_end = max(self._play_end, self.clock() + _RESTART_S)
        for chunk in self._stash:
            self._last_checkpoint_ms[chunk.item_id] = float("-inf")
        self._queue.extendleft(reversed(self._stash))
        self._stash = None
        self._wakeup.set()

    @property
    def held(self) -> bool:
        return self._stash is not None

    def _cut(self, now: float) -> dict[str, float]:
        """Nothing more plays after `now`: what each item had reached, with the schedule trimmed to match."""
        heard = {item_id: self.heard_ms(item_id, now) for item_id in self._items if self._items[item_id].segments}
        self._queue.clear()
        self._recent.clear()
        self._checkpoints.clear()
        for info in self._items.values():
            info.segments = [s for s in info.segments if s.start < now]
            if info.segments and info.segments[-1].end > now:
                last = info.segments[-1]
                last.duration_ms = (now - last.start) * 1000
        self._play_end = min(self._play_end, now)
        self._generation += 1
        return heard

    # --- questions -----------------------------------------------------------------------------------------

    def resume(self, stream_id: str) -> None:
        """A new carrier socket for the same call: send on its stream id from an empty carrier queue."""
        self.stream_id = stream_id
        self.paused = False
        self._wakeup.set()

    def heard_ms(self, item_id: str, now: float | None = None) -> float:
        """How much of an item the caller has heard, interpolated by the clock, never past an acknowledgement's
        lower bound nor past what was sent."""
        info = self._items.get(item_id)
        if info is None:
            return 0.0
        t = self.clock() if now is None else now
        heard = info.acked_ms
        for seg in info.segments:
            if seg.start <= t:
                heard = max(heard, seg.offset_ms + min(seg.duration_ms, (t - seg.start) * 1000))
        return min(heard, info.sent_ms)

    def is_audible(self, now: float | None = None) -> bool:
        """True while the caller is hearing bot audio or has some queued to hear."""
        t = self.clock() if now is None else now
        return bool(self._queue) or bool(self._stash) or self._play_end > t or any(self._partial.values())

    def idle_at(self) -> float:
        """Clock time at which the carrier should run dry, given what has been sent."""
        return self._play_end

    def recheck_in(self, now: float) -> float:
        """While audible: how long to wait before asking again. Until the carrier runs dry, but at least a poll
        interval, since audio may be waiting with nothing scheduled (held, or no socket while Vobiz reconnects)."""
        return max(self._play_end - now, _POLL_S)

    async def wait_played(self, item_id: str, timeout: float) -> bool:  # noqa: ASYNC109 - one deadline per item
        """Wait for an item's final checkpoint acknowledgement; False when it never came (cleared, dropped)."""
        return await wait_event(self.item(item_id).played, timeout)

    def forget(self, keep: set[str]) -> None:
        """Drop bookkeeping for finished items so an hour-long call does not grow without bound."""
        now = self.clock()
        for item_id in list(self._items):
            info = self._items[item_id]
            if item_id not in keep and info.complete and (not info.segments or info.segments[-1].end < now - 5):
                del self._items[item_id]
                self._last_checkpoint_ms.pop(item_id, None)
