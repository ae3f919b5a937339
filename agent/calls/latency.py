"""Response latency, defined once: from the end of the caller's speech on the line to the first bot audio on the
line. Every surface (call records and the database, the console, /metrics, the CLI and load-test reports) shows
this one figure.

Both ends are taken where the caller is, as near as the agent can see it. The end of speech is when the frame
holding the last speech sample arrived from Vobiz. The model's VAD reports `audio_end_ms`, an offset into the
audio this session was given that, per the SDK, "includes the min_silence_duration_ms": so the speech ended that
silence window earlier, and the frame that carried it is found through the arrival time of every caller frame.
The VAD's silence window and the network to the model count, as the caller waits through them. (`semantic_vad`
does not say how long it waited, so there the end of speech is taken at `audio_end_ms` and the figure is short by
that wait.) The first bot audio on the line is
when the playout scheduled the answer's first chunk to start at the carrier. The mapping restarts with each model
session, whose input buffer starts from zero.
"""

from __future__ import annotations

import bisect
from array import array


class ResponseLatency:
    _KEEP_FRAMES = 3000  # a minute of 20 ms frames (a turn's end is always more recent than that), up to two kept

    def __init__(self, vad_silence_ms: float = 0.0) -> None:
        self._vad_silence_ms = vad_silence_ms
        # Plain doubles (8 bytes a frame, not a float object and a pointer: every concurrent call keeps these).
        self._arrived_ms = array("d")  # call-cumulative ms at each frame's end
        self._arrived_at = array("d")
        self._total_ms = 0.0
        self._session_base_ms = 0.0
        self._turn_end: float | None = None
        self._waiting: dict[str, float] = {}

    def caller_frame(self, ms: float, at: float) -> None:
        """A frame of `ms` of caller audio arrived at `at` (and was queued for the model)."""
        self._total_ms += ms
        self._arrived_ms.append(self._total_ms)
        self._arrived_at.append(at)
        if len(self._arrived_ms) >= 2 * self._KEEP_FRAMES:
            del self._arrived_ms[: self._KEEP_FRAMES]
            del self._arrived_at[: self._KEEP_FRAMES]

    def new_session(self, queued_ms: float) -> None:
        """A fresh model session takes the caller's audio from here; `queued_ms` arrived but was not sent yet."""
        self._session_base_ms = self._total_ms - queued_ms

    def caller_stopped(self, audio_end_ms: float, now: float) -> None:
        """The model's VAD says the caller's speech ended `audio_end_ms` into this session's audio."""
        target = self._session_base_ms + max(0.0, audio_end_ms - self._vad_silence_ms)
        index = bisect.bisect_left(self._arrived_ms, target)
        self._turn_end = self._arrived_at[index] if index < len(self._arrived_at) else now

    def answer_started(self, item_id: str) -> None:
        """The first audio of an answer to that turn arrived from the model."""
        if self._turn_end is not None:
            self._waiting[item_id] = self._turn_end
            self._turn_end = None

    def on_line(self, item_id: str, at: float) -> float | None:
        """The item's first audio starts playing on the line at `at`: its response latency in ms, once."""
        ended = self._waiting.pop(item_id, None)
        return None if ended is None else max(0.0, (at - ended) * 1000)
