"""Log setup: one line per event, the call id on every line that has one, no secrets."""

from __future__ import annotations

import logging


class _CallIdDefault(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "call_id"):
            record.call_id = "-"
        return True


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_CallIdDefault())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s call=%(call_id)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The openai SDK logs request headers at DEBUG; keep it at INFO so the API key never reaches a log.
    logging.getLogger("openai").setLevel(max(logging.INFO, root.level))
    logging.getLogger("httpx").setLevel(logging.WARNING)
