"""Operator authentication for the console.

Two ways in: an `Authorization: Bearer <token>` header (scripts, curl), or the login form, which sets a session
cookie. The cookie never holds the token: it holds an expiry time and an HMAC of that expiry keyed by the token,
so a leaked cookie stops working when it expires or the token is rotated, and the token cannot be read back from
it. Comparisons are constant-time. With no token configured the console does not exist (404 everywhere). Wrong
tokens, through either way in, count against one per-client throttle (`LoginThrottle`); the token itself must be
at least 32 characters (checked in `agent.config`).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from urllib.parse import quote

from fastapi import HTTPException, Request

from agent.web.state import AppState

COOKIE_NAME = "agent_console"
COOKIE_PATH = "/console"
SESSION_TTL_S = 12 * 3600
LOGIN_PATH = "/console/login"
_CONTEXT = b"vobiz-voice-agent console session v1:"


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.agent
    return state


def operator_token(request: Request) -> str | None:
    """The configured token, read per request so a test or a reload can change it; None means console off."""
    secret = app_state(request).settings.operator_token
    value = secret.get_secret_value() if secret is not None else ""
    return value or None


def session_value(token: str, now: float | None = None, ttl_s: float = SESSION_TTL_S) -> str:
    """`<expiry>.<hex HMAC-SHA256(token, context + expiry)>`: proves the holder knew the token, reveals nothing."""
    expires = int((time.time() if now is None else now) + ttl_s)
    return f"{expires}.{_mac(token, expires)}"


def valid_session(token: str, value: str | None, now: float | None = None) -> bool:
    if not value:
        return False
    expires_text, _, mac = value.partition(".")
    if not expires_text.isdigit() or len(expires_text) > 12:
        return False
    expires = int(expires_text)
    if expires < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(_mac(token, expires).encode(), mac.encode("utf-8", "replace"))


def token_matches(token: str, candidate: str) -> bool:
    return hmac.compare_digest(token.encode(), candidate.encode("utf-8", "replace"))


def safe_next(target: str | None) -> str:
    """Only console paths on this site: never an open redirect to another host."""
    if (
        not target
        or not target.startswith(COOKIE_PATH)
        or target.startswith("//")
        or "\\" in target
        or any(ord(ch) < 0x20 for ch in target)
    ):
        return COOKIE_PATH
    return target


def login_url(request: Request) -> str:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"{LOGIN_PATH}?next={quote(safe_next(target), safe='')}"


def is_authenticated(request: Request, token: str) -> bool:
    return valid_session(token, request.cookies.get(COOKIE_NAME))


def operator_guard(throttle: LoginThrottle) -> Callable[[Request], None]:
    """The console's router dependency: 404 when the console is off, 401 for a wrong bearer token, 429 once the
    client has failed too often (bearer header and login form share one throttle, so a script cannot guess
    where a form would be stopped), 303 to the login form when there is neither a header nor a valid cookie."""

    def require_operator(request: Request) -> None:
        token = operator_token(request)
        if token is None:
            raise HTTPException(status_code=404)
        header = request.headers.get("authorization")
        if header is not None:
            client = client_address(request)
            if throttle.blocked(client):
                raise HTTPException(
                    status_code=429,
                    detail="too many wrong operator tokens; try again later",
                    headers={"Retry-After": str(int(throttle.window_s))},
                )
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer" and token_matches(token, value.strip()):
                return
            throttle.failed(client)
            raise HTTPException(
                status_code=401, detail="invalid operator token", headers={"WWW-Authenticate": "Bearer"}
            )
        if is_authenticated(request, token):
            return
        raise HTTPException(status_code=303, headers={"Location": login_url(request), "Cache-Control": "no-store"})

    return require_operator


class LoginThrottle:
    """At most `limit` failed logins (form or bearer header) per client address in `window_s`; then every
    attempt from it is refused (even a right one) until the window has passed, so the token cannot be guessed.

    The address is the client's as uvicorn resolved it: behind a proxy, list the proxy in
    AGENT_FORWARDED_ALLOW_IPS, or every operator shares the proxy's address and one guesser locks all out."""

    def __init__(self, limit: int = 10, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._max_clients = 10_000

    def blocked(self, client: str) -> bool:
        failures = self._failures.get(client)
        if failures is None:
            return False
        horizon = self.clock() - self.window_s
        while failures and failures[0] < horizon:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return False
        return len(failures) >= self.limit

    def failed(self, client: str) -> None:
        self._failures.setdefault(client, deque(maxlen=self.limit)).append(self.clock())
        self._failures.move_to_end(client)
        while len(self._failures) > self._max_clients:
            self._failures.popitem(last=False)


def client_address(request: Request) -> str:
    """The throttle's key: the peer, or the X-Forwarded-For client when the peer is a trusted proxy."""
    return request.client.host if request.client is not None else "unknown"


def cookie_secure(request: Request) -> bool:
    """Secure cookies whenever the console is served over https (directly or behind a TLS proxy)."""
    return request.url.scheme == "https" or app_state(request).settings.public_url.startswith("https://")


def _mac(token: str, expires: int) -> str:
    return hmac.new(token.encode(), _CONTEXT + str(expires).encode(), hashlib.sha256).hexdigest()
