"""Limits on by default: a maximum call duration and the idle hang-up, and the inbound audio rate limiter."""

from __future__ import annotations

import pytest

from agent.carrier.inbound_rate import InboundRateLimiter
from agent.prompts.loader import parse_prompt
from tests.harness import ROOT

FRAME_S = 0.02


def test_a_prompt_that_says_nothing_gets_a_duration_cap_and_an_idle_hangup() -> None:
    meta = parse_prompt("bare", "---\ngreeting: Hi.\n---\nYou help.\n").meta
    assert meta.max_call_duration_s == 1800
    assert meta.idle.reminder_after_s == 10 and meta.idle.hangup_after_s == 30


def test_limits_can_still_be_turned_off_explicitly() -> None:
    text = "---\nmax_call_duration_s: null\nidle:\n  reminder_after_s: null\n  hangup_after_s: null\n---\nYou help.\n"
    meta = parse_prompt("open", text).meta
    assert meta.max_call_duration_s is None
    assert meta.idle.reminder_after_s is None and meta.idle.hangup_after_s is None


def test_the_shipped_default_prompt_keeps_its_limits() -> None:
    meta = parse_prompt("default", (ROOT / "prompts" / "default.md").read_text(encoding="utf-8")).meta
    assert meta.max_call_duration_s == 1800
    assert meta.idle.reminder_after_s is not None and meta.idle.hangup_after_s == 30


def feed(limiter: InboundRateLimiter, frames: int, start: float, rate: float) -> tuple[int, float]:
    """Send `frames` 20 ms frames at `rate` x real time from `start`; return (admitted, time after the last)."""
    admitted, now = 0, start
    for _ in range(frames):
        admitted += limiter.admit(FRAME_S, now)
        now += FRAME_S / rate
    return admitted, now


def test_real_time_audio_always_passes() -> None:
    limiter = InboundRateLimiter()
    admitted, _ = feed(limiter, 50 * 600, 1000.0, 1.0)  # ten minutes at real time
    assert admitted == 50 * 600 and limiter.dropped_frames == 0


def test_a_catch_up_burst_after_a_two_second_stall_passes() -> None:
    limiter = InboundRateLimiter()
    _, now = feed(limiter, 500, 0.0, 1.0)
    now += 2.0  # the network stalls; then the 2 s of audio held up arrive at once, then real time again
    burst = sum(limiter.admit(FRAME_S, now) for _ in range(100))
    assert burst == 100
    admitted, _ = feed(limiter, 250, now + FRAME_S, 1.0)
    assert admitted == 250 and limiter.dropped_frames == 0


def test_a_flood_is_held_to_the_allowed_rate() -> None:
    limiter = InboundRateLimiter(max_rate=1.2, burst_s=2.0)
    admitted, now = feed(limiter, 50 * 60, 0.0, 10.0)  # a minute of audio sent in six seconds
    elapsed = now  # seconds of arrival time
    assert admitted * FRAME_S == pytest.approx(2.0 + 1.2 * elapsed, abs=2 * FRAME_S)
    assert limiter.dropped_frames == 50 * 60 - admitted
    assert limiter.dropped_s == pytest.approx(limiter.dropped_frames * FRAME_S)


def test_sustained_audio_just_over_the_rate_is_dropped_only_past_the_burst() -> None:
    limiter = InboundRateLimiter(max_rate=1.2, burst_s=2.0)
    admitted, _ = feed(limiter, 50 * 60, 0.0, 1.15)  # below 1.2x: jitter-level speed-up is fine
    assert admitted == 50 * 60 and limiter.dropped_frames == 0
    fast = InboundRateLimiter(max_rate=1.2, burst_s=2.0)
    feed(fast, 50 * 60, 0.0, 1.5)  # 1.5x for a minute: 60 s of audio over 40 s, 48 s + 2 s burst allowed
    assert fast.dropped_s == pytest.approx(10.0, abs=0.1)


def test_a_refused_frame_costs_nothing_and_odd_inputs() -> None:
    limiter = InboundRateLimiter(max_rate=1.0, burst_s=0.04)
    assert limiter.admit(FRAME_S, 0.0) and limiter.admit(FRAME_S, 0.0)
    assert not limiter.admit(FRAME_S, 0.0)
    assert limiter.admit(FRAME_S, 0.02)  # exactly one frame refilled
    assert limiter.admit(0.0, 0.02)  # empty frames are free
    assert not limiter.admit(FRAME_S, 0.01)  # a clock that went backwards refills nothing
    assert limiter.dropped_frames == 2
    with pytest.raises(ValueError):
        limiter.admit(-0.02, 1.0)
    with pytest.raises(ValueError):
        InboundRateLimiter(max_rate=0)
    with pytest.raises(ValueError):
        InboundRateLimiter(burst_s=0)
