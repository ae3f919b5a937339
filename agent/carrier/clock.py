"""Vobiz's clock, read from the media frames' timestamps, to date messages the agent reads late.

Media frames come every 20 ms stamped on Vobiz's clock, and every other message arrives in order between them.
When the agent's event loop stalls (a long collection, a starved CPU), a backlog piles up in the socket and is
read in a burst: a `playedStream` read 500 ms late does not mean the carrier played 500 ms late. Dating it by
the media frame just before it keeps the "heard" position honest.
"""

from __future__ import annotations

FRAME_S = 0.02  # a message arrives at most one media frame after the one before it
_FORGET_PER_S = 0.001  # the offset may drift up this fast (the network's delay grew; clocks drift)


class CarrierClock:
    """Maps media timestamps (ms) to the local clock by the least-delayed frame seen."""

    def __init__(self) -> None:
        self._offset: float | None = None  # local time minus Vobiz time, for the fastest frame
        self._last_ts: float | None = None
        self._last_local = 0.0

    def observe(self, timestamp: str | int | None, now: float) -> None:
        """A media frame with this timestamp was read at `now` (every frame of a call: kept lean)."""
        if timestamp is None:
            return
        try:
            ts = float(timestamp) / 1000
        except ValueError:
            return
        offset = now - ts
        last_ts = self._last_ts
        if self._offset is None or last_ts is None or ts < last_ts:
            self._offset = offset  # first frame, or a new stream whose clock started over
        else:
            drifted = self._offset + _FORGET_PER_S * (now - self._last_local)
            self._offset = drifted if drifted < offset else offset  # min(offset, drifted), NaN included
        self._last_ts = ts
        self._last_local = now

    def sent_at(self, now: float) -> float:
        """When the message being read at `now` most likely left Vobiz: no later than a frame after the last."""
        if self._offset is None or self._last_ts is None:
            return now
        return min(now, self._offset + self._last_ts + FRAME_S)
