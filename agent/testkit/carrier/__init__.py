"""A simulated Vobiz carrier and caller that drive a running agent over real HTTP and WebSocket.

Unit tests cannot see what goes wrong on a real phone line: Vobiz sends 20 ms frames in real time, plays what
the agent queues in real time, acks a checkpoint only once everything before it has played, forgets pending
checkpoints on clearAudio, and runs the rest of the answer XML after the stream ends. This package plays that
part faithfully (Vobiz protocol reference §1-§3; doc contradictions from §9 are options), so the test-suite,
the synthetic-call CLI and load tests exercise the agent the way a real call does.

Clock model: the call clock starts when ``start`` is sent (t0). Caller frame k carries audio for
[k*P, (k+1)*P): its content is decided at t0 + k*P and it is sent at t0 + (k+1)*P. Playout tick k starts
playing frame k of bot audio at t0 + k*P, using only audio that had arrived by then. Both run on absolute
schedules, so they never drift, and a late event loop catches up instead of slipping. Both are callbacks on one
shared ticker (:mod:`~agent.testkit.carrier.ticker`) and write straight to the socket when nothing is queued
(:mod:`~agent.testkit.carrier.fastsend`), so a hundred calls cost the load generator little of its own.

It is a stand-in: it implements the protocol from the reference and never imports the product's own protocol
code (tests/test_conformance.py checks that).
"""

from __future__ import annotations

from agent.testkit.carrier.audio import CallerAudio, CallView, Cue, ScriptItem, Segment, StreamFormat
from agent.testkit.carrier.call import SimCall
from agent.testkit.carrier.records import (
    CallEndedWithoutStream,
    CarrierProtocolError,
    ClearRecord,
    EndReason,
    SimCallOptions,
    SimulationError,
    TimelineEntry,
    WebhookRecord,
    XmlAction,
)
from agent.testkit.carrier.sim import CarrierSim
from agent.testkit.carrier.webhooks import parse_vobiz_xml, vobiz_signature_headers

__all__ = [
    "CallEndedWithoutStream",
    "CallView",
    "CallerAudio",
    "CarrierProtocolError",
    "CarrierSim",
    "ClearRecord",
    "Cue",
    "EndReason",
    "ScriptItem",
    "Segment",
    "SimCall",
    "SimCallOptions",
    "SimulationError",
    "StreamFormat",
    "TimelineEntry",
    "WebhookRecord",
    "XmlAction",
    "parse_vobiz_xml",
    "vobiz_signature_headers",
]
