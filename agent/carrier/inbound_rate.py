"""Caller audio faster than real time: decide, frame by frame, what to drop.

A real carrier sends caller audio at real time, give or take jitter, plus a catch-up burst after a network
stall. Anything much faster is a broken or hostile peer flooding the model session (and the bill) with audio
no phone line could carry. This is a token bucket measured in seconds of audio: it refills at `max_rate`
seconds of audio per second of arrival time and holds at most `burst_s`; a frame that does not fit is
dropped (and costs nothing). Pure and clock-free: the caller passes each frame's arrival time, so it is
deterministic to test and cheap on the audio path (a few float operations per frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Float slack so a burst of exactly `burst_s` (e.g. 100 frames of 20 ms) is not refused over rounding.
_EPSILON_S = 1e-9


@dataclass(slots=True)
class InboundRateLimiter:
    """Admits caller audio up to `max_rate` x real time, with a `burst_s` allowance for catch-up after a stall.

    Usage, per inbound media frame: ``if not limiter.admit(frame_seconds, time.monotonic()): drop it``.
    The bucket starts full, so the first `burst_s` of audio always passes. `dropped_frames` and `dropped_s`
    count what was refused (for a metric or a call event).
    """

    max_rate: float = 1.2
    burst_s: float = 2.0
    dropped_frames: int = field(default=0, init=False)
    dropped_s: float = field(default=0.0, init=False)
    _budget_s: float = field(default=0.0, init=False, repr=False)
    _last: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_rate <= 0:
            raise ValueError("max_rate must be positive")
        if self.burst_s <= 0:
            raise ValueError("burst_s must be positive")
        self._budget_s = self.burst_s

    def admit(self, duration_s: float, now: float) -> bool:
        """True to keep a frame of `duration_s` seconds of audio that arrived at monotonic time `now`.

        A refused frame does not use up the allowance, so audio resumes as soon as the sender slows down.
        Zero-length frames always pass; a negative duration is a caller bug (ValueError).
        """
        if duration_s < 0:
            raise ValueError("duration_s must not be negative")
        last = self._last
        if last is None:
            self._last = now
        elif now > last:  # never refill on a clock that stood still or went backwards
            self._budget_s = min(self.burst_s, self._budget_s + (now - last) * self.max_rate)
            self._last = now
        budget = self._budget_s
        if duration_s <= budget + _EPSILON_S:
            self._budget_s = max(0.0, budget - duration_s)
            return True
        self.dropped_frames += 1
        self.dropped_s += duration_s
        return False

    @property
    def allowance_s(self) -> float:
        """Seconds of audio that would pass right now, at the last arrival time seen."""
        return self._budget_s
