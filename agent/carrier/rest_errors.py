"""The ways a Vobiz REST request fails, one exception each, so a caller can tell "retry later" (429, 5xx, transport)
from "never" (401, 402, 404) without reading status codes. Messages never carry the auth token."""

from __future__ import annotations


class VobizApiError(Exception):
    """A Vobiz API call failed; ``status`` is the HTTP status (0 when no response arrived)."""

    def __init__(self, status: int, message: str, *, method: str, path: str) -> None:
        self.status = status
        self.message = message
        self.method = method
        self.path = path
        super().__init__(self._describe())

    def _describe(self) -> str:
        return f"Vobiz API {self.status} on {self.method} {self.path}: {self.message}"


class VobizAuthError(VobizApiError):
    """401/403: bad credentials, or a path with the wrong casing (Vobiz answers those with 401 too)."""


class VobizPaymentRequired(VobizApiError):
    """402: the account balance cannot cover the call."""


class VobizNotFound(VobizApiError):
    """404 where it is not treated as "already done" (e.g. fetching an unknown stream)."""


class VobizRateLimited(VobizApiError):
    """429: CPS or concurrency limit hit; ``retry_after`` seconds come from the Retry-After header if sent."""

    def __init__(self, status: int, message: str, *, method: str, path: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(status, message, method=method, path=path)


class VobizServerError(VobizApiError):
    """5xx: the outcome is unknown, the request may or may not have taken effect.

    Do not blindly retry a make_call on this: check the call state first or a second call may be placed.
    """


class VobizUnexpectedResponse(VobizApiError):
    """A 2xx whose body is not what the docs describe; the request most likely took effect."""


class VobizTransportError(VobizApiError):
    """No HTTP response (connect failure, timeout, broken connection); status is 0.

    As with 5xx the outcome is unknown when the failure happened after the request was sent.
    """

    def __init__(self, message: str, *, method: str, path: str) -> None:
        super().__init__(0, message, method=method, path=path)

    def _describe(self) -> str:
        return f"Vobiz API unreachable (status 0) on {self.method} {self.path}: {self.message}"
