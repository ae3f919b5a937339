"""Dating carrier messages by Vobiz's media timestamps, so a backlog read late is not taken for late playback."""

from __future__ import annotations

import pytest

from agent.carrier.clock import FRAME_S, CarrierClock

EPOCH_MS = 1_778_597_597_000  # Vobiz stamps frames with epoch milliseconds, as a string


def test_without_frames_a_message_is_dated_when_read() -> None:
    assert CarrierClock().sent_at(12.5) == 12.5


def test_a_backlog_read_in_a_burst_is_dated_by_the_frame_before_it() -> None:
    clock = CarrierClock()
    for k in range(50):  # one second of frames, each read 30 ms after it was stamped, with some jitter
        clock.observe(str(EPOCH_MS + 20 * k), 100.0 + 0.02 * k + 0.030 + (0.004 if k % 3 else 0.0))
    # In time: a message read right after the last frame is dated when read.
    last_read = 100.0 + 0.02 * 49 + 0.030 + 0.004
    assert clock.sent_at(last_read + 0.005) == last_read + 0.005
    # The loop stalls for 700 ms; 35 frames and an acknowledgement (after frame 60) wait in the socket.
    burst = 100.0 + 0.02 * 49 + 0.75
    for k in range(50, 61):
        clock.observe(str(EPOCH_MS + 20 * k), burst)
    sent = clock.sent_at(burst)
    # Dated by the fastest frame's delay (the offset may creep up 1 ms per second of reading).
    assert sent == pytest.approx(100.0 + 0.02 * 60 + 0.030 + FRAME_S, abs=0.002)
    assert burst - sent > 0.45


def test_a_new_stream_starts_the_clock_over_and_bad_stamps_are_ignored() -> None:
    clock = CarrierClock()
    clock.observe(str(EPOCH_MS), 10.0)
    clock.observe("not a number", 10.5)
    clock.observe(None, 10.6)
    assert clock.sent_at(10.9) == pytest.approx(10.0 + FRAME_S)
    clock.observe(5_000, 20.0)  # a resumed stream whose timestamps begin again (the legacy numeric form)
    assert clock.sent_at(20.01) == 20.01


def test_the_offset_follows_a_network_delay_that_grows() -> None:
    clock = CarrierClock()
    clock.observe(str(EPOCH_MS), 0.0)
    for k in range(1, 3001):  # a minute of frames, now each 80 ms slower than the first
        clock.observe(str(EPOCH_MS + 20 * k), 0.02 * k + 0.08)
    t = 0.02 * 3000 + 0.08
    assert clock.sent_at(t) == t  # the 80 ms step has been absorbed: in-time messages are not back-dated
