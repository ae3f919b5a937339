"""Call recordings: a stereo WAV per call, caller on the left, the bot on the right as the caller heard it.

The recorder is fed from the call's audio path as it happens: caller frames as they arrive, and bot chunks with
the (monotonic) time the playout scheduled them to start playing. Bot audio is sent ahead of time (the playout
keeps ~200 ms queued at the carrier), so when the caller barges in, `cut(at)` removes whatever was scheduled
from that moment on: it was cleared from the carrier's queue and never heard. To make that possible, bot chunks
stay in a short in-memory window (`commit_after_s`, well beyond the playout lead) before they are committed.

Committed audio goes to a per-channel buffer that moves from memory to an anonymous temporary file once it
grows past a limit (32 KB a call by default: each channel's first 2 s of μ-law, 1 s of 8 kHz PCM), so a call
costs a small, bounded amount of memory (the file's 32 KB write buffer a channel from then on: a write system call
every 4 s of μ-law, not every second).
A μ-law call is recorded as the μ-law bytes that crossed the wire (`mulaw=True`): feeding is a bytes append, with
no decoding on the event loop; `write` decodes and interleaves the channels into a 16-bit WAV in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import logging
import os
import re
import secrets
import tempfile
import time
import wave
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import soxr

from agent.audio.codecs import MULAW_SILENCE, Int16Array, mulaw_to_pcm16

log = logging.getLogger("agent.recordings")

Clock = Callable[[], float]
_SUFFIXES = (".wav", ".wav.part")
_BLOCK = 1 << 16  # samples per channel per write/pad block
_background_writes: set[asyncio.Task[Path | None]] = set()
# What a call's recording may hold in memory before it moves to a temporary file: calls last minutes, so most
# spill anyway; a low limit keeps each concurrent call's memory small (was 256 KB: ~0.25 MB a call mid-call).
DEFAULT_MEMORY_BYTES = 32 << 10
# A spilled channel's write buffer: each flush is a system call on the event loop, ~1 a second a channel with the
# default 8 KB; at 32 KB, one every 4 s of μ-law (2 s of 8 kHz PCM).
SPILL_BUFFER_BYTES = 32 << 10


class _Channel:
    """A growing mono stream at the recording's rate: int16 samples, or μ-law bytes (`mulaw`); memory first, a
    temporary file past `spill_bytes`."""

    def __init__(self, spill_bytes: int, *, mulaw: bool = False) -> None:
        self._spill_bytes = spill_bytes
        self._file: IO[bytes] = io.BytesIO()
        self.spilled = False
        self.mulaw = mulaw
        self._width = 1 if mulaw else 2
        self.length = 0  # samples

    def append(self, samples: Int16Array | bytes) -> None:
        if not len(samples):
            return
        self.append_bytes(samples if isinstance(samples, bytes) else samples.astype("<i2", copy=False).tobytes())

    def append_bytes(self, data: bytes) -> None:
        """Whole samples as stored (μ-law bytes, or little-endian int16): a caller frame's path, 50 times a second."""
        if not self.spilled and self._file.tell() + len(data) > self._spill_bytes:
            spill = tempfile.TemporaryFile(  # noqa: SIM115 - lives as long as the channel
                prefix="call-recording-", buffering=SPILL_BUFFER_BYTES
            )
            assert isinstance(self._file, io.BytesIO)
            spill.write(self._file.getbuffer())
            self._file, self.spilled = spill, True
        self._file.write(data)
        self.length += len(data) // self._width

    def pad_to(self, index: int) -> None:
        while self.length < index:
            count = min(index - self.length, _BLOCK)
            self.append(bytes([MULAW_SILENCE]) * count if self.mulaw else np.zeros(count, dtype=np.int16))

    def read(self, start: int, count: int) -> Int16Array:
        """Samples [start, start+count) as int16, zero-filled past the end."""
        out = np.zeros(count, dtype=np.int16)
        available = max(0, min(count, self.length - start))
        if available:
            self._file.flush()
            self._file.seek(start * self._width)
            data = self._file.read(available * self._width)
            out[:available] = mulaw_to_pcm16(data) if self.mulaw else np.frombuffer(data, dtype="<i2")
            self._file.seek(0, os.SEEK_END)
        return out

    def close(self) -> None:
        self._file.close()


class _Resampler:
    """One soxr stream per channel, rebuilt when the input rate changes or a run of audio breaks."""

    def __init__(self, out_rate: int) -> None:
        self.out_rate = out_rate
        self._rate: int | None = None
        self._stream: Any = None

    def __call__(self, samples: Int16Array, rate: int, *, fresh: bool = False) -> Int16Array:
        if rate == self.out_rate:
            return samples
        if fresh or self._stream is None or rate != self._rate:
            self._rate = rate
            self._stream = soxr.ResampleStream(rate, self.out_rate, 1, dtype="int16", quality="HQ")
        out: Int16Array = self._stream.resample_chunk(samples)
        return out

    def flush(self) -> Int16Array:
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        tail: Int16Array = self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        self._stream = None
        return tail

    def reset(self) -> None:
        self._stream = None


@dataclass
class _BotChunk:
    start: int  # sample index on the recording's timeline
    samples: Int16Array | bytes  # bytes: μ-law, one a sample

    @property
    def end(self) -> int:
        return self.start + len(self.samples)


class CallRecorder:
    """Builds one call's stereo recording from the live audio path.

    Times are `clock()` seconds (monotonic by default, the playout's clock); sample 0 of the recording is
    `origin` (the recorder's creation unless given).
    """

    def __init__(
        self,
        rate: int = 8000,
        *,
        origin: float | None = None,
        clock: Clock = time.monotonic,
        max_memory_bytes: int = DEFAULT_MEMORY_BYTES,
        commit_after_s: float = 2.0,
        caller_jitter_s: float = 0.25,
        mulaw: bool = False,
    ) -> None:
        self.rate = rate
        self.clock = clock
        self.origin = clock() if origin is None else origin
        self.mulaw = mulaw  # fed with `caller_mulaw` / `bot_mulaw`: μ-law bytes at `rate`, kept as they are
        self._caller = _Channel(max_memory_bytes // 2, mulaw=mulaw)
        self._bot = _Channel(max_memory_bytes // 2, mulaw=mulaw)
        self._caller_resampler = _Resampler(rate)
        self._bot_resampler = _Resampler(rate)
        self._pending: deque[_BotChunk] = deque()
        self._caller_started = False
        self._bot_end: int | None = None  # where the last bot chunk ended, to keep runs of audio contiguous
        self._commit_after = round(commit_after_s * rate)
        self._caller_jitter = round(caller_jitter_s * rate)
        self._contiguous = max(1, round(0.002 * rate))  # scheduling rounding, not a gap
        self._closed = False
        self.late_cuts = 0

    @property
    def spilled(self) -> bool:
        """True once the recording outgrew memory and moved to a temporary file."""
        return self._caller.spilled or self._bot.spilled

    @property
    def duration_s(self) -> float:
        end = max(self._caller.length, self._bot.length, self._pending[-1].end if self._pending else 0)
        return end / self.rate

    def _index(self, t: float) -> int:
        return max(0, round((t - self.origin) * self.rate))

    # --- feeding (on the event loop, from the call's audio path) --------------------------------------------

    def caller(self, samples: Int16Array, rate: int, at: float | None = None) -> None:
        """A caller frame that arrived at `at` (now by default). Frames are laid end to end; only a real gap
        (the carrier sent nothing for longer than `caller_jitter_s`) becomes silence."""
        if self._closed or not len(samples):
            return
        at = self.clock() if at is None else at
        start = self._index(at - len(samples) / rate)
        if not self._caller_started or start > self._caller.length + self._caller_jitter:
            self._caller_started = True
            self._caller.append(self._caller_resampler.flush())
            self._caller.pad_to(start)
        self._caller.append(self._caller_resampler(samples, rate))

    def caller_mulaw(self, data: bytes, at: float | None = None) -> None:
        """A μ-law caller frame (a `mulaw` recorder at the carrier's rate), as `caller`, kept as μ-law."""
        if self._closed or not data:
            return
        at = self.clock() if at is None else at
        start = self._index(at - len(data) / self.rate)
        channel = self._caller
        if not self._caller_started or start > channel.length + self._caller_jitter:
            self._caller_started = True
            channel.pad_to(start)
        channel.append_bytes(data)

    def bot(self, samples: Int16Array, rate: int, start: float) -> None:
        """A bot chunk the playout scheduled to start playing at `start`."""
        if self._closed or not len(samples):
            return
        index, contiguous = self._bot_start(start)
        self._queue_bot(index, self._bot_resampler(samples, rate, fresh=not contiguous))

    def bot_mulaw(self, data: bytes, start: float) -> None:
        """A μ-law bot chunk (a `mulaw` recorder at the carrier's rate), as `bot`, kept as μ-law."""
        if self._closed or not data:
            return
        index, _ = self._bot_start(start)
        self._queue_bot(index, data)

    def _bot_start(self, start: float) -> tuple[int, bool]:
        index = self._index(start)
        contiguous = self._bot_end is not None and abs(index - self._bot_end) <= self._contiguous
        if contiguous:
            assert self._bot_end is not None
            index = self._bot_end
        return index, contiguous

    def _queue_bot(self, index: int, out: Int16Array | bytes) -> None:
        self._pending.append(_BotChunk(index, out))
        self._bot_end = index + len(out)
        self._commit(self._index(self.clock()) - self._commit_after)

    def cut(self, at: float | None = None) -> None:
        """The caller stopped hearing the bot at `at` (barge-in, clearAudio): drop bot audio from then on."""
        index = self._index(self.clock() if at is None else at)
        if index < self._bot.length:
            self.late_cuts += 1  # already committed: cannot happen while commit_after_s exceeds the playout lead
        kept: deque[_BotChunk] = deque()
        for chunk in self._pending:
            if chunk.end <= index:
                kept.append(chunk)
            elif chunk.start < index:
                kept.append(_BotChunk(chunk.start, chunk.samples[: index - chunk.start]))
        self._pending = kept
        self._bot_end = None
        self._bot_resampler.reset()

    def shift(self, after: float, delay_s: float) -> None:
        """The carrier is playing late (a checkpoint came back `delay_s` late): move bot audio scheduled from
        `after` on by the same amount, as the playout does with its own schedule."""
        index, offset = self._index(after), round(delay_s * self.rate)
        for chunk in self._pending:
            if chunk.start >= index:
                chunk.start += offset
        if self._bot_end is not None and self._bot_end >= index:
            self._bot_end += offset

    def _commit(self, horizon: int) -> None:
        while self._pending and self._pending[0].end <= horizon:
            self._place(self._pending.popleft())

    def _place(self, chunk: _BotChunk) -> None:
        samples = chunk.samples
        if chunk.start < self._bot.length:  # overlaps what is committed: keep the earlier audio
            samples = samples[self._bot.length - chunk.start :]
        self._bot.pad_to(chunk.start)
        self._bot.append(samples)

    # --- output --------------------------------------------------------------------------------------------

    def finish(self, end_at: float | None = None) -> None:
        """Stop recording. Bot audio scheduled after `end_at` (the call's end) was never heard."""
        if self._closed:
            return
        if end_at is not None:
            self.cut(end_at)
        if not self.mulaw:
            self._caller.append(self._caller_resampler.flush())
        self._commit(1 << 62)
        self._closed = True

    async def write(self, path: Path, *, end_at: float | None = None) -> Path:
        """Write the stereo WAV (atomically: readers never see half a file) in a worker thread."""
        self.finish(end_at)
        await asyncio.to_thread(self._write, Path(path))
        return Path(path)

    def write_in_background(self, path: Path, *, end_at: float | None = None) -> asyncio.Task[Path | None]:
        """For a call's teardown: stop recording now, write the file without waiting for it; a failure is
        logged, never raised (the task resolves to None)."""
        self.finish(end_at)

        async def run() -> Path | None:
            try:
                return await self.write(path)
            except Exception:
                log.exception("could not write call recording %s", path)
                return None

        task = asyncio.get_running_loop().create_task(run(), name=f"recording-{Path(path).stem}")
        _background_writes.add(task)  # the loop only keeps weak references to tasks
        task.add_done_callback(_background_writes.discard)
        return task

    def _write(self, path: Path) -> None:
        """Write a private partial file, then publish it under `path` only if nothing is there yet: a second
        stream of the same call (or a resumed one) can never replace or share another stream's recording."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".wav.part", dir=path.parent)
        partial = Path(name)
        total = max(self._caller.length, self._bot.length)
        try:
            with os.fdopen(fd, "wb") as raw, wave.open(raw, "wb") as out:
                out.setnchannels(2)
                out.setsampwidth(2)
                out.setframerate(self.rate)
                for start in range(0, total, _BLOCK):
                    count = min(_BLOCK, total - start)
                    frames = np.empty((count, 2), dtype="<i2")
                    frames[:, 0] = self._caller.read(start, count)
                    frames[:, 1] = self._bot.read(start, count)
                    out.writeframes(frames.tobytes())
            _publish(partial, path)
        finally:
            partial.unlink(missing_ok=True)
            self.discard()

    def discard(self) -> None:
        """Release the buffers (and any temporary file) without writing."""
        self._closed = True
        self._pending.clear()
        self._caller.close()
        self._bot.close()


# --- files on disk ---------------------------------------------------------------------------------------------


def recording_path(directory: Path, call_id: str, started_at: float) -> Path:
    """`<dir>/<UTC date>/<call id>-<random>.wav`: one folder per day keeps listings short and sweeping cheap;
    the random part gives every stream of a call (a resumed one, a second one with the same call id) a file
    of its own."""
    day = dt.datetime.fromtimestamp(started_at, dt.UTC).strftime("%Y-%m-%d")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", call_id)[:128].lstrip(".") or "call"
    return directory / day / f"{safe}-{secrets.token_hex(6)}.wav"


def _publish(partial: Path, path: Path) -> None:
    """Give the finished file its name atomically, refusing (FileExistsError) when the name is taken."""
    try:
        os.link(partial, path)  # fails if `path` exists; never replaces it
    except FileExistsError:
        raise
    except OSError:
        # A filesystem without hard links: claim the name exclusively, then move the data over the claim.
        with open(path, "xb"):
            pass
        os.replace(partial, path)


def sweep_recordings(directory: Path, retention_days: float, *, now: float | None = None) -> int:
    """Delete recordings (and abandoned partial writes) older than the retention period; returns how many.

    Only `.wav`/`.wav.part` files are touched, symlinks are never followed, and day folders left empty go.
    """
    if not directory.is_dir():
        return 0
    cutoff = (time.time() if now is None else now) - retention_days * 86400
    removed = 0
    for root, dirs, files in os.walk(directory, topdown=False, followlinks=False):
        for name in files:
            if not name.endswith(_SUFFIXES):
                continue
            path = Path(root) / name
            try:
                info = path.lstat()
                if path.is_symlink() or info.st_mtime >= cutoff:
                    continue
                path.unlink()
                removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("could not delete old recording %s: %s", path, exc)
        for name in dirs:
            sub = Path(root) / name
            if not sub.is_symlink():
                with contextlib.suppress(OSError):
                    sub.rmdir()  # only succeeds when empty
    if removed:
        log.info("deleted %d recording(s) older than %g days from %s", removed, retention_days, directory)
    return removed


def run_periodically(interval_s: float, job: Callable[[], Awaitable[object]], *, name: str) -> asyncio.Task[None]:
    """Run `job` now and then every `interval_s` until the task is cancelled; a failing run is logged, not fatal."""

    async def loop() -> None:
        while True:
            try:
                await job()
            except Exception:
                log.exception("periodic job %s failed", name)
            await asyncio.sleep(interval_s)

    return asyncio.get_running_loop().create_task(loop(), name=name)
