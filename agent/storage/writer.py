"""Saves call records in the background so the audio path never waits for the database, and loses none.

`submit` is a plain function: it puts the record in a bounded in-memory queue and returns. A record already
waiting is replaced in place (a late hangup webhook refining a call costs no extra slot). One saver task writes
records to the database oldest first, each save with a deadline (`save_timeout_s`): a hung query costs that
long, never the writer.

Whatever cannot go to the database goes to the local spool (`agent.storage.spool`) instead of being dropped:
records arriving while the queue is full, a record whose save failed or timed out, and, while the database is
out, everything (the saver stops trying it with each record and probes it with the oldest spooled one, backing
off up to `retry_delays[-1]`). When a probe succeeds the spool is replayed, oldest first, after fresh records.
The spool left by an earlier process is replayed the same way: the saver scans it in a worker thread once
started, so start-up never waits for it. Saving is an idempotent upsert, so a record saved twice (a save that
timed out but committed, a replay after a crash) is still one row. A record the database refuses (not a
transient error) goes to the spool's `failed/` folder; it would fail again.

Spool writes run in worker threads from a second task, so a slow disk never blocks the loop or the saver.
The shared state and the deadline saves are in `agent.storage.writer_core`, the spool side in
`agent.storage.writer_spool`; this module takes records, runs the saver and shuts down.
"""

from __future__ import annotations

import asyncio
import logging
import time

from agent.prompts.loader import Prompt
from agent.records.record import CallRecord
from agent.storage.db_errors import is_transient
from agent.storage.spool import spool_key
from agent.storage.writer_core import QueuedRecord
from agent.storage.writer_spool import SpoolingWriter
from agent.waiting import cancel_and_wait, wait_event

log = logging.getLogger("agent.storage")

_LOGGED_IDS = 20


class RecordWriter(SpoolingWriter):
    # --- taking records -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the saver and the spooler (needs a running event loop); the saver first replays the spool
        left by an earlier process, in the background. Records submitted earlier wait for it."""
        if self._saver is None and not self._closed:
            self._start_tasks()

    def _start_tasks(self) -> None:
        loop = asyncio.get_running_loop()
        self._saver = loop.create_task(self._save_loop(), name="record-writer")
        self._spooler = loop.create_task(self._spool_loop(), name="record-spooler")
        for task in (self._saver, self._spooler):
            task.add_done_callback(_log_crash)

    def submit(self, record: CallRecord, prompt: Prompt | None = None) -> bool:
        """Queue a record to be saved. Never blocks while running, never raises; False only if it was lost."""
        try:
            item = QueuedRecord(record, prompt, self._next_seq(), spool_key(record.call_id))
            if self._closed:
                return self._spool_now(item)
            for queue in (self._pending, self._spill):
                waiting = queue.get(item.key)
                if waiting is not None:
                    item.prompt, item.why = prompt or waiting.prompt, waiting.why
                    queue[item.key] = item  # keeps its place in line
                    break
            else:
                if self._outage:
                    item.why = "outage"
                    self._spill[item.key] = item
                elif len(self._pending) >= self.max_pending:
                    self._spill[item.key] = item
                else:
                    self._pending[item.key] = item
            self.submitted += 1
            self._saver_wakeup.set()
            if self._spill:
                self._spooler_wakeup.set()
            self._changed()
            return True
        except Exception:  # the caller is a live call's teardown: nothing may escape
            log.exception("could not queue call record %s", getattr(record, "call_id", "?"))
            return False

    async def aclose(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - one deadline per phase
        """Stop taking records: save what is queued for at most `timeout` seconds, then spool the rest (for at
        most `spool_close_timeout_s`); True if nothing was lost. Records submitted afterwards are spooled at once."""
        self._closed = True
        limit = self.close_timeout_s if timeout is None else timeout
        if self._saver is None and self.pending:
            self._start_tasks()  # never started: save or spool what was queued before giving up on it
        self._saver_wakeup.set()
        self._spooler_wakeup.set()
        if self._saver is not None:
            done, _ = await asyncio.wait({self._saver}, timeout=limit)
            if not done:
                await cancel_and_wait(self._saver)
        self._divert_pending("shutdown")
        if self._spooler is not None:
            done, _ = await asyncio.wait({self._spooler}, timeout=self.spool_close_timeout_s)
            if not done:
                await cancel_and_wait(self._spooler)
        left = [*self._spill.values(), *self._spooling.values()]
        if left:
            self.lost_on_close += len(left)
            self.metrics.records_failed.labels("lost_on_close").inc(len(left))
            ids = [item.record.call_id for item in left]
            log.error(
                "%d call record(s) neither saved nor spooled before shutdown: %s%s",
                len(left),
                ", ".join(ids[:_LOGGED_IDS]),
                ", …" if len(ids) > _LOGGED_IDS else "",
            )
            self._spill.clear()
            self._spooling.clear()
        self._changed()
        return self.lost_on_close == 0

    # --- the saver ------------------------------------------------------------------------------------------------

    async def _save_loop(self) -> None:
        await self._scan_spool()
        while True:
            if self._pending and not self._outage:
                _, item = self._pending.popitem(last=False)
                await self._save_item(item)
                continue
            if self._outage and self._pending:
                self._divert_pending("outage")
            if self._closed:
                return
            if self._outage and time.monotonic() < self._retry_at:
                self._saver_wakeup.clear()
                await wait_event(self._saver_wakeup, self._retry_at - time.monotonic())
                continue
            entry = self._next_replay()
            if entry is not None:
                await self._replay(entry)
            elif self._outage and self._spill and self._spool_failing:
                # The spool cannot be written, so there is nothing on disk to probe the database with: use a
                # record straight from memory.
                _, item = self._spill.popitem(last=False)
                await self._save_item(item)
            else:
                self._saver_wakeup.clear()
                self._changed()
                await self._saver_wakeup.wait()

    async def _save_item(self, item: QueuedRecord) -> None:
        self._saving = item
        try:
            await self._save(item.record, item.prompt)
        except asyncio.CancelledError:
            self._requeue(item, self._pending)  # shutdown deadline: aclose spools it
            raise
        except Exception as exc:
            if is_transient(exc):
                self._database_down(exc, item.record.call_id)
                item.why = "timeout" if isinstance(exc, TimeoutError) else "database_error"
                self._requeue(item, self._spill)
                self._spooler_wakeup.set()
            else:
                await self._reject(item, exc)
        else:
            self.saved += 1
            self.metrics.records_saved.inc()
            self._database_up()
            await self._forget_files(item.key, item.seq)
        finally:
            self._saving = None
            self._changed()


def _log_crash(task: asyncio.Task[None]) -> None:
    """A writer task must never end by itself while running: say so loudly if a bug ends it."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped: call records are no longer saved", task.get_name(), exc_info=task.exception())
