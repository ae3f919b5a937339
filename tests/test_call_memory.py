"""What each concurrent call keeps in memory: bounded, and small where it grows with the call's length."""

from __future__ import annotations

import tracemalloc

from agent.calls.latency import ResponseLatency


def test_response_latency_keeps_frame_arrivals_as_plain_doubles_and_still_finds_old_turn_ends() -> None:
    tracemalloc.start()
    try:
        latency = ResponseLatency()
        before, _ = tracemalloc.get_traced_memory()
        for i in range(9000):  # three minutes of 20 ms caller frames
            latency.caller_frame(20.0, 1000.0 + i * 0.02)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 110_000  # at most two minutes of arrivals, 16 bytes a frame (float objects in deques: ~190 KB)
    # A turn that ended 50 s ago (audio_end_ms is an offset into the session's audio) maps to its frame.
    latency.caller_stopped(audio_end_ms=(9000 - 2500) * 20.0, now=2000.0)
    latency.answer_started("item-1")
    ended_at = 1000.0 + (9000 - 2500 - 1) * 0.02  # the arrival of the frame that carried the end of speech
    assert latency.on_line("item-1", ended_at + 0.5) == 500.0
