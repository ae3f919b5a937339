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
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import exc as sa_exc

from agent.observability.metrics import Metrics
from agent.prompts.loader import Prompt
from agent.records.record import CallRecord
from agent.storage.spool import Spool, SpoolEntry, SpoolError, encode, spool_key
from agent.waiting import cancel_and_wait, wait_event

log = logging.getLogger("agent.storage")

# SQLSTATE classes worth a retry: connection exceptions, transaction rollback (serialization failure,
# deadlock), insufficient resources, operator intervention (admin shutdown, server restarting).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")
_SPOOL_BATCH = 64  # records per worker-thread trip to the spool (one folder fsync for all of them)
_LOGGED_IDS = 20


class SavesRecords(Protocol):
    async def save(self, record: CallRecord, prompt: Prompt | None = None) -> None: ...


def is_transient(error: BaseException) -> bool:
    """Errors that may go away by themselves (the database restarting, a dropped connection, a lock)."""
    if isinstance(error, OSError | TimeoutError | sa_exc.TimeoutError):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated or isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
            return True
        if isinstance(error.orig, OSError | TimeoutError):
            return True
        code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
        return isinstance(code, str) and code[:2] in _TRANSIENT_SQLSTATE_CLASSES
    return False


def describe(error: BaseException) -> str:
    """An error for the log: its type and the driver's message, never the SQL or its parameters."""
    orig = error.orig if isinstance(error, sa_exc.DBAPIError) else None
    inner = orig if isinstance(orig, BaseException) else error
    text = str(inner).strip().splitlines()[0][:200] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


@dataclass
class _Item:
    record: CallRecord
    prompt: Prompt | None
    seq: int
    key: str
    why: str = "queue_full"  # the reason it is counted under if it ends up in the spool


class RecordWriter:
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
        self._pending: OrderedDict[str, _Item] = OrderedDict()  # for the database, by spool key
        self._spill: OrderedDict[str, _Item] = OrderedDict()  # for the spool
        self._spooling: dict[str, _Item] = {}  # being written to the spool now
        self._saving: _Item | None = None
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
            item = _Item(record, prompt, self._next_seq(), spool_key(record.call_id))
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

    def _spool_now(self, item: _Item) -> bool:
        """After shutdown there is no task left to do it: write to the spool here (a blocking write, but only
        a late webhook refining a call can get here)."""
        item.why = "closed"
        try:
            entry = self.spool.put(encode(item.record, item.prompt, item.seq))
        except Exception as exc:
            self.lost_on_close += 1
            self.metrics.records_failed.labels("lost_on_close").inc()
            log.error("could not spool call record %s after shutdown: %s", item.record.call_id, describe(exc))
            return False
        self._spooled(item, entry)
        return True

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

    async def _scan_spool(self) -> None:
        try:
            entries = await asyncio.to_thread(self.spool.scan)
        except OSError as exc:
            log.error("could not read the spool %s: %s", self.spool.directory, describe(exc))
            entries = []
        for entry in entries:
            self._add_file(entry)
        if entries:
            log.warning("replaying %d spooled call record(s) from %s", len(entries), self.spool.directory)
        self._changed()

    async def _save_item(self, item: _Item) -> None:
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

    def _divert_pending(self, why: str) -> None:
        """The database is out, or the writer closing: everything queued for it goes to the spool instead."""
        for item in self._pending.values():
            item.why = why
        self._spill.update(self._pending)  # a call is never queued in both
        self._pending.clear()
        self._spooler_wakeup.set()
        self._changed()

    def _requeue(self, item: _Item, queue: OrderedDict[str, _Item]) -> None:
        """Put a record that was in flight back at the front of `queue`, unless the call was submitted again
        meanwhile: the version in line is newer and has everything."""
        if item.key not in self._pending and item.key not in self._spill:
            queue[item.key] = item
            queue.move_to_end(item.key, last=False)

    async def _reject(self, item: _Item, exc: BaseException) -> None:
        self._fail("rejected")
        log.error("the database refused call record %s: %s", item.record.call_id, describe(exc))
        payload = encode(item.record, item.prompt, item.seq)
        try:
            path = await asyncio.to_thread(self.spool.put_failed, payload, describe(exc))
        except OSError as write_error:
            log.error("could not keep refused call record %s: %s", item.record.call_id, describe(write_error))
        else:
            log.error("refused call record %s kept in %s", item.record.call_id, path)

    # --- replaying the spool ----------------------------------------------------------------------------------

    def _add_file(self, entry: SpoolEntry) -> None:
        files = self._files.setdefault(entry.key, {})
        if entry.seq in files:
            return  # written by this process while the start-up scan ran
        files[entry.seq] = entry
        heapq.heappush(self._replay_order, (entry.seq, entry.key))
        self._file_count += 1
        self.metrics.records_spool_files.set(self._file_count)

    def _drop_file(self, entry: SpoolEntry) -> None:
        files = self._files.get(entry.key, {})
        if files.pop(entry.seq, None) is not None:
            self._file_count -= 1
        if not files:
            self._files.pop(entry.key, None)
        self.metrics.records_spool_files.set(self._file_count)

    def _next_replay(self) -> SpoolEntry | None:
        while self._replay_order:
            seq, key = heapq.heappop(self._replay_order)
            entry = self._files.get(key, {}).get(seq)
            if entry is not None:
                return entry
        return None

    async def _replay(self, entry: SpoolEntry) -> None:
        files = self._files[entry.key]
        if entry.seq < max(files):
            await self._remove_files([entry])  # a newer version of the call is in the spool
            return
        if entry.key in self._pending or entry.key in self._spill or entry.key in self._spooling:
            # A newer version is in memory: once saved it removes this file, once spooled it supersedes it.
            return
        try:
            record, prompt = await asyncio.to_thread(self.spool.load, entry)
        except FileNotFoundError:
            self._drop_file(entry)  # another process replayed it
            return
        except (OSError, SpoolError) as exc:
            self._fail("unreadable")
            log.error("unreadable spool file %s (%s): moved to %s", entry.path.name, exc, self.spool.failed_dir)
            await asyncio.to_thread(self.spool.quarantine, entry)
            self._drop_file(entry)
            return
        try:
            await self._save(record, prompt)
        except Exception as exc:
            if is_transient(exc):
                self._database_down(exc, record.call_id)
                heapq.heappush(self._replay_order, (entry.seq, entry.key))
            else:
                self._fail("rejected")
                log.error("the database refused spooled call record %s: %s", record.call_id, describe(exc))
                await asyncio.to_thread(self.spool.quarantine, entry)
                self._drop_file(entry)
        else:
            self.replayed += 1
            self.metrics.records_replayed.inc()
            self._database_up()
            await self._forget_files(entry.key, entry.seq)
        finally:
            self._changed()

    async def _forget_files(self, key: str, up_to: int) -> None:
        """A version of the call is in the database: its spool files up to that version are obsolete."""
        files = self._files.get(key)
        if files:
            await self._remove_files([entry for seq, entry in files.items() if seq <= up_to])

    async def _remove_files(self, entries: list[SpoolEntry]) -> None:
        if not entries:
            return
        try:
            await asyncio.to_thread(_remove_all, self.spool, entries)
        except OSError as exc:
            log.warning("could not remove replayed spool files: %s", describe(exc))  # replayed again: harmless
        for entry in entries:
            self._drop_file(entry)
        self._changed()

    # --- the spooler ----------------------------------------------------------------------------------------------

    async def _spool_loop(self) -> None:
        failures = 0
        while True:
            if not self._spill:
                if self._closed and (self._saver is None or self._saver.done()):
                    return
                self._spooler_wakeup.clear()
                await self._spooler_wakeup.wait()
                continue
            batch: list[tuple[_Item, dict[str, Any]]] = []
            while self._spill and len(batch) < _SPOOL_BATCH:
                key, item = self._spill.popitem(last=False)
                self._spooling[key] = item
                try:
                    batch.append((item, encode(item.record, item.prompt, item.seq)))  # a snapshot, on the loop
                except Exception:
                    del self._spooling[key]
                    self._fail("unencodable")
                    log.exception("call record %s cannot be written to the spool", item.record.call_id)
                await asyncio.sleep(0)  # a big batch of big records must not hold the loop
            try:
                results = await asyncio.to_thread(self.spool.put_many, [payload for _, payload in batch])
            except asyncio.CancelledError:
                self._unspool([item for item, _ in batch])  # shutdown deadline: counted as lost
                raise
            except OSError as exc:  # the folder itself cannot be made
                results = [exc] * len(batch)
            retry = []
            for (item, _), result in zip(batch, results, strict=True):
                if isinstance(result, OSError):
                    retry.append(item)
                    error = result
                else:
                    self._spooling.pop(item.key, None)
                    self._spooled(item, result)
            self._saver_wakeup.set()
            self._changed()
            self._spool_failing = bool(retry)
            if not retry:
                failures = 0
                continue
            failures += 1
            self.metrics.records_failed.labels("spool_write").inc(len(retry))
            if failures & (failures - 1) == 0:  # 1st, 2nd, 4th…: a broken disk must not flood the log
                log.error("could not write %d call record(s) to the spool: %s", len(retry), describe(error))
            self._unspool(retry)
            self._spooler_wakeup.clear()
            await wait_event(self._spooler_wakeup, self.retry_delays[min(failures - 1, len(self.retry_delays) - 1)])

    def _unspool(self, items: list[_Item]) -> None:
        """Back to the front of the spool's queue, in their order."""
        for item in reversed(items):
            self._spooling.pop(item.key, None)
            self._requeue(item, self._spill)
        self._changed()

    def _spooled(self, item: _Item, entry: SpoolEntry) -> None:
        self.spooled += 1
        self.metrics.records_spooled.labels(item.why).inc()
        self._add_file(entry)


def _remove_all(spool: Spool, entries: list[SpoolEntry]) -> None:
    for entry in entries:
        spool.remove(entry)


def _log_crash(task: asyncio.Task[None]) -> None:
    """A writer task must never end by itself while running: say so loudly if a bug ends it."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped: call records are no longer saved", task.get_name(), exc_info=task.exception())


def _forget_abandoned(tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], Any]:
    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the save was given up on and its record spooled

    return done
