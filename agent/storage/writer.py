"""Saves call records in the background so the audio path never waits for the database.

`submit` is a plain function: it puts the record in a bounded in-memory queue and returns. When the queue is
full the record is dropped, logged and counted rather than making a live call wait; a record already waiting is
replaced in place (a late hangup webhook refining a call costs no extra slot). One background task saves
records oldest first, retrying transient database errors with backoff; `aclose` gives it a deadline to finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import exc as sa_exc

from agent.calls.record import CallRecord
from agent.prompts.loader import Prompt
from agent.waiting import cancel_and_wait

log = logging.getLogger("agent.storage")

# SQLSTATE classes worth a retry: connection exceptions, transaction rollback (serialization failure,
# deadlock), insufficient resources, operator intervention (admin shutdown, server restarting).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")


class SavesRecords(Protocol):
    async def save(self, record: CallRecord, prompt: Prompt | None = None) -> None: ...


def is_transient(error: BaseException) -> bool:
    """Errors that may go away by themselves (the database restarting, a dropped connection, a lock)."""
    if isinstance(error, OSError | TimeoutError | sa_exc.TimeoutError):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated or isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
            return True
        code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
        return isinstance(code, str) and code[:2] in _TRANSIENT_SQLSTATE_CLASSES
    return False


class RecordWriter:
    def __init__(
        self,
        store: SavesRecords,
        *,
        max_pending: int = 1000,
        retry_delays: Sequence[float] = (0.5, 1.0, 2.0, 5.0, 10.0),
        close_timeout_s: float = 5.0,
    ) -> None:
        self.store = store
        self.max_pending = max_pending
        self.retry_delays = tuple(retry_delays)
        self.close_timeout_s = close_timeout_s
        self._pending: OrderedDict[str, tuple[CallRecord, Prompt | None]] = OrderedDict()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.submitted = 0
        self.dropped = 0
        self.saved = 0
        self.failed = 0  # gave up: permanent error, or transient errors past the last retry
        self.retries = 0
        self.lost_on_close = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        """Start the background saver (needs a running event loop); records submitted earlier wait for it."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="record-writer")

    def submit(self, record: CallRecord, prompt: Prompt | None = None) -> bool:
        """Queue a record to be saved. Never blocks, never raises; False when it had to be dropped."""
        try:
            if self._closed:
                self._drop(record, "writer closed")
                return False
            waiting = self._pending.get(record.call_id)
            if waiting is not None:
                self._pending[record.call_id] = (record, prompt or waiting[1])
            elif len(self._pending) >= self.max_pending:
                self._drop(record, "queue full")
                return False
            else:
                self._pending[record.call_id] = (record, prompt)
            self.submitted += 1
            self._idle.clear()
            self._wakeup.set()
            return True
        except Exception:  # the caller is a live call's teardown: nothing may escape
            log.exception("could not queue call record %s", getattr(record, "call_id", "?"))
            return False

    async def flush(self) -> None:
        """Wait until everything submitted so far has been saved (or given up on)."""
        await self._idle.wait()

    async def aclose(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - one deadline for the drain
        """Stop taking records and save what is queued, for at most `timeout` seconds; True if nothing was lost."""
        self._closed = True
        self._wakeup.set()
        if self._task is None and self._pending:
            # Never started: save what was queued before giving up on it.
            self._task = asyncio.get_running_loop().create_task(self._run(), name="record-writer")
        task = self._task
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=self.close_timeout_s if timeout is None else timeout)
            if not done:
                await cancel_and_wait(task)
        self.lost_on_close += len(self._pending)
        if self._pending:
            log.error("%d call record(s) not saved before shutdown: %s", len(self._pending), ", ".join(self._pending))
            self._pending.clear()
        self._idle.set()
        return self.lost_on_close == 0

    def _drop(self, record: CallRecord, why: str) -> None:
        self.dropped += 1
        n = self.dropped
        # 1st, 2nd, 4th, 8th…: a flood of drops must not become a flood of log lines.
        if n & (n - 1) == 0:
            log.warning("dropped call record %s (%s); %d dropped so far", record.call_id, why, n)

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            call_id, (record, prompt) = self._pending.popitem(last=False)
            try:
                await self._save(record, prompt)
            except asyncio.CancelledError:
                # Shutdown deadline: keep it counted as unsaved.
                self._pending[call_id] = (record, prompt)
                self._pending.move_to_end(call_id, last=False)
                raise

    async def _save(self, record: CallRecord, prompt: Prompt | None) -> None:
        for attempt, delay in enumerate((*self.retry_delays, None)):
            try:
                await self.store.save(record, prompt)
            except Exception as exc:
                if delay is None or not is_transient(exc):
                    self.failed += 1
                    log.error(
                        "could not save call record %s after %d attempt(s): %r",
                        record.call_id,
                        attempt + 1,
                        exc,
                        exc_info=not is_transient(exc),
                    )
                    return
                self.retries += 1
                log.warning("saving call record %s failed (%r); retrying in %.1fs", record.call_id, exc, delay)
                await asyncio.sleep(delay)
            else:
                self.saved += 1
                return
