"""Log setup: one line per event, the call id on every line that has one, no secrets.

Secrets are kept out twice over: chatty libraries that log handshake headers are held at INFO, and every
record passes a filter that masks the configured secret values, any bearer token, any `token=` query value and
the whole query string of the stream route (it carries the per-call stream token). The filter sits on every
handler that exists when logging is configured, ours and any other logger's; `voice-agent serve` runs uvicorn
without a log config of its own, so its access and error logs (request lines with full query strings) pass
through it too.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from typing import TextIO

_BEARER = re.compile(r"(Bearer\s+)[^\s'\"]+", re.IGNORECASE)
# The stream socket's URL carries its call's token: its query string never reaches a log, whatever its order.
_STREAM_QUERY = re.compile(r"(/vobiz/stream)\?[^\s'\"]*")
# Any other URL's `token=` (or `..._token=`) query value.
_TOKEN_PARAM = re.compile(r"([?&;](?:[\w.-]*_)?token=)[^&\s'\"#]*", re.IGNORECASE)
REDACTED = "***"
# Libraries that print request/handshake headers (Authorization included) at DEBUG.
_HEADER_LOGGERS = ("openai", "httpx", "httpcore", "websockets", "uvicorn.protocols")


class _CallIdDefault(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "call_id"):
            record.call_id = "-"
        return True


class RedactSecrets(logging.Filter):
    """Masks secrets in the message and in the traceback text of every record it sees."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        cleaned = _BEARER.sub(r"\1" + REDACTED, text)
        cleaned = _STREAM_QUERY.sub(r"\1?" + REDACTED, cleaned)
        cleaned = _TOKEN_PARAM.sub(r"\1" + REDACTED, cleaned)
        for secret in self._secrets:
            cleaned = cleaned.replace(secret, REDACTED)
        return cleaned

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when set: format the traceback once here, masked.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
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
        if record.exc_text:
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(
    level: str = "INFO", *, secrets: Iterable[str] = (), stream: TextIO | None = None, fmt: str = "text"
) -> None:
    redact = RedactSecrets(secrets)
    handler = logging.StreamHandler(stream)
    handler.addFilter(_CallIdDefault())
    handler.addFilter(redact)
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
    protect_all_handlers(redact)


def protect_all_handlers(redact: RedactSecrets) -> None:
    """Put the redaction filter on every handler that exists, not only ours: a logger with handlers of its own
    (uvicorn's access log when it configures logging itself, a library's) must not bypass it."""
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            for stale in [f for f in handler.filters if isinstance(f, RedactSecrets) and f is not redact]:
                handler.removeFilter(stale)  # configured again: the current secrets replace the old ones
            handler.addFilter(redact)  # a no-op when it is already there
