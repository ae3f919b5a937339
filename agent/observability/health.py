"""Readiness: is this process able to take a new call right now?

A replica that is draining, or cannot reach its model endpoint, should get no new calls; the load balancer
learns that from `/readyz`. The model check is a TCP connect, cached, so probes cost nothing per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.waiting import within


@dataclass
class ProbeResult:
    ok: bool
    detail: str
    checked_at: float


class ModelReachability:
    def __init__(self, base_url: str, interval_s: float, timeout_s: float = 2.0) -> None:
        parts = urlsplit(base_url)
        secure = parts.scheme in ("https", "wss")
        self.host = parts.hostname or "api.openai.com"
        self.port = parts.port or (443 if secure else 80)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._last: ProbeResult | None = None
        self._lock = asyncio.Lock()

    def retarget(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or self.host, parts.port or self.port
        self._last = None

    async def check(self) -> ProbeResult:
        async with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last.checked_at < self.interval_s:
                return self._last
            try:
                _, writer = await within(self.timeout_s, asyncio.open_connection(self.host, self.port))
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
                self._last = ProbeResult(True, f"{self.host}:{self.port} reachable", now)
            except (OSError, TimeoutError) as exc:
                self._last = ProbeResult(False, f"{self.host}:{self.port} unreachable ({type(exc).__name__})", now)
            return self._last
