"""What the caller heard of the bot, and whether the caller talking over it is an interruption.

`machine` keeps the line and each bot item true through barge-ins, holds, dropped streams and new sessions;
`adaptive` is the default policy's pause → decide → cut-or-resume loop, deciding with `policy` from evidence
(speech length, the transcript sorted by `words`, the bot's echo).
"""

from __future__ import annotations

from agent.calls.interruption.machine import EARLY_BACKOFF_S, Interruption
from agent.calls.interruption.states import Audio, Fate, Line, Spawn

__all__ = ["EARLY_BACKOFF_S", "Audio", "Fate", "Interruption", "Line", "Spawn"]
