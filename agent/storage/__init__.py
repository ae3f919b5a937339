"""Durable call records: the database, the call store and its background writer, and call recordings.

Nothing here sits on the audio path: a finished call is handed to `RecordWriter.submit` (synchronous, never
blocks) and saved in the background; recordings are assembled in memory or a spill file and written to disk in
a worker thread.
"""

from agent.storage.calls import (
    CallDetail,
    CallPage,
    CallStats,
    CallStore,
    CallSummary,
    Percentiles,
    PromptVersionInfo,
    RunComparison,
    Summary,
    SummaryBucket,
)
from agent.storage.database import Database
from agent.storage.recordings import (
    CallRecorder,
    recording_path,
    run_periodically,
    start_recording_sweeper,
    sweep_recordings,
)
from agent.storage.writer import RecordWriter

__all__ = [
    "CallDetail",
    "CallPage",
    "CallRecorder",
    "CallStats",
    "CallStore",
    "CallSummary",
    "Database",
    "Percentiles",
    "PromptVersionInfo",
    "RecordWriter",
    "RunComparison",
    "Summary",
    "SummaryBucket",
    "recording_path",
    "run_periodically",
    "start_recording_sweeper",
    "sweep_recordings",
]
