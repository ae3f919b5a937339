"""The record writer's shared state, and one save with a deadline that tracks whether the database is out.

`RecordWriter` (`agent.storage.writer`) is built in layers: this one holds the queues, counters and outage
state every part reads; `agent.storage.writer_spool` adds the local spool (writing it, replaying it); the writer
itself adds taking records, the saver loop and shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.observability.metrics import Metrics
from agent.prompts.loader import Prompt
from agent.records.record import CallRecord
from agent.storage.db_errors import describe
from agent.storage.spool import Spool, SpoolEntry
from agent.waiting import wait_event

log = logging.getLogger("agent.storage")


class SavesRecords(Protocol):
    async def save(self, record: CallRecord, prompt: Prompt | None = None) -> None: ...


@dataclass
class QueuedRecord:
    record: CallRecord
    prompt: Prompt | None
    seq: int
    key: str
    why: str = "queue_full"  # the reason it is counted under if it ends up in the spool


class WriterCore:
    def __init__(
        self,
        store: SavesRecords,
        *,
        spool_dir: Path = Path("var/spool"),
        metrics: Metrics | None = None,
        max_pending: int = 1000,
        save_timeout_s: float = 5.0,
        retry_delays: Sequence[float] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
        close_timeout_s: float = 5.0,
        spool_close_timeout_s: float = 30.0,
    ) -> None:
        self.store = store
        self.spool = Spool(spool_dir)
        self.metrics = metrics or Metrics()
        self.max_pending = max_pending
        self.save_timeout_s = save_timeout_s
        self.retry_delays = tuple(retry_delays) or (1.0,)
        self.close_timeout_s = close_timeout_s
        self.spool_close_timeout_s = spool_close_timeout_s
        self._pending: OrderedDict[str, QueuedRecord] = OrderedDict()  # for the database, by spool key
        self._spill: OrderedDict[str, QueuedRecord] = OrderedDict()  # for the spool
        self._spooling: dict[str, QueuedRecord] = {}  # being written to the spool now
        self._saving: QueuedRecord | None = None
        self._files: dict[str, dict[int, SpoolEntry]] = {}  # the spool on disk, by key then seq
        self._replay_order: list[tuple[int, str]] = []  # heap of (seq, key); stale pairs are skipped
        self._file_count = 0
        self._outage = False
        self._retries = 0
        self._retry_at = 0.0
        self._last_seq = 0
        self._spool_failing = False
        self._saver_wakeup = asyncio.Event()
        self._spooler_wakeup = asyncio.Event()
        self._change = asyncio.Event()
        self._abandoned: set[asyncio.Task[None]] = set()
        self._saver: asyncio.Task[None] | None = None
        self._spooler: asyncio.Task[None] | None = None
        self._closed = False
        self.submitted = 0
        self.saved = 0
        self.spooled = 0
        self.replayed = 0
        self.retries = 0  # attempts that failed again while the database was already out
        self.failed = 0  # refused by the database (kept in failed/), unreadable spool files, failed spool writes
        self.lost_on_close = 0  # neither saved nor spooled by the end of `aclose`

    # --- state, for callers and tests ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records in memory, not yet saved or spooled."""
        return len(self._pending) + len(self._spill) + len(self._spooling) + (self._saving is not None)

    @property
    def spool_files(self) -> int:
        """Records waiting in the spool (as far as this writer knows: the spool is scanned once started)."""
        return self._file_count

    @property
    def outage(self) -> bool:
        """True while the database is considered down: records go straight to the spool."""
        return self._outage

    async def wait_until(self, condition: Callable[[], bool], seconds: float | None = None) -> bool:
        """Wait for `condition` (re-checked whenever the writer's state changes); False if `seconds` ran out."""
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        while not condition():
            change = self._change
            if deadline is None:
                await change.wait()
            elif not await wait_event(change, deadline - loop.time()):
                return condition()
        return True

    async def flush(self) -> None:
        """Wait until everything submitted so far is in the database or the spool."""
        await self.wait_until(lambda: self.pending == 0)

    # --- shared by the saver and the spooler --------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        self.failed += 1
        self.metrics.records_failed.labels(reason).inc()

    def _next_seq(self) -> int:
        """Time-ordered and strictly increasing, so spool files sort by submission across restarts too."""
        self._last_seq = max(self._last_seq + 1, time.time_ns())
        return self._last_seq

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    def _requeue(self, item: QueuedRecord, queue: OrderedDict[str, QueuedRecord]) -> None:
        """Put a record that was in flight back at the front of `queue`, unless the call was submitted again
        meanwhile: the version in line is newer and has everything."""
        if item.key not in self._pending and item.key not in self._spill:
            queue[item.key] = item
            queue.move_to_end(item.key, last=False)

    def _divert_pending(self, why: str) -> None:
        """The database is out, or the writer closing: everything queued for it goes to the spool instead."""
        for item in self._pending.values():
            item.why = why
        self._spill.update(self._pending)  # a call is never queued in both
        self._pending.clear()
        self._spooler_wakeup.set()
        self._changed()

    # --- one save, and the outage it may reveal -----------------------------------------------------------------

    async def _save(self, record: CallRecord, prompt: Prompt | None) -> None:
        """One save with a deadline. The save runs as its own task and is abandoned (cancelled, not waited for)
        at the deadline: its clean-up may itself hang on the same dead connection."""
        task = asyncio.get_running_loop().create_task(self.store.save(record, prompt), name="record-save")
        try:
            done, _ = await asyncio.wait({task}, timeout=self.save_timeout_s)
        except asyncio.CancelledError:
            self._abandon(task)
            raise
        if not done:
            self._abandon(task)
            raise TimeoutError(f"saving took longer than {self.save_timeout_s:g}s")
        task.result()

    def _abandon(self, task: asyncio.Task[None]) -> None:
        task.cancel()
        self._abandoned.add(task)  # the loop only keeps weak references to tasks
        task.add_done_callback(_forget_abandoned(self._abandoned))

    def _database_down(self, exc: BaseException, call_id: str) -> None:
        delay = self.retry_delays[min(self._retries, len(self.retry_delays) - 1)]
        self._retries += 1
        self._retry_at = time.monotonic() + delay
        if not self._outage:
            self._outage = True
            log.warning(
                "database unavailable saving call record %s (%s): spooling records to %s, retrying in %gs",
                call_id,
                describe(exc),
                self.spool.directory,
                delay,
            )
            self._divert_pending("outage")
        else:
            self.retries += 1
            log.info("database still unavailable (%s); next try in %gs", describe(exc), delay)

    def _database_up(self) -> None:
        self._retries = 0
        if self._outage:
            self._outage = False
            log.warning("database is back: replaying %d spooled call record(s)", self.spool_files)


def _forget_abandoned(tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], Any]:
    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the save was given up on and its record spooled

    return done
