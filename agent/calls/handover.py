"""What the caller said that the model has not acted on yet, so that a session switch (rollover before the time
cap, a reconnect after a drop) never loses the caller's turn, and never answers it twice.

A model session holds the caller's audio in its input buffer until its VAD commits a turn, and holds a committed
turn until a response answers it; a fresh session has neither. So the agent keeps its own copy of both: the audio
sent since the last commit (an utterance in progress) and the audio of the last committed turn until an answer to
it is heard or completes. At a switch the new session is given the turn (as text when its transcript is known,
else as the caller's audio) and asked to answer it, and the utterance in progress is appended to its buffer so
its VAD carries on where the old one was. (The commands that do so are `client_commands.user_audio` and
`append_audio`, sent by `ModelSession`.)
"""

from __future__ import annotations


class CallerTurns:
    def __init__(self, keep_bytes: int) -> None:
        self._keep = keep_bytes
        self.pending = bytearray()  # sent since the last commit
        self.turn_audio = b""  # the last committed turn, until it is answered
        self.turn_item: str | None = None
        self.open = False

    def sent(self, audio: bytes) -> None:
        self.pending += audio
        if len(self.pending) > self._keep:  # an hour of silence must not grow without bound
            del self.pending[: len(self.pending) - self._keep]

    def committed(self, item_id: str) -> None:
        """The VAD closed a turn: it waits for an answer."""
        self.turn_audio, self.turn_item, self.open = bytes(self.pending), item_id, True
        self.pending.clear()

    def answered(self) -> None:
        """An answer to the open turn started playing, or completed without words (a tool call)."""
        self.turn_audio, self.turn_item, self.open = b"", None, False

    def new_session(self) -> None:
        """The old session's buffer is gone; what was pending has been handed to the new one."""
        self.pending.clear()
