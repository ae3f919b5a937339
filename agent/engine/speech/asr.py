"""Speech recognition with PocketSphinx 5 and its bundled US English model (no download, no network).

PocketSphinx holds the GIL for the whole decode (measured: a 2.9 s decode stalled the event loop for 2.3 s), and
recognising costs about 0.4 CPU-seconds per second of audio, so decoding runs in worker processes: a
:class:`Recognizer` keeps a small pool of them, started when needed, each with one decoder (~1 s to start,
~130 MB) that does one recognition at a time. A worker is a plain ``python -m`` child spoken to over pipes, so it
never re-imports the caller's ``__main__`` (as multiprocessing's spawn would) and exits by itself when its parent
goes away (its stdin closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
import numpy.typing as npt
import soxr

from agent.audio.codecs import Int16Array

__all__ = ["ASR_RATE", "Recognizer", "RecognizerError", "recognize", "shared_recognizer"]

ASR_RATE: Final = 16000
"""The acoustic model's rate; input at other rates is resampled to it."""

_PAD_S: Final = 0.3
_NOISE_FLOOR: Final = 30.0
# PocketSphinx's noise tracking and batch cepstral mean normalisation misbehave on digital silence and on empty
# frequency bands (8 kHz telephone audio has nothing above 4 kHz): a faint fixed noise floor (-60 dBFS) lifted word
# recall on eSpeak sentences from about 0.25 to 0.7 at 16 kHz. Fixed, so the same audio gives the same transcript.
_NOISE_SEED: Final = 0
_MIN_AUDIO_S: Final = 0.1
# Narrower search than the defaults: about a third less CPU for much the same word recall (measured on 39 eSpeak
# utterances through 8 kHz μ-law: recall 0.46 -> 0.47 with the en-us voice, 0.55 -> 0.49 with en-us+klatt3).
_FAST: Final[dict[str, Any]] = {"maxhmmpf": 3000, "topn": 2}
_HEADER: Final = struct.Struct("<II")  # sample rate, byte count; then int16 little-endian samples
_READY: Final = b"ready\n"


class RecognizerError(RuntimeError):
    """A recognition worker could not start or died."""


# --- the worker process ----------------------------------------------------------------------------------------


def _prepare(samples: Int16Array, rate: int, noise: npt.NDArray[np.float64]) -> bytes:
    """Resample to 16 kHz, pad with silence (batch CMN wants some around the speech) and add the noise floor."""
    audio = samples.astype(np.float32)
    if rate != ASR_RATE:
        audio = soxr.resample(audio, rate, ASR_RATE)
    pad = np.zeros(round(_PAD_S * ASR_RATE), dtype=np.float32)
    padded = np.concatenate([pad, audio, pad])
    noisy = padded + np.resize(noise, len(padded))
    return bytes(np.clip(np.rint(noisy), -32768, 32767).astype("<i2").tobytes())


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def _serve(options: dict[str, Any]) -> None:
    """Worker main loop: one request in (header + samples), one line out, until stdin closes."""
    from pocketsphinx import Decoder  # only workers load the model

    decoder = Decoder(**options)
    noise = np.random.default_rng(_NOISE_SEED).normal(0.0, _NOISE_FLOOR, ASR_RATE * 10)
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    replies.write(_READY)
    replies.flush()
    while (header := _read_exactly(requests, _HEADER.size)) is not None:
        rate, size = _HEADER.unpack(header)
        payload = _read_exactly(requests, size)
        if payload is None:
            break
        decoder.reinit_feat()  # forget the last utterance's CMN, so that the same audio gives the same words
        decoder.start_utt()
        decoder.process_raw(_prepare(np.frombuffer(payload, dtype="<i2").astype(np.int16), rate, noise), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        text = " ".join(str(hyp.hypstr).split()) if hyp is not None else ""
        replies.write(text.encode() + b"\n")
        replies.flush()


# --- the caller's side ---------------------------------------------------------------------------------------


class _Worker:
    """One decoder in a child process."""

    def __init__(self, options: dict[str, Any]) -> None:
        # The package's own root first on the path, in case the caller found it through its working directory.
        root = str(Path(__file__).resolve().parents[3])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", __name__, json.dumps(options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin, self.proc.stdout
        if self._out.readline() != _READY:
            self.close()
            raise RecognizerError(f"the speech recognition worker failed to start (exit code {self.proc.poll()})")

    def recognize(self, samples: Int16Array, rate: int) -> str:
        data = samples.astype("<i2").tobytes()
        try:
            self._in.write(_HEADER.pack(rate, len(data)) + data)
            self._in.flush()
            line = self._out.readline()
        except OSError as exc:
            raise RecognizerError(f"the speech recognition worker died: {exc}") from None
        if not line.endswith(b"\n"):
            raise RecognizerError(f"the speech recognition worker died (exit code {self.proc.poll()})")
        return line.decode("utf-8", "replace").strip()

    def close(self) -> None:
        """Closing stdin ends the worker's loop; kill it if it does not exit promptly."""
        with contextlib.suppress(OSError):  # a dead worker's pipe may be broken already
            self._in.close()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


class Recognizer:
    """Thread-safe recognition over at most ``workers`` worker processes, started one at a time as needed.

    ``decoder_options`` are PocketSphinx config keys (e.g. ``beam=1e-40``), applied to every decoder.
    """

    def __init__(self, *, workers: int | None = None, **decoder_options: Any) -> None:
        self.workers = workers or min(4, os.cpu_count() or 1)
        self._options: dict[str, Any] = {"samprate": ASR_RATE, "loglevel": "ERROR", **_FAST, **decoder_options}
        self._idle: list[_Worker] = []
        self._started = 0
        self._starting = False
        self._closed = False
        self._cond = threading.Condition()

    def warm(self) -> None:
        """Start one worker now (about a second), so that the first caller turn does not wait for it."""
        self._release(self._acquire())

    def warm_in_background(self) -> None:
        """``warm`` in a daemon thread, unless a worker exists already."""
        with self._cond:
            if self._started:
                return
        threading.Thread(target=self.warm, name="asr-warm-up", daemon=True).start()

    def recognize(self, samples: Int16Array, rate: int) -> str:
        """Lower-case words heard in mono int16 ``samples`` at ``rate`` Hz; "" for silence. Blocks the thread."""
        if len(samples) < _MIN_AUDIO_S * rate:
            return ""
        worker = self._acquire()
        try:
            text = worker.recognize(samples, rate)
        except RecognizerError:
            self._discard(worker)
            raise
        self._release(worker)
        return text

    async def recognize_async(self, samples: Int16Array, rate: int) -> str:
        """``recognize`` in a thread that waits on the worker's pipe, so the event loop keeps running."""
        return await asyncio.to_thread(self.recognize, samples, rate)

    def close(self) -> None:
        """Stop the workers: idle ones now, busy ones as they finish; recognizing afterwards is an error."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._started -= len(idle)
        for worker in idle:
            worker.close()

    def _acquire(self) -> _Worker:
        # Workers start one at a time: a second start would take as long as waiting for the first.
        with self._cond:
            if self._closed:
                raise RecognizerError("the recognizer is closed")
            while not self._idle and (self._starting or self._started >= self.workers):
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._started += 1
            self._starting = True
        try:
            return _Worker(self._options)  # slow: outside the lock, so that idle workers stay available
        except BaseException:
            with self._cond:
                self._started -= 1
            raise
        finally:
            with self._cond:
                self._starting = False
                self._cond.notify_all()

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            if not self._closed:
                self._idle.append(worker)
                self._cond.notify_all()
                return
        self._discard(worker)

    def _discard(self, worker: _Worker) -> None:
        worker.close()
        with self._cond:
            self._started -= 1
            self._cond.notify_all()


_shared: Recognizer | None = None
_shared_lock = threading.Lock()


def shared_recognizer() -> Recognizer:
    """The process-wide recognizer, so that every user shares one pool of workers."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Recognizer()
        return _shared


def recognize(samples: Int16Array, rate: int) -> str:
    """``Recognizer.recognize`` on the shared recognizer."""
    return shared_recognizer().recognize(samples, rate)


def _worker_main() -> None:
    """A worker shares the terminal's process group, so Ctrl-C on `make run` reaches it too: it ignores SIGINT
    (its parent decides when to stop, by closing its stdin) and leaves without a traceback if the pipe breaks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        _serve(json.loads(sys.argv[1]))


if __name__ == "__main__":
    _worker_main()
