"""The record writer's local spool: writing records the database cannot take now, and replaying them later.

The spooler task writes batches in worker threads, so a slow disk never blocks the loop or the saver. The saver
replays the spool oldest first, one file at a time (during an outage each replay is the probe of the database);
the files on disk are tracked here by call and version, so a saved or superseded version's files are removed.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from typing import Any

from agent.storage.db_errors import describe, is_transient
from agent.storage.spool import Spool, SpoolEntry, SpoolError, encode
from agent.storage.writer_core import QueuedRecord, WriterCore
from agent.waiting import wait_event

log = logging.getLogger("agent.storage")

_SPOOL_BATCH = 64  # records per worker-thread trip to the spool (one folder fsync for all of them)


class SpoolingWriter(WriterCore):
    def _spool_now(self, item: QueuedRecord) -> bool:
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

    async def _reject(self, item: QueuedRecord, exc: BaseException) -> None:
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
            batch: list[tuple[QueuedRecord, dict[str, Any]]] = []
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

    def _unspool(self, items: list[QueuedRecord]) -> None:
        """Back to the front of the spool's queue, in their order."""
        for item in reversed(items):
            self._spooling.pop(item.key, None)
            self._requeue(item, self._spill)
        self._changed()

    def _spooled(self, item: QueuedRecord, entry: SpoolEntry) -> None:
        self.spooled += 1
        self.metrics.records_spooled.labels(item.why).inc()
        self._add_file(entry)


def _remove_all(spool: Spool, entries: list[SpoolEntry]) -> None:
    for entry in entries:
        spool.remove(entry)
