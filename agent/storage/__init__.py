"""Durable call records: the database, the call store and its background writer, and call recordings.

Nothing here sits on the audio path: a finished call is handed to `RecordWriter.submit` (synchronous, never
blocks) and saved in the background, or kept in a local spool until the database can take it; recordings are
assembled in memory or a spill file and written to disk in a worker thread. Retention deletes old recordings
and call records.
"""

from agent.storage.call_results import (
    CallDetail,
    CallPage,
    CallStats,
    CallSummary,
    Percentiles,
    PromptVersionInfo,
    RunComparison,
    Summary,
    SummaryBucket,
)
from agent.storage.calls import CallStore
from agent.storage.database import Database
from agent.storage.recordings import (
    CallRecorder,
    recording_path,
    run_periodically,
    sweep_recordings,
)
from agent.storage.retention import start_retention_sweeper, sweep_expired
from agent.storage.spool import Spool
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
    "Spool",
    "Summary",
    "SummaryBucket",
    "recording_path",
    "run_periodically",
    "start_retention_sweeper",
    "sweep_expired",
    "sweep_recordings",
]
