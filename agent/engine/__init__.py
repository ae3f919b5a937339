"""The offline OpenAI Realtime engine: the GA protocol served locally, with a voice.

`voice-agent serve` answers calls through it when no OpenAI key is set (:mod:`agent.engine.engine`), and tests
and benchmarks use it as a faithful stand-in for the real service. It never imports the test kit.
"""

from __future__ import annotations

from agent.engine.formats import AudioFormat, SimulatorBug, describe_audio, new_id, sine_tone
from agent.engine.protocol import Event, default_session
from agent.engine.replies import RealtimeSimConfig, Reply, ReplyRequest, ReplySource, ToneReplySource, ToolCall
from agent.engine.server import RealtimeServer
from agent.engine.session import SimSession

__all__ = [
    "AudioFormat",
    "Event",
    "RealtimeServer",
    "RealtimeSimConfig",
    "Reply",
    "ReplyRequest",
    "ReplySource",
    "SimSession",
    "SimulatorBug",
    "ToneReplySource",
    "ToolCall",
    "default_session",
    "describe_audio",
    "new_id",
    "sine_tone",
]
