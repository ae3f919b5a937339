"""Per-call, expiring, HMAC-signed tokens for the stream WebSocket URL.

Vobiz does not sign the WebSocket upgrade, so the URL it was given in the answer XML is the only credential:
the token binds the call id and an expiry to the server's secret, and is short enough to survive URL limits.
The expiry bounds only when the call's FIRST stream may open; a Vobiz reconnect (`maxRetries`) reuses the same
URL at any point of a long call, so whether a socket may (re)join a call is decided by the call's state, not
by the clock (see `CallRegistry.stream_refusal`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenCheck:
    ok: bool
    reason: str = ""
    expired: bool = False
    """Genuine for this call, but past the window for opening its first stream."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _mac(secret: str, call_id: str, expires: int) -> str:
    digest = hmac.new(secret.encode(), f"{call_id}.{expires}".encode(), hashlib.sha256).digest()
    return _b64(digest[:18])


def issue(secret: str, call_id: str, ttl_s: float, *, now: float | None = None) -> str:
    # Rounded up: truncating would shorten the window by up to a second, to nothing at all for a 1 s TTL.
    expires = math.ceil((time.time() if now is None else now) + ttl_s)
    return f"{expires}.{_mac(secret, call_id, expires)}"


def verify(secret: str, call_id: str, token: str | None, *, now: float | None = None) -> TokenCheck:
    if not token or not call_id:
        return TokenCheck(False, "missing token or call id")
    expires_text, _, mac = token.partition(".")
    if not expires_text.isdigit() or not mac:
        return TokenCheck(False, "malformed token")
    if not hmac.compare_digest(mac, _mac(secret, call_id, int(expires_text))):
        return TokenCheck(False, "bad signature")
    if int(expires_text) < (time.time() if now is None else now):
        return TokenCheck(True, "expired", expired=True)
    return TokenCheck(True)
