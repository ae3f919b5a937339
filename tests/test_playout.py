"""Playout pacing and the 'what has the caller heard' estimate, on a manual clock."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest

from agent.audio.formats import MediaFormat
from agent.carrier.playout import LATE_FACTOR, LATE_MARGIN_S, Playout, WakeLateness
from agent.waiting import wait_event

MULAW = MediaFormat("audio/x-mulaw", 8000)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Sink:
    def __init__(self) -> None:
        self.messages: list[dict[str, object]] = []

    async def __call__(self, text: str) -> None:
        self.messages.append(json.loads(text))

    def audio_ms(self) -> float:
        total = 0
        for m in self.messages:
            if m["event"] == "playAudio":
                media = m["media"]
                assert isinstance(media, dict)
                total += len(base64.b64decode(media["payload"]))
        return total / 8

    def checkpoints(self) -> list[str]:
        return [str(m["name"]) for m in self.messages if m["event"] == "checkpoint"]


def make(
    clock: Clock, sink: Sink, *, lead_ms: int = 200, checkpoint_interval_ms: int = 1000, chunk_ms: int = 20
) -> Playout:
    return Playout(
        sink,
        "stream-1",
        MULAW,
        clock=clock,
        lead_ms=lead_ms,
        checkpoint_interval_ms=checkpoint_interval_ms,
        chunk_ms=chunk_ms,
    )


async def pace(playout: Playout, clock: Clock, chunks: int) -> None:
    """Let the pacer run for `chunks` wake-ups, 20 ms of the manual clock apart."""
    for _ in range(chunks):
        await playout.step()
        clock.t += 0.02


async def test_sends_only_lead_ahead_of_real_time() -> None:
    clock, sink = Clock(), Sink()
    playout = make(clock, sink, lead_ms=200)
    playout.enqueue("item_a", b"\x11" * 8 * 1000)  # one second of audio at once, as the model streams it
    wait = await playout.step()
    # 200 ms lead plus the chunk that crosses it; the rest waits for the clock.
    assert sink.audio_ms() == pytest.approx(220, abs=0.1)
    assert wait == pytest.approx(0.02, abs=1e-6)
    for _ in range(25):  # the pacer wakes every chunk for half a second
        clock.t += 0.02
        await playout.step()
    assert sink.audio_ms() == pytest.approx(720, abs=0.1)
    assert all(m["streamId"] == "stream-1" for m in sink.messages)


async def test_heard_is_interpolated_by_the_clock_and_capped_by_what_was_sent() -> None:
    clock, sink = Clock(), Sink()
    playout = make(clock, sink, lead_ms=200)
    playout.enqueue("item_a", b"\x11" * 8 * 1000)
    await playout.step()
    assert playout.heard_ms("item_a") == 0
    clock.t += 0.150
    assert playout.heard_ms("item_a") == pytest.approx(150, abs=0.5)
    clock.t += 10  # nothing more sent: cannot have heard more than the 220 ms sent
    assert playout.heard_ms("item_a") == pytest.approx(220, abs=0.5)


async def test_checkpoints_carry_item_and_offset_and_final_ack_sets_played() -> None:
    clock, sink = Clock(), Sink()
    playout = make(clock, sink, lead_ms=200, checkpoint_interval_ms=100)
    playout.enqueue("item_a", b"\x11" * 8 * 300)
    playout.finish_item("item_a", b"\x11" * 8 * 10)
    await pace(playout, clock, 40)
    names = sink.checkpoints()
    assert names[0].startswith("item_a.100.")
    assert names[-1].startswith("item_a.310.")
    assert not playout.item("item_a").played.is_set()
    assert playout.on_played(names[-1])
    assert playout.item("item_a").played.is_set()
    assert not playout.on_played("unknown")


async def test_late_ack_shifts_the_schedule() -> None:
    clock, sink = Clock(), Sink()
    playout = make(clock, sink, lead_ms=400, checkpoint_interval_ms=100)
    playout.enqueue("item_a", b"\x11" * 8 * 400)
    await playout.step()
    first = sink.checkpoints()[0]  # end of the first 100 ms, expected at t0 + 0.1
    clock.t += 0.180  # the carrier reports it 80 ms late (jitter, a slow start)
    playout.on_played(first)
    assert playout.heard_ms("item_a") == pytest.approx(100, abs=0.5)
    clock.t += 0.100
    assert playout.heard_ms("item_a") == pytest.approx(200, abs=0.5)


async def test_clear_reports_heard_drops_queue_and_ignores_stale_acks() -> None:
    clock, sink = Clock(), Sink()
    playout = make(clock, sink, lead_ms=200, checkpoint_interval_ms=100)
    playout.enqueue("item_a", b"\x11" * 8 * 2000)
    await playout.step()
    clock.t += 0.130
    pending = sink.checkpoints()
    heard = playout.clear()
    assert heard == {"item_a": pytest.approx(130, abs=0.5)}
    assert not playout.is_audible()
    assert await playout.step() is None
    for name in pending:
        assert not playout.on_played(name)
    assert playout.heard_ms("item_a") == pytest.approx(130, abs=0.5)


async def test_l16_chunks_stay_sample_aligned() -> None:
    clock, sink = Clock(), Sink()
    fmt = MediaFormat("audio/x-l16", 16000)
    playout = Playout(sink, "s", fmt, clock=clock, lead_ms=1000)
    playout.enqueue("item_a", b"\x01\x00" * 333)
    playout.finish_item("item_a", b"\x01\x00" * 7 + b"\x01")
    await playout.step()
    media = [m["media"] for m in sink.messages if m["event"] == "playAudio"]
    assert [len(base64.b64decode(m["payload"])) for m in media] == [640, 40]  # type: ignore[index]
    assert all(m["sampleRate"] == 16000 and m["contentType"] == "audio/x-l16" for m in media)  # type: ignore[index]


def payload_bytes(sink: Sink) -> bytes:
    out = b""
    for m in sink.messages:
        media = m.get("media")
        if m["event"] == "playAudio" and isinstance(media, dict):
            out += base64.b64decode(media["payload"])
    return out


async def test_hold_keeps_what_was_not_heard_and_release_plays_it_from_the_cut() -> None:
    clock, sink = Clock(), Sink()
    playout = make(clock, sink, lead_ms=200)
    audio = (bytes(range(250)) * 32)[: 8 * 1000]  # one second; the bytes tell where in it they were
    playout.enqueue("item_a", audio)
    playout.finish_item("item_a")
    await playout.step()  # 220 ms sent
    clock.t += 0.105  # the caller has heard 105 ms when the hunch comes
    heard = playout.hold()
    assert heard == {"item_a": pytest.approx(105, abs=0.01)}
    assert playout.held and playout.is_audible()
    clock.t += 0.5
    sink.messages.clear()
    assert await playout.step() is None  # held: nothing goes out
    assert sink.messages == []
    assert playout.heard_ms("item_a") == pytest.approx(105, abs=0.01)  # nothing was heard meanwhile
    playout.release()
    await pace(playout, clock, 60)
    resent = payload_bytes(sink)
    assert resent == audio[840 - 80 :]  # from 105 ms less the 10 ms rewind: nothing skipped
    assert playout.heard_ms("item_a") == pytest.approx(1000, abs=0.01)


async def test_a_resume_never_starts_past_the_last_sample_the_caller_heard() -> None:
    """The schedule may run a few ms ahead of the carrier (a late ack re-anchors it only past 5 ms) and the hold
    comes between two samples: the held audio resumes at or before the caller's last sample, never after it."""
    clock, sink = Clock(), Sink()
    playout = make(clock, sink, lead_ms=200)
    audio = (bytes(range(250)) * 32)[: 8 * 1000]
    playout.enqueue("item_a", audio)
    playout.finish_item("item_a")
    await playout.step()
    clock.t += 0.10506  # 840.5 samples by the schedule
    carrier_lag_ms = 4.9  # the carrier started this late: not enough for a re-anchoring ack
    truly_heard = int((105.06 - carrier_lag_ms) * 8)
    playout.hold()
    sink.messages.clear()
    playout.release()
    await pace(playout, clock, 60)
    resent = payload_bytes(sink)
    resumed_at = len(audio) - len(resent)
    assert resent == audio[resumed_at:]
    assert resumed_at <= truly_heard
    assert resumed_at >= truly_heard - 8 * 20  # not much heard twice either


async def test_clear_while_held_drops_the_held_audio() -> None:
    clock, sink = Clock(), Sink()
    playout = make(clock, sink, lead_ms=200)
    playout.enqueue("item_a", b"\x11" * 8 * 1000)
    await playout.step()
    clock.t += 0.1
    playout.hold()
    assert playout.clear() == {"item_a": pytest.approx(100, abs=0.01)}
    playout.release()  # too late: the barge-in was confirmed
    sink.messages.clear()
    assert await playout.step() is None and sink.messages == []
    assert not playout.is_audible()


async def test_finish_all_closes_items_whose_session_is_gone() -> None:
    clock, sink = Clock(), Sink()
    playout = make(clock, sink, lead_ms=200)
    playout.enqueue("item_a", b"\x11" * 85)  # 10.6 ms: less than a chunk, kept back for the next delta
    assert playout.is_audible()
    playout.finish_all()  # the model session reconnected: that next delta will never come
    await pace(playout, clock, 3)
    assert sink.audio_ms() == pytest.approx(10.625) and sink.checkpoints()
    assert not playout.is_audible()
    playout.enqueue("item_a", b"\x11" * 160)  # a straggler from the closed session is not played
    assert not playout.is_audible()


async def test_hold_keeps_the_end_marker_of_an_item_that_ended_on_a_whole_chunk() -> None:
    clock, sink = Clock(), Sink()
    playout = make(clock, sink, lead_ms=200)
    playout.enqueue("item_a", b"\x11" * 8 * 100)  # exactly five chunks: the final one is empty
    playout.finish_item("item_a")
    await playout.step()
    assert sink.checkpoints()  # its end was announced ahead of the audio
    clock.t += 0.05
    playout.hold()  # the carrier drops that checkpoint with the queue
    playout.release()
    await pace(playout, clock, 6)
    final = sink.checkpoints()[-1]
    assert final.startswith("item_a.100.") and playout.on_played(final)
    assert await playout.wait_played("item_a", 0.01)


def play_sizes(sink: Sink) -> list[int]:
    return [
        len(base64.b64decode(m["media"]["payload"]))  # type: ignore[index]
        for m in sink.messages
        if m["event"] == "playAudio"
    ]


async def test_large_chunks_join_small_deltas_into_few_messages() -> None:
    """20 ms deltas queued ahead leave as 100 ms messages: a fifth of the sends, with the same lead."""
    clock, sink = Clock(), Sink()
    playout = make(clock, sink, chunk_ms=100, lead_ms=200)
    for _ in range(50):  # one second of audio in 20 ms deltas, faster than real time
        playout.enqueue("item_a", b"\x11" * 160)
    playout.finish_item("item_a")
    await pace(playout, clock, 60)
    assert play_sizes(sink) == [800] * 10
    assert sink.audio_ms() == pytest.approx(1000)


async def test_large_chunks_never_wait_for_a_chunk_to_fill() -> None:
    """The first delta of a response leaves at once, however short: chunk size must not add response latency."""
    clock, sink = Clock(), Sink()
    playout = make(clock, sink, chunk_ms=100, lead_ms=200)
    playout.enqueue("item_a", b"\x11" * 160)
    await playout.step()
    assert play_sizes(sink) == [160]
    playout.enqueue("item_a", b"\x11" * 240)
    await playout.step()
    assert play_sizes(sink) == [160, 240]


async def test_large_chunks_keep_the_heard_position_to_the_millisecond() -> None:
    """Truncation uses the clock's interpolation inside a 100 ms message, not the message boundaries."""
    clock, sink = Clock(), Sink()
    playout = make(clock, sink, chunk_ms=100, lead_ms=200)
    playout.enqueue("item_a", b"\x11" * 8 * 1000)
    await playout.step()
    assert play_sizes(sink) == [800, 800, 800]  # 200 ms lead plus the message that crosses it
    clock.t += 0.137
    assert playout.heard_ms("item_a") == pytest.approx(137, abs=0.5)
    assert playout.clear() == {"item_a": pytest.approx(137, abs=0.5)}


async def test_hold_and_release_with_large_chunks_resume_mid_message() -> None:
    clock, sink = Clock(), Sink()
    playout = make(clock, sink, chunk_ms=100, lead_ms=200)
    audio = bytes(range(256)) * 4  # 1024 bytes: 128 ms, each byte telling where it was
    playout.enqueue("item_a", audio)
    playout.finish_item("item_a")
    await playout.step()
    clock.t += 0.05
    assert playout.hold() == {"item_a": pytest.approx(50, abs=0.5)}
    sink.messages.clear()
    playout.release()
    await pace(playout, clock, 5)
    sent = b"".join(base64.b64decode(m["media"]["payload"]) for m in sink.messages if m["event"] == "playAudio")  # type: ignore[index]
    assert sent == audio[400 - 80 :]  # 50 ms less the 10 ms rewind


async def test_a_late_wake_up_deepens_the_lead_and_the_depth_fades() -> None:
    clock, sink = Clock(), Sink()
    lateness = WakeLateness(half_life_s=10.0)
    playout = Playout(sink, "stream-1", MULAW, clock=clock, lead_ms=200, lateness=lateness)
    playout.enqueue("item_a", b"\x11" * 8 * 3000)
    await playout.step()
    assert sink.audio_ms() == pytest.approx(220, abs=0.1)
    # The pacer woke 300 ms late (a long collection): the lead now covers a stall like that, with room to spare.
    clock.t += 0.32
    lateness.observe(0.3, clock.t)
    await playout.step()
    assert playout.idle_at() - clock.t == pytest.approx(0.3 * LATE_FACTOR + LATE_MARGIN_S, abs=0.021)
    # Two half-lives later the stall counts a quarter: 75 ms * 1.25 + 60 ms is under the configured 200 ms.
    assert playout.lead(clock.t + 20) == pytest.approx(0.2)
    assert playout.lead(clock.t + 10) == pytest.approx(0.15 * LATE_FACTOR + LATE_MARGIN_S)


async def test_a_stalled_loop_deepens_the_lead_of_every_call_on_it() -> None:
    """A real stall of the running loop, seen by one pacer, keeps the carrier fed through the next one in all."""
    stall_s, first, woke = 0.3, asyncio.Event(), asyncio.Event()
    stalled_until: list[float] = []

    async def sink(text: str) -> None:
        first.set()
        if stalled_until and time.monotonic() >= stalled_until[0]:
            woke.set()

    playing = Playout(sink, "stream-1", MULAW, lead_ms=100)
    quiet = Playout(sink, "stream-2", MULAW, lead_ms=100)  # another call, silent meanwhile
    playing.enqueue("item_a", b"\x11" * 8 * 5000)
    task = asyncio.create_task(playing.run())
    try:
        assert await wait_event(first, 2)
        time.sleep(stall_s)  # noqa: ASYNC251 - the stall under test: the loop freezes, the pacer wakes late
        stalled_until.append(time.monotonic())
        assert await wait_event(woke, 2)
        now = time.monotonic()
        assert playing.idle_at() - now > stall_s  # the carrier now holds more than such a stall
        assert quiet.lead(now) == playing.lead(now) > stall_s
    finally:
        task.cancel()


async def test_a_carrier_that_ran_dry_deepens_the_lead_but_its_start_up_does_not() -> None:
    clock, sink = Clock(), Sink()
    playout = Playout(sink, "stream-1", MULAW, clock=clock, lead_ms=200, checkpoint_interval_ms=100, lateness=None)
    playout.lateness = WakeLateness()
    playout.enqueue("item_a", b"\x11" * 8 * 3000)
    await playout.step()
    first, second = sink.checkpoints()[:2]  # expected at t0 + 0.1 and t0 + 0.2
    clock.t += 0.115  # a frame's start-up: no sign of running dry
    playout.on_played(first)
    assert playout.lead(clock.t) == pytest.approx(0.2)
    clock.t += 0.185  # 85 ms late: the carrier's queue ran dry that long, its 200 ms were not enough
    playout.on_played(second)
    assert playout.lead(clock.t) == pytest.approx((0.2 + 0.085) * LATE_FACTOR + LATE_MARGIN_S, abs=0.002)


async def test_a_carrier_late_once_is_not_late_again_at_every_later_checkpoint() -> None:
    """The schedule moved by a late ack; the checkpoints after it move too, or each later ack, just as late, would
    move the schedule again: the agent would think the carrier holds ever more than it does and let it run dry."""
    clock, sink = Clock(), Sink()
    playout = make(clock, sink, lead_ms=1000, checkpoint_interval_ms=100)
    playout.enqueue("item_a", b"\x11" * 8 * 600)
    await playout.step()
    t0, names = clock.t, sink.checkpoints()  # every 100 ms of audio, expected at t0 + 0.1, 0.2, ...
    for n, name in enumerate(names[:4]):
        clock.t = t0 + 0.1 * (n + 1) + 0.08  # the carrier started 80 ms late and has kept that pace since
        playout.on_played(name)
    assert playout.late_acks == 1
    assert playout.idle_at() == pytest.approx(t0 + 0.6 + 0.08, abs=1e-6)
    assert playout.heard_ms("item_a") == pytest.approx(400, abs=0.5)
