"""The local spool: call records the database could not take, one JSON file each, until they can be replayed.

A record is written to a private temporary file, flushed and fsynced, then renamed into place and the folder
fsynced: a file in the spool is always complete and survives a crash or power loss. Every file is a new name
(`<seq>_<key>.json`, `seq` a time-ordered number given at submission, `key` derived from the call id), so a
newer version of a call never replaces an older file in place; the writer replays oldest first and removes a
call's older files once a newer version is in the database. Records the database refuses outright go to
`failed/` for an operator to look at; they are never retried in a loop.

Tool header values in a prompt are usually credentials: they are redacted before anything reaches the disk.
Everything here blocks on the disk; the writer calls it in worker threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.prompts.loader import Prompt
from agent.records import record as rec
from agent.storage.cleaning import plain_json, redact_headers

FORMAT = 1
_NAME = re.compile(r"^(\d{1,30})_([A-Za-z0-9.-]+-[0-9a-f]{16})\.json$")
_STALE_TEMP_S = 3600.0


class SpoolError(Exception):
    """A spool file that cannot be read back as a record (truncated, edited, from an unknown format)."""


@dataclass(frozen=True)
class SpoolEntry:
    seq: int
    key: str
    path: Path


def spool_key(call_id: str) -> str:
    """A file-name-safe key per call id: readable prefix, and a hash so two ids never share a key."""
    safe = re.sub(r"[^A-Za-z0-9.-]", "-", call_id)[:64].strip(".") or "call"
    return f"{safe}-{hashlib.sha256(call_id.encode()).hexdigest()[:16]}"


def encode(record: rec.CallRecord, prompt: Prompt | None, seq: int) -> dict[str, Any]:
    """A plain-JSON snapshot of the record; on the event loop, so the call cannot change it half-way."""
    return {
        "format": FORMAT,
        "seq": seq,
        "call_id": record.call_id,
        "record": plain_json(record.to_dict()),
        "prompt": redact_headers(prompt.model_dump(mode="json")) if prompt is not None else None,
    }


def decode(payload: Any) -> tuple[rec.CallRecord, Prompt | None]:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or not isinstance(payload.get("record"), dict):
        raise SpoolError("not a spooled call record")
    try:
        record = _record(payload["record"])
        prompt = Prompt.model_validate(payload["prompt"]) if payload.get("prompt") is not None else None
    except (TypeError, ValueError, KeyError) as exc:
        raise SpoolError(f"unreadable record: {exc}") from exc
    return record, prompt


def _fields(cls: type[Any], data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected an object")
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _record(data: dict[str, Any]) -> rec.CallRecord:
    values = _fields(rec.CallRecord, data)
    values["turns"] = [rec.Turn(**_fields(rec.Turn, t)) for t in values.get("turns", [])]
    values["events"] = [rec.CallEvent(**_fields(rec.CallEvent, e)) for e in values.get("events", [])]
    values["barge_ins"] = [rec.BargeIn(**_fields(rec.BargeIn, b)) for b in values.get("barge_ins", [])]
    values["tools"] = [rec.ToolUse(**_fields(rec.ToolUse, u)) for u in values.get("tools", [])]
    values["usage"] = rec.Usage(**_fields(rec.Usage, values.get("usage", {})))
    return rec.CallRecord(**values)


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.failed_dir = self.directory / "failed"

    def put(self, payload: dict[str, Any]) -> SpoolEntry:
        """Write one record durably; returns where it is."""
        result = self.put_many([payload])[0]
        if isinstance(result, OSError):
            raise result
        return result

    def put_many(self, payloads: list[dict[str, Any]]) -> list[SpoolEntry | OSError]:
        """Write records durably, each on its own (a failure is returned in its place): every file is
        fsynced, the folder once for all the renames."""
        self.directory.mkdir(parents=True, exist_ok=True)
        results: list[SpoolEntry | OSError] = []
        for payload in payloads:
            key = spool_key(str(payload["call_id"]))
            path = self.directory / f"{int(payload['seq']):020d}_{key}.json"
            try:
                _write_file(path, json.dumps(payload, separators=(",", ":")).encode())
            except OSError as exc:
                results.append(exc)
            else:
                results.append(SpoolEntry(int(payload["seq"]), key, path))
        _fsync_dir(self.directory)
        return results

    def put_failed(self, payload: dict[str, Any], error: str) -> Path:
        """Keep a record the database refused, with why, where replay never picks it up."""
        key = spool_key(str(payload["call_id"]))
        path = self.failed_dir / f"{int(payload['seq']):020d}_{key}.json"
        _write_durably(path, json.dumps(payload | {"error": error}, separators=(",", ":")).encode())
        return path

    def scan(self) -> list[SpoolEntry]:
        """Every spooled record, oldest first; temporary files left by a crash mid-write are removed."""
        if not self.directory.is_dir():
            return []
        entries = []
        cutoff = time.time() - _STALE_TEMP_S
        for item in os.scandir(self.directory):
            if not item.is_file(follow_symlinks=False):
                continue
            match = _NAME.match(item.name)
            if match:
                entries.append(SpoolEntry(int(match[1]), match[2], Path(item.path)))
            elif item.name.endswith(".tmp") and item.stat(follow_symlinks=False).st_mtime < cutoff:
                Path(item.path).unlink(missing_ok=True)
        return sorted(entries, key=lambda e: (e.seq, e.key))

    def load(self, entry: SpoolEntry) -> tuple[rec.CallRecord, Prompt | None]:
        try:
            payload = json.loads(entry.path.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SpoolError(f"not JSON: {exc}") from exc
        return decode(payload)

    def remove(self, entry: SpoolEntry) -> None:
        entry.path.unlink(missing_ok=True)

    def quarantine(self, entry: SpoolEntry) -> Path:
        """Move a record that cannot be replayed to `failed/`, out of the replay's way."""
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        target = self.failed_dir / entry.path.name
        with contextlib.suppress(FileNotFoundError):
            os.replace(entry.path, target)
            _fsync_dir(self.directory)
        return target


def _write_durably(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_file(path, data)
    _fsync_dir(path.parent)


def _write_file(path: Path, data: bytes) -> None:
    """A complete file under `path` or none: written and fsynced under a temporary name, then renamed."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.stem[:40]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
