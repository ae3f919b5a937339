"""Log setup: one line per event, the call id on every line that has one, no secrets.

Secrets are kept out twice over: chatty libraries that log handshake headers are held at INFO, and every
record passes a filter that masks the configured secret values and any bearer token.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from typing import TextIO

_BEARER = re.compile(r"(Bearer\s+)[^\s'\"]+", re.IGNORECASE)
# Libraries that print request/handshake headers (Authorization included) at DEBUG.
_HEADER_LOGGERS = ("openai", "httpx", "httpcore", "websockets", "uvicorn.protocols")


class _CallIdDefault(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "call_id"):
            record.call_id = "-"
        return True


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = _BEARER.sub(r"\1***", message)
        for secret in self._secrets:
            cleaned = cleaned.replace(secret, "***")
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines; the call id is a field of its own."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "call_id": getattr(record, "call_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(
    level: str = "INFO", *, secrets: Iterable[str] = (), stream: TextIO | None = None, fmt: str = "text"
) -> None:
    handler = logging.StreamHandler(stream)
    handler.addFilter(_CallIdDefault())
    handler.addFilter(RedactSecrets(secrets))
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s call=%(call_id)s %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _HEADER_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
